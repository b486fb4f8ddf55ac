"""Turning a stream of token bytes into text pieces: incremental UTF-8 and stop strings.

A token can end in the middle of a UTF-8 character (byte-fallback vocabularies split emoji into bytes), and
a stop string can span tokens; text is released only when it is complete and cannot begin a stop string.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextAssembler:
    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        self._held = ""
        self.stopped = False

    def feed(self, data: bytes) -> str:
        """Add a token's bytes; return the text that can be released now ('' if none yet)."""
        if self.stopped:
            return ""
        self._held += self._decoder.decode(data)
        if not self._stop:
            text, self._held = self._held, ""
            return text
        for stop in self._stop:
            at = self._held.find(stop)
            if at != -1:
                self.stopped = True
                text, self._held = self._held[:at], ""
                return text
        keep = self._longest_stop_prefix_suffix()
        text = self._held[: len(self._held) - keep]
        self._held = self._held[len(self._held) - keep :]
        return text

    def flush(self) -> str:
        """The end of generation: release what is held (an unfinished stop string is just text)."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return text

    def _longest_stop_prefix_suffix(self) -> int:
        longest = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(self._held)), longest, -1):
                if self._held.endswith(stop[:size]):
                    longest = size
                    break
        return longest
