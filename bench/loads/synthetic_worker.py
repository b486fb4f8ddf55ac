"""A synthetic token source for bench/relay.py: a BENCHMARK LOAD, not a backend.

One bare-ASGI process that answers like a hive (`GET /v1/state` lists N workers, all served here) and like
workers (`POST /v1/execute` streams `max_tokens` tokens at a fixed rate, in the wire format asked for, with the
same encoder and end comment as a real worker; each token is " tok", or what follows "say:" in a prompt). It
lets the queen's relay be measured without a model's cost.

    python bench/loads/synthetic_worker.py --port 9900 --workers 100 --slots 10 --rate 45
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import uvicorn

from rbee.api import openai_stream, wire


def make_app(workers: int, slots: int, rate: float, port: int, start_delay: float | None = None) -> Any:
    """With `start_delay`, the hive also starts workers (`POST /v1/workers`): each is loading for that many
    seconds, then idle, as a real hive's would be (for tests of the queen's cold start)."""

    def worker(index: int, state: str = "idle") -> dict[str, Any]:
        return {
            "id": f"s-{index}",
            "model": "synthetic",
            "backend": "synthetic",
            "device": "cpu",
            "state": state,
            "port": port,
            "slots": slots,
        }

    def describe(listed: list[dict[str, Any]]) -> bytes:
        body = {"name": "synthetic", "version": "bench", "backends": ["synthetic"], "catalog": [], "workers": listed}
        return json.dumps(body).encode()

    state = describe([worker(i) for i in range(workers)])
    launched: list[float] = []
    """When each worker started on request began loading."""

    def current_state() -> bytes:
        if not launched:
            return state
        now = time.monotonic()
        extra = [
            worker(workers + i, "idle" if now - began >= (start_delay or 0) else "loading")
            for i, began in enumerate(launched)
        ]
        return describe([worker(i) for i in range(workers)] + extra)

    async def respond(send: Any, status: int, body: bytes, kind: bytes = b"application/json") -> None:
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", kind)]})
        await send({"type": "http.response.body", "body": body})

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/v1/state":
            await respond(send, 200, current_state())
            return
        if path == "/v1/workers" and start_delay is not None:
            while (await receive()).get("more_body"):
                pass
            ids = [f"s-{workers + len(launched)}"]
            launched.append(time.monotonic())
            await respond(send, 202, json.dumps({"workers": ids}).encode())
            return
        if path == "/health":
            await respond(send, 200, b'{"status":"ok","name":"synthetic"}')
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = json.loads(raw)
        fmt = request.get("format", "rbee")
        count = int(request.get("max_tokens", 16))
        prompt = str(request.get("prompt") or "")
        word = prompt[4:] if prompt.startswith("say:") else " tok"  # tests give the text of every token
        if fmt == "rbee":
            encode = lambda i: wire.token_event(word, i)  # noqa: E731
            finish = wire.done_event(count, 8, wire.FinishReason.LENGTH)
        else:
            encoder = openai_stream.StreamEncoder(
                request.get("request_id", "x"),
                request.get("openai_model") or "synthetic",
                fmt == "openai-chat",
                bool(request.get("include_usage")),
            )
            opening = encoder.start()
            encode = lambda i: (opening if i == 0 else b"") + encoder.token(word)  # noqa: E731
            finish = encoder.finish("length", 8, count)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
            }
        )
        started = time.monotonic()
        for index in range(count):
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": encode(index), "more_body": True})
        await send({"type": "http.response.body", "body": wire.end_comment(8, count, "length") + finish})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--slots", type=int, default=10)
    parser.add_argument("--rate", type=float, default=45.0)
    parser.add_argument("--tls-cert", help="serve TLS with this certificate (and --tls-key), as hives off-machine do")
    parser.add_argument("--tls-key")
    args = parser.parse_args()
    uvicorn.run(
        make_app(args.workers, args.slots, args.rate, args.port),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        backlog=4096,
        ssl_certfile=args.tls_cert,
        ssl_keyfile=args.tls_key,
    )


if __name__ == "__main__":
    main()
