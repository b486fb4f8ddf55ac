"""Run a job (infra/job.py) with pyinfra: `python -m rbee.infra.runner`, a subprocess of the keeper or the queen
(pyinfra uses gevent, which must not patch their event loops).

stdin: a `Job` as JSON. stdout: a `JobResult` as JSON. Every host receives the same steps; one failing host does
not stop the others.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import pydantic

from rbee.api.state import HostFacts
from rbee.infra.job import HostResult, Job, JobResult, SshFacts, Step, ssh_host_data


@dataclass
class _Outcome:
    """A host's result while the job runs."""

    changed: bool = False
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    facts: SshFacts | None = None

    def result(self) -> HostResult:
        return HostResult(changed=self.changed, error=self.error, notes=tuple(self.notes), facts=self.facts)


def run(job: Job) -> JobResult:
    from pyinfra.api.config import Config
    from pyinfra.api.connect import connect_all
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.api.inventory import Inventory
    from pyinfra.api.state import State

    hosts: list[tuple[str, dict[str, Any]]] = []
    for item in job.hosts:
        data = item.data.pyinfra()
        if item.ssh is None:
            hosts.append(("@local", data))
        else:
            hosts.append((item.name, {**data, **ssh_host_data(item.ssh, job.connect_timeout)}))
    inventory = Inventory((hosts, {}))  # type: ignore[no-untyped-call]
    config = Config(CONNECT_TIMEOUT=max(1, int(job.connect_timeout)), FAIL_PERCENT=100)  # type: ignore[no-untyped-call]
    state = State(inventory=inventory, config=config)
    outcomes = {item.name: _Outcome() for item in job.hosts}
    by_host = dict(zip(list(inventory), [item.name for item in job.hosts], strict=True))
    errors = _ErrorLog()
    pyinfra_log = logging.getLogger("pyinfra")
    pyinfra_log.setLevel(logging.WARNING)
    pyinfra_log.propagate = False
    pyinfra_log.addHandler(errors)
    with contextlib.suppress(PyinfraError):  # every host failed to connect: each gets its own reason below
        connect_all(state)
    for host in inventory:
        if host not in state.activated_hosts:
            outcomes[by_host[host]].error = f"could not connect over SSH: {_connect_reason(errors.about(host.name))}"
    if state.activated_hosts:
        if job.steps == (Step.FACTS,):
            _look(state, by_host, outcomes)
        else:
            _act(state, job.steps, by_host, outcomes, errors)
    return JobResult(hosts={name: outcome.result() for name, outcome in outcomes.items()})


def _connect_reason(reason: str) -> str:
    if "does not match" in reason:
        return reason + (
            "; the machine's SSH key changed: if you reinstalled it, check the new key and replace the"
            " old one (ssh-keygen -R HOST), otherwise do not connect"
        )
    if "No host key" in reason:
        return reason + "; add the machine's key to known_hosts, or set host_key_policy: accept-new for this hive"
    return reason


def _look(state: Any, by_host: dict[Any, str], outcomes: dict[str, _Outcome]) -> None:
    from rbee.infra.facts import HiveConfigFile, HiveProcess, HostDevices

    for host in state.activated_hosts:
        data_dir = str(host.data.get("rbee_data_dir")).rstrip("/")
        installed = host.get_fact(HiveConfigFile, data_dir=data_dir) is not None
        found = host.get_fact(HostDevices, python=str(host.data.get("rbee_python"))) if installed else None
        outcomes[by_host[host]].facts = SshFacts(
            installed=installed, pid=host.get_fact(HiveProcess, data_dir=data_dir), host=_host_facts(found)
        )


def _host_facts(found: dict[str, object] | None) -> HostFacts | None:
    """The devices as the host's rbee reports them; an older rbee may report differently, and then they are
    simply not known."""
    if found is None:
        return None
    try:
        return HostFacts.model_validate(found)
    except pydantic.ValidationError:
        return None


def _act(
    state: Any, steps: tuple[Step, ...], by_host: dict[Any, str], outcomes: dict[str, _Outcome], errors: _ErrorLog
) -> None:
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.api.operation import add_op
    from pyinfra.api.operations import run_ops

    from rbee.infra import operations
    from rbee.infra.systemd import ServiceError

    ops = {
        Step.PYTHON: operations.rbee_ready,
        Step.INSTALL: operations.hive_installed,
        Step.START: operations.hive_running,
        Step.STOP: operations.hive_stopped,
        Step.UNINSTALL: operations.hive_uninstalled,
    }
    metas: list[tuple[Step, dict[Any, Any]]] = []
    refused: set[Any] = set()
    try:
        for step in steps:
            meta: dict[Any, Any] = {}
            for host in [host for host in state.activated_hosts if host not in refused]:
                try:
                    meta.update(add_op(state, ops[step], host=host))
                except (operations.InstallError, ServiceError) as error:  # this host only: the others go on
                    outcomes[by_host[host]].error = f"{step} failed: {error}"
                    refused.add(host)
            metas.append((step, meta))
        run_ops(state)
    except PyinfraError as error:
        for outcome in outcomes.values():
            outcome.error = outcome.error or str(error)
    for step, meta in metas:
        for host, op in meta.items():
            outcome = outcomes[by_host[host]]
            if not op.is_complete():
                if not outcome.error and errors.about(host.name) != "no reason logged":
                    outcome.error = f"{step} failed: {errors.about(host.name)}"
                continue
            if op.did_error():
                detail = (op.stderr or op.stdout).strip()[-500:] or errors.about(host.name)
                outcome.error = outcome.error or f"{step} failed: {detail}"
            elif op.did_change():
                outcome.changed = True
                outcome.notes.append(f"{step}: changed")
            else:
                outcome.notes.append(f"{step}: no change")


class _ErrorLog(logging.Handler):
    """pyinfra's own words about a host that failed, to give the user the reason, not just the fact."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def about(self, name: str) -> str:
        mentions = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in self.lines if name in line]
        return mentions[-1].strip() if mentions else "no reason logged"


def main() -> None:
    logging.basicConfig(level=logging.CRITICAL)
    try:
        job = Job.model_validate_json(sys.stdin.read())
    except pydantic.ValidationError as error:
        raise SystemExit(f"not a pyinfra job: {error.errors()[0]['msg']}") from None
    sys.stdout.write(run(job).model_dump_json())


if __name__ == "__main__":
    main()
