"""The hive's model catalog and worker table: SQLite (WAL), schema versioned by `PRAGMA user_version`.

An entry is written only after its bytes are in place and checked; nothing else writes here.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from rbee.api.state import CatalogEntry

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE models (
            name TEXT PRIMARY KEY,
            source TEXT NOT NULL,
            format TEXT NOT NULL,
            kind TEXT NOT NULL DEFAULT 'text',
            path TEXT NOT NULL,
            size_bytes INTEGER NOT NULL,
            sha256 TEXT,
            managed INTEGER NOT NULL DEFAULT 1,
            owns_files INTEGER NOT NULL DEFAULT 1,
            added_at REAL NOT NULL
        )""",
        """CREATE TABLE workers (
            id TEXT PRIMARY KEY,
            seq INTEGER NOT NULL UNIQUE,
            model TEXT NOT NULL,
            backend TEXT NOT NULL,
            requested_backend TEXT NOT NULL,
            device TEXT NOT NULL,
            requested_device TEXT NOT NULL,
            state TEXT NOT NULL,
            pid INTEGER,
            port INTEGER,
            reason TEXT,
            started_at REAL NOT NULL,
            ended_at REAL
        )""",
    ],
    # pinned: fetched by the operator by hand (rbee models pull, the web UI's Pull); see CatalogEntry.pinned
    ["ALTER TABLE models ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0"],
    # a gguf model's multimodal projector: where hive.yaml said it comes from, and its file here
    ["ALTER TABLE models ADD COLUMN mmproj TEXT", "ALTER TABLE models ADD COLUMN mmproj_path TEXT"],
]


@dataclass(frozen=True, slots=True)
class ModelRecord:
    name: str
    source: str
    format: str
    kind: str
    path: str
    size_bytes: int
    sha256: str | None
    managed: bool
    owns_files: bool
    pinned: bool = False
    mmproj: str | None = None
    """The multimodal projector's source (hive.yaml's `mmproj`), and its file on this hive."""
    mmproj_path: str | None = None

    def entry(self) -> CatalogEntry:
        return CatalogEntry(
            name=self.name,
            source=self.source,
            format=self.format,
            size_bytes=self.size_bytes,
            sha256=self.sha256,
            managed=self.managed,
            pinned=self.pinned,
            mmproj=self.mmproj,
        )


class Catalog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        current = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        for version, statements in enumerate(MIGRATIONS, start=1):
            if version <= current:
                continue
            self._db.execute("BEGIN IMMEDIATE")
            for statement in statements:
                self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version = {version}")
            self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    # models

    def models(self) -> list[ModelRecord]:
        rows = self._db.execute(
            "SELECT name, source, format, kind, path, size_bytes, sha256, managed, owns_files, pinned, mmproj,"
            " mmproj_path FROM models ORDER BY name"
        ).fetchall()
        return [
            ModelRecord(
                name=row[0],
                source=row[1],
                format=row[2],
                kind=row[3],
                path=row[4],
                size_bytes=int(row[5]),
                sha256=row[6],
                managed=bool(row[7]),
                owns_files=bool(row[8]),
                pinned=bool(row[9]),
                mmproj=row[10],
                mmproj_path=row[11],
            )
            for row in rows
        ]

    def model(self, name: str) -> ModelRecord | None:
        return next((record for record in self.models() if record.name == name), None)

    def put_model(self, record: ModelRecord) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO models (name, source, format, kind, path, size_bytes, sha256, managed, owns_files,"
            " pinned, mmproj, mmproj_path, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.name,
                record.source,
                record.format,
                record.kind,
                record.path,
                record.size_bytes,
                record.sha256,
                int(record.managed),
                int(record.owns_files),
                int(record.pinned),
                record.mmproj,
                record.mmproj_path,
                time.time(),
            ),
        )

    def pin(self, name: str) -> None:
        self._db.execute("UPDATE models SET pinned = 1 WHERE name = ?", (name,))

    def delete_model(self, name: str) -> None:
        self._db.execute("DELETE FROM models WHERE name = ?", (name,))

    # workers

    def knows_worker(self, worker_id: str) -> bool:
        """Whether this hive ever started a worker of that id (its log may outlive it)."""
        return self._db.execute("SELECT 1 FROM workers WHERE id = ?", (worker_id,)).fetchone() is not None

    def next_worker_seq(self) -> int:
        return int(self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM workers").fetchone()[0])

    def record_worker(
        self,
        worker_id: str,
        seq: int,
        model: str,
        backend: str,
        requested_backend: str,
        device: str,
        requested_device: str,
        state: str,
        pid: int | None,
        port: int | None,
    ) -> None:
        self._db.execute(
            "INSERT INTO workers (id, seq, model, backend, requested_backend, device, requested_device, state, pid,"
            " port, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                worker_id,
                seq,
                model,
                backend,
                requested_backend,
                device,
                requested_device,
                state,
                pid,
                port,
                time.time(),
            ),
        )

    def update_worker(self, worker_id: str, state: str, reason: str | None = None, ended: bool = False) -> None:
        self._db.execute(
            "UPDATE workers SET state = ?, reason = COALESCE(?, reason), ended_at = CASE WHEN ? THEN ? ELSE ended_at"
            " END WHERE id = ?",
            (state, reason, int(ended), time.time(), worker_id),
        )

    def end_orphaned_workers(self) -> int:
        """Workers recorded as live by an earlier daemon died with it."""
        cursor = self._db.execute(
            "UPDATE workers SET state = 'stopped', reason = 'the hive daemon restarted', ended_at = ?"
            " WHERE ended_at IS NULL",
            (time.time(),),
        )
        return cursor.rowcount
