"""Token masks for constrained answers (llguidance): the vocabulary as llguidance reads it (from llama.cpp's
vocabulary or a Hugging Face tokenizer), a constraint compiled to a matcher (a JSON Schema, a JSON object, or a
tool call's grammar), and the mask that forbids, in one step's logits, every token that cannot continue a valid
answer."""

from __future__ import annotations

import contextlib
import json
import threading
import warnings
from collections.abc import Callable
from typing import Any

from rbee.api.calls import Constraint
from rbee.worker import tools
from rbee.worker.backends import BackendError


class Masks:
    def __init__(self, vocabulary: Callable[[], Any], vocab_size: int) -> None:
        """`vocabulary` makes llguidance's tokenizer (it imports llguidance, so it runs only when it is there);
        `vocab_size`: the width of the model's logits."""
        self.vocabulary, self.vocab_size = vocabulary, vocab_size
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        """llguidance's view of the vocabulary: made at load when llguidance is there (~1 s for 50k tokens)."""
        self._allowed: Any = None
        """The bitmask buffer, reused at every token (only the batch loop's thread writes it)."""

    def prepare(self) -> None:
        """Read the vocabulary now if llguidance is installed, so the first constrained request does not wait."""
        with contextlib.suppress(BackendError):
            self._vocabulary()

    def matcher(self, constraint: Constraint) -> Any:
        """A fresh matcher for one answer; a constraint llguidance cannot take is a BackendError saying why."""
        import llguidance

        tokenizer = self._vocabulary()
        # `json` is OpenAI's json_object: an object, not any JSON value (a bare number can run on forever).
        schema = constraint.json_schema if constraint.json_schema is not None else {"type": "object"}
        try:
            if constraint.kind == "tool_call":
                grammar = tools.grammar(constraint)
            else:
                grammar = llguidance.LLMatcher.grammar_from_json_schema(
                    json.dumps(schema), overrides={"whitespace_flexible": False}
                )
            matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        except (ValueError, TypeError) as error:
            raise BackendError(f"the response_format schema cannot be used: {error}") from None
        if matcher.is_error():
            raise BackendError(f"the response_format schema cannot be used: {matcher.get_error()}")
        return matcher

    def allowed(self, matcher: Any) -> Any:
        """Which tokens `matcher` allows next, as a numpy bool vector over the logits."""
        import numpy as np

        if self._allowed is None:
            self._allowed = np.zeros((self.vocab_size + 31) // 32, dtype=np.int32)
        matcher.unsafe_compute_mask_ptr(self._allowed.ctypes.data, self._allowed.nbytes)
        return np.unpackbits(self._allowed.view(np.uint8), bitorder="little")[: self.vocab_size].view(bool)

    def apply(self, matcher: Any, logits_pointer: Any) -> None:
        """Set to -inf every logit (of one batch row, at a llama.cpp pointer) that `matcher` does not allow
        next: the sampler then draws only from what the grammar allows (the end of text once it is complete)."""
        import numpy as np

        logits = np.ctypeslib.as_array(logits_pointer, shape=(self.vocab_size,))
        logits[~self.allowed(matcher)] = -np.inf

    def _vocabulary(self) -> Any:
        try:
            import llguidance  # noqa: F401
        except ImportError:
            raise BackendError("constrained output needs llguidance on this hive (rbee's gguf extra has it)") from None
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = self.vocabulary()
            return self._tokenizer


def llama_vocabulary(vocab: Any) -> Callable[[], Any]:
    """llguidance's tokenizer for a llama.cpp vocabulary."""

    def make() -> Any:
        import llguidance.llamacpp

        with warnings.catch_warnings():  # it calls llama.cpp's token attributes by their old names
            warnings.simplefilter("ignore", DeprecationWarning)
            return llguidance.llamacpp.lltokenizer_from_vocab(vocab)

    return make


def hf_vocabulary(tokenizer: Any, vocab_size: int) -> Callable[[], Any]:
    """llguidance's tokenizer for a Hugging Face (fast) tokenizer whose model has `vocab_size` logits."""

    def make() -> Any:
        import llguidance.hf

        try:
            return llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        except ValueError as error:
            raise BackendError(f"this model's tokenizer cannot be used for constrained output: {error}") from None

    return make
