"""make_plan(desired, observed) -> Plan: the whole decision of what to change, and nothing else.

Pure: it reads two values and returns a third. Apply executes the plan and never decides again.
Only what rbee created is ever planned for removal: unmanaged models and workers are left alone.
"""

from __future__ import annotations

import gc
from collections import defaultdict
from collections.abc import Generator, Iterable, Iterator

from packaging.version import InvalidVersion, Version

from rbee import __version__
from rbee.api.state import (
    CatalogEntry,
    HiveObservation,
    HiveStatus,
    ObservedState,
    WorkerGroup,
    WorkerInfo,
    WorkerState,
)
from rbee.api.units import human_size
from rbee.plan import providers
from rbee.plan.actions import Action, Change, Plan, Symbol, hive_change, model_change, workers_change
from rbee.plan.memory import Ledger
from rbee.spec.schema import HiveFile, HiveSpec, ModelSpec, WorkerSpec, model_dirs
from rbee.spec.source import SourceKind

_RUNNING = frozenset(state for state in WorkerState if state.is_running)

# Which replicas go first when scaling down: those that disturb no request, then the newest.
_STOP_ORDER = {WorkerState.IDLE: 0, WorkerState.LOADING: 1, WorkerState.BUSY: 2}


def make_plan(desired: HiveFile, observed: ObservedState, *, version: str = __version__) -> Plan:
    # A fleet plan allocates one small object per target and none of them form cycles: pausing the cyclic
    # collector keeps it from re-walking the (large) spec and observation on every allocation burst.
    paused = gc.isenabled()
    gc.disable()
    try:
        return _make_plan(desired, observed, version)
    finally:
        if paused:
            gc.enable()


def _make_plan(desired: HiveFile, observed: ObservedState, version: str) -> Plan:
    observations = {hive.name: hive for hive in observed.hives}
    models = {model.name: model for model in desired.models}
    workers_by_hive: dict[str, list[WorkerSpec]] = defaultdict(list)
    for worker in desired.workers:
        workers_by_hive[worker.hive].append(worker)

    changes: list[Change] = []
    for hive in desired.hives:
        observation = observations.pop(hive.name, None) or HiveObservation(
            name=hive.name, status=HiveStatus.DOWN, reason="not observed"
        )
        changes.extend(_plan_hive(hive, observation, workers_by_hive[hive.name], models, version, observed))
    for name in sorted(observations):
        changes.extend(_plan_removed_hive(observations[name]))
    changes.extend(providers.plan(desired, observed))
    return Plan(tuple(changes))


def _plan_hive(
    hive: HiveSpec,
    observation: HiveObservation,
    workers: list[WorkerSpec],
    models: dict[str, ModelSpec],
    version: str,
    observed: ObservedState,
) -> Iterator[Change]:
    name = hive.name
    downloads = {model.source: size for model in models.values() if (size := observed.download_size(model.source))}
    if observation.status is HiveStatus.UNREACHABLE and observation.seen_before:
        count = len({worker.model for worker in workers})
        reason = (
            f"unreachable: {observation.reason}; its models ({count}) and worker groups ({len(workers)}) "
            "wait until it answers"
        )
        yield hive_change(name, Action.WAIT, Symbol.BLOCKED, reason)
        return
    hive_steps = yield from _plan_daemon(hive, observation, version, model_dirs(hive, workers, models))
    state = observation.state if observation.status is HiveStatus.RUNNING else None
    catalog = state.catalog if state is not None else ()
    live_workers = state.workers if state is not None else ()

    needed = list(dict.fromkeys(worker.model for worker in workers))
    catalog_by_name = {entry.name: entry for entry in catalog}
    model_changes = [
        _plan_model(name, models[model], catalog_by_name.get(model), hive_steps, downloads) for model in needed
    ]
    replaced = {change.model for change in model_changes if change.action is Action.REPLACE_MODEL}
    blocked = {change.model for change in model_changes if change.symbol is Symbol.BLOCKED}
    model_steps = {change.model: change.id for change in model_changes if change.is_actionable}

    groups: dict[WorkerGroup, list[WorkerInfo]] = defaultdict(list)
    for live in live_workers:
        if live.managed:
            groups[live.group].append(live)

    ledger = Ledger(state.host if state is not None else None)
    stops: list[Change] = []
    starts: list[Change] = []
    for worker in workers:
        group = groups.pop(worker.group, [])
        if worker.model in blocked:
            reason = f"waits for model {worker.model}, whose name conflicts on this hive"
            starts.append(workers_change(name, worker.group, Action.WAIT, Symbol.BLOCKED, reason))
            continue
        requires = (*hive_steps, *filter(None, [model_steps.get(worker.model)]))
        floor = worker.floor(models.get(worker.model))
        group_stops, group_starts = _plan_group(
            name, worker.group, worker.replicas, floor, group, worker.model in replaced, requires
        )
        stops.extend(group_stops)
        for stop in group_stops:  # this group's starts wait for these stops: their memory is theirs to use
            stopped = [live for live in group if live.id in stop.worker_ids]
            ledger.release(stopped, catalog_by_name.get(worker.model), worker.shape)
        entry = None if worker.model in replaced else catalog_by_name.get(worker.model)
        for start in group_starts:
            if start.action is Action.START_WORKERS:
                model = models.get(worker.model)
                size = downloads.get(model.source) if model is not None else None
                note = ledger.start_note(worker, model, entry, start.replicas, size)
                start = start._replace(reason=start.reason + note)
            starts.append(start)
    for key, group in groups.items():
        running = [live for live in group if live.state.is_running]
        if running:
            reason = f"not in hive.yaml; stop {len(running)} running"
            stops.append(_stop(name, key, Symbol.DESTROY, reason, running))

    stops_by_model: dict[str, list[str]] = defaultdict(list)
    for stop in stops:
        if stop.model:
            stops_by_model[stop.model].append(stop.id)
    yield from stops
    for entry in catalog:
        if entry.name in needed or not entry.managed:
            continue
        if entry.pinned and entry.name in models:
            reason = f"pulled by hand ({human_size(entry.size_bytes)}); kept while hive.yaml names it"
            yield model_change(name, entry.name, Action.NOTHING, Symbol.NOTHING, reason)
            continue
        reason = f"not used by any worker in hive.yaml; frees {human_size(entry.size_bytes)}"
        requires = tuple(stops_by_model.get(entry.name, ()))
        yield model_change(name, entry.name, Action.REMOVE_MODEL, Symbol.DESTROY, reason, requires)
    for change in model_changes:
        if change.action is Action.REPLACE_MODEL:
            extra = tuple(stops_by_model.get(change.model or "", ()))
            change = change._replace(requires=change.requires + extra)
        yield change
    yield from starts


def _plan_daemon(
    hive: HiveSpec, observation: HiveObservation, version: str, roots: tuple[str, ...]
) -> Generator[Change, None, tuple[str, ...]]:
    """The hive daemon itself; returns the ids of the changes its models and workers must wait for."""
    name, state = hive.name, observation.state
    if observation.status is HiveStatus.RUNNING and state is not None:
        if state.version == version and state.model_dirs is not None and set(state.model_dirs) != set(roots):
            # hive.json is rewritten in place; the running daemon reads its file:// roots from it per request
            reason = f"may read file:// models from {_listing(state.model_dirs)}; change that to {_listing(roots)}"
            rewrite = hive_change(name, Action.INSTALL_HIVE, Symbol.CHANGE, reason, step="install")
            yield rewrite
            return (rewrite.id,)
        if state.version == version:
            yield hive_change(name, Action.NOTHING, Symbol.NOTHING, f"already running rbee {version}")
            return ()
        if _newer(state.version, version):
            # Never a silent downgrade: the hive stays as it is (and serves), the operator upgrades the keeper.
            reason = (
                f"runs rbee {state.version}, newer than this rbee {version}; upgrade rbee here "
                f"(pip install -U 'rbee=={state.version}') rather than downgrade the hive"
            )
            yield hive_change(name, Action.WAIT, Symbol.BLOCKED, reason)
            return ()
        reason = f"runs rbee {state.version}; upgrade to {version} and restart the daemon"
        upgrade = hive_change(name, Action.INSTALL_HIVE, Symbol.CHANGE, reason, step="install")
        yield upgrade
        return (upgrade.id,)
    if observation.installed:
        reason = f"installed but the daemon is not running ({observation.reason})"
        start = hive_change(name, Action.START_HIVE, Symbol.CHANGE, reason, step="start")
        yield start
        return (start.id,)
    reason = f"rbee {version} is not installed on {hive.describe_connection()}"
    if observation.status is HiveStatus.UNREACHABLE:
        reason = f"new hive, not reachable yet ({observation.reason})"
    install = hive_change(name, Action.INSTALL_HIVE, Symbol.ADD, reason, step="install")
    start = hive_change(
        name, Action.START_HIVE, Symbol.ADD, "the hive daemon is not running", step="start", requires=(install.id,)
    )
    yield install
    yield start
    return (install.id, start.id)


def _newer(running: str, ours: str) -> bool:
    """Whether a hive's rbee is a later release than this one (a version that does not parse is not newer)."""
    try:
        return Version(running) > Version(ours)
    except InvalidVersion:
        return False


def _listing(folders: tuple[str, ...]) -> str:
    return ", ".join(folders) if folders else "nowhere"


def _plan_model(
    hive: str, spec: ModelSpec, entry: CatalogEntry | None, requires: tuple[str, ...], downloads: dict[str, int]
) -> Change:
    name = spec.name
    size = downloads.get(spec.source)
    download = f" ({human_size(size)} to download)" if size is not None else ""
    if entry is None and spec.parsed_source.kind is SourceKind.SYSTEM:
        reason = f"not in the catalog; {spec.source} is the hive's own program: nothing to download"
        return model_change(hive, name, Action.ADD_MODEL, Symbol.ADD, reason, requires)
    if entry is None:
        reason = f"not in the catalog; fetch {spec.source}{download}"
        return model_change(hive, name, Action.ADD_MODEL, Symbol.ADD, reason, requires)
    differs = (
        entry.source != spec.source
        or (spec.sha256 is not None and entry.sha256 != spec.sha256)
        or entry.mmproj != spec.mmproj
    )
    if not differs:
        sees = ", with its mmproj: sees images" if entry.mmproj else ""
        return model_change(
            hive, name, Action.NOTHING, Symbol.NOTHING, f"in the catalog ({human_size(entry.size_bytes)}{sees})"
        )
    if not entry.managed:
        reason = (
            f"a model named {name} that rbee did not create is in the catalog (from {entry.source}); "
            "rename the model in hive.yaml or remove it from the hive"
        )
        return model_change(hive, name, Action.WAIT, Symbol.BLOCKED, reason)
    what = "source" if entry.source != spec.source else "mmproj" if entry.mmproj != spec.mmproj else "sha256"
    old, new = {
        "source": (entry.source, spec.source),
        "mmproj": (entry.mmproj, spec.mmproj),
        "sha256": (entry.sha256, spec.sha256),
    }[what]
    reason = f"{what} changed: {old} -> {new}{download}"
    return model_change(hive, name, Action.REPLACE_MODEL, Symbol.CHANGE, reason, requires)


def _plan_group(
    hive: str,
    group: WorkerGroup,
    replicas: int,
    floor: int,
    live: list[WorkerInfo],
    model_replaced: bool,
    requires: tuple[str, ...],
) -> tuple[list[Change], list[Change]]:
    """Keep between `floor` and `replicas` running. Workers parked after their idle timeout count toward
    `replicas` (a request starts them again), so only a group below its floor, or one that lost workers to
    crashes, is started here."""
    running = [worker for worker in live if worker.state in _RUNNING]
    parked = 0 if model_replaced else sum(1 for worker in live if worker.state is WorkerState.PARKED)
    failed = [worker for worker in live if worker.state is WorkerState.FAILED] if len(running) < len(live) else []
    stops: list[Change] = []
    if model_replaced and running:
        reason = f"the model changed; stop {len(running)} running on the old one"
        stops.append(_stop(hive, group, Symbol.CHANGE, reason, running))
        running = []
    have = len(running)
    failures = "".join(f"; {worker.id} failed: {worker.reason or 'no reason given'}" for worker in failed)
    wanted = replicas if have > replicas else max(floor, replicas - parked, have)
    if have == wanted:
        noun = "replica" if replicas == 1 else "replicas"
        reason = f"already running {have}/{replicas}" if replicas else f"0 {noun} wanted, none running"
        if wanted < replicas:
            reason = f"{have}/{replicas} running, {replicas - have} parked after idle (started on demand)"
        return stops, [workers_change(hive, group, Action.NOTHING, Symbol.NOTHING, reason + failures)]
    if have < wanted:
        symbol = Symbol.ADD if have == 0 and not stops and not parked else Symbol.CHANGE
        floor_note = f" (at least {floor} stay running)" if wanted == floor and floor < replicas else ""
        reason = f"{have}/{replicas} running; start {wanted - have}{floor_note}{failures}"
        start = workers_change(
            hive,
            group,
            Action.START_WORKERS,
            symbol,
            reason,
            step="start",
            requires=requires + tuple(stop.id for stop in stops),
            replicas=wanted - have,
        )
        return stops, [start]
    ordered = sorted(sorted(running, key=lambda worker: worker.id, reverse=True), key=lambda w: _STOP_ORDER[w.state])
    victims = ordered[: have - replicas]
    reason = f"{have}/{replicas} running; stop {len(victims)} ({', '.join(_ids(victims))})"
    stops.append(_stop(hive, group, Symbol.DESTROY if replicas == 0 else Symbol.CHANGE, reason, victims))
    return stops, []


def _stop(
    hive: str,
    group: WorkerGroup,
    symbol: Symbol,
    reason: str,
    workers: list[WorkerInfo],
    requires: tuple[str, ...] = (),
) -> Change:
    return workers_change(
        hive,
        group,
        Action.STOP_WORKERS,
        symbol,
        reason,
        step="stop",
        requires=requires,
        replicas=len(workers),
        worker_ids=_ids(workers),
    )


def _plan_removed_hive(observation: HiveObservation) -> Iterator[Change]:
    name = observation.name
    if not observation.managed:
        return
    if observation.status is HiveStatus.UNREACHABLE:
        reason = f"not in hive.yaml, but unreachable ({observation.reason}); its removal waits until it answers"
        yield hive_change(name, Action.WAIT, Symbol.BLOCKED, reason)
        return
    state = observation.state
    stops: list[str] = []
    if observation.status is HiveStatus.RUNNING and state is not None:
        groups: dict[WorkerGroup, list[WorkerInfo]] = defaultdict(list)
        for live in state.workers:
            if live.managed and live.state.is_running:
                groups[live.group].append(live)
        for group, workers in groups.items():
            reason = f"hive {name} is not in hive.yaml; stop {len(workers)} running"
            stop = _stop(name, group, Symbol.DESTROY, reason, workers)
            stops.append(stop.id)
            yield stop
        daemon = hive_change(
            name,
            Action.STOP_HIVE,
            Symbol.DESTROY,
            "not in hive.yaml; stop the daemon",
            step="stop",
            requires=tuple(stops),
        )
        stops.append(daemon.id)
        yield daemon
    elif not observation.installed:
        return
    managed = [entry for entry in state.catalog if entry.managed] if state else []
    size = sum(entry.size_bytes for entry in managed)
    freed = f" and its {len(managed)} models ({human_size(size)})" if managed else ""
    reason = f"not in hive.yaml; remove rbee{freed} from the machine"
    yield hive_change(name, Action.UNINSTALL_HIVE, Symbol.DESTROY, reason, step="uninstall", requires=tuple(stops))


def destroy_plan(desired: HiveFile, purge: bool) -> Plan:
    """`rbee destroy`: stop every hive of hive.yaml (each stops its workers first), and with `purge` remove what
    rbee installed there, its models included."""
    changes: list[Change] = []
    for hive in desired.hives:
        stop = hive_change(hive.name, Action.STOP_HIVE, Symbol.DESTROY, "rbee destroy: stop the daemon", step="stop")
        changes.append(stop)
        if purge:
            reason = "rbee destroy --purge: remove rbee and its models from the machine"
            changes.append(
                hive_change(
                    hive.name, Action.UNINSTALL_HIVE, Symbol.DESTROY, reason, step="uninstall", requires=(stop.id,)
                )
            )
    return Plan(tuple(changes))


def _ids(workers: Iterable[WorkerInfo]) -> tuple[str, ...]:
    return tuple(worker.id for worker in workers)
