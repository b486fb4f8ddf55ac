"""What the keeper asks a running queen: status and conditions, the event log, routing decisions, suspending the
reconcile loop, and answers (`rbee infer`)."""

from __future__ import annotations

import json
import sys
import webbrowser
from pathlib import Path
from typing import Any

from rich.text import Text

from rbee.clients.queen import QueenCallError, QueenClient
from rbee.keeper import queen_process, render
from rbee.keeper.fleet import load_desired
from rbee.keeper.home import Home
from rbee.keeper.render import err, fail, out
from rbee.observe import hives as observe_hives

DEFAULT_QUEEN = "http://127.0.0.1:8080"


def queen(hint: str = "run rbee apply first") -> QueenClient:
    """The queen this RBEE_HOME started, or one clear error."""
    found = queen_process.reachable(Home.default())
    if found is None:
        fail(f"No queen is running for this RBEE_HOME; {hint}.")
    return found


def unreachable(client: QueenClient, error: QueenCallError, hint: str = "run rbee apply to start it") -> str:
    return f"The queen at {client.url} does not answer ({error}); {hint}."


def status(file: Path | None, as_json: bool) -> None:
    conditions: list[dict[str, Any]] = []
    reconcile: dict[str, Any] | None = None
    leadership: dict[str, Any] | None = None
    if file is not None:
        credentials = Home.default().credentials(create=False)
        observed = observe_hives.observe(load_desired(file).spec, credentials=credentials)
        hives = [hive.model_dump(mode="json") for hive in observed.hives]
    else:
        client = queen("run rbee apply, or pass a hive.yaml to observe directly")
        try:
            body = client.status()
        except QueenCallError as error:
            fail(unreachable(client, error))
        hives, conditions, reconcile = body["hives"], body.get("conditions", []), body.get("reconcile")
        leadership = body.get("leadership")
    if as_json:
        answer = {"hives": hives, "conditions": conditions, "reconcile": reconcile, "leadership": leadership}
        sys.stdout.write(json.dumps(answer, indent=2) + "\n")
        return
    if leadership is not None and leadership.get("shared"):
        leader = leadership.get("leader") or "no queen (the lease is free: the next queen to renew takes it)"
        this = "this queen" if leadership.get("this_queen") else "another queen"
        out.print(f"Leader: {leader} ({this}, lease generation {leadership.get('generation')})")
    render.status(hives)
    if conditions:
        out.print()
        render.conditions(conditions, reconcile)


def key(rotate: bool, operator: bool = False) -> None:
    """The admin API key on stdout (for `$(rbee key)`), how to use it on stderr; --rotate makes a new one, and
    the queen stops taking the old one within a second. --operator: the operator's credential instead (what the
    web UI's fleet pages ask for)."""
    home = Home.default()
    if operator:
        if rotate:
            fail("--rotate makes a new admin key only; the operator's credential is not rotated by rbee key.")
        credentials = home.credentials(create=False)
        if credentials is None:
            fail("No operator credential yet: rbee apply makes one.")
        sys.stdout.write(credentials.operator + "\n")
        err.print(
            Text(
                "The operator's credential: it opens the queen's operator API; keep it off other machines.", style="dim"
            )
        )
        return
    value = home.rotate_admin_key() if rotate else home.admin_key(create=False)
    if value is None:
        fail("No admin key yet: rbee apply makes one.")
    sys.stdout.write(value + "\n")
    queen_url = str((home.queen() or {}).get("url") or DEFAULT_QUEEN)
    err.print(
        Text(
            f"{'A new admin key; the old one stops working now. ' if rotate else ''}Clients send it as "
            f'Authorization: Bearer <key>, e.g. OpenAI(base_url="{queen_url}/v1", api_key=...).',
            style="dim",
        )
    )


def ui(open_browser: bool) -> None:
    """The web UI's address; opened in the default browser when there is one."""
    url = f"{queen('run rbee apply to start one').url}/ui/"
    out.print(url)
    err.print(
        Text(
            "Sign in with the operator's credential (rbee key --operator) for the fleet's pages, and an API key "
            "(rbee key) for the playground.",
            style="dim",
        )
    )
    if open_browser:
        try:
            webbrowser.get().open(url)
        except webbrowser.Error:
            err.print(Text("No browser here: open the address above in one.", style="dim"))


def set_suspended(suspended: bool) -> None:
    client = queen()
    try:
        client.set_suspended(suspended)
    except QueenCallError as error:
        fail(unreachable(client, error))
    if suspended:
        out.print("The queen's reconcile loop is suspended: it changes nothing until `rbee resume`.")
    else:
        out.print("The queen's reconcile loop is running again; a pass starts now.")


def events(follow: bool, limit: int, as_json: bool) -> None:
    client = queen()

    def show(item: dict[str, Any]) -> None:
        if as_json:
            sys.stdout.write(json.dumps(item) + "\n")
            sys.stdout.flush()
        else:
            render.event(item)

    try:
        for item in client.follow_events(limit) if follow else client.events(limit):
            show(item)
    except QueenCallError as error:
        fail(unreachable(client, error))
    except KeyboardInterrupt:
        pass


def route(
    model: str,
    explain: bool,
    hive: str | None,
    prompt_chars: int,
    prompt: str | None = None,
    preferences: dict[str, str] | None = None,
) -> None:
    client = queen()
    try:
        answer = client.route(model, hive, prompt_chars, prompt, preferences)
    except QueenCallError as error:
        fail(unreachable(client, error) if error.status is None else f"The queen refused: {error}")
    render.route(answer, explain)
