"""The platform's store: every (order id, revision) once, each order's latest state, a count of
duplicates, the platform's decisions for the gateways, the gateways' reports and health, and
the console's users and the gateways' tokens. SQLite (a file) or PostgreSQL (database.py).

Idempotency is the database's: each item's key is a primary key and every insert is
``ON CONFLICT DO NOTHING``, so several platform processes can share one PostgreSQL and a batch
sent twice, or stored by two workers at once, is kept once. Refusals (bad requests and MQTT
messages) are counted in memory, by reason, per process since its start: counting them on
disk would let a flood of bad input cost one disk write each.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from uplink.receiver.database import Database, DatabaseUnavailable, StoreError, Tx, describe, migrate, open_database
from uplink.receiver.times import epoch

__all__ = ["ReceiverStore", "Stored", "StoreError", "DatabaseUnavailable", "UnstorableItem", "MIGRATIONS"]

# Each order's columns the console filters and sorts by, kept from its latest revision.
ORDER_FIELDS = ("gateway", "revision", "change", "state", "severity", "category", "grid", "zone", "team", "device",
                "device_kind", "rule", "title", "address", "verification", "repeat_of")


def _backfill_orders(tx: Tx, dialect: str) -> None:
    """Version 3: the orders table from the revisions a receiver already had."""
    latest: dict[str, tuple] = {}
    for order_id, revision, gateway, received_at, body in tx.execute(
            "SELECT order_id, revision, gateway, received_at, body FROM revisions ORDER BY order_id, revision").fetchall():
        first = latest.get(order_id, (None, None, None, received_at))[3]
        latest[order_id] = (gateway, received_at, orjson.loads(body), first)
    rows = [_order_row(gateway, body, received_at, first) for gateway, received_at, body, first in latest.values()]
    tx.insert("orders", ORDER_COLUMNS, sorted(rows), UPDATE_ORDER)


# Version 1 is the schema the first receivers created (before versions were kept): IF NOT
# EXISTS makes it a no-op on their files. BIGINT and FLOAT are SQLite's INTEGER and REAL.
MIGRATIONS: tuple[tuple, ...] = (
    (
        "CREATE TABLE IF NOT EXISTS revisions (order_id TEXT, revision BIGINT, gateway TEXT, received_at FLOAT, "
        "body TEXT, PRIMARY KEY (order_id, revision))",
        "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value BIGINT)",
        "CREATE TABLE IF NOT EXISTS telemetry (device TEXT, interval BIGINT, gateway TEXT, received_at FLOAT, "
        "body TEXT, PRIMARY KEY (device, interval))",
        "CREATE TABLE IF NOT EXISTS changes (seq {id}, gateway TEXT, type TEXT, order_id TEXT, "
        "state TEXT, note TEXT, content TEXT, at FLOAT)",
    ),
    (  # 2: the gateways' reports on the changes they applied or refused
        "CREATE TABLE reports (gateway TEXT NOT NULL, seq BIGINT NOT NULL, type TEXT NOT NULL, status TEXT NOT NULL, "
        "reason TEXT NOT NULL, detail TEXT NOT NULL, file TEXT, at TEXT, received_at FLOAT NOT NULL, body TEXT NOT NULL, "
        "PRIMARY KEY (gateway, seq))",
        "CREATE INDEX reports_by_arrival ON reports (received_at)",
    ),
    (  # 3: each order's latest state (the console's list), the gateways, who decided, users and tokens
        "CREATE TABLE orders (order_id TEXT PRIMARY KEY, gateway TEXT NOT NULL, revision BIGINT NOT NULL, "
        "change TEXT, state TEXT, severity TEXT, category TEXT, grid TEXT, zone TEXT, team TEXT, device TEXT, "
        "device_kind TEXT, rule TEXT, title TEXT, address TEXT, verification TEXT, repeat_of TEXT, "
        "lat FLOAT, lon FLOAT, opened_at FLOAT, updated_at FLOAT, first_received_at FLOAT NOT NULL, "
        "received_at FLOAT NOT NULL, accepted_at FLOAT, dispatched_at FLOAT, resolved_at FLOAT, closed_at FLOAT, "
        "body TEXT NOT NULL)",
        "CREATE INDEX orders_by_arrival ON orders (first_received_at)",
        "CREATE INDEX orders_by_state ON orders (state, first_received_at)",
        "CREATE INDEX orders_by_grid ON orders (grid, first_received_at)",
        "CREATE INDEX orders_by_gateway ON orders (gateway, first_received_at)",
        "CREATE INDEX changes_by_gateway ON changes (gateway, seq)",
        "CREATE INDEX changes_by_order ON changes (order_id, seq)",
        "CREATE INDEX changes_by_type ON changes (type, seq)",
        "ALTER TABLE changes ADD COLUMN actor TEXT NOT NULL DEFAULT ''",
        "CREATE TABLE gateways (gateway TEXT PRIMARY KEY, first_contact FLOAT NOT NULL, last_contact FLOAT NOT NULL, "
        "batches BIGINT NOT NULL DEFAULT 0, items BIGINT NOT NULL DEFAULT 0, health TEXT, health_at FLOAT)",
        "CREATE TABLE users (name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, role TEXT NOT NULL, "
        "created_at FLOAT NOT NULL, disabled INTEGER NOT NULL DEFAULT 0)",
        "CREATE TABLE sessions (token_hash TEXT PRIMARY KEY, name TEXT NOT NULL, created_at FLOAT NOT NULL, "
        "expires_at FLOAT NOT NULL)",
        "CREATE TABLE gateway_tokens (token_hash TEXT PRIMARY KEY, gateway TEXT NOT NULL, label TEXT NOT NULL, "
        "created_at FLOAT NOT NULL, revoked_at FLOAT)",
        "CREATE INDEX gateway_tokens_by_gateway ON gateway_tokens (gateway)",
        "CREATE TABLE mqtt_listeners (client_id TEXT PRIMARY KEY, grp TEXT NOT NULL, started_at FLOAT NOT NULL)",
        _backfill_orders,
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

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


def _or_nan(seconds: float | None) -> float:
    return math.nan if seconds is None else seconds


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _text(value) -> str | None:
    """A column's text: the value as sent when it is a string, else its JSON; NUL (which PostgreSQL
    cannot keep in text) as U+FFFD."""
    if value is None:
        return None
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _order_row(gateway: str, body: dict, received_at: float, first_received_at: float) -> tuple:
    location = body.get("location") if isinstance(body.get("location"), dict) else {}
    fields = [_text(gateway) if name == "gateway" else (body.get("revision") if name == "revision" else _text(body.get(name)))
              for name in ORDER_FIELDS]
    return (_text(body["order_id"]), *fields, _number(location.get("lat")), _number(location.get("lon")),
            epoch(body.get("opened_at")), epoch(body.get("updated_at")), first_received_at, received_at,
            orjson.dumps(body).decode())


def _key(where: str, value: str) -> str:
    if "\x00" in value:
        raise UnstorableItem(where, "contains a NUL character, which the database cannot store")
    return value


@dataclass
class _Batch:
    gateway: str
    rows: list  # (order id, revision, body, text), sorted by key
    summaries: list  # (device, interval, text)
    notes: list  # (seq, body, text)
    health: str | None


def _prepare(gateway: str, revisions: list[dict], telemetry: list[dict], reports: list[dict], health: dict | None) -> _Batch:
    """A batch checked and encoded for storage (UnstorableItem when it cannot be), keys sorted so that
    concurrent transactions take their row locks in the same order."""
    _key("gateway", gateway)
    rows = sorted(((_key(f"revisions[{i}].order_id", body["order_id"]), body["revision"], body,
                    _encode(f"revisions[{i}]", body)) for i, body in enumerate(revisions)), key=lambda row: row[:2])
    summaries = sorted((_key(f"telemetry[{i}].device", body["device"]), body["interval"], _encode(f"telemetry[{i}]", body))
                       for i, body in enumerate(telemetry))
    notes = sorted(((body["seq"], body, _encode(f"reports[{i}]", body)) for i, body in enumerate(reports)),
                   key=lambda note: note[0])
    return _Batch(gateway, rows, summaries, notes,
                  _encode("health", health) if health is not None else None)


REVISION_COLUMNS = (("order_id", "text"), ("revision", "bigint"), ("gateway", "text"), ("received_at", "float8"),
                    ("body", "text"))
ORDER_COLUMNS = (("order_id", "text"), *((name, "bigint" if name == "revision" else "text") for name in ORDER_FIELDS),
                 ("lat", "float8"), ("lon", "float8"), ("opened_at", "float8"), ("updated_at", "float8"),
                 ("first_received_at", "float8"), ("received_at", "float8"), ("body", "text"))
TELEMETRY_COLUMNS = (("device", "text"), ("interval", "bigint"), ("gateway", "text"), ("received_at", "float8"),
                     ("body", "text"))
REPORT_COLUMNS = (("gateway", "text"), ("seq", "bigint"), ("type", "text"), ("status", "text"), ("reason", "text"),
                  ("detail", "text"), ("file", "text"), ("at", "text"), ("received_at", "float8"), ("body", "text"))
GATEWAY_COLUMNS = (("gateway", "text"), ("first_contact", "float8"), ("last_contact", "float8"), ("batches", "bigint"),
                   ("items", "bigint"), ("health", "text"), ("health_at", "float8"))
UPDATE_ORDER = (f"ON CONFLICT (order_id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in ORDER_FIELDS)}, "
                "lat = excluded.lat, lon = excluded.lon, opened_at = excluded.opened_at, updated_at = excluded.updated_at, "
                "received_at = excluded.received_at, body = excluded.body WHERE orders.revision < excluded.revision")
UPDATE_GATEWAY = ("ON CONFLICT (gateway) DO UPDATE SET last_contact = excluded.last_contact, "
                  "batches = gateways.batches + excluded.batches, items = gateways.items + excluded.items, "
                  "health = COALESCE(excluded.health, gateways.health), "
                  "health_at = COALESCE(excluded.health_at, gateways.health_at)")


def _store(tx: Tx, now: float, batches: list[_Batch]) -> int:
    """Every batch of one transaction, one statement per table, each table's rows in key order (two
    transactions never wait for each other in a cycle); returns the items that were already there."""
    revisions = sorted((o, r, b.gateway, now, text) for b in batches for o, r, _, text in b.rows)
    latest: dict[str, tuple[str, dict]] = {}
    for batch in batches:  # each order's newest revision in the transaction
        for order_id, revision, body, _ in batch.rows:
            kept = latest.get(order_id)
            if kept is None or kept[1]["revision"] < revision:
                latest[order_id] = (batch.gateway, body)
    orders = [_order_row(gateway, body, now, now) for _, (gateway, body) in sorted(latest.items())]
    summaries = sorted((d, i, b.gateway, now, text) for b in batches for d, i, text in b.summaries)
    reports = sorted(((b.gateway, seq, _text(body["type"]), _text(body["status"]), _text(body.get("reason") or ""),
                       _text(body.get("detail") or ""), _text(body.get("file")), _text(body.get("at")), now, text)
                      for b in batches for seq, body, text in b.notes), key=lambda row: row[:2])
    contacts: dict[str, list] = {}
    for b in batches:
        row = contacts.setdefault(b.gateway, [b.gateway, now, now, 0, 0, None, None])
        row[3] += 1
        row[4] += len(b.rows) + len(b.summaries) + len(b.notes)
        if b.health is not None:
            row[5], row[6] = b.health, now
    duplicates = len(revisions) - tx.insert("revisions", REVISION_COLUMNS, revisions, "ON CONFLICT DO NOTHING")
    tx.insert("orders", ORDER_COLUMNS, orders, UPDATE_ORDER)
    duplicates += len(summaries) - tx.insert("telemetry", TELEMETRY_COLUMNS, summaries, "ON CONFLICT DO NOTHING")
    duplicates += len(reports) - tx.insert("reports", REPORT_COLUMNS, reports, "ON CONFLICT DO NOTHING")
    tx.insert("gateways", GATEWAY_COLUMNS, [contacts[g] for g in sorted(contacts)], UPDATE_GATEWAY)
    if duplicates:
        tx.execute("INSERT INTO counters (name, value) VALUES ('duplicates', ?) "
                   "ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value", [duplicates])
    return duplicates


# When the platform's decision on an order is first made, for the console's figures.
DECIDED_AT = {"accepted": "accepted_at", "dispatched": "dispatched_at", "resolved": "resolved_at", "closed": "closed_at",
              "rejected": "closed_at"}


class ReceiverStore:
    """The platform's data over one database: ``target`` is a SQLite file's path or ``postgresql://...``."""

    def __init__(self, target: str | Path, retry_for: float = 10.0):
        self.target = target
        self.where = describe(target)
        self.db: Database = open_database(target, retry_for)
        try:
            self.schema_found = migrate(self.db, MIGRATIONS, self.where)
        except BaseException:
            self.db.close()
            raise
        self.dialect = self.db.dialect
        self._refused: Counter[str] = Counter()
        self._refused_lock = threading.Lock()

    # -- what the gateways send ------------------------------------------------------------

    def add(self, gateway: str, revisions: list[dict], telemetry: list[dict] | None = None,
            reports: list[dict] | None = None, health: dict | None = None) -> Stored:
        """Store a checked batch in one transaction; a duplicate is dropped, counted, and acknowledged.

        Raises UnstorableItem (nothing stored) when an item cannot be encoded for storage, and
        DatabaseUnavailable when the database did not answer (nothing acknowledged).
        """
        batch = _prepare(gateway, revisions, telemetry or [], reports or [], health)
        duplicates = self.db.write(lambda tx: _store(tx, time.time(), [batch]))
        return Stored(acknowledged=[(o, r) for o, r, _, _ in batch.rows],
                      telemetry_acknowledged=[(d, i) for d, i, _ in batch.summaries],
                      reports_acknowledged=[seq for seq, _, _ in batch.notes], duplicates=duplicates)

    def add_many(self, batches: list[tuple[str, list[dict], list[dict], list[dict], dict | None]]) -> int:
        """Several gateways' batches (gateway, revisions, telemetry, reports, health) in one transaction;
        returns how many of their items the platform already had."""
        prepared = [_prepare(*batch) for batch in batches]
        return self.db.write(lambda tx: _store(tx, time.time(), prepared))

    def refuse(self, reason: str) -> None:
        """Count one refused request or message."""
        with self._refused_lock:
            self._refused[reason] += 1

    def refused(self) -> dict[str, int]:
        with self._refused_lock:
            return dict(sorted(self._refused.items()))

    # -- the platform's decisions ----------------------------------------------------------

    def gateway_of(self, order_id: str) -> str | None:
        row = self.db.read_one("SELECT gateway FROM orders WHERE order_id = ?", [order_id])
        return row["gateway"] if row else None

    def add_change(self, order_id: str, state: str, note: str = "", actor: str = "") -> dict | None:
        """Record the platform's decision on an order, for its gateway to fetch; None if the order is unknown."""
        if "\x00" in order_id:
            return None
        column = DECIDED_AT[state]

        def decide(tx: Tx) -> dict | None:
            row = tx.execute("SELECT gateway FROM orders WHERE order_id = ?", [order_id]).fetchone()
            if row is None:
                return None
            at = time.time()
            seq = tx.execute(
                "INSERT INTO changes (gateway, type, order_id, state, note, content, at, actor) "
                "VALUES (?, 'order', ?, ?, ?, '', ?, ?) RETURNING seq",
                [row[0], order_id, state, _text(note), at, _text(actor)]).fetchone()[0]
            tx.execute(f"UPDATE orders SET {column} = COALESCE({column}, ?) WHERE order_id = ?", [at, order_id])
            return {"seq": seq, "type": "order", "gateway": row[0], "order_id": order_id, "state": state,
                    "note": note, "at": at}

        return self.db.write(decide)

    def add_rule_file(self, gateway: str, name: str, content: str, actor: str = "") -> dict:
        """A new rule file for a gateway, which validates it before it applies it."""
        at = time.time()
        seq = self.db.write(lambda tx: tx.execute(
            "INSERT INTO changes (gateway, type, order_id, state, note, content, at, actor) "
            "VALUES (?, 'rules', '', '', ?, ?, ?, ?) RETURNING seq",
            [_key("gateway", gateway), name, _text(content), at, _text(actor)]).fetchone()[0])
        return {"seq": seq, "type": "rules", "gateway": gateway, "file": name, "content": content, "at": at}

    def changes(self, gateway: str, after: int, limit: int = 500) -> list[dict]:
        rows = self.db.read("SELECT seq, type, order_id, state, note, content, at FROM changes WHERE gateway = ? "
                            "AND seq > ? ORDER BY seq LIMIT ?", [_text(gateway), after, limit])
        out = []
        for row in rows:
            if row["type"] == "rules":
                out.append({"seq": row["seq"], "type": "rules", "file": row["note"], "content": row["content"],
                            "at": row["at"]})
            else:
                out.append({"seq": row["seq"], "type": "order", "order_id": row["order_id"], "state": row["state"],
                            "note": row["note"], "at": row["at"]})
        return out

    def decisions(self, order_id: str) -> list[dict]:
        """The platform's decisions on one order, oldest first (seq, state, note, at, actor)."""
        return self.db.read("SELECT seq, state, note, at, actor FROM changes WHERE order_id = ? AND type = 'order' "
                            "ORDER BY seq", [_text(order_id)])

    # -- the MQTT listeners' sessions --------------------------------------------------------

    def note_listener(self, client_id: str, group: str) -> None:
        """A listener's client id, so that a later start with fewer workers can retire its session."""
        self.db.write(lambda tx: tx.execute(
            "INSERT INTO mqtt_listeners (client_id, grp, started_at) VALUES (?, ?, ?) ON CONFLICT (client_id) "
            "DO UPDATE SET grp = excluded.grp, started_at = excluded.started_at", [client_id, group, time.time()]))

    def listeners(self) -> list[dict]:
        return self.db.read("SELECT client_id, grp, started_at FROM mqtt_listeners ORDER BY client_id")

    def forget_listener(self, client_id: str) -> None:
        self.db.write(lambda tx: tx.execute("DELETE FROM mqtt_listeners WHERE client_id = ?", [client_id]))

    # -- reading ---------------------------------------------------------------------------

    def orders(self) -> list[dict]:
        """The latest revision of every order, with the platform's state when it set one."""
        rows = self.db.read(
            "SELECT body, (SELECT state FROM changes c WHERE c.order_id = o.order_id AND c.type = 'order' "
            "ORDER BY seq DESC LIMIT 1) AS platform_state FROM orders o ORDER BY first_received_at, order_id")
        orders = []
        for row in rows:
            order = orjson.loads(row["body"])
            order["platform_state"] = row["platform_state"]
            orders.append(order)
        return orders

    def telemetry(self) -> list[dict]:
        return [orjson.loads(r["body"]) for r in self.db.read("SELECT body FROM telemetry ORDER BY interval, device")]

    def revisions(self) -> list[dict]:
        return [orjson.loads(r["body"])
                for r in self.db.read("SELECT body FROM revisions ORDER BY received_at, order_id, revision")]

    def order_revisions(self, order_id: str) -> list[dict]:
        """Every revision of one order, oldest first, each with when the platform received it."""
        out = []
        for row in self.db.read("SELECT received_at, body FROM revisions WHERE order_id = ? ORDER BY revision",
                                [_text(order_id)]):
            body = orjson.loads(row["body"])
            body.setdefault("received_at", row["received_at"])
            out.append(body)
        return out

    def reports(self, gateway: str | None = None, limit: int = 500, status: str | None = None) -> list[dict]:
        """The newest ``limit`` reports (of one gateway, of one status), oldest first, each with its gateway."""
        where, args = [], []
        if gateway is not None:
            where.append("gateway = ?")
            args.append(_text(gateway))
        if status is not None:
            where.append("status = ?")
            args.append(_text(status))
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = self.db.read(f"SELECT gateway, received_at, body FROM reports {clause}"
                            "ORDER BY received_at DESC, seq DESC LIMIT ?", [*args, limit])
        out = []
        for row in reversed(rows):
            report = orjson.loads(row["body"])
            report["gateway"], report["received_at"] = row["gateway"], row["received_at"]
            out.append(report)
        return out

    def gateways(self) -> list[dict]:
        """Every gateway heard from: first and last contact, batches, items, its latest health summary."""
        out = []
        for row in self.db.read("SELECT gateway, first_contact, last_contact, batches, items, health, health_at "
                                "FROM gateways ORDER BY gateway"):
            row["health"] = orjson.loads(row["health"]) if row["health"] else None
            out.append(row)
        return out

    def quality(self, repeat_days: tuple[int, ...] = (7, 30)) -> dict:
        """The district's re-check figures (docs/uplink.md, "Fixed means fixed"), overall and by grid, team, category.

        Of the orders the gateways re-checked after a resolution: the share the sensors confirmed
        (verified), found not fixed, or could not check (unverified); and of the verified fixes,
        the share whose problem (same rule, same device) came back within 7 and 30 days.
        """
        rows = self.db.read("SELECT body FROM revisions ORDER BY order_id, revision")
        latest: dict[str, dict] = {}
        outcomes: dict[str, list[str]] = {}
        resolutions: dict[str, int] = {}
        fixes: list[tuple[str, str, str, float]] = []  # (order, rule, device, verified at)
        opened: list[tuple[str, str, str, float]] = []  # (order, rule, device, opened at)
        for row in rows:
            body = orjson.loads(row["body"])
            order_id = body.get("order_id")
            latest[order_id] = body
            change = body.get("change")
            if change == "resolved":
                resolutions[order_id] = resolutions.get(order_id, 0) + 1
            elif change in ("verified", "not_fixed", "unverified"):
                outcomes.setdefault(order_id, []).append(change)
                if change == "verified" and body.get("verified_at"):
                    fixes.append((order_id, body.get("rule"), body.get("device"), _or_nan(epoch(body["verified_at"]))))
            elif change == "opened" and body.get("opened_at"):
                opened.append((order_id, body.get("rule"), body.get("device"), _or_nan(epoch(body["opened_at"]))))

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
        def count(tx: Tx) -> dict:
            one = lambda sql: tx.execute(sql).fetchone()[0]  # noqa: E731
            duplicates = tx.execute("SELECT value FROM counters WHERE name = 'duplicates'").fetchone()
            return {"orders": one("SELECT count(*) FROM orders"), "revisions": one("SELECT count(*) FROM revisions"),
                    "duplicates": duplicates[0] if duplicates else 0, "telemetry": one("SELECT count(*) FROM telemetry"),
                    "reports": one("SELECT count(*) FROM reports")}

        return {**self.db.write(count), "refused": self.refused()}

    def close(self) -> None:
        self.db.close()
