"""A plan for people: Terraform-style lines grouped by hive, ending with the one-line summary."""

from __future__ import annotations

from dataclasses import dataclass

from rbee.plan.actions import Action, Change, Plan, Summary, Symbol
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
    for hive_name, changes in by_hive.items():
        hive = spec.hive(hive_name)
        where = f"{hive.describe_connection()}, {hive.api_url}" if hive else "not in hive.yaml"
        shown = [change for change in changes if show_unchanged or change.symbol is not Symbol.NOTHING]
        if not shown:
            continue
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
