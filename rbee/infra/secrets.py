"""Files that hold secrets (credentials, keys): written whole and private on this machine."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, value: str) -> None:
    """Write a secret whole (a temporary file, mode 0600, renamed into place): never half there, never readable
    by others."""
    partial = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(value)
    partial.replace(path)
