"""What ingest set aside: quarantined payloads and devices not in the registry, kept in gateway.db.

The agent writes both in the batch's transaction; ``edge quarantine list`` and
``edge devices unknown`` read them back through these functions.
"""

from __future__ import annotations

import sqlite3
from typing import Iterable

__all__ = ["quarantined", "record_unknown", "trim", "unknown_devices"]


def record_unknown(conn: sqlite3.Connection, seen: Iterable[tuple[str, float, float, int, str]]) -> None:
    """Count sightings of unknown devices: (device, first seen, last seen, messages, last topic)."""
    conn.executemany(
        "INSERT INTO unknown_devices (device, first_seen, last_seen, count, topic) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (device) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen), "
        "count = count + excluded.count, topic = excluded.topic",
        list(seen),
    )


def quarantined(conn: sqlite3.Connection, reason: str | None = None, limit: int = 50) -> list[dict]:
    """The newest quarantined messages first, optionally of one reason."""
    sql = "SELECT id, received_at, topic, payload, reason, detail FROM quarantine"
    args: list = []
    if reason:
        sql += " WHERE reason = ?"
        args.append(reason)
    sql += " ORDER BY id DESC LIMIT ?"
    args.append(limit)
    columns = ("id", "received_at", "topic", "payload", "reason", "detail")
    return [dict(zip(columns, row)) for row in conn.execute(sql, args)]


def trim(conn: sqlite3.Connection, keep: int) -> int:
    """Delete all but the newest ``keep`` quarantined messages; returns how many went.

    A device that keeps sending garbage (or a dead Modbus sensor, polled forever) must not
    fill the disk: the newest examples are enough to diagnose it, and the count of every
    message quarantined, per reason, stays in /metrics."""
    row = conn.execute("SELECT id FROM quarantine ORDER BY id DESC LIMIT 1 OFFSET ?", [max(keep, 0)]).fetchone()
    if row is None:
        return 0
    return conn.execute("DELETE FROM quarantine WHERE id <= ?", [row[0]]).rowcount


def unknown_devices(conn: sqlite3.Connection) -> list[dict]:
    """Devices that sent messages but are not in the registry, most recently seen first."""
    columns = ("device", "first_seen", "last_seen", "count", "topic")
    rows = conn.execute(f"SELECT {', '.join(columns)} FROM unknown_devices ORDER BY last_seen DESC, device")
    return [dict(zip(columns, row)) for row in rows]
