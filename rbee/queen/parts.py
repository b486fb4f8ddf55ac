"""The queen's parts, built once by `daemon.build` and handed to every handler through the app's state. Each
part is its own concept; this is only where they meet."""

from __future__ import annotations

from dataclasses import dataclass

import uvicorn
from starlette.requests import Request

from rbee.api.credentials import FleetCredentials
from rbee.queen.admission import Admission
from rbee.queen.autoscale import Autoscaler
from rbee.queen.dispatch import Dispatcher
from rbee.queen.events import EventLog
from rbee.queen.fleet import Fleet
from rbee.queen.leadership import Leadership
from rbee.queen.metering import Meter
from rbee.queen.metrics import Metrics
from rbee.queen.reconcile import Reconciler
from rbee.queen.store import Store
from rbee.queen.tasks import TaskStore


@dataclass
class Queen:
    store: Store
    events: EventLog
    fleet: Fleet
    admission: Admission
    autoscale: Autoscaler
    dispatch: Dispatcher
    tasks: TaskStore
    reconciler: Reconciler
    metrics: Metrics
    credentials: FleetCredentials
    meter: Meter
    leadership: Leadership
    server: uvicorn.Server | None = None


def of(request: Request) -> Queen:
    queen: Queen = request.app.state.queen
    return queen
