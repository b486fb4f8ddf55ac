"""The hive daemon's HTTP API: `rbee hive serve`.

GET /health (open), and with the hive's own credential: GET /v1/state, POST /v1/models (SSE progress),
DELETE /v1/models/{name}, POST /v1/workers, POST /v1/workers/{id}/ready|progress|failed|stop|park,
POST /v1/heartbeat (a queen subscribes to heartbeats), POST /v1/shutdown. Commands that change the hive are
fenced (fencing.py): one from a queen that no longer leads is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pydantic
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from rbee import __version__, daemon
from rbee.api import credentials, wire
from rbee.api.hive_config import PID_NAME, HiveConfig
from rbee.api.state import HiveState, WorkerShape
from rbee.clients import tls
from rbee.hive import config as hive_config
from rbee.hive import detect, fencing, logs_api, model_facts, provision
from rbee.hive.catalog import Catalog
from rbee.hive.fencing import Fence
from rbee.hive.heartbeat import Heartbeat
from rbee.hive.jobs import ProvisionJob
from rbee.hive.supervisor import Supervisor, SupervisorError
from rbee.spec import backends

log = logging.getLogger("rbee.hive")
"""Seconds of silence after which a progress stream gets an SSE comment."""
Handler = Callable[[Request], Awaitable[Response]]
MEMORY_FRESH = 5.0
"""Seconds a reading of the devices' free memory is reused for GET /v1/state (nvidia-smi takes a while)."""


class Hive:
    def __init__(self, config: HiveConfig) -> None:
        self.config = config
        self.catalog = Catalog(config.root / "hive.db")
        ended = self.catalog.end_orphaned_workers()
        if ended:
            log.info("%d workers of an earlier daemon are recorded as stopped", ended)
        self.supervisor = Supervisor(config, self.catalog)
        self.token = hive_config.token(config)
        self.heartbeat = Heartbeat(self.state, self.token)
        self.fence = Fence(config.root / "fence")
        self.supervisor.on_change = self.heartbeat.changed
        self.server: uvicorn.Server | None = None
        self._model_locks: dict[str, asyncio.Lock] = {}
        self.jobs: dict[str, ProvisionJob] = {}
        """The provisioning job running for each model, if any."""
        self._stopping: asyncio.Task[None] | None = None
        self._memory_read = 0.0

    def state(self) -> HiveState:
        return HiveState(
            name=self.config.name,
            version=__version__,
            backends=tuple(b for b in self.supervisor.facts.engines if b in backends.TABLE),
            host=self.supervisor.facts,
            catalog=tuple(model_facts.entry(record) for record in self.catalog.models()),
            workers=tuple(self.supervisor.infos()),
            model_dirs=hive_config.model_dirs(self.config),
        )

    async def read_free_memory(self) -> None:
        """Free memory as it is now, for a caller about to plan; heartbeats reuse the last reading."""
        if time.monotonic() - self._memory_read < MEMORY_FRESH:
            return
        self._memory_read = time.monotonic()
        self.supervisor.facts = await asyncio.to_thread(detect.refresh_free, self.supervisor.facts)

    def model_lock(self, name: str) -> asyncio.Lock:
        """One provisioning of a model at a time: a second request for it waits, then finds it in the catalog."""
        return self._model_locks.setdefault(name, asyncio.Lock())

    def stop_soon(self) -> None:
        """Begin `shutdown` (on SIGTERM, or when asked over HTTP) and return at once."""
        self._stopping = asyncio.get_running_loop().create_task(self.shutdown())

    async def shutdown(self) -> None:
        await self.heartbeat.stop()
        await self.supervisor.stop_all()
        if self.server is not None:
            self.server.should_exit = True


def error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse(wire.error_body(message, code), status)


async def parse(request: Request, model: type[pydantic.BaseModel]) -> Any:
    try:
        return model.model_validate_json(await request.body())
    except pydantic.ValidationError as failure:
        raise BadRequest(daemon.first_error(failure)) from None


class BadRequest(Exception):
    pass


def create_app(hive: Hive) -> Starlette:
    own = daemon.token_guard(hive.token)

    def answered(handler: Handler) -> Handler:
        async def check(request: Request) -> Response:
            try:
                return await handler(request)
            except BadRequest as bad:
                return error(400, str(bad), "invalid_request")

        return check

    def guarded(handler: Handler) -> Handler:
        """The hive's own credential (what the queen and the keeper send)."""
        return own(answered(handler))

    def commanded(handler: Handler) -> Handler:
        """A command that changes the hive: the hive's credential, and no stale leader's lease (fencing.py)."""

        async def check(request: Request) -> Response:
            refused = hive.fence.admit(request.headers.get(fencing.HEADER))
            if refused is not None:
                return error(409, refused, "fenced")
            return await answered(handler)(request)

        return own(check)

    def reported(handler: Handler) -> Handler:
        """A worker's report about itself: its own credential, or the hive's."""

        async def check(request: Request) -> Response:
            given = credentials.bearer_of(request.headers.get("authorization", ""))
            worker = credentials.worker_credential(hive.token, request.path_params["id"]) if hive.token else None
            if hive.token is not None and not (
                credentials.matches(given, hive.token) or (worker is not None and credentials.matches(given, worker))
            ):
                return error(401, "this worker's or this hive's credential is required", "unauthorized")
            return await answered(handler)(request)

        return check

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "name": hive.config.name, "version": __version__})

    async def get_state(request: Request) -> Response:
        await hive.read_free_memory()
        return Response(hive.state().model_dump_json(), media_type="application/json")

    async def add_model(request: Request) -> Response:
        body: wire.ModelRequest = await parse(request, wire.ModelRequest)
        job = _job_for(hive, body)
        if job is None:
            message = f"model {body.name} is being fetched from another source now; ask again when that has ended"
            return error(409, message, "provision_busy")
        return StreamingResponse(job.follow(), media_type="text/event-stream")

    async def remove_model(request: Request) -> Response:
        name = request.path_params["name"]
        record = hive.catalog.model(name)
        if record is None:
            return error(404, f"model {name} is not in this hive's catalog", "not_found")
        users = hive.supervisor.uses_model(name)
        if users:
            return error(409, f"model {name} is used by workers {', '.join(users)}; stop them first", "in_use")
        hive.catalog.delete_model(name)
        hive.heartbeat.changed()  # the queen's view of the catalog is its last heartbeat
        hive.supervisor.forget_parked(name)
        if record.owns_files:
            folder = hive.config.models_dir / name
            await asyncio.to_thread(_remove_tree, folder)
        return JSONResponse({"removed": name, "freed_bytes": record.size_bytes if record.owns_files else 0})

    async def start_workers(request: Request) -> Response:
        body: wire.WorkersRequest = await parse(request, wire.WorkersRequest)
        record = hive.catalog.model(body.model)
        if record is None:
            return error(404, f"model {body.model} is not in this hive's catalog; add it first", "not_found")
        try:
            ids = hive.supervisor.spawn(
                record,
                body.backend,
                body.device,
                body.replicas,
                body.at_most,
                WorkerShape(body.slots, body.context, body.threads, body.load_timeout),
            )
        except SupervisorError as failure:
            return error(422, str(failure), "unsupported")
        return JSONResponse({"workers": ids}, 202)

    async def worker_ready(request: Request) -> Response:
        report: wire.ReadyReport = await parse(request, wire.ReadyReport)
        try:
            hive.supervisor.mark_ready(request.path_params["id"], report.slots)
        except KeyError:
            return error(404, f"no worker {request.path_params['id']} on this hive", "not_found")
        return JSONResponse({"ok": True, "port": report.port})

    async def worker_progress(request: Request) -> Response:
        body = await request.json() if await request.body() else {}
        try:
            hive.supervisor.mark_progress(request.path_params["id"], float(body.get("progress", 0.0)))
        except KeyError:
            return error(404, f"no worker {request.path_params['id']} on this hive", "not_found")
        except (TypeError, ValueError):
            return error(400, "progress must be a number", "invalid_request")
        return JSONResponse({"ok": True})

    async def worker_failed(request: Request) -> Response:
        body = await request.json() if await request.body() else {}
        try:
            hive.supervisor.mark_failed(request.path_params["id"], str(body.get("reason", "no reason given")))
        except KeyError:
            return error(404, f"no worker {request.path_params['id']} on this hive", "not_found")
        return JSONResponse({"ok": True})

    async def stop_worker(request: Request) -> Response:
        worker_id = request.path_params["id"]
        if hive.supervisor.unpark(worker_id):
            return JSONResponse({"stopped": worker_id})
        try:
            await hive.supervisor.stop(worker_id)
        except KeyError:
            return error(404, f"no worker {worker_id} on this hive", "not_found")
        return JSONResponse({"stopped": worker_id})

    async def park_worker(request: Request) -> Response:
        body = await request.json() if await request.body() else {}
        reason = str(body.get("reason") or "idle; started again on demand")
        try:
            record = await hive.supervisor.park(request.path_params["id"], reason)
        except KeyError:
            return error(404, f"no worker {request.path_params['id']} on this hive", "not_found")
        except SupervisorError as failure:
            return error(409, str(failure), "not_running")
        return JSONResponse(record.model_dump(mode="json"))

    async def subscribe(request: Request) -> Response:
        body: wire.HeartbeatSubscription = await parse(request, wire.HeartbeatSubscription)
        hive.heartbeat.subscribe(body.url, body.interval)
        return JSONResponse({"url": body.url, "interval": body.interval})

    async def get_logs(request: Request) -> Response:
        return await logs_api.read(request, hive.config.logs_dir, hive.catalog)

    async def shutdown(request: Request) -> Response:
        hive.stop_soon()
        return JSONResponse({"state": "stopping"}, 202)

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/state", guarded(get_state)),
            Route("/v1/logs", guarded(get_logs)),
            Route("/v1/models", commanded(add_model), methods=["POST"]),
            Route("/v1/models/{name}", commanded(remove_model), methods=["DELETE"]),
            Route("/v1/workers", commanded(start_workers), methods=["POST"]),
            Route("/v1/workers/{id}/ready", reported(worker_ready), methods=["POST"]),
            Route("/v1/workers/{id}/failed", reported(worker_failed), methods=["POST"]),
            Route("/v1/workers/{id}/progress", reported(worker_progress), methods=["POST"]),
            Route("/v1/workers/{id}/stop", commanded(stop_worker), methods=["POST"]),
            Route("/v1/workers/{id}/park", commanded(park_worker), methods=["POST"]),
            Route("/v1/heartbeat", guarded(subscribe), methods=["POST"]),
            Route("/v1/shutdown", commanded(shutdown), methods=["POST"]),
        ]
    )


def _job_for(hive: Hive, body: wire.ModelRequest) -> ProvisionJob | None:
    """The job that puts `body` in the catalog: the running one for this model, or a new one; None when the
    model is being fetched from another source right now."""
    job = hive.jobs.get(body.name)
    if job is None or job.finished:
        job = hive.jobs[body.name] = ProvisionJob(body)
        job.task = asyncio.create_task(_run_job(hive, job), name=f"provision {body.name}")
    elif not job.body.same_fetch(body):
        return None
    if body.pinned:
        job.pinned = True
    return job


async def _run_job(hive: Hive, job: ProvisionJob) -> None:
    body = job.body
    try:
        async with hive.model_lock(body.name):
            job.end(await _fetch(hive, job))
    except Exception as failure:  # the job must end, whatever broke: its listeners wait for an ending
        log.exception("provisioning %s failed", body.name)
        job.end(wire.error_event(f"model {body.name}: {failure}", "provision_failed"))
    finally:
        job.end(wire.error_event(f"model {body.name}: the fetch ended without an answer", "provision_failed"))
        if hive.jobs.get(body.name) is job:
            del hive.jobs[body.name]


async def _fetch(hive: Hive, job: ProvisionJob) -> bytes:
    """Fetch and catalog the model; returns the job's ending frame. Holds no lock of its own: its job does."""
    body = job.body
    existing = hive.catalog.model(body.name)
    same = existing and existing.source == body.source and existing.mmproj == body.mmproj
    if same and existing and body.sha256 in (None, existing.sha256):
        if job.pinned and not existing.pinned:
            hive.catalog.pin(body.name)
            hive.heartbeat.changed()
            existing = hive.catalog.model(body.name) or existing
        return wire.sse({"done": True, "entry": existing.entry().model_dump(), "already": True})
    loop = asyncio.get_running_loop()
    last_sent = 0.0

    def report(event: wire.DownloadProgress | wire.StageProgress) -> None:
        loop.call_soon_threadsafe(publish, event)

    def publish(event: wire.DownloadProgress | wire.StageProgress) -> None:
        nonlocal last_sent
        now = loop.time()
        if isinstance(event, wire.StageProgress) or now - last_sent > 0.2 or event.bytes == event.total:
            last_sent = now
            job.progress(wire.sse(event.model_dump(exclude_none=True)))

    roots = hive_config.model_dirs(hive.config)
    try:
        record = await asyncio.to_thread(provision.provision, body, hive.config.models_dir, report, roots)
    except provision.ProvisionError as failure:
        return wire.error_event(f"model {body.name}: {failure}", "provision_failed")
    if existing and existing.owns_files and existing.path != record.path:
        await asyncio.to_thread(_remove_tree, Path(existing.path))
    pinned = job.pinned or bool(existing and existing.pinned)
    record = dataclasses.replace(record, pinned=pinned)
    hive.catalog.put_model(record)
    hive.heartbeat.changed()
    return wire.sse({"done": True, "entry": record.entry().model_dump()})


def _remove_tree(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def serve(config: HiveConfig) -> None:
    config.logs_dir.mkdir(parents=True, exist_ok=True)
    daemon.configure_logging("%(asctime)s hive %(levelname)s %(message)s")
    hive = Hive(config)
    tls.pin(config.ca_file)
    served = hive.server = daemon.server(create_app(hive), config.listen, graceful=5, tls=config.tls)

    async def main() -> None:
        hive.supervisor.start()
        serving = await daemon.start(served, hive.stop_soon)
        await serving
        await hive.supervisor.stop_all()

    # The hive writes its own pidfile (a hive that systemd starts has no shell to write it), and removes it when
    # it stops cleanly: then nothing claims to run here any more.
    pidfile = config.root / PID_NAME
    pidfile.write_text(f"{os.getpid()}\n")
    log.info("hive %s listening on %s (pid %d)", config.name, config.listen, os.getpid())
    try:
        daemon.run(main())
        hive.catalog.close()
    finally:
        with contextlib.suppress(OSError):
            if pidfile.read_text().strip() == str(os.getpid()):
                pidfile.unlink()
