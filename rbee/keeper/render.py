"""The keeper's screen: its two consoles, the one-sentence failure, and every table and line it prints (plans,
status, conditions, routes, catalogs, events). Colour only on a terminal."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from rbee.api.state import CatalogEntry, HiveObservation
from rbee.api.units import human_size
from rbee.plan import render
from rbee.plan.actions import Plan, Symbol
from rbee.spec import backends
from rbee.spec.schema import HiveFile

# markup=False: what hives, workers and models say is printed as it is (a reason holding `[/INST]` is text).
out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

STYLES: dict[Symbol, str] = {
    Symbol.ADD: "green",
    Symbol.CHANGE: "yellow",
    Symbol.DESTROY: "red",
    Symbol.NOTHING: "dim",
    Symbol.BLOCKED: "bold magenta",
}
CONDITION_STYLES = {"Ready": "green", "Progressing": "yellow", "Degraded": "red", "Unreachable": "bold red"}
EVENT_STYLES = {"failed": "red", "applied": "green", "spec": "bold"}


def fail(message: str, code: int = 1) -> NoReturn:
    """One sentence on stderr, and the exit code."""
    err.print(Text(message, style="red"))
    raise typer.Exit(code)


def plan(the_plan: Plan, spec: HiveFile, unchanged: bool = True) -> None:
    for line in render.lines(the_plan, spec, show_unchanged=unchanged):
        style = STYLES.get(line.symbol) if line.symbol else ("bold" if line.text.startswith("hive ") else "")
        out.print(Text(line.text, style=style or ""))


def slots(worker: dict[str, Any]) -> str:
    """How many requests a worker serves at once, and whether its backend could serve more from one model load."""
    if worker["backend"] not in backends.BATCHES:
        return "1, one at a time"
    return str(worker.get("slots") or 1)


def status(hives: list[dict[str, Any]]) -> None:
    """Hives, their catalogs and their workers, from `/v2/status` or an observation (as JSON)."""
    table = Table("hive", "status", "version", "reason", box=None)
    models = Table("hive", "model", "format", "size", "source", box=None)
    workers = Table("hive", "worker", "model", "backend", "device", "slots", "state", "pid", "port", "reason", box=None)
    for hive in hives:
        state = hive.get("state") or {}
        colour = {"running": "green", "down": "yellow"}.get(hive["status"], "red")
        table.add_row(
            hive["name"], Text(hive["status"], style=colour), state.get("version", ""), hive.get("reason", "")
        )
        for entry in state.get("catalog", []):
            models.add_row(
                hive["name"], entry["name"], entry["format"], human_size(entry["size_bytes"]), entry["source"]
            )
        for worker in state.get("workers", []):
            workers.add_row(
                hive["name"],
                worker["id"],
                worker["model"],
                worker["backend"],
                worker["device"],
                slots(worker),
                worker["state"],
                str(worker.get("pid") or ""),
                str(worker.get("port") or ""),
                worker.get("reason") or "",
            )
    out.print(table)
    if models.row_count:
        out.print()
        out.print(models)
    out.print()
    out.print(workers if workers.row_count else Text("No workers.", style="dim"))


def conditions(items: list[dict[str, Any]], reconcile: dict[str, Any] | None) -> None:
    table = Table("hive", "target", "condition", "reason", "since", "message", box=None)
    now = time.time()
    for item in sorted(items, key=lambda c: (c["hive"], c["target"])):
        table.add_row(
            item["hive"],
            item["target"],
            Text(item["type"], style=CONDITION_STYLES.get(item["type"], "")),
            item["reason"],
            f"{ago(now - float(item['since']))} ago",
            item["message"],
        )
    out.print(table)
    reconcile = reconcile or {}
    last = reconcile.get("last")
    if last:
        out.print(
            Text(
                f"Reconcile pass {last['number']} (generation {last['generation']}) "
                f"{ago(now - float(last['started']))} ago, every {reconcile['interval']:g} s"
                + (" (suspended: rbee resume to converge again)" if reconcile.get("suspended") else "")
                + (f"; skipped: {last['skipped']}" if last.get("skipped") else ""),
                style="dim",
            )
        )


def ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def event(item: dict[str, Any]) -> None:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(item["at"])))
    style = EVENT_STYLES.get(item["kind"], "")
    out.print(Text(f"{when}  {item['kind']:<9} {item['target']:<32} {item['message']}", style=style))


def route(answer: dict[str, Any], explain: bool) -> None:
    table = Table("worker", "hive", "in flight", "slots", "url", box=None)
    for candidate in answer["candidates"]:
        picked = f"{candidate['hive']}/{candidate['worker']}" == answer["pick"]
        table.add_row(
            Text(("→ " if picked else "  ") + candidate["worker"], style="bold green" if picked else ""),
            candidate["hive"],
            str(candidate["in_flight"]),
            str(candidate["slots"]),
            candidate["url"],
        )
    out.print(f"policy: {answer['policy']}")
    out.print(table if answer["candidates"] else Text("No candidates.", style="dim"))
    out.print(f"pick: {answer['pick'] or 'none'} — {answer['reason']}" if explain else f"pick: {answer['pick']}")
    federated = answer.get("providers")
    if federated:
        order = Table("try", "candidate", "price in/out per 1k", "ttft", "", box=None)
        for rank, candidate in enumerate(federated["order"], 1):
            ttft = f"{candidate['ttft_ms']:g} ms" if candidate["ttft_ms"] is not None else "not measured"
            note = "no worker free: the request queues" if candidate["queues"] else ""
            price = f"{candidate['price_in']:g}/{candidate['price_out']:g}"
            order.add_row(str(rank), candidate["name"], price, ttft, note)
        out.print("with providers, a request tries:")
        out.print(order if federated["order"] else Text("nothing: no candidate is allowed", style="dim"))
        for reason in federated["left_out"] if explain else ():
            out.print(Text(f"  left out: {reason}", style="dim"))


def model_facts(entry: CatalogEntry) -> str:
    """What a model file says of itself, as people say it: `llama, Q4_1, 135M weights, 8,192 context`."""
    parts = [entry.architecture or "", entry.quantization or ""]
    if entry.parameters:
        parts.append(
            f"{entry.parameters / 1e9:.1f}B weights"
            if entry.parameters >= 1e9
            else f"{entry.parameters / 1e6:.0f}M weights"
        )
    if entry.context_length:
        parts.append(f"{entry.context_length:,} context")
    return ", ".join(part for part in parts if part)


def catalogs(hives: Iterable[HiveObservation]) -> None:
    table = Table("hive", "model", "format", "size", "model file", "managed", "source", box=None)
    total = 0
    for hive in hives:
        if hive.state is None:
            table.add_row(hive.name, Text(f"({hive.status}: {hive.reason})", style="dim"), "", "", "", "", "")
            continue
        for entry in hive.state.catalog:
            total += entry.size_bytes
            table.add_row(
                hive.name,
                entry.name,
                entry.format,
                human_size(entry.size_bytes),
                model_facts(entry),
                "yes" if entry.managed else "no",
                entry.source,
            )
    out.print(table)
    out.print(Text(f"{human_size(total)} in all", style="dim"))
