"""The keeper's own state on the operator's machine: the credentials, the queen it started, and what it
applied last.

`RBEE_HOME` (default ~/.local/share/rbee, mode 0700) holds operator.token and fleet.key (api/credentials.py; mode
0600, never copied off this machine), admin.key (the API key that `rbee key` shows), applied.json (the spec last applied
and the hives the queen had seen running, so that hives removed from hive.yaml are planned for removal even while
no queen runs) and queen/ (the queen's own state, log and where it listens; the keeper never reads the queen's
database, it asks the queen).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pydantic

from rbee.api.credentials import MIN_LENGTH, FleetCredentials, new_secret, usable
from rbee.infra.secrets import write_private
from rbee.infra.tls import Authority
from rbee.spec.schema import HiveFile


class SecretError(Exception):
    """A credential file that is not usable; the message says which and what to do."""


@dataclass(frozen=True, slots=True)
class Home:
    root: Path

    @classmethod
    def default(cls) -> Home:
        return cls(Path(os.environ.get("RBEE_HOME", "~/.local/share/rbee")).expanduser())

    @property
    def operator_file(self) -> Path:
        return self.root / "operator.token"

    @property
    def fleet_key_file(self) -> Path:
        return self.root / "fleet.key"

    @property
    def admin_key_file(self) -> Path:
        return self.root / "admin.key"

    @property
    def queen_dir(self) -> Path:
        return self.root / "queen"

    @property
    def queen_record(self) -> Path:
        return self.queen_dir / "queen.json"

    @property
    def authority(self) -> Authority:
        """The fleet's CA (RBEE_HOME/tls): it signs the certificates of hives off this machine."""
        return Authority(self.root / "tls")

    def ensure(self) -> None:
        """RBEE_HOME exists, readable by its owner only."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)

    def credentials(self, create: bool = True) -> FleetCredentials | None:
        """The operator's credential and the fleet key; made on first use (None without `create` until then)."""
        operator = self._secret(self.operator_file, create)
        fleet_key = self._secret(self.fleet_key_file, create)
        if operator is None or fleet_key is None:
            return None
        return FleetCredentials(operator, fleet_key)

    def admin_key(self, create: bool = True) -> str | None:
        """The queen's admin API key (for every model, no limit): what `rbee infer` and `rbee key` use."""
        return self._secret(self.admin_key_file, create, prefix="rbk_")

    def rotate_credentials(self) -> FleetCredentials:
        """A new operator credential and fleet key (so every hive's and worker's credential changes too); each is
        written whole and private before it is used, and the old ones are gone from disk."""
        self.ensure()
        rotated = FleetCredentials(new_secret(), new_secret())
        write_private(self.operator_file, rotated.operator)
        write_private(self.fleet_key_file, rotated.fleet_key)
        return rotated

    def rotate_admin_key(self) -> str:
        value = "rbk_" + new_secret()
        self.ensure()
        write_private(self.admin_key_file, value)
        return value

    def _secret(self, path: Path, create: bool, prefix: str = "") -> str | None:
        if path.exists():
            value = path.read_text().strip()
            if not usable(value):
                raise SecretError(
                    f"{path} does not hold a usable secret (at least {MIN_LENGTH} characters); "
                    "remove it and run rbee apply to make a new one"
                )
            return value
        if not create:
            return None
        self.ensure()
        value = prefix + new_secret()
        write_private(path, value)
        return value

    def queen(self) -> dict[str, object] | None:
        try:
            record = json.loads(self.queen_record.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def remember_queen(self, url: str, pid: int) -> None:
        self.ensure()
        self.queen_dir.mkdir(mode=0o700, exist_ok=True)
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
        self.ensure()
        body = {"spec": spec.model_dump(mode="json") if spec else None, "seen_hives": sorted(seen_hives)}
        partial = self.applied_record.with_name(".applied.json.tmp")
        partial.write_text(json.dumps(body, indent=2) + "\n")
        partial.replace(self.applied_record)
