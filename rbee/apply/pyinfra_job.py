"""Run rbee's pyinfra operations on many hosts, as a subprocess of the keeper or queen (pyinfra uses gevent).

stdin: {"hosts": [{"name", "ssh": null | {...}, "data": {...}}], "steps": ["install", "start", ...]}
stdout: {"hosts": {name: {"changed": bool, "error": str | null, "notes": [...]}}}
Every host receives the same steps; one failing host does not stop the others.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from typing import Any

STEPS = ("facts", "python", "install", "start", "stop", "uninstall")


def run(job: dict[str, Any]) -> dict[str, Any]:
    from pyinfra.api.config import Config
    from pyinfra.api.connect import connect_all
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.api.inventory import Inventory
    from pyinfra.api.operation import add_op
    from pyinfra.api.operations import run_ops
    from pyinfra.api.state import State

    from rbee.apply import operations
    from rbee.apply.systemd import ServiceError

    names, hosts = [], []
    for item in job["hosts"]:
        ssh = item.get("ssh")
        data = dict(item.get("data", {}))
        if ssh is None:
            hosts.append(("@local", data))
        else:
            data.update(ssh_data(ssh, float(job.get("connect_timeout", 10))))
            hosts.append((item["name"], data))
        names.append(item["name"])
    inventory = Inventory((hosts, {}))  # type: ignore[no-untyped-call]
    config = Config(CONNECT_TIMEOUT=max(1, int(job.get("connect_timeout", 10))), FAIL_PERCENT=100)  # type: ignore[no-untyped-call]
    state = State(inventory=inventory, config=config)
    results: dict[str, dict[str, Any]] = {name: {"changed": False, "error": None, "notes": []} for name in names}
    by_host = dict(zip([host for host in inventory], names, strict=True))
    errors = _ErrorLog()
    pyinfra_log = logging.getLogger("pyinfra")
    pyinfra_log.setLevel(logging.WARNING)
    pyinfra_log.propagate = False
    pyinfra_log.addHandler(errors)
    with contextlib.suppress(PyinfraError):  # every host failed to connect: each gets its own reason below
        connect_all(state)
    for host in inventory:
        if host not in state.activated_hosts:
            reason = errors.about(host.name)
            if "does not match" in reason:
                reason += (
                    "; the machine's SSH key changed: if you reinstalled it, check the new key and replace the"
                    " old one (ssh-keygen -R HOST), otherwise do not connect"
                )
            elif "No host key" in reason:
                reason += "; add the machine's key to known_hosts, or set host_key_policy: accept-new for this hive"
            results[by_host[host]]["error"] = f"could not connect over SSH: {reason}"
    ops = {
        "python": operations.rbee_ready,
        "install": operations.hive_installed,
        "start": operations.hive_running,
        "stop": operations.hive_stopped,
        "uninstall": operations.hive_uninstalled,
    }
    metas: list[tuple[str, dict[Any, Any]]] = []
    if not state.activated_hosts:
        return {"hosts": results}
    if job["steps"] == ["facts"]:
        from rbee.apply.facts import HiveConfigFile, HiveProcess, HostDevices

        for host in state.activated_hosts:
            data_dir = str(host.data.get("rbee_data_dir")).rstrip("/")
            installed = host.get_fact(HiveConfigFile, data_dir=data_dir) is not None
            results[by_host[host]]["facts"] = {
                "installed": installed,
                "pid": host.get_fact(HiveProcess, data_dir=data_dir),
                "host": host.get_fact(HostDevices, python=str(host.data.get("rbee_python"))) if installed else None,
            }
        return {"hosts": results}
    refused: set[Any] = set()
    try:
        for step in job["steps"]:
            meta: dict[Any, Any] = {}
            for host in [host for host in state.activated_hosts if host not in refused]:
                try:
                    meta.update(add_op(state, ops[step], host=host))
                except (operations.InstallError, ServiceError) as error:  # this host only: the others go on
                    results[by_host[host]]["error"] = f"{step} failed: {error}"
                    refused.add(host)
            metas.append((step, meta))
        run_ops(state)
    except PyinfraError as error:
        for result in results.values():
            result["error"] = result["error"] or str(error)
    for step, meta in metas:
        for host, op in meta.items():
            result = results[by_host[host]]
            if not op.is_complete():
                if not result["error"] and errors.about(host.name) != "no reason logged":
                    result["error"] = f"{step} failed: {errors.about(host.name)}"
                continue
            if op.did_error():
                detail = (op.stderr or op.stdout).strip()[-500:] or errors.about(host.name)
                result["error"] = result["error"] or f"{step} failed: {detail}"
            elif op.did_change():
                result["changed"] = True
                result["notes"].append(f"{step}: changed")
            else:
                result["notes"].append(f"{step}: no change")
    return {"hosts": results}


def ssh_data(ssh: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
    """pyinfra host data for an SSH hive: key checking as hive.yaml says, and a bound on every wait."""
    data: dict[str, Any] = {
        "ssh_hostname": ssh["host"],
        "ssh_port": ssh.get("port", 22),
        "ssh_known_hosts_file": ssh.get("known_hosts") or "~/.ssh/known_hosts",
        "ssh_strict_host_key_checking": "accept-new" if ssh.get("host_key_policy") == "accept-new" else "yes",
        "ssh_paramiko_connect_kwargs": {
            "timeout": timeout,
            "banner_timeout": timeout,
            "auth_timeout": timeout,
            "channel_timeout": timeout,
        },
        "ssh_connect_retries": 0,
    }
    if ssh.get("user"):
        data["ssh_user"] = ssh["user"]
    if ssh.get("key"):
        data["ssh_key"] = ssh["key"]
    return data


class _ErrorLog(logging.Handler):
    """pyinfra's own words about a host that failed, to give the user the reason, not just the fact."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def about(self, name: str) -> str:
        import re

        mentions = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in self.lines if name in line]
        return mentions[-1].strip() if mentions else "no reason logged"


def main() -> None:
    logging.basicConfig(level=logging.CRITICAL)
    job = json.load(sys.stdin)
    unknown = [step for step in job.get("steps", []) if step not in STEPS]
    if unknown:
        raise SystemExit(f"unknown steps: {unknown}")
    json.dump(run(job), sys.stdout)


if __name__ == "__main__":
    main()
