"""Step definitions for downloads.feature: the real CLI and hive against a local Hub-protocol server."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from tests.fleet import Fleet, applied_fleet, make_fleet
from tests.hub import Hub
from tests.models import SMOLLM2_SOURCE, tiny_gguf
from tests.servers import serve

pytestmark = pytest.mark.slow
scenarios("downloads.feature")

BIG = tiny_gguf(600_000)  # 2.4 MB


@pytest.fixture(scope="module")
def hub() -> Iterator[str]:
    served = Hub(
        repos={"lab/slow": {"big.gguf": BIG}, "lab/broken": {"big.gguf": BIG}},
        slow={"lab/slow/big.gguf"},
        cut_then_down={"lab/broken/big.gguf"},
    )
    with serve(served.app()) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, hub: str) -> Iterator[Fleet]:
    fleet = make_fleet(tmp_path_factory.mktemp("downloads"), SMOLLM2_SOURCE, env={"HF_ENDPOINT": hub})
    more = (
        "  - {name: slowpoke, source: 'hf://lab/slow/big.gguf', idle_timeout: 0}\n"
        "  - {name: broken, source: 'hf://lab/broken/big.gguf', idle_timeout: 0}\nworkers:\n"
    )
    fleet.spec.write_text(fleet.spec.read_text().replace("workers:\n", more))
    with applied_fleet(fleet):
        yield fleet


class World:
    result: subprocess.CompletedProcess[str] | None = None


@pytest.fixture
def world() -> World:
    return World()


def catalog(fleet: Fleet) -> dict[str, Any]:
    state = httpx.get(f"{fleet.hive_url}/v1/state", headers=fleet.hive_auth()).json()
    return {entry["name"]: entry for entry in state["catalog"]}


def finished(world: World) -> subprocess.CompletedProcess[str]:
    assert world.result is not None, "nothing ran"
    return world.result


@given('a fleet applied on the local hive whose hive.yaml also names models "slowpoke" and "broken" from the Hub')
def applied(fleet: Fleet) -> None:
    found = set(catalog(fleet))
    assert "smollm2" in found and "broken" not in found, "apply fetches only the model a worker uses"


@when(parsers.parse('I run rbee models pull "{model}"'))
def pull(world: World, fleet: Fleet, model: str) -> None:
    world.result = fleet.rbee("models", "pull", model, "--hive", "local", "--file", str(fleet.spec))


@then(parsers.parse("rbee exits with {code:d}"))
def exits(world: World, code: int) -> None:
    result = finished(world)
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)


@then("stdout shows the download at a quarter, a half and three quarters of 2.4 MB, with a speed")
def download_lines(world: World) -> None:
    lines = [line.strip() for line in finished(world).stdout.splitlines() if line.strip().startswith("downloaded ")]
    shown = [re.fullmatch(r"downloaded [\d.]+ [KM]?B of 2\.4 MB \((\d+)%\), [\d.]+ [KM]?B/s", line) for line in lines]
    assert all(shown) and len(shown) >= 3, lines
    percents = [int(match[1]) for match in shown if match]
    assert percents == sorted(percents) and percents[0] >= 25 and percents[-1] >= 75, percents


@then(parsers.parse('the hive\'s catalog has "{model}" of 2.4 MB'))
def in_catalog(fleet: Fleet, model: str) -> None:
    assert catalog(fleet)[model]["size_bytes"] == len(BIG)


@then(parsers.parse('stderr says pulling "{model}" failed, with the hive\'s reason'))
def says_failed(world: World, model: str) -> None:
    text = finished(world).stderr
    assert f"Pulling {model} to local failed: model {model}:" in text, text


@then(parsers.parse('the hive\'s catalog does not have "{model}"'))
def not_in_catalog(fleet: Fleet, model: str) -> None:
    assert model not in catalog(fleet)
