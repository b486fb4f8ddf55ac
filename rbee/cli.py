"""The keeper: `rbee` on the operator's machine."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from rbee import __version__
from rbee.observe import hives as observe_hives
from rbee.plan import planner, render
from rbee.plan.actions import Symbol
from rbee.plan.saved import SavedPlan
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
        return load.load(path)
    except load.SpecError as error:
        fail(str(error))


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
    observed = observe_hives.observe(spec, timeout=timeout)
    elapsed = time.monotonic() - started
    the_plan = planner.make_plan(spec, observed)
    saved = SavedPlan(spec=spec, spec_file=str(file), observed=observed, plan=the_plan)
    if output is not None:
        tmp = output.with_name(f".{output.name}.tmp")
        tmp.write_text(json.dumps(saved.to_json(), indent=2) + "\n")
        tmp.replace(output)
    if as_json:
        sys.stdout.write(json.dumps(saved.to_json(), indent=2) + "\n")
    else:
        count = len(spec.hives)
        out.print(Text(f"Observed {count} hive{'s' if count != 1 else ''} in {elapsed:.2f} s.\n", style="dim"))
        for line in render.lines(the_plan, spec, show_unchanged=unchanged):
            style = STYLES.get(line.symbol) if line.symbol else ("bold" if line.text.startswith("hive ") else "")
            out.print(Text(line.text, style=style or ""))
        if output is not None:
            out.print(Text(f"\nSaved the plan to {output}; apply it exactly with: rbee apply {output}", style="dim"))
    if detailed_exitcode and the_plan.summary.has_changes:
        raise typer.Exit(2)


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
app.add_typer(hive_app, name="hive")
app.add_typer(worker_app, name="worker")


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
