"""Reading a worker's SSE stream in tests, cancelling it part-way, and asking for an answer that does not end."""

from __future__ import annotations

import json
import threading

import llama_cpp
from starlette.testclient import TestClient

from rbee.worker.backends.gguf import GgufBackend


def cancel_after(
    test_client: TestClient, headers: dict[str, str], body: dict[str, object], tokens: int = 3
) -> list[int]:
    """Stream `body` (which names a request_id), cancel it after `tokens` tokens; the token indexes seen, then
    -1 for a done event that says cancelled (-2 for any other end)."""
    seen: list[int] = []

    def read() -> None:
        with test_client.stream("POST", "/v1/execute", headers=headers, json=body) as reply:
            for line in reply.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = json.loads(line[5:])
                if "token" in data:
                    seen.append(int(data["index"]))
                    if len(seen) == tokens:
                        cancel = {"request_id": body["request_id"]}
                        assert test_client.post("/v1/cancel", json=cancel, headers=headers).json()["cancelled"]
                else:
                    seen.append(-1 if data.get("finish_reason") == "cancelled" else -2)

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(timeout=60)
    return seen


def endless(engine: GgufBackend) -> list[list[float]]:
    """A logit_bias that bans every token that ends a generation, for a request that must run to max_tokens or be
    cut: how long a seeded answer runs depends on the llama.cpp build's numerics and on what its KV cache held."""
    vocab = llama_cpp.llama_model_get_vocab(engine._model.model)
    tokens = range(engine._model.n_vocab())
    return [[token, -100] for token in tokens if llama_cpp.llama_vocab_is_eog(vocab, token)]
