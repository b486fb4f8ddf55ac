"""`rbee usage` and `rbee providers ls`: what the queen's metering and its providers say, as tables (or JSON)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from pydantic import TypeAdapter, ValidationError
from rich.table import Table
from rich.text import Text

from rbee.clients.queen import QueenCallError
from rbee.keeper.render import fail, out
from rbee.keeper.status import queen, unreachable
from rbee.spec.fields import Seconds


def usage(since: str, by: str, as_json: bool) -> None:
    try:
        seconds = TypeAdapter(Seconds).validate_python(since)
    except ValidationError:
        fail(f"--since {since}: not a duration; write 30m, 24h or 7d")
    client = queen()
    try:
        answer = client.usage(seconds, by)
    except QueenCallError as error:
        fail(unreachable(client, error) if error.status is None else f"The queen refused: {error}")
    if as_json:
        sys.stdout.write(json.dumps(answer, indent=2) + "\n")
        return
    margin = float(answer["margin"])
    table = Table(by, "requests", "failed", "tokens in", "tokens out", "cost", f"billed (+{margin:.0%})", box=None)
    for row in [*answer["rows"], {"name": "total", **answer["totals"]}]:
        table.add_row(
            Text(str(row["name"] or "(no key)"), style="bold" if row is answer["totals"] else ""),
            f"{row['requests']:,}",
            f"{row['failed'] or 0:,}",
            f"{row['input_tokens'] or 0:,}",
            f"{row['output_tokens'] or 0:,}",
            f"{row['cost'] or 0:.4f}",
            f"{row['billed'] or 0:.4f}",
        )
    out.print(f"Usage over the last {since}, by {by} (cost: at each provider's prices, what it is owed):")
    out.print(table if answer["rows"] else Text("No requests.", style="dim"))


def providers(as_json: bool) -> None:
    client = queen()
    try:
        answer = client.providers()
    except QueenCallError as error:
        fail(unreachable(client, error) if error.status is None else f"The queen refused: {error}")
    if as_json:
        sys.stdout.write(json.dumps(answer, indent=2) + "\n")
        return
    table = Table("provider", "condition", "endpoint", "models", "price in/out", "where", "ttft", "in flight", box=None)
    for provider in answer["providers"]:
        condition: dict[str, Any] = provider["condition"]
        since = time.strftime("%H:%M:%S", time.localtime(float(condition["since"])))
        ttft = ", ".join(f"{model} {ms:g} ms" for model, ms in provider["ttft_ms"].items()) or "-"
        table.add_row(
            f"{provider['name']} ({provider['origin']})",
            Text(
                f"{condition['type']} since {since}: {condition['reason']}", style="" if provider["healthy"] else "red"
            ),
            f"{provider['endpoint']} ({provider['kind']}, key {provider['key']})",
            ", ".join(provider["models"]) or "-",
            f"{provider['pricing']['input']:g}/{provider['pricing']['output']:g}",
            "/".join(part for part in (provider["region"], provider["country"]) if part) or "-",
            ttft,
            f"{provider['in_flight']}/{provider['max_concurrent']}",
        )
    out.print(
        table if answer["providers"] else Text("No providers: add them under providers: in hive.yaml.", style="dim")
    )
