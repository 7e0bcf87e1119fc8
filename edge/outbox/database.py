"""The gateway's SQLite file: opened in WAL mode, its schema kept as ordered migrations.

The file outlives any one software version, so a newer gateway migrates it in place; it is
never recreated. Each migration runs in its own transaction and bumps ``user_version``.

Durability: ``synchronous=FULL`` in WAL mode, so when a transaction returns its rows are on
disk (fsync of the WAL). A power cut loses at most the transaction in progress.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils

MIGRATIONS: list[str] = [
    # 1: orders, the outbox of order revisions, and quarantined payloads.
    """
    CREATE TABLE orders (
        id TEXT PRIMARY KEY,
        rule TEXT NOT NULL,
        device TEXT NOT NULL,
        kind TEXT NOT NULL,
        category TEXT NOT NULL,
        severity TEXT NOT NULL,
        title TEXT NOT NULL,
        grid TEXT NOT NULL,
        zone TEXT NOT NULL,
        team TEXT NOT NULL,
        address TEXT NOT NULL,
        lat REAL,
        lon REAL,
        state TEXT NOT NULL,
        revision INTEGER NOT NULL,
        opened_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        last_seen_at REAL NOT NULL,
        evidence TEXT NOT NULL
    );
    CREATE UNIQUE INDEX orders_one_live_per_problem
        ON orders (rule, device) WHERE state NOT IN ('closed', 'rejected');
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        priority INTEGER NOT NULL,
        order_id TEXT NOT NULL,
        revision INTEGER NOT NULL,
        body TEXT NOT NULL,
        created_at REAL NOT NULL,
        sent_at REAL,
        UNIQUE (order_id, revision)
    );
    CREATE INDEX outbox_unsent ON outbox (priority, seq) WHERE sent_at IS NULL;
    CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        received_at REAL NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    """,
    # 2: telemetry summaries share the outbox (kind), and every eviction is recorded.
    """
    ALTER TABLE outbox ADD COLUMN kind TEXT NOT NULL DEFAULT 'order';
    CREATE TABLE evictions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        step TEXT NOT NULL,
        rows INTEGER NOT NULL,
        used_bytes_before INTEGER NOT NULL,
        used_bytes_after INTEGER NOT NULL
    );
    CREATE TABLE cursors (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    """,
    # 3: every order change as a timeline entry, and how often an order was escalated.
    """
    ALTER TABLE orders ADD COLUMN escalations INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE order_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        order_id TEXT NOT NULL,
        revision INTEGER NOT NULL,
        at REAL NOT NULL,
        change TEXT NOT NULL,
        state TEXT NOT NULL,
        severity TEXT NOT NULL
    );
    CREATE INDEX order_events_by_order ON order_events (order_id, revision);
    """,
    # 4: the problems (rule, device) an order stands for: one, or several grouped in a grid.
    """
    CREATE TABLE order_members (
        order_id TEXT NOT NULL,
        rule TEXT NOT NULL,
        device TEXT NOT NULL,
        state TEXT NOT NULL,
        joined_at REAL NOT NULL,
        PRIMARY KEY (order_id, rule, device)
    );
    CREATE INDEX order_members_by_problem ON order_members (rule, device);
    INSERT INTO order_members (order_id, rule, device, state, joined_at)
        SELECT id, rule, device, CASE WHEN state = 'cleared' THEN 'cleared' ELSE 'opened' END, opened_at FROM orders;
    """,
    # 5: devices that sent messages but are not in the registry (edge devices unknown).
    """
    CREATE TABLE unknown_devices (
        device TEXT PRIMARY KEY,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        count INTEGER NOT NULL,
        topic TEXT NOT NULL
    );
    """,
    # 6: hostile input and durable engine state.
    # - a quarantined payload is stored truncated; payload_bytes is its length as received;
    # - escalate_from: the device's clock (engine device time) when the gateway created the order,
    #   from which its escalation limits count (orders/book.py, escalate);
    # - engine_changelog: what the engine was fed since its last checkpoint (one row per batch or
    #   tick, written in the transaction of that step's orders), replayed after a restart
    #   (edge/engine/checkpoint.py).
    """
    ALTER TABLE quarantine ADD COLUMN payload_bytes INTEGER NOT NULL DEFAULT 0;
    UPDATE quarantine SET payload_bytes = length(payload);
    ALTER TABLE orders ADD COLUMN escalate_from REAL;
    UPDATE orders SET escalate_from = opened_at;
    CREATE TABLE engine_changelog (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a checkpoint names the last step it covers
        kind TEXT NOT NULL,
        at REAL NOT NULL,
        body BLOB NOT NULL
    );
    """,
]


def open_database(path: Path) -> sqlite_utils.Database:
    """Open (creating if needed) the gateway file and bring its schema up to date."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    migrate(conn)
    return sqlite_utils.Database(conn)


def migrate(conn: sqlite3.Connection) -> int:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise RuntimeError(
            f"the gateway file has schema version {version}, newer than this software knows "
            f"({len(MIGRATIONS)}); upgrade the gateway software"
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


class transaction:
    """``with transaction(db):`` one atomic, durable write (BEGIN IMMEDIATE ... COMMIT).

    Writes inside it use ``db.execute``: sqlite-utils' own insert/update helpers commit on
    their own, which would split a change that must land whole (an order and its outbox row).
    Inside another transaction it is a savepoint: it undoes only its own writes when it fails,
    and the outer transaction decides what is committed (the agent writes a batch's orders,
    quarantine and engine changelog as one).
    """

    def __init__(self, db: sqlite_utils.Database | sqlite3.Connection):
        self.conn = db if isinstance(db, sqlite3.Connection) else db.conn
        self.nested = False

    def __enter__(self) -> sqlite3.Connection:
        self.nested = self.conn.in_transaction
        self.conn.execute("SAVEPOINT nested" if self.nested else "BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.nested:
            if exc_type is not None:
                self.conn.execute("ROLLBACK TO nested")
            self.conn.execute("RELEASE nested")
        elif exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:  # (SQLite may already have rolled back, e.g. on a full disk)
            self.conn.execute("ROLLBACK")
