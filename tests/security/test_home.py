"""RBEE_HOME's secrets: made whole and private, and a damaged one refused with a sentence."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from rbee.keeper.home import Home, SecretError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secrets_are_private_and_made_once(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    first = home.credentials(create=True)
    assert first is not None and home.admin_key(create=True)
    assert mode(home.root) == 0o700
    for secret in (home.operator_file, home.fleet_key_file, home.admin_key_file):
        assert mode(secret) == 0o600, secret
    again = home.credentials(create=False)
    assert again is not None and (again.operator, again.fleet_key) == (first.operator, first.fleet_key)
    assert not list(home.root.glob(".*.tmp")), "written through a temporary file, renamed into place"


def test_an_empty_or_short_secret_is_refused(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.operator_file.write_text("")
    with pytest.raises(SecretError, match="does not hold a usable secret"):
        home.credentials(create=True)
    home.operator_file.write_text("short")
    with pytest.raises(SecretError, match="remove it and run rbee apply"):
        home.credentials(create=True)


def test_a_rotated_admin_key_replaces_the_old(tmp_path: Path) -> None:
    home = Home(tmp_path)
    old = home.admin_key(create=True)
    new = home.rotate_admin_key()
    assert new != old and home.admin_key(create=False) == new and mode(home.admin_key_file) == 0o600


def test_destroy_never_signals_a_process_that_is_not_its_queen(tmp_path: Path) -> None:
    import subprocess

    from rbee.keeper import queen_process

    home = Home(tmp_path)
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        home.remember_queen("http://127.0.0.1:1", bystander.pid)  # a stale record: the pid is another program now
        assert queen_process.stop(home) is True
        assert bystander.poll() is None, "the other program still runs"
        assert home.queen() is None
    finally:
        bystander.kill()
        bystander.wait()
