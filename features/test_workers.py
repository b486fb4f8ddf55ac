"""Step definitions for workers.feature: the real CLI and a real local hive (synthetic engine; SmolLM2 for the
memory preflight)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from tests.fleet import Fleet, alive, make_fleet

pytestmark = pytest.mark.slow
scenarios("workers.feature")


def spec_for(fleet: Fleet, smollm2: Path, synthetic: str, extra: str = "") -> str:
    """The fleet's hive.yaml with a synthetic group (`synthetic`: its options) and perhaps a SmolLM2 gguf group."""
    text = (fleet.root / "base.yaml").read_text().split("workers:\n")[0]
    models = text.replace("models:\n", f"models:\n  - {{name: gguf, source: 'file://{smollm2}', idle_timeout: 0}}\n")
    return models + f"workers:\n  - {{model: smollm2, hive: local, backend: synthetic, {synthetic}}}\n" + extra


@pytest.fixture
def fleet(tmp_path: Path, smollm2: Path) -> Iterator[Fleet]:
    fleet = make_fleet(tmp_path, f"file://{smollm2}", env={"RBEE_SYNTHETIC_LOAD_SECONDS": "3"})
    (fleet.root / "base.yaml").write_text(fleet.spec.read_text())
    fleet.spec.write_text(spec_for(fleet, smollm2, "replicas: 1"))
    applied = fleet.rbee("apply", str(fleet.spec), "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    fleet.applied = applied.stdout
    yield fleet
    fleet.rbee("destroy", str(fleet.spec), "--yes")


class World:
    def __init__(self, fleet: Fleet, smollm2: Path) -> None:
        self.fleet = fleet
        self.smollm2 = smollm2
        self.result: subprocess.CompletedProcess[str] | None = None
        self.pids: set[int] = set()


@pytest.fixture
def world(fleet: Fleet, smollm2: Path) -> World:
    return World(fleet, smollm2)


def workers(fleet: Fleet) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = httpx.get(f"{fleet.hive_url}/v1/state", headers=fleet.hive_auth()).json()["workers"]
    return found


def apply_with(world: World, synthetic: str, extra: str = "") -> None:
    world.pids = {int(w["pid"]) for w in workers(world.fleet) if w.get("pid")}
    path = world.fleet.root / "changed.yaml"
    path.write_text(spec_for(world.fleet, world.smollm2, synthetic, extra))
    world.result = world.fleet.rbee("apply", str(path), "--yes")


def finished(world: World) -> subprocess.CompletedProcess[str]:
    assert world.result is not None, "nothing was applied"
    return world.result


@given("a local hive whose worker loads take 3 seconds, applied with 1 synthetic worker")
def applied(world: World) -> None:
    (worker,) = workers(world.fleet)
    assert worker["backend"] == "synthetic", worker


@when(parsers.parse("I apply the hive.yaml with {count:d} replicas and load_timeout {timeout}"))
def with_timeout(world: World, count: int, timeout: str) -> None:
    apply_with(world, f"replicas: {count}, load_timeout: {timeout}")


@when(parsers.parse("I apply the hive.yaml with a gguf group of {slots:d} slots of {context:d} tokens"))
def with_huge_cache(world: World, slots: int, context: int) -> None:
    apply_with(world, "replicas: 1", f"  - {{model: gguf, hive: local, slots: {slots}, context: {context}}}\n")


@when(parsers.parse("I apply the hive.yaml with a gguf group on device {device}"))
def with_device(world: World, device: str) -> None:
    apply_with(world, "replicas: 1", f"  - {{model: gguf, hive: local, device: '{device}'}}\n")


@when(parsers.parse("I apply the hive.yaml with {count:d} replicas"))
def with_replicas(world: World, count: int) -> None:
    apply_with(world, f"replicas: {count}")


@then(parsers.parse('the first apply showed "{words}" with a percentage'))
def showed_loading(world: World, words: str) -> None:
    lines = [line.strip() for line in world.fleet.applied.splitlines() if words in line]
    assert lines and all(re.search(r"loading \d+%$", line) for line in lines), world.fleet.applied


@then("the worker is idle")
def idle(world: World) -> None:
    assert [w["state"] for w in workers(world.fleet)] == ["idle"]


@then(parsers.parse("rbee exits with {code:d}"))
def exits(world: World, code: int) -> None:
    result = finished(world)
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)


@then(parsers.parse('stderr says "{words}"'))
def says(world: World, words: str) -> None:
    assert words in finished(world).stdout + finished(world).stderr, finished(world).stdout + finished(world).stderr


@then("stderr names the command that shows that worker's log")
def names_logs(world: World) -> None:
    text = finished(world).stdout + finished(world).stderr
    assert re.search(r"rbee logs worker w-\d+ --hive local", text), text


@then("stderr says it needs more memory than the hive has free, with both numbers")
def memory_numbers(world: World) -> None:
    text = finished(world).stdout + finished(world).stderr
    assert re.search(r"needs about [\d.]+ [KMGTP]B.*[\d.]+ [KMGTP]B", text) and "free" in text, text


@then("no worker process started for it")
def nothing_started(world: World) -> None:
    now = workers(world.fleet)
    assert [w["model"] for w in now] == ["smollm2"], now
    assert {int(w["pid"]) for w in now} == world.pids


@then("no worker process of the fleet is left")
def none_left(world: World) -> None:
    assert workers(world.fleet) == [] or all(w["state"] == "stopped" for w in workers(world.fleet))
    assert not any(alive(pid) for pid in world.pids), "the worker's process lives on"
