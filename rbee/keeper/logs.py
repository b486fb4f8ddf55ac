"""`rbee logs`: the queen's log (a file on this machine), a hive's, or a worker's (asked of the hive's own API, so
a remote hive needs no SSH session): the last lines, those since a time, and with --follow each new line until
Ctrl+C."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any

import httpx
from pydantic import TypeAdapter, ValidationError

from rbee.clients.hive import HiveCallError, HiveClient
from rbee.clients.queen import QueenCallError
from rbee.infra import logs
from rbee.keeper import queen_process
from rbee.keeper.home import Home
from rbee.keeper.models import spec_or_applied
from rbee.keeper.render import fail
from rbee.spec.fields import Seconds
from rbee.spec.schema import HiveFile

_SECONDS: TypeAdapter[float] = TypeAdapter(Seconds)


def since_time(since: str | None) -> float | None:
    """`--since 10m` as an epoch time."""
    if since is None:
        return None
    try:
        return time.time() - _SECONDS.validate_python(since)
    except ValidationError:
        fail(f"--since {since}: write a duration like 30s, 10m or 2h.")


def _print(lines: Iterable[str]) -> None:
    for line in lines:
        sys.stdout.write(line + "\n")
    sys.stdout.flush()


def queen(follow: bool, since: str | None, lines: int) -> None:
    path = Home.default().queen_dir / "queen.log"
    if not path.exists():
        fail(f"No queen log at {path}: no queen was started from this RBEE_HOME (rbee apply starts one).")
    backlog, end = logs.last_lines(path, lines, since_time(since))
    _print(backlog)
    if follow:
        _until_interrupted(_follow_file(path, end))


async def _follow_file(path: Path, offset: int) -> None:
    async for line in logs.follow(path, offset):
        if line is not None:
            _print([line])


def _hive_of_worker(spec: HiveFile, worker: str) -> str:
    """The hive that runs `worker`, as the queen sees it (worker ids are per hive: ask --hive when it is not one)."""
    client = queen_process.running(Home.default())
    if client is None:
        fail(f"No queen is running to say which hive runs {worker}; pass --hive.")
    try:
        hives = client.status()["hives"]
    except QueenCallError as error:
        fail(f"The queen does not answer ({error}); pass --hive.")
    found = [h["name"] for h in hives if any(w["id"] == worker for w in (h.get("state") or {}).get("workers", ()))]
    if len(found) != 1:
        where = f"is on hives {', '.join(found)}" if found else "is not running on any hive"
        fail(f"Worker {worker} {where}; pass --hive (hives: {', '.join(h.name for h in spec.hives)}).")
    return str(found[0])


def remote(
    hive_name: str | None,
    worker: str | None,
    follow: bool,
    since: str | None,
    lines: int,
    file: Path | None,
) -> None:
    spec = spec_or_applied(file)
    name = hive_name or (_hive_of_worker(spec, worker) if worker else None)
    hive = spec.hive(name or "")
    if hive is None:
        fail(f"There is no hive {name} in hive.yaml; hives: {', '.join(h.name for h in spec.hives)}.")
    credentials = Home.default().credentials(create=False)
    client = HiveClient(hive, credentials.hive(hive.name) if credentials else None)
    after = since_time(since)

    async def read() -> None:
        try:
            if follow:
                async for line in client.follow_logs(worker, lines, after):
                    _print([line])
            else:
                _print(await client.logs(worker, lines, after))
        finally:
            await client.close()

    try:
        _until_interrupted(read())
    except HiveCallError as error:
        fail(f"Hive {hive.name}: {error}")
    except httpx.HTTPError as error:
        fail(f"Hive {hive.name} at {hive.api_url} does not answer ({error or type(error).__name__}).")


def _until_interrupted(work: Coroutine[Any, Any, None]) -> None:
    try:
        asyncio.run(work)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
