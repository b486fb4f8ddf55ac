"""A plan for people: Terraform-style lines grouped by hive, ending with the one-line summary."""

from __future__ import annotations

from dataclasses import dataclass

from rbee.plan.actions import PROVIDER_GROUP, Action, Change, Plan, Summary, Symbol
from rbee.spec.schema import HiveFile

VERBS: dict[Action, str] = {
    Action.INSTALL_HIVE: "install",
    Action.START_HIVE: "start",
    Action.STOP_HIVE: "stop",
    Action.UNINSTALL_HIVE: "uninstall",
    Action.ADD_MODEL: "add",
    Action.REPLACE_MODEL: "replace",
    Action.REMOVE_MODEL: "remove",
    Action.START_WORKERS: "start",
    Action.STOP_WORKERS: "stop",
    Action.ADD_PROVIDER: "add",
    Action.CHANGE_PROVIDER: "change",
    Action.REMOVE_PROVIDER: "remove",
    Action.NOTHING: "",
    Action.WAIT: "wait",
}


@dataclass(frozen=True, slots=True)
class Line:
    text: str
    symbol: Symbol | None = None
    """The symbol the line shows, for colouring; None for headers and the summary."""


def lines(plan: Plan, spec: HiveFile, *, show_unchanged: bool = True) -> list[Line]:
    out: list[Line] = []
    by_hive: dict[str, list[Change]] = {}
    for change in plan.changes:
        by_hive.setdefault(change.hive, []).append(change)
    providers = {provider.name: provider for provider in spec.providers}
    for hive_name, changes in by_hive.items():
        shown = [change for change in changes if show_unchanged or change.symbol is not Symbol.NOTHING]
        if not shown:
            continue
        if hive_name.startswith(PROVIDER_GROUP):
            name = hive_name[len(PROVIDER_GROUP) :]
            provider = providers.get(name)
            where = f"{provider.kind}, {provider.endpoint}" if provider else "not in hive.yaml"
            out.append(Line(f"provider {name} ({where})"))
        else:
            hive = spec.hive(hive_name)
            where = f"{hive.describe_connection()}, {hive.api_url}" if hive else "not in hive.yaml"
            out.append(Line(f"hive {hive_name} ({where})"))
        out.extend(Line(_change_line(change), change.symbol) for change in shown)
        out.append(Line(""))
    out.append(Line(summary_line(plan.summary)))
    return out


def text(plan: Plan, spec: HiveFile, *, show_unchanged: bool = True) -> str:
    return "\n".join(line.text for line in lines(plan, spec, show_unchanged=show_unchanged)) + "\n"


def _change_line(change: Change) -> str:
    target = change.target
    if change.action in (Action.START_WORKERS, Action.STOP_WORKERS):
        target = f"{target} x{change.replicas}"
    head = f"  {change.symbol} {VERBS[change.action]:<9} {target}"
    return f"{head:<48} {change.reason}"


def summary_line(summary: Summary) -> str:
    if not summary.has_changes:
        return "No changes. Live state matches hive.yaml."
    waiting = f"; {summary.blocked} waiting (marked !)" if summary.blocked else ""
    return f"Plan: {summary.add} to add, {summary.change} to change, {summary.destroy} to destroy{waiting}."
