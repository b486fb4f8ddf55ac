"""The `rbee` command: each command declares its arguments and calls into keeper/ (or starts a daemon)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from rbee import __version__
from rbee.clients import tls
from rbee.keeper import fleet, models, platform, render, status
from rbee.keeper import infer as keeper_infer
from rbee.keeper import logs as keeper_logs
from rbee.keeper.home import Home, SecretError
from rbee.keeper.render import err, out
from rbee.observe.hives import DEFAULT_TIMEOUT

app = typer.Typer(
    name="rbee",
    help="Declarative LLM inference across the machines you own.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _trust_the_fleet_ca() -> None:
    """Every command trusts only this RBEE_HOME's fleet CA on rbee's own https links (hives, workers, queen)."""
    tls.pin(Home.default().authority.ca_file)


HiveTimeout = Annotated[float, typer.Option("--timeout", help="Seconds to wait for each hive.")]


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
    timeout: HiveTimeout = DEFAULT_TIMEOUT,
) -> None:
    """Show what `rbee apply` would change to make live state match FILE."""
    fleet.plan(file, as_json, output, detailed_exitcode, unchanged, timeout)


@app.command()
def apply(
    target: Annotated[Path, typer.Argument(help="hive.yaml, or a plan saved with `rbee plan -o`.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Apply without asking.")] = False,
    timeout: HiveTimeout = DEFAULT_TIMEOUT,
    rotate_credentials: Annotated[
        bool,
        typer.Option(
            "--rotate-credentials",
            help="First replace the operator's credential and the fleet key (every hive's and worker's credential "
            "with it); hives and workers restart. Clients' API keys stay (rotate the admin key with rbee key).",
        ),
    ] = False,
) -> None:
    """Make live state match hive.yaml: install and start hives, fetch models, start workers, run the queen."""
    fleet.apply(target, yes, timeout, rotate_credentials)


@app.command("status")
def status_command(
    file: Annotated[
        Path | None, typer.Argument(help="Observe the hives of this hive.yaml instead of asking the queen.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show hives, models and workers with their states."""
    status.status(file, as_json)


@app.command()
def key(
    rotate: Annotated[bool, typer.Option("--rotate", help="Make a new admin key; the old one stops working.")] = False,
    operator: Annotated[
        bool, typer.Option("--operator", help="Print the operator's credential instead (the web UI asks for it).")
    ] = False,
) -> None:
    """Print the queen's admin API key (clients send it as Authorization: Bearer KEY)."""
    status.key(rotate, operator)


@app.command()
def ui(
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Print the address only.")] = False,
) -> None:
    """Open the queen's web UI (fleet, models, playground, events, metrics, routing) in the default browser."""
    status.ui(not no_browser)


@app.command("logs")
def logs_command(
    what: Annotated[str, typer.Argument(help="queen, hive or worker.")],
    name: Annotated[str | None, typer.Argument(help="The hive's name, or the worker's id (w-3).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines until Ctrl+C.")] = False,
    since: Annotated[str | None, typer.Option(help="Only lines from this long ago on: 30s, 10m, 2h.")] = None,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many of the last lines.")] = 200,
    hive: Annotated[str | None, typer.Option(help="The worker's hive (asked of the queen when not given).")] = None,
    file: Annotated[Path | None, typer.Option(help="hive.yaml; defaults to the spec applied last.")] = None,
) -> None:
    """Show the queen's, a hive's or a worker's log; a remote hive's through its own API, no SSH session."""
    if what == "queen":
        keeper_logs.queen(follow, since, lines)
    elif what == "hive":
        if name is None:
            render.fail("rbee logs hive NAME: name the hive.")
        keeper_logs.remote(name, None, follow, since, lines, file)
    elif what == "worker":
        if name is None:
            render.fail("rbee logs worker ID: name the worker (rbee status lists them).")
        keeper_logs.remote(hive, name, follow, since, lines, file)
    else:
        render.fail(f"rbee logs {what}: say queen, hive NAME or worker ID.")


@app.command()
def suspend() -> None:
    """Stop the queen from changing the fleet on its own (maintenance); routing goes on."""
    status.set_suspended(True)


@app.command()
def resume() -> None:
    """Let the queen's reconcile loop converge the fleet again."""
    status.set_suspended(False)


@app.command()
def events(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events as they happen.")] = False,
    limit: Annotated[int, typer.Option(help="How many past events to show.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Show the queen's event log: applied specs, each reconcile pass's changes and failures."""
    status.events(follow, limit, as_json)


@app.command()
def infer(
    prompt: Annotated[str, typer.Argument(help="What to ask (with --file: the recording's language, or '').")],
    model: Annotated[str, typer.Option("--model", "-m", help="A model name from hive.yaml.")],
    max_tokens: Annotated[int, typer.Option(help="At most this many tokens.")] = 256,
    temperature: Annotated[float, typer.Option()] = 0.7,
    seed: Annotated[int | None, typer.Option()] = None,
    system: Annotated[str | None, typer.Option(help="A system message.")] = None,
    queen: Annotated[str | None, typer.Option(help="The queen's URL; defaults to the one rbee apply started.")] = None,
    retries: Annotated[
        int, typer.Option(min=0, max=20, help="Ask a busy fleet again this many times (after 1, 2, 4 ... s).")
    ] = 0,
    out: Annotated[
        Path | None,
        typer.Option(
            help="A speech model: write its speech of PROMPT here (.wav, .mp3 or .pcm); an image model: its picture "
            "(.png, .jpg or .webp)."
        ),
    ] = None,
    voice: Annotated[str, typer.Option(help="With --out: the voice (OpenAI's names, or the engine's own).")] = "alloy",
    speed: Annotated[float, typer.Option(min=0.25, max=4.0, help="With --out: how fast it speaks.")] = 1.0,
    file: Annotated[
        Path | None, typer.Option("--file", help="A transcription model: print its transcript of this recording.")
    ] = None,
    size: Annotated[str, typer.Option(help="With --out a picture: WIDTHxHEIGHT, or auto (the model's own).")] = "auto",
    steps: Annotated[int | None, typer.Option(min=1, max=200, help="With --out a picture: denoising steps.")] = None,
) -> None:
    """Stream an answer from MODEL through the queen; with --out write a speech model's speech or an image model's
    picture, with --file print a transcription model's transcript (API key from $RBEE_API_KEY when the queen needs
    one)."""
    speech = (out, voice, speed) if out is not None else None
    picture = (size, steps)
    keeper_infer.infer(prompt, model, max_tokens, temperature, seed, system, queen, retries, speech, file, picture)


@app.command()
def route(
    model: Annotated[str, typer.Option("--model", "-m", help="The model of the sample request.")],
    explain: Annotated[bool, typer.Option("--explain", help="Say which worker the policy picks and why.")] = True,
    hive: Annotated[str | None, typer.Option(help="Pin the sample request to this hive.")] = None,
    prompt_chars: Annotated[int, typer.Option(help="Size of the sample prompt.")] = 100,
    prompt: Annotated[
        str | None, typer.Option(help="The sample prompt's text (prefix routing picks by its beginning).")
    ] = None,
    prefer: Annotated[str | None, typer.Option(help="With providers: local, cheapest or fastest.")] = None,
    max_price: Annotated[float | None, typer.Option(help="With providers: the most per 1,000 tokens.")] = None,
    region: Annotated[str | None, typer.Option(help="With providers: regions or countries, comma-separated.")] = None,
) -> None:
    """Show, for a sample request, the candidate workers (and providers) and which one is picked."""
    asked = {"prefer": prefer, "max_price": None if max_price is None else str(max_price), "region": region}
    chosen = {name: value for name, value in asked.items() if value is not None}
    status.route(model, explain, hive, len(prompt) if prompt is not None else prompt_chars, prompt, chosen)


@app.command()
def destroy(
    file: Annotated[Path, typer.Argument(help="The hive.yaml whose fleet to stop.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Destroy without asking.")] = False,
    purge: Annotated[bool, typer.Option(help="Also remove rbee's files and downloaded models from each hive.")] = False,
) -> None:
    """Stop every worker, every hive and the queen (cascading); with --purge, uninstall too."""
    fleet.destroy(file, yes, purge)


@app.command()
def usage(
    since: Annotated[str, typer.Option(help="How far back: 30m, 24h, 7d.")] = "24h",
    by: Annotated[str, typer.Option(help="Sum per key, provider or model.")] = "key",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """What requests took and cost, per API key, provider or model: the bill (with the margin) and the payout."""
    if by not in ("key", "provider", "model"):
        raise typer.BadParameter("key, provider or model", param_hint="--by")
    platform.usage(since, by, as_json)


providers_app = typer.Typer(help="Other queens and endpoints that serve models for this one.", no_args_is_help=True)
app.add_typer(providers_app, name="providers")


@providers_app.command("ls")
def providers_ls(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Each provider's condition, models, prices, region and measured time to first token."""
    platform.providers(as_json)


models_app = typer.Typer(help="The models in each hive's catalog.", no_args_is_help=True)
app.add_typer(models_app, name="models")
SpecFile = Annotated[Path | None, typer.Option("--file", "-f", help="hive.yaml; defaults to the spec applied last.")]


@models_app.command("ls")
def models_ls(
    file: Annotated[Path | None, typer.Argument(help="hive.yaml; defaults to the spec applied last.")] = None,
) -> None:
    """List every hive's catalog with sizes."""
    models.ls(file)


@models_app.command("pull")
def models_pull(
    model: Annotated[str, typer.Argument(help="A model name from hive.yaml.")],
    hive: Annotated[str, typer.Option(help="The hive to fetch it to.")],
    file: SpecFile = None,
) -> None:
    """Fetch a model into a hive's catalog now (with progress), without starting workers."""
    models.pull(model, hive, file)


@models_app.command("rm")
def models_rm(
    model: Annotated[str, typer.Argument(help="The model to remove from the catalog.")],
    hive: Annotated[str, typer.Option(help="The hive to remove it from.")],
    file: SpecFile = None,
) -> None:
    """Remove a model from a hive's catalog (and its files, if rbee downloaded them); refused while in use."""
    models.rm(model, hive, file)


@app.command("inventory")
def inventory_command(
    file: Annotated[Path, typer.Argument(help="The hive.yaml to write a pyinfra inventory for.")],
    out_dir: Annotated[Path, typer.Option("--dir", help="Where to write it.")] = Path("inventory"),
) -> None:
    """Write a pyinfra inventory of the hives, so `pyinfra inventory/NAME.py deploys/hive.py` works by hand."""
    fleet.write_inventory(file, out_dir)


@app.command("schema")
def schema_command() -> None:
    """Print the JSON Schema of hive.yaml (point your editor's YAML support at it)."""
    from rbee.spec import schema

    sys.stdout.write(json.dumps(schema.json_schema(), indent=2) + "\n")


@app.command()
def validate(file: Annotated[Path, typer.Argument(help="The hive.yaml to check.")]) -> None:
    """Check FILE without contacting any machine."""
    spec = fleet.load_desired(file).spec
    replicas = sum(worker.replicas for worker in spec.workers)
    out.print(f"{file} is valid: {len(spec.hives)} hives, {len(spec.models)} models, {replicas} worker replicas.")


@app.command()
def version() -> None:
    """Print rbee's version."""
    out.print(f"rbee {__version__}")


queen_app = typer.Typer(help="The queen daemon (started by `rbee apply`).", no_args_is_help=True)
hive_app = typer.Typer(help="The hive daemon (started on each machine by `rbee apply`).", no_args_is_help=True)
worker_app = typer.Typer(help="A worker process (started by its hive).", no_args_is_help=True)
app.add_typer(queen_app, name="queen")
app.add_typer(hive_app, name="hive")
app.add_typer(worker_app, name="worker")


@queen_app.command("serve")
def queen_serve(
    home: Annotated[Path, typer.Option(help="The RBEE_HOME whose credentials and admin key the queen uses.")],
    listen: Annotated[str, typer.Option(help="host:port for the API.")] = "127.0.0.1:8080",
    poll_interval: Annotated[float, typer.Option(help="Seconds between reads of the hives' state.")] = 1.0,
    tls_cert: Annotated[Path | None, typer.Option(help="Serve TLS with this certificate (and --tls-key).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="The certificate's private key.")] = None,
    store: Annotated[
        str | None, typer.Option(help="A postgresql:// store shared with other queens (hive.yaml's queen.store).")
    ] = None,
) -> None:
    """Run the queen in the foreground (its state in HOME/queen, or in --store)."""
    from rbee.queen import daemon

    keeper_home = Home(home)
    credentials = keeper_home.credentials(create=False)
    if credentials is None:
        out.print(f"{home} holds no credentials; run rbee apply, which makes them and starts the queen.")
        raise typer.Exit(1)
    tls_files = (str(tls_cert), str(tls_key)) if tls_cert and tls_key else None
    daemon.serve(
        keeper_home.queen_dir, listen, credentials, keeper_home.admin_key_file, poll_interval, tls_files, store
    )


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
    listen_fd: Annotated[
        int | None, typer.Option(help="A socket bound to host:port that the hive made and passed down.")
    ] = None,
    hive_url: Annotated[str | None, typer.Option()] = None,
    token_file: Annotated[str | None, typer.Option()] = None,
    parent_pid: Annotated[int | None, typer.Option()] = None,
    threads: Annotated[int | None, typer.Option()] = None,
    slots: Annotated[int | None, typer.Option(help="Requests served at once (engines that batch).")] = None,
    context: Annotated[int | None, typer.Option(help="Tokens of context per slot.")] = None,
    tls_cert: Annotated[str | None, typer.Option()] = None,
    tls_key: Annotated[str | None, typer.Option()] = None,
    ca_file: Annotated[str | None, typer.Option()] = None,
    mmproj_path: Annotated[str | None, typer.Option(help="A GGUF model's multimodal projector file.")] = None,
) -> None:
    """Run one worker in the foreground."""
    from rbee.worker import server

    options = server.WorkerOptions(
        worker_id=worker_id,
        model=model,
        model_path=model_path,
        backend=backend,
        device=device,
        host=host,
        port=port,
        listen_fd=listen_fd,
        hive_url=hive_url,
        token=server.token_from_file(token_file),
        parent_pid=parent_pid,
        threads=threads,
        slots=slots,
        context=context,
        tls=(tls_cert, tls_key) if tls_cert and tls_key else None,
        ca_file=ca_file,
        mmproj_path=mmproj_path,
    )
    server.serve(options)


def main() -> None:
    try:
        app()
    except SecretError as error:  # a damaged credential file, wherever the command first needed it
        err.print(str(error), style="red", markup=False)
        raise SystemExit(1) from None
