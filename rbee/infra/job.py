"""A pyinfra job: which steps to run on which hives, as typed values that cross into the subprocess that runs
them (infra/runner.py) and back.

pyinfra is gevent-based, so it never runs inside the keeper's or the queen's event loop: a job is written to a
subprocess's stdin as JSON, and each host's result comes back on its stdout. Each hive's credential travels in
that JSON, never in a process argument.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from rbee import __version__
from rbee.api.credentials import FleetCredentials
from rbee.api.hive_config import HiveConfig
from rbee.api.state import HostFacts
from rbee.infra import tls
from rbee.spec import backends
from rbee.spec.connection import SshConnection
from rbee.spec.schema import HiveFile, HiveSpec

INSTALL_DEADLINE = 1800.0
STEP_DEADLINE = 300.0


class Step(StrEnum):
    """What a job does on each host, in the order given. Every host receives the same steps."""

    FACTS = "facts"
    """Only look: installed? daemon running? the machine's devices (observe/ssh.py)."""
    PYTHON = "python"
    """The hive's Python runs this rbee (checked, or installed into the hive's own virtualenv)."""
    INSTALL = "install"
    START = "start"
    STOP = "stop"
    UNINSTALL = "uninstall"


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HostData(Frozen):
    """pyinfra host data for one hive: what rbee's operations read as `host.data.rbee_*`."""

    rbee_data_dir: str
    rbee_config: str
    rbee_token: str
    rbee_python: str
    rbee_service: Literal["auto", "systemd", "process"] = "auto"
    rbee_service_user: str = "rbee"
    """Whom a system unit runs the hive as (infra/account.py); `root` keeps it root's."""
    rbee_wheel: str | None = None
    """Set when rbee installs itself into the hive's own virtualenv from this wheel."""
    rbee_workloads: tuple[backends.Workload, ...] = ()
    """What the hive's workers will run, for choosing the backend extras on the host itself."""
    rbee_backends: tuple[str, ...] | None = None
    """The backends hive.yaml pins for the hive (their extras are installed as they are); None for auto."""
    rbee_wheelhouse: str | None = None
    rbee_tls_cert: str | None = None
    """The hive's certificate (PEM), its key and the fleet CA, for a hive that serves TLS."""
    rbee_tls_key: str | None = None
    rbee_ca: str | None = None
    rbee_authority_dir: str | None = None
    """For a by-hand inventory: the fleet CA's folder on the operator's machine, to issue the certificate from
    (for `rbee_tls_names`) when the install runs."""
    rbee_tls_names: tuple[str, ...] = ()

    def pyinfra(self) -> dict[str, Any]:
        return {key: value for key, value in self.model_dump(mode="json").items() if value not in (None, [])}


class JobHost(Frozen):
    name: str
    ssh: SshConnection | None = None
    data: HostData


class Job(Frozen):
    hosts: tuple[JobHost, ...]
    steps: tuple[Step, ...]
    connect_timeout: float = 10.0


class SshFacts(Frozen):
    """What the facts step saw on a host."""

    installed: bool
    pid: int | None = None
    host: HostFacts | None = None


class HostResult(Frozen):
    changed: bool = False
    error: str | None = None
    notes: tuple[str, ...] = ()
    facts: SshFacts | None = None


class JobResult(Frozen):
    hosts: dict[str, HostResult]


def hive_config(hive: HiveSpec, spec: HiveFile | None = None) -> HiveConfig:
    """The hive.json the install step writes for `hive` (its file:// roots come from the whole of hive.yaml)."""
    data_dir = str(Path(hive.data_path).expanduser()) if hive.ssh is None else hive.data_path
    tls_dir = f"{data_dir}/tls"
    return HiveConfig(
        name=hive.name,
        listen=hive.listen_address,
        data_dir=data_dir,
        version=__version__,
        token_file=f"{data_dir}/hive.token",
        backends=hive.backends if isinstance(hive.backends, str) else tuple(str(b) for b in hive.backends),
        model_dirs=spec.model_dirs(hive) if spec is not None else tuple(hive.model_dirs or ()),
        tls_cert_file=f"{tls_dir}/hive.pem" if hive.tls else None,
        tls_key_file=f"{tls_dir}/hive.key" if hive.tls else None,
        ca_file=f"{tls_dir}/ca.pem" if hive.tls else None,
    )


def hive_names(hive: HiveSpec) -> tuple[str, ...]:
    """What a hive's certificate must answer to: where the queen reaches it, and loopback, where its own
    workers reach it and it reaches them."""
    listen = hive.listen_address.rpartition(":")[0].strip("[]")
    extra = () if listen in ("0.0.0.0", "::", "") else (listen,)
    return (hive.api_host, *extra, "127.0.0.1", "localhost")


def workloads(spec: HiveFile, hive: str) -> tuple[backends.Workload, ...]:
    """What the worker groups of `hive` ask of it, one entry per distinct (kind, format, backend)."""
    found: dict[backends.Workload, None] = {}
    for worker in spec.workers:
        model = spec.model(worker.model) if worker.hive == hive else None
        if model is not None:
            found[backends.Workload(kind=model.kind, format=model.resolved_format, backend=worker.backend)] = None
    return tuple(found)


def job_for(
    hives: Iterable[HiveSpec],
    steps: Iterable[Step],
    credentials: FleetCredentials | None,
    wheel: Path | None = None,
    spec: HiveFile | None = None,
    connect_timeout: float = 10.0,
    authority: tls.Authority | None = None,
) -> Job:
    hosts = []
    for hive in hives:
        config = hive_config(hive, spec)
        leaf = authority.leaf(f"hive-{hive.name}", hive_names(hive)) if authority is not None and hive.tls else None
        python = hive.python or (sys.executable if hive.ssh is None else f"{config.data_dir}/venv/bin/python")
        own_venv = hive.ssh is not None and hive.python is None and wheel is not None
        data = HostData(
            rbee_data_dir=config.data_dir,
            rbee_config=config.model_dump_json(indent=2),
            rbee_token=credentials.hive(hive.name) if credentials else "",
            rbee_python=python,
            # a local hive runs beside the queen, which is a process too: systemd only when asked
            rbee_service="process" if hive.ssh is None and hive.service == "auto" else hive.service,
            rbee_service_user=hive.service_user,
            rbee_wheel=str(wheel) if own_venv else None,
            rbee_workloads=workloads(spec, hive.name) if own_venv and spec is not None else (),
            rbee_backends=None if hive.backends == "auto" else tuple(str(b) for b in hive.backends),
            rbee_wheelhouse=hive.wheelhouse if own_venv else None,
            rbee_tls_cert=leaf.cert if leaf else None,
            rbee_tls_key=leaf.key if leaf else None,
            rbee_ca=authority.ca_pem() if leaf and authority else None,
        )
        hosts.append(JobHost(name=hive.name, ssh=hive.ssh, data=data))
    return Job(hosts=tuple(hosts), steps=tuple(steps), connect_timeout=connect_timeout)


async def run_jobs(
    hives: list[HiveSpec],
    steps: Iterable[Step],
    credentials: FleetCredentials,
    wheel: Path | None = None,
    spec: HiveFile | None = None,
    authority: tls.Authority | None = None,
) -> dict[str, HostResult]:
    """Run `steps` on every hive: pyinfra's @local takes one host a run, so each local hive gets its own run
    beside one run for all SSH hives, all at once."""
    steps = tuple(steps)
    remote = [hive for hive in hives if hive.ssh is not None]
    batches = [[hive] for hive in hives if hive.ssh is None] + ([remote] if remote else [])
    results: dict[str, HostResult] = {}
    jobs = [job_for(batch, steps, credentials, wheel, spec, authority=authority) for batch in batches]
    for part in await asyncio.gather(*(run(job) for job in jobs)):
        results.update(part)
    return results


def deadline(job: Job) -> float:
    """How long a job may run: installing rbee with its engines into a virtualenv can take many minutes; every
    other step is a few commands per host, each bounded by the SSH timeouts."""
    if Step.PYTHON in job.steps and any(host.data.rbee_wheel for host in job.hosts):
        return INSTALL_DEADLINE
    return STEP_DEADLINE + job.connect_timeout * 3


async def run(job: Job, seconds: float | None = None) -> dict[str, HostResult]:
    """Run one job in a pyinfra subprocess, killed past its deadline; a subprocess that fails gives every host
    its last line of stderr."""
    seconds = seconds if seconds is not None else deadline(job)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rbee.infra.runner",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(seconds):
            out, err = await process.communicate(job.model_dump_json().encode())
    except TimeoutError:
        process.kill()
        await process.wait()
        steps = ", ".join(job.steps)
        return {
            host.name: HostResult(error=f"pyinfra did not finish {steps} within {seconds:.0f} s and was stopped")
            for host in job.hosts
        }
    if process.returncode != 0:
        last = (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        return {host.name: HostResult(error=f"pyinfra failed: {last}") for host in job.hosts}
    return JobResult.model_validate_json(out).hosts


def ssh_host_data(ssh: SshConnection, timeout: float = 10) -> dict[str, Any]:
    """pyinfra host data for an SSH hive: key checking as hive.yaml says, and a bound on every wait."""
    data: dict[str, Any] = {
        "ssh_hostname": ssh.host,
        "ssh_port": ssh.port,
        "ssh_known_hosts_file": ssh.known_hosts or "~/.ssh/known_hosts",
        "ssh_strict_host_key_checking": "accept-new" if ssh.host_key_policy == "accept-new" else "yes",
        "ssh_paramiko_connect_kwargs": {
            "timeout": timeout,
            "banner_timeout": timeout,
            "auth_timeout": timeout,
            "channel_timeout": timeout,
        },
        "ssh_connect_retries": 0,
    }
    if ssh.user:
        data["ssh_user"] = ssh.user
    if ssh.key:
        data["ssh_key"] = ssh.key
    return data
