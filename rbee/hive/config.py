"""Reading the hive's own files: its hive.json and its own credential."""

from __future__ import annotations

from pathlib import Path

from rbee.api.hive_config import HiveConfig


def load(path: str | Path) -> HiveConfig:
    return HiveConfig.model_validate_json(Path(path).read_text())


def token(config: HiveConfig) -> str | None:
    return Path(config.token_file).expanduser().read_text().strip() if config.token_file else None
