"""`python -m tests.proof replay BUNDLE --queen URL [--key KEY]`: send a proof bundle's seeded generation requests
(OpenAI chat and completions, streamed or not) to a queen again and compare each answer with the one recorded;
a seed makes answers repeatable, so any difference is printed as a diff. Exit 0 when every answer is the same,
1 when one differs, 2 when the bundle holds nothing seeded to replay. The key defaults to $RBEE_API_KEY."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.proof.bundle import read_transcript

REPLAYED = ("/v1/chat/completions", "/v1/completions", "/v2/tasks")


def _choice_text(choice: dict[str, Any]) -> str:
    message = choice.get("message") or choice.get("delta") or {}
    return str(message.get("content") or choice.get("text") or "")


def answer_text(response: Any) -> str | None:
    """The generated text of a recorded or new answer: a JSON body, or an SSE stream's deltas joined (OpenAI's
    chunks, or rbee's task events)."""
    if isinstance(response, dict):
        return "".join(_choice_text(choice) for choice in response.get("choices", []))
    if not isinstance(response, str):
        return None
    pieces = []
    for line in response.splitlines():
        if line.startswith("data: {"):
            data = json.loads(line[6:])
            pieces.extend(_choice_text(choice) for choice in data.get("choices", []))
            pieces.append(str(data.get("token", "")))
    return "".join(pieces)


def _task_answer(records: list[dict[str, Any]], created: dict[str, Any]) -> Any:
    """A recorded task's events (its answer), from the GET of its event stream."""
    events = (created.get("response") or {}).get("events")
    return next((r.get("response") for r in records if r.get("method") == "GET" and r.get("path") == events), None)


def _ask(client: httpx.Client, queen: str, record: dict[str, Any]) -> tuple[int, Any]:
    """The same request again: its answer's status and body (a task's: its events)."""
    reply = client.post(f"{queen}{record['path']}", json=record["request"])
    if record["path"] == "/v2/tasks":
        if reply.status_code != 201:
            return reply.status_code, None
        events = client.get(f"{queen}{reply.json()['events']}")
        return events.status_code, events.text
    return reply.status_code, reply.text if record["request"].get("stream") else reply.json()


def seeded(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        record
        for record in records
        if record.get("who") == "queen"
        and record.get("method") == "POST"
        and record.get("path") in REPLAYED
        and record.get("status") in (200, 201)
        and isinstance(record.get("request"), dict)
        and record["request"].get("seed") is not None
    ]


def replay(bundle: Path, queen: str, key: str | None) -> int:
    records = read_transcript(bundle / "transcript.ndjson")
    candidates = seeded(records)
    if not candidates:
        print(f"{bundle}: nothing seeded to replay")
        return 2
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    same = 0
    with httpx.Client(headers=headers, timeout=120, trust_env=False) as client:
        for record in candidates:
            recorded = _task_answer(records, record) if record["path"] == "/v2/tasks" else record["response"]
            status, body = _ask(client, queen.rstrip("/"), record)
            before, after = answer_text(recorded), answer_text(body)
            if status == 200 and before == after:
                same += 1
                continue
            print(f"{record['path']} (seed {record['request']['seed']}): the answer differs (HTTP {status})")
            diff = difflib.unified_diff([before or ""], [after or ""], "recorded", "replayed", lineterm="")
            print("\n".join(diff))
    print(f"replayed {len(candidates)} answer{'s' if len(candidates) != 1 else ''}: {same} the same")
    return 0 if same == len(candidates) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.proof")
    commands = parser.add_subparsers(dest="command", required=True)
    again = commands.add_parser("replay", help="re-send a bundle's seeded requests and compare the answers")
    again.add_argument("bundle", type=Path)
    again.add_argument("--queen", required=True, help="the queen's URL")
    again.add_argument("--key", default=os.environ.get("RBEE_API_KEY"), help="an API key (default $RBEE_API_KEY)")
    args = parser.parse_args(argv)
    return replay(args.bundle, args.queen, args.key)


if __name__ == "__main__":
    sys.exit(main())
