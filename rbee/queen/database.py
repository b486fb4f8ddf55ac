"""The queen's database: SQLite, the embedded default (a file in its state directory, WAL), or PostgreSQL
(`queen.store: postgresql://…`), which several queens share (store.py's lease picks the one that reconciles).

One small interface; the dialects' differences stay here: placeholders, transactions, the schema version, the
types of ids and times. SQL is written once, with `?` placeholders. Every wait has a bound: PostgreSQL's
connections time out at CONNECT_TIMEOUT and its statements at STATEMENT_TIMEOUT.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

CONNECT_TIMEOUT = 5
STATEMENT_TIMEOUT_MS = 5000
POOL_SIZE = 4
SCHEMA = "rbee_schema"


class StoreError(Exception):
    """The database cannot be reached or used; the message names it (never its password) and what to do."""


@dataclass(frozen=True, slots=True)
class Result:
    rows: list[tuple[Any, ...]]
    count: int
    """Rows the statement changed."""


class Runner(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


class Database(Runner, Protocol):
    dialect: str
    """`sqlite` or `postgresql`."""
    where: str
    """Where it is, for people (a path, or a URL without its password)."""

    def transaction(self) -> contextlib.AbstractContextManager[Runner]: ...

    def close(self) -> None: ...


def open_database(location: str | Path) -> SQLite | Postgres:
    """SQLite at a path, or PostgreSQL at a `postgresql://` URL."""
    text = str(location)
    if text.startswith(("postgresql://", "postgres://")):
        return Postgres(text)
    return SQLite(Path(text))


def public(url: str) -> str:
    """A database URL as it may be shown: without a password."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


class SQLite:
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.where = str(path)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        cursor = self._db.execute(sql, params)
        return Result(cursor.fetchall(), cursor.rowcount)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._db.executemany(sql, rows)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Runner]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def set_version(self, runner: Runner, version: int) -> None:
        runner.execute(f"PRAGMA user_version = {int(version)}")

    def close(self) -> None:
        self._db.close()


_PLACEHOLDER = re.compile(r"\?")


class Postgres:
    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        try:
            import psycopg
            from psycopg_pool import ConnectionPool, PoolTimeout
        except ImportError:
            raise StoreError(
                f"{public(url)}: a PostgreSQL store needs rbee's ha extra on the queen's machine: "
                "pip install 'rbee[ha]'"
            ) from None

        if urlsplit(url).password:
            raise StoreError(
                f"{public(url)}: a password in the store's URL would be in the queen's process arguments; put it "
                "in ~/.pgpass or PGPASSWORD on the queen's machine instead"
            )
        self.where = public(url)
        self._errors: tuple[type[Exception], ...] = (psycopg.Error, PoolTimeout)
        options = {
            "autocommit": True,
            "connect_timeout": CONNECT_TIMEOUT,
            "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
        }
        try:
            self._pool = ConnectionPool(
                url, min_size=1, max_size=POOL_SIZE, kwargs=options, timeout=CONNECT_TIMEOUT, open=False
            )
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT)
        except self._errors as error:
            raise StoreError(f"cannot reach the queen's store {self.where}: {error}") from None

    def _sql(self, sql: str) -> str:
        return _PLACEHOLDER.sub("%s", sql)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        try:
            with self._pool.connection() as connection:
                return _run(connection, self._sql(sql), params)
        except self._errors as error:
            raise StoreError(f"the queen's store {self.where} failed: {error}") from None

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            with self._pool.connection() as connection, connection.cursor() as cursor:
                cursor.executemany(self._sql(sql), rows)
        except self._errors as error:
            raise StoreError(f"the queen's store {self.where} failed: {error}") from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Runner]:
        try:
            with self._pool.connection() as connection, connection.transaction():
                yield _Bound(connection, self)
        except self._errors as error:
            raise StoreError(f"the queen's store {self.where} failed: {error}") from None

    def version(self) -> int:
        self.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA} (version INTEGER NOT NULL)")
        rows = self.execute(f"SELECT version FROM {SCHEMA}").rows
        return int(rows[0][0]) if rows else 0

    def set_version(self, runner: Runner, version: int) -> None:
        runner.execute(f"DELETE FROM {SCHEMA}")
        runner.execute(f"INSERT INTO {SCHEMA} (version) VALUES (?)", (version,))

    def close(self) -> None:
        self._pool.close()


class _Bound:
    """Statements on one connection, inside its transaction."""

    def __init__(self, connection: Any, database: Postgres) -> None:
        self.connection, self.database = connection, database

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        return _run(self.connection, self.database._sql(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.connection.cursor() as cursor:
            cursor.executemany(self.database._sql(sql), rows)


def _run(connection: Any, sql: str, params: Sequence[Any]) -> Result:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall() if cursor.description is not None else []
        return Result([tuple(row) for row in rows], cursor.rowcount)


def migrate(database: SQLite | Postgres, migrations: dict[str, list[list[str]]]) -> None:
    """Bring the schema to the newest version, each version's statements in one transaction; on PostgreSQL under
    an advisory lock, so queens starting together do not migrate twice."""
    steps = migrations[database.dialect]
    with database.transaction() as runner:
        if database.dialect == "postgresql":
            runner.execute("SELECT pg_advisory_xact_lock(7262730)")  # 'rbee' in a number: one migrator at a time
        current = database.version() if database.dialect == "sqlite" else _pg_version(runner)
        for version, statements in enumerate(steps, start=1):
            if version > current:
                for statement in statements:
                    runner.execute(statement)
                database.set_version(runner, version)


def _pg_version(runner: Runner) -> int:
    runner.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA} (version INTEGER NOT NULL)")
    rows = runner.execute(f"SELECT version FROM {SCHEMA}").rows
    return int(rows[0][0]) if rows else 0
