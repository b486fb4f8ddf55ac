"""One writer at a time: the keeper's `rbee apply`/`destroy` and the queen's reconcile pass take the same lock
(an flock on `queen/apply.lock` in RBEE_HOME), so two executors never act on the same fleet at once."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = "apply.lock"


@contextlib.contextmanager
def hold(directory: Path, wait: bool = True) -> Iterator[bool]:
    """Hold the apply lock of `directory` for the block; yields False (and holds nothing) when `wait` is off
    and someone else has it."""
    directory.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def is_held(directory: Path) -> bool:
    with hold(directory, wait=False) as held:
        return not held
