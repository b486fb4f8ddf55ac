"""Saved plans (`rbee plan -o plan.json`): the plan, the spec it came from, and the observed state it was
computed against, so that apply can refuse a plan whose world has since changed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from rbee import __version__
from rbee.api.state import ObservedState
from rbee.plan.actions import Change, Plan
from rbee.spec.schema import HiveFile, HiveSpec

FORMAT_VERSION = 1


class SavedPlanError(ValueError):
    """A file that is not a plan rbee can apply; the message says why."""


def observed_digest(observed: ObservedState) -> str:
    """A fingerprint of what planning depends on: a worker turning busy or idle does not change it."""
    hives = []
    for hive in sorted(observed.hives, key=lambda item: item.name):
        state = hive.state
        hives.append(
            {
                "name": hive.name,
                "status": str(hive.status),
                "installed": hive.installed,
                "version": state.version if state else None,
                "catalog": sorted((e.name, e.source, e.sha256, e.managed) for e in state.catalog) if state else [],
                "workers": sorted(
                    (
                        w.id,
                        w.model,
                        w.requested_backend,
                        w.requested_device,
                        "running" if w.state.is_running else str(w.state),
                    )
                    for w in state.workers
                )
                if state
                else [],
            }
        )
    canonical = json.dumps(hives, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class SavedPlan:
    spec: HiveFile
    spec_file: str
    observed: ObservedState
    plan: Plan
    rbee_version: str = __version__
    retired: tuple[HiveSpec, ...] = ()
    """Hives applied before and gone from the spec: the plan removes them, and needs their addresses."""
    policy_source: str | None = None
    """The routing policy file hive.yaml named, as it was read when the plan was made."""

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "rbee_version": self.rbee_version,
            "spec_file": self.spec_file,
            "spec": self.spec.model_dump(mode="json"),
            "retired": [hive.model_dump(mode="json") for hive in self.retired],
            "policy_source": self.policy_source,
            "observed": self.observed.model_dump(mode="json"),
            "observed_digest": observed_digest(self.observed),
            "summary": {
                "add": self.plan.summary.add,
                "change": self.plan.summary.change,
                "destroy": self.plan.summary.destroy,
                "blocked": self.plan.summary.blocked,
            },
            "changes": [change.to_json() for change in self.plan.changes],
        }

    @classmethod
    def from_json(cls, data: Any) -> SavedPlan:
        if not isinstance(data, dict) or "changes" not in data or "spec" not in data:
            raise SavedPlanError("this file is not a saved rbee plan; make one with `rbee plan FILE -o plan.json`")
        if data.get("format_version") != FORMAT_VERSION:
            raise SavedPlanError(
                f"this plan has format {data.get('format_version')!r} and this rbee reads {FORMAT_VERSION}; "
                "make a new plan"
            )
        try:
            return cls(
                spec=HiveFile.model_validate(data["spec"]),
                spec_file=str(data.get("spec_file", "")),
                observed=ObservedState.model_validate(data["observed"]),
                plan=Plan(tuple(Change.from_json(item) for item in data["changes"])),
                rbee_version=str(data.get("rbee_version", "")),
                retired=tuple(HiveSpec.model_validate(hive) for hive in data.get("retired", [])),
                policy_source=data.get("policy_source"),
            )
        except (TypeError, ValueError, KeyError) as error:
            raise SavedPlanError(f"this saved plan is damaged ({error}); make a new plan") from None
