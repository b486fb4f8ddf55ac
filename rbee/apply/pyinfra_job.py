"""Run rbee's pyinfra operations on many hosts, as a subprocess of the keeper or queen (pyinfra uses gevent).

stdin: {"hosts": [{"name", "ssh": null | {...}, "data": {...}}], "steps": ["install", "start", ...]}
stdout: {"hosts": {name: {"changed": bool, "error": str | null, "notes": [...]}}}
Every host receives the same steps; one failing host does not stop the others.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

STEPS = ("install", "start", "stop", "uninstall")


def run(job: dict[str, Any]) -> dict[str, Any]:
    from pyinfra.api.config import Config
    from pyinfra.api.connect import connect_all
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.api.inventory import Inventory
    from pyinfra.api.operation import add_op
    from pyinfra.api.operations import run_ops
    from pyinfra.api.state import State

    from rbee.apply import operations

    names, hosts = [], []
    for item in job["hosts"]:
        ssh = item.get("ssh")
        data = dict(item.get("data", {}))
        if ssh is None:
            hosts.append(("@local", data))
        else:
            data.update({"ssh_port": ssh.get("port", 22), "ssh_user": ssh.get("user"), "ssh_key": ssh.get("key")})
            hosts.append((ssh["host"], data))
        names.append(item["name"])
    inventory = Inventory((hosts, {}))  # type: ignore[no-untyped-call]
    state = State(inventory=inventory, config=Config(CONNECT_TIMEOUT=10, FAIL_PERCENT=100))  # type: ignore[no-untyped-call]
    results: dict[str, dict[str, Any]] = {name: {"changed": False, "error": None, "notes": []} for name in names}
    by_host = dict(zip([host for host in inventory], names, strict=True))
    connect_all(state)
    for host in inventory:
        if host not in state.activated_hosts:
            results[by_host[host]]["error"] = "could not connect"
    ops = {
        "install": operations.hive_installed,
        "start": operations.hive_running,
        "stop": operations.hive_stopped,
        "uninstall": operations.hive_uninstalled,
    }
    metas: list[tuple[str, dict[Any, Any]]] = []
    try:
        for step in job["steps"]:
            metas.append((step, add_op(state, ops[step])))
        run_ops(state)
    except PyinfraError as error:
        for result in results.values():
            result["error"] = result["error"] or str(error)
    for step, meta in metas:
        for host, op in meta.items():
            result = results[by_host[host]]
            if not op.is_complete():
                continue
            if op.did_error():
                result["error"] = result["error"] or f"{step} failed: {(op.stderr or op.stdout).strip()[-500:]}"
            elif op.did_change():
                result["changed"] = True
                result["notes"].append(f"{step}: changed")
            else:
                result["notes"].append(f"{step}: no change")
    return {"hosts": results}


def main() -> None:
    logging.basicConfig(level=logging.CRITICAL)
    job = json.load(sys.stdin)
    unknown = [step for step in job.get("steps", []) if step not in STEPS]
    if unknown:
        raise SystemExit(f"unknown steps: {unknown}")
    json.dump(run(job), sys.stdout)


if __name__ == "__main__":
    main()
