"""A hive's HTTP API as its clients call it: the keeper and the queen (models, workers, shutdown), and a worker
telling its hive how its loading goes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pydantic

from rbee.api import sse, wire
from rbee.api.state import BACKEND_SHAPE, HiveState, WorkerShape, WorkerState
from rbee.clients import tls
from rbee.spec.schema import HiveSpec, ModelSpec

log = logging.getLogger("rbee.clients")
CALL_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
"""Every call to a hive is bounded: a hive that accepts and never answers fails the change, it does not hang it."""
STATE_TIMEOUT = 5.0
PROGRESS_TIMEOUT = httpx.Timeout(30.0, connect=5.0, read=60.0)
"""A download streams progress, or keep-alives every 15 s: a minute without a byte is a hung hive."""


@dataclass(frozen=True, slots=True)
class Readiness:
    """Workers being started: how many are ready, of how many, and how far the slowest has loaded."""

    ready: int
    of: int
    loading: float | None = None


Progress = wire.DownloadProgress | wire.StageProgress | Readiness
"""What a change reports while it runs: a model's download or provisioning step, or its workers' loading."""
OnProgress = Callable[[Progress], None]
_PROGRESS: pydantic.TypeAdapter[wire.DownloadProgress | wire.StageProgress] = pydantic.TypeAdapter(
    wire.ProvisionProgress
)


class HiveCallError(Exception):
    """A hive refused or failed a change; the message is the hive's own sentence."""


class HiveClient:
    def __init__(self, hive: HiveSpec, token: str | None, fence: int | None = None) -> None:
        """`fence`: the lease generation of the queen that leads (several queens on one store), sent with every
        call; the hive refuses a command with a lower one than it has obeyed (hive/fencing.py)."""
        self.hive = hive
        fenced = {"X-Rbee-Fence": str(fence)} if fence is not None else {}
        self._client = httpx.AsyncClient(
            base_url=hive.api_url,
            headers={**wire.bearer(token), **fenced},
            timeout=CALL_TIMEOUT,
            trust_env=False,
            verify=tls.context(),
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def wait_healthy(self, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                response = await self._client.get("/health", timeout=2.0)
                if response.status_code == 200 and response.json().get("name") == self.hive.name:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise HiveCallError(
                    f"hive {self.hive.name} did not answer on {self.hive.api_url} within {seconds:.0f} s"
                )
            await asyncio.sleep(0.1)

    async def state(self) -> HiveState:
        response = await self._client.get("/v1/state", timeout=STATE_TIMEOUT)
        _raise_for(response)
        return HiveState.model_validate_json(response.content)

    async def add_model(self, model: ModelSpec, progress: OnProgress, pinned: bool = False) -> dict[str, Any]:
        """Put `model` in the hive's catalog; returns its catalog entry. `pinned`: the operator asked for it by
        hand, and the entry stays while hive.yaml names the model (CatalogEntry.pinned)."""
        body = wire.ModelRequest(
            name=model.name,
            source=model.source,
            format=str(model.format),
            sha256=model.sha256,
            kind=str(model.kind),
            code_files=model.code_files,
            pinned=pinned,
            mmproj=model.mmproj,
        )
        # A pin or a projector only when there is one: a hive of an older rbee refuses fields it does not know.
        unset = {name for name, value in (("pinned", pinned), ("mmproj", model.mmproj)) if not value}
        content = body.model_dump_json(exclude=unset or None)
        async with self._client.stream("POST", "/v1/models", content=content, timeout=PROGRESS_TIMEOUT) as response:
            if response.status_code != 200:
                await response.aread()
                _raise_for(response)
            async for event in sse.aevents(response.aiter_bytes()):
                if event.is_comment:
                    continue
                data = event.json()
                if event.name == "error":
                    raise HiveCallError(str(data.get("error")))
                if data.get("done"):
                    return dict(data.get("entry", {}))
                try:
                    progress(_PROGRESS.validate_python(data))
                except pydantic.ValidationError:
                    log.debug("a progress event of an unknown shape from hive %s: %s", self.hive.name, data)
        raise HiveCallError(f"hive {self.hive.name} ended the download of {model.name} without finishing")

    async def logs(self, worker: str | None, lines: int, since: float | None) -> list[str]:
        """The hive daemon's last log lines, or one of its workers'."""
        response = await self._client.get("/v1/logs", params=_log_query(worker, lines, since))
        _raise_for(response)
        found: list[str] = response.json()["lines"]
        return found

    async def follow_logs(self, worker: str | None, lines: int, since: float | None) -> AsyncIterator[str]:
        """The last lines, then each new one as the hive writes it; the hive says keep-alive every 15 s, so a
        minute of silence is a hive gone."""
        query = {**_log_query(worker, lines, since), "follow": "1"}
        async with self._client.stream("GET", "/v1/logs", params=query, timeout=PROGRESS_TIMEOUT) as response:
            if response.status_code != 200:
                await response.aread()
                _raise_for(response)
            async for event in sse.aevents(response.aiter_bytes()):
                if not event.is_comment:
                    yield str(event.json()["line"])

    async def remove_model(self, name: str) -> None:
        _raise_for(await self._client.delete(f"/v1/models/{name}"))

    async def start_workers(
        self,
        model: str,
        backend: str,
        device: str,
        replicas: int,
        progress: OnProgress,
        timeout: float = 600.0,
        at_most: int | None = None,
        shape: WorkerShape = BACKEND_SHAPE,
    ) -> list[str]:
        """Start workers of `shape` and wait until they are ready; their ids (none when the group already had
        `at_most`)."""
        body = wire.WorkersRequest(
            model=model,
            backend=backend,
            device=device,
            replicas=replicas,
            at_most=at_most,
            slots=shape.slots,
            context=shape.context,
            threads=shape.threads,
            load_timeout=shape.load_timeout,
        )
        # Unset fields left out: a hive of an older rbee refuses fields it does not know.
        response = await self._client.post("/v1/workers", content=body.model_dump_json(exclude_none=True))
        _raise_for(response)
        ids: list[str] = response.json()["workers"]
        # The hive fails a worker at its load timeout; wait a little past that, to read the hive's own sentence.
        deadline = time.monotonic() + (shape.load_timeout + 30.0 if shape.load_timeout else timeout)
        while True:
            state = await self.state()
            workers = {worker.id: worker for worker in state.workers}
            failed = [workers[i] for i in ids if i in workers and workers[i].state is WorkerState.FAILED]
            if failed:
                reasons = "; ".join(f"{worker.id}: {worker.reason}" for worker in failed)
                logs = f"rbee logs worker {failed[0].id} --hive {self.hive.name}"
                raise HiveCallError(f"worker failed to start ({reasons}); its log: {logs}")
            ready = [i for i in ids if i in workers and workers[i].state in (WorkerState.IDLE, WorkerState.BUSY)]
            loading = [p for i in ids if i in workers and (p := workers[i].progress) is not None]
            progress(Readiness(len(ready), len(ids), min(loading) if loading else None))
            if len(ready) == len(ids):
                return ids
            if time.monotonic() > deadline:
                waited = shape.load_timeout + 30.0 if shape.load_timeout else timeout
                raise HiveCallError(f"workers {', '.join(ids)} were not ready after {waited:.0f} s")
            await asyncio.sleep(0.2)

    async def shutdown(self, seconds: float = 20.0) -> bool:
        """Ask the hive to stop (it stops its workers first) and wait until it no longer answers; False when it
        could not be asked or did not stop in time."""
        try:
            response = await self._client.post("/v1/shutdown", timeout=5.0)
        except httpx.HTTPError:
            return False
        if response.status_code != 202:
            return False
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                await self._client.get("/health", timeout=1.0)
            except httpx.HTTPError:
                return True
            await asyncio.sleep(0.1)
        return False

    async def park_worker(self, worker_id: str, reason: str) -> None:
        _raise_for(await self._client.post(f"/v1/workers/{worker_id}/park", json={"reason": reason}, timeout=60.0))

    async def stop_worker(self, worker_id: str) -> None:
        response = await self._client.post(f"/v1/workers/{worker_id}/stop", timeout=60.0)
        if response.status_code != 404:  # already gone is what we wanted
            _raise_for(response)


def _log_query(worker: str | None, lines: int, since: float | None) -> dict[str, str]:
    query = {"lines": str(lines)}
    if worker is not None:
        query["worker"] = worker
    if since is not None:
        query["since"] = str(since)
    return query


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = f"HTTP {response.status_code}"
    raise HiveCallError(message)


class LoadingReports:
    """A worker's reports to the hive that started it: loading progress, ready, or why it failed. Blocking
    calls: the worker loads its model in a thread of its own."""

    def __init__(self, hive_url: str | None, worker_id: str, token: str | None) -> None:
        self.base = f"{hive_url}/v1/workers/{worker_id}" if hive_url else None
        self.headers = wire.bearer(token)

    def progress(self, fraction: float) -> None:
        self._tell("progress", {"progress": round(fraction, 3)})

    def ready(self, report: wire.ReadyReport) -> None:
        self._tell("ready", report.model_dump())

    def failed(self, reason: str) -> None:
        self._tell("failed", {"reason": reason})

    def _tell(self, what: str, body: dict[str, Any]) -> None:
        if self.base is None:
            return
        try:
            httpx.post(
                f"{self.base}/{what}",
                json=body,
                headers=self.headers,
                timeout=10.0,
                trust_env=False,
                verify=tls.context(),
            ).raise_for_status()
        except httpx.HTTPError as error:
            log.error("could not tell the hive this worker is %s: %s", what, error)
