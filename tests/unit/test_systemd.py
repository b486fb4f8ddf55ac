"""The hive's systemd unit (pure) and the fact that says whether a host can run it, on recorded output."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rbee.infra.facts import parse_service
from rbee.infra.systemd import (
    ServiceError,
    ServiceHost,
    absolute,
    hive_unit,
    needs_shared_tmp,
    unit_name,
    use_systemd,
)


def host(**changes: object) -> ServiceHost:
    values: dict[str, object] = {
        "systemd": True,
        "root": True,
        "home": "/root",
        "linger": False,
        "python": "/usr/bin/python3",
        "unit": None,
        "active": False,
        "enabled": False,
    }
    values.update(changes)
    return ServiceHost(**values)  # type: ignore[arg-type]


def test_unit_names_are_readable_and_one_per_data_dir() -> None:
    name = unit_name("~/.local/share/rbee/hives/lab")
    assert name.startswith("rbee-hive-lab-") and name.endswith(".service")
    assert unit_name("/srv/rbee") != unit_name("/srv/rbee2") != unit_name("/opt/rbee")
    assert unit_name("/srv/rbee") == unit_name("/srv/rbee")
    odd = unit_name("/data/my hive/$(rm -rf ~)")
    assert all(char.isalnum() or char in "-_." for char in odd), odd


def test_home_relative_paths_become_absolute() -> None:
    assert absolute("~/.local/share/rbee/hives/lab", "/home/ann") == "/home/ann/.local/share/rbee/hives/lab"
    assert absolute("~", "/home/ann") == "/home/ann"
    assert absolute("/srv/rbee", "/home/ann") == "/srv/rbee"


def test_auto_uses_systemd_for_root_and_for_lingering_users_only() -> None:
    assert use_systemd("auto", host()) is True
    assert use_systemd("auto", host(root=False, linger=True)) is True
    assert use_systemd("auto", host(root=False, linger=False)) is False, "the unit would die with the SSH session"
    assert use_systemd("auto", host(systemd=False)) is False
    assert use_systemd("process", host()) is False


def test_insisting_on_systemd_where_it_cannot_run_says_what_to_do() -> None:
    with pytest.raises(ServiceError, match="systemd does not run on that host; set service: process"):
        use_systemd("systemd", host(systemd=False))
    with pytest.raises(ServiceError, match="loginctl enable-linger"):
        use_systemd("systemd", host(root=False))


def test_the_unit_quotes_what_systemd_would_expand() -> None:
    text = hive_unit("/srv/my rbee%", "/opt/py $HOME/bin/python", user=False)
    assert 'ExecStart="/opt/py $$HOME/bin/python" "-m" "rbee" "hive" "serve" "--config" "/srv/my rbee%%/hive.json"' in (
        text
    )
    assert "WorkingDirectory=/srv/my rbee%%\n" in text
    assert "StandardOutput=append:/srv/my rbee%%/logs/hive.log\n" in text
    assert "KillMode=mixed\n" in text and "Restart=on-failure\n" in text
    assert "WantedBy=multi-user.target" in text
    assert "WantedBy=default.target" in hive_unit("/srv/rbee", "/usr/bin/python3", user=True)
    with pytest.raises(ServiceError, match="absolute"):
        hive_unit("~/rbee", "/usr/bin/python3", user=False)
    with pytest.raises(ServiceError, match="line break"):
        hive_unit("/srv/a\nExecStartPre=/bin/evil", "/usr/bin/python3", user=False)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_itself_accepts_the_unit(tmp_path: Path) -> None:
    data = tmp_path / "hive data"
    (data / "logs").mkdir(parents=True)
    unit = tmp_path / unit_name(str(data))
    unit.write_text(hive_unit(str(data), sys.executable, user=False))
    checked = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    complaints = [line for line in checked.stderr.splitlines() if unit.name in line]
    assert checked.returncode == 0 and complaints == [], checked.stderr


def test_the_fact_reads_a_root_host_with_the_unit_running() -> None:
    recorded = [
        "systemd=1",
        "uid=0",
        "home=/root",
        "python=/srv/rbee/venv/bin/python",
        "unit-begin",
        "[Unit]",
        "Description=rbee hive (/srv/rbee)",
        "",
        "[Service]",
        "ExecStart=/srv/rbee/venv/bin/python -m rbee hive serve",
        "",
        "unit-end",
        "active=active",
        "enabled=enabled",
    ]
    facts = parse_service(recorded)
    assert facts == ServiceHost(
        systemd=True,
        root=True,
        home="/root",
        linger=False,
        python="/srv/rbee/venv/bin/python",
        unit="[Unit]\nDescription=rbee hive (/srv/rbee)\n\n[Service]\nExecStart=/srv/rbee/venv/bin/python -m rbee "
        "hive serve\n",
        active=True,
        enabled=True,
    )


def test_the_fact_reads_a_user_without_systemd_or_python() -> None:
    facts = parse_service(["uid=1000", "home=/home/ann", "python="])
    assert facts == host(systemd=False, root=False, home="/home/ann", python=None)
    assert parse_service(["systemd=1", "uid=1000", "home=/home/ann", "linger=1"]).linger is True


def test_a_hive_whose_python_or_models_live_in_tmp_keeps_the_hosts_tmp() -> None:
    """PrivateTmp=yes would hide them from the unit; everything else stays sandboxed."""
    assert needs_shared_tmp("/srv/rbee", "/tmp/checkout/.venv/bin/python")
    assert needs_shared_tmp("/srv/rbee", "/usr/bin/python3", "/var/tmp/models")
    assert not needs_shared_tmp("/srv/rbee", "/usr/bin/python3", "/srv/models", "/tmpfiles/x")
    shared = hive_unit("/srv/rbee", "/tmp/x/python", user=False, shared_tmp=True)
    assert "PrivateTmp=no" in shared and "ProtectSystem=strict" in shared and "NoNewPrivileges=yes" in shared
    assert "PrivateTmp=yes" in hive_unit("/srv/rbee", "/usr/bin/python3", user=False)
