"""The platform's database: SQLite (a file, the embedded default) or PostgreSQL (production).

One small interface over both, so the store's SQL is written once:

- SQL uses ``?`` placeholders; for PostgreSQL they become ``%s``.
- ``write(fn)`` runs ``fn(tx)`` in one transaction and, on PostgreSQL, runs it again when the
  connection was lost (a server restart, a failover) for up to ``retry_for`` seconds. Every
  write the platform makes is idempotent (``ON CONFLICT``), so running one twice is harmless.
  When the database stays away, ``DatabaseUnavailable``: the API answers 503 and the MQTT side
  leaves the message unacknowledged, so the gateway or the broker sends it again.
- ``read(sql, args)`` returns rows as dicts.

The schema is versioned: ``MIGRATIONS`` lists the steps, each run once, in its own
transaction, when a platform opens a database older than itself. SQLite keeps the version in
``PRAGMA user_version`` (as the first receivers did); PostgreSQL in the table
``schema_version``, under an advisory lock, so several workers starting together migrate once.
A database newer than the code is refused, never changed.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
MIGRATION_LOCK = 7_204_511  # pg_advisory_xact_lock key of the platform's migrations


class StoreError(Exception):
    """The database cannot be used as it is (written by a newer platform, or not reachable at start)."""


class DatabaseUnavailable(Exception):
    """The database did not answer within the retry time (PostgreSQL restarting, say)."""


def is_postgres(target: str | Path) -> bool:
    return str(target).startswith(("postgresql://", "postgres://"))


def describe(target: str | Path) -> str:
    """The database for a log line: a PostgreSQL URL without its password."""
    text = str(target)
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", text) if is_postgres(text) else text


class Tx:
    """One transaction: ``execute`` and ``executemany`` with ``?`` placeholders, and ``insert`` of many rows."""

    def __init__(self, cursor, convert: Callable[[str], str], dialect: str):
        self.cursor = cursor
        self._convert = convert
        self.dialect = dialect

    def insert(self, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]], tail: str = "") -> int:
        """Insert ``rows`` (of ``columns``: name and PostgreSQL type) with one statement, then ``tail``
        (``ON CONFLICT ...``); returns how many rows it wrote. On PostgreSQL the rows travel as one array
        per column (``unnest``): one round trip whatever their number."""
        if not rows:
            return 0
        names = ", ".join(name for name, _ in columns)
        if self.dialect != "postgresql":
            marks = ", ".join("?" for _ in columns)
            return self.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks}) {tail}", rows)
        # %b: the arrays travel in binary (in text, psycopg escapes every element with a regular expression)
        arrays = ", ".join(f"%b::{kind}[]" for _, kind in columns)
        self.cursor.execute(f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}) {tail.replace('%', '%%')}",
                            [list(column) for column in zip(*rows)])
        return max(self.cursor.rowcount, 0)

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Tx:
        self.cursor.execute(self._convert(sql), tuple(args))
        return self

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        """Run ``sql`` for every row; returns the number of rows it changed in all."""
        rows = [tuple(row) for row in rows]
        if not rows:
            return 0
        self.cursor.executemany(self._convert(sql), rows)
        return max(self.cursor.rowcount, 0)

    @property
    def rowcount(self) -> int:
        return self.cursor.rowcount

    def fetchone(self):
        return self.cursor.fetchone()

    def fetchall(self) -> list:
        return self.cursor.fetchall()

    def rows(self) -> list[dict]:
        names = [d[0] for d in self.cursor.description or ()]
        return [dict(zip(names, row)) for row in self.cursor.fetchall()]


class Database:
    dialect = ""

    def write(self, fn: Callable[[Tx], T]) -> T:
        raise NotImplementedError

    def read(self, sql: str, args: Sequence[Any] = ()) -> list[dict]:
        return self.write(lambda tx: tx.execute(sql, args).rows())

    def read_one(self, sql: str, args: Sequence[Any] = ()) -> dict | None:
        rows = self.read(sql, args)
        return rows[0] if rows else None

    def close(self) -> None:
        raise NotImplementedError


class SqliteDatabase(Database):
    """One connection shared by the process's threads (a lock serialises them); WAL, fsync on commit.

    Several processes may open the same file (SQLite locks it; a writer waits up to 30 s), but
    PostgreSQL is the store for several workers.
    """

    dialect = "sqlite"

    def __init__(self, path: str | Path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.lock = threading.Lock()

    def write(self, fn: Callable[[Tx], T]) -> T:
        with self.lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(Tx(conn.cursor(), _same, self.dialect))
                conn.execute("COMMIT")
                return result
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def read(self, sql: str, args: Sequence[Any] = ()) -> list[dict]:
        with self.lock:
            return Tx(self.conn.cursor(), _same, self.dialect).execute(sql, args).rows()

    def schema_version(self, tx: Tx) -> int:
        return tx.execute("PRAGMA user_version").fetchone()[0]

    def set_schema_version(self, tx: Tx, version: int) -> None:
        tx.execute(f"PRAGMA user_version = {int(version)}")

    def lock_migrations(self, tx: Tx) -> None:
        pass  # BEGIN IMMEDIATE already holds the file's write lock

    def close(self) -> None:
        with self.lock:
            self.conn.close()


def _same(sql: str) -> str:
    return sql


class PostgresDatabase(Database):
    """A pool of psycopg 3 connections (``pool_size`` at most) to one PostgreSQL database."""

    dialect = "postgresql"

    def __init__(self, url: str, pool_size: int = 8, retry_for: float = 10.0, connect_timeout: float = 5.0):
        import psycopg
        from psycopg_pool import ConnectionPool

        self.url = url
        self.retry_for = retry_for
        self._lost = (psycopg.OperationalError, psycopg.InterfaceError)
        self._serialization = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)
        self._converted: dict[str, str] = {}
        self.pool = ConnectionPool(url, min_size=1, max_size=pool_size, open=False, timeout=connect_timeout,
                                   check=ConnectionPool.check_connection, name="platform",
                                   kwargs={"connect_timeout": max(1, int(connect_timeout))})
        try:
            self.pool.open(wait=True, timeout=connect_timeout)
        except Exception as error:
            self.pool.close()
            raise StoreError(f"cannot connect to {describe(url)}: {error}") from None

    def _convert(self, sql: str) -> str:
        converted = self._converted.get(sql)
        if converted is None:
            converted = self._converted[sql] = sql.replace("%", "%%").replace("?", "%s")
        return converted

    def write(self, fn: Callable[[Tx], T]) -> T:
        deadline = time.monotonic() + self.retry_for
        pause = 0.05
        while True:
            try:
                wait = max(0.1, deadline - time.monotonic())
                with self.pool.connection(timeout=wait) as conn, conn.transaction(), conn.cursor() as cursor:
                    return fn(Tx(cursor, self._convert, self.dialect))
            except self._serialization:
                pass  # another worker's transaction crossed this one: run it again
            except self._lost as error:
                if time.monotonic() >= deadline:
                    raise DatabaseUnavailable(f"{describe(self.url)}: {error}".strip()) from None
            except Exception as error:
                if type(error).__module__.startswith("psycopg_pool"):  # PoolTimeout: no connection could be made
                    if time.monotonic() >= deadline:
                        raise DatabaseUnavailable(f"{describe(self.url)}: {error}") from None
                else:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    def schema_version(self, tx: Tx) -> int:
        tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = tx.execute("SELECT max(version) FROM schema_version").fetchone()
        return row[0] or 0

    def set_schema_version(self, tx: Tx, version: int) -> None:
        tx.execute("INSERT INTO schema_version (version) VALUES (?)", [version])

    def lock_migrations(self, tx: Tx) -> None:
        tx.execute("SELECT pg_advisory_xact_lock(?)", [MIGRATION_LOCK])

    def close(self) -> None:
        self.pool.close()


def open_database(target: str | Path, retry_for: float = 10.0) -> Database:
    """``postgresql://...`` (``retry_for``: seconds a write waits for a lost connection) or a SQLite file's path."""
    if is_postgres(target):
        return PostgresDatabase(str(target), retry_for=retry_for)
    return SqliteDatabase(target)


def migrate(db: Database, migrations: Sequence[Sequence[Any]], where: str) -> int:
    """Bring the schema up to ``len(migrations)``; returns the version it had.

    Each version is applied in a transaction of its own (a database migrated half-way keeps the
    versions it finished). A step is SQL (``{id}`` stands for an auto-numbered key column) or a
    function ``(tx, dialect)``.
    """
    target = len(migrations)

    def next_version(tx: Tx) -> int:
        db.lock_migrations(tx)
        found = db.schema_version(tx)
        if found > target:
            raise StoreError(f"{where} has schema version {found}; this receiver knows versions up to {target}: "
                             "run a newer receiver, or give another --db")
        if found < target:
            for step in migrations[found]:
                if callable(step):
                    step(tx, db.dialect)
                else:
                    tx.execute(step.replace("{id}", AUTO_ID[db.dialect]))
            db.set_schema_version(tx, found + 1)
        return found

    first = db.write(next_version)
    found = first
    while found + 1 < target:
        found = db.write(next_version)
    return first


AUTO_ID = {"sqlite": "INTEGER PRIMARY KEY", "postgresql": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"}
