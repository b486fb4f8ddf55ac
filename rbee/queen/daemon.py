"""The queen daemon, `rbee queen serve`: build its parts, start its background tasks by name (poll, reconcile),
serve the API until told to stop, then stop everything in order."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
from pathlib import Path
from typing import Any

from rbee import daemon
from rbee.api.credentials import FleetCredentials
from rbee.clients import tls
from rbee.clients.transcript import path as transcript_file
from rbee.clients.worker import WorkerClient
from rbee.infra.tls import Authority
from rbee.queen import server
from rbee.queen.admission import Admission
from rbee.queen.auth import ApiKeys
from rbee.queen.autoscale import Autoscaler
from rbee.queen.dispatch import Dispatcher
from rbee.queen.events import EventLog
from rbee.queen.fleet import Fleet
from rbee.queen.heartbeats import Heartbeats
from rbee.queen.leadership import Leadership
from rbee.queen.metering import Meter
from rbee.queen.metrics import Metrics
from rbee.queen.parts import Queen
from rbee.queen.reconcile import Reconciler
from rbee.queen.store import Store
from rbee.queen.tasks import TaskStore
from rbee.queen.transcript import Transcript

log = logging.getLogger("rbee.queen")
DEFAULT_RECONCILE_INTERVAL = 30.0


def build(
    state_dir: Path,
    credentials: FleetCredentials,
    *,
    admin_key_file: Path | None = None,
    queue_wait: float | None = None,
    listen: str | None = None,
    tls_served: bool = False,
    store: str | None = None,
) -> Queen:
    """Every part of a queen whose state lives in `state_dir` (its database there too, unless `store` names a
    PostgreSQL one that several queens share), wired by explicit arguments."""
    shared = Store(store or state_dir / "queen.db")
    events = EventLog(shared)
    leadership = Leadership(shared, events, listen)
    admission = Admission()
    fleet = Fleet(
        shared,
        events,
        admission,
        ApiKeys(admin_key_file),
        Heartbeats(listen, tls_served),
        credentials,
        queue_wait,
        state_dir / "policies",
    )
    autoscale = Autoscaler(fleet, admission, events, credentials, leadership)
    admission.wake = autoscale.wake  # a request that finds no worker starts one
    counters = Metrics(admission)
    meter = Meter(shared, counters.registry)
    reconciler = Reconciler(
        fleet,
        events,
        autoscale,
        credentials,
        state_dir,
        state_dir.parent / "wheels",
        Authority(state_dir.parent / "tls"),
        leadership,
    )
    leadership.on_lead = reconciler.request  # a new leader looks at the fleet at once
    return Queen(
        store=shared,
        events=events,
        fleet=fleet,
        admission=admission,
        autoscale=autoscale,
        dispatch=Dispatcher(fleet, admission, autoscale, WorkerClient(), counters, meter),
        tasks=TaskStore(),
        reconciler=reconciler,
        metrics=counters,
        credentials=credentials,
        meter=meter,
        leadership=leadership,
    )


async def poll(queen: Queen, interval: float) -> None:
    """Keep the registry fresh, park idle workers, and ask for a reconcile pass when hives stop beating."""
    while True:
        try:
            if queen.store.shared:
                await follow_store(queen)
            await queen.fleet.refresh()
            queen.autoscale.park_idle()
            silenced = queen.fleet.take_silenced()
            for hive in silenced:
                queen.dispatch.abort_hive(hive, "stopped answering (heartbeats or polls)")
            if silenced:
                queen.reconciler.request()
        except Exception:
            log.exception("refreshing the registry failed")
        await asyncio.sleep(interval)


async def follow_store(queen: Queen) -> None:
    """With several queens on one store: take a spec another queen applied, and, leading, start the workers the
    others asked for (their requests wait for them)."""
    generation = await asyncio.to_thread(queen.store.current_generation)
    if generation > queen.fleet.generation and await asyncio.to_thread(queen.fleet.reload):
        queen.reconciler.spec_changed(queen.fleet.generation)
    if queen.leadership.leading:
        for model in await asyncio.to_thread(queen.store.take_wakes):
            queen.autoscale.wake(model)


async def watch_streams(queen: Queen) -> None:
    """Once a second: end streams gone idle, and note queue depths for the web UI's charts."""
    while True:
        await asyncio.sleep(1.0)
        queen.dispatch.watch()
        admission = queen.admission
        queen.metrics.traffic.sample_queues({model: admission.queue_depth(model) for model in admission.lanes})


def lease_of(queen: Queen) -> float:
    spec = queen.fleet.spec
    return spec.queen.lease if spec is not None else 10.0


async def close(queen: Queen) -> None:
    queen.tasks.cancel_all()
    await queen.reconciler.stop()
    await queen.autoscale.close()
    await queen.dispatch.workers.close()
    await queen.fleet.close()
    queen.leadership.release()
    queen.store.close()


def serve(
    state_dir: Path,
    listen: str,
    credentials: FleetCredentials,
    admin_key_file: Path,
    poll_interval: float = 1.0,
    tls_files: tuple[str, str] | None = None,
    store: str | None = None,
) -> None:
    """Run the queen; with `tls_files` (certificate, key: the keeper issues them when the queen listens off
    loopback) it serves only TLS. Either way it pins the fleet CA for its links to hives and workers."""
    os.umask(0o077)  # its database, log and state are the operator's alone
    tls.pin(Authority(state_dir.parent / "tls").ca_file)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    daemon.configure_logging("%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)

    async def main() -> None:
        queen = build(
            state_dir,
            credentials,
            admin_key_file=admin_key_file,
            listen=listen,
            tls_served=tls_files is not None,
            store=store,
        )
        app: Any = server.create_app(queen)
        recording = transcript_file()
        if recording is not None:  # a test suite's proof bundle asked for it (queen/transcript.py)
            app = Transcript(app, recording)
        uvicorn_server = daemon.server(app, listen, graceful=3, tls=tls_files)
        queen.server = uvicorn_server
        queen.metrics.log_stream = sys.stderr  # the queen's log file (queen_process starts it so)
        spec = queen.fleet.spec
        poller = asyncio.create_task(poll(queen, poll_interval), name="poll")
        watcher = asyncio.create_task(watch_streams(queen), name="watch streams")
        metering = asyncio.create_task(queen.meter.run(), name="metering")
        probing = asyncio.create_task(queen.fleet.providers.watch(), name="providers")
        leading = asyncio.create_task(queen.leadership.run(lambda: lease_of(queen)), name="lease")
        queen.reconciler.start(spec.queen.reconcile_interval if spec else DEFAULT_RECONCILE_INTERVAL)
        # What is built by now lives as long as the queen: out of the collector's sight, so that its collections
        # (triggered by every request's allocations) walk only what requests made.
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)  # a request allocates thousands: the default 700 collected for each one
        serving = await daemon.start(uvicorn_server)
        log.info("queen listening on %s (pid %d)", listen, os.getpid())
        await serving
        for task in (poller, watcher, metering, probing, leading):
            task.cancel()
        queen.meter.flush()
        await close(queen)

    daemon.run(main())
