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
        if "telemetry" not in self.db.table_names():
            self.db["telemetry"].create(
                {"device": str, "interval": int, "gateway": str, "received_at": float, "body": str},
                pk=("device", "interval"),
            )
        if "changes" not in self.db.table_names():
            self.db["changes"].create(
                {"seq": int, "gateway": str, "type": str, "order_id": str, "state": str, "note": str,
                 "content": str, "at": float}, pk="seq",
            )

    def add(self, gateway: str, revisions: list[dict], telemetry: list[dict] | None = None
            ) -> tuple[list[tuple[str, int]], list[tuple[str, int]], int]:
        """Store a batch; returns (acknowledged revisions, acknowledged summaries, duplicates dropped)."""
        now = time.time()
        acknowledged: list[tuple[str, int]] = []
        summaries: list[tuple[str, int]] = []
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
                for body in telemetry or []:
                    key = (body["device"], body["interval"])
                    cursor = conn.execute(
                        "INSERT OR IGNORE INTO telemetry (device, interval, gateway, received_at, body) VALUES (?, ?, ?, ?, ?)",
                        [key[0], key[1], gateway, now, orjson.dumps(body).decode()],
                    )
                    if cursor.rowcount == 0:
                        duplicates += 1
                    summaries.append(key)
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
        return acknowledged, summaries, duplicates

    def orders(self) -> list[dict]:
        """The latest revision of every order, with the platform's state when it set one."""
        with self.lock:
            rows = self.db.execute(
                "SELECT body, (SELECT state FROM changes c WHERE c.order_id = r.order_id ORDER BY seq DESC LIMIT 1) "
                "FROM revisions r WHERE revision = "
                "(SELECT max(revision) FROM revisions WHERE order_id = r.order_id) ORDER BY received_at, order_id"
            ).fetchall()
        orders = []
        for body, platform_state in rows:
            order = orjson.loads(body)
            order["platform_state"] = platform_state
            orders.append(order)
        return orders

    def gateway_of(self, order_id: str) -> str | None:
        with self.lock:
            row = self.db.execute("SELECT gateway FROM revisions WHERE order_id = ? LIMIT 1", [order_id]).fetchone()
        return row[0] if row else None

    def add_change(self, order_id: str, state: str, note: str = "") -> dict | None:
        """Record the platform's decision on an order, for its gateway to fetch; None if the order is unknown."""
        gateway = self.gateway_of(order_id)
        if gateway is None:
            return None
        with self.lock:
            conn = self.db.conn
            cursor = conn.execute(
                "INSERT INTO changes (gateway, type, order_id, state, note, content, at) VALUES (?, 'order', ?, ?, ?, '', ?)",
                [gateway, order_id, state, note, time.time()],
            )
            seq = cursor.lastrowid
        return {"seq": seq, "type": "order", "gateway": gateway, "order_id": order_id, "state": state, "note": note}

    def add_rule_file(self, gateway: str, name: str, content: str) -> dict:
        """A new rule file for a gateway, which validates it before it applies it."""
        with self.lock:
            cursor = self.db.conn.execute(
                "INSERT INTO changes (gateway, type, order_id, state, note, content, at) VALUES (?, 'rules', '', '', ?, ?, ?)",
                [gateway, name, content, time.time()],
            )
        return {"seq": cursor.lastrowid, "type": "rules", "gateway": gateway, "file": name, "content": content}

    def changes(self, gateway: str, after: int, limit: int = 500) -> list[dict]:
        with self.lock:
            rows = self.db.execute(
                "SELECT seq, type, order_id, state, note, content, at FROM changes WHERE gateway = ? AND seq > ? "
                "ORDER BY seq LIMIT ?",
                [gateway, after, limit],
            ).fetchall()
        out = []
        for seq, kind, order_id, state, note, content, at in rows:
            if kind == "rules":
                out.append({"seq": seq, "type": "rules", "file": note, "content": content, "at": at})
            else:
                out.append({"seq": seq, "type": "order", "order_id": order_id, "state": state, "note": note, "at": at})
        return out

    def telemetry(self) -> list[dict]:
        with self.lock:
            rows = self.db.execute("SELECT body FROM telemetry ORDER BY interval, device").fetchall()
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
            summaries = self.db.execute("SELECT count(*) FROM telemetry").fetchone()[0]
        return {"orders": orders, "revisions": revisions, "duplicates": row[0] if row else 0, "telemetry": summaries}

    def close(self) -> None:
        self.db.conn.close()
