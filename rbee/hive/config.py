"""Reading the hive's own files: its hive.json and its own credential."""

from __future__ import annotations

from pathlib import Path

from rbee.api.hive_config import CONFIG_NAME, HiveConfig


def load(path: str | Path) -> HiveConfig:
    return HiveConfig.model_validate_json(Path(path).read_text())


def model_dirs(config: HiveConfig) -> tuple[str, ...]:
    """The file:// roots as hive.json says now: `rbee apply` rewrites hive.json when hive.yaml's model_dirs change,
    and the running hive follows without a restart."""
    try:
        return load(config.root / CONFIG_NAME).model_dirs
    except (OSError, ValueError):
        return config.model_dirs


def token(config: HiveConfig) -> str | None:
    return Path(config.token_file).expanduser().read_text().strip() if config.token_file else None
