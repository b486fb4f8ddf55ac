"""Step definitions for defaults.feature: the real CLI with HOME pointed at a fresh folder."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from rbee.keeper import processes
from tests.models import SMOLLM2_SOURCE
from tests.servers import free_port

pytestmark = pytest.mark.slow
scenarios("defaults.feature")


class World:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.spec = home / "hive.yaml"
        self.env = {k: v for k, v in os.environ.items() if k not in ("RBEE_HOME", "RBEE_API_KEY")}
        self.env.update(HOME=str(home), NO_COLOR="1")
        self.result: subprocess.CompletedProcess[str] | None = None
        self.hive_url = ""

    def rbee(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rbee", *args], capture_output=True, text=True, timeout=300, env=self.env
        )

    @property
    def share(self) -> Path:
        return self.home / ".local" / "share" / "rbee"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    state = World(tmp_path / "home")
    state.home.mkdir()
    yield state
    state.rbee("destroy", str(state.spec), "--yes")


@given("a fresh HOME and a hive.yaml that names no data_dir")
def fresh(world: World) -> None:
    world.hive_url = f"127.0.0.1:{free_port()}"
    world.spec.write_text(
        f"queen: {{listen: '127.0.0.1:{free_port()}'}}\n"
        f"hives:\n  - {{name: local, listen: '{world.hive_url}'}}\n"
        f"models:\n  - {{name: smollm2, source: '{SMOLLM2_SOURCE}', idle_timeout: 0}}\n"
        "workers:\n  - {model: smollm2, hive: local}\n"
    )
    assert not world.share.exists()


@when("I run rbee apply with --yes")
def apply(world: World) -> None:
    world.result = world.rbee("apply", str(world.spec), "--yes")


@then(parsers.parse("rbee exits with {code:d}"))
def exits(world: World, code: int) -> None:
    assert world.result is not None
    assert world.result.returncode == code, world.result.stdout + world.result.stderr


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


@then(
    "~/.local/share/rbee holds the operator credential, the admin key and the queen's state, readable by the user only"
)
def keeper_files(world: World) -> None:
    share = world.share
    for name in ("operator.token", "fleet.key", "admin.key"):
        assert (share / name).is_file() and private(share / name), name
    assert private(share) and (share / "queen" / "queen.log").is_file()


@then("~/.local/share/rbee/hives/local holds the hive's catalog, its models and its logs")
def hive_files(world: World) -> None:
    data = world.share / "hives" / "local"
    assert (data / "logs" / "hive.log").is_file() and any((data / "models").iterdir())
    assert any(path.suffix == ".db" for path in data.iterdir()), sorted(p.name for p in data.iterdir())


@then("rbee destroy leaves no process behind")
def destroyed(world: World) -> None:
    result = world.rbee("destroy", str(world.spec), "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert processes.rbee_processes((str(world.share), world.hive_url)) == []
