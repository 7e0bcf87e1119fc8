"""Scoring: how many real events became orders, compared with the ground truth.

An order *finds* an event when it is for the same device, its rule is one the event
expects, and it opened between the event's start (less ``early`` seconds) and its end plus
``grace`` seconds (an event still going on has no end). Orders are taken in the order they
opened; each finds the earliest event it fits that no order found yet. An order that fits
only events already found is a *duplicate* (one real problem, two orders); an order that
fits none is a *false order* (noted with any fault or flicker on its device at the time).
An event that expects orders and got none is *missed*. The detection delay of a found event
is its first order's ``opened_at`` minus the event's start, in device time.

Repairs: an event with a crew (the platform resolved its order) expects the gateway's re-check
to end as the ground truth says (``verified``, ``not_fixed`` or ``unverified``: the first such
revision of the order that found it), and a problem that came back after a repair
(``repeat_of_event``) expects its order to say ``repeat_of`` the repaired event's order.

Orders come from the reference receiver's HTTP API (``GET /api/v1/revisions``) or its SQLite
file; every revision is read, so an order that cleared and reopened is counted once, with its
reopenings reported apart.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from firmware_sim.truth import TruthEvent


class ScoreError(Exception):
    pass


RECHECKS = ("verified", "not_fixed", "unverified")


@dataclass
class Order:
    order_id: str
    device: str
    rule: str
    category: str
    opened_at: float
    reopened: int = 0
    revisions: int = 1
    outcomes: list[str] = field(default_factory=list)  # the gateway's re-checks of the order, in order
    repeat_of: str | None = None


def _ts(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def orders_from_revisions(revisions: list[dict]) -> list[Order]:
    """One entry per problem an order stands for: its first, and each one grouped into it later.

    A grouped problem (``change: grouped``) is scored like an order of its own device and rule,
    opened when it joined; it shares the order's id.
    """
    orders: dict[tuple[str, str, str], Order] = {}
    outcomes: dict[str, list[str]] = {}
    repeats: dict[str, str] = {}
    for body in sorted(revisions, key=lambda b: (b.get("order_id", ""), b.get("revision", 0))):
        if body.get("change") in RECHECKS:
            outcomes.setdefault(body.get("order_id", ""), []).append(body["change"])
        if body.get("repeat_of"):
            repeats.setdefault(body.get("order_id", ""), str(body["repeat_of"]))
        try:
            order_id = body["order_id"]
            key = (order_id, body["device"], body["rule"])
            order = orders.get(key)
            if order is None:
                order = orders[key] = Order(order_id, body["device"], body["rule"], body.get("category", ""),
                                            _ts(body["opened_at"]), revisions=0)
            order.revisions += 1
            if body.get("change") == "reopened":
                order.reopened += 1
            if body.get("change") == "grouped":
                for item in body.get("evidence", []):
                    member = (order_id, item.get("device"), item.get("rule"))
                    if None not in member and member not in orders:
                        orders[member] = Order(order_id, item["device"], item["rule"], body.get("category", ""),
                                               _ts(item["at"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ScoreError(f"an order revision without device, rule or opened_at: {error}: {body!r:.200}") from None
    for order in orders.values():
        order.outcomes = outcomes.get(order.order_id, [])
        order.repeat_of = repeats.get(order.order_id)
    return sorted(orders.values(), key=lambda o: (o.opened_at, o.order_id, o.device))


def orders_from_replay(rules_path: Path, readings: Path, registry: Path) -> list[Order]:
    """The orders ``edge rules test`` says the rules would open on recorded readings: one per episode."""
    from edge.engine import RuleFileError, load_rules
    from edge.engine.replay import ReplayError, read_messages, replay
    from edge.registry import Registry, RegistryError

    try:
        result = replay(load_rules([rules_path]), Registry.load(registry), read_messages(readings))
    except (RuleFileError, ReplayError, RegistryError) as error:
        raise ScoreError(str(error)) from None
    return sorted(
        (Order(f"replay-{n}", e.device, e.rule, "", e.opened_at) for n, e in enumerate(result.episodes, start=1)),
        key=lambda o: (o.opened_at, o.order_id),
    )


def of_gateway(revisions: list[dict], gateway: str | None) -> list[dict]:
    """The revisions one gateway sent (all of them when ``gateway`` is None)."""
    return revisions if gateway is None else [r for r in revisions if r.get("gateway") == gateway]


def revisions_from_db(path: Path) -> list[dict]:
    if not path.exists():
        raise ScoreError(f"{path}: no such receiver database")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            rows = conn.execute("SELECT body FROM revisions ORDER BY received_at, order_id, revision").fetchall()
    except sqlite3.Error as error:
        raise ScoreError(f"{path}: cannot read the receiver's revisions: {error}") from None
    return [orjson.loads(body) for (body,) in rows]


def revisions_from_http(url: str, token: str = "", timeout: float = 10.0) -> list[dict]:
    import requests

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = requests.get(f"{url.rstrip('/')}/api/v1/revisions", headers=headers, timeout=timeout)
    except requests.RequestException as error:
        raise ScoreError(f"cannot reach the receiver at {url}: {error}") from None
    if response.status_code != 200:
        raise ScoreError(f"the receiver at {url} answered {response.status_code}: {response.text[:200]}")
    return response.json()["revisions"]


@dataclass
class Score:
    expected: int
    found: int
    missed: list[TruthEvent]
    false_orders: list[tuple[Order, list[str]]]
    duplicates: list[tuple[Order, str]]
    reopened: int
    delays: dict[str, float]
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    rechecks: list[dict] = field(default_factory=list)  # one per repaired event: expected and what the gateway said
    repeats: list[dict] = field(default_factory=list)  # one per problem back after a repair

    @property
    def delay_median(self) -> float | None:
        return statistics.median(self.delays.values()) if self.delays else None

    @property
    def delay_worst(self) -> float | None:
        return max(self.delays.values()) if self.delays else None

    def as_dict(self) -> dict:
        return {
            "events": self.expected, "found": self.found, "missed": len(self.missed),
            "false_orders": len(self.false_orders), "duplicates": len(self.duplicates), "reopened": self.reopened,
            "delay_median_s": self.delay_median, "delay_worst_s": self.delay_worst,
            "by_kind": self.by_kind,
            "missed_events": [e.as_dict() for e in self.missed],
            "false_order_list": [{"order_id": o.order_id, "device": o.device, "rule": o.rule,
                                  "opened_at": o.opened_at, "during": during} for o, during in self.false_orders],
            "duplicate_list": [{"order_id": o.order_id, "device": o.device, "rule": o.rule, "event": event}
                               for o, event in self.duplicates],
            "delays": self.delays,
            "rechecks": {"expected": len(self.rechecks), "right": sum(c["right"] for c in self.rechecks),
                         "list": self.rechecks},
            "repeats": {"expected": len(self.repeats), "right": sum(r["right"] for r in self.repeats),
                        "list": self.repeats},
        }

    def text(self) -> str:
        def seconds(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f}s"

        lines = [
            f"events expecting an order  {self.expected}",
            f"found                      {self.found}",
            f"missed                     {len(self.missed)}",
            f"false orders               {len(self.false_orders)}",
            f"duplicates                 {len(self.duplicates)}",
            f"reopened                   {self.reopened}",
            f"detection delay median     {seconds(self.delay_median)}",
            f"detection delay worst      {seconds(self.delay_worst)}",
        ]
        if self.by_kind:
            lines.append("by kind (found/expected)   " + ", ".join(
                f"{kind} {c['found']}/{c['expected']}" for kind, c in sorted(self.by_kind.items())))
        if self.rechecks:
            right = sum(c["right"] for c in self.rechecks)
            lines.append(f"re-checks right            {right}/{len(self.rechecks)} (" + ", ".join(
                f"{name} {sum(c['right'] for c in self.rechecks if c['expected'] == name)}/"
                f"{sum(1 for c in self.rechecks if c['expected'] == name)}"
                for name in RECHECKS if any(c["expected"] == name for c in self.rechecks)) + ")")
        if self.repeats:
            lines.append(f"repeats marked right       {sum(r['right'] for r in self.repeats)}/{len(self.repeats)}")
        for check in [c for c in self.rechecks if not c["right"]][:20]:
            lines.append(f"  re-check {check['event']} on {check['device']}: expected {check['expected']}, "
                         f"the gateway said {check['got']}")
        for event in self.missed[:20]:
            lines.append(f"  missed {event.id} {event.kind} on {event.device} at {event.start:.0f} (expects {', '.join(event.expect)})")
        for order, during in self.false_orders[:20]:
            note = f" during {', '.join(during)}" if during else ""
            lines.append(f"  false  {order.order_id} {order.rule} on {order.device} at {order.opened_at:.0f}{note}")
        for order, event in self.duplicates[:20]:
            lines.append(f"  duplicate {order.order_id} {order.rule} on {order.device} for {event}")
        return "\n".join(lines)


def score(truth: list[TruthEvent], orders: list[Order], grace: float = 600.0, early: float = 600.0) -> Score:
    expecting = [e for e in truth if e.expect]
    by_device: dict[str, list[TruthEvent]] = {}
    for event in expecting:
        by_device.setdefault(event.device, []).append(event)
    first_order: dict[str, Order] = {}
    false_orders: list[tuple[Order, list[str]]] = []
    duplicates: list[tuple[Order, str]] = []
    reopened = 0
    for order in orders:
        fits = [
            e for e in by_device.get(order.device, [])
            if order.rule in e.expect and e.start - early <= order.opened_at
            and (e.end is None or order.opened_at <= e.end + grace)
        ]
        fresh = [e for e in fits if e.id not in first_order]
        if fresh:
            event = min(fresh, key=lambda e: e.start)
            first_order[event.id] = order
            reopened += order.reopened
        elif fits:
            event = max(fits, key=lambda e: e.start)
            duplicates.append((order, event.id))
        else:
            during = [
                f"{e.kind} ({e.id})" for e in truth
                if e.device == order.device and not e.expect and e.start - early <= order.opened_at
                and (e.end is None or order.opened_at <= e.end + grace)
            ]
            false_orders.append((order, during))
    delays = {e.id: round(max(0.0, first_order[e.id].opened_at - e.start), 3) for e in expecting if e.id in first_order}
    by_kind: dict[str, dict[str, int]] = {}
    for event in expecting:
        counts = by_kind.setdefault(event.kind, {"expected": 0, "found": 0})
        counts["expected"] += 1
        counts["found"] += event.id in first_order
    rechecks, repeats = [], []
    for event in expecting:
        order = first_order.get(event.id)
        crew = event.details.get("crew")
        if crew:
            got = order.outcomes[0] if order is not None and order.outcomes else "none"
            rechecks.append({"event": event.id, "device": event.device, "crew": crew.get("outcome"),
                             "expected": crew.get("expect"), "got": got, "right": got == crew.get("expect"),
                             "order_id": order.order_id if order is not None else None})
        repaired = event.details.get("repeat_of_event")
        if repaired:
            earlier = first_order.get(repaired)
            want = earlier.order_id if earlier is not None else None
            got = order.repeat_of if order is not None else None
            repeats.append({"event": event.id, "device": event.device, "repeat_of_event": repaired,
                            "expected": want, "got": got, "right": want is not None and got == want})
    return Score(
        expected=len(expecting), found=len(first_order), missed=[e for e in expecting if e.id not in first_order],
        false_orders=false_orders, duplicates=duplicates, reopened=reopened, delays=delays, by_kind=by_kind,
        rechecks=rechecks, repeats=repeats,
    )
