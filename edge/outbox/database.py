"""The gateway's SQLite file: opened in WAL mode, its schema kept as ordered migrations.

The file outlives any one software version, so a newer gateway migrates it in place; it is
never recreated. Each migration runs in its own transaction and bumps ``user_version``.

Durability: ``synchronous=FULL`` in WAL mode, so when a transaction returns its rows are on
disk (fsync of the WAL). A power cut loses at most the transaction in progress.

Size on disk (docs/uplink.md, "Disk budget and eviction"): the file is made with
``auto_vacuum=INCREMENTAL``, so pages freed by eviction can be given back to the filesystem
(edge/outbox/disk.py ``reclaim``); a file made by an older version is converted once, by a
VACUUM at open when its partition has room for it. The WAL is truncated back to
``WAL_SIZE_LIMIT`` after each checkpoint. A full partition never leaves a half-migrated file:
``open_database`` raises ``DiskFullError`` saying what could not be done.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

import sqlite_utils

from edge.outbox.disk import DiskFullError, checkpoint, free_bytes, is_disk_full, release_reserve

log = logging.getLogger(__name__)

WAL_SIZE_LIMIT = 4 * 1024 * 1024  # PRAGMA journal_size_limit: the WAL file is cut back to this after a checkpoint
CONVERT_MARGIN = 16 * 1024 * 1024  # room kept beyond what the one-time VACUUM needs

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
    # 7: the sensors' re-check of a resolved order (edge/orders/verification.py).
    # - verification: '' (none), pending, verified, not_fixed or unverified;
    # - resolved_at: gateway time of the platform's `resolved`; verified_at: the device time the
    #   fix was confirmed (a repeat counts from it); repeat_of: the verified order this one repeats;
    # - order_members.changed_at: device time of the problem's last open or clear;
    #   verify_from: the device's clock when the order was resolved (the re-check counts from it);
    # - a verified order no longer stands for its problem: one live order per problem, verified ones apart.
    """
    ALTER TABLE orders ADD COLUMN verification TEXT NOT NULL DEFAULT '';
    ALTER TABLE orders ADD COLUMN resolved_at REAL;
    ALTER TABLE orders ADD COLUMN verified_at REAL;
    ALTER TABLE orders ADD COLUMN repeat_of TEXT;
    ALTER TABLE order_members ADD COLUMN changed_at REAL;
    ALTER TABLE order_members ADD COLUMN verify_from REAL;
    UPDATE order_members SET changed_at = joined_at;
    CREATE INDEX orders_by_verification ON orders (verification) WHERE verification != '';
    DROP INDEX orders_one_live_per_problem;
    CREATE UNIQUE INDEX orders_one_live_per_problem
        ON orders (rule, device) WHERE state NOT IN ('closed', 'rejected') AND verification != 'verified';
    """,
]


def open_database(path: Path) -> sqlite_utils.Database:
    """Open (creating if needed) the gateway file and bring its schema up to date.

    On a full partition the gateway's reserve file (edge/outbox/disk.py) is given back and the
    open tried once more; with still no room, ``DiskFullError`` says what could not be done.
    Nothing is left half done: a migration that does not fit is rolled back whole.
    """
    path = Path(path)
    try:
        return _open(path)
    except DiskFullError as error:
        if not release_reserve(path):
            raise
        log.warning("%s: no room to %s; gave back the gateway's reserve file to go on", path, error.action)
    return _open(path)


def _open(path: Path) -> sqlite_utils.Database:
    action = "create its folder"
    conn = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        action = "open it"
        conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:  # (setting it writes, even to the same value)
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # a new file: before its first table; else at VACUUM
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version < len(MIGRATIONS):
            action = f"bring its schema from version {version} to {len(MIGRATIONS)}"
        migrate(conn)
        _convert_to_incremental_vacuum(conn, path)
    except BaseException as error:
        if conn is not None:
            conn.close()
        if isinstance(error, (sqlite3.Error, OSError)) and is_disk_full(error, path):
            raise DiskFullError(path, action, free_bytes(path)) from error
        raise
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
            if conn.in_transaction:  # (SQLite has already rolled back after a full disk)
                conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)


def _sqlite_temp_dir() -> Path:
    """Where SQLite puts VACUUM's temporary copy (the order of its unix VFS)."""
    for candidate in (os.environ.get("SQLITE_TMPDIR"), os.environ.get("TMPDIR"), "/var/tmp", "/usr/tmp", "/tmp"):
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            return Path(candidate)
    return Path(".")


def _convert_to_incremental_vacuum(conn: sqlite3.Connection, path: Path) -> None:
    """Once in a file's life: a file made before auto_vacuum was set is rebuilt by VACUUM.

    VACUUM writes a copy of the data (in SQLite's temporary folder) and then the whole file
    through the WAL: it needs about twice the data's size free, and on a 256 MB file takes
    seconds to a minute on an SD card. Without the room it is skipped (logged) and tried at the
    next start; until then freed pages are reused but the file does not shrink.
    """
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
        return
    size = conn.execute("PRAGMA page_count").fetchone()[0] * conn.execute("PRAGMA page_size").fetchone()[0]
    temp = _sqlite_temp_dir()
    same_partition = os.stat(temp).st_dev == os.stat(path.parent).st_dev
    needed = {path.parent: size * (2 if same_partition else 1) + CONVERT_MARGIN}
    if not same_partition:
        needed[temp] = size + CONVERT_MARGIN
    short = [f"{where}: {need / 1e6:.0f} MB needed, {free_bytes(where) / 1e6:.0f} MB free"
             for where, need in needed.items() if free_bytes(where) < need]
    if short:
        log.warning("%s was made before it could give freed space back to the disk; converting it needs room "
                    "(%s): tried again at the next start, meanwhile freed space is reused but the file does "
                    "not shrink", path, "; ".join(short))
        return
    log.info("%s: converting it once so that it gives freed space back to the disk (VACUUM of %.1f MB)...",
             path, size / 1e6)
    started = time.monotonic()
    try:
        conn.execute("VACUUM")
        checkpoint(conn, wait=10.0)
    except sqlite3.Error as error:
        if not (is_disk_full(error, path) or "locked" in str(error) or "busy" in str(error)):
            raise
        log.warning("%s not converted (%s): tried again at the next start", path, error)
        return
    log.info("%s converted in %.1fs", path, time.monotonic() - started)


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
