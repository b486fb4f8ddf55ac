"""Fencing: with several queens on one store, exactly one leads (it holds the store's lease) and commands the
hives, and each of its commands carries the lease's generation (`X-Rbee-Fence`). A hive remembers the highest
generation it has obeyed (on disk, so a restart does not forget it) and refuses a command with a lower one: a
leader cut off from the store that does not yet know it was replaced cannot undo what the new one did. A command
without the header (the keeper's, or a queen alone on its own store) is not fenced."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("rbee.hive")
HEADER = "x-rbee-fence"


class Fence:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.highest = int(path.read_text().strip() or 0)
        except (OSError, ValueError):
            self.highest = 0

    def admit(self, given: str | None) -> str | None:
        """Why a command carrying `given` is refused, or None (and a higher generation is remembered)."""
        if given is None:
            return None
        if not given.isdigit() or len(given) > 18:
            return f"X-Rbee-Fence: {given!r} is not a lease generation"
        generation = int(given)
        if generation < self.highest:
            return (
                f"this command carries the lease generation {generation}, and the hive obeys generation "
                f"{self.highest}: another queen leads now"
            )
        if generation > self.highest:
            self._remember(generation)
        return None

    def _remember(self, generation: int) -> None:
        log.info("commands now come from the queen holding lease generation %d", generation)
        self.highest = generation
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(str(generation))
        os.replace(partial, self.path)  # whole or not at all: a crash never leaves it half written
