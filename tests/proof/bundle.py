"""Proof bundles: what one test saw, written to `DIR/<test>/` — `transcript.ndjson` (every request the queen
served and every call the keeper made of it while the test ran, from RBEE_TRANSCRIPT; no headers, so no
credentials), `seeds.json` (the seeds those requests gave the workers), `metadata.json` (versions, the detected
hardware, timings) and `result.txt` (the outcome, and the failure when it failed)."""

from __future__ import annotations

import bisect
import json
import platform
import re
import sys
from dataclasses import dataclass
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

from rbee import __version__

PACKAGES = ("llama-cpp-python", "torch", "transformers", "sentence-transformers", "mlx", "httpx", "starlette")


@dataclass
class Run:
    nodeid: str
    started: float
    ended: float
    outcome: str
    failure: str = ""


def folder_name(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")[:200]


def read_transcript(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a process killed mid-write
    return sorted(lines, key=lambda record: float(record.get("at", 0)))


def seeds(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for record in records:
        request = record.get("request")
        if isinstance(request, dict) and request.get("seed") is not None:
            found.append(
                {"at": record["at"], "path": record["path"], "model": request.get("model"), "seed": request["seed"]}
            )
    return found


def versions() -> dict[str, str]:
    found = {"rbee": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            found[name] = package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            continue
    return found


def hardware() -> dict[str, Any]:
    from rbee.hive import detect

    facts = detect.detect()
    return facts.model_dump(mode="json")


def write(root: Path, run: Run, records: list[dict[str, Any]], machine: dict[str, Any]) -> Path:
    """The bundle of `run`: the transcript lines of its time, and what they say."""
    folder = root / folder_name(run.nodeid)
    folder.mkdir(parents=True, exist_ok=True)
    times = [float(record.get("at", 0)) for record in records]  # records come sorted by time (read_transcript)
    mine = records[bisect.bisect_left(times, run.started) : bisect.bisect_right(times, run.ended)]
    with (folder / "transcript.ndjson").open("w") as out:
        for record in mine:
            out.write(json.dumps(record, separators=(",", ":")) + "\n")
    (folder / "seeds.json").write_text(json.dumps(seeds(mine), indent=2) + "\n")
    meta = {
        "test": run.nodeid,
        "started": run.started,
        "seconds": round(run.ended - run.started, 3),
        "requests": len(mine),
        **machine,
    }
    (folder / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    (folder / "result.txt").write_text(run.outcome + ("\n\n" + run.failure if run.failure else "") + "\n")
    return folder
