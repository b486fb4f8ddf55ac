"""`rbee apply --rotate-credentials` on a real local fleet: afterwards the old operator credential opens nothing
on the queen, the old hive credential nothing on the hive, and the fleet serves again with the new ones (clients'
API keys are untouched)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from rbee.api.credentials import worker_credential
from tests.fleet import make_fleet
from tests.models import SMOLLM2_SOURCE

pytestmark = pytest.mark.slow


def test_rotation_retires_the_old_credentials(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path, SMOLLM2_SOURCE)
    applied = fleet.rbee("apply", str(fleet.spec), "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    try:
        old_operator, old_hive, key = fleet.operator, fleet.hive_auth(), fleet.keyed
        assert httpx.get(f"{fleet.queen_url}/v2/status", headers=old_operator).status_code == 200
        assert httpx.get(f"{fleet.hive_url}/v1/state", headers=old_hive).status_code == 200

        rotated = fleet.rbee("apply", str(fleet.spec), "--yes", "--rotate-credentials")
        assert rotated.returncode == 0, rotated.stdout + rotated.stderr
        assert "the old ones open nothing any more" in rotated.stdout

        assert fleet.operator != old_operator and fleet.hive_auth() != old_hive
        assert httpx.get(f"{fleet.queen_url}/v2/status", headers=old_operator).status_code == 401
        assert httpx.get(f"{fleet.hive_url}/v1/state", headers=old_hive).status_code == 401
        assert httpx.get(f"{fleet.queen_url}/v2/status", headers=fleet.operator).status_code == 200
        state = httpx.get(f"{fleet.hive_url}/v1/state", headers=fleet.hive_auth())
        assert state.status_code == 200 and [w["state"] for w in state.json()["workers"]] == ["idle"]
        assert fleet.keyed == key, "clients keep their API key"
        answer = httpx.post(
            f"{fleet.queen_url}/v1/completions",
            json={"model": "smollm2", "prompt": "Hello", "max_tokens": 4},
            headers=key,
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        worker = state.json()["workers"][0]
        worker_url = f"http://127.0.0.1:{worker['port']}/v1/ready"
        derived_from_old = worker_credential(old_hive["Authorization"].removeprefix("Bearer "), worker["id"])
        assert httpx.get(worker_url, headers={"Authorization": f"Bearer {derived_from_old}"}).status_code == 401
        assert httpx.get(worker_url, headers=fleet.worker_auth(worker["id"])).status_code == 200
    finally:
        fleet.rbee("destroy", str(fleet.spec), "--yes")
