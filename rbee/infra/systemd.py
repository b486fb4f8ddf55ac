"""The hive as a systemd service, where the host runs systemd: the unit's name and text (pure), and how to tell
whether a host can run it.

A hive connected as root gets a system unit; another user gets a user unit, and only where lingering is on for
that user (otherwise systemd stops the user's services when the SSH session that started them ends). Everywhere
else the hive runs as a detached process with a pidfile, as before.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from typing import Literal

ServiceMode = Literal["auto", "systemd", "process"]

SAFE = frozenset(string.ascii_letters + string.digits + "_.-")


class ServiceError(Exception):
    """hive.yaml asks for systemd where it cannot run; the message says why and what to do."""


@dataclass(frozen=True)
class ServiceHost:
    """What a host says about its service manager (the `HiveService` fact)."""

    systemd: bool
    """systemd is PID 1 (/run/systemd/system exists) and systemctl is there."""
    root: bool
    home: str
    linger: bool
    """For a user other than root: systemd keeps this user's services running without a session."""
    python: str | None
    """The hive's Python as an absolute path (found on the host's PATH when hive.yaml names a command)."""
    unit: str | None
    """The hive's unit file as it is on the host, if any."""
    active: bool
    enabled: bool
    account: bool = False
    """The hive's own user (account.py) exists."""
    strangers: bool = False
    """Something the hive writes in the data dir is not that user's (made before it ran as that user)."""
    gpu_groups: tuple[str, ...] = ()
    """Which of the GPU device groups the host has; the unit joins them."""


def unit_name(data_dir: str) -> str:
    """`rbee-hive-<last part of the data dir>-<hash of the whole>.service`: readable, and one unit per data dir
    (the data dir as hive.yaml writes it; by default its last part is the hive's name)."""
    last = data_dir.rstrip("/").rsplit("/", 1)[-1]
    readable = "".join(char if char in SAFE else "_" for char in last)[:60].lstrip(".") or "root"
    return f"rbee-hive-{readable}-{hashlib.sha256(data_dir.encode()).hexdigest()[:8]}.service"


def absolute(path: str, home: str) -> str:
    """A path from hive.yaml with `~/` meaning the home of the user rbee connects as."""
    if path == "~":
        return home
    return home.rstrip("/") + path[1:] if path.startswith("~/") else path


def unit_dir(host: ServiceHost) -> str:
    return "/etc/systemd/system" if host.root else f"{host.home}/.config/systemd/user"


def systemctl(host: ServiceHost) -> str:
    return "systemctl" if host.root else "systemctl --user"


def service_account(mode: ServiceMode, host: ServiceHost, user: str) -> str | None:
    """The user a system unit runs the hive as (hive.yaml's `service_user`); None where the hive runs as the user
    rbee connects as: a process, a user unit, or `service_user: root`."""
    if user == "root" or not host.root or not use_systemd(mode, host):
        return None
    return user


def use_systemd(mode: ServiceMode, host: ServiceHost) -> bool:
    """Whether this hive runs as a systemd unit: `auto` picks it where it works, `systemd` insists on it."""
    if mode == "process":
        return False
    usable = host.systemd and (host.root or host.linger)
    if mode == "systemd" and not usable:
        if not host.systemd:
            raise ServiceError(
                "service: systemd, but systemd does not run on that host; set service: process (or auto) for this hive"
            )
        raise ServiceError(
            "service: systemd for a user other than root needs lingering, so that the hive outlives "
            "the SSH session: run `loginctl enable-linger USER` on that host as root, or set service: process"
        )
    return usable


def _quote(word: str) -> str:
    """A word of a systemd command line: double-quoted, with backslashes, quotes, `$` and `%` escaped."""
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$").replace("%", "%%")
    return f'"{escaped}"'


def _path_setting(path: str) -> str:
    """A path for settings that take one path (no quoting there): only `%` is special."""
    if any(char in path for char in "\n\r"):
        raise ServiceError(f"the path {path!r} holds a line break and cannot go in a systemd unit")
    return path.replace("%", "%%")


def _word(text: str) -> str:
    """One word of a list setting (ReadWritePaths=, Environment=): double-quoted, so a space does not split it;
    only `%` is special there besides the quoting (no variable is expanded)."""
    escaped = _path_setting(text).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _sandbox(data_dir: str, shared_tmp: bool) -> str:
    """What a system unit may touch: the whole file system read-only but its data dir, a private /tmp (unless
    the hive's Python, data dir or models live in /tmp, which it would hide), no new
    privileges (no setuid), no kernel or cgroup settings, files private by default. Caches go to the data dir,
    the one place it may write. (A user unit gets none of this: most of it needs privileges a user manager has
    only with unprivileged user namespaces.)"""
    folder = _word(data_dir)
    return (
        "NoNewPrivileges=yes\n"
        "ProtectSystem=strict\n"
        f"ReadWritePaths={folder}\n"
        f"PrivateTmp={'no' if shared_tmp else 'yes'}\n"
        "ProtectKernelTunables=yes\n"
        "ProtectKernelModules=yes\n"
        "ProtectControlGroups=yes\n"
        "RestrictSUIDSGID=yes\n"
        "LockPersonality=yes\n"
        "UMask=0077\n"
        f"Environment={_word(f'XDG_CACHE_HOME={data_dir}/cache')} {_word(f'HF_HOME={data_dir}/cache/huggingface')}\n"
    )


TEMPORARY = ("/tmp/", "/var/tmp/")


def needs_shared_tmp(*paths: str) -> bool:
    """Whether the hive needs the host's /tmp: its Python, data dir or a model folder lies there, and a private
    /tmp (PrivateTmp=yes) would hide it."""
    return any(path.startswith(TEMPORARY) or path.rstrip("/") in ("/tmp", "/var/tmp") for path in paths)


def _identity(account: str | None, groups: tuple[str, ...]) -> str:
    if account is None:
        return ""
    joined = f"SupplementaryGroups={' '.join(groups)}\n" if groups else ""
    return f"User={account}\nGroup={account}\n{joined}"


def hive_unit(
    data_dir: str,
    python: str,
    *,
    user: bool,
    shared_tmp: bool = False,
    account: str | None = None,
    groups: tuple[str, ...] = (),
) -> str:
    """The unit that runs `python -m rbee hive serve` for the hive in `data_dir` (absolute paths).

    KillMode=mixed: on stop, SIGTERM reaches the hive alone, which stops its workers itself; whatever is left after
    the timeout is killed. Restart=on-failure: a hive that dies is started again, one stopped on purpose is not.
    A system unit runs as `account` (with the GPU `groups`) when given (account.py says why)."""
    for path in (data_dir, python):
        if not path.startswith("/"):
            raise ServiceError(f"a systemd unit needs absolute paths; got {path!r}")
        _path_setting(path)
    config, log = f"{data_dir}/hive.json", f"{data_dir}/logs/hive.log"
    command = " ".join(_quote(word) for word in (python, "-m", "rbee", "hive", "serve", "--config", config))
    return (
        "# Written by rbee apply; rbee destroy removes it.\n"
        "[Unit]\n"
        f"Description=rbee hive ({_path_setting(data_dir)})\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n"
        "StartLimitIntervalSec=60\n"
        "StartLimitBurst=5\n"
        "\n"
        "[Service]\n"
        "Type=exec\n"
        f"{_identity(account, groups)}"
        f"WorkingDirectory={_path_setting(data_dir)}\n"
        f"ExecStart={command}\n"
        f"StandardOutput=append:{_path_setting(log)}\n"
        "StandardError=inherit\n"
        "StandardInput=null\n"
        "Restart=on-failure\n"
        "RestartSec=2\n"
        "KillMode=mixed\n"
        "TimeoutStopSec=20\n"
        f"{'' if user else _sandbox(data_dir, shared_tmp)}"
        "\n"
        "[Install]\n"
        f"WantedBy={'default.target' if user else 'multi-user.target'}\n"
    )
