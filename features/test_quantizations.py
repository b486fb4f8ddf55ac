"""Step definitions for quantizations.feature: llama.cpp's quantizer, then the real CLI, hive and workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pytest_bdd import given, scenarios, then, when

from tests.fleet import Fleet, make_fleet
from tests.models import requantized

pytestmark = pytest.mark.slow
scenarios("quantizations.feature")

KINDS = ("Q4_K_M", "Q5_K_M", "Q8_0")


def name(kind: str) -> str:
    return "smol-" + kind.lower().replace("_", "-")


class World:
    files: dict[str, Path]
    fleet: Fleet


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    state = World()
    yield state
    if hasattr(state, "fleet"):
        state.fleet.rbee("destroy", str(state.fleet.spec), "--yes")


@given("SmolLM2 quantized again as Q4_K_M, Q5_K_M and Q8_0")
def quantized(world: World, smollm2: Path, tmp_path: Path) -> None:
    world.files = {kind: requantized(smollm2, kind, tmp_path / f"{name(kind)}.gguf") for kind in KINDS}


@when("a fleet serving each of them with one worker is applied")
def applied(world: World, tmp_path: Path) -> None:
    first = KINDS[0]
    (tmp_path / "fleet").mkdir()
    world.fleet = make_fleet(tmp_path / "fleet", f"file://{world.files[first]}", model=name(first))
    text = world.fleet.spec.read_text()
    models = "".join(
        f"  - {{name: {name(k)}, source: 'file://{world.files[k]}', idle_timeout: 0}}\n" for k in KINDS[1:]
    )
    groups = "".join(f"  - {{model: {name(k)}, hive: local}}\n" for k in KINDS[1:])
    world.fleet.spec.write_text(text.replace("workers:\n", models + "workers:\n") + groups)
    result = world.fleet.rbee("apply", str(world.fleet.spec), "--yes")
    assert result.returncode == 0, result.stdout + result.stderr


@then("each answers a chat through the queen")
def answers(world: World) -> None:
    for kind in KINDS:
        body = {"model": name(kind), "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "seed": 1}
        reply = httpx.post(
            f"{world.fleet.queen_url}/v1/chat/completions", json=body, headers=world.fleet.keyed, timeout=60
        )
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"], (kind, reply.text)


@then("the catalog names each one's quantization")
def names_quantization(world: World) -> None:
    state = httpx.get(f"{world.fleet.hive_url}/v1/state", headers=world.fleet.hive_auth()).json()
    found = {entry["name"]: entry["quantization"] for entry in state["catalog"]}
    assert found == {name(kind): kind for kind in KINDS}, found


@then("the files grow from Q4_K_M to Q5_K_M to Q8_0, and so does the memory preflight counts for them")
def grow(world: World) -> None:
    sizes = [world.files[kind].stat().st_size for kind in KINDS]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3, sizes
    state = httpx.get(f"{world.fleet.hive_url}/v1/state", headers=world.fleet.hive_auth()).json()
    counted = {entry["name"]: entry["size_bytes"] for entry in state["catalog"]}
    assert [counted[name(kind)] for kind in KINDS] == sizes, counted
