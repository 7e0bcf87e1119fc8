"""Work orders: one order per real problem, kept in the gateway's SQLite file.

An order is keyed by (rule, device) while it is live (not closed or rejected): the same
problem seen again updates that order and never opens a second. Every change is a new
revision, written to the outbox in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import sqlite3
import time
from dataclasses import dataclass
from typing import Callable

import orjson
import sqlite_utils

from edge.engine.engine import Transition
from edge.orders import verification
from edge.orders.categories import Categories, escalated
from edge.orders.verification import DeviceView, Member
from edge.outbox import Outbox, transaction

log = logging.getLogger(__name__)

LIVE_STATES = ("opened", "cleared", "accepted", "dispatched", "resolved")

# What the central platform may do to an order in each state (closed and rejected are final).
PLATFORM_TRANSITIONS = {
    "opened": ("accepted", "rejected", "closed"),
    "cleared": ("accepted", "rejected", "closed"),
    "accepted": ("dispatched", "resolved", "rejected", "closed"),
    "dispatched": ("resolved", "closed"),
    "resolved": ("dispatched", "closed"),
}


class OrderError(Exception):
    """A change the gateway refuses; ``reason`` is unknown_order or illegal_transition."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason

ORDER_COLUMNS = (
    "id", "rule", "device", "kind", "category", "severity", "title", "grid", "zone", "team",
    "address", "lat", "lon", "state", "revision", "opened_at", "updated_at", "last_seen_at", "evidence",
    "escalations", "escalate_from", "verification", "resolved_at", "verified_at", "repeat_of",
)
WAITING_STATES = ("opened", "cleared")  # not yet accepted by the platform
ORDER_STATES = (*LIVE_STATES, "closed", "rejected")


@dataclass(frozen=True)
class Change:
    order_id: str
    revision: int
    state: str
    change: str  # "opened", "reopened", "grouped", "updated", "cleared", "escalated" or the platform's decision


def iso(ts: float) -> str:
    """``ts`` (seconds since the epoch) as ISO 8601 UTC; a time no calendar can show never raises.

    Ingest refuses device times outside its window ([ingest] max_future / max_past), so this
    only guards against a bug elsewhere turning into a crash loop."""
    try:
        return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (ValueError, OverflowError, OSError):
        return "invalid-time"


def render_title(transition: Transition) -> str:
    rule, device = transition.rule, transition.device
    value = transition.evidence[0].value if transition.evidence else float("nan")
    fields = {
        "device": device.id, "kind": device.kind, "rule": rule.name, "address": device.address,
        "grid": device.grid, "zone": device.zone, "team": device.team, "value": value,
        "metric": transition.evidence[0].metric if transition.evidence else "",
        "category": rule.spec.order.category,
    }
    try:
        return rule.spec.order.title.format_map(fields)
    except (ValueError, TypeError, KeyError, IndexError):  # e.g. {value:.1f} given a camera's text
        return f"{rule.name} on {device.id} at {device.address}"


def order_id(gateway: str, rule: str, device: str, opened_at: float) -> str:
    """The id of the order a problem opens: the same problem at the same device time gives the same id,
    so a gateway that replays its changelog after a crash names its orders as it did before."""
    digest = hashlib.sha256(f"{rule}\0{device}\0{opened_at!r}".encode()).hexdigest()[:16]
    return f"{gateway}-{digest}"


DeviceClock = Callable[[str], float]  # device id -> that device's clock now (Engine.device_time)


class OrderBook:
    def __init__(self, db: sqlite_utils.Database, gateway_id: str, categories: Categories | None = None,
                 reopen_within: float = 0.0, verify_within: float = 1800.0, repeat_within: float = 0.0):
        self.db = db
        self.gateway_id = gateway_id
        self.outbox = Outbox(db)
        self.categories = categories
        self.reopen_within = reopen_within  # a problem back this soon after its order closed reopens it
        self.verify_within = verify_within  # the sensors' re-check of a resolved order (device time)
        self.repeat_within = repeat_within  # a problem back this soon after its verified fix is a repeat
        self.failed = 0  # transitions that could not be applied (logged), a counter

    def apply(self, transitions: list[Transition], now: float | None = None,
              clock: DeviceClock | None = None) -> list[Change]:
        """Apply the engine's transitions in one durable transaction; returns the revisions made.

        ``clock`` gives a device's clock now (its escalation limits count in it, see
        ``escalate``); without it, the transition's own time. A transition that fails for any
        reason but the disk (a bug, a title that cannot be rendered) is logged, counted in
        ``failed`` and skipped: one problem's order is never worth the gateway.
        """
        changes: list[Change] = []
        if not transitions:
            return changes
        now = time.time() if now is None else now
        with transaction(self.db):
            for transition in transitions:
                try:
                    with transaction(self.db):
                        change = self._apply_one(transition, now, clock)
                except sqlite3.OperationalError:
                    raise  # a full disk, a locked file: the caller keeps the batch and retries
                except Exception:
                    self.failed += 1
                    log.exception("could not apply %s of rule %s on %s; skipped", transition.kind,
                                  transition.rule.name, transition.device.id)
                    continue
                if change is not None:
                    changes.append(change)
        return changes

    def _live(self, rule: str, device: str) -> dict | None:
        """The live order that stands for this problem, alone or grouped with others."""
        row = self.db.execute(
            f"SELECT {', '.join('o.' + c for c in ORDER_COLUMNS)} FROM order_members m JOIN orders o ON o.id = m.order_id "
            "WHERE m.rule = ? AND m.device = ? AND m.state != 'fixed' AND o.state NOT IN ('closed', 'rejected')",
            [rule, device],
        ).fetchone()
        return dict(zip(ORDER_COLUMNS, row)) if row else None

    def _member_state(self, order_id: str, rule: str, device: str) -> str:
        return self.db.execute(
            "SELECT state FROM order_members WHERE order_id = ? AND rule = ? AND device = ?", [order_id, rule, device]
        ).fetchone()[0]

    def _set_member(self, order_id: str, rule: str, device: str, state: str, at: float) -> None:
        self.db.execute(
            "INSERT INTO order_members (order_id, rule, device, state, joined_at, changed_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (order_id, rule, device) DO UPDATE SET state = excluded.state, changed_at = excluded.changed_at",
            [order_id, rule, device, state, at, at],
        )

    def _recently_closed(self, rule: str, device: str, now: float) -> dict | None:
        """The order the platform closed for this problem within ``reopen_within`` before ``now`` (gateway clock)."""
        row = self.db.execute(
            f"SELECT {', '.join('o.' + c for c in ORDER_COLUMNS)} FROM order_members m JOIN orders o ON o.id = m.order_id "
            "WHERE m.rule = ? AND m.device = ? AND o.state = 'closed' AND o.verification != 'verified' "
            "AND o.updated_at >= ? ORDER BY o.updated_at DESC LIMIT 1",
            [rule, device, now - self.reopen_within],
        ).fetchone()
        if row is None:
            return None
        order = dict(zip(ORDER_COLUMNS, row))
        if self._live(order["rule"], order["device"]) is not None:
            return None  # its first problem already has a newer live order
        return order

    def _group_for(self, transition: Transition) -> dict | None:
        """A live order this problem joins: same category group, same grid, opened within the group's window."""
        if self.categories is None:
            return None
        category = self.categories.get(transition.rule.spec.order.category)
        if category is None or not category.group or not category.group_window:
            return None
        keys = sorted(self.categories.in_group(category.group))
        row = self.db.execute(
            f"SELECT {', '.join(ORDER_COLUMNS)} FROM orders WHERE category IN ({', '.join('?' * len(keys))}) "
            "AND grid = ? AND state NOT IN ('closed', 'rejected') AND verification != 'verified' AND opened_at >= ? "
            "ORDER BY opened_at DESC LIMIT 1",
            keys + [transition.device.grid, transition.ts - category.group_window],
        ).fetchone()
        return dict(zip(ORDER_COLUMNS, row)) if row else None

    def _new_id(self, rule: str, device: str, opened_at: float) -> str:
        candidate = base = order_id(self.gateway_id, rule, device, opened_at)
        n = 1
        while self.db.execute("SELECT 1 FROM orders WHERE id = ?", [candidate]).fetchone():
            n += 1  # the same problem opened again at the same device time, after its order ended
            candidate = f"{base}-{n}"
        return candidate

    def _apply_one(self, transition: Transition, now: float, clock: DeviceClock | None = None) -> Change | None:
        rule, device = transition.rule, transition.device
        condition = rule.spec.when if transition.kind != "clear" else rule.clear_text  # what the values show
        evidence = [
            {"device": device.id, "rule": rule.name, "metric": e.metric, "value": e.value, "at": iso(transition.ts),
             "condition": condition}
            for e in transition.evidence
        ]
        order = self._live(rule.name, device.id)
        if transition.kind == "open":
            if order is None and self.reopen_within > 0:
                order = self._recently_closed(rule.name, device.id, now)
                if order is not None:
                    self.db.execute("UPDATE order_members SET state = 'opened' WHERE order_id = ?", [order["id"]])
                    return self._update(order, now, state="opened", change="reopened", evidence=evidence,
                                        seen=transition.ts)
            if order is None:
                group = self._group_for(transition)
                if group is not None:  # one more device seeing the same problem in this grid
                    self._set_member(group["id"], rule.name, device.id, "opened", transition.ts)
                    state = "opened" if group["state"] in WAITING_STATES else group["state"]
                    return self._update(group, now, state=state, change="grouped", evidence=evidence, seen=transition.ts)
                order = {
                    "id": self._new_id(rule.name, device.id, transition.ts),
                    "rule": rule.name, "device": device.id, "kind": device.kind,
                    "category": rule.spec.order.category, "severity": rule.spec.order.severity,
                    "title": render_title(transition), "grid": device.grid, "zone": device.zone,
                    "team": device.team, "address": device.address, "lat": device.lat, "lon": device.lon,
                    "state": "opened", "revision": 1, "opened_at": transition.ts, "updated_at": now,
                    "last_seen_at": transition.ts, "evidence": orjson.dumps(evidence).decode(), "escalations": 0,
                    "escalate_from": clock(device.id) if clock is not None else transition.ts,
                    "verification": "", "resolved_at": None, "verified_at": None,
                    "repeat_of": self._repeat_of(rule.name, device.id, transition.ts),
                }
                self.db.execute(
                    f"INSERT INTO orders ({', '.join(ORDER_COLUMNS)}) VALUES ({', '.join('?' * len(ORDER_COLUMNS))})",
                    [order[c] for c in ORDER_COLUMNS],
                )
                self._set_member(order["id"], rule.name, device.id, "opened", transition.ts)
                return self._revision(order, "opened")
            if self._member_state(order["id"], rule.name, device.id) == "cleared":
                self._set_member(order["id"], rule.name, device.id, "opened", transition.ts)
                if order["state"] == "resolved":  # back after the platform said fixed: not fixed
                    return self._update(order, now, state="dispatched", change=verification.NOT_FIXED,
                                        evidence=evidence, seen=transition.ts, verification=verification.NOT_FIXED)
                if order["state"] == "cleared":
                    return self._update(order, now, state="opened", change="reopened", evidence=evidence,
                                        seen=transition.ts)
            # Already open: the same problem seen again (e.g. after a restart). Note it, no revision.
            self.db.execute("UPDATE orders SET last_seen_at = ? WHERE id = ?", [transition.ts, order["id"]])
            return None
        if order is None or self._member_state(order["id"], rule.name, device.id) != "opened":
            return None
        if transition.kind == "update":  # the problem got worse: the platform sees the new value
            return self._update(order, now, state=order["state"], change="updated", evidence=evidence,
                                seen=transition.ts)
        self._set_member(order["id"], rule.name, device.id, "cleared", transition.ts)
        still_open = self.db.execute(
            "SELECT count(*) FROM order_members WHERE order_id = ? AND state = 'opened'", [order["id"]]
        ).fetchone()[0]
        if still_open or order["state"] != "opened":
            return None  # the order clears when every problem in it has cleared
        return self._update(order, now, state="cleared", change="cleared", evidence=evidence, seen=transition.ts)

    def members(self, order_id: str) -> list[tuple[str, str, str]]:
        """(rule, device, state) of every problem the order stands for."""
        return [tuple(row) for row in self.db.execute(
            "SELECT rule, device, state FROM order_members WHERE order_id = ? ORDER BY joined_at", [order_id]
        ).fetchall()]

    def _update(self, order: dict, now: float, *, state: str, change: str, evidence: list, seen: float,
                severity: str | None = None, escalations: int | None = None, verification: str | None = None,
                verified_at: float | None = None) -> Change:
        order = dict(order)
        merged = orjson.loads(order["evidence"]) + evidence
        order.update(
            state=state, revision=order["revision"] + 1, updated_at=now, last_seen_at=seen,
            evidence=orjson.dumps(merged[-20:]).decode(),
            severity=severity or order["severity"],
            escalations=order["escalations"] if escalations is None else escalations,
            verification=order["verification"] if verification is None else verification,
            verified_at=order["verified_at"] if verified_at is None else verified_at,
        )
        self.db.execute(
            "UPDATE orders SET state = ?, revision = ?, updated_at = ?, last_seen_at = ?, evidence = ?, severity = ?, "
            "escalations = ?, verification = ?, verified_at = ? WHERE id = ?",
            [order["state"], order["revision"], order["updated_at"], order["last_seen_at"], order["evidence"],
             order["severity"], order["escalations"], order["verification"], order["verified_at"], order["id"]],
        )
        return self._revision(order, change)

    def _repeat_of(self, rule: str, device: str, opened_at: float) -> str | None:
        """The order whose verified fix of this problem ended within ``repeat_within`` (device time) before ``opened_at``."""
        if self.repeat_within <= 0:
            return None
        row = self.db.execute(
            "SELECT o.id FROM order_members m JOIN orders o ON o.id = m.order_id "
            "WHERE m.rule = ? AND m.device = ? AND o.verification = 'verified' AND o.verified_at >= ? "
            "ORDER BY o.verified_at DESC LIMIT 1",
            [rule, device, opened_at - self.repeat_within],
        ).fetchone()
        return row[0] if row else None

    def verify(self, now: float, view: DeviceView, silent_after: float) -> list[Change]:
        """Re-check every resolved order against its devices' readings (edge/orders/verification.py).

        A decided order gets a revision: ``verified`` (state stays resolved; its problems count
        as fixed, so one coming back opens a new order, ``repeat_of`` this one), ``not_fixed``
        (back to dispatched, with the evidence) or ``unverified`` (state stays resolved, flagged).
        """
        changes = []
        with transaction(self.db):
            rows = self.db.execute(
                f"SELECT {', '.join(ORDER_COLUMNS)} FROM orders WHERE state = 'resolved' AND verification = 'pending'"
            ).fetchall()
            for row in rows:
                order = dict(zip(ORDER_COLUMNS, row))
                members = self._verify_members(order, view, now)
                category = self.categories.get(order["category"]) if self.categories else None
                within = category.verify_within if category and category.verify_within else self.verify_within
                outcome, deciding = verification.decide(members, view, within, silent_after)
                if outcome == verification.PENDING:
                    continue
                evidence = [{**e, "at": iso(e["at"])} for m in deciding for e in view.values(m.rule, m.device)]
                if outcome == verification.VERIFIED:
                    self.db.execute("UPDATE order_members SET state = 'fixed' WHERE order_id = ?", [order["id"]])
                    changes.append(self._update(
                        order, now, state="resolved", change=outcome, evidence=evidence, seen=order["last_seen_at"],
                        verification=outcome, verified_at=max(view.clock(m.device) for m in members)))
                elif outcome == verification.NOT_FIXED:
                    changes.append(self._update(order, now, state="dispatched", change=outcome, evidence=evidence,
                                                seen=order["last_seen_at"], verification=outcome))
                else:
                    silent = [{"device": m.device, "rule": m.rule, "last_seen": iso(seen) if seen is not None else None,
                               "note": "no report after the resolution"}
                              for m in deciding for seen in [view.seen(m.device)]]
                    changes.append(self._update(order, now, state="resolved", change=outcome, evidence=silent,
                                                seen=order["last_seen_at"], verification=outcome))
        return changes

    def _verify_members(self, order: dict, view: DeviceView, now: float) -> list[Member]:
        """The order's problems, each with its device's clock at the resolution (fixed at the first look)."""
        rows = self.db.execute(
            "SELECT rule, device, state, changed_at, verify_from FROM order_members WHERE order_id = ?", [order["id"]]
        ).fetchall()
        members = []
        for rule, device, state, changed_at, verify_from in rows:
            if verify_from is None:
                verify_from = verification.resolution_clock(view.clock, device, now, order["resolved_at"] or now)
                self.db.execute("UPDATE order_members SET verify_from = ? WHERE order_id = ? AND rule = ? AND device = ?",
                                [verify_from, order["id"], rule, device])
            members.append(Member(rule, device, state, changed_at, verify_from))
        return members

    def escalate(self, now: float | None = None, clock: DeviceClock | None = None) -> list[Change]:
        """Escalate every order the platform has not accepted within its category's limit.

        The k-th escalation comes k limits after the order was opened on the gateway: severity
        up one level (at most critical) and a new revision, so the platform sees it again.
        Which clock: the device's (``clock``, Engine.device_time: its newest report's time, run
        on by the gateway's clock since it arrived), counted from that device's clock when the
        gateway opened the order (``escalate_from``). So a device whose clock runs ahead still
        escalates on time, a backlog of old readings does not escalate at once (its order was
        opened just now in device time), and a street simulated faster than real time escalates
        at the pace of its own time. Without ``clock``, the gateway's (tests, old orders).
        """
        if self.categories is None:
            return []
        now = time.time() if now is None else now
        changes = []
        with transaction(self.db):
            rows = self.db.execute(
                f"SELECT {', '.join(ORDER_COLUMNS)} FROM orders WHERE state IN ({', '.join('?' * len(WAITING_STATES))})",
                list(WAITING_STATES),
            ).fetchall()
            for row in rows:
                order = dict(zip(ORDER_COLUMNS, row))
                category = self.categories.get(order["category"])
                if category is None or category.accept_within is None:
                    continue
                since = order["escalate_from"] if order["escalate_from"] is not None else order["opened_at"]
                elapsed = (clock(order["device"]) if clock is not None else now) - since
                if elapsed < category.accept_within * (order["escalations"] + 1):
                    continue
                changes.append(self._update(
                    order, now, state=order["state"], change="escalated", evidence=[], seen=order["last_seen_at"],
                    severity=escalated(order["severity"]), escalations=order["escalations"] + 1,
                ))
        return changes

    def _revision(self, order: dict, change: str) -> Change:
        category = self.categories.get(order["category"]) if self.categories else None
        body = {
            "order_id": order["id"],
            "revision": order["revision"],
            "change": change,
            "gateway": self.gateway_id,
            "device": order["device"],
            "device_kind": order["kind"],
            "rule": order["rule"],
            "category": order["category"],
            "category_code": category.code if category else "",
            "category_name": category.name if category else "",
            "severity": order["severity"],
            "title": order["title"],
            "grid": order["grid"],
            "zone": order["zone"],
            "team": order["team"],
            "address": order["address"],
            "location": {"lat": order["lat"], "lon": order["lon"]},
            "opened_at": iso(order["opened_at"]),
            "updated_at": iso(order["updated_at"]),
            "state": order["state"],
            "verification": order["verification"] or None,
            "repeat_of": order["repeat_of"],
            "verified_at": iso(order["verified_at"]) if order["verified_at"] is not None else None,
            "evidence": orjson.loads(order["evidence"]),
        }
        self.outbox.put(order["id"], order["revision"], body)
        self.db.execute(
            "INSERT INTO order_events (order_id, revision, at, change, state, severity) VALUES (?, ?, ?, ?, ?, ?)",
            [order["id"], order["revision"], order["updated_at"], change, order["state"], order["severity"]],
        )
        return Change(order["id"], order["revision"], order["state"], change)

    def orders(self, state: str | None = None, grid: str | None = None) -> list[dict]:
        """Orders, newest first, optionally of one state and one grid."""
        where, args = [], []
        if state is not None:
            where.append("state = ?")
            args.append(state)
        if grid is not None:
            where.append("grid = ?")
            args.append(grid)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.db.execute(
            f"SELECT {', '.join(ORDER_COLUMNS)} FROM orders {clause} ORDER BY opened_at DESC", args
        ).fetchall()
        return [dict(zip(ORDER_COLUMNS, row)) for row in rows]

    def timeline(self, order_id: str) -> list[dict]:
        """Every change of an order: revision, time, what changed, state and severity after it."""
        rows = self.db.execute(
            "SELECT revision, at, change, state, severity FROM order_events WHERE order_id = ? ORDER BY revision",
            [order_id],
        ).fetchall()
        return [dict(zip(("revision", "at", "change", "state", "severity"), row)) for row in rows]

    def apply_platform_state(self, order_id: str, state: str, now: float | None = None,
                             cursor: tuple[str, int] | None = None) -> Change:
        """Apply the platform's decision (accepted, dispatched, resolved, closed, rejected) as a new revision.

        ``cursor`` (name, value) is saved in the same transaction, so a decision is applied
        exactly once even across a crash. A refused decision still moves the cursor.
        """
        now = time.time() if now is None else now
        with transaction(self.db):
            if cursor is not None:
                self.db.execute("INSERT OR REPLACE INTO cursors (name, value) VALUES (?, ?)", list(cursor))
            row = self.db.execute(
                f"SELECT {', '.join(ORDER_COLUMNS)} FROM orders WHERE id = ?", [order_id]
            ).fetchone()
            if row is None:
                raise OrderError("unknown_order", f"no order {order_id!r} on gateway {self.gateway_id}")
            order = dict(zip(ORDER_COLUMNS, row))
            allowed = PLATFORM_TRANSITIONS.get(order["state"], ())
            if state not in allowed:
                raise OrderError(
                    "illegal_transition",
                    f"order {order_id} is {order['state']}; it cannot become {state!r} "
                    f"(allowed: {', '.join(allowed) or 'nothing, it is final'})",
                )
            check = None  # a verified order stays verified: its problems are fixed, any new one has its own order
            if order["verification"] != verification.VERIFIED:
                check = {"resolved": verification.PENDING, "dispatched": ""}.get(state)
            if check == verification.PENDING:  # the sensors re-check it from now (verify)
                self.db.execute("UPDATE orders SET resolved_at = ? WHERE id = ?", [now, order_id])
                self.db.execute("UPDATE order_members SET verify_from = NULL WHERE order_id = ?", [order_id])
                order["resolved_at"] = now
            return self._update(order, now, state=state, change=state, evidence=[], seen=order["last_seen_at"],
                                verification=check)

    def live_orders(self) -> list[tuple[str, str, str]]:
        """(rule, device, state) of every problem an order that is not closed or rejected stands for.

        The state is the problem's own: opened while its condition holds, cleared after.
        """
        return [
            (row[0], row[1], row[2])
            for row in self.db.execute(
                "SELECT m.rule, m.device, m.state FROM order_members m JOIN orders o ON o.id = m.order_id "
                "WHERE o.state NOT IN ('closed', 'rejected')"
            ).fetchall()
        ]

    def count(self, state: str | None = None) -> int:
        if state is None:
            return self.db.execute("SELECT count(*) FROM orders").fetchone()[0]
        return self.db.execute("SELECT count(*) FROM orders WHERE state = ?", [state]).fetchone()[0]
