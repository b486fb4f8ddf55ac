"""Proof bundles for real: a fleet whose queen and keeper write a transcript, a bundle cut from it for one test's
time, and a replay of its seeded requests that gives the same answers (and a diff when one is not)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fleet import Fleet, applied_fleet, make_fleet
from tests.models import SMOLLM2_SOURCE
from tests.proof import bundle

pytestmark = pytest.mark.slow
CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 12, "seed": 5}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("proof")
    fleet = make_fleet(root, SMOLLM2_SOURCE, env={"RBEE_TRANSCRIPT": str(root / "session.ndjson")})
    with applied_fleet(fleet):
        yield fleet


def replay(folder: Path, fleet: Fleet) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tests.proof", "replay", str(folder), "--queen", fleet.queen_url]
    return subprocess.run(
        [*command, "--key", fleet.api_key], capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2]
    )


def test_a_bundle_holds_what_the_test_saw_and_its_seeded_answers_replay_exactly(fleet: Fleet, tmp_path: Path) -> None:
    started = time.time()
    url = f"{fleet.queen_url}/v1/chat/completions"
    assert httpx.post(url, json=CHAT, headers=fleet.keyed, timeout=60).status_code == 200
    with httpx.stream("POST", url, json={**CHAT, "stream": True}, headers=fleet.keyed, timeout=60) as streamed:
        assert streamed.status_code == 200 and list(streamed.iter_lines())
    assert fleet.rbee("status").returncode == 0  # a keeper call, in the same window
    infer = fleet.rbee("infer", "-m", "smollm2", "--seed", "9", "--max-tokens", "10", "Name a fruit.")
    assert infer.returncode == 0, infer.stderr
    records = bundle.read_transcript(fleet.root / "session.ndjson")
    run = bundle.Run("tests/proof::seeded", started, time.time(), "passed")
    folder = bundle.write(
        tmp_path / "bundles", run, records, {"versions": bundle.versions(), "hardware": bundle.hardware()}
    )

    lines = bundle.read_transcript(folder / "transcript.ndjson")
    chats = [line for line in lines if line["who"] == "queen" and line["path"] == "/v1/chat/completions"]
    assert len(chats) == 2 and all(line["status"] == 200 for line in chats)
    assert any(line["who"] == "keeper" and line["path"] == "/v2/status" for line in lines), lines
    text = (folder / "transcript.ndjson").read_text()
    assert fleet.api_key not in text and fleet.credentials().operator not in text, "a credential in the transcript"
    assert [(s["path"], s["seed"]) for s in json.loads((folder / "seeds.json").read_text())] == [
        ("/v1/chat/completions", 5),
        ("/v1/chat/completions", 5),
        ("/v2/tasks", 9),
    ]
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["versions"]["rbee"] and meta["hardware"]["cpu_count"] >= 1 and meta["requests"] == len(lines)
    assert (folder / "result.txt").read_text().startswith("passed")

    again = replay(folder, fleet)
    assert again.returncode == 0 and "replayed 3 answers: 3 the same" in again.stdout, again.stdout + again.stderr

    tampered = [json.loads(line) for line in (folder / "transcript.ndjson").read_text().splitlines()]
    for line in tampered:
        if line["path"] == "/v1/chat/completions" and isinstance(line["response"], dict):
            line["response"]["choices"][0]["message"]["content"] = "not what it said"
    (folder / "transcript.ndjson").write_text("".join(json.dumps(line) + "\n" for line in tampered))
    differs = replay(folder, fleet)
    assert differs.returncode == 1 and "the answer differs" in differs.stdout and "-not what it said" in differs.stdout


def test_a_bundle_with_nothing_seeded_says_so(tmp_path: Path, fleet: Fleet) -> None:
    folder = bundle.write(tmp_path, bundle.Run("t", 0, 1, "passed"), [], {})
    result = replay(folder, fleet)
    assert result.returncode == 2 and "nothing seeded to replay" in result.stdout
