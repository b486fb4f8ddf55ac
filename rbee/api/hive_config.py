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
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"
