"""The outbox: order revisions and telemetry summaries waiting for the platform's acknowledgement.

An order revision is written in the same transaction as the order change that made it, so
no change can exist without its revision waiting to go out. A row is marked sent only when
the platform has acknowledged it. Order revisions go before telemetry; within a kind, the
oldest first, so the revisions of one order leave in order.

Nothing unacknowledged is deleted, except by ``enforce_budget`` when the file outgrows its
disk budget, in this order, each step logged and recorded in the ``evictions`` table:

1. acknowledged rows, oldest first (already delivered; each order's state stays in ``orders``);
2. quarantined payloads, oldest first (examples of bad input; their counts stay in /metrics);
3. unsent telemetry summaries, oldest first, keeping the newest summary of each device;
4. the newest telemetry summaries too;
5. unsent order revisions, oldest first: only when ``evict_orders`` is set (default: never;
   the file then grows past its budget rather than lose an order).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import orjson
import sqlite_utils

from edge.outbox.database import transaction

log = logging.getLogger(__name__)

PRIORITY_ORDER = 0  # lower goes first
PRIORITY_REPORT = 5  # what the gateway did with a change from the platform: after orders, before telemetry
PRIORITY_TELEMETRY = 10
REPORTS_KEPT = 1000  # unsent reports kept; a platform that floods bad changes cannot fill the disk with them
EVICTION_CHUNK = 500


@dataclass(frozen=True)
class Pending:
    seq: int
    kind: str  # "order", "telemetry" or "report"
    key: str  # the order id, telemetry/<device>, or report-<seq>
    revision: int  # the order's revision, the telemetry interval's number, or the report's change seq
    body: dict


@dataclass(frozen=True)
class Eviction:
    step: str
    rows: int
    used_before: int
    used_after: int


class Outbox:
    def __init__(self, db: sqlite_utils.Database):
        self.db = db

    def put(self, order_id: str, revision: int, body: dict, priority: int = PRIORITY_ORDER) -> None:
        """Queue one order revision; call inside the transaction that changed the order."""
        self.db.execute(
            "INSERT OR IGNORE INTO outbox (priority, kind, order_id, revision, body, created_at) "
            "VALUES (?, 'order', ?, ?, ?, ?)",
            [priority, order_id, revision, orjson.dumps(body).decode(), time.time()],
        )

    def put_telemetry(self, device: str, interval: int, body: dict) -> None:
        """Queue one device's telemetry summary for one interval."""
        self.db.execute(
            "INSERT OR REPLACE INTO outbox (priority, kind, order_id, revision, body, created_at) "
            "VALUES (?, 'telemetry', ?, ?, ?, ?)",
            [PRIORITY_TELEMETRY, f"telemetry/{device}", interval, orjson.dumps(body).decode(), time.time()],
        )

    def put_report(self, seq: int, body: dict) -> None:
        """Queue a report to the platform on its change ``seq`` (docs/uplink.md, "reports").

        At most REPORTS_KEPT unsent reports are kept: beyond, the oldest are evicted (logged
        and recorded as the eviction step ``reports``)."""
        self.db.execute(
            "INSERT OR IGNORE INTO outbox (priority, kind, order_id, revision, body, created_at) "
            "VALUES (?, 'report', ?, ?, ?, ?)",
            [PRIORITY_REPORT, f"report-{seq}", seq, orjson.dumps(body).decode(), time.time()],
        )
        unsent = self.db.execute("SELECT count(*) FROM outbox WHERE kind = 'report' AND sent_at IS NULL").fetchone()[0]
        if unsent > REPORTS_KEPT:
            before = self.used_bytes()
            cursor = self.db.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE kind = 'report' AND sent_at IS NULL "
                "ORDER BY seq LIMIT ?)", [unsent - REPORTS_KEPT])
            self.db.execute(
                "INSERT INTO evictions (at, step, rows, used_bytes_before, used_bytes_after) VALUES (?, ?, ?, ?, ?)",
                [time.time(), "reports", cursor.rowcount, before, self.used_bytes()])
            log.warning("more than %d reports to the platform unsent: evicted the oldest %d", REPORTS_KEPT,
                        cursor.rowcount)

    def pending(self, limit: int, fresh: int = 10) -> list[Pending]:
        """The oldest unacknowledged rows, orders before telemetry, in the order they were made.

        Up to ``fresh`` of the places go to the newest new orders (revision 1), so a problem
        that starts while a long backlog drains is not kept waiting behind it. A first
        revision has nothing before it, so every order's revisions still leave in order.
        """
        rows = self.db.execute(
            "SELECT seq, kind, order_id, revision, body FROM outbox WHERE sent_at IS NULL "
            "ORDER BY priority, seq LIMIT ?",
            [limit],
        ).fetchall()
        if len(rows) == limit and fresh > 0:
            newest = self.db.execute(
                "SELECT seq, kind, order_id, revision, body FROM outbox WHERE sent_at IS NULL AND kind = 'order' "
                "AND revision = 1 AND seq > ? ORDER BY seq DESC LIMIT ?",
                [rows[-1][0], min(fresh, limit - 1)],
            ).fetchall()
            if newest:
                rows = rows[: limit - len(newest)] + sorted(newest)
        return [Pending(seq, kind, key, revision, orjson.loads(body)) for seq, kind, key, revision, body in rows]

    def mark_sent(self, acknowledged: list[tuple[str, int]]) -> int:
        """Mark acknowledged (key, revision) pairs sent, in one transaction; returns how many."""
        if not acknowledged:
            return 0
        now = time.time()
        count = 0
        with transaction(self.db) as conn:
            for key, revision in acknowledged:
                cursor = conn.execute(
                    "UPDATE outbox SET sent_at = ? WHERE order_id = ? AND revision = ? AND sent_at IS NULL",
                    [now, key, revision],
                )
                count += cursor.rowcount
        return count

    def depth(self, kind: str | None = None) -> int:
        if kind is None:
            return self.db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0]
        return self.db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL AND kind = ?", [kind]).fetchone()[0]

    def oldest_unsent_age(self, now: float | None = None) -> float | None:
        row = self.db.execute("SELECT min(created_at) FROM outbox WHERE sent_at IS NULL").fetchone()
        return None if row[0] is None else (now or time.time()) - row[0]

    def sent_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL").fetchone()[0]

    def used_bytes(self) -> int:
        """Bytes of the file in use (pages not on the free list); freed pages are reused before it grows."""
        page_size = self.db.execute("PRAGMA page_size").fetchone()[0]
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * page_size

    def enforce_budget(self, max_bytes: int, evict_orders: bool = False) -> list[Eviction]:
        """Evict, step by step as documented above, until the file is within ``max_bytes``."""
        outbox = "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE {} ORDER BY seq LIMIT ?)"
        steps = [
            ("acknowledged", outbox.format("sent_at IS NOT NULL")),
            ("quarantine", "DELETE FROM quarantine WHERE id IN (SELECT id FROM quarantine ORDER BY id LIMIT ?)"),
            ("telemetry_old", outbox.format("sent_at IS NULL AND kind = 'telemetry' AND seq NOT IN "
                                            "(SELECT max(seq) FROM outbox WHERE kind = 'telemetry' GROUP BY order_id)")),
            ("telemetry_latest", outbox.format("sent_at IS NULL AND kind = 'telemetry'")),
        ]
        if evict_orders:
            steps.append(("order_revisions", outbox.format("sent_at IS NULL AND kind = 'order'")))
        done: list[Eviction] = []
        for step, delete in steps:
            before = self.used_bytes()
            if before <= max_bytes:
                break
            evicted = 0
            while self.used_bytes() > max_bytes:
                with transaction(self.db) as conn:
                    cursor = conn.execute(delete, [EVICTION_CHUNK])
                if cursor.rowcount == 0:
                    break
                evicted += cursor.rowcount
            if evicted:
                after = self.used_bytes()
                with transaction(self.db) as conn:
                    conn.execute(
                        "INSERT INTO evictions (at, step, rows, used_bytes_before, used_bytes_after) VALUES (?, ?, ?, ?, ?)",
                        [time.time(), step, evicted, before, after],
                    )
                log.warning("disk budget %d bytes exceeded: evicted %d row(s) (%s), %d -> %d bytes in use",
                            max_bytes, evicted, step, before, after)
                done.append(Eviction(step, evicted, before, after))
        return done
