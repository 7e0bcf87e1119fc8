"""What ingest set aside: quarantined payloads and devices not in the registry, kept in gateway.db.

The agent cuts each quarantined message as it is set aside (``quarantine_row``) and writes
them and the unknown devices in the batch's transaction (``store``, ``record_unknown``);
``edge quarantine list`` and ``edge devices unknown`` read them back through
``quarantined`` and ``unknown_devices``. Everything here is bounded, whatever devices send:
a quarantined payload is kept truncated to ``[ingest] quarantine_keep_bytes`` (its length as
received is kept in ``payload_bytes``), topics and details are cut short, the table of
unknown devices keeps the ``[ingest] unknown_devices_max`` most recently seen, and ids are
kept to 128 characters. ``UnknownDevices`` is the same bound for the agent's counters in
memory.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from typing import Iterable, NamedTuple

__all__ = ["MAX_ID", "QuarantineRow", "UnknownDevices", "bound_unknown", "quarantine_row", "quarantined", "record_unknown",
           "store", "trim", "unknown_devices"]

MAX_ID = 128  # characters of an unknown device's id kept
MAX_TOPIC = 256  # characters of a topic kept
MAX_DETAIL = 1000  # characters of a detail kept


class QuarantineRow(NamedTuple):
    """One quarantined message as stored: the payload already cut to what is kept."""

    received_at: float
    topic: str
    payload: bytes  # at most quarantine_keep_bytes of it
    payload_bytes: int  # its length as received
    reason: str
    detail: str


def quarantine_row(received_at: float, topic: str, payload: bytes, reason: str, detail: str,
                   keep_bytes: int) -> QuarantineRow:
    """A message to quarantine, cut at once (so a batch waiting to be written holds no more than
    ``keep_bytes`` of each payload): ``keep_bytes`` of the payload, its full length, a topic of
    at most 256 characters and a detail of at most 1000."""
    keep = max(int(keep_bytes), 0)
    return QuarantineRow(float(received_at), str(topic)[:MAX_TOPIC], bytes(payload[:keep]), len(payload),
                         str(reason)[:64], str(detail)[:MAX_DETAIL])


def store(conn: sqlite3.Connection, rows: Iterable[QuarantineRow | tuple], keep_bytes: int | None = None) -> int:
    """Write quarantined messages; returns how many.

    ``rows`` are ``QuarantineRow`` (from ``quarantine_row``) or plain (received_at, topic,
    payload, reason, detail) tuples, which are cut here to ``keep_bytes`` of payload
    (``[ingest] quarantine_keep_bytes``; required for plain tuples). A QuarantineRow is cut
    again to ``keep_bytes`` when given, its ``payload_bytes`` unchanged."""
    prepared = []
    for row in rows:
        if not isinstance(row, QuarantineRow):
            if keep_bytes is None:
                raise ValueError("store: plain (received_at, topic, payload, reason, detail) rows need keep_bytes")
            row = quarantine_row(*row, keep_bytes=keep_bytes)
        elif keep_bytes is not None and len(row.payload) > keep_bytes:
            row = row._replace(payload=row.payload[:max(int(keep_bytes), 0)])
        prepared.append(row)
    conn.executemany(
        "INSERT INTO quarantine (received_at, topic, payload, payload_bytes, reason, detail) VALUES (?, ?, ?, ?, ?, ?)",
        prepared,
    )
    return len(prepared)


def record_unknown(conn: sqlite3.Connection, seen: Iterable[tuple[str, float, float, int, str]],
                   max_rows: int = 10000) -> int:
    """Count sightings of unknown devices: (device, first seen, last seen, messages, last topic).

    Ids are kept to 128 characters (sightings of ids that agree on those are merged) and
    topics to 256. The table then keeps the ``max_rows`` most recently seen devices
    (``[ingest] unknown_devices_max``); the rest are deleted in the same transaction.
    Returns how many were deleted."""
    merged: dict[str, list] = {}
    for device, first, last, count, topic in seen:
        key = str(device)[:MAX_ID]
        entry = merged.get(key)
        if entry is None:
            merged[key] = [first, last, count, str(topic)[:MAX_TOPIC]]
        else:
            entry[0], entry[2] = min(entry[0], first), entry[2] + count
            if last >= entry[1]:
                entry[1], entry[3] = last, str(topic)[:MAX_TOPIC]
    conn.executemany(
        "INSERT INTO unknown_devices (device, first_seen, last_seen, count, topic) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (device) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen), "
        "count = count + excluded.count, topic = excluded.topic",
        [(device, *entry) for device, entry in merged.items()],
    )
    return bound_unknown(conn, max_rows)


def bound_unknown(conn: sqlite3.Connection, max_rows: int) -> int:
    """Delete all but the ``max_rows`` most recently seen unknown devices; returns how many went."""
    (rows,) = conn.execute("SELECT count(*) FROM unknown_devices").fetchone()
    excess = rows - max(int(max_rows), 0)
    if excess <= 0:
        return 0
    return conn.execute(
        "DELETE FROM unknown_devices WHERE rowid IN "
        "(SELECT rowid FROM unknown_devices ORDER BY last_seen ASC, device DESC LIMIT ?)",
        [excess],
    ).rowcount


def quarantined(conn: sqlite3.Connection, reason: str | None = None, limit: int = 50) -> list[dict]:
    """The newest quarantined messages first, optionally of one reason.

    ``payload`` is what was kept (at most ``quarantine_keep_bytes``), ``payload_bytes`` the
    payload's length as received."""
    sql = "SELECT id, received_at, topic, payload, payload_bytes, reason, detail FROM quarantine"
    args: list = []
    if reason:
        sql += " WHERE reason = ?"
        args.append(reason)
    sql += " ORDER BY id DESC LIMIT ?"
    args.append(limit)
    columns = ("id", "received_at", "topic", "payload", "payload_bytes", "reason", "detail")
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


def unknown_devices(conn: sqlite3.Connection, limit: int | None = None) -> list[dict]:
    """Devices that sent messages but are not in the registry, most recently seen first."""
    columns = ("device", "first_seen", "last_seen", "count", "topic")
    sql = f"SELECT {', '.join(columns)} FROM unknown_devices ORDER BY last_seen DESC, device"
    args: list = []
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    return [dict(zip(columns, row)) for row in conn.execute(sql, args)]


class UnknownDevices(Mapping):
    """Messages per unknown device in memory, bounded: at most ``max_ids`` ids (the first seen,
    each kept to 128 characters); messages of any further id are counted in ``other``.

    A mapping of id -> messages (so it compares equal to a dict of the same counts); ``add``
    counts one message; ``total()`` counts them all, ``other`` included."""

    def __init__(self, max_ids: int = 10000):
        self.max_ids = max_ids
        self._counts: dict[str, int] = {}
        self.other = 0

    def add(self, device_id: str, messages: int = 1) -> None:
        key = device_id[:MAX_ID]
        counts = self._counts
        if key in counts:
            counts[key] += messages
        elif len(counts) < self.max_ids:
            counts[key] = messages
        else:
            self.other += messages

    def total(self) -> int:
        return sum(self._counts.values()) + self.other

    def __getitem__(self, device_id: str) -> int:
        return self._counts[device_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._counts)

    def __len__(self) -> int:
        return len(self._counts)

    def __repr__(self) -> str:
        return f"UnknownDevices({self._counts!r}, other={self.other})"
