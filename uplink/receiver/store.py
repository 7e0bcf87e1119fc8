"""The receiver's SQLite file: every (order id, revision) once, and a count of duplicates."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import orjson
import sqlite_utils


class ReceiverStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        self.db = sqlite_utils.Database(conn)
        self.lock = threading.Lock()
        if "revisions" not in self.db.table_names():
            self.db["revisions"].create(
                {"order_id": str, "revision": int, "gateway": str, "received_at": float, "body": str},
                pk=("order_id", "revision"),
            )
        if "counters" not in self.db.table_names():
            self.db["counters"].create({"name": str, "value": int}, pk="name")

    def add(self, gateway: str, revisions: list[dict]) -> tuple[list[tuple[str, int]], int]:
        """Store a batch; returns (acknowledged pairs, how many were duplicates)."""
        now = time.time()
        acknowledged: list[tuple[str, int]] = []
        duplicates = 0
        with self.lock:
            conn = self.db.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                for body in revisions:
                    key = (body["order_id"], body["revision"])
                    cursor = conn.execute(
                        "INSERT OR IGNORE INTO revisions (order_id, revision, gateway, received_at, body) "
                        "VALUES (?, ?, ?, ?, ?)",
                        [key[0], key[1], gateway, now, orjson.dumps(body).decode()],
                    )
                    if cursor.rowcount == 0:
                        duplicates += 1
                    acknowledged.append(key)
                if duplicates:
                    conn.execute(
                        "INSERT INTO counters (name, value) VALUES ('duplicates', ?) "
                        "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                        [duplicates],
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return acknowledged, duplicates

    def orders(self) -> list[dict]:
        """The latest revision of every order."""
        with self.lock:
            rows = self.db.execute(
                "SELECT body FROM revisions r WHERE revision = "
                "(SELECT max(revision) FROM revisions WHERE order_id = r.order_id) ORDER BY received_at, order_id"
            ).fetchall()
        return [orjson.loads(body) for (body,) in rows]

    def revisions(self) -> list[dict]:
        with self.lock:
            rows = self.db.execute("SELECT body FROM revisions ORDER BY received_at, order_id, revision").fetchall()
        return [orjson.loads(body) for (body,) in rows]

    def stats(self) -> dict:
        with self.lock:
            orders = self.db.execute("SELECT count(DISTINCT order_id) FROM revisions").fetchone()[0]
            revisions = self.db.execute("SELECT count(*) FROM revisions").fetchone()[0]
            row = self.db.execute("SELECT value FROM counters WHERE name = 'duplicates'").fetchone()
        return {"orders": orders, "revisions": revisions, "duplicates": row[0] if row else 0}

    def close(self) -> None:
        self.db.conn.close()
