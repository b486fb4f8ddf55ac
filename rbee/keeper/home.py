"""The keeper's own state on the operator's machine: the cluster token, the queen it started, and what it
applied last.

`RBEE_HOME` (default ~/.local/share/rbee) holds cluster.token (mode 0600), applied.json (the spec last applied
and the hives the queen had seen running, so that hives removed from hive.yaml are planned for removal even while
no queen runs) and queen/ (the queen's own state, log and where it listens; the keeper never reads the queen's
database, it asks the queen).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pydantic

from rbee.spec.schema import HiveFile


@dataclass(frozen=True, slots=True)
class Home:
    root: Path

    @classmethod
    def default(cls) -> Home:
        return cls(Path(os.environ.get("RBEE_HOME", "~/.local/share/rbee")).expanduser())

    @property
    def token_file(self) -> Path:
        return self.root / "cluster.token"

    @property
    def queen_dir(self) -> Path:
        return self.root / "queen"

    @property
    def queen_record(self) -> Path:
        return self.queen_dir / "queen.json"

    def token(self, create: bool = True) -> str | None:
        """The cluster token shared by the queen, hives and workers; made on first use."""
        if self.token_file.exists():
            return self.token_file.read_text().strip()
        if not create:
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(32)
        descriptor = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(value)
        return value

    def queen(self) -> dict[str, object] | None:
        try:
            record = json.loads(self.queen_record.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def remember_queen(self, url: str, pid: int) -> None:
        self.queen_dir.mkdir(parents=True, exist_ok=True)
        self.queen_record.write_text(json.dumps({"url": url, "pid": pid}))

    def forget_queen(self) -> None:
        self.queen_record.unlink(missing_ok=True)

    @property
    def applied_record(self) -> Path:
        return self.root / "applied.json"

    def applied(self) -> tuple[HiveFile | None, set[str]]:
        """The spec last applied from this RBEE_HOME and the hives seen running, as last recorded."""
        try:
            record = json.loads(self.applied_record.read_text())
            spec = HiveFile.model_validate(record["spec"]) if record.get("spec") else None
            return spec, set(record.get("seen_hives", ()))
        except (OSError, ValueError, KeyError, TypeError, pydantic.ValidationError):
            return None, set()

    def remember_applied(self, spec: HiveFile | None, seen_hives: Iterable[str]) -> None:
        """Record what was applied; written whole to a temporary file and renamed, so it is never half there."""
        self.root.mkdir(parents=True, exist_ok=True)
        body = {"spec": spec.model_dump(mode="json") if spec else None, "seen_hives": sorted(seen_hives)}
        partial = self.applied_record.with_name(".applied.json.tmp")
        partial.write_text(json.dumps(body, indent=2) + "\n")
        partial.replace(self.applied_record)
