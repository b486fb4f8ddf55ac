"""The vocabulary of a plan: actions, their symbols, changes and the plan itself. Immutable values only."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from rbee.api.state import WorkerGroup


class Action(StrEnum):
    INSTALL_HIVE = "install-hive"
    START_HIVE = "start-hive"
    STOP_HIVE = "stop-hive"
    UNINSTALL_HIVE = "uninstall-hive"
    ADD_MODEL = "add-model"
    REPLACE_MODEL = "replace-model"
    REMOVE_MODEL = "remove-model"
    START_WORKERS = "start-workers"
    STOP_WORKERS = "stop-workers"
    ADD_PROVIDER = "add-provider"
    CHANGE_PROVIDER = "change-provider"
    REMOVE_PROVIDER = "remove-provider"
    NOTHING = "nothing"
    """The target is already as desired; the reason says how it is."""
    WAIT = "wait"
    """The target cannot be acted on now (its hive is unreachable, a name conflicts); the reason says why."""


class Symbol(StrEnum):
    ADD = "+"
    CHANGE = "~"
    DESTROY = "-"
    NOTHING = "="
    BLOCKED = "!"


class Change(NamedTuple):
    """One step of a plan. A named tuple: immutable, and cheap enough to make 100,000 of in a plan."""

    id: str
    """Unique within a plan: `hive/kind/name[/step]`."""
    action: Action
    symbol: Symbol
    hive: str
    target: str
    """What is acted on, for people: `hive local`, `model smollm2`, `workers smollm2`."""
    reason: str
    requires: tuple[str, ...] = ()
    """Ids of changes that must succeed first."""
    model: str | None = None
    backend: str | None = None
    device: str | None = None
    replicas: int = 0
    worker_ids: tuple[str, ...] = ()

    @property
    def is_actionable(self) -> bool:
        return self.symbol in (Symbol.ADD, Symbol.CHANGE, Symbol.DESTROY)

    def to_json(self) -> dict[str, Any]:
        data = self._asdict()
        data["action"] = str(self.action)
        data["symbol"] = str(self.symbol)
        data["requires"] = list(self.requires)
        data["worker_ids"] = list(self.worker_ids)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Change:
        return cls(
            **{
                **data,
                "action": Action(data["action"]),
                "symbol": Symbol(data["symbol"]),
                "requires": tuple(data.get("requires", ())),
                "worker_ids": tuple(data.get("worker_ids", ())),
            }
        )


@dataclass(frozen=True, slots=True)
class Summary:
    add: int
    change: int
    destroy: int
    blocked: int

    @property
    def has_changes(self) -> bool:
        return bool(self.add or self.change or self.destroy or self.blocked)


@dataclass(frozen=True, slots=True)
class Plan:
    changes: tuple[Change, ...]
    """Every target, in an order that satisfies each change's `requires`; no-ops and waits included."""

    @property
    def actionable(self) -> tuple[Change, ...]:
        return tuple(change for change in self.changes if change.is_actionable)

    @property
    def summary(self) -> Summary:
        counts = Counter(change.symbol for change in self.changes)
        return Summary(
            add=counts[Symbol.ADD],
            change=counts[Symbol.CHANGE],
            destroy=counts[Symbol.DESTROY],
            blocked=counts[Symbol.BLOCKED],
        )

    def hives(self) -> list[str]:
        return list(dict.fromkeys(change.hive for change in self.changes))


def hive_change(
    hive: str, action: Action, symbol: Symbol, reason: str, *, step: str = "", requires: tuple[str, ...] = ()
) -> Change:
    """A change to a hive's daemon: id `NAME/hive[/step]`, target `hive NAME`."""
    return Change(f"{hive}/hive{'/' + step if step else ''}", action, symbol, hive, f"hive {hive}", reason, requires)


PROVIDER_ACTIONS = (Action.ADD_PROVIDER, Action.CHANGE_PROVIDER, Action.REMOVE_PROVIDER)
"""Changes the queen makes when it is given the spec: apply has nothing to do on a hive for them."""
PROVIDER_GROUP = "provider/"
"""A provider's changes are grouped under `provider/NAME` where a hive's are under its name."""


def provider_change(name: str, action: Action, symbol: Symbol, reason: str) -> Change:
    """A change to a provider: id `provider/NAME`, target `provider NAME`."""
    return Change(f"{PROVIDER_GROUP}{name}", action, symbol, f"{PROVIDER_GROUP}{name}", f"provider {name}", reason)


def model_change(
    hive: str, model: str, action: Action, symbol: Symbol, reason: str, requires: tuple[str, ...] = ()
) -> Change:
    """A change to a model in a hive's catalog: id `HIVE/model/NAME`, target `model NAME`."""
    return Change(f"{hive}/model/{model}", action, symbol, hive, f"model {model}", reason, requires, model=model)


def workers_change(
    hive: str,
    group: WorkerGroup,
    action: Action,
    symbol: Symbol,
    reason: str,
    *,
    step: str = "",
    requires: tuple[str, ...] = (),
    replicas: int = 0,
    worker_ids: tuple[str, ...] = (),
) -> Change:
    """A change to a worker group: id `HIVE/workers/MODEL:BACKEND:DEVICE[/step]`, target the group's label."""
    return Change(
        f"{hive}/workers/{':'.join(group)}{'/' + step if step else ''}",
        action,
        symbol,
        hive,
        group.label,
        reason,
        requires,
        model=group.model,
        backend=group.backend,
        device=group.device,
        replicas=replicas,
        worker_ids=worker_ids,
    )
