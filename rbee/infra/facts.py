"""pyinfra facts about a hive: a shell command plus a pure parser of its output (tested on recorded output)."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from pyinfra.api.facts import FactBase

from rbee.infra import shell
from rbee.infra.account import GPU_GROUPS, HIVE_WRITES
from rbee.infra.systemd import ServiceHost, unit_name


class HiveConfigFile(FactBase[str | None]):
    """The hive.json in a data dir, or None when rbee is not installed there."""

    def command(self, data_dir: str) -> str:
        config = shell.path(f"{data_dir.rstrip('/')}/hive.json")
        return f"cat {config} 2>/dev/null || true"

    def process(self, output: list[str]) -> str | None:
        return parse_config(output)


class HiveProcess(FactBase[int | None]):
    """The pid of the running hive daemon, from its pidfile, when that pid is alive and is a hive."""

    def command(self, data_dir: str) -> str:
        pidfile = shell.path(f"{data_dir.rstrip('/')}/hive.pid")
        return (
            f"p=$(cat {pidfile} 2>/dev/null); "
            'if [ -n "$p" ] && kill -0 "$p" 2>/dev/null && ps -p "$p" -o args= | grep -q "hive serve"; '
            'then echo "$p"; fi; true'
        )

    def process(self, output: list[str]) -> int | None:
        return parse_pid(output)


def parse_config(output: list[str]) -> str | None:
    text = "\n".join(output).strip()
    return text or None


def parse_pid(output: list[str]) -> int | None:
    for line in output:
        if line.strip().isdigit():
            return int(line.strip())
    return None


class RbeeVersion(FactBase[str | None]):
    """The rbee version importable by a Python on the host, or None when there is none."""

    def command(self, python: str) -> str:
        return f"{shell.path(python)} -c 'import rbee; print(rbee.__version__)' 2>/dev/null || true"

    def process(self, output: list[str]) -> str | None:
        return parse_version(output)


def parse_version(output: list[str]) -> str | None:
    for line in output:
        text = line.strip()
        if text and text[0].isdigit():
            return text
    return None


class InstalledWheel(FactBase[str | None]):
    """The sha256 of the rbee wheel last installed into a hive's own virtualenv, with the extras installed with
    it (`<sha256> [gguf,mlx]`), if any."""

    def command(self, data_dir: str) -> str:
        return f"cat {shell.path(data_dir.rstrip('/') + '/venv/rbee-wheel.sha256')} 2>/dev/null || true"

    def process(self, output: list[str]) -> str | None:
        text = "".join(output).strip()
        return text or None


MANIFEST = ".rbee-data-dir"
"""Written into a data dir rbee creates: the names rbee may put there and uninstall may remove."""


class DataDirOwner(FactBase[str]):
    """Whose the data dir is: `absent`, `empty`, `rbee` (its manifest, or an older rbee's hive.json, is there),
    `foreign` (it holds someone else's files) or `not-a-dir`."""

    def command(self, data_dir: str) -> str:
        root = shell.path(data_dir.rstrip("/"))
        manifest, config = (
            shell.path(f"{data_dir.rstrip('/')}/{MANIFEST}"),
            shell.path(f"{data_dir.rstrip('/')}/hive.json"),
        )
        return (
            f"if [ ! -e {root} ]; then echo absent; elif [ ! -d {root} ]; then echo not-a-dir; "
            f"elif [ -f {manifest} ] || [ -f {config} ]; then echo rbee; "
            f'elif [ -z "$(ls -A {root} 2>/dev/null)" ]; then echo empty; else echo foreign; fi'
        )

    def process(self, output: list[str]) -> str:
        word = "".join(output).strip()
        return word if word in ("absent", "empty", "rbee", "foreign", "not-a-dir") else "foreign"


@dataclass(frozen=True, slots=True)
class Platform:
    """The operating system and machine, as `uname -sm` prints them: enough to tell an Apple silicon Mac before
    rbee is installed there."""

    system: str
    machine: str

    @property
    def metal(self) -> bool:
        return self.system == "Darwin" and self.machine == "arm64"


class HostPlatform(FactBase[Platform]):
    """The host's `uname -sm`."""

    def command(self) -> str:
        return "uname -sm"

    def process(self, output: list[str]) -> Platform:
        return parse_platform(output)


def parse_platform(output: list[str]) -> Platform:
    words = " ".join(output).split()
    return Platform(system=words[0] if words else "", machine=words[-1] if len(words) > 1 else "")


class HostDevices(FactBase[dict[str, object] | None]):
    """What the host can run (CPU features and RAM, CUDA GPUs, Metal, importable engines), as the hive itself
    detects it: `python -m rbee.hive.detect` with the hive's Python. None where rbee is not installed."""

    def command(self, python: str) -> str:
        return f"{shell.path(python)} -m rbee.hive.detect 2>/dev/null || true"

    def process(self, output: list[str]) -> dict[str, object] | None:
        return parse_devices(output)


def parse_devices(output: list[str]) -> dict[str, object] | None:
    try:
        facts = json.loads("\n".join(output))
    except ValueError:
        return None
    return facts if isinstance(facts, dict) and "devices" in facts else None


class HiveService(FactBase[ServiceHost]):
    """Whether the host runs systemd, as whom rbee connects, and the state of the hive's unit there."""

    def command(self, data_dir: str, python: str, account: str = "rbee") -> str:
        name = shlex.quote(unit_name(data_dir))
        user, root = shlex.quote(account), data_dir.rstrip("/")
        writes = " ".join(shell.path(f"{root}/{item}") for item in HIVE_WRITES)
        return (
            "if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then echo systemd=1; fi; "
            'echo uid=$(id -u); echo "home=$HOME"; '
            f"echo python=$(command -v {shell.path(python)} 2>/dev/null); "
            '[ -f "/var/lib/systemd/linger/$(id -un)" ] && echo linger=1; '
            'if [ "$(id -u)" = 0 ]; then d=/etc/systemd/system; c=systemctl; '
            'else d="$HOME/.config/systemd/user"; c="systemctl --user"; fi; '
            f'if [ -f "$d/"{name} ]; then echo unit-begin; cat "$d/"{name}; echo; echo unit-end; '
            f"echo active=$($c is-active {name} 2>/dev/null); echo enabled=$($c is-enabled {name} 2>/dev/null); fi; "
            f"if id -u {user} >/dev/null 2>&1; then echo account=1; "
            f'[ -n "$(find {shell.path(root)} -maxdepth 0 \\! -user {user} 2>/dev/null; '
            f'find {writes} \\! -user {user} -print -quit 2>/dev/null)" ] && echo strangers=1; fi; '
            f"echo groups=$(getent group {' '.join(GPU_GROUPS)} | cut -d: -f1); "
            "true"
        )

    def process(self, output: list[str]) -> ServiceHost:
        return parse_service(output)


def parse_service(output: list[str]) -> ServiceHost:
    values: dict[str, str] = {}
    unit: list[str] | None = None
    for line in output:
        if unit is not None and line != "unit-end":
            unit.append(line)
        elif line == "unit-begin":
            unit = []
        elif line == "unit-end":
            values["unit"] = "\n".join(unit or []).rstrip("\n") + "\n"
            unit = None
        elif "=" in line:
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), value.strip())
    return ServiceHost(
        systemd=values.get("systemd") == "1",
        root=values.get("uid") == "0",
        home=values.get("home", ""),
        linger=values.get("linger") == "1",
        python=values.get("python") or None,
        unit=values.get("unit"),
        active=values.get("active") == "active",
        enabled=values.get("enabled") == "enabled",
        account=values.get("account") == "1",
        strangers=values.get("strangers") == "1",
        gpu_groups=tuple(group for group in values.get("groups", "").split() if group in GPU_GROUPS),
    )
