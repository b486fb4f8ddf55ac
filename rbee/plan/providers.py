"""The providers' part of a plan (pure): each provider of hive.yaml added, changed or as desired against how the
queen holds it now, with whether its API answered and the models it lists, and those the queen holds that
hive.yaml no longer names removed. Nothing runs on a hive for them: the queen takes them with the spec."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from rbee.api.state import ObservedState, ProviderObservation
from rbee.plan.actions import Action, Change, Symbol, provider_change
from rbee.spec.providers import ProviderSpec
from rbee.spec.schema import HiveFile

SHOWN = ("endpoint", "kind", "api_key", "models", "pricing", "region", "country", "sla", "max_concurrent", "ca_file")


def plan(desired: HiveFile, observed: ObservedState) -> Iterator[Change]:
    """Nothing when no provider was observed: the queen's own reconcile pass holds its providers already, and
    only the keeper asks them (observe/providers.py)."""
    found = {provider.name: provider for provider in observed.providers}
    if not found:
        return
    for spec in desired.providers:
        seen = found.pop(spec.name, None) or ProviderObservation(name=spec.name)
        answered = _answered(spec, seen)
        if seen.applied is None:
            yield provider_change(spec.name, Action.ADD_PROVIDER, Symbol.ADD, f"{spec.endpoint}: {answered}")
            continue
        changed = _differences(json.loads(seen.applied), spec.model_dump(mode="json"))
        if changed:
            yield provider_change(spec.name, Action.CHANGE_PROVIDER, Symbol.CHANGE, f"{changed}; {answered}")
        else:
            yield provider_change(spec.name, Action.NOTHING, Symbol.NOTHING, f"as desired; {answered}")
    for name in sorted(found):
        if found[name].applied is not None:
            yield provider_change(name, Action.REMOVE_PROVIDER, Symbol.DESTROY, "no longer in hive.yaml")


def _answered(spec: ProviderSpec, seen: ProviderObservation) -> str:
    if seen.reachable is None:
        return "not asked"
    if not seen.reachable:
        return f"does not answer ({seen.reason}): the queen probes it until it does"
    listed = ", ".join(seen.models[:8]) + (f" … {len(seen.models)} in all" if len(seen.models) > 8 else "")
    if spec.models is not None:
        missing = [
            model.remote or model.name for model in spec.models if (model.remote or model.name) not in seen.models
        ]
        if missing:
            return f"answers, but lists no {', '.join(missing)} (it lists {listed or 'nothing'})"
        return f"answers, serving {', '.join(model.name for model in spec.models)}"
    return f"answers, listing {listed or 'no models'}"


def _differences(before: dict[str, Any], after: dict[str, Any]) -> str:
    """`pricing {...} -> {...}; region eu -> us`: the fields that changed, never a key's value (only its name)."""
    parts = []
    for field in SHOWN:
        old, new = before.get(field), after.get(field)
        if old != new:
            parts.append(f"{field} {_short(old)} -> {_short(new)}")
    return "; ".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"env"}:
        return f"${value['env']}"
    text = json.dumps(value, separators=(",", ":")) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."
