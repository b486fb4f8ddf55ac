"""Execute a plan exactly: never re-decide, only carry out each change in order and report how it went.

Hive installs and starts run as one pyinfra job over all hosts (in a subprocess); models and workers go
through each hive's HTTP API; hive stops and uninstalls run as a final pyinfra job. A change whose
prerequisite failed is skipped, with that as its reason.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from rbee import __version__
from rbee.apply import wheel as rbee_wheel
from rbee.apply.hive_client import HiveCallError, HiveClient
from rbee.hive.config import HiveConfig
from rbee.plan.actions import Action, Change, Plan
from rbee.spec.schema import HiveFile, HiveSpec

HIVE_UP = (Action.INSTALL_HIVE, Action.START_HIVE)
HIVE_DOWN = (Action.STOP_HIVE, Action.UNINSTALL_HIVE)


class Reporter(Protocol):
    def begin(self, change: Change) -> None: ...

    def progress(self, change: Change, data: dict[str, Any]) -> None: ...

    def end(self, change: Change, error: str | None) -> None: ...


def hive_config(hive: HiveSpec) -> HiveConfig:
    data_dir = str(Path(hive.data_path).expanduser()) if hive.ssh is None else hive.data_path
    return HiveConfig(
        name=hive.name,
        listen=hive.listen_address,
        data_dir=data_dir,
        version=__version__,
        token_file=f"{data_dir}/cluster.token",
        backends=hive.backends if isinstance(hive.backends, str) else tuple(str(b) for b in hive.backends),
    )


def inventory(hives: Iterable[HiveSpec], token_file: str) -> str:
    """A pyinfra inventory module for `hives`, for running deploys/ by hand; it names the token file, never
    the token."""
    entries = []
    for host in pyinfra_job(hives, [], "")["hosts"]:
        data = dict(host["data"])
        del data["rbee_token"]
        data["rbee_token_file"] = token_file
        if host["ssh"] is not None:
            from rbee.apply.pyinfra_job import ssh_data

            data.update(ssh_data(host["ssh"]))
        name = "@local" if host["ssh"] is None else host["name"]
        entries.append(f"    ({name!r}, {data!r}),")
    return (
        '"""pyinfra inventory written by `rbee inventory` from hive.yaml; regenerate it rather than edit it."""\n\n'
        "hives = [\n" + "\n".join(entries) + "\n]\n"
    )


def extras_for(hive: HiveSpec, spec: HiveFile | None) -> str:
    """The backend extras a hive needs: its pinned backends, or those of the models its workers run."""
    if hive.backends != "auto":
        wanted = {str(backend) for backend in hive.backends}
    else:
        wanted = set()
        for worker in spec.workers if spec else ():
            model = spec.model(worker.model) if spec and worker.hive == hive.name else None
            if model is None:
                continue
            if worker.backend != "auto":
                wanted.add(str(worker.backend))
            elif str(model.kind) == "embedding":
                wanted.add("embed")
            elif model.resolved_format == "gguf":
                wanted.add("gguf")
            elif model.resolved_format == "safetensors":
                wanted.add("torch")
            elif model.resolved_format == "mlx":
                wanted.add("mlx")
    return ",".join(sorted(wanted & {"gguf", "torch", "mlx", "embed", "ctransformers"}))


def pyinfra_job(
    hives: Iterable[HiveSpec], steps: list[str], token: str, wheel: Path | None = None, spec: HiveFile | None = None
) -> dict[str, Any]:
    hosts = []
    for hive in hives:
        config = hive_config(hive)
        ssh = hive.ssh
        python = hive.python or (sys.executable if ssh is None else f"{config.data_dir}/venv/bin/python")
        own_venv = ssh is not None and hive.python is None
        hosts.append(
            {
                "name": hive.name,
                "ssh": None if ssh is None else ssh.model_dump(mode="json"),
                "data": {
                    "rbee_data_dir": config.data_dir,
                    "rbee_config": config.model_dump_json(indent=2),
                    "rbee_token": token,
                    "rbee_python": python,
                    # a local hive runs beside the queen, which is a process too: systemd only when asked
                    "rbee_service": "process" if hive.ssh is None and hive.service == "auto" else hive.service,
                    **(
                        {
                            "rbee_wheel": str(wheel),
                            "rbee_extras": extras_for(hive, spec),
                            "rbee_wheelhouse": hive.wheelhouse,
                        }
                        if own_venv and wheel is not None
                        else {}
                    ),
                },
            }
        )
    return {"hosts": hosts, "steps": steps}


async def run_jobs(
    hives: list[HiveSpec], steps: list[str], token: str, wheel: Path | None = None, spec: HiveFile | None = None
) -> dict[str, dict[str, Any]]:
    """Run `steps` on every hive: pyinfra's @local takes one host a run, so each local hive gets its own run
    beside one run for all SSH hives, all at once."""
    remote = [hive for hive in hives if hive.ssh is not None]
    batches = [[hive] for hive in hives if hive.ssh is None] + ([remote] if remote else [])
    results: dict[str, dict[str, Any]] = {}
    jobs = [pyinfra_job(batch, steps, token, wheel, spec) for batch in batches]
    for part in await asyncio.gather(*(run_pyinfra(job) for job in jobs)):
        results.update(part)
    return results


async def run_pyinfra(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rbee.apply.pyinfra_job",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(json.dumps(job).encode())
    if process.returncode != 0:
        last = (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        return {host["name"]: {"error": f"pyinfra failed: {last}"} for host in job["hosts"]}
    return dict(json.loads(out)["hosts"])


class Executor:
    def __init__(
        self,
        spec: HiveFile,
        token: str,
        reporter: Reporter,
        retired: tuple[HiveSpec, ...] = (),
        wheel_dir: Path | None = None,
    ) -> None:
        self.spec = spec
        self.wheel_dir = wheel_dir
        self.retired = {hive.name: hive for hive in retired}
        self.token = token
        self.reporter = reporter
        self.errors: dict[str, str | None] = {}

    async def execute(self, plan: Plan) -> dict[str, str | None]:
        changes = plan.actionable
        up = [change for change in changes if change.action in HIVE_UP]
        down = [change for change in changes if change.action in HIVE_DOWN]
        middle = [change for change in changes if change.action not in HIVE_UP + HIVE_DOWN]
        if up:
            await self._hive_job(up, ["python", "install", "start"])
        by_hive: dict[str, list[Change]] = {}
        for change in middle:
            by_hive.setdefault(change.hive, []).append(change)
        await asyncio.gather(*(self._hive_changes(name, items) for name, items in by_hive.items()))
        if down:
            uninstall = {change.hive for change in down if change.action is Action.UNINSTALL_HIVE}
            stop_only = [change for change in down if change.hive not in uninstall]
            with_uninstall = [change for change in down if change.hive in uninstall]
            if stop_only:
                await self._hive_job(stop_only, ["stop"])
            if with_uninstall:
                await self._hive_job(with_uninstall, ["stop", "uninstall"])
        return self.errors

    def _blocked_by(self, change: Change) -> str | None:
        failed = [required for required in change.requires if self.errors.get(required)]
        return f"skipped: {failed[0]} failed" if failed else None

    def _finish(self, change: Change, error: str | None) -> None:
        self.errors[change.id] = error
        self.reporter.end(change, error)

    async def _hive_job(self, changes: list[Change], steps: list[str]) -> None:
        runnable = []
        for change in changes:
            blocked = self._blocked_by(change)
            if blocked:
                self._finish(change, blocked)
            else:
                runnable.append(change)
                self.reporter.begin(change)
        names = list(dict.fromkeys(change.hive for change in runnable))
        if not names:
            return
        hives = [self._hive_spec(name) for name in names]
        wheel = None
        if "python" in steps and any(hive.ssh is not None and hive.python is None for hive in hives):
            try:
                wheel = await asyncio.to_thread(rbee_wheel.build, self.wheel_dir or Path("wheels"))
            except rbee_wheel.WheelError as error:
                for change in runnable:
                    self._finish(change, str(error))
                return
        results = await run_jobs(hives, steps, self.token, wheel, self.spec)
        health: dict[str, str | None] = {}
        if "start" in steps:
            for hive in hives:
                if results.get(hive.name, {}).get("error"):
                    continue
                client = HiveClient(hive, self.token)
                try:
                    await client.wait_healthy()
                    health[hive.name] = None
                except HiveCallError as error:
                    health[hive.name] = str(error)
                finally:
                    await client.close()
        for change in runnable:
            self._finish(change, results.get(change.hive, {}).get("error") or health.get(change.hive))

    def _hive_spec(self, name: str) -> HiveSpec:
        hive = self.spec.hive(name) or self.retired.get(name)
        if hive is None:
            raise HiveCallError(f"hive {name} is in neither hive.yaml nor the spec applied before")
        return hive

    async def _hive_changes(self, name: str, changes: list[Change]) -> None:
        client = HiveClient(self._hive_spec(name), self.token)
        try:
            for change in changes:
                blocked = self._blocked_by(change)
                if blocked:
                    self._finish(change, blocked)
                    continue
                self.reporter.begin(change)
                try:
                    await self._one(client, change)
                except HiveCallError as error:
                    self._finish(change, str(error))
                else:
                    self._finish(change, None)
        finally:
            await client.close()

    async def _one(self, client: HiveClient, change: Change) -> None:
        def progress(data: dict[str, Any]) -> None:
            self.reporter.progress(change, data)

        if change.action in (Action.ADD_MODEL, Action.REPLACE_MODEL):
            model = self.spec.model(change.model or "")
            if model is None:
                raise HiveCallError(f"model {change.model} is not in hive.yaml")
            await client.add_model(model, progress)
        elif change.action is Action.REMOVE_MODEL:
            await client.remove_model(change.model or "")
        elif change.action is Action.START_WORKERS:
            await client.start_workers(
                change.model or "", change.backend or "auto", change.device or "auto", change.replicas, progress
            )
        elif change.action is Action.STOP_WORKERS:
            await asyncio.gather(*(client.stop_worker(worker_id) for worker_id in change.worker_ids))
        else:
            raise HiveCallError(f"rbee cannot execute {change.action} here")
