"""The keeper: `rbee` on the operator's machine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from rbee import __version__
from rbee.api.state import ObservedState
from rbee.apply import executor, lock, processes, queen_process
from rbee.apply.console import ConsoleReporter
from rbee.apply.hive_client import HiveCallError, HiveClient
from rbee.apply.home import Home
from rbee.observe import hives as observe_hives
from rbee.observe import ssh as observe_ssh
from rbee.plan import planner, render
from rbee.plan.actions import Plan, Symbol
from rbee.plan.saved import SavedPlan, observed_digest
from rbee.queen import scheduling
from rbee.spec import load, schema

app = typer.Typer(
    name="rbee",
    help="Declarative LLM inference across the machines you own.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

STYLES: dict[Symbol, str] = {
    Symbol.ADD: "green",
    Symbol.CHANGE: "yellow",
    Symbol.DESTROY: "red",
    Symbol.NOTHING: "dim",
    Symbol.BLOCKED: "bold magenta",
}

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(Text(message, style="red"))
    raise typer.Exit(code)


def load_spec(path: Path) -> schema.HiveFile:
    try:
        spec = load.load(path)
    except load.SpecError as error:
        fail(str(error))
    policy_source(spec, path)
    return spec


def policy_source(spec: schema.HiveFile, spec_path: Path) -> str | None:
    """The routing policy file named in hive.yaml, read and checked now, so a broken one changes nothing."""
    routing = spec.queen.routing
    if not routing.endswith(".py"):
        return None
    path = (spec_path.parent / routing).resolve()
    try:
        source = path.read_text()
    except OSError as error:
        fail(f"{spec_path}: queen.routing: cannot read the routing policy {path} ({error.strerror}).")
    try:
        scheduling.load_user_policy(source, path.name)
    except scheduling.PolicyError as error:
        fail(f"{spec_path}: queen.routing: {error}.")
    return source


@app.command()
def plan(
    file: Annotated[Path, typer.Argument(help="The hive.yaml to plan for.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    output: Annotated[
        Path | None, typer.Option("-o", "--out", help="Save the plan to apply it later, exactly.")
    ] = None,
    detailed_exitcode: Annotated[
        bool, typer.Option("--detailed-exitcode", help="Exit 0 for no changes, 1 on error, 2 for changes.")
    ] = False,
    unchanged: Annotated[
        bool, typer.Option("--unchanged/--only-changes", help="Show targets that need nothing.")
    ] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each hive.")] = observe_hives.DEFAULT_TIMEOUT,
) -> None:
    """Show what `rbee apply` would change to make live state match FILE."""
    spec = load_spec(file)
    started = time.monotonic()
    observed, retired = observe_for(spec, Home.default(), timeout)
    elapsed = time.monotonic() - started
    the_plan = planner.make_plan(spec, observed)
    saved = SavedPlan(spec=spec, spec_file=str(file), observed=observed, plan=the_plan, retired=retired)
    if output is not None:
        tmp = output.with_name(f".{output.name}.tmp")
        tmp.write_text(json.dumps(saved.to_json(), indent=2) + "\n")
        tmp.replace(output)
    if as_json:
        sys.stdout.write(json.dumps(saved.to_json(), indent=2) + "\n")
    else:
        count = len(spec.hives)
        out.print(Text(f"Observed {count} hive{'s' if count != 1 else ''} in {elapsed:.2f} s.\n", style="dim"))
        print_plan(the_plan, spec, unchanged)
        if output is not None:
            out.print(Text(f"\nSaved the plan to {output}; apply it exactly with: rbee apply {output}", style="dim"))
    if detailed_exitcode and the_plan.summary.has_changes:
        raise typer.Exit(2)


def print_plan(the_plan: Plan, spec: schema.HiveFile, unchanged: bool = True) -> None:
    for line in render.lines(the_plan, spec, show_unchanged=unchanged):
        style = STYLES.get(line.symbol) if line.symbol else ("bold" if line.text.startswith("hive ") else "")
        out.print(Text(line.text, style=style or ""))


def applied_before(home: Home) -> tuple[schema.HiveFile | None, set[str]]:
    """The spec the queen last applied and the hives it has seen running, read from its SQLite state."""
    database = home.queen_dir / "queen.db"
    if not database.exists():
        return None, set()
    from rbee.queen.store import Store

    store = Store(database)
    try:
        current = store.current_spec()
        return (current[1] if current else None), store.seen_hives()
    finally:
        store.close()


def observe_for(spec: schema.HiveFile, home: Home, timeout: float) -> tuple[ObservedState, tuple[schema.HiveSpec, ...]]:
    """Observe the hives of `spec` and those applied before but gone from it (they are planned for removal)."""
    previous, seen = applied_before(home)
    retired = tuple(hive for hive in (previous.hives if previous else ()) if spec.hive(hive.name) is None)
    everything = spec.model_copy(update={"hives": spec.hives + retired})
    observed = observe_hives.observe(everything, timeout=timeout, token=home.token(create=False))
    observed = observe_ssh.examine(everything, observed, timeout)
    marked = tuple(hive.model_copy(update={"seen_before": hive.name in seen}) for hive in observed.hives)
    return ObservedState(hives=marked), retired


def load_target(
    target: Path, home: Home, timeout: float
) -> tuple[schema.HiveFile, Plan, str, tuple[schema.HiveSpec, ...]]:
    """hive.yaml (plan it now) or a saved plan (check that the world has not moved since)."""
    if target.suffix == ".json":
        try:
            saved = SavedPlan.from_json(json.loads(target.read_text()))
        except (OSError, ValueError) as error:
            fail(f"{target}: {error}")
        observed, _ = observe_for(saved.spec, home, timeout)
        if observed_digest(observed) != observed_digest(saved.observed):
            fail(f"{target} is stale: live state changed since the plan was made; run rbee plan again.")
        return saved.spec, saved.plan, saved.spec_file or str(target), saved.retired
    spec = load_spec(target)
    observed, retired = observe_for(spec, home, timeout)
    return spec, planner.make_plan(spec, observed), str(target), retired


@app.command()
def apply(
    target: Annotated[Path, typer.Argument(help="hive.yaml, or a plan saved with `rbee plan -o`.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Apply without asking.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each hive.")] = observe_hives.DEFAULT_TIMEOUT,
) -> None:
    """Make live state match hive.yaml: install and start hives, fetch models, start workers, run the queen."""
    home = Home.default()
    with fleet_lock(home):
        _apply(target, yes, timeout, home)


def fleet_lock(home: Home) -> contextlib.AbstractContextManager[bool]:
    """The apply lock, shared with the queen's reconcile loop; say so when waiting for a pass to end. Before
    the first apply there is no queen to share it with, and nothing is written."""
    if not home.queen_dir.is_dir():
        return contextlib.nullcontext(True)
    if lock.is_held(home.queen_dir):
        out.print(Text("Waiting for the queen's reconcile pass to finish ...", style="dim"))
    return lock.hold(home.queen_dir)


def _apply(target: Path, yes: bool, timeout: float, home: Home) -> None:
    spec, the_plan, source, retired = load_target(target, home, timeout)
    print_plan(the_plan, spec, unchanged=False)
    actionable = the_plan.actionable
    if actionable and not yes:
        if not sys.stdin.isatty():
            fail("Refusing to apply without confirmation: there is no terminal to ask on; pass --yes.")
        if not typer.confirm("Apply these changes?", default=False):
            fail("Nothing was changed.", code=1)
    token = home.token(create=True)
    assert token is not None
    errors: dict[str, str | None] = {}
    if actionable:
        out.print()
        with ConsoleReporter(out) as reporter:
            run = executor.Executor(spec, token, reporter, retired, home.root / "wheels")
            errors = asyncio.run(run.execute(the_plan))
    try:
        url, started = queen_process.ensure_running(spec, home, token)
        policy = policy_source(spec, Path(source))
        generation, changed = queen_process.push_spec(url, token, spec, source, policy)
    except queen_process.QueenError as error:
        fail(str(error))
    failed = {key: value for key, value in errors.items() if value}
    waiting = [change for change in the_plan.changes if change.symbol is Symbol.BLOCKED]
    out.print()
    queen_line = f"queen {'started' if started else 'running'} at {url}, spec generation {generation}"
    queen_line += " (updated)" if changed else " (unchanged)"
    if failed:
        out.print(Text(f"Apply failed for {len(failed)} of {len(errors)} changes; {queen_line}.", style="red"))
        raise typer.Exit(1)
    if waiting:
        for change in waiting:
            out.print(Text(f"  ! {change.target}: {change.reason}", style="magenta"))
        out.print(Text(f"{len(waiting)} targets could not be converged; {queen_line}.", style="red"))
        raise typer.Exit(1)
    if not actionable:
        out.print(f"Nothing to change; {queen_line}.")
    else:
        out.print(Text(f"Apply complete: {len(errors)} changes made; {queen_line}.", style="green"))


def _queen_access(hint: str = "run rbee apply first") -> tuple[str, dict[str, str]]:
    """The running queen's URL and the operator headers (the cluster token), or one clear error."""
    home = Home.default()
    record = home.queen()
    if record is None:
        fail(f"No queen is running for this RBEE_HOME; {hint}.")
    token = home.token(create=False)
    return str(record["url"]), {"Authorization": f"Bearer {token}"} if token else {}


def _ask_queen(method: str, path: str, hint: str = "run rbee apply to start it", **kwargs: Any) -> httpx.Response:
    url, headers = _queen_access()
    try:
        response = httpx.request(method, f"{url}{path}", headers=headers, timeout=10.0, trust_env=False, **kwargs)
        response.raise_for_status()
    except httpx.HTTPError as error:
        fail(f"The queen at {url} does not answer ({error}); {hint}.")
    return response


@app.command()
def status(
    file: Annotated[
        Path | None, typer.Argument(help="Observe the hives of this hive.yaml instead of asking the queen.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show hives, models and workers with their states."""
    token = Home.default().token(create=False)
    if file is not None:
        hives = [hive.model_dump(mode="json") for hive in observe_hives.observe(load_spec(file), token=token).hives]
    else:
        _queen_access("run rbee apply, or pass a hive.yaml to observe directly")
        body = _ask_queen("GET", "/v2/status").json()
        hives, conditions, reconcile = body["hives"], body.get("conditions", []), body.get("reconcile")
    if as_json:
        sys.stdout.write(
            json.dumps({"hives": hives, "conditions": conditions, "reconcile": reconcile}, indent=2) + "\n"
        )
        return
    render_status(hives)
    if conditions:
        out.print()
        render_conditions(conditions, reconcile)


CONDITION_STYLES = {"Ready": "green", "Progressing": "yellow", "Degraded": "red", "Unreachable": "bold red"}


def render_conditions(conditions: list[dict[str, Any]], reconcile: dict[str, Any] | None) -> None:
    table = Table("hive", "target", "condition", "reason", "since", "message", box=None)
    now = time.time()
    for item in sorted(conditions, key=lambda c: (c["hive"], c["target"])):
        table.add_row(
            item["hive"],
            item["target"],
            Text(item["type"], style=CONDITION_STYLES.get(item["type"], "")),
            item["reason"],
            f"{_ago(now - float(item['since']))} ago",
            item["message"],
        )
    out.print(table)
    reconcile = reconcile or {}
    last = reconcile.get("last")
    if last:
        out.print(
            Text(
                f"Reconcile pass {last['number']} (generation {last['generation']}) "
                f"{_ago(now - float(last['started']))} ago, every {reconcile['interval']:g} s"
                + (" (suspended: rbee resume to converge again)" if reconcile.get("suspended") else "")
                + (f"; skipped: {last['skipped']}" if last.get("skipped") else ""),
                style="dim",
            )
        )


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def _set_suspended(suspended: bool) -> None:
    _ask_queen("PUT", "/v2/reconcile", json={"suspended": suspended})
    if suspended:
        out.print("The queen's reconcile loop is suspended: it changes nothing until `rbee resume`.")
    else:
        out.print("The queen's reconcile loop is running again; a pass starts now.")


@app.command()
def suspend() -> None:
    """Stop the queen from changing the fleet on its own (maintenance); routing goes on."""
    _set_suspended(True)


@app.command()
def resume() -> None:
    """Let the queen's reconcile loop converge the fleet again."""
    _set_suspended(False)


@app.command()
def events(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events as they happen.")] = False,
    limit: Annotated[int, typer.Option(help="How many past events to show.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Show the queen's event log: applied specs, each reconcile pass's changes and failures."""
    queen, headers = _queen_access()
    url = f"{queen}/v2/events"
    params = {"limit": str(limit), **({"follow": "1"} if follow else {})}

    def show(item: dict[str, Any]) -> None:
        if as_json:
            sys.stdout.write(json.dumps(item) + "\n")
            sys.stdout.flush()
            return
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(item["at"])))
        style = {"failed": "red", "applied": "green", "spec": "bold"}.get(item["kind"], "")
        out.print(Text(f"{when}  {item['kind']:<9} {item['target']:<32} {item['message']}", style=style))

    try:
        if not follow:
            for item in _ask_queen("GET", "/v2/events", params=params).json()["events"]:
                show(item)
            return
        timeout = httpx.Timeout(10.0, read=None)
        with httpx.stream("GET", url, params=params, headers=headers, timeout=timeout, trust_env=False) as stream:
            stream.raise_for_status()
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    show(json.loads(line[5:]))
    except httpx.HTTPError as error:
        fail(f"The queen at {queen} does not answer ({error}); run rbee apply to start it.")
    except KeyboardInterrupt:
        pass


def render_status(hives: list[dict[str, Any]]) -> None:
    table = Table("hive", "status", "version", "reason", box=None)
    models = Table("hive", "model", "format", "size", "source", box=None)
    workers = Table("hive", "worker", "model", "backend", "device", "state", "pid", "port", "reason", box=None)
    for hive in hives:
        state = hive.get("state") or {}
        colour = {"running": "green", "down": "yellow"}.get(hive["status"], "red")
        table.add_row(
            hive["name"], Text(hive["status"], style=colour), state.get("version", ""), hive.get("reason", "")
        )
        for entry in state.get("catalog", []):
            models.add_row(
                hive["name"], entry["name"], entry["format"], planner.human_size(entry["size_bytes"]), entry["source"]
            )
        for worker in state.get("workers", []):
            workers.add_row(
                hive["name"],
                worker["id"],
                worker["model"],
                worker["backend"],
                worker["device"],
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


@app.command()
def infer(
    prompt: Annotated[str, typer.Argument(help="What to ask.")],
    model: Annotated[str, typer.Option("--model", "-m", help="A model name from hive.yaml.")],
    max_tokens: Annotated[int, typer.Option(help="At most this many tokens.")] = 256,
    temperature: Annotated[float, typer.Option()] = 0.7,
    seed: Annotated[int | None, typer.Option()] = None,
    system: Annotated[str | None, typer.Option(help="A system message.")] = None,
    queen: Annotated[str | None, typer.Option(help="The queen's URL; defaults to the one rbee apply started.")] = None,
) -> None:
    """Stream an answer from MODEL through the queen (API key from $RBEE_API_KEY when the queen needs one)."""
    url = queen or str((Home.default().queen() or {}).get("url") or "http://127.0.0.1:8080")
    key = os.environ.get("RBEE_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature, "seed": seed}
    try:
        with httpx.Client(
            base_url=url, headers=headers, timeout=httpx.Timeout(30.0, read=None), trust_env=False
        ) as client:
            created = client.post("/v2/tasks", json=body)
            if created.status_code != 201:
                fail(f"The queen refused: {_error_text(created)}")
            with client.stream("GET", created.json()["events"]) as events:
                event_name = None
                for line in events.iter_lines():
                    if line.startswith("event:"):
                        event_name = line[6:].strip()
                    elif line.startswith("data:"):
                        data = json.loads(line[5:])
                        if event_name == "error":
                            sys.stdout.write("\n")
                            fail(f"Inference failed: {data.get('error')}")
                        if data.get("done"):
                            sys.stdout.write("\n")
                            err.print(
                                Text(f"[{data.get('total_tokens')} tokens, {data.get('finish_reason')}]", style="dim")
                            )
                            return
                        sys.stdout.write(data["token"])
                        sys.stdout.flush()
    except httpx.HTTPError as error:
        fail(f"Cannot reach the queen at {url} ({error}); is the fleet applied? Run rbee apply.")


@app.command()
def route(
    model: Annotated[str, typer.Option("--model", "-m", help="The model of the sample request.")],
    explain: Annotated[bool, typer.Option("--explain", help="Say which worker the policy picks and why.")] = True,
    hive: Annotated[str | None, typer.Option(help="Pin the sample request to this hive.")] = None,
    prompt_chars: Annotated[int, typer.Option(help="Size of the sample prompt.")] = 100,
) -> None:
    """Show, for a sample request, the candidate workers and which one the routing policy picks."""
    params: dict[str, str | int] = {"model": model, "prompt_chars": prompt_chars}
    if hive:
        params["hive"] = hive
    answer = _ask_queen("GET", "/v2/route", params=params).json()
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


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return str(error["message"] if isinstance(error, dict) else error)
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


@app.command()
def destroy(
    file: Annotated[Path, typer.Argument(help="The hive.yaml whose fleet to stop.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Destroy without asking.")] = False,
    purge: Annotated[bool, typer.Option(help="Also remove rbee's files and downloaded models from each hive.")] = False,
) -> None:
    """Stop every worker, every hive and the queen (cascading); with --purge, uninstall too."""
    spec = load_spec(file)
    home = Home.default()
    if not yes:
        if not sys.stdin.isatty():
            fail("Refusing to destroy without confirmation: there is no terminal to ask on; pass --yes.")
        if not typer.confirm(f"Stop all {len(spec.hives)} hives, their workers and the queen?", default=False):
            fail("Nothing was changed.")
    token = home.token(create=False) or ""
    with fleet_lock(home):
        _destroy(spec, home, token, purge)


def _destroy(spec: schema.HiveFile, home: Home, token: str, purge: bool) -> None:
    """Each hive is asked over HTTP to stop (it stops its workers first); the pyinfra stop step then signals
    any hive that did not (or could not be asked), and cleans up."""
    stopped = asyncio.run(_shutdown_over_http(list(spec.hives), token))
    steps = ["stop", "uninstall"] if purge else ["stop"]
    results = asyncio.run(executor.run_jobs(list(spec.hives), steps, token))
    failed = False
    for hive in spec.hives:
        result = results.get(hive.name, {})
        if result.get("error"):
            failed = True
            out.print(Text(f"  ✗ hive {hive.name}: {result['error']}", style="red"))
        else:
            if stopped.get(hive.name):
                what = "stopped over HTTP"
            elif result.get("changed"):
                what = "stopped by a signal over SSH" if hive.ssh is not None else "stopped by a signal"
            else:
                what = "was not running"
            out.print(Text(f"  - hive {hive.name} {what}{' and uninstalled' if purge else ''}", style="red"))
    if queen_process.stop(home, token):
        out.print(Text("  - queen stopped", style="red"))
    # What runs on this machine: the queen and the local hives. An SSH hive's processes are on its own host (its
    # stop step saw to them), and its own view of its URL, 127.0.0.1:PORT, would name another fleet's local hive.
    local = [executor.hive_config(hive) for hive in spec.hives if hive.ssh is None]
    markers = (
        str(home.queen_dir),
        *(config.data_dir for config in local),
        *(f"--hive-url {config.url}" for config in local),
    )
    left = processes.rbee_processes(markers)
    if left:
        out.print(
            Text("rbee processes still running: " + ", ".join(f"{pid} ({cmd})" for pid, cmd in left), style="red")
        )
        raise typer.Exit(1)
    out.print("Destroy complete. No rbee process remains.")
    if failed:
        raise typer.Exit(1)


async def _shutdown_over_http(hives: list[schema.HiveSpec], token: str) -> dict[str, bool]:
    async def one(hive: schema.HiveSpec) -> bool:
        client = HiveClient(hive, token)
        try:
            return await client.shutdown()
        finally:
            await client.close()

    results = await asyncio.gather(*(one(hive) for hive in hives))
    return {hive.name: done for hive, done in zip(hives, results, strict=True)}


models_app = typer.Typer(help="The models in each hive's catalog.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _spec_or_applied(file: Path | None) -> schema.HiveFile:
    if file is not None:
        return load_spec(file)
    previous, _ = applied_before(Home.default())
    if previous is None:
        fail("No fleet has been applied from this RBEE_HOME; pass the hive.yaml.")
    return previous


@models_app.command("ls")
def models_ls(
    file: Annotated[Path | None, typer.Argument(help="hive.yaml; defaults to the spec applied last.")] = None,
) -> None:
    """List every hive's catalog with sizes."""
    spec = _spec_or_applied(file)
    observed = observe_hives.observe(spec, token=Home.default().token(create=False))
    table = Table("hive", "model", "format", "size", "managed", "source", box=None)
    total = 0
    for hive in observed.hives:
        if hive.state is None:
            table.add_row(hive.name, Text(f"({hive.status}: {hive.reason})", style="dim"), "", "", "", "")
            continue
        for entry in hive.state.catalog:
            total += entry.size_bytes
            table.add_row(
                hive.name,
                entry.name,
                entry.format,
                planner.human_size(entry.size_bytes),
                "yes" if entry.managed else "no",
                entry.source,
            )
    out.print(table)
    out.print(Text(f"{planner.human_size(total)} in all", style="dim"))


def _hive_client(spec: schema.HiveFile, hive: str) -> HiveClient:
    found = spec.hive(hive)
    if found is None:
        fail(f"There is no hive {hive} in hive.yaml; hives: {', '.join(h.name for h in spec.hives)}.")
    return HiveClient(found, Home.default().token(create=False))


@models_app.command("pull")
def models_pull(
    model: Annotated[str, typer.Argument(help="A model name from hive.yaml.")],
    hive: Annotated[str, typer.Option(help="The hive to fetch it to.")],
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="hive.yaml; defaults to the spec applied last.")
    ] = None,
) -> None:
    """Fetch a model into a hive's catalog now (with progress), without starting workers."""
    spec = _spec_or_applied(file)
    wanted = spec.model(model)
    if wanted is None:
        fail(f"There is no model {model} in hive.yaml; models: {', '.join(m.name for m in spec.models)}.")
    client = _hive_client(spec, hive)

    async def pull() -> dict[str, Any]:
        with Progress(
            TextColumn("  {task.description}"), BarColumn(), DownloadColumn(), console=out, transient=True
        ) as bars:
            task = bars.add_task(f"{model} -> {hive}", total=None)

            def progress(data: dict[str, Any]) -> None:
                if "bytes" in data:
                    bars.update(task, completed=data["bytes"], total=data.get("total") or None)

            try:
                return await client.add_model(wanted, progress)
            finally:
                await client.close()

    try:
        entry = asyncio.run(pull())
    except (HiveCallError, httpx.HTTPError) as error:
        fail(f"Pulling {model} to {hive} failed: {error}")
    out.print(f"{model} is in {hive}'s catalog ({planner.human_size(int(entry.get('size_bytes', 0)))}).")


@models_app.command("rm")
def models_rm(
    model: Annotated[str, typer.Argument(help="The model to remove from the catalog.")],
    hive: Annotated[str, typer.Option(help="The hive to remove it from.")],
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="hive.yaml; defaults to the spec applied last.")
    ] = None,
) -> None:
    """Remove a model from a hive's catalog (and its files, if rbee downloaded them); refused while in use."""
    client = _hive_client(_spec_or_applied(file), hive)

    async def remove() -> None:
        try:
            await client.remove_model(model)
        finally:
            await client.close()

    try:
        asyncio.run(remove())
    except (HiveCallError, httpx.HTTPError) as error:
        fail(f"Removing {model} from {hive} failed: {error}")
    out.print(f"Removed {model} from {hive}.")


@app.command("inventory")
def inventory_command(
    file: Annotated[Path, typer.Argument(help="The hive.yaml to write a pyinfra inventory for.")],
    out_dir: Annotated[Path, typer.Option("--dir", help="Where to write it.")] = Path("inventory"),
) -> None:
    """Write a pyinfra inventory of the hives, so `pyinfra inventory/NAME.py deploys/hive.py` works by hand."""
    spec = load_spec(file)
    home = Home.default()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{file.name.split('.')[0].replace('-', '_') or 'hive'}.py"
    target.write_text(executor.inventory(spec.hives, str(home.token_file)))
    out.print(f"Wrote {target} ({len(spec.hives)} hives). Run: pyinfra {target} deploys/hive.py")


@app.command("schema")
def schema_command() -> None:
    """Print the JSON Schema of hive.yaml (point your editor's YAML support at it)."""
    sys.stdout.write(json.dumps(schema.json_schema(), indent=2) + "\n")


@app.command()
def validate(file: Annotated[Path, typer.Argument(help="The hive.yaml to check.")]) -> None:
    """Check FILE without contacting any machine."""
    spec = load_spec(file)
    out.print(
        f"{file} is valid: {len(spec.hives)} hives, {len(spec.models)} models, "
        f"{sum(worker.replicas for worker in spec.workers)} worker replicas."
    )


@app.command()
def version() -> None:
    """Print rbee's version."""
    out.print(f"rbee {__version__}")


hive_app = typer.Typer(help="The hive daemon (started on each machine by `rbee apply`).", no_args_is_help=True)
worker_app = typer.Typer(help="A worker process (started by its hive).", no_args_is_help=True)
queen_app = typer.Typer(help="The queen daemon (started by `rbee apply`).", no_args_is_help=True)
app.add_typer(queen_app, name="queen")
app.add_typer(hive_app, name="hive")
app.add_typer(worker_app, name="worker")


@queen_app.command("serve")
def queen_serve(
    state_dir: Annotated[Path, typer.Option(help="Where the queen keeps its SQLite state.")],
    listen: Annotated[str, typer.Option(help="host:port for the API.")] = "127.0.0.1:8080",
    token_file: Annotated[Path | None, typer.Option(help="The cluster token.")] = None,
    poll_interval: Annotated[float, typer.Option(help="Seconds between reads of the hives' state.")] = 1.0,
) -> None:
    """Run the queen in the foreground."""
    from rbee.queen import server

    token = token_file.read_text().strip() if token_file else None
    server.serve(state_dir, listen, token, poll_interval)


@hive_app.command("serve")
def hive_serve(
    config: Annotated[Path, typer.Option(help="The hive.json written by the install step.")],
) -> None:
    """Run the hive daemon in the foreground."""
    from rbee.hive import config as hive_config
    from rbee.hive import server

    server.serve(hive_config.load(config))


@worker_app.command("serve")
def worker_serve(
    worker_id: Annotated[str, typer.Option("--id")],
    model: Annotated[str, typer.Option()],
    model_path: Annotated[str, typer.Option()],
    backend: Annotated[str, typer.Option()] = "gguf",
    device: Annotated[str, typer.Option()] = "cpu",
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8001,
    hive_url: Annotated[str | None, typer.Option()] = None,
    token_file: Annotated[str | None, typer.Option()] = None,
    parent_pid: Annotated[int | None, typer.Option()] = None,
    threads: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Run one worker in the foreground."""
    from rbee.worker import server

    server.serve(
        server.WorkerOptions(
            worker_id=worker_id,
            model=model,
            model_path=model_path,
            backend=backend,
            device=device,
            host=host,
            port=port,
            hive_url=hive_url,
            token=server.token_from_file(token_file),
            parent_pid=parent_pid,
            threads=threads,
        )
    )


def main() -> None:
    app()
