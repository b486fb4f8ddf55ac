"""Step definitions for cli_errors.feature: the real `rbee` process against a real local fleet (SmolLM2)."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from tests.fleet import Fleet, applied_fleet, make_fleet
from tests.models import SMOLLM2_SOURCE
from tests.servers import free_port

pytestmark = pytest.mark.slow
scenarios("cli_errors.feature")

STORY = "Write a very long story about a bee named Beatrice."  # ~420 tokens from SmolLM2 at temperature 0


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = make_fleet(tmp_path_factory.mktemp("cli"), SMOLLM2_SOURCE, queen="max_queue: 0", worker_options="slots: 1")
    with applied_fleet(fleet):
        yield fleet


class World:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.env = dict(fleet.env)
        self.result: subprocess.CompletedProcess[str] | None = None
        self.seconds = 0.0
        self.url = ""
        self.worker: dict[str, object] = {}
        self.holder: threading.Thread | None = None
        self.held: list[str] = []
        self.process: subprocess.Popen[str] | None = None


@pytest.fixture
def world(fleet: Fleet) -> Iterator[World]:
    state = World(fleet)
    yield state
    if state.holder is not None:
        state.holder.join(timeout=120)
    if state.process is not None and state.process.poll() is None:
        state.process.kill()


def the_worker(fleet: Fleet) -> dict[str, object]:
    (worker,) = json.loads(fleet.rbee("status", "--json").stdout)["hives"][0]["state"]["workers"]
    return dict(worker)


def in_flight(fleet: Fleet) -> int:
    routes = httpx.get(f"{fleet.queen_url}/v2/status", headers=fleet.operator).json()["routes"]
    return sum(int(route["in_flight"]) for route in routes)


def run(world: World, *args: str) -> None:
    started = time.monotonic()
    world.result = subprocess.run(
        [sys.executable, "-m", "rbee", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=world.env,
        stdin=subprocess.DEVNULL,
    )
    world.seconds = time.monotonic() - started


def finished(world: World) -> subprocess.CompletedProcess[str]:
    assert world.result is not None, "no command ran"
    return world.result


@given(parsers.parse('a fleet of 1 "smollm2" worker of 1 slot applied on the local hive, its queen queueing nothing'))
def applied(world: World) -> None:
    world.worker = the_worker(world.fleet)
    assert world.worker["state"] == "idle" and world.worker["slots"] == 1, world.worker


@given("RBEE_HOME points at an empty folder, where no queen was ever started")
def empty_home(world: World, tmp_path: Path) -> None:
    world.env["RBEE_HOME"] = str(tmp_path / "empty-home")


@given(parsers.parse('RBEE_API_KEY is set to "{key}"'))
def wrong_key(world: World, key: str) -> None:
    world.env["RBEE_API_KEY"] = key


END_OF_TURN = {"0": -100, "2": -100, "4": -100}
"""SmolLM2's end-of-generation tokens, banned: a long hold lasts its max_tokens however fast the engine is (the
story alone ends after ~420 tokens, ~3 s here: about as long as the retries it must outlast)."""


def hold(world: World, max_tokens: int, *, to_the_end: bool = False) -> None:
    """A streaming request that takes the worker's only slot, in a thread; returns once its first token came."""
    first = threading.Event()

    def stream() -> None:
        messages = [{"role": "user", "content": STORY}]
        body = {"model": "smollm2", "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
        if to_the_end:
            body["logit_bias"] = END_OF_TURN
        url = f"{world.fleet.queen_url}/v1/chat/completions"
        with httpx.stream("POST", url, json=body, headers=world.fleet.keyed, timeout=120) as answer:
            world.held.append(str(answer.status_code))
            for line in answer.iter_lines():
                first.set()
                world.held.append(line)

    world.holder = threading.Thread(target=stream, daemon=True)
    world.holder.start()
    assert first.wait(30), "the holding request got no token"


@given("a long streaming request holds the only smollm2 worker")
def long_hold(world: World) -> None:
    hold(world, 1500, to_the_end=True)


@given("a short streaming request holds the only smollm2 worker")
def short_hold(world: World) -> None:
    hold(world, 40)


@given("rbee infer is streaming a long answer")
def streaming(world: World) -> None:
    command = [sys.executable, "-m", "rbee", "infer", "-m", "smollm2", "--max-tokens", "2000", "--temperature", "0"]
    world.process = subprocess.Popen(
        [*command, STORY], env=world.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert world.process.stdout is not None
    assert world.process.stdout.read(4), "no tokens came"
    assert in_flight(world.fleet) == 1


@when(parsers.parse('I run rbee infer -m "{model}" "{prompt}"'))
def infer(world: World, model: str, prompt: str) -> None:
    run(world, "infer", "-m", model, prompt)


@when(parsers.parse('I run rbee infer -m "{model}" "{prompt}" with --retries {count:d}'))
def infer_retrying(world: World, model: str, prompt: str, count: int) -> None:
    run(world, "infer", "-m", model, prompt, "--max-tokens", "8", "--retries", str(count))


@when(parsers.parse("I run the command rbee {command}"))
def command(world: World, command: str) -> None:
    run(world, *shlex.split(command))


@when("I run rbee infer against a port where nothing listens")
def nowhere(world: World) -> None:
    world.url = f"http://127.0.0.1:{free_port()}"
    run(world, "infer", "--queen", world.url, "-m", "smollm2", "Hi")


@when("the user presses Ctrl+C")
def interrupt(world: World) -> None:
    assert world.process is not None
    started = time.monotonic()
    world.process.send_signal(signal.SIGINT)
    out, err = world.process.communicate(timeout=30)
    world.seconds = time.monotonic() - started
    world.result = subprocess.CompletedProcess(world.process.args, world.process.returncode, out, err)


@then(parsers.parse("rbee exits with {code:d}"))
def exits(world: World, code: int) -> None:
    result = finished(world)
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)


@then(parsers.parse("rbee exits with {code:d} within {seconds:d} seconds"))
def exits_soon(world: World, code: int, seconds: int) -> None:
    exits(world, code)
    assert world.seconds < seconds, f"took {world.seconds:.1f} s"


@then("stdout is empty")
def no_stdout(world: World) -> None:
    assert finished(world).stdout.strip() == "", finished(world).stdout


def one_line(world: World) -> str:
    lines = [line for line in finished(world).stderr.splitlines() if line.strip()]
    assert len(lines) == 1, finished(world).stderr
    return lines[0]


@then(parsers.parse('stderr is one line that names "{first}" and "{second}"'))
def names_both(world: World, first: str, second: str) -> None:
    line = one_line(world)
    assert first in line and second in line, line


@then(parsers.parse('stderr is one line that says no queen is running and to run "{hint}"'))
def no_queen(world: World, hint: str) -> None:
    line = one_line(world)
    assert "No queen is running" in line and hint in line, line


@then(parsers.parse('stderr names that URL and says to run "{hint}"'))
def names_url(world: World, hint: str) -> None:
    line = one_line(world)
    assert world.url in line and hint in line, line


@then("stderr says authentication failed and names RBEE_API_KEY")
def auth_failed(world: World) -> None:
    line = one_line(world)
    assert line.startswith("Authentication failed") and "RBEE_API_KEY" in line, line


@then("the smollm2 worker stayed idle with the same pid")
def same_worker(world: World) -> None:
    now = the_worker(world.fleet)
    assert (now["state"], now["pid"]) == ("idle", world.worker["pid"]), now


@then("the queen's request log shows no task answered with that key")
def no_answer_for_key(world: World) -> None:
    log = (world.fleet.home.queen_dir / "queen.log").read_text()
    assert "not-a-real-key" not in log, "a key was logged"
    assert in_flight(world.fleet) == 0


@then(parsers.parse('stderr shows {count:d} lines like "{words}"'))
def retry_lines(world: World, count: int, words: str) -> None:
    lines = [line for line in finished(world).stderr.splitlines() if words in line]
    assert len(lines) == count, finished(world).stderr


@then("stderr suggests waiting, adding replicas, or --retries")
def suggests(world: World) -> None:
    last = finished(world).stderr.strip().splitlines()[-1]
    assert "The fleet is busy" in last and "add replicas" in last and "--retries" in last, last


@then("the held stream completes normally")
def held_completes(world: World) -> None:
    assert world.holder is not None
    world.holder.join(timeout=120)
    lines = [line for line in world.held if line]
    assert lines[0] == "200" and lines[-1] == "data: [DONE]", lines[-3:]


@then("stdout has the answer's tokens")
def tokens_out(world: World) -> None:
    assert finished(world).stdout.strip(), finished(world).stderr


@then(parsers.parse('stderr ends with "{words}"'))
def stderr_ends(world: World, words: str) -> None:
    assert finished(world).stderr.strip().endswith(words), finished(world).stderr


@then("within 2 seconds no request is in flight on the smollm2 worker")
def freed(world: World) -> None:
    deadline = time.monotonic() + 2
    while in_flight(world.fleet):
        assert time.monotonic() < deadline, "the cancelled task still holds its worker"
        time.sleep(0.1)
