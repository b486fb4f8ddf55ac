"""rbee's pyinfra facts on recorded output, in the form of pyinfra's own tests/facts/: each file in
facts/<Fact>/ holds the fact's arguments, the shell command it must run for them, what that command printed on a
host, and the value the fact's parser must make of it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from rbee.infra import facts

HERE = Path(__file__).parent / "facts"
CASES = sorted(HERE.glob("*/*.json"))


@pytest.mark.parametrize("path", CASES, ids=[f"{path.parent.name}/{path.stem}" for path in CASES])
def test_fact(path: Path) -> None:
    case = json.loads(path.read_text())
    fact = getattr(facts, path.parent.name)()
    assert fact.command(**case["args"]) == case["command"]
    value = fact.process(case["output"])
    found = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    assert json.loads(json.dumps(found)) == case["fact"]  # as JSON: a tuple is a list there


def test_every_fact_has_recorded_output() -> None:
    defined = {
        name for name, value in vars(facts).items() if isinstance(value, type) and value.__module__ == facts.__name__
    }
    defined -= {"Platform"}  # the value HostPlatform makes, not a fact
    assert {path.parent.name for path in CASES} == defined


def test_only_apple_silicon_has_metal() -> None:
    assert facts.parse_platform(["Darwin arm64"]).metal
    assert not facts.parse_platform(["Darwin x86_64"]).metal
    assert not facts.parse_platform(["Linux aarch64"]).metal
    assert not facts.parse_platform([]).metal
