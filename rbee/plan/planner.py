"""make_plan(desired, observed) -> Plan: the whole decision of what to change, and nothing else.

Pure: it reads two values and returns a third. Apply executes the plan and never decides again.
Only what rbee created is ever planned for removal: unmanaged models and workers are left alone.
"""

from __future__ import annotations

import gc
from collections import defaultdict
from collections.abc import Iterable, Iterator

from rbee import __version__
from rbee.api.state import CatalogEntry, HiveObservation, HiveStatus, ObservedState, WorkerInfo, WorkerState
from rbee.plan.actions import Action, Change, Plan, Symbol
from rbee.spec.schema import HiveFile, HiveSpec, ModelSpec, WorkerSpec

GroupKey = tuple[str, str, str]
"""A worker group: (model, requested backend, requested device)."""

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
        changes.extend(_plan_hive(hive, observation, workers_by_hive[hive.name], models, version))
    for name in sorted(observations):
        changes.extend(_plan_removed_hive(observations[name]))
    return Plan(tuple(changes))


def group_label(model: str, backend: str, device: str) -> str:
    if backend == "auto":
        return f"workers {model}" if device == "auto" else f"workers {model} [{device}]"
    return f"workers {model} [{backend}]" if device == "auto" else f"workers {model} [{backend}, {device}]"


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def _plan_hive(
    hive: HiveSpec,
    observation: HiveObservation,
    workers: list[WorkerSpec],
    models: dict[str, ModelSpec],
    version: str,
) -> Iterator[Change]:
    name = hive.name
    if observation.status is HiveStatus.UNREACHABLE and observation.seen_before:
        count = len({worker.model for worker in workers})
        yield Change(
            f"{name}/hive",
            Action.WAIT,
            Symbol.BLOCKED,
            name,
            f"hive {name}",
            f"unreachable: {observation.reason}; its models ({count}) and worker groups ({len(workers)}) "
            "wait until it answers",
        )
        return

    hive_steps: list[str] = []
    catalog: tuple[CatalogEntry, ...] = ()
    live_workers: tuple[WorkerInfo, ...] = ()
    state = observation.state
    if observation.status is HiveStatus.RUNNING and state is not None:
        catalog, live_workers = state.catalog, state.workers
        if state.version != version:
            hive_steps.append(f"{name}/hive/install")
            yield Change(
                hive_steps[-1],
                Action.INSTALL_HIVE,
                Symbol.CHANGE,
                name,
                f"hive {name}",
                f"runs rbee {state.version}; upgrade to {version} and restart the daemon",
            )
        else:
            yield Change(
                f"{name}/hive",
                Action.NOTHING,
                Symbol.NOTHING,
                name,
                f"hive {name}",
                f"already running rbee {version}",
            )
    elif observation.installed:
        hive_steps.append(f"{name}/hive/start")
        yield Change(
            hive_steps[-1],
            Action.START_HIVE,
            Symbol.CHANGE,
            name,
            f"hive {name}",
            f"installed but the daemon is not running ({observation.reason})",
        )
    else:
        not_installed = f"rbee {version} is not installed on {hive.describe_connection()}"
        if observation.status is HiveStatus.UNREACHABLE:
            not_installed = f"new hive, not reachable yet ({observation.reason})"
        hive_steps.append(f"{name}/hive/install")
        yield Change(hive_steps[-1], Action.INSTALL_HIVE, Symbol.ADD, name, f"hive {name}", not_installed)
        hive_steps.append(f"{name}/hive/start")
        yield Change(
            hive_steps[-1],
            Action.START_HIVE,
            Symbol.ADD,
            name,
            f"hive {name}",
            "the hive daemon is not running",
            requires=(hive_steps[0],),
        )

    needed = list(dict.fromkeys(worker.model for worker in workers))
    catalog_by_name = {entry.name: entry for entry in catalog}
    model_steps: dict[str, str] = {}
    replaced: set[str] = set()
    blocked: set[str] = set()
    model_changes: list[Change] = []
    for model_name in needed:
        spec, entry = models[model_name], catalog_by_name.get(model_name)
        change = _plan_model(name, spec, entry, tuple(hive_steps))
        model_changes.append(change)
        if change.action is Action.REPLACE_MODEL:
            replaced.add(model_name)
        if change.symbol is Symbol.BLOCKED:
            blocked.add(model_name)
        elif change.is_actionable:
            model_steps[model_name] = change.id

    groups: dict[GroupKey, list[WorkerInfo]] = defaultdict(list)
    for live in live_workers:
        if live.managed:
            groups[(live.model, live.requested_backend, live.requested_device)].append(live)

    stops: list[Change] = []
    starts: list[Change] = []
    for worker in workers:
        key: GroupKey = (worker.model, worker.backend, worker.device)
        group = groups.pop(key, [])
        if worker.model in blocked:
            starts.append(
                Change(
                    f"{name}/workers/{':'.join(key)}",
                    Action.WAIT,
                    Symbol.BLOCKED,
                    name,
                    group_label(*key),
                    f"waits for model {worker.model}, whose name conflicts on this hive",
                    model=worker.model,
                )
            )
            continue
        group_stops, group_starts = _plan_group(
            name,
            key,
            worker.replicas,
            worker.floor(models.get(worker.model)),
            group,
            worker.model in replaced,
            (*hive_steps, *filter(None, [model_steps.get(worker.model)])),
        )
        stops.extend(group_stops)
        starts.extend(group_starts)
    for key, group in groups.items():
        running = [live for live in group if live.state.is_running]
        if running:
            stops.append(
                Change(
                    f"{name}/workers/{':'.join(key)}/stop",
                    Action.STOP_WORKERS,
                    Symbol.DESTROY,
                    name,
                    group_label(*key),
                    f"not in hive.yaml; stop {len(running)} running",
                    model=key[0],
                    backend=key[1],
                    device=key[2],
                    replicas=len(running),
                    worker_ids=_ids(running),
                )
            )

    stops_by_model: dict[str, list[str]] = defaultdict(list)
    for stop in stops:
        if stop.model:
            stops_by_model[stop.model].append(stop.id)
    yield from stops
    for entry in catalog:
        if entry.name in needed or not entry.managed:
            continue
        yield Change(
            f"{name}/model/{entry.name}",
            Action.REMOVE_MODEL,
            Symbol.DESTROY,
            name,
            f"model {entry.name}",
            f"not used by any worker in hive.yaml; frees {human_size(entry.size_bytes)}",
            requires=tuple(stops_by_model.get(entry.name, ())),
            model=entry.name,
        )
    for change in model_changes:
        if change.action is Action.REPLACE_MODEL:
            extra = tuple(stops_by_model.get(change.model or "", ()))
            change = change._replace(requires=change.requires + extra)
        yield change
    yield from starts


def _plan_model(hive: str, spec: ModelSpec, entry: CatalogEntry | None, requires: tuple[str, ...]) -> Change:
    change_id, target = f"{hive}/model/{spec.name}", f"model {spec.name}"
    if entry is None:
        return Change(
            change_id,
            Action.ADD_MODEL,
            Symbol.ADD,
            hive,
            target,
            f"not in the catalog; fetch {spec.source}",
            requires=requires,
            model=spec.name,
        )
    differs = entry.source != spec.source or (spec.sha256 is not None and entry.sha256 != spec.sha256)
    if not differs:
        return Change(
            change_id,
            Action.NOTHING,
            Symbol.NOTHING,
            hive,
            target,
            f"in the catalog ({human_size(entry.size_bytes)})",
            model=spec.name,
        )
    if not entry.managed:
        return Change(
            change_id,
            Action.WAIT,
            Symbol.BLOCKED,
            hive,
            target,
            f"a model named {spec.name} that rbee did not create is in the catalog (from {entry.source}); "
            "rename the model in hive.yaml or remove it from the hive",
            model=spec.name,
        )
    what = "source" if entry.source != spec.source else "sha256"
    old, new = (entry.source, spec.source) if what == "source" else (entry.sha256, spec.sha256)
    return Change(
        change_id,
        Action.REPLACE_MODEL,
        Symbol.CHANGE,
        hive,
        target,
        f"{what} changed: {old} -> {new}",
        requires=requires,
        model=spec.name,
    )


def _plan_group(
    hive: str,
    key: GroupKey,
    replicas: int,
    floor: int,
    group: list[WorkerInfo],
    model_replaced: bool,
    requires: tuple[str, ...],
) -> tuple[list[Change], list[Change]]:
    """Keep between `floor` and `replicas` running. Workers parked after their idle timeout count toward
    `replicas` (a request starts them again), so only a group below its floor, or one that lost workers to
    crashes, is started here."""
    model, backend, device = key
    base_id, label = f"{hive}/workers/{model}:{backend}:{device}", group_label(*key)
    running = [live for live in group if live.state in _RUNNING]
    parked = 0 if model_replaced else sum(1 for live in group if live.state is WorkerState.PARKED)
    failed = [live for live in group if live.state is WorkerState.FAILED] if len(running) < len(group) else []
    stops: list[Change] = []
    if model_replaced and running:
        stops.append(
            Change(
                f"{base_id}/stop",
                Action.STOP_WORKERS,
                Symbol.CHANGE,
                hive,
                label,
                f"the model changed; stop {len(running)} running on the old one",
                model=model,
                backend=backend,
                device=device,
                replicas=len(running),
                worker_ids=_ids(running),
            )
        )
        running = []
    have = len(running)
    failures = "".join(f"; {live.id} failed: {live.reason or 'no reason given'}" for live in failed) if failed else ""
    wanted = replicas if have > replicas else max(floor, replicas - parked, have)
    if have == wanted:
        noun = "replica" if replicas == 1 else "replicas"
        reason = f"already running {have}/{replicas}" if replicas else f"0 {noun} wanted, none running"
        if wanted < replicas:
            reason = f"{have}/{replicas} running, {replicas - have} parked after idle (started on demand)"
        return stops, [
            Change(
                base_id,
                Action.NOTHING,
                Symbol.NOTHING,
                hive,
                label,
                reason + failures,
                model=model,
                backend=backend,
                device=device,
            )
        ]
    if have < wanted:
        symbol = Symbol.ADD if have == 0 and not stops and not parked else Symbol.CHANGE
        if stops:
            requires = requires + tuple(stop.id for stop in stops)
        floor_note = f" (at least {floor} stay running)" if wanted == floor and floor < replicas else ""
        return stops, [
            Change(
                f"{base_id}/start",
                Action.START_WORKERS,
                symbol,
                hive,
                label,
                f"{have}/{replicas} running; start {wanted - have}{floor_note}{failures}",
                requires=requires,
                model=model,
                backend=backend,
                device=device,
                replicas=wanted - have,
            )
        ]
    ordered = sorted(sorted(running, key=lambda live: live.id, reverse=True), key=lambda w: _STOP_ORDER[w.state])
    victims = ordered[: have - replicas]
    symbol = Symbol.DESTROY if replicas == 0 else Symbol.CHANGE
    stops.append(
        Change(
            f"{base_id}/stop",
            Action.STOP_WORKERS,
            symbol,
            hive,
            label,
            f"{have}/{replicas} running; stop {len(victims)} ({', '.join(_ids(victims))})",
            model=model,
            backend=backend,
            device=device,
            replicas=len(victims),
            worker_ids=_ids(victims),
        )
    )
    return stops, []


def _plan_removed_hive(observation: HiveObservation) -> Iterator[Change]:
    name = observation.name
    if not observation.managed:
        return
    if observation.status is HiveStatus.UNREACHABLE:
        yield Change(
            f"{name}/hive",
            Action.WAIT,
            Symbol.BLOCKED,
            name,
            f"hive {name}",
            f"not in hive.yaml, but unreachable ({observation.reason}); its removal waits until it answers",
        )
        return
    state = observation.state
    stops: list[str] = []
    if observation.status is HiveStatus.RUNNING and state is not None:
        groups: dict[GroupKey, list[WorkerInfo]] = defaultdict(list)
        for live in state.workers:
            if live.managed and live.state.is_running:
                groups[(live.model, live.requested_backend, live.requested_device)].append(live)
        for key, group in groups.items():
            stops.append(f"{name}/workers/{':'.join(key)}/stop")
            yield Change(
                stops[-1],
                Action.STOP_WORKERS,
                Symbol.DESTROY,
                name,
                group_label(*key),
                f"hive {name} is not in hive.yaml; stop {len(group)} running",
                model=key[0],
                backend=key[1],
                device=key[2],
                replicas=len(group),
                worker_ids=_ids(group),
            )
        stops.append(f"{name}/hive/stop")
        yield Change(
            stops[-1],
            Action.STOP_HIVE,
            Symbol.DESTROY,
            name,
            f"hive {name}",
            "not in hive.yaml; stop the daemon",
            requires=tuple(stops[:-1]),
        )
    elif not observation.installed:
        return
    managed = [entry for entry in state.catalog if entry.managed] if state else []
    size = sum(entry.size_bytes for entry in managed)
    freed = f" and its {len(managed)} models ({human_size(size)})" if managed else ""
    yield Change(
        f"{name}/hive/uninstall",
        Action.UNINSTALL_HIVE,
        Symbol.DESTROY,
        name,
        f"hive {name}",
        f"not in hive.yaml; remove rbee{freed} from the machine",
        requires=tuple(stops),
    )


def _ids(workers: Iterable[WorkerInfo]) -> tuple[str, ...]:
    return tuple(worker.id for worker in workers)
