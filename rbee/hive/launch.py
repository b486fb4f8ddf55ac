"""The command line a hive starts a worker with: its model file (and projector), engine, device, shape, where to
serve and report, and the files that hold its credential and TLS material. Paths and numbers only: no secret
is ever a process argument (the worker's credential is in a file of its own, mode 0600)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from rbee.api.hive_config import HiveConfig
from rbee.api.state import WorkerShape
from rbee.hive.catalog import ModelRecord


@dataclass(frozen=True, slots=True)
class Launch:
    """One worker to start: who it is, what it serves, and where."""

    worker_id: str
    record: ModelRecord
    backend: str
    device: str
    port: int
    listen_fd: int
    shape: WorkerShape
    token_file: Path | None


def worker_command(config: HiveConfig, launch: Launch) -> list[str]:
    record = launch.record
    command = [sys.executable, "-m", "rbee", "worker", "serve", "--id", launch.worker_id]
    command += ["--model", record.name, "--model-path", record.path, "--backend", launch.backend]
    command += ["--device", launch.device, "--host", config.host or "127.0.0.1", "--port", str(launch.port)]
    command += ["--listen-fd", str(launch.listen_fd), "--hive-url", config.url, "--parent-pid", str(os.getpid())]
    shape = launch.shape
    for flag, value in zip(
        ("--slots", "--context", "--threads"), (shape.slots, shape.context, shape.threads), strict=True
    ):
        if value is not None:
            command += [flag, str(value)]
    if launch.token_file is not None:
        command += ["--token-file", str(launch.token_file)]
    if config.tls is not None:  # paths, not secrets: the key file is the hive's own, mode 0600
        command += ["--tls-cert", config.tls[0], "--tls-key", config.tls[1]]
    if config.ca_file:
        command += ["--ca-file", str(Path(config.ca_file).expanduser())]
    if record.mmproj_path is not None:
        command += ["--mmproj-path", record.mmproj_path]
    return command
