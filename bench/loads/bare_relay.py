"""The floor for a Python relay, for bench/relay.py: a BENCHMARK LOAD, not part of rbee.

A bare ASGI app on the same server stack as the queen (uvicorn, uvloop) that passes each POST through to one
upstream with one pooled aiohttp session and sends every chunk on as it comes (raw ASGI send): no parsing, no
auth, no admission, no routing. What the queen costs above this is what rbee's own relaying costs.

    python bench/loads/bare_relay.py --port 9901 --upstream http://127.0.0.1:9900 [--ca-file ca.pem]
"""

from __future__ import annotations

import argparse
import ssl
from typing import Any

import aiohttp
import uvicorn


def make_app(upstream: str, context: ssl.SSLContext | bool) -> Any:
    session: aiohttp.ClientSession | None = None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal session
        if scope["type"] != "http":
            return
        if scope["method"] == "GET":  # /health
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if session is None:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ssl=context)
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None)
            session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        headers = {name.decode(): value.decode() for name, value in scope["headers"] if name in (b"authorization",)}
        headers["Content-Type"] = "application/json"
        async with session.post(upstream + scope["path"], data=body, headers=headers) as response:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": [(b"content-type", response.headers.get("Content-Type", "").encode())],
                }
            )
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--ca-file", default=None, help="pin this CA for an https upstream")
    args = parser.parse_args()
    context: ssl.SSLContext | bool = ssl.create_default_context(cafile=args.ca_file) if args.ca_file else False
    uvicorn.run(
        make_app(args.upstream.rstrip("/"), context),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        loop="uvloop",
    )


if __name__ == "__main__":
    main()
