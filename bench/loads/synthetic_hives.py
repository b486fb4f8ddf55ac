"""Synthetic hives for bench/reconcile.py: a BENCHMARK LOAD, not a hive.

One aiohttp process listens on N loopback ports, one per simulated hive, and answers `GET /v1/state` on each
like a converged hive: its name, rbee's version, one model in the catalog and one idle worker. It prints
`READY` when every port listens.

    python bench/loads/synthetic_hives.py --first-port 20000 --hives 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import web

from rbee import __version__

MODEL_SOURCE = "file:///models/smol.gguf"


def state(name: str, port: int) -> bytes:
    return json.dumps(
        {
            "name": name,
            "version": __version__,
            "backends": ["gguf"],
            "catalog": [{"name": "smol", "source": MODEL_SOURCE, "format": "gguf", "size_bytes": 1000}],
            "workers": [{"id": "w-1", "model": "smol", "backend": "gguf", "state": "idle", "pid": 1, "port": port + 1}],
        }
    ).encode()


async def serve(first_port: int, hives: int) -> None:
    bodies = {first_port + i: state(f"h{i}", first_port + i) for i in range(hives)}

    async def handle(request: web.Request) -> web.Response:
        port = request.transport.get_extra_info("sockname")[1] if request.transport else 0
        return web.Response(body=bodies[port], content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/state", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for port in bodies:
        await web.TCPSite(runner, "127.0.0.1", port, backlog=128).start()
    print("READY", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--first-port", type=int, required=True)
    parser.add_argument("--hives", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.first_port, args.hives))


if __name__ == "__main__":
    main()
