"""The queen's durable state (database.py: SQLite by default, PostgreSQL for several queens): applied specs with
generation numbers, an event log, the usage record of every request (metering), the providers that registered
themselves, the lease that says which queen runs the reconcile loop, and the cold starts other queens ask of it.
Live worker state is never stored here: it is observed from the hives.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from rbee.queen.database import Postgres, Runner, SQLite, migrate, open_database
from rbee.spec.policy import PolicyRef
from rbee.spec.schema import HiveFile

_SQLITE: list[list[str]] = [
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
    [
        """CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            generation INTEGER NOT NULL,
            expires_at REAL NOT NULL
        )""",
        """CREATE TABLE wakes (
            model TEXT PRIMARY KEY,
            asked_at REAL NOT NULL
        )""",
    ],
]


def _postgres(statement: str) -> str:
    """A SQLite statement of the schema in PostgreSQL's types: 64-bit times and ids."""
    return (
        statement.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
        .replace(" REAL", " DOUBLE PRECISION")
        .replace("generation INTEGER", "generation BIGINT")
    )


MIGRATIONS = {"sqlite": _SQLITE, "postgresql": [[_postgres(statement) for statement in step] for step in _SQLITE]}
"""The same versions for both: version N of either holds the same tables."""
USAGE_COLUMNS = ("at", "key", "provider", "model", "input_tokens", "output_tokens", "cost", "margin", "status")
GROUPINGS = {"key": "COALESCE(key, '')", "provider": "provider", "model": "model"}
RECONCILE = "reconcile"
"""The lease the queen that runs the reconcile loop and the autoscaler holds."""


class Store:
    def __init__(self, location: Path | str) -> None:
        """`location`: the SQLite file, or a `postgresql://` URL (its password, if any, from ~/.pgpass)."""
        self.db: SQLite | Postgres = open_database(location)
        migrate(self.db, MIGRATIONS)

    @property
    def shared(self) -> bool:
        """Whether other queens may use this store too (PostgreSQL): the lease then decides who reconciles."""
        return self.db.dialect == "postgresql"

    def close(self) -> None:
        self.db.close()

    def current_spec(self) -> tuple[int, HiveFile] | None:
        rows = self.db.execute("SELECT generation, spec FROM specs ORDER BY generation DESC LIMIT 1").rows
        if not rows:
            return None
        return int(rows[0][0]), HiveFile.model_validate_json(rows[0][1])

    def current_generation(self) -> int:
        """The newest applied spec's generation (0: none): cheap enough to ask every second."""
        rows = self.db.execute("SELECT MAX(generation) FROM specs").rows
        return int(rows[0][0] or 0) if rows else 0

    def apply_spec(self, spec: HiveFile, source: str, policy: PolicyRef | None = None) -> tuple[int, bool]:
        """Store `spec` and the routing policy it names as the desired state, in one transaction (a crash
        leaves either both or neither); returns (generation, changed)."""
        body = spec.model_dump_json()
        named = policy.model_dump_json() if policy is not None else None
        with self.db.transaction() as runner:
            rows = runner.execute("SELECT generation, spec FROM specs ORDER BY generation DESC LIMIT 1").rows
            current = rows[0] if rows else None
            same = current is not None and json.loads(current[1]) == json.loads(body)
            if same and current is not None and self._setting("policy", runner) == named:
                return int(current[0]), False
            generation = (int(current[0]) if current else 0) + 1
            runner.execute(
                "INSERT INTO specs (generation, applied_at, source, spec) VALUES (?, ?, ?, ?)",
                (generation, time.time(), source, body),
            )
            runner.execute(
                "INSERT INTO settings (name, value) VALUES ('policy', ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (named,),
            )
            _log(runner, "spec", source, f"applied generation {generation}")
        return generation, True

    def policy(self) -> PolicyRef | None:
        """The routing policy the applied spec names (its file is in the queen's policy directory)."""
        named = self._setting("policy", self.db)
        return PolicyRef.model_validate_json(named) if named else None

    @property
    def suspended(self) -> bool:
        """Whether the operator suspended the reconcile loop (`rbee suspend`): kept across the queen's restarts,
        so that a queen restarted during maintenance does not start changing the fleet on its own."""
        return self._setting("suspended", self.db) == "true"

    def set_suspended(self, suspended: bool) -> None:
        self.db.execute(
            "INSERT INTO settings (name, value) VALUES ('suspended', ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            ("true" if suspended else "false",),
        )

    def _setting(self, name: str, runner: Runner) -> str | None:
        rows = runner.execute("SELECT value FROM settings WHERE name = ?", (name,)).rows
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    def saw_hive(self, name: str) -> None:
        now = time.time()
        self.db.execute(
            "INSERT INTO hives_seen (name, first_seen, last_seen) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET last_seen = excluded.last_seen",
            (name, now, now),
        )

    def seen_hives(self) -> set[str]:
        return {str(row[0]) for row in self.db.execute("SELECT name FROM hives_seen").rows}

    def replace_workers(self, workers: list[tuple[str, str, str, str]]) -> None:
        """The registry of routable workers as last observed: (hive, id, model, url)."""
        now = time.time()
        with self.db.transaction() as runner:
            runner.execute("DELETE FROM workers")
            if workers:
                runner.executemany(
                    "INSERT INTO workers (hive, id, model, url, seen_at) VALUES (?, ?, ?, ?, ?)",
                    [(*worker, now) for worker in workers],
                )

    def workers(self) -> list[tuple[str, str, str, str]]:
        rows = self.db.execute("SELECT hive, id, model, url FROM workers ORDER BY hive, id").rows
        return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]

    def log(self, kind: str, target: str, message: str) -> None:
        _log(self.db, kind, target, message)

    def events(self, limit: int = 100, after: int | None = None) -> list[dict[str, Any]]:
        """The last `limit` events, oldest first; with `after`, the first `limit` events after that id."""
        if after is None:
            rows = self.db.execute(
                "SELECT id, at, kind, target, message FROM events ORDER BY id DESC LIMIT ?", (limit,)
            ).rows
            rows.reverse()
        else:
            rows = self.db.execute(
                "SELECT id, at, kind, target, message FROM events WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
            ).rows
        return [dict(zip(("id", "at", "kind", "target", "message"), row, strict=True)) for row in rows]

    def prune_events(self, keep: int = 100_000) -> None:
        self.db.execute("DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?", (keep,))

    def add_usage(self, rows: list[tuple[Any, ...]]) -> None:
        """Usage records, each USAGE_COLUMNS in order, in one transaction."""
        if not rows:
            return
        marks = ", ".join("?" for _ in USAGE_COLUMNS)
        with self.db.transaction() as runner:
            runner.executemany(f"INSERT INTO usage ({', '.join(USAGE_COLUMNS)}) VALUES ({marks})", rows)

    def usage(self, since: float, by: str) -> list[dict[str, Any]]:
        """Usage since `since` (a Unix time) summed per key, provider or model: requests, tokens, what providers
        cost (their payout) and what it is billed at (cost plus each record's margin)."""
        group = GROUPINGS[by]  # one of three fixed expressions: never a caller's string
        rows = self.db.execute(
            f"SELECT {group}, COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cost), SUM(cost * (1 + margin)),"
            f" SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) FROM usage WHERE at >= ? GROUP BY {group}"
            f" ORDER BY {group}",
            (since,),
        ).rows
        names = ("name", "requests", "input_tokens", "output_tokens", "cost", "billed", "failed")
        return [dict(zip(names, _plain(row), strict=True)) for row in rows]

    def register_provider(self, name: str, spec: str, key: str | None) -> None:
        self.db.execute(
            "INSERT INTO providers (name, spec, key, registered_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, key = excluded.key,"
            " registered_at = excluded.registered_at",
            (name, spec, key, time.time()),
        )

    def registered_providers(self) -> list[tuple[str, str | None]]:
        """Each registered provider's spec (JSON) and key."""
        rows = self.db.execute("SELECT spec, key FROM providers ORDER BY name").rows
        return [(str(spec), key) for spec, key in rows]

    def remove_provider(self, name: str) -> bool:
        return self.db.execute("DELETE FROM providers WHERE name = ?", (name,)).count > 0

    # -- several queens on one store -------------------------------------------------------------------------

    def hold_lease(self, holder: str, seconds: float, name: str = RECONCILE) -> int | None:
        """Take the lease `name` for `seconds`, or renew it: its generation (one more than the last holder's
        when it changes hands, the same on a renewal), or None while another queen holds it. Time is the
        database's own, so the queens' clocks need not agree."""
        now = self._now()
        rows = self.db.execute(
            "INSERT INTO leases (name, holder, generation, expires_at) VALUES (?, ?, 1, ?)"
            " ON CONFLICT (name) DO UPDATE SET"
            " generation = CASE WHEN leases.holder = excluded.holder THEN leases.generation"
            " ELSE leases.generation + 1 END,"
            " holder = excluded.holder, expires_at = excluded.expires_at"
            " WHERE leases.holder = excluded.holder OR leases.expires_at < ?"
            " RETURNING generation",
            (name, holder, now + seconds, now),
        ).rows
        return int(rows[0][0]) if rows else None

    def release_lease(self, holder: str, name: str = RECONCILE) -> None:
        """Let the lease go at once (a queen stopping cleanly), so the next queen need not wait it out."""
        self.db.execute("UPDATE leases SET expires_at = 0 WHERE name = ? AND holder = ?", (name, holder))

    def lease(self, name: str = RECONCILE) -> tuple[str, int, float] | None:
        """Who holds the lease, its generation and the seconds until it expires (negative: expired)."""
        rows = self.db.execute("SELECT holder, generation, expires_at FROM leases WHERE name = ?", (name,)).rows
        if not rows:
            return None
        holder, generation, expires = rows[0]
        return str(holder), int(generation), float(expires) - self._now()

    def _now(self) -> float:
        if self.db.dialect == "postgresql":
            return float(self.db.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())").rows[0][0])
        return time.time()

    def ask_wake(self, model: str) -> None:
        """Ask the leading queen to start a worker of `model` (this one does not lead)."""
        self.db.execute(
            "INSERT INTO wakes (model, asked_at) VALUES (?, ?)"
            " ON CONFLICT (model) DO UPDATE SET asked_at = excluded.asked_at",
            (model, time.time()),
        )

    def take_wakes(self) -> list[str]:
        """The models other queens asked to be started, taken (each once)."""
        with self.db.transaction() as runner:
            rows = runner.execute("DELETE FROM wakes RETURNING model").rows
        return sorted(str(row[0]) for row in rows)


def _log(runner: Runner, kind: str, target: str, message: str) -> None:
    runner.execute(
        "INSERT INTO events (at, kind, target, message) VALUES (?, ?, ?, ?)", (time.time(), kind, target, message)
    )


def _plain(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """Numbers as JSON writes them: PostgreSQL sums integers as Decimal."""
    return tuple(_number(value) if isinstance(value, Decimal) else value for value in row)


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)
