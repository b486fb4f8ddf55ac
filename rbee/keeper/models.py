"""`rbee models`: each hive's catalog, and fetching or removing a model on one hive now."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from rbee.api.units import human_size
from rbee.clients.hive import HiveCallError, HiveClient, Progress
from rbee.keeper import render
from rbee.keeper.fleet import applied_before, load_desired
from rbee.keeper.home import Home
from rbee.keeper.progress import ConsoleReporter
from rbee.keeper.render import fail, out
from rbee.observe import hives as observe_hives
from rbee.plan.actions import Action, Symbol, model_change
from rbee.spec.schema import HiveFile


def spec_or_applied(file: Path | None) -> HiveFile:
    if file is not None:
        return load_desired(file).spec
    previous, _ = applied_before(Home.default())
    if previous is None:
        fail("No fleet has been applied from this RBEE_HOME; pass the hive.yaml.")
    return previous


def _client(spec: HiveFile, hive: str) -> HiveClient:
    found = spec.hive(hive)
    if found is None:
        fail(f"There is no hive {hive} in hive.yaml; hives: {', '.join(h.name for h in spec.hives)}.")
    credentials = Home.default().credentials(create=False)
    return HiveClient(found, credentials.hive(hive) if credentials else None)


def ls(file: Path | None) -> None:
    spec = spec_or_applied(file)
    render.catalogs(observe_hives.observe(spec, credentials=Home.default().credentials(create=False)).hives)


def pull(model: str, hive: str, file: Path | None) -> None:
    spec = spec_or_applied(file)
    wanted = spec.model(model)
    if wanted is None:
        fail(f"There is no model {model} in hive.yaml; models: {', '.join(m.name for m in spec.models)}.")
    client = _client(spec, hive)
    change = model_change(hive, model, Action.ADD_MODEL, Symbol.ADD, "rbee models pull")

    async def fetch() -> dict[str, Any]:
        with ConsoleReporter(out) as reporter:

            def progress(event: Progress) -> None:
                reporter.progress(change, event)

            reporter.begin(change)
            try:
                return await client.add_model(wanted, progress, pinned=True)
            finally:
                await client.close()

    try:
        entry = asyncio.run(fetch())
    except (HiveCallError, httpx.HTTPError) as error:
        fail(f"Pulling {model} to {hive} failed: {error}")
    out.print(f"{model} is in {hive}'s catalog ({human_size(int(entry.get('size_bytes', 0)))}).")


def rm(model: str, hive: str, file: Path | None) -> None:
    client = _client(spec_or_applied(file), hive)

    async def remove() -> None:
        try:
            await client.remove_model(model)
        finally:
            await client.close()

    try:
        asyncio.run(remove())
    except (HiveCallError, httpx.HTTPError) as error:
        fail(f"Removing {model} from {hive} failed: {error}")
    out.print(f"Removed {model} from {hive}.")
