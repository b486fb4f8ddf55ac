"""Which rbee daemons run on this machine: read from /proc, for destroy's promise that none is left."""

from __future__ import annotations

import os
from pathlib import Path

DAEMONS = ("rbee hive serve", "rbee worker serve", "rbee queen serve")


def rbee_processes(markers: tuple[str, ...] = ()) -> list[tuple[int, str]]:
    """(pid, command line) of running rbee hives, workers and queens; with `markers`, only those whose command
    line names one of them (a data dir, a hive URL, a queen state dir)."""
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            status = (entry / "stat").read_text()
        except OSError:
            continue
        if ") Z " in status:
            continue  # a zombie holds no memory
        if any(daemon in command for daemon in DAEMONS) and (not markers or any(m in command for m in markers)):
            found.append((int(entry.name), command))
    return found
