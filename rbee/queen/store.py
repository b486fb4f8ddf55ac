"""The queen's durable state in SQLite (WAL, versioned schema): applied specs with generation numbers, an event
log, the usage record of every request (metering), and the providers that registered themselves. Live worker
state is never stored here: it is observed from the hives.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from rbee.spec.policy import PolicyRef
from rbee.spec.schema import HiveFile

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE specs (
            generation INTEGER PRIMARY KEY,
            applied_at REAL NOT NULL,
            source TEXT NOT NULL,
            spec TEXT NOT NULL
        )""",
        """CREATE TABLE hives_seen (
            name TEXT PRIMARY KEY,
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL
        )""",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            target TEXT NOT NULL,
            message TEXT NOT NULL
        )""",
    ],
    [
        """CREATE TABLE workers (
            hive TEXT NOT NULL,
            id TEXT NOT NULL,
            model TEXT NOT NULL,
            url TEXT NOT NULL,
            seen_at REAL NOT NULL,
            PRIMARY KEY (hive, id)
        )""",
    ],
    [
        """CREATE TABLE settings (
            name TEXT PRIMARY KEY,
            value TEXT
        )""",
    ],
    [
        """CREATE TABLE usage (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            key TEXT,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            input_tokens INTEGER NOT NULL,
            output_tokens INTEGER NOT NULL,
            cost REAL NOT NULL,
            margin REAL NOT NULL,
            status INTEGER NOT NULL
        )""",
        "CREATE INDEX usage_at ON usage (at)",
        """CREATE TABLE providers (
            name TEXT PRIMARY KEY,
            spec TEXT NOT NULL,
            key TEXT,
            registered_at REAL NOT NULL
        )""",
    ],
]
USAGE_COLUMNS = ("at", "key", "provider", "model", "input_tokens", "output_tokens", "cost", "margin", "status")
GROUPINGS = {"key": "COALESCE(key, '')", "provider": "provider", "model": "model"}


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        current = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        for version, statements in enumerate(MIGRATIONS, start=1):
            if version > current:
                self._db.execute("BEGIN IMMEDIATE")
                for statement in statements:
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {version}")
                self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def current_spec(self) -> tuple[int, HiveFile] | None:
        row = self._db.execute("SELECT generation, spec FROM specs ORDER BY generation DESC LIMIT 1").fetchone()
        if row is None:
            return None
        return int(row[0]), HiveFile.model_validate_json(row[1])

    def apply_spec(self, spec: HiveFile, source: str, policy: PolicyRef | None = None) -> tuple[int, bool]:
        """Store `spec` and the routing policy it names as the desired state, in one transaction (a crash
        leaves either both or neither); returns (generation, changed)."""
        body = spec.model_dump_json()
        named = policy.model_dump_json() if policy is not None else None
        self._db.execute("BEGIN IMMEDIATE")
        try:
            current = self._db.execute("SELECT generation, spec FROM specs ORDER BY generation DESC LIMIT 1").fetchone()
            same = current is not None and json.loads(current[1]) == json.loads(body)
            if same and self._setting("policy") == named:
                self._db.execute("COMMIT")
                return int(current[0]), False
            generation = (int(current[0]) if current else 0) + 1
            self._db.execute(
                "INSERT INTO specs (generation, applied_at, source, spec) VALUES (?, ?, ?, ?)",
                (generation, time.time(), source, body),
            )
            self._db.execute("INSERT OR REPLACE INTO settings (name, value) VALUES ('policy', ?)", (named,))
            self.log("spec", source, f"applied generation {generation}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return generation, True

    def policy(self) -> PolicyRef | None:
        """The routing policy the applied spec names (its file is in the queen's policy directory)."""
        named = self._setting("policy")
        return PolicyRef.model_validate_json(named) if named else None

    def _setting(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row and row[0] is not None else None

    def saw_hive(self, name: str) -> None:
        now = time.time()
        self._db.execute(
            "INSERT INTO hives_seen (name, first_seen, last_seen) VALUES (?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET last_seen = excluded.last_seen",
            (name, now, now),
        )

    def seen_hives(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT name FROM hives_seen")}

    def replace_workers(self, workers: list[tuple[str, str, str, str]]) -> None:
        """The registry of routable workers as last observed: (hive, id, model, url)."""
        now = time.time()
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("DELETE FROM workers")
        self._db.executemany(
            "INSERT INTO workers (hive, id, model, url, seen_at) VALUES (?, ?, ?, ?, ?)",
            [(*worker, now) for worker in workers],
        )
        self._db.execute("COMMIT")

    def workers(self) -> list[tuple[str, str, str, str]]:
        rows = self._db.execute("SELECT hive, id, model, url FROM workers ORDER BY hive, id").fetchall()
        return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]

    def log(self, kind: str, target: str, message: str) -> None:
        self._db.execute(
            "INSERT INTO events (at, kind, target, message) VALUES (?, ?, ?, ?)", (time.time(), kind, target, message)
        )

    def events(self, limit: int = 100, after: int | None = None) -> list[dict[str, Any]]:
        """The last `limit` events, oldest first; with `after`, the first `limit` events after that id."""
        if after is None:
            rows = self._db.execute(
                "SELECT id, at, kind, target, message FROM events ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
            rows.reverse()
        else:
            rows = self._db.execute(
                "SELECT id, at, kind, target, message FROM events WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
            ).fetchall()
        return [dict(zip(("id", "at", "kind", "target", "message"), row, strict=True)) for row in rows]

    def prune_events(self, keep: int = 100_000) -> None:
        self._db.execute("DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?", (keep,))

    def add_usage(self, rows: list[tuple[Any, ...]]) -> None:
        """Usage records, each USAGE_COLUMNS in order, in one transaction."""
        if not rows:
            return
        marks = ", ".join("?" for _ in USAGE_COLUMNS)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(f"INSERT INTO usage ({', '.join(USAGE_COLUMNS)}) VALUES ({marks})", rows)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def usage(self, since: float, by: str) -> list[dict[str, Any]]:
        """Usage since `since` (a Unix time) summed per key, provider or model: requests, tokens, what providers
        cost (their payout) and what it is billed at (cost plus each record's margin)."""
        group = GROUPINGS[by]  # one of three fixed expressions: never a caller's string
        rows = self._db.execute(
            f"SELECT {group}, COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cost), SUM(cost * (1 + margin)),"
            f" SUM(status >= 400) FROM usage WHERE at >= ? GROUP BY {group} ORDER BY {group}",
            (since,),
        ).fetchall()
        names = ("name", "requests", "input_tokens", "output_tokens", "cost", "billed", "failed")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def register_provider(self, name: str, spec: str, key: str | None) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO providers (name, spec, key, registered_at) VALUES (?, ?, ?, ?)",
            (name, spec, key, time.time()),
        )

    def registered_providers(self) -> list[tuple[str, str | None]]:
        """Each registered provider's spec (JSON) and key."""
        return [(str(spec), key) for spec, key in self._db.execute("SELECT spec, key FROM providers ORDER BY name")]

    def remove_provider(self, name: str) -> bool:
        return self._db.execute("DELETE FROM providers WHERE name = ?", (name,)).rowcount > 0
