"""One credential per role (api/credentials.py), through the real apps of the queen, a hive and a worker: each
credential opens its holder's own endpoints and nothing else."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from rbee.api.credentials import FleetCredentials, new_secret, worker_credential
from rbee.api.hive_config import HiveConfig
from rbee.api.state import WorkerState
from rbee.hive import server as hive_server
from rbee.queen import daemon
from rbee.queen.server import create_app
from rbee.spec import load
from rbee.worker.backends.gguf import GgufBackend
from rbee.worker.server import Runtime, WorkerOptions
from rbee.worker.server import create_app as worker_app
from tests.http.queens import BASE_URL

SPEC = """
hives: [{name: alpha, listen: '127.0.0.1:1'}, {name: beta, listen: '127.0.0.1:2'}]
models: [{name: m, source: 'file:///m.gguf'}]
workers: [{model: m, hive: alpha}]
"""
CREDENTIALS = FleetCredentials(new_secret(), new_secret())


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture
def queen(tmp_path: Path) -> Iterator[TestClient]:
    built = daemon.build(tmp_path, CREDENTIALS)
    built.fleet.apply(load.loads(SPEC), "hive.yaml")
    with TestClient(create_app(built), base_url=BASE_URL) as client:
        yield client


def hive_app(tmp_path: Path, name: str) -> TestClient:
    root = tmp_path / name
    root.mkdir()
    (root / "hive.token").write_text(CREDENTIALS.hive(name))
    config = HiveConfig(
        name=name, listen="127.0.0.1:1", data_dir=str(root), version="0", token_file=str(root / "hive.token")
    )
    return TestClient(hive_server.create_app(hive_server.Hive(config)))


def worker(worker_id: str, hive: str) -> TestClient:
    options = WorkerOptions(
        worker_id=worker_id,
        model="m",
        model_path="/nonexistent.gguf",
        backend="gguf",
        device="cpu",
        host="127.0.0.1",
        port=0,
        hive_url=None,
        token=CREDENTIALS.worker(hive, worker_id),
    )
    runtime = Runtime(options=options, engine=GgufBackend(options.model_path), state=WorkerState.LOADING)
    return TestClient(worker_app(runtime))


def test_a_hives_credential_opens_its_own_hive_and_nothing_else(queen: TestClient, tmp_path: Path) -> None:
    alpha = bearer(CREDENTIALS.hive("alpha"))
    assert queen.get("/v2/status", headers=alpha).status_code == 401, "not the operator API"
    assert queen.put("/v2/spec", json={"spec": {}}, headers=alpha).status_code == 401
    assert (
        queen.post("/v2/hives/beta/heartbeat", json={"name": "beta", "version": "0"}, headers=alpha).status_code == 403
    )
    assert (
        queen.post("/v2/hives/alpha/heartbeat", json={"name": "alpha", "version": "0"}, headers=alpha).status_code
        == 200
    )
    assert queen.post("/v1/completions", json={"model": "m", "prompt": "x"}, headers=alpha).status_code == 401
    with hive_app(tmp_path, "alpha") as own, hive_app(tmp_path, "beta") as other:
        assert own.get("/v1/state", headers=alpha).status_code == 200
        assert other.get("/v1/state", headers=alpha).status_code == 401, "not another hive"
        assert other.post("/v1/shutdown", headers=alpha).status_code == 401
    with worker("w-1", "beta") as other_worker, worker("w-1", "alpha") as own_worker:
        assert other_worker.get("/v1/ready", headers=alpha).status_code == 401, "not another hive's worker"
        assert own_worker.get("/v1/ready", headers=bearer(CREDENTIALS.worker("alpha", "w-1"))).status_code == 503


def test_a_workers_credential_opens_that_worker_and_its_own_reports_only(tmp_path: Path) -> None:
    mine = bearer(CREDENTIALS.worker("alpha", "w-1"))
    with worker("w-2", "alpha") as sibling:
        assert sibling.get("/v1/ready", headers=mine).status_code == 401
    with hive_app(tmp_path, "alpha") as hive:
        assert hive.get("/v1/state", headers=mine).status_code == 401, "not its hive's API"
        assert hive.post("/v1/workers/w-2/failed", json={"reason": "x"}, headers=mine).status_code == 401
        assert hive.post("/v1/workers/w-1/failed", json={"reason": "x"}, headers=mine).status_code == 404, (
            "its own report gets past the guard (this hive has no w-1)"
        )


def test_the_operators_credential_is_not_an_api_key_nor_a_hives(queen: TestClient) -> None:
    operator = bearer(CREDENTIALS.operator)
    assert queen.get("/v2/status", headers=operator).status_code == 200
    assert queen.get("/v1/models", headers=operator).status_code == 401
    beat = queen.post("/v2/hives/alpha/heartbeat", json={"name": "alpha", "version": "0"}, headers=operator)
    assert beat.status_code == 403


def test_credentials_are_derived_apart() -> None:
    fleet = CREDENTIALS
    assert len({fleet.operator, fleet.hive("alpha"), fleet.hive("beta"), fleet.worker("alpha", "w-1")}) == 4
    assert fleet.worker("alpha", "w-1") == worker_credential(fleet.hive("alpha"), "w-1")
    other = FleetCredentials(new_secret(), new_secret())
    assert other.hive("alpha") != fleet.hive("alpha"), "another fleet key, other hive credentials"
