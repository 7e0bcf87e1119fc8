"""The receiver's SQLite file: every (order id, revision) once, a count of duplicates, the
platform's decisions for the gateways, and the gateways' reports on them.

The schema is versioned (``PRAGMA user_version``): each step of ``MIGRATIONS`` runs once, in
its own transaction, when a receiver opens a file older than itself; a file is never recreated.
Refusals (bad requests and MQTT messages) are counted in memory, by reason, since the start:
counting them on disk would let a flood of bad input cost one disk write each.
"""

from __future__ import annotations

import datetime as dt
import math
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

# Version 1 is the schema the first receivers created (before versions were kept): IF NOT
# EXISTS makes it a no-op on their files.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE IF NOT EXISTS revisions (order_id TEXT, revision INTEGER, gateway TEXT, received_at FLOAT, "
        "body TEXT, PRIMARY KEY (order_id, revision))",
        "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER)",
        "CREATE TABLE IF NOT EXISTS telemetry (device TEXT, interval INTEGER, gateway TEXT, received_at FLOAT, "
        "body TEXT, PRIMARY KEY (device, interval))",
        "CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY, gateway TEXT, type TEXT, order_id TEXT, "
        "state TEXT, note TEXT, content TEXT, at FLOAT)",
    ),
    (  # 2: the gateways' reports on the changes they applied or refused
        "CREATE TABLE reports (gateway TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, status TEXT NOT NULL, "
        "reason TEXT NOT NULL, detail TEXT NOT NULL, file TEXT, at TEXT, received_at FLOAT NOT NULL, body TEXT NOT NULL, "
        "PRIMARY KEY (gateway, seq))",
        "CREATE INDEX reports_by_arrival ON reports (received_at)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(Exception):
    """The receiver's database cannot be used as it is (say, written by a newer receiver)."""


class UnstorableItem(ValueError):
    """An item passed its checks but cannot be written (nested deeper than JSON storage allows)."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where = where


@dataclass
class Stored:
    """What one batch left in the store; everything listed is acknowledged to the gateway."""

    acknowledged: list[tuple[str, int]] = field(default_factory=list)
    telemetry_acknowledged: list[tuple[str, int]] = field(default_factory=list)
    reports_acknowledged: list[int] = field(default_factory=list)
    duplicates: int = 0


def _encode(where: str, body: dict) -> str:
    try:
        return orjson.dumps(body).decode()
    except orjson.JSONEncodeError as error:
        raise UnstorableItem(where, str(error)) from None


def migrate(conn: sqlite3.Connection, path: Path) -> int:
    """Bring the file's schema up to SCHEMA_VERSION; returns the version it had."""
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found > SCHEMA_VERSION:
        raise StoreError(f"{path} has schema version {found}; this receiver knows versions up to {SCHEMA_VERSION}: "
                         "run a newer receiver, or give another --db")
    for version in range(found + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version - 1]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return found


def _seconds(text: str) -> float:
    """An ISO 8601 time from a revision, in seconds (nan when it is not one)."""
    try:
        return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return math.nan


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


class ReceiverStore:
    def __init__(self, path: Path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.lock = threading.Lock()
        self.schema_found = migrate(self.conn, path)
        self._refused: Counter[str] = Counter()
        self._refused_lock = threading.Lock()

    # -- what the gateways send ------------------------------------------------------------

    def add(self, gateway: str, revisions: list[dict], telemetry: list[dict] | None = None,
            reports: list[dict] | None = None) -> Stored:
        """Store a checked batch in one transaction; a duplicate is dropped, counted, and acknowledged.

        Raises UnstorableItem (nothing stored) when an item cannot be encoded for storage.
        """
        now = time.time()
        rows = [(body["order_id"], body["revision"], _encode(f"revisions[{i}]", body)) for i, body in enumerate(revisions)]
        summaries = [(body["device"], body["interval"], _encode(f"telemetry[{i}]", body))
                     for i, body in enumerate(telemetry or [])]
        notes = [(body, _encode(f"reports[{i}]", body)) for i, body in enumerate(reports or [])]
        stored = Stored()
        with self.lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                for order_id, revision, text in rows:
                    cursor = conn.execute(
                        "INSERT OR IGNORE INTO revisions (order_id, revision, gateway, received_at, body) VALUES (?, ?, ?, ?, ?)",
                        [order_id, revision, gateway, now, text])
                    stored.duplicates += cursor.rowcount == 0
                    stored.acknowledged.append((order_id, revision))
                for device, interval, text in summaries:
                    cursor = conn.execute(
                        "INSERT OR IGNORE INTO telemetry (device, interval, gateway, received_at, body) VALUES (?, ?, ?, ?, ?)",
                        [device, interval, gateway, now, text])
                    stored.duplicates += cursor.rowcount == 0
                    stored.telemetry_acknowledged.append((device, interval))
                for body, text in notes:
                    cursor = conn.execute(
                        "INSERT OR IGNORE INTO reports (gateway, seq, type, status, reason, detail, file, at, received_at, body) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [gateway, body["seq"], body["type"], body["status"], body.get("reason") or "",
                         body.get("detail") or "", body.get("file"), body.get("at"), now, text])
                    stored.duplicates += cursor.rowcount == 0
                    stored.reports_acknowledged.append(body["seq"])
                if stored.duplicates:
                    conn.execute(
                        "INSERT INTO counters (name, value) VALUES ('duplicates', ?) "
                        "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                        [stored.duplicates])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return stored

    def refuse(self, reason: str) -> None:
        """Count one refused request or message."""
        with self._refused_lock:
            self._refused[reason] += 1

    def refused(self) -> dict[str, int]:
        with self._refused_lock:
            return dict(sorted(self._refused.items()))

    # -- the platform's decisions ----------------------------------------------------------

    def gateway_of(self, order_id: str) -> str | None:
        with self.lock:
            row = self.conn.execute("SELECT gateway FROM revisions WHERE order_id = ? LIMIT 1", [order_id]).fetchone()
        return row[0] if row else None

    def add_change(self, order_id: str, state: str, note: str = "") -> dict | None:
        """Record the platform's decision on an order, for its gateway to fetch; None if the order is unknown."""
        gateway = self.gateway_of(order_id)
        if gateway is None:
            return None
        at = time.time()
        with self.lock:
            cursor = self.conn.execute(
                "INSERT INTO changes (gateway, type, order_id, state, note, content, at) VALUES (?, 'order', ?, ?, ?, '', ?)",
                [gateway, order_id, state, note, at])
        return {"seq": cursor.lastrowid, "type": "order", "gateway": gateway, "order_id": order_id, "state": state,
                "note": note, "at": at}

    def add_rule_file(self, gateway: str, name: str, content: str) -> dict:
        """A new rule file for a gateway, which validates it before it applies it."""
        at = time.time()
        with self.lock:
            cursor = self.conn.execute(
                "INSERT INTO changes (gateway, type, order_id, state, note, content, at) VALUES (?, 'rules', '', '', ?, ?, ?)",
                [gateway, name, content, at])
        return {"seq": cursor.lastrowid, "type": "rules", "gateway": gateway, "file": name, "content": content, "at": at}

    def changes(self, gateway: str, after: int, limit: int = 500) -> list[dict]:
        with self.lock:
            rows = self.conn.execute(
                "SELECT seq, type, order_id, state, note, content, at FROM changes WHERE gateway = ? AND seq > ? "
                "ORDER BY seq LIMIT ?", [gateway, after, limit]).fetchall()
        out = []
        for seq, kind, order_id, state, note, content, at in rows:
            if kind == "rules":
                out.append({"seq": seq, "type": "rules", "file": note, "content": content, "at": at})
            else:
                out.append({"seq": seq, "type": "order", "order_id": order_id, "state": state, "note": note, "at": at})
        return out

    # -- reading ---------------------------------------------------------------------------

    def orders(self) -> list[dict]:
        """The latest revision of every order, with the platform's state when it set one."""
        with self.lock:
            rows = self.conn.execute(
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

    def telemetry(self) -> list[dict]:
        with self.lock:
            rows = self.conn.execute("SELECT body FROM telemetry ORDER BY interval, device").fetchall()
        return [orjson.loads(body) for (body,) in rows]

    def revisions(self) -> list[dict]:
        with self.lock:
            rows = self.conn.execute("SELECT body FROM revisions ORDER BY received_at, order_id, revision").fetchall()
        return [orjson.loads(body) for (body,) in rows]

    def order_revisions(self, order_id: str) -> list[dict]:
        """Every revision of one order, oldest first."""
        with self.lock:
            rows = self.conn.execute("SELECT body FROM revisions WHERE order_id = ? ORDER BY revision", [order_id]).fetchall()
        return [orjson.loads(body) for (body,) in rows]

    def reports(self, gateway: str | None = None, limit: int = 500, status: str | None = None) -> list[dict]:
        """The newest ``limit`` reports (of one gateway, of one status), oldest first, each with its gateway."""
        where, args = [], []
        if gateway is not None:
            where.append("gateway = ?")
            args.append(gateway)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        with self.lock:
            rows = self.conn.execute(
                f"SELECT gateway, received_at, body FROM reports {clause}ORDER BY received_at DESC, seq DESC LIMIT ?",
                [*args, limit]).fetchall()
        out = []
        for gw, received_at, body in reversed(rows):
            report = orjson.loads(body)
            report["gateway"], report["received_at"] = gw, received_at
            out.append(report)
        return out

    def quality(self, repeat_days: tuple[int, ...] = (7, 30)) -> dict:
        """The district's re-check figures (docs/uplink.md, "Fixed means fixed"), overall and by grid, team, category.

        Of the orders the gateways re-checked after a resolution: the share the sensors confirmed
        (verified), found not fixed, or could not check (unverified); and of the verified fixes,
        the share whose problem (same rule, same device) came back within 7 and 30 days.
        """
        with self.lock:
            rows = self.conn.execute("SELECT body FROM revisions ORDER BY order_id, revision").fetchall()
        latest: dict[str, dict] = {}
        outcomes: dict[str, list[str]] = {}
        resolutions: dict[str, int] = {}
        fixes: list[tuple[str, str, str, float]] = []  # (order, rule, device, verified at)
        opened: list[tuple[str, str, str, float]] = []  # (order, rule, device, opened at)
        for (text,) in rows:
            body = orjson.loads(text)
            order_id = body.get("order_id")
            latest[order_id] = body
            change = body.get("change")
            if change == "resolved":
                resolutions[order_id] = resolutions.get(order_id, 0) + 1
            elif change in ("verified", "not_fixed", "unverified"):
                outcomes.setdefault(order_id, []).append(change)
                if change == "verified" and body.get("verified_at"):
                    fixes.append((order_id, body.get("rule"), body.get("device"), _seconds(body["verified_at"])))
            elif change == "opened" and body.get("opened_at"):
                opened.append((order_id, body.get("rule"), body.get("device"), _seconds(body["opened_at"])))

        def came_back(fix: tuple, days: int) -> bool:
            order_id, rule, device, at = fix
            return any(o != order_id and r == rule and d == device and at < t <= at + days * 86400.0
                       for o, r, d, t in opened)

        def figures(keep) -> dict:
            ids = {o for o in latest if keep(latest[o])}
            counts = {name: sum(outcomes.get(o, []).count(name) for o in ids)
                      for name in ("verified", "not_fixed", "unverified")}
            checked = sum(counts.values())
            mine = [f for f in fixes if f[0] in ids]
            out = {"resolutions": sum(resolutions.get(o, 0) for o in ids), "checked": checked, **counts,
                   "verified_share": _share(counts["verified"], checked),
                   "not_fixed_share": _share(counts["not_fixed"], checked),
                   "unverified_share": _share(counts["unverified"], checked),
                   "repeats_marked": sum(1 for o in ids if latest[o].get("repeat_of"))}
            for days in repeat_days:
                back = sum(1 for f in mine if came_back(f, days))
                out[f"repeat_rate_{days}d"] = _share(back, len(mine))
            return out

        result: dict = {"overall": figures(lambda body: True)}
        for key in ("grid", "team", "category"):
            values = sorted({str(body.get(key, "")) for body in latest.values()})
            result[f"by_{key}"] = {v: figures(lambda body, v=v, k=key: str(body.get(k, "")) == v) for v in values}
        return result

    def stats(self) -> dict:
        with self.lock:
            orders = self.conn.execute("SELECT count(DISTINCT order_id) FROM revisions").fetchone()[0]
            revisions = self.conn.execute("SELECT count(*) FROM revisions").fetchone()[0]
            row = self.conn.execute("SELECT value FROM counters WHERE name = 'duplicates'").fetchone()
            summaries = self.conn.execute("SELECT count(*) FROM telemetry").fetchone()[0]
            reports = self.conn.execute("SELECT count(*) FROM reports").fetchone()[0]
        return {"orders": orders, "revisions": revisions, "duplicates": row[0] if row else 0, "telemetry": summaries,
                "reports": reports, "refused": self.refused()}

    def close(self) -> None:
        with self.lock:
            self.conn.close()
