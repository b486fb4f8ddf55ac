"""The hive's catalog keeps a pin (a model the operator pulled by hand) across restarts, and a catalog written by
an rbee from before pins opens with none."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from rbee.hive.catalog import MIGRATIONS, Catalog, ModelRecord

RECORD = ModelRecord("smol", "file:///m/smol.gguf", "gguf", "text", "/m/smol.gguf", 10, None, True, False)


def test_a_catalog_from_before_pins_opens_with_none_pinned(tmp_path: Path) -> None:
    path = tmp_path / "hive.db"
    old = sqlite3.connect(path, isolation_level=None)
    for statement in MIGRATIONS[0]:
        old.execute(statement)
    old.execute("PRAGMA user_version = 1")
    old.execute(
        "INSERT INTO models (name, source, format, kind, path, size_bytes, sha256, managed, owns_files, added_at)"
        " VALUES ('smol', 'file:///m/smol.gguf', 'gguf', 'text', '/m/smol.gguf', 10, NULL, 1, 0, 0)"
    )
    old.close()
    catalog = Catalog(path)
    assert catalog.model("smol") == RECORD and not RECORD.pinned
    catalog.pin("smol")
    catalog.close()
    again = Catalog(path)
    found = again.model("smol")
    assert found is not None and found.pinned and found.entry().pinned
    again.close()
