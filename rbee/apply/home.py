"""The keeper's own state on the operator's machine: the cluster token and the queen it started.

`RBEE_HOME` (default ~/.local/share/rbee) holds cluster.token (mode 0600) and queen/ (the queen's SQLite state,
pidfile, log and where it listens).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path


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
