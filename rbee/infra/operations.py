"""rbee's own pyinfra operations for hives. Each reads facts and yields only the commands that close the gap,
or says why nothing is needed. `deploys/` calls these; so does `rbee apply` (in a subprocess: pyinfra is gevent).

Per-host values come from arguments, or from host data (`rbee_data_dir`, `rbee_config`, `rbee_token`,
`rbee_python`) so that one call serves every host of an inventory.
"""

from __future__ import annotations

import hashlib
import io
import shlex
from collections.abc import Generator
from pathlib import Path
from typing import Any

from pyinfra.api.operation import operation
from pyinfra.context import host
from pyinfra.operations import files

from rbee import __version__
from rbee.api import credentials
from rbee.api.hive_config import HiveConfig
from rbee.infra import account, shell, tls
from rbee.infra.facts import (
    MANIFEST,
    DataDirOwner,
    HiveConfigFile,
    HiveProcess,
    HiveService,
    HostPlatform,
    InstalledWheel,
    RbeeVersion,
)
from rbee.infra.systemd import (
    ServiceError,
    ServiceHost,
    ServiceMode,
    absolute,
    hive_unit,
    needs_shared_tmp,
    service_account,
    systemctl,
    unit_dir,
    unit_name,
    use_systemd,
)
from rbee.spec import backends


class InstallError(Exception):
    """The hive's Python cannot run this rbee; the message says what to do."""


OWNED = (
    "hive.json",
    "hive.token",
    "cluster.token",  # what rbee before per-hive credentials wrote
    "hive.db",
    "hive.db-wal",
    "hive.db-shm",
    "hive.pid",
    "logs",
    "models",
    "workers",
    "venv",
    "wheels",
    "wheelhouse",
    "tls",
    "cache",
)
"""What rbee creates in a data dir; uninstall removes exactly these."""


def _data(name: str, given: Any) -> Any:
    value = given if given is not None else host.data.get(name)
    if value is None:
        raise ValueError(f"no {name} given for host {host.name}")
    return value


@operation()
def hive_installed(
    data_dir: str | None = None, config: str | None = None, token: str | None = None
) -> Generator[Any, None, None]:
    """The data dir exists (mode 700) with hive.json and the hive's own credential (mode 600). Run by hand from
    an inventory, the credential is derived here from the fleet key the inventory names."""
    data_dir = str(_data("rbee_data_dir", data_dir)).rstrip("/")
    config = str(_data("rbee_config", config))
    if token is None and not host.data.get("rbee_token") and host.data.get("rbee_fleet_key_file"):
        fleet_key = Path(str(host.data.get("rbee_fleet_key_file"))).expanduser().read_text().strip()
        token = credentials.hive_credential(fleet_key, HiveConfig.model_validate_json(config).name)
    token = str(_data("rbee_token", token))
    current = host.get_fact(HiveConfigFile, data_dir=data_dir)
    facts, user = _account(data_dir)
    if user is not None and facts is not None:
        if not facts.account:
            yield account.made(user)
        if current is not None:
            yield account.untampered(data_dir)
    if current is None:
        yield from _claimed(data_dir)
        yield f"mkdir -p {shell.path(data_dir + '/logs')} {shell.path(data_dir + '/models')}"
    elif current.strip() == config.strip():
        host.noop(f"hive config in {data_dir} is current")
    owner = {"user": user, "group": user} if user is not None else {}
    yield from files.put._inner(src=io.StringIO(config), dest=f"{data_dir}/hive.json", mode="600", **owner)
    yield from files.put._inner(src=io.StringIO(token), dest=f"{data_dir}/hive.token", mode="600", **owner)
    yield from _tls_files(data_dir, HiveConfig.model_validate_json(config), owner)
    if user is not None and facts is not None and (current is None or not facts.account or facts.strangers):
        yield account.handed_over(data_dir, user)


def _account(data_dir: str) -> tuple[ServiceHost | None, str | None]:
    """The host's service facts, and the user its hive's system unit runs as (None: the user rbee connects as);
    the facts are asked only where the hive may run under systemd."""
    mode: ServiceMode = host.data.get("rbee_service") or "auto"
    if mode == "process":
        return None, None
    wanted = str(host.data.get("rbee_service_user") or "rbee")
    facts = _service(data_dir, account=wanted)
    return facts, service_account(mode, facts, wanted)


def _tls_files(data_dir: str, config: HiveConfig, owner: dict[str, Any]) -> Generator[Any, None, None]:
    """The hive's certificate, its key (mode 600) and the fleet CA, where hive.json says they are."""
    if config.tls_cert_file is None:
        return
    cert, key, ca = (host.data.get(name) for name in ("rbee_tls_cert", "rbee_tls_key", "rbee_ca"))
    if not (cert and key and ca) and host.data.get("rbee_authority_dir"):
        # a by-hand deploy from `rbee inventory`: issued here, on the operator's machine, from the fleet CA
        authority = tls.Authority(Path(str(host.data.get("rbee_authority_dir"))).expanduser())
        leaf = authority.leaf(f"hive-{config.name}", tuple(host.data.get("rbee_tls_names") or ()))
        cert, key, ca = leaf.cert, leaf.key, authority.ca_pem()
    if not (cert and key and ca):
        raise InstallError(
            f"hive {config.name} serves TLS and this install carries no certificate for it; install it with "
            "rbee apply, or from an inventory that `rbee inventory` wrote (it names the fleet CA in RBEE_HOME)"
        )
    yield from files.directory._inner(path=f"{data_dir}/tls", mode="700", **owner)
    yield from files.put._inner(src=io.StringIO(str(cert)), dest=config.tls_cert_file, mode="644", **owner)
    yield from files.put._inner(src=io.StringIO(str(key)), dest=str(config.tls_key_file), mode="600", **owner)
    yield from files.put._inner(src=io.StringIO(str(ca)), dest=str(config.ca_file), mode="644", **owner)


def _claimed(data_dir: str) -> Generator[str, None, None]:
    """The data dir is rbee's: made new (mode 700, with the manifest of what rbee may put there), or taken when
    empty, or already rbee's; a folder of someone else's files is refused before anything is written."""
    owner = host.get_fact(DataDirOwner, data_dir=data_dir)
    if owner in ("foreign", "not-a-dir"):
        what = "is not a folder" if owner == "not-a-dir" else "already holds files that rbee did not put there"
        raise InstallError(
            f"{data_dir} on {host.name} {what}; rbee takes its data dir for itself (mode 700, and destroy --purge "
            "empties it), so set hives[].data_dir to a new or empty folder"
        )
    if owner != "rbee":
        root, manifest = shell.path(data_dir), shell.path(f"{data_dir}/{MANIFEST}")
        yield f"mkdir -p {root} && chmod 700 {root} && printf '%s\\n' {' '.join(OWNED)} > {manifest}"


@operation()
def rbee_ready(python: str | None = None) -> Generator[Any, None, None]:
    """The hive's Python runs this rbee: a Python named in hive.yaml is checked; otherwise rbee is installed
    into the hive's own virtualenv from the wheel apply uploads (with a wheelhouse for hosts without an index)."""
    if host.data.get("rbee_wheel"):
        yield from rbee_in_venv._inner()
    else:
        yield from rbee_importable._inner(python)


@operation()
def rbee_in_venv(
    data_dir: str | None = None, wheel: str | None = None, extras: str | None = None, wheelhouse: str | None = None
) -> Generator[Any, None, None]:
    data_dir = str(_data("rbee_data_dir", data_dir)).rstrip("/")
    wheel = str(_data("rbee_wheel", wheel))
    extras = extras if extras is not None else _extras()
    wheelhouse = wheelhouse if wheelhouse is not None else host.data.get("rbee_wheelhouse")
    # The marker names the extras too: a hive that gains a model of another kind gets that engine installed.
    digest = hashlib.sha256(Path(wheel).read_bytes()).hexdigest() + (f" [{extras}]" if extras else "")
    if host.get_fact(InstalledWheel, data_dir=data_dir) == digest:
        host.noop(f"rbee {__version__} ({Path(wheel).name}, {extras or 'no extras'}) is installed in {data_dir}/venv")
        return
    if _account(data_dir)[1] is not None:  # root is about to run pip in a folder the hive's user owns
        yield account.untampered(data_dir)
    yield from _claimed(data_dir)
    venv, remote_wheel = f"{data_dir}/venv", f"{data_dir}/wheels/{Path(wheel).name}"
    python = shell.path(venv + "/bin/python")
    yield f"mkdir -p {shell.path(data_dir + '/wheels')} && (test -x {python} || python3 -m venv {shell.path(venv)})"
    yield from files.put._inner(src=wheel, dest=remote_wheel)
    index = ""
    if wheelhouse:
        yield from files.sync._inner(src=str(wheelhouse), dest=f"{data_dir}/wheelhouse")
        index = f"--no-index --find-links {shell.path(data_dir + '/wheelhouse')} "
    target = shell.path(remote_wheel + (f"[{extras}]" if extras else ""))
    yield (
        f"{shell.path(venv + '/bin/pip')} install --quiet --disable-pip-version-check {index}{target} && "
        f"echo {shlex.quote(digest)} > {shell.path(venv + '/rbee-wheel.sha256')}"
    )


def _extras() -> str:
    """The backend extras this host needs (spec/backends.py): its pinned backends, or what `auto` gives its
    workloads on this platform; a Mac with Apple silicon gets MLX for Hugging Face folders."""
    workloads = [backends.Workload.model_validate(item) for item in host.data.get("rbee_workloads") or ()]
    pinned = host.data.get("rbee_backends")
    metal = host.get_fact(HostPlatform).metal if pinned is None and workloads else False
    return ",".join(backends.extras(workloads, pinned, metal))


@operation()
def rbee_importable(python: str | None = None) -> Generator[str, None, None]:
    """The hive's Python imports this version of rbee: for a hive whose hive.yaml names its `python` (rbee
    installs itself only into a virtualenv of its own)."""
    python = str(_data("rbee_python", python))
    version = host.get_fact(RbeeVersion, python=python)
    if version == __version__:
        host.noop(f"rbee {version} is importable with {python}")
        return
    found = f"rbee {version}" if version else "no rbee"
    raise InstallError(
        f"{python} on {host.name} has {found}, and this keeper is rbee {__version__}; install rbee {__version__} "
        "there (pip install rbee[gguf]) and set hives[].python to that Python"
    )
    yield ""  # pragma: no cover - makes this a generator; the raise above always happens first


def _normalized(unit: str) -> list[str]:
    return [line.strip() for line in unit.splitlines() if line.strip()]


def _service(data_dir: str, python: str | None = None, account: str = "rbee") -> ServiceHost:
    python = python or str(host.data.get("rbee_python") or "python3")
    return host.get_fact(HiveService, data_dir=data_dir, python=python, account=account)


@operation()
def hive_running(
    data_dir: str | None = None, python: str | None = None, service: ServiceMode | None = None
) -> Generator[Any, None, None]:
    """The hive daemon runs: as a systemd unit where the host runs systemd (unless hive.yaml says `service:
    process`), otherwise in the background, detached, with a pidfile. Either way it logs to logs/hive.log."""
    data_dir = str(_data("rbee_data_dir", data_dir)).rstrip("/")
    python = str(_data("rbee_python", python))
    mode: ServiceMode = service or host.data.get("rbee_service") or "auto"
    pid = host.get_fact(HiveProcess, data_dir=data_dir)
    if mode != "process":  # one more command on the host, only where systemd may be used
        wanted = str(host.data.get("rbee_service_user") or "rbee")
        facts = _service(data_dir, python, account=wanted)
        if use_systemd(mode, facts):
            yield from _unit_running(data_dir, python, facts, pid, service_account(mode, facts, wanted))
            return
    if pid is not None:
        host.noop(f"hive already running (pid {pid})")
        return
    root = shell.path(data_dir)
    config = shell.path(f"{data_dir}/hive.json")
    log = shell.path(f"{data_dir}/logs/hive.log")
    pidfile = shell.path(f"{data_dir}/hive.pid")
    yield (
        f"cd {root} && nohup setsid {shell.path(python)} -m rbee hive serve --config {config}"
        f" >> {log} 2>&1 < /dev/null & echo $! > {pidfile}"
    )


def _unit_running(
    data_dir: str, python: str, facts: ServiceHost, pid: int | None, user: str | None
) -> Generator[Any, None, None]:
    found = facts.python or absolute(python, facts.home)
    if not found.startswith("/"):
        raise ServiceError(f"{python} is not on the PATH of that host; give hives[].python in full")
    roots = (
        HiveConfig.model_validate_json(str(host.data.get("rbee_config"))).model_dirs
        if host.data.get("rbee_config")
        else ()
    )
    shared_tmp = needs_shared_tmp(
        absolute(data_dir, facts.home), found, *(absolute(root, facts.home) for root in roots)
    )
    text = hive_unit(
        absolute(data_dir, facts.home),
        found,
        user=not facts.root,
        shared_tmp=shared_tmp,
        account=user,
        groups=facts.gpu_groups,
    )
    name, ctl = unit_name(data_dir), systemctl(facts)
    written = facts.unit is not None and _normalized(facts.unit) == _normalized(text)
    if not written:
        folder = unit_dir(facts)
        yield f"mkdir -p {shlex.quote(folder)}"
        yield from files.put._inner(src=io.StringIO(text), dest=f"{folder}/{name}", mode="644")
        yield f"{ctl} daemon-reload"
    if not facts.enabled:
        yield f"{ctl} enable --quiet {shlex.quote(name)}"
    if facts.active:
        note = "" if written else "; its new unit applies when it next starts"
        host.noop(f"hive already running as systemd unit {name}{note}")
    elif pid is not None:
        host.noop(f"hive already running (pid {pid}), started before its systemd unit; it moves there when it restarts")
    else:  # reset-failed: a unit that gave up after too many restarts would refuse to start
        if user is not None:
            yield account.runnable(found, user)
        yield f"{ctl} reset-failed {shlex.quote(name)} 2>/dev/null; {ctl} start {shlex.quote(name)}"


@operation()
def hive_stopped(data_dir: str | None = None, grace_seconds: int = 15) -> Generator[str, None, None]:
    """No hive daemon runs: SIGTERM (it stops its workers first), then SIGKILL after the grace period. A hive
    under systemd is stopped and disabled there, so that it does not come back at boot either."""
    data_dir = str(_data("rbee_data_dir", data_dir)).rstrip("/")
    facts = _service(data_dir)
    if facts.systemd and facts.unit is not None and (facts.active or facts.enabled):
        yield f"{systemctl(facts)} disable --now --quiet {shlex.quote(unit_name(data_dir))}"
        if facts.active:
            return
    pid = host.get_fact(HiveProcess, data_dir=data_dir)
    if pid is None:
        if not (facts.systemd and facts.unit is not None and facts.enabled):
            host.noop("hive is not running")
        return
    ticks = grace_seconds * 10
    yield (
        f"kill -TERM {pid}; i=0; while kill -0 {pid} 2>/dev/null && [ $i -lt {ticks} ]; do sleep 0.1; i=$((i+1)); done;"
        f" kill -KILL {pid} 2>/dev/null; rm -f {shell.path(data_dir + '/hive.pid')}; true"
    )


@operation()
def hive_uninstalled(data_dir: str | None = None) -> Generator[str, None, None]:
    """Nothing rbee created is left in the data dir (nor its systemd unit); the dir itself goes if it is then
    empty."""
    data_dir = str(_data("rbee_data_dir", data_dir)).rstrip("/")
    facts = _service(data_dir)
    if facts.unit is not None:
        name, ctl = shlex.quote(unit_name(data_dir)), systemctl(facts)
        unit = shlex.quote(f"{unit_dir(facts)}/{unit_name(data_dir)}")
        yield f"({ctl} disable --now --quiet {name} 2>/dev/null; rm -f {unit} && {ctl} daemon-reload)"
    if host.get_fact(DataDirOwner, data_dir=data_dir) != "rbee":
        if facts.unit is None:
            host.noop(f"rbee is not installed in {data_dir}")
        return
    # Only the names rbee puts there (the manifest lists these), never the rest of the folder.
    owned = " ".join(shell.path(f"{data_dir}/{name}") for name in (*OWNED, MANIFEST))
    yield f"rm -rf {owned} && (rmdir {shell.path(data_dir)} 2>/dev/null || true)"
