"""The worker supervisor: spawns each worker as its own process, learns when it is ready, stops it gently then
firmly, and notices when one dies. It restarts nothing on its own: replacing workers is the queen's decision.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rbee import daemon
from rbee.api import credentials
from rbee.api.hive_config import HiveConfig
from rbee.api.state import BACKEND_SHAPE, HostFacts, WorkerGroup, WorkerInfo, WorkerShape, WorkerState
from rbee.clients.worker import WorkerClient
from rbee.hive import config as hive_config
from rbee.hive import detect, model_facts, ports
from rbee.hive.catalog import Catalog, ModelRecord
from rbee.hive.launch import Launch, worker_command
from rbee.spec import placement

log = logging.getLogger("rbee.hive")
LOAD_TIMEOUT = 600.0
STOP_GRACE = 10.0
PROBE_INTERVAL = 4.0
PROBE_TIMEOUT = 2.0
PROBE_MISSES = 3


class SupervisorError(Exception):
    """A worker request the hive cannot carry out; the message says why."""


@dataclass
class Worker:
    id: str
    model: str
    backend: str
    requested_backend: str
    device: str
    requested_device: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    state: WorkerState = WorkerState.LOADING
    reason: str | None = None
    started: float = 0.0
    progress: float | None = None
    missed_probes: int = 0
    """Health probes in a row this worker did not answer in time."""
    slots: int = 1
    """Requests it serves at once, as it reported when ready."""
    load_timeout: float = LOAD_TIMEOUT
    """How long it may load before it counts as failed (hive.yaml's workers[].load_timeout)."""

    @property
    def group(self) -> WorkerGroup:
        return WorkerGroup(self.model, self.requested_backend, self.requested_device)

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            id=self.id,
            model=self.model,
            backend=self.backend,
            requested_backend=self.requested_backend,
            device=self.device,
            requested_device=self.requested_device,
            state=self.state,
            pid=self.process.pid,
            port=self.port,
            reason=self.reason,
            progress=self.progress if self.state is WorkerState.LOADING else None,
            slots=self.slots,
            uptime=round(time.monotonic() - self.started, 1) if self.started else None,
        )


class Supervisor:
    def __init__(self, config: HiveConfig, catalog: Catalog, facts: HostFacts | None = None) -> None:
        self.config = config
        self.catalog = catalog
        self.facts = facts if facts is not None else detect.detect()
        self.workers: dict[str, Worker] = {}
        self.on_change: Callable[[], None] = lambda: None
        """Called whenever a worker changes state (the heartbeat sends the new state at once)."""
        self.parked: dict[str, WorkerInfo] = {}
        """Workers stopped after their idle timeout, kept as records so they still count toward replicas."""
        self._watch: asyncio.Task[None] | None = None
        self.guards = ports.Guards()
        self.token = hive_config.token(config)
        self.worker_client = WorkerClient()

    def start(self) -> None:
        self._watch = asyncio.get_running_loop().create_task(self._watch_processes())

    def infos(self) -> list[WorkerInfo]:
        live = [
            worker.info()
            for worker in self.workers.values()
            if worker.state is not WorkerState.STOPPED and worker.id not in self.parked
        ]
        return live + list(self.parked.values())

    def spawn(
        self,
        record: ModelRecord,
        requested_backend: str,
        requested_device: str,
        replicas: int,
        at_most: int | None = None,
        shape: WorkerShape = BACKEND_SHAPE,
    ) -> list[str]:
        """Start `replicas` workers, or fewer so that the group has no more than `at_most` loading or serving;
        returns their ids at once (they report ready when loaded), none when the group is full already.

        Runs on the event loop's thread on purpose: the parent-death signal fires when the thread that forked
        a child ends, so forking from a short-lived thread would kill the worker with it.
        """
        try:
            backend = placement.choose_backend(record.name, record.kind, record.format, requested_backend, self.facts)
            place = placement.choose_device(requested_device, backend, detect.refresh_free(self.facts))
            per_token, trained = model_facts.kv_facts(Path(record.path), backend)
            shape = placement.fitted(record.size_bytes, per_token, shape, backend, place, trained, replicas)
            cache = placement.kv_cache(per_token, shape, backend, place.id, trained)
            need = placement.footprint(record.size_bytes, cache)
            placement.preflight(record.name, record.size_bytes, place, reserved=need * (replicas - 1), cache=cache)
        except placement.Refused as refusal:
            raise SupervisorError(str(refusal)) from None
        device = place.id
        group = WorkerGroup(record.name, requested_backend, requested_device)
        if at_most is not None:
            running = sum(1 for w in self.workers.values() if w.group == group and w.state.is_running)
            replicas = max(0, min(replicas, at_most - running))
        for worker_id in [w.id for w in self.workers.values() if w.state is WorkerState.FAILED]:
            failed = self.workers[worker_id]
            if failed.group == group:
                del self.workers[worker_id]  # replaced now; its reason stays in the worker table
        unparked = 0
        for worker_id, resting in list(self.parked.items()):
            if unparked < replicas and resting.group == group:
                del self.parked[worker_id]  # started again on demand
                unparked += 1
        ids = []
        for _ in range(replicas):
            seq = self.catalog.next_worker_seq()
            worker_id = f"w-{seq}"
            taken = {worker.port for worker in self.workers.values()} | {self.config.port} | self.guards.ports()
            try:
                reserved = ports.reserve(self.config.host or "127.0.0.1", taken)  # the host the worker serves on
            except ports.NoFreePort as full:
                raise SupervisorError(str(full)) from None
            listener = reserved.listener
            port = listener.getsockname()[1]
            self.guards.hold(port, reserved.guard)
            log_path = self.config.logs_dir / f"worker-{worker_id}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            token_file = self._write_credential(worker_id) if self.token is not None else None
            launch = Launch(worker_id, record, backend, device, port, listener.fileno(), shape, token_file)
            command = worker_command(self.config, launch)
            with log_path.open("ab") as log_file, listener:  # the worker has its own copy of the socket
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    preexec_fn=daemon.parent_death_signal,
                    pass_fds=(listener.fileno(),),
                )
            worker = Worker(
                id=worker_id,
                model=record.name,
                backend=backend,
                requested_backend=requested_backend,
                device=device,
                requested_device=requested_device,
                port=port,
                process=process,
                log_path=log_path,
                started=time.monotonic(),
                load_timeout=shape.load_timeout or LOAD_TIMEOUT,
            )
            self.workers[worker_id] = worker
            self.catalog.record_worker(
                worker_id,
                seq,
                record.name,
                backend,
                requested_backend,
                device,
                requested_device,
                str(WorkerState.LOADING),
                process.pid,
                port,
            )
            ids.append(worker_id)
            self.on_change()
            log.info("started %s for %s (pid %d, port %d)", worker_id, record.name, process.pid, port)
        return ids

    def mark_ready(self, worker_id: str, slots: int = 1) -> Worker:
        worker = self._get(worker_id)
        if worker.state is WorkerState.LOADING:
            worker.state = WorkerState.IDLE
            worker.slots = slots
            self.catalog.update_worker(worker_id, str(WorkerState.IDLE))
            self.on_change()
            log.info("%s is ready after %.1f s", worker_id, time.monotonic() - worker.started)
        return worker

    def mark_progress(self, worker_id: str, fraction: float) -> None:
        worker = self._get(worker_id)
        if worker.state is WorkerState.LOADING:
            worker.progress = max(0.0, min(1.0, fraction))
            self.on_change()

    def mark_failed(self, worker_id: str, reason: str) -> None:
        worker = self._get(worker_id)
        self._fail(worker, reason)

    async def stop(self, worker_id: str) -> None:
        worker = self._get(worker_id)
        if worker.state is WorkerState.STOPPED:
            return
        worker.state = WorkerState.STOPPING
        self.catalog.update_worker(worker_id, str(WorkerState.STOPPING))
        process = worker.process
        if process.poll() is None:
            await self.worker_client.shutdown(
                f"{self._scheme}://{self._worker_host()}:{worker.port}", self._credential(worker_id)
            )
            if not await self._wait_exit(process, STOP_GRACE):
                process.terminate()
                if not await self._wait_exit(process, 5.0):
                    process.kill()
                    await self._wait_exit(process, 5.0)
        worker.state = WorkerState.STOPPED
        self.catalog.update_worker(worker_id, str(WorkerState.STOPPED), ended=True)
        self._credential_path(worker_id).unlink(missing_ok=True)
        del self.workers[worker_id]
        self.on_change()
        log.info("stopped %s", worker_id)

    async def park(self, worker_id: str, reason: str) -> WorkerInfo:
        """Stop an idle worker, freeing its memory, and keep its record as parked."""
        worker = self._get(worker_id)
        if worker.state not in (WorkerState.IDLE, WorkerState.BUSY):
            raise SupervisorError(f"worker {worker_id} is {worker.state}; only a running worker can be parked")
        record = worker.info().model_copy(update={"state": WorkerState.PARKED, "pid": None, "reason": reason})
        self.parked[worker_id] = record  # parked from now on, for whoever looks while it stops
        self.on_change()
        await self.stop(worker_id)
        self.catalog.update_worker(worker_id, str(WorkerState.PARKED), reason, ended=True)
        log.info("parked %s: %s", worker_id, reason)
        return record

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(worker_id) for worker_id in list(self.workers)))
        await self.worker_client.close()
        self.guards.close_all()

    def unpark(self, worker_id: str) -> bool:
        """Forget a parked worker (it is stopped already); False when `worker_id` is not parked."""
        return self.parked.pop(worker_id, None) is not None

    def forget_parked(self, model: str) -> None:
        """Forget the parked workers of a model leaving the catalog."""
        for worker_id in [worker.id for worker in self.parked.values() if worker.model == model]:
            del self.parked[worker_id]

    def uses_model(self, name: str) -> list[str]:
        return [w.id for w in self.workers.values() if w.model == name and w.state is not WorkerState.FAILED]

    def _get(self, worker_id: str) -> Worker:
        worker = self.workers.get(worker_id)
        if worker is None:
            raise KeyError(worker_id)
        return worker

    def _fail(self, worker: Worker, reason: str) -> None:
        if worker.state in (WorkerState.STOPPING, WorkerState.STOPPED, WorkerState.FAILED):
            return
        worker.state = WorkerState.FAILED
        worker.reason = reason
        self.catalog.update_worker(worker.id, str(WorkerState.FAILED), reason, ended=True)
        self.on_change()
        if worker.process.poll() is None:
            worker.process.kill()
        log.warning("%s failed: %s", worker.id, reason)

    async def _watch_processes(self) -> None:
        probed = time.monotonic()
        probing: asyncio.Future[list[None]] | None = None
        while True:
            await asyncio.sleep(0.2)
            self.guards.sweep({worker.port for worker in self.workers.values()})
            for worker in list(self.workers.values()):
                code = worker.process.poll()
                if code is not None and worker.state in (WorkerState.LOADING, WorkerState.IDLE, WorkerState.BUSY):
                    self._fail(worker, f"the process exited with code {code}{_last_line(worker.log_path)}")
                elif worker.state is WorkerState.LOADING and time.monotonic() - worker.started > worker.load_timeout:
                    self._fail(worker, f"not ready after {worker.load_timeout:g} s (workers[].load_timeout)")
            if time.monotonic() - probed >= PROBE_INTERVAL and (probing is None or probing.done()):
                # Probes run beside this loop: a frozen worker's probe waits out its timeout while exits of
                # other workers are still seen within 0.2 s. A frozen worker is failed within about
                # PROBE_MISSES * PROBE_INTERVAL + PROBE_TIMEOUT (14 s).
                probed = time.monotonic()
                running = [w for w in self.workers.values() if w.state in (WorkerState.IDLE, WorkerState.BUSY)]
                probing = asyncio.ensure_future(asyncio.gather(*(self._probe(worker) for worker in running)))

    async def _probe(self, worker: Worker) -> None:
        """A worker alive but frozen (stopped, deadlocked) answers no health probe: after PROBE_MISSES in a row
        it is killed and failed, so the queen replaces it. The worker answers from its event loop, not from the
        thread that generates, so a long generation does not miss probes."""
        url = f"{self._scheme}://{self._worker_host()}:{worker.port}"
        if await self.worker_client.healthy(url, PROBE_TIMEOUT):
            worker.missed_probes = 0
            return
        worker.missed_probes += 1
        if worker.missed_probes >= PROBE_MISSES and worker.state in (WorkerState.IDLE, WorkerState.BUSY):
            silent = PROBE_MISSES * PROBE_INTERVAL
            self._fail(worker, f"answered no health probe for {silent:.0f} s (frozen?); killed")

    async def _wait_exit(self, process: subprocess.Popen[bytes], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while process.poll() is None:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def _credential(self, worker_id: str) -> str | None:
        return credentials.worker_credential(self.token, worker_id) if self.token else None

    def _credential_path(self, worker_id: str) -> Path:
        return self.config.root / "workers" / f"{worker_id}.token"

    def _write_credential(self, worker_id: str) -> Path:
        """The worker's own credential, in a file only its user can read (never in its command line)."""
        path = self._credential_path(worker_id)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(self._credential(worker_id) or "")
        return path

    @property
    def _scheme(self) -> str:
        return "https" if self.config.tls is not None else "http"

    def _worker_host(self) -> str:
        host = self.config.host
        return "127.0.0.1" if host in ("", "0.0.0.0") else host


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return f": {lines[-1][-300:]}" if lines else ""
