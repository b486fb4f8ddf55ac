"""The fleet flow on the operator's machine, one path through a plan for each command:

    hive.yaml (and its routing policy, read once) -> observe -> plan -> show -> execute -> queen holds the spec

`rbee plan` stops after showing (or saving) the plan; `rbee apply` executes it, starts the queen if needed and
gives it the spec; `rbee destroy` executes a plan that stops every hive (and uninstalls, with --purge), then stops
the queen and checks that no rbee process is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.text import Text

from rbee.api.credentials import FleetCredentials
from rbee.api.state import ObservedState
from rbee.apply import executor, lock
from rbee.clients.queen import QueenCallError
from rbee.infra import job
from rbee.infra.secrets import write_private
from rbee.keeper import processes, queen_process, render
from rbee.keeper.home import Home
from rbee.keeper.progress import ConsoleReporter, QuietReporter
from rbee.keeper.render import fail, out
from rbee.observe import downloads as observe_downloads
from rbee.observe import fleet as observe_fleet
from rbee.observe import providers as observe_providers
from rbee.plan import planner
from rbee.plan.actions import Plan, Symbol
from rbee.plan.saved import SavedPlan, SavedPlanError, observed_digest
from rbee.spec import checks, load, policy, schema

LOCK_WAIT = 900.0
"""Seconds `rbee apply` and `rbee destroy` wait for the queen's reconcile pass (whose own deadline is shorter)."""
PROVIDER_TIMEOUT = 5.0
"""Seconds a plan waits for each provider's model list (it plans without it after)."""


@dataclass(frozen=True, slots=True)
class Desired:
    """What the operator asks for: hive.yaml, and the routing policy it names, read and checked once."""

    spec: schema.HiveFile
    source: str
    """The file it came from, as the user named it."""
    policy_source: str | None


def load_desired(path: Path) -> Desired:
    try:
        spec = load.load(path)
    except load.SpecError as error:
        fail(str(error))
    return Desired(spec, str(path), _policy_source(spec, path))


def _policy_source(spec: schema.HiveFile, spec_path: Path) -> str | None:
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
        policy.check(source, path.name)  # read, never run: checking a hive.yaml must not run its code
    except policy.PolicyError as error:
        fail(f"{spec_path}: queen.routing: {error}.")
    return source


def applied_before(home: Home) -> tuple[schema.HiveFile | None, set[str]]:
    """The spec applied last and the hives seen running: asked of the queen when it runs (and recorded), else
    as last recorded in RBEE_HOME."""
    queen = queen_process.running(home)
    if queen is not None:
        with contextlib.suppress(QueenCallError):
            applied = queen.applied()
            home.remember_applied(applied.spec, applied.seen_hives)
            return applied.spec, set(applied.seen_hives)
    return home.applied()


def observe(spec: schema.HiveFile, home: Home, timeout: float) -> tuple[ObservedState, tuple[schema.HiveSpec, ...]]:
    """Observe the hives of `spec` and those applied before but gone from it (they are planned for removal)."""
    previous, seen = applied_before(home)
    retired = tuple(hive for hive in (previous.hives if previous else ()) if spec.hive(hive.name) is None)
    everything = spec.model_copy(update={"hives": spec.hives + retired})
    observed = observe_fleet.observe(everything, seen, timeout, credentials=home.credentials(create=False))
    if spec.providers or (previous is not None and previous.providers):
        applied = previous.providers if previous is not None else ()
        found = asyncio.run(observe_providers.observe(spec.providers, applied, min(timeout, PROVIDER_TIMEOUT)))
        observed = observed.model_copy(update={"providers": found})
    return observe_downloads.sizes(spec, observed, min(timeout, observe_downloads.SIZE_TIMEOUT)), retired


def plan(
    file: Path, as_json: bool, output: Path | None, detailed_exitcode: bool, unchanged: bool, timeout: float
) -> None:
    desired = load_desired(file)
    started = time.monotonic()
    observed, retired = observe(desired.spec, Home.default(), timeout)
    elapsed = time.monotonic() - started
    the_plan = planner.make_plan(desired.spec, observed)
    saved = SavedPlan(
        spec=desired.spec,
        spec_file=desired.source,
        observed=observed,
        plan=the_plan,
        retired=retired,
        policy_source=desired.policy_source,
    )
    if output is not None:
        partial = output.with_name(f".{output.name}.tmp")
        partial.write_text(json.dumps(saved.to_json(), indent=2) + "\n")
        partial.replace(output)
    if as_json:
        sys.stdout.write(json.dumps(saved.to_json(), indent=2) + "\n")
    else:
        count = len(desired.spec.hives)
        out.print(Text(f"Observed {count} hive{'s' if count != 1 else ''} in {elapsed:.2f} s.\n", style="dim"))
        render.plan(the_plan, desired.spec, unchanged)
        if output is not None:
            out.print(Text(f"\nSaved the plan to {output}; apply it exactly with: rbee apply {output}", style="dim"))
    if detailed_exitcode and the_plan.summary.has_changes:
        raise typer.Exit(2)


def _target(target: Path, home: Home, timeout: float) -> tuple[Desired, Plan, tuple[schema.HiveSpec, ...]]:
    """hive.yaml (plan it now) or a saved plan (check that the world has not moved since)."""
    if target.suffix == ".json":
        try:
            saved = SavedPlan.from_json(json.loads(target.read_text()))
        except (OSError, ValueError, SavedPlanError) as error:
            fail(f"{target}: {error}")
        # A saved plan is a file anyone could have edited: its spec passes the checks hive.yaml would, its policy
        # is read like one beside hive.yaml, and its changes are planned again here and must come out the same.
        problems = checks.check(saved.spec)
        if problems:
            fail(f"{target}: its spec is not valid: {'.'.join(map(str, problems[0].location))}: {problems[0].message}.")
        if saved.policy_source is not None:
            try:
                policy.check(saved.policy_source, saved.spec.queen.routing)
            except policy.PolicyError as error:
                fail(f"{target}: its routing policy: {error}.")
        observed, _ = observe(saved.spec, home, timeout)
        if observed_digest(observed) != observed_digest(saved.observed):
            fail(f"{target} is stale: live state changed since the plan was made; run rbee plan again.")
        again = planner.make_plan(saved.spec, observed)
        # The reasons are for people and quote figures that move (a hive's free memory); what is executed is
        # compared, and what runs is `again`, never the file's list.
        if _executed(again) != _executed(saved.plan):
            fail(f"{target}: its changes are not what its spec and the live state give; make a new plan.")
        desired = Desired(saved.spec, saved.spec_file or str(target), saved.policy_source)
        return desired, again, saved.retired
    desired = load_desired(target)
    observed, retired = observe(desired.spec, home, timeout)
    return desired, planner.make_plan(desired.spec, observed), retired


def _executed(plan: Plan) -> list[dict[str, object]]:
    return [{key: value for key, value in change.to_json().items() if key != "reason"} for change in plan.changes]


def hand_policy(home: Home, spec: schema.HiveFile, source: str | None) -> policy.PolicyRef | None:
    """Put the routing policy where the queen runs it from (its own state directory on this machine, named by
    digest) and name it: the policy's code never crosses the network."""
    if source is None:
        return None
    try:
        policy.check(source, spec.queen.routing)  # a saved plan's copy is checked like the file itself
    except policy.PolicyError as error:
        fail(f"queen.routing: {error}.")
    named = policy.ref(source, spec.queen.routing)
    folder = home.queen_dir / "policies"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(folder / named.file_name, source)
    return named


@contextlib.contextmanager
def fleet_lock(home: Home, command: str) -> Iterator[None]:
    """The apply lock, shared with the queen's reconcile loop; say who holds it while waiting, and stop waiting
    after LOCK_WAIT with a sentence. Before the first apply there is no queen to share it with."""
    if not home.queen_dir.is_dir():
        yield
        return
    if lock.is_held(home.queen_dir):
        out.print(Text(f"Waiting for {lock.holder_of(home.queen_dir)} to finish ...", style="dim"))
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(lock.hold(home.queen_dir, holder=f"rbee {command}", timeout=LOCK_WAIT))
        except lock.LockBusy as busy:
            fail(f"{busy}; try again when it has finished, or run rbee suspend first.")
        yield


def confirm(question: str, yes: bool, what: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        fail(f"Refusing to {what} without confirmation: there is no terminal to ask on; pass --yes.")
    if not typer.confirm(question, default=False):
        fail("Nothing was changed.")


def apply(target: Path, yes: bool, timeout: float, rotate: bool = False) -> None:
    home = Home.default()
    with fleet_lock(home, "apply"):
        if rotate:
            _rotate(target, yes, home)
        _apply(target, yes, timeout, home)


def _rotate(target: Path, yes: bool, home: Home) -> None:
    """New credentials for every role but clients: the hives and the queen stop (their workers with them) while
    they still take the old ones, the new ones are written, and the apply that follows installs each hive's new
    credential and starts everything again. Models stay in the catalogs, so the restart costs only load time."""
    if target.suffix == ".json":
        fail(f"{target}: rotate credentials with hive.yaml, not a saved plan (it would be stale at once).")
    spec = load_desired(target).spec
    old = home.credentials(create=False)
    if old is None:
        out.print(Text("No credentials yet; this apply makes the first ones.", style="dim"))
        return
    confirm(
        f"Rotate the operator's, the {len(spec.hives)} hives' and their workers' credentials? Every hive and worker "
        "restarts.",
        yes,
        "rotate credentials",
    )
    out.print(Text("Rotating credentials: stopping the hives and the queen with the old ones ...", style="bold"))
    _destroy(spec, home, old, purge=False)
    home.rotate_credentials()
    out.print(Text("New credentials are in RBEE_HOME; the old ones open nothing any more.\n", style="bold"))


def _apply(target: Path, yes: bool, timeout: float, home: Home) -> None:
    desired, the_plan, retired = _target(target, home, timeout)
    spec = desired.spec
    render.plan(the_plan, spec, unchanged=False)
    actionable = the_plan.actionable
    if actionable:
        confirm("Apply these changes?", yes, "apply")
    first_key = not home.admin_key_file.exists()
    credentials = home.credentials(create=True)
    admin_key = home.admin_key(create=True)
    assert credentials is not None and admin_key is not None
    errors: dict[str, str | None] = {}
    if actionable:
        out.print()
        with ConsoleReporter(out) as reporter:
            if any(hive.tls for hive in spec.hives):
                home.authority.ensure()  # before the first https call to a hive: clients trust it from now on
            run = executor.Executor(spec, credentials, reporter, retired, home.root / "wheels", home.authority)
            errors = asyncio.run(run.execute(the_plan))
    try:
        queen, started = queen_process.ensure_running(spec, home, credentials.operator)
        named = hand_policy(home, spec, desired.policy_source)
        generation, changed = queen.push_spec(spec, desired.source, named)
        applied = queen.applied()
    except queen_process.QueenError as error:
        fail(str(error))
    except QueenCallError as error:
        fail(f"The queen at {queen_process.url_for(spec)} refused the spec: {error}")
    home.remember_applied(applied.spec, applied.seen_hives)
    if first_key:
        out.print(
            Text(
                f"\nClients of the queen need an API key: `rbee key` prints the admin key ({home.admin_key_file}, "
                "mode 0600); send it as Authorization: Bearer KEY, or as the openai client's api_key.",
                style="bold",
            )
        )
    failed = {key: value for key, value in errors.items() if value}
    waiting = [change for change in the_plan.changes if change.symbol is Symbol.BLOCKED]
    out.print()
    queen_line = f"queen {'started' if started else 'running'} at {queen.url}, spec generation {generation}"
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


def destroy(file: Path, yes: bool, purge: bool) -> None:
    spec = load_desired(file).spec
    home = Home.default()
    confirm(f"Stop all {len(spec.hives)} hives, their workers and the queen?", yes, "destroy")
    credentials = home.credentials(create=True)
    assert credentials is not None
    with fleet_lock(home, "destroy"):
        _destroy(spec, home, credentials, purge)


def _destroy(spec: schema.HiveFile, home: Home, credentials: FleetCredentials, purge: bool) -> None:
    """Each hive is asked over HTTP to stop (it stops its workers first); the pyinfra stop step then signals
    any hive that did not (or could not be asked), and cleans up."""
    run = executor.Executor(spec, credentials, QuietReporter(), authority=home.authority)
    errors = asyncio.run(run.execute(planner.destroy_plan(spec, purge)))
    failed = False
    for hive in spec.hives:
        error = next((errors[key] for key in errors if key.startswith(f"{hive.name}/") and errors[key]), None)
        if error:
            failed = True
            out.print(Text(f"  ✗ hive {hive.name}: {error}", style="red"))
            continue
        how = run.stopped_how.get(hive.name, "not running")
        if how == "over HTTP":
            what = "stopped over HTTP"
        elif how == "by a signal":
            what = "stopped by a signal over SSH" if hive.ssh is not None else "stopped by a signal"
        else:
            what = "was not running"
        out.print(Text(f"  - hive {hive.name} {what}{' and uninstalled' if purge else ''}", style="red"))
    if queen_process.stop(home):
        out.print(Text("  - queen stopped", style="red"))
    # What runs on this machine: the queen and the local hives. An SSH hive's processes are on its own host (its
    # stop step saw to them), and its own view of its URL, 127.0.0.1:PORT, would name another fleet's local hive.
    local = [job.hive_config(hive, spec) for hive in spec.hives if hive.ssh is None]
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


def write_inventory(file: Path, out_dir: Path) -> None:
    """`rbee inventory`: a pyinfra inventory of `file`'s hives in `out_dir`."""
    from rbee.infra.inventory import inventory

    spec = load_desired(file).spec
    home = Home.default()
    home.credentials(create=True)  # the fleet key the install derives each hive's credential from
    authority = home.authority
    if any(hive.tls for hive in spec.hives):
        authority.ensure()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{file.name.split('.')[0].replace('-', '_') or 'hive'}.py"
    target.write_text(inventory(spec.hives, str(home.fleet_key_file), spec, str(authority.folder)))
    out.print(f"Wrote {target} ({len(spec.hives)} hives). Run: pyinfra {target} deploys/hive.py")
