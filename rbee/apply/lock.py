"""One writer at a time: the keeper's `rbee apply`/`destroy` and the queen's reconcile pass take the same lock
(an flock on `queen/apply.lock` in RBEE_HOME), so two executors never act on the same fleet at once.

The holder writes who it is and since when into the lock file, so whoever waits can say what it waits for; a
wait has a bound, and reaching it is a sentence that names the holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = "apply.lock"
POLL = 0.2


class LockBusy(Exception):
    """The lock stayed held past the wait's bound; the message names the holder."""


@contextlib.contextmanager
def hold(directory: Path, wait: bool = True, holder: str = "rbee", timeout: float | None = None) -> Iterator[bool]:
    """Hold the apply lock of `directory` for the block. Without `wait`, yields False (holding nothing) when
    someone else has it; with a `timeout`, raises LockBusy once it has waited that long."""
    directory.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    yield False
                    return
                if deadline is not None and time.monotonic() > deadline:
                    raise LockBusy(
                        f"the apply lock in {directory} is still held by {holder_of(directory)} after {timeout:.0f} s"
                    ) from None
                time.sleep(POLL)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{holder} (pid {os.getpid()}) since {time.strftime('%H:%M:%S')}".encode(), 0)
        try:
            yield True
        finally:
            os.ftruncate(descriptor, 0)
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def holder_of(directory: Path) -> str:
    """Who holds the lock, as the holder wrote it (`someone` when it wrote nothing)."""
    try:
        return (directory / LOCK_NAME).read_text().strip() or "someone"
    except OSError:
        return "someone"


def is_held(directory: Path) -> bool:
    with hold(directory, wait=False) as held:
        return not held
