"""Observation over real HTTP: a running hive, a refused port, a port that never answers, a wrong hive."""

from __future__ import annotations

import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from rbee.api.state import HiveStatus
from rbee.observe import hives as observe_hives
from rbee.spec import load
from tests.servers import free_port, serve, stalling_port

STATE = {
    "name": "alpha",
    "version": "0.1.0",
    "backends": ["gguf"],
    "catalog": [{"name": "smol", "source": "file:///m/smol.gguf", "format": "gguf", "size_bytes": 10}],
    "workers": [{"id": "w-1", "model": "smol", "backend": "gguf", "state": "idle", "pid": 1, "port": 8001}],
}


def hive_app(state: dict[str, object]) -> Starlette:
    async def get_state(request: Request) -> JSONResponse:
        return JSONResponse(state)

    return Starlette(routes=[Route("/v1/state", get_state)])


def spec_for(ports: dict[str, int], data_dir: Path) -> str:
    hives = "".join(
        f"  - {{name: {name}, listen: '127.0.0.1:{port}', data_dir: '{data_dir / name}'}}\n"
        for name, port in ports.items()
    )
    return "hives:\n" + hives


def test_each_hive_is_observed_with_its_reason(tmp_path: Path) -> None:
    (tmp_path / "installed").mkdir()
    (tmp_path / "installed" / observe_hives.INSTALL_MARKER).write_text("{}")
    with (
        serve(hive_app(STATE)) as alpha,
        serve(hive_app({**STATE, "name": "other"})) as impostor,
        stalling_port() as stalled,
        stalling_port() as stalled_too,
    ):
        ports = {
            "alpha": alpha,
            "impostor": impostor,
            "stalled": stalled,
            "stalled-too": stalled_too,
            "gone": free_port(),
            "installed": free_port(),
        }
        spec = load.loads(spec_for(ports, tmp_path))
        started = time.monotonic()
        observed = observe_hives.observe(spec, timeout=1.0)
        elapsed = time.monotonic() - started

    by_name = {hive.name: hive for hive in observed.hives}
    assert by_name["alpha"].status is HiveStatus.RUNNING
    assert by_name["alpha"].state is not None
    assert by_name["alpha"].state.workers[0].id == "w-1"
    assert by_name["impostor"].status is HiveStatus.UNREACHABLE
    assert "is hive 'other', not 'impostor'" in by_name["impostor"].reason
    assert by_name["stalled"].status is HiveStatus.UNREACHABLE
    assert "no answer" in by_name["stalled"].reason
    assert by_name["gone"].status is HiveStatus.DOWN
    assert by_name["gone"].installed is False
    assert by_name["installed"].status is HiveStatus.DOWN
    assert by_name["installed"].installed is True
    assert by_name["stalled-too"].status is HiveStatus.UNREACHABLE
    # Concurrent: two stalled hives cost one timeout (1 s), not two in a row.
    assert elapsed < 1.9
