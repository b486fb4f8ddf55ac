"""Step definitions for faults.feature: real daemons, real SmolLM2 workers, real signals; the queen's reconcile
loop runs every 2 seconds."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import sqlite3
import threading
import time
from typing import Any

import httpx
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from features.faults_world import (
    BACKGROUND,
    INTERVAL,
    LOAD_ALLOWANCE,
    World,
    apply_fleet,
    auth,
    chat,
    hive_state,
    queen_status,
    running_workers,
    wait_for,
    world,
)
from tests.fleet import alive

pytestmark = pytest.mark.slow
scenarios("faults.feature")
fleet = given(parsers.parse(BACKGROUND))(apply_fleet)
__all__ = ["world"]  # the scenarios' fixture


# -- a worker killed mid-stream ------------------------------------------------------------------------------


def stream_and_signal(world: World, signum: signal.Signals) -> None:
    """Stream a long answer, and send the worker `signum` once 10 lines have come; the lines are kept, with the
    time each came, in `world.stream_lines`, and the signal's time in `world.killed_at`."""
    world.stream_lines = []
    world.signalled_pid = next(iter(world.pids.values()))
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Write a long story about a queen bee and her hive."}],
        "max_tokens": 400,
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{world.fleet.queen_url}/v1/chat/completions", json=body, headers=world.fleet.keyed, timeout=30
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            world.stream_lines.append((time.monotonic(), line))
            if len(world.stream_lines) == 10:
                world.killed_at = time.monotonic()
                os.kill(world.signalled_pid, signum)


@when("a client streams a long answer and the worker is killed mid-stream")
def kill_worker_mid_stream(world: World) -> None:
    stream_and_signal(world, signal.SIGKILL)


@then("the client gets an error event within 2 seconds")
def error_event(world: World) -> None:
    assert hasattr(world, "killed_at"), world.stream_lines
    errors = [(at, line) for at, line in world.stream_lines if at >= world.killed_at and '"error"' in line]
    assert errors, world.stream_lines[-5:]
    at, line = errors[0]
    assert at - world.killed_at < 2.0
    assert json.loads(line.removeprefix("data: "))["error"]["code"] in ("worker_lost", "upstream_error")


@then("a new worker serves requests within one reconcile interval of its load time")
def replaced(world: World) -> None:
    fresh = wait_for(
        "a replacement worker",
        lambda: {k: v for k, v in running_workers(world).items() if k not in world.pids},
        INTERVAL + LOAD_ALLOWANCE,
    )
    assert set(fresh.values()).isdisjoint(world.pids.values())
    answer = wait_for("an answer through the queen", lambda: chat(world).status_code == 200, 10, every=0.3)
    assert answer


@then("rbee status shows the workers Ready")
def status_ready(world: World) -> None:
    def ready() -> bool:
        result = world.fleet.rbee("status", "--json")
        conditions = json.loads(result.stdout)["conditions"]
        return any(c["target"] == "workers smollm2" and c["type"] == "Ready" for c in conditions)

    assert wait_for("the workers Ready", ready, 10, every=0.5)
    shown = world.fleet.rbee("status")
    assert "workers smollm2" in shown.stdout and "Ready" in shown.stdout


# -- a frozen worker ------------------------------------------------------------------------------------------


@given(parsers.parse("the queen's stream idle timeout is {seconds:d} seconds"))
def stream_idle_timeout(world: World, seconds: int) -> None:
    text = world.fleet.spec.read_text().replace(
        "heartbeat_interval: 1s", f"heartbeat_interval: 1s, stream_idle_timeout: {seconds}s"
    )
    world.fleet.spec.write_text(text)
    applied = world.fleet.rbee("apply", str(world.fleet.spec), "--yes")
    assert applied.returncode == 0 and "(updated)" in applied.stdout, applied.stdout + applied.stderr


@when("a client streams a long answer and the worker is frozen mid-stream")
def freeze_worker_mid_stream(world: World) -> None:
    try:
        stream_and_signal(world, signal.SIGSTOP)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.kill(world.signalled_pid, signal.SIGCONT)
        raise


@then("the client gets a worker_unresponsive error within 5 seconds of the freeze")
def unresponsive_error(world: World) -> None:
    errors = [(at, line) for at, line in world.stream_lines if at >= world.killed_at and '"error"' in line]
    assert errors, world.stream_lines[-5:]
    at, line = errors[0]
    assert at - world.killed_at < 5.0, at - world.killed_at
    assert json.loads(line.removeprefix("data: "))["error"]["code"] == "worker_unresponsive"


@then("the hive kills the frozen worker and reports why within 20 seconds")
def frozen_worker_killed(world: World) -> None:
    def reported() -> str | None:
        # The hive's own worker table: the queen may replace the failed worker between two looks at /v1/state,
        # and the hive then lists only the replacement; the table keeps the failed one's reason.
        with contextlib.closing(sqlite3.connect(world.fleet.root / "hive" / "hive.db", timeout=5)) as db:
            row = db.execute(
                "SELECT reason FROM workers WHERE pid = ? AND state = 'failed'", (world.signalled_pid,)
            ).fetchone()
        return str(row[0]) if row else None

    try:
        reason = wait_for("the frozen worker failed", reported, 20, every=0.5)
        assert "answered no health probe" in reason, reason
        assert wait_for("its process gone", lambda: not alive(world.signalled_pid), 5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(world.signalled_pid, signal.SIGCONT)


# -- a killed hive --------------------------------------------------------------------------------------------


@when("the hive daemon is killed with SIGKILL")
def kill_hive(world: World) -> None:
    world.hive_pid = int((world.fleet.root / "hive" / "hive.pid").read_text())
    world.killed_at = time.monotonic()
    os.kill(world.hive_pid, signal.SIGKILL)


@then("its workers exit within 5 seconds")
def workers_exit(world: World) -> None:
    wait_for("the workers gone", lambda: not any(alive(pid) for pid in world.pids.values()), 5)


@then("the queen restarts the hive and its worker without any rbee command")
def hive_back(world: World) -> None:
    fresh = wait_for("a new hive and worker", lambda: running_workers(world), INTERVAL + LOAD_ALLOWANCE + 10)
    assert set(fresh.values()).isdisjoint(world.pids.values())
    assert int((world.fleet.root / "hive" / "hive.pid").read_text()) != world.hive_pid
    assert wait_for("an answer through the queen", lambda: chat(world).status_code == 200, 10, every=0.3)
    events = world.fleet.rbee("events").stdout
    assert "start-hive" in events and "start-workers" in events


@then("rbee destroy leaves no rbee process")
def destroyed(world: World) -> None:
    result = world.fleet.rbee("destroy", str(world.fleet.spec), "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert world.fleet.ours() == []


# -- the queen restarted under load ---------------------------------------------------------------------------


def stream_many(world: World, count: int, results: list[str]) -> list[threading.Thread]:
    def one() -> None:
        try:
            with httpx.stream(
                "POST",
                f"{world.fleet.queen_url}/v1/completions",
                json={"model": "smollm2", "prompt": "Bees", "max_tokens": 12, "stream": True},
                headers=world.fleet.keyed,
                timeout=120,
            ) as response:
                text = "".join(response.iter_lines())
            results.append("ok" if response.status_code == 200 and "[DONE]" in text and "error" not in text else text)
        except httpx.HTTPError as error:
            results.append(f"{type(error).__name__}")

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


@when("20 streams run through the queen and the queen is killed and started again")
def restart_queen(world: World) -> None:
    during: list[str] = []
    threads = stream_many(world, 20, during)
    time.sleep(0.5)
    queen = json.loads((world.fleet.root / "home" / "queen" / "queen.json").read_text())
    os.kill(int(queen["pid"]), signal.SIGKILL)
    for thread in threads:
        thread.join(30)
    restarted = world.fleet.rbee("apply", str(world.fleet.spec), "--yes")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert "Nothing to change; queen started" in restarted.stdout
    world.results = []
    for thread in stream_many(world, 20, world.results):
        thread.join(120)


@then("20 streams started after the restart succeed")
def all_ok(world: World) -> None:
    assert world.results == ["ok"] * 20


@then("the worker kept its pid")
def same_pid(world: World) -> None:
    assert running_workers(world) == world.pids


# -- a corrupt spec -------------------------------------------------------------------------------------------


@when("a corrupt hive.yaml is applied and pushed to the queen")
def corrupt(world: World) -> None:
    world.generation = queen_status(world)["generation"]
    bad = world.fleet.root / "corrupt.yaml"
    bad.write_text(world.fleet.spec.read_text().replace("replicas: 1", "replicas: lots"))
    applied = world.fleet.rbee("apply", str(bad), "--yes")
    pushed = httpx.put(
        f"{world.fleet.queen_url}/v2/spec", json={"spec": {"hives": "nope"}}, headers=auth(world), timeout=5
    )
    world.refusals = [(applied.returncode, applied.stderr), (pushed.status_code, pushed.text)]


@then("both are refused with a reason")
def refused(world: World) -> None:
    (code, stderr), (status, body) = world.refusals
    assert code == 1 and "replicas" in stderr and "corrupt.yaml:" in stderr
    assert status == 400 and "not a valid hive.yaml" in body


@then("the spec generation and the worker are unchanged")
def unchanged(world: World) -> None:
    time.sleep(INTERVAL * 1.5)  # a reconcile pass or more has run since
    assert queen_status(world)["generation"] == world.generation
    assert running_workers(world) == world.pids


# -- repeated failure -----------------------------------------------------------------------------------------


@when("hive.yaml asks for a worker the hive cannot start")
def impossible_worker(world: World) -> None:
    text = world.fleet.spec.read_text().replace(
        "replicas: 1}", "replicas: 1}\n  - {model: smollm2, hive: local, device: 'cuda:0'}"
    )
    world.fleet.spec.write_text(text)
    applied = world.fleet.rbee("apply", str(world.fleet.spec), "--yes")
    assert applied.returncode == 1, applied.stdout
    assert "device cuda:0 was asked for and this hive has no such device" in applied.stdout


@then("rbee status shows that target Degraded with the hive's error")
def degraded(world: World) -> None:
    def failing() -> list[dict[str, Any]]:
        conditions = queen_status(world)["conditions"]
        return [c for c in conditions if c["target"] == "workers smollm2 [cuda:0]" and c["type"] == "Degraded"]

    condition = wait_for("a Degraded condition", failing, 15, every=0.3)[0]
    assert condition["reason"] in ("ApplyFailed", "BackOff")
    assert "device cuda:0 was asked for and this hive has no such device (it has: cpu)" in condition["message"]
    shown = world.fleet.rbee("status")
    assert "Degraded" in shown.stdout
    healthy = [c for c in queen_status(world)["conditions"] if c["target"] == "workers smollm2"]
    assert healthy and healthy[0]["type"] == "Ready", "the other workers are not affected"


@then("the queen retries it with growing gaps")
def growing_gaps(world: World) -> None:
    def failures() -> list[float]:
        events = httpx.get(f"{world.fleet.queen_url}/v2/events?limit=500", headers=auth(world), timeout=5).json()
        return [
            e["at"]
            for e in events["events"]
            if e["kind"] == "failed" and e["target"] == "local/workers smollm2 [cuda:0]"
        ]

    times = wait_for("four failed attempts", lambda: (lambda t: t if len(t) >= 4 else None)(failures()), 40, 0.5)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps[-1] > gaps[0] * 1.5, gaps
    assert all(gap >= 1.5 for gap in gaps), gaps


# -- idle timeout and cold start ------------------------------------------------------------------------------


@given(parsers.parse("the model's idle timeout is {seconds:d} seconds"))
def idle_timeout(world: World, seconds: int) -> None:
    world.fleet.spec.write_text(world.fleet.spec.read_text().replace("idle_timeout: 0", f"idle_timeout: {seconds}s"))
    applied = world.fleet.rbee("apply", str(world.fleet.spec), "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr


@then("the worker is parked and its process gone within 10 seconds")
def parked(world: World) -> None:
    def is_parked() -> bool:
        return [w["state"] for w in hive_state(world)["workers"]] == ["parked"]

    wait_for("the worker parked", is_parked, 10, every=0.3)
    wait_for("its process gone", lambda: not any(alive(pid) for pid in world.pids.values()), 10)
    plan = world.fleet.rbee("plan", str(world.fleet.spec))
    assert "No changes" in plan.stdout and "parked after idle" in plan.stdout


@then("a streaming request cold-starts a worker, showing its progress, and succeeds")
def cold_start(world: World) -> None:
    body = {"model": "smollm2", "prompt": "Bees", "max_tokens": 6, "stream": True}
    with httpx.stream(
        "POST", f"{world.fleet.queen_url}/v1/completions", json=body, headers=world.fleet.keyed, timeout=60
    ) as response:
        assert response.status_code == 200
        lines = list(response.iter_lines())
    assert any(line.startswith(": rbee cold start: smollm2 on hive local") for line in lines), lines[:5]
    assert [line for line in lines if line][-1] == "data: [DONE]" and not any('"error"' in line for line in lines)
    assert running_workers(world)


# -- heartbeats -----------------------------------------------------------------------------------------------


@given("the hive sends heartbeats to the queen")
def beating(world: World) -> None:
    wait_for("a heartbeat", lambda: queen_status(world)["heartbeats"].get("local", 99) < 1.5, 10, every=0.2)
    assert "heartbeats" in (world.fleet.root / "hive" / "logs" / "hive.log").read_text()


@when("the hive daemon is frozen with SIGSTOP")
def freeze(world: World) -> None:
    world.hive_pid = int((world.fleet.root / "hive" / "hive.pid").read_text())
    os.kill(world.hive_pid, signal.SIGSTOP)


@then("within 6 seconds the queen logs 3 missed heartbeats and routes nothing to the hive")
def missed(world: World) -> None:
    try:
        wait_for("no route", lambda: queen_status(world)["routes"] == [], 6, every=0.2)
        events = httpx.get(f"{world.fleet.queen_url}/v2/events", headers=auth(world), timeout=5).json()["events"]
        assert any(e["kind"] == "heartbeat" and "missed 3 heartbeats" in e["message"] for e in events), events
        refused = chat(world)
        assert refused.status_code == 503, refused.text
    except BaseException:
        os.kill(world.hive_pid, signal.SIGCONT)
        raise


@when("the hive daemon is thawed with SIGCONT")
def thaw(world: World) -> None:
    os.kill(world.hive_pid, signal.SIGCONT)


@then("within 6 seconds the hive beats again and its worker is routable, with no rbee command")
def back(world: World) -> None:
    wait_for("a fresh heartbeat", lambda: queen_status(world)["heartbeats"].get("local", 99) < 1.5, 6, every=0.2)
    routes = wait_for("the route back", lambda: queen_status(world)["routes"], 6, every=0.2)
    assert [route["worker"] for route in routes] == list(world.pids)
    assert chat(world).status_code == 200
