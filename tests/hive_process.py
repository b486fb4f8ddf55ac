"""A real hive daemon for tests: `rbee hive serve` as its own process in a temp data dir, and a client with
the hive's own credential."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from rbee.api.credentials import hive_credential
from rbee.api.hive_config import HiveConfig
from tests.servers import free_port

TOKEN = hive_credential("a fleet key for the tests of one hive", "solo")


@contextlib.contextmanager
def hive_daemon(
    root: Path, name: str, env: dict[str, str] | None = None, model_dirs: tuple[str, ...] = ()
) -> Iterator[tuple[httpx.Client, subprocess.Popen[bytes]]]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "hive.token").write_text(TOKEN)
    config = HiveConfig(
        name=name,
        listen=f"127.0.0.1:{free_port()}",
        data_dir=str(root),
        version="0.1.0",
        token_file=str(root / "hive.token"),
        model_dirs=model_dirs,
    )
    (root / "hive.json").write_text(config.model_dump_json())
    process = subprocess.Popen(
        [sys.executable, "-m", "rbee", "hive", "serve", "--config", str(root / "hive.json")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = httpx.Client(
        base_url=config.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60, trust_env=False
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/health").status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the hive in {root} did not start")
            time.sleep(0.05)
        yield client, process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
        client.close()
