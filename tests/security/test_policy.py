"""A routing policy is code: checked by reading it, run only by the queen, and only from the queen's own disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from starlette.testclient import TestClient

from rbee.queen import daemon
from rbee.queen.server import create_app
from rbee.spec import load, policy
from tests.http.queens import BASE_URL, CREDENTIALS, OPERATOR

SPEC = """
queen: {routing: route.py}
hives: [{name: box, listen: '127.0.0.1:1'}]
models: [{name: m, source: 'file:///m.gguf'}]
workers: [{model: m, hive: box}]
"""
POLICY = "def route(request, candidates):\n    return candidates[0]\n"


def test_validate_and_plan_read_the_policy_and_never_run_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "route.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\ndef route(request, candidates):\n    return candidates[0]\n"
    )
    (tmp_path / "hive.yaml").write_text(SPEC)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "RBEE_HOME": str(tmp_path / "home"), "NO_COLOR": "1"}
    for command in (["validate"], ["plan", "--timeout", "0.5"]):
        result = subprocess.run(
            [sys.executable, "-m", "rbee", *command, str(tmp_path / "hive.yaml")],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert result.returncode == 0, result.stderr
    assert not marker.exists(), "checking a hive.yaml ran its policy"


def test_the_queen_takes_no_policy_code_and_runs_only_its_own_copy(tmp_path: Path) -> None:
    queen = daemon.build(tmp_path, CREDENTIALS)
    spec = load.loads(SPEC).model_dump(mode="json")
    with TestClient(create_app(queen), base_url=BASE_URL, headers=OPERATOR) as client:
        sent = client.put("/v2/spec", json={"spec": spec, "source": "x", "policy_source": POLICY})
        assert sent.status_code == 400 and "no policy code over the network" in sent.json()["error"]["message"]
        named = policy.ref(POLICY, "route.py").model_dump()
        missing = client.put("/v2/spec", json={"spec": spec, "source": "x", "policy": named})
        assert missing.status_code == 400 and "is not in" in missing.json()["error"]["message"]
        (tmp_path / "policies").mkdir()
        (tmp_path / "policies" / f"{named['sha256']}.py").write_text(POLICY + "# changed\n")
        tampered = client.put("/v2/spec", json={"spec": spec, "source": "x", "policy": named})
        assert tampered.status_code == 400 and "digest" in tampered.json()["error"]["message"]
        (tmp_path / "policies" / f"{named['sha256']}.py").write_text(POLICY)
        applied = client.put("/v2/spec", json={"spec": spec, "source": "x", "policy": named})
        assert applied.status_code == 200, applied.text
        assert client.get("/v2/route", params={"model": "m"}).json()["policy"] == "file"
        shown = client.get("/v2/route/policy").json()  # the web UI's routing page shows the file it runs
        assert shown == {"kind": "file", "name": "route.py", "source": POLICY, "disabled": None}
        client.portal.call(daemon.close, queen)  # type: ignore[union-attr]
    stored = daemon.build(tmp_path, CREDENTIALS)
    assert stored.store.policy() == policy.ref(POLICY, "route.py"), "stored with the spec"
    assert stored.admission.policy.kind == "file", "a restarted queen runs it again from its own disk"
    stored.store.close()
