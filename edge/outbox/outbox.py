"""The outbox: order revisions waiting for the central platform's acknowledgement.

A revision is written in the same transaction as the order change that made it, so no
change can exist without its revision waiting to go out. A row is marked sent only when
the platform has acknowledged it; nothing unacknowledged is ever deleted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson
import sqlite_utils

from edge.outbox.database import transaction

PRIORITY_ORDER = 0  # lower goes first


@dataclass(frozen=True)
class Pending:
    seq: int
    order_id: str
    revision: int
    body: dict


class Outbox:
    def __init__(self, db: sqlite_utils.Database):
        self.db = db

    def put(self, order_id: str, revision: int, body: dict, priority: int = PRIORITY_ORDER) -> None:
        """Queue one revision; call inside the transaction that changed the order."""
        self.db.execute(
            "INSERT OR IGNORE INTO outbox (priority, order_id, revision, body, created_at) VALUES (?, ?, ?, ?, ?)",
            [priority, order_id, revision, orjson.dumps(body).decode(), time.time()],
        )

    def pending(self, limit: int) -> list[Pending]:
        """The oldest unacknowledged revisions, highest priority first, in the order they were made."""
        rows = self.db.execute(
            "SELECT seq, order_id, revision, body FROM outbox WHERE sent_at IS NULL "
            "ORDER BY priority, seq LIMIT ?",
            [limit],
        ).fetchall()
        return [Pending(seq, order_id, revision, orjson.loads(body)) for seq, order_id, revision, body in rows]

    def mark_sent(self, acknowledged: list[tuple[str, int]]) -> int:
        """Mark acknowledged (order id, revision) pairs sent, in one transaction; returns how many."""
        if not acknowledged:
            return 0
        now = time.time()
        count = 0
        with transaction(self.db) as conn:
            for order_id, revision in acknowledged:
                cursor = conn.execute(
                    "UPDATE outbox SET sent_at = ? WHERE order_id = ? AND revision = ? AND sent_at IS NULL",
                    [now, order_id, revision],
                )
                count += cursor.rowcount
        return count

    def depth(self) -> int:
        return self.db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0]

    def sent_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL").fetchone()[0]
