"""rbee's pyinfra operations as data, in the form of pyinfra's own tests/operations/: each file in
operations/<operation>/ holds a recorded host (its facts), the operation's arguments, and the commands it must
yield, or its no-op sentences, or its refusal.

Placeholders in the files: $VERSION (this rbee's version), $WHEEL and $WHEEL_SHA256 (the wheel file beside the
cases), $UNIT (the systemd unit name of the data dir /srv/rbee)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from rbee import __version__
from rbee.infra import operations
from rbee.infra.systemd import unit_name
from tests.infra.harness import RecordedHost, run

HERE = Path(__file__).parent / "operations"
CASES = sorted(HERE.glob("*/*.json"))
WHEEL = HERE / "rbee-0.1.0-py3-none-any.whl"


def substitute(text: str) -> str:
    values = {
        "$WHEEL_SHA256": hashlib.sha256(WHEEL.read_bytes()).hexdigest(),
        "$WHEEL": str(WHEEL),
        "$VERSION": __version__,
        "$UNIT": unit_name("/srv/rbee"),
    }
    for key, value in values.items():
        text = text.replace(key, value)
    return text


@pytest.mark.parametrize("path", CASES, ids=[f"{path.parent.name}/{path.stem}" for path in CASES])
def test_operation(path: Path) -> None:
    case = json.loads(substitute(path.read_text()))
    host = RecordedHost(case.get("host", "lab"), case.get("host_data", {}), case.get("facts", {}))
    operation = getattr(operations, path.parent.name)
    if "error" in case:
        with pytest.raises((operations.InstallError, operations.ServiceError)) as refused:
            run(operation, host, case.get("args", {}))
        assert case["error"] in str(refused.value)
        return
    assert run(operation, host, case.get("args", {})) == case["commands"]
    assert host.noops == case["noops"]
    if "asks" in case:
        assert sorted(set(host.asked)) == sorted(case["asks"]), "the facts it reads"


def test_every_operation_has_cases() -> None:
    covered = {path.parent.name for path in CASES}
    assert covered == {
        "hive_installed",
        "rbee_in_venv",
        "rbee_importable",
        "hive_running",
        "hive_stopped",
        "hive_uninstalled",
    }
