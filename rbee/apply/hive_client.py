"""The keeper's calls to a hive's HTTP API, for the changes apply executes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from rbee.api import wire
from rbee.api.state import HiveState, WorkerState
from rbee.spec.schema import HiveSpec, ModelSpec

Progress = Callable[[dict[str, Any]], None]


class HiveCallError(Exception):
    """A hive refused or failed a change; the message is the hive's own sentence."""


class HiveClient:
    def __init__(self, hive: HiveSpec, token: str | None) -> None:
        self.hive = hive
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(
            base_url=hive.api_url, headers=headers, timeout=httpx.Timeout(30.0, read=None), trust_env=False
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
        response = await self._client.get("/v1/state")
        _raise_for(response)
        return HiveState.model_validate_json(response.content)

    async def add_model(self, model: ModelSpec, progress: Progress) -> dict[str, Any]:
        body = wire.ModelRequest(
            name=model.name, source=model.source, format=str(model.format), sha256=model.sha256, kind=str(model.kind)
        )
        async with self._client.stream("POST", "/v1/models", content=body.model_dump_json()) as response:
            if response.status_code != 200:
                await response.aread()
                _raise_for(response)
            async for event, data in _sse(response.aiter_lines()):
                if event == "error":
                    raise HiveCallError(str(data.get("error")))
                if data.get("done"):
                    return dict(data.get("entry", {}))
                progress(data)
        raise HiveCallError(f"hive {self.hive.name} ended the download of {model.name} without finishing")

    async def remove_model(self, name: str) -> None:
        _raise_for(await self._client.delete(f"/v1/models/{name}"))

    async def start_workers(
        self, model: str, backend: str, device: str, replicas: int, progress: Progress, timeout: float = 600.0
    ) -> list[str]:
        body = wire.WorkersRequest(model=model, backend=backend, device=device, replicas=replicas)
        response = await self._client.post("/v1/workers", content=body.model_dump_json())
        _raise_for(response)
        ids: list[str] = response.json()["workers"]
        deadline = time.monotonic() + timeout
        while True:
            state = await self.state()
            workers = {worker.id: worker for worker in state.workers}
            failed = [workers[i] for i in ids if i in workers and workers[i].state is WorkerState.FAILED]
            if failed:
                reasons = "; ".join(f"{worker.id}: {worker.reason}" for worker in failed)
                raise HiveCallError(f"worker failed to start ({reasons})")
            ready = [i for i in ids if i in workers and workers[i].state in (WorkerState.IDLE, WorkerState.BUSY)]
            loading = [p for i in ids if i in workers and (p := workers[i].progress) is not None]
            progress({"ready": len(ready), "of": len(ids), **({"loading": min(loading)} if loading else {})})
            if len(ready) == len(ids):
                return ids
            if time.monotonic() > deadline:
                raise HiveCallError(f"workers {', '.join(ids)} were not ready after {timeout:.0f} s")
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


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = f"HTTP {response.status_code}"
    raise HiveCallError(message)


async def _sse(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str | None, dict[str, Any]]]:
    event: str | None = None
    async for line in lines:
        if not line:
            event = None
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            yield event, json.loads(line[5:])
