"""rbee apply on this machine with a real model: the queen streams tokens, the official openai client works
unchanged, a second apply changes nothing, destroy leaves no process behind."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.fleet import Fleet, make_fleet
from tests.models import SMOLLM2_SOURCE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = make_fleet(tmp_path_factory.mktemp("fleet"), SMOLLM2_SOURCE, replicas=2)
    applied = fleet.rbee("apply", str(fleet.spec), "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "Apply complete: 4 changes made; queen started" in applied.stdout
    yield fleet
    fleet.rbee("destroy", str(fleet.spec), "--yes")


def test_status_shows_the_running_fleet(fleet: Fleet) -> None:
    result = fleet.rbee("status", "--json")
    assert result.returncode == 0, result.stderr
    hives = json.loads(result.stdout)["hives"]
    assert [hive["status"] for hive in hives] == ["running"]
    workers = hives[0]["state"]["workers"]
    assert sorted(worker["state"] for worker in workers) == ["idle", "idle"]
    assert hives[0]["state"]["catalog"][0]["size_bytes"] > 90_000_000
    shown = fleet.rbee("status")
    assert shown.returncode == 0, shown.stderr
    rows = [row for row in map(str.split, shown.stdout.splitlines()) if row[:1] == ["local"] and row[3:4] == ["gguf"]]
    assert len(rows) == 2 and all(row[5] == "4" for row in rows), shown.stdout  # gguf batches: 4 slots each


@pytest.fixture
def client(fleet: Fleet) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{fleet.queen_url}/v1", api_key=fleet.api_key, max_retries=0) as client:
        yield client


def test_openai_client_streams_and_answers(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == ["smollm2"]

    answer = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
    )
    assert answer.choices[0].message.content
    assert answer.usage is not None and answer.usage.completion_tokens > 0 and answer.usage.prompt_tokens > 5

    pieces, usage = [], None
    for chunk in client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        else:
            usage = chunk.usage
    assert len([p for p in pieces if p]) > 1, "tokens arrive one by one"
    assert "".join(pieces) == answer.choices[0].message.content, "same prompt, temperature 0: same text"
    assert usage is not None and usage.completion_tokens == answer.usage.completion_tokens

    completion = client.completions.create(model="smollm2", prompt="Once upon a time", max_tokens=8, seed=7)
    assert completion.choices[0].text and completion.choices[0].finish_reason == "length"


def test_openai_client_gets_errors_in_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=0)


def test_task_api_streams_rbee_events(fleet: Fleet) -> None:
    body = {"model": "smollm2", "prompt": "Hello", "max_tokens": 5, "temperature": 0}  # sampled, it may end early
    created = httpx.post(f"{fleet.queen_url}/v2/tasks", json=body, headers=fleet.keyed)
    assert created.status_code == 201
    lines = httpx.get(fleet.queen_url + created.json()["events"], headers=fleet.keyed, timeout=60).text.splitlines()
    events = [json.loads(line[5:]) for line in lines if line.startswith("data:")]
    assert [event["index"] for event in events[:-1]] == list(range(len(events) - 1))
    assert events[-1] == {**events[-1], "done": True, "total_tokens": 5, "finish_reason": "length"}


def test_rbee_infer_streams_to_stdout(fleet: Fleet) -> None:
    result = fleet.rbee("infer", "--model", "smollm2", "Name a colour.", "--max-tokens", "6", "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    ended = re.search(r"\[(\d+) tokens, (length|stop), (w-\d+) on hive local\]", result.stderr)
    assert ended, (result.stdout, result.stderr)
    assert (int(ended[1]) == 6) == (ended[2] == "length") and int(ended[1]) <= 6, result.stderr


def test_a_client_that_leaves_mid_stream_frees_its_worker(fleet: Fleet) -> None:
    state = httpx.get(f"{fleet.hive_url}/v1/state", headers=fleet.hive_auth()).json()
    worker = f"http://127.0.0.1:{state['workers'][0]['port']}"
    auth = fleet.worker_auth(state["workers"][0]["id"])
    body = {"prompt": "Write a very long story.", "max_tokens": 500}
    with httpx.stream("POST", f"{worker}/v1/execute", json=body, headers=auth, timeout=30) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
    deadline = time.monotonic() + 3
    while httpx.get(f"{worker}/health").json()["state"] != "idle":
        assert time.monotonic() < deadline, "the worker stayed busy after its client left"
        time.sleep(0.05)
    again = httpx.post(f"{worker}/v1/execute", json={"prompt": "Hi", "max_tokens": 2}, headers=auth, timeout=30)
    assert again.status_code == 200 and '"done":true' in again.text


def test_models_commands_list_pull_and_refuse_to_remove_in_use(fleet: Fleet) -> None:
    listed = fleet.rbee("models", "ls")
    assert listed.returncode == 0, listed.stderr
    assert "smollm2" in listed.stdout and "98.4 MB" in listed.stdout
    in_use = fleet.rbee("models", "rm", "smollm2", "--hive", "local")
    assert in_use.returncode == 1 and "is used by workers" in in_use.stderr
    pulled = fleet.rbee("models", "pull", "smollm2", "--hive", "local")
    assert pulled.returncode == 0 and "smollm2 is in local's catalog (98.4 MB)" in pulled.stdout
    unknown = fleet.rbee("models", "pull", "ghost", "--hive", "local")
    assert unknown.returncode == 1 and "There is no model ghost" in unknown.stderr


def test_a_restarted_queen_adopts_the_running_fleet(fleet: Fleet) -> None:
    auth = fleet.hive_auth()
    before = {w["id"]: w["pid"] for w in httpx.get(f"{fleet.hive_url}/v1/state", headers=auth).json()["workers"]}
    queen = json.loads((fleet.root / "home" / "queen" / "queen.json").read_text())
    os.kill(int(queen["pid"]), signal.SIGKILL)
    restarted = fleet.rbee("apply", str(fleet.spec), "--yes")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert "No changes. Live state matches hive.yaml." in restarted.stdout
    assert "queen started" in restarted.stdout and "(unchanged)" in restarted.stdout
    answer = httpx.post(
        f"{fleet.queen_url}/v1/completions",
        json={"model": "smollm2", "prompt": "Hi", "max_tokens": 2},
        headers=fleet.keyed,
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    after = {w["id"]: w["pid"] for w in httpx.get(f"{fleet.hive_url}/v1/state", headers=auth).json()["workers"]}
    assert after == before, "no worker was restarted"


def test_second_apply_changes_nothing(fleet: Fleet) -> None:
    result = fleet.rbee("apply", str(fleet.spec), "--yes")
    assert result.returncode == 0, result.stderr
    assert "No changes. Live state matches hive.yaml." in result.stdout
    assert "Nothing to change; queen running" in result.stdout
    assert "(unchanged)" in result.stdout


def test_a_saved_plan_applies_exactly_and_a_stale_one_is_refused(fleet: Fleet) -> None:
    saved = fleet.root / "plan.json"
    planned = fleet.rbee("plan", str(fleet.spec), "-o", str(saved))
    assert planned.returncode == 0 and "No changes." in planned.stdout
    auth = fleet.hive_auth()
    worker = httpx.get(f"{fleet.hive_url}/v1/state", headers=auth).json()["workers"][0]["id"]
    assert httpx.post(f"{fleet.hive_url}/v1/workers/{worker}/stop", headers=auth, timeout=60).status_code == 200
    stale = fleet.rbee("apply", str(saved), "--yes")
    assert stale.returncode == 1
    assert "is stale: live state changed since the plan was made" in stale.stderr
    healed = fleet.rbee("apply", str(fleet.spec), "--yes")
    assert healed.returncode == 0, healed.stdout + healed.stderr
    # The queen's own reconcile loop may have replaced the worker first; either way apply converges.
    assert "Apply complete: 1 changes made" in healed.stdout or "Nothing to change" in healed.stdout, healed.stdout
    again = fleet.rbee("plan", str(fleet.spec), "-o", str(saved))
    assert "No changes." in again.stdout
    exact = fleet.rbee("apply", str(saved), "--yes")
    assert exact.returncode == 0 and "Nothing to change" in exact.stdout


def test_ctrl_c_in_rbee_infer_cancels_the_task_and_exits_130(fleet: Fleet) -> None:
    command = [sys.executable, "-m", "rbee", "infer", "-m", "smollm2", "--max-tokens", "2000", "--temperature", "0"]
    infer = subprocess.Popen(
        [*command, "Write a very long story about a bee named Beatrice."],
        env=fleet.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert infer.stdout is not None
        first = infer.stdout.read(8)  # tokens are streaming
        assert first, "no tokens came"
        infer.send_signal(signal.SIGINT)
        out, err = infer.communicate(timeout=15)
    finally:
        if infer.poll() is None:
            infer.kill()
            infer.wait(timeout=10)
    assert infer.returncode == 130, (first + out, err)
    assert b"Interrupted: the task is cancelled." in err, err
    deadline = time.monotonic() + 5
    while any(
        route["in_flight"]
        for route in httpx.get(f"{fleet.queen_url}/v2/status", headers=fleet.operator).json()["routes"]
    ):
        assert time.monotonic() < deadline, "the cancelled task still holds its worker"
        time.sleep(0.1)


def test_rbee_logs_shows_the_queens_the_hives_and_a_workers_log(fleet: Fleet) -> None:
    queen = fleet.rbee("logs", "queen", "-n", "500")
    assert queen.returncode == 0 and "queen listening on" in queen.stdout, queen.stderr
    hive = fleet.rbee("logs", "hive", "local", "--file", str(fleet.spec))
    assert hive.returncode == 0 and re.search(r"started w-\d+ for smollm2", hive.stdout), hive.stdout + hive.stderr
    worker_id = json.loads(fleet.rbee("status", "--json").stdout)["hives"][0]["state"]["workers"][0]["id"]
    worker = fleet.rbee("logs", "worker", worker_id, "--file", str(fleet.spec))
    assert worker.returncode == 0 and f"{worker_id} serves smollm2" in worker.stdout, worker.stdout + worker.stderr
    recent = fleet.rbee("logs", "hive", "local", "--since", "1s", "--file", str(fleet.spec))
    assert recent.returncode == 0 and len(recent.stdout) < len(hive.stdout), "--since leaves older lines out"
    unknown = fleet.rbee("logs", "worker", "w-999", "--hive", "local", "--file", str(fleet.spec))
    assert unknown.returncode == 1 and "no worker w-999 was ever started on this hive" in unknown.stderr


def test_rbee_logs_follows_new_lines_until_interrupted(fleet: Fleet) -> None:
    following = subprocess.Popen(
        [sys.executable, "-m", "rbee", "logs", "queen", "-f", "-n", "0"],
        env=fleet.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        time.sleep(1.0)  # it has read to the end and follows
        asked = fleet.rbee("infer", "-m", "smollm2", "--max-tokens", "3", "Hi")
        assert asked.returncode == 0, asked.stderr
        assert following.stdout is not None
        readable, _, _ = select.select([following.stdout], [], [], 15)
        assert readable, "rbee logs -f printed nothing new within 15 s"
        line = following.stdout.readline()  # the request's log line, written after the follow began
        following.send_signal(signal.SIGINT)
        following.communicate(timeout=10)
    finally:
        if following.poll() is None:
            following.kill()
            following.wait(timeout=10)
    assert "rbee.requests" in line and '"model": "smollm2"' in line, line
    assert following.returncode == 0


def cached_prompt_tokens(fleet: Fleet) -> float:
    metrics = httpx.get(f"{fleet.queen_url}/metrics", headers=fleet.keyed).text
    found = re.search(r'rbee_prompt_tokens_cached_total\{model="smollm2"\} ([0-9.]+)', metrics)
    return float(found.group(1)) if found else 0.0


def test_a_shared_system_prompt_is_read_once_and_the_metrics_say_so(fleet: Fleet, client: openai.OpenAI) -> None:
    """Prefix routing sends both questions to the replica that read the system prompt, whose slot still holds it:
    the second evaluates only its own tokens, and the queen counts what was reused."""
    # longer than the 512 characters prefix routing hashes, so both questions hash alike
    system = "You are the help desk of a bicycle shop. Answer in one short sentence and never promise dates. " * 6
    before = cached_prompt_tokens(fleet)
    for question in ("When are you open?", "Do you repair tyres?"):
        client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
            max_tokens=4,
            temperature=0,
        )
    assert cached_prompt_tokens(fleet) - before >= 100


def test_zz_destroy_leaves_no_process(fleet: Fleet) -> None:
    before = fleet.ours()
    assert len(before) == 4, before  # queen, hive, two workers
    result = fleet.rbee("destroy", str(fleet.spec), "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No rbee process remains." in result.stdout
    assert fleet.ours() == []
    assert not (Path(fleet.root) / "hive" / "hive.pid").exists()
