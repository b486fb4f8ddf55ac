"""Reading a worker's SSE stream in tests, and cancelling it part-way."""

from __future__ import annotations

import json
import threading

from starlette.testclient import TestClient


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
