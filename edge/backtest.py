"""What the gateway would have done with a recording: the engine, then the same order book.

``edge rules test`` replays recorded readings through the rules (edge/engine/replay.py: the
alerts, one per episode of a rule on a device) and through the order book ``edge run`` uses
(edge/orders/book.py: grouping per grid by category, ``worse_by`` updates, reopening,
escalation), on a clock fed from the recording (its messages' arrival times). So it says both:
the alerts raised and the orders the platform would have received, which are fewer when
problems group (a storm's covers and cameras: one flooding order per grid).

The order book lives in a temporary SQLite file, thrown away at the end; nothing touches the
gateway's own files.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edge.engine.engine import Engine, Transition
from edge.engine.replay import Message, ReplayResult, replay
from edge.engine.rules import Rule
from edge.orders.book import OrderBook, iso
from edge.orders.categories import Categories
from edge.outbox import open_database
from edge.registry import Registry

CHANGES = ("opened", "grouped", "updated", "cleared", "reopened", "escalated")


@dataclass
class Backtest:
    replayed: ReplayResult  # the engine's side: every alert (episode)
    changes: Counter = field(default_factory=Counter)  # the order book's revisions, by change
    orders: list[dict] = field(default_factory=list)  # each order: id, category, title, state, problems

    @property
    def alerts(self) -> int:
        return len(self.replayed.episodes)

    def as_dict(self) -> dict:
        return {"alerts": self.alerts, "orders": len(self.orders),
                "revisions": {change: self.changes.get(change, 0) for change in CHANGES},
                "order_list": self.orders}


def backtest(rules: list[Rule], registry: Registry, messages: list[Message], categories: Categories | None,
             tick: float = 1.0, reopen_within: float = 3600.0) -> Backtest:
    """Replay ``messages`` through the rules and the order book, as ``edge run`` would have."""
    with tempfile.TemporaryDirectory(prefix="edge-backtest-") as folder:
        db = open_database(Path(folder) / "backtest.db")
        db.conn.execute("PRAGMA synchronous=OFF")  # a scratch file: no fsync per transaction
        try:
            book = OrderBook(db, "backtest", categories, reopen_within)
            changes: Counter = Counter()

            def sink(engine: Engine, transitions: list[Transition], now: float) -> None:
                clock = engine.clock(now)
                for change in book.apply(transitions, now=now, clock=clock) + book.escalate(now, clock=clock):
                    changes[change.change] += 1

            replayed = replay(rules, registry, messages, tick, sink=sink)
            orders = [{
                "order_id": o["id"], "category": o["category"], "severity": o["severity"], "title": o["title"],
                "state": o["state"], "grid": o["grid"], "opened_at": iso(o["opened_at"]), "revisions": o["revision"],
                "problems": [{"rule": rule, "device": device, "state": state} for rule, device, state in book.members(o["id"])],
            } for o in reversed(book.orders())]
        finally:
            db.conn.close()
    return Backtest(replayed, changes, orders)


def describe(result: Backtest) -> list[str]:
    """The order book's part of ``edge rules test``'s report."""
    counts = ", ".join(f"{result.changes.get(c, 0)} {c}" for c in CHANGES[1:] if result.changes.get(c, 0))
    lines = [f"  the gateway's order book: {result.alerts} alert(s) make {len(result.orders)} order(s)"
             + (f" ({counts})" if counts else "")]
    for order in result.orders:
        problems = order["problems"]
        devices = sorted({p["device"] for p in problems})
        joined = f" + {len(problems) - 1} problem(s) grouped in ({', '.join(devices)})" if len(problems) > 1 else ""
        lines.append(f"  ORDER  {order['opened_at']}  {order['category']:<24} {order['severity']:<8} {order['title']}"
                     f"{joined}; {order['revisions']} revision(s), {order['state']}")
    return lines
