"""The shell text that keeps a hive's own user from turning root's next apply against the host (infra/account.py),
run for real in a scratch data dir: a link where root writes, or a code folder the hive's user owns, is refused
with a sentence; handing the data dir over changes links, never what they point at."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from rbee.infra import account
from rbee.infra.systemd import hive_unit

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")

USER = "daemon"  # a user every Debian has, with a group of the same name


def sh(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30, check=False)


def data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "rbee data"  # a space: every path must be quoted
    (data / "venv" / "bin").mkdir(parents=True)
    (data / "logs").mkdir()
    (data / "hive.json").write_text("{}")
    return data


def test_a_data_dir_as_rbee_left_it_passes(tmp_path: Path) -> None:
    checked = sh(account.untampered(str(data_dir(tmp_path))))
    assert checked.returncode == 0, checked.stderr


def test_a_link_where_root_writes_is_refused_and_named(tmp_path: Path) -> None:
    data = data_dir(tmp_path)
    (data / "hive.json").unlink()
    target = tmp_path / "passwd"
    target.write_text("root:x:0:0")
    (data / "hive.json").symlink_to(target)
    checked = sh(account.untampered(str(data)))
    assert checked.returncode == 1
    assert f"refusing to install into {data}" in checked.stderr and f"{data}/hive.json" in checked.stderr
    assert target.read_text() == "root:x:0:0"


def test_a_code_folder_the_hive_user_owns_is_refused(tmp_path: Path) -> None:
    data = data_dir(tmp_path)
    os.chown(data / "venv", 1, 1)  # the hive's user swapped the venv for one of its own
    checked = sh(account.untampered(str(data)))
    assert checked.returncode == 1 and f"{data}/venv" in checked.stderr, checked.stderr


def test_a_code_folder_others_may_write_is_refused(tmp_path: Path) -> None:
    data = data_dir(tmp_path)
    (data / "venv" / "bin").chmod(0o777)
    checked = sh(account.untampered(str(data)))
    assert checked.returncode == 1 and f"{data}/venv/bin" in checked.stderr, checked.stderr


def test_handing_over_changes_what_the_hive_writes_but_not_its_code_nor_a_links_target(tmp_path: Path) -> None:
    data = data_dir(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (data / "models").symlink_to(outside)
    handed = sh(account.handed_over(str(data), USER))
    assert handed.returncode == 0, handed.stderr
    uid = int(sh(f"id -u {USER}").stdout)
    assert (data.stat().st_uid, (data / "logs").stat().st_uid, (data / "hive.json").stat().st_uid) == (uid,) * 3
    assert (data / "workers").stat().st_uid == uid and (data / "cache").is_dir()
    assert (data / "venv").stat().st_uid == 0, "the hive's code stays root's"
    assert outside.stat().st_uid == 0 and os.lstat(data / "models").st_uid == uid


def test_a_python_the_user_cannot_run_is_a_sentence(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    python = private / "python3"
    python.symlink_to("/usr/bin/python3")
    checked = sh(account.runnable(str(python), USER))
    assert checked.returncode == 1
    assert f"the user {USER}, whom the hive runs as, cannot run rbee with {python}" in checked.stderr


def test_the_system_unit_names_the_user_and_its_gpu_groups() -> None:
    text = hive_unit("/srv/rbee", "/srv/rbee/venv/bin/python", user=False, account="rbee", groups=("video", "render"))
    assert "User=rbee\nGroup=rbee\nSupplementaryGroups=video render\n" in text
    assert "User=" not in hive_unit("/srv/rbee", "/usr/bin/python3", user=False)
