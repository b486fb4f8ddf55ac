"""A hive's configuration, `hive.json` in its data dir: written by the install step (infra/), read by the hive
daemon (hive/). The contract between the two; no I/O here."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

CONFIG_NAME = "hive.json"
PID_NAME = "hive.pid"


class HiveConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    listen: str
    data_dir: str
    version: str
    token_file: str | None = None
    backends: tuple[str, ...] | str = "auto"
    tls_cert_file: str | None = None
    """With a certificate (and its key, and the fleet CA), the hive and its workers serve only TLS."""
    tls_key_file: str | None = None
    ca_file: str | None = None
    model_dirs: tuple[str, ...] = ()
    """The folders a file:// model may come from (absolute or ~/...); none means no file:// model at all."""

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def root(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def tls(self) -> tuple[str, str] | None:
        if self.tls_cert_file and self.tls_key_file:
            return str(Path(self.tls_cert_file).expanduser()), str(Path(self.tls_key_file).expanduser())
        return None

    @property
    def url(self) -> str:
        """Where the hive's own workers reach it (its certificate names 127.0.0.1 too)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"
