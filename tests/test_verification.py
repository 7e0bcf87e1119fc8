"""Fixed means fixed: the sensors re-check an order the platform resolved (engine + order book, in process).

Device clocks equal the gateway's here (each reading arrives at its own device time), so the
gateway time given to ``verify`` is also every device's clock.
"""

from __future__ import annotations

import pytest

from conftest import REGISTRY, ROOT, RULES
from edge.engine import Engine, load_rules
from edge.orders import OrderBook
from edge.orders.categories import Categories
from edge.orders.verification import EngineView
from edge.outbox import Outbox, open_database
from edge.registry import Registry

CATEGORIES = ROOT / "config" / "categories.csv"
WITHIN = 1800.0  # [orders] verify_within
SILENT_AFTER = 7200.0
DAY = 86400.0


class Street:
    """An engine and an order book fed with readings at given device times."""

    def __init__(self, path):
        self.registry = Registry.load(REGISTRY)
        self.engine = Engine(load_rules([RULES]), self.registry, origin=0.0)
        self.db = open_database(path)
        self.book = OrderBook(self.db, "gw-1", Categories.load(CATEGORIES), reopen_within=3600.0,
                              verify_within=WITHIN, repeat_within=7 * DAY)
        self.changes = []

    def report(self, device: str, ts: float, **values) -> list:
        builder = self.engine.builder()
        builder.add(self.registry.get(device).index, ts, values, arrival=ts)
        changes = self.book.apply(self.engine.process(builder.build()), now=ts)
        self.changes += changes
        return changes

    def tick(self, now: float) -> list:
        self.book.apply(self.engine.tick(now), now=now)
        changes = self.book.verify(now, EngineView(self.engine, now), SILENT_AFTER)
        self.changes += changes
        return changes

    def platform(self, order_id: str, now: float, *states: str) -> None:
        for state in states:
            self.changes.append(self.book.apply_platform_state(order_id, state, now=now))

    def order(self, order_id: str) -> dict:
        (order,) = [o for o in self.book.orders() if o["id"] == order_id]
        return order

    def last_body(self, order_id: str) -> dict:
        return [p.body for p in Outbox(self.db).pending(1000) if p.key == order_id][-1]


@pytest.fixture
def street(tmp_path):
    s = Street(tmp_path / "gateway.db")
    yield s
    s.db.conn.close()


def open_cover(street: Street, device: str = "MH-0003", at: float = 1000.0) -> str:
    street.report(device, at, tilt_deg=30.0, open=1)
    (opened,) = street.report(device, at + 20, tilt_deg=30.0, open=1)
    assert opened.change == "opened"
    return opened.order_id


def close_cover(street: Street, device: str, at: float) -> None:
    street.report(device, at, tilt_deg=0.5, open=0)
    street.report(device, at + 20, tilt_deg=0.5, open=0)


def verified_fix(street: Street) -> str:
    """MH-0003 opened, closed by the crew, resolved at 2000 and confirmed by its report at 2300."""
    order_id = open_cover(street)
    close_cover(street, "MH-0003", 1500.0)
    street.platform(order_id, 2000.0, "accepted", "resolved")
    street.report("MH-0003", 2300.0, tilt_deg=0.5, open=0)
    assert [c.change for c in street.tick(2300.0)] == ["verified"]
    return order_id


def test_resolved_while_still_open_is_not_fixed_and_goes_back_to_dispatched(street):
    order_id = open_cover(street)
    street.platform(order_id, 2000.0, "accepted", "dispatched", "resolved")
    for t in range(2000, 2000 + int(WITHIN), 300):  # the cover still reports open through the window
        street.report("MH-0003", float(t), tilt_deg=30.0, open=1)
        assert street.tick(float(t)) == [], "decided before the window ended"
    (change,) = street.tick(2000.0 + WITHIN)
    assert (change.change, change.state) == ("not_fixed", "dispatched")
    body = street.last_body(order_id)
    assert body["verification"] == "not_fixed"
    assert {(e["metric"], e["value"]) for e in body["evidence"][-2:]} == {("tilt_deg", 30.0), ("open", 1.0)}
    assert street.order(order_id)["state"] == "dispatched"
    # the crew comes back, closes it, and this time it holds
    close_cover(street, "MH-0003", 4000.0)
    street.platform(order_id, 4100.0, "resolved")
    street.report("MH-0003", 4200.0, tilt_deg=0.4, open=0)
    (verified,) = street.tick(4200.0)
    assert (verified.change, verified.state) == ("verified", "resolved")


def test_closed_before_the_resolution_and_reporting_closed_after_is_verified(street):
    order_id = open_cover(street)
    close_cover(street, "MH-0003", 1500.0)
    street.platform(order_id, 2000.0, "accepted", "resolved")
    assert street.tick(2000.0) == []  # nothing reported since the resolution yet
    street.report("MH-0003", 2005.0, tilt_deg=0.5, open=0)  # less than clear_for (10 s) after it
    assert street.tick(2005.0) == []
    street.report("MH-0003", 2300.0, tilt_deg=0.5, open=0)
    (change,) = street.tick(2300.0)
    assert (change.change, change.state) == ("verified", "resolved")
    body = street.last_body(order_id)
    assert body["verification"] == "verified" and body["repeat_of"] is None
    proof = [e for e in body["evidence"] if e["condition"] == "tilt_deg < 5 and open == 0"]
    assert {(e["metric"], e["value"]) for e in proof} == {("tilt_deg", 0.5), ("open", 0.0)}
    assert street.tick(2400.0) == []  # decided once


def test_a_device_silent_after_the_resolution_is_unverified_not_fixed(street):
    order_id = open_cover(street)
    close_cover(street, "MH-0003", 1500.0)
    street.platform(order_id, 2000.0, "accepted", "resolved")
    assert street.tick(2000.0 + WITHIN - 1) == []
    (change,) = street.tick(2000.0 + WITHIN)
    assert (change.change, change.state) == ("unverified", "resolved")
    body = street.last_body(order_id)
    assert body["verification"] == "unverified"
    assert body["evidence"][-1]["device"] == "MH-0003" and body["evidence"][-1]["note"] == "no report after the resolution"


def test_a_problem_back_within_the_window_is_not_fixed_at_once(street):
    order_id = open_cover(street)
    close_cover(street, "MH-0003", 1500.0)
    street.platform(order_id, 2000.0, "accepted", "dispatched", "resolved")
    street.report("MH-0003", 2100.0, tilt_deg=40.0, open=1)
    (change,) = street.report("MH-0003", 2120.0, tilt_deg=40.0, open=1)
    assert (change.order_id, change.change, change.state) == (order_id, "not_fixed", "dispatched")
    evidence = street.last_body(order_id)["evidence"]
    assert {(e["metric"], e["value"]) for e in evidence[-2:]} == {("tilt_deg", 40.0), ("open", 1.0)}


def test_a_verified_fix_that_breaks_days_later_opens_a_new_order_marked_as_a_repeat(street):
    order_id = verified_fix(street)
    street.platform(order_id, 2400.0, "closed")
    later = 2300.0 + 3 * DAY
    again = open_cover(street, at=later)
    assert again != order_id
    body = street.last_body(again)
    assert (body["change"], body["repeat_of"]) == ("opened", order_id)
    # a fix that holds longer than repeat_within: not a repeat
    close_cover(street, "MH-0003", later + 100)
    street.platform(again, later + 200, "accepted", "resolved")
    street.report("MH-0003", later + 500, tilt_deg=0.5, open=0)
    assert [c.change for c in street.tick(later + 500)] == ["verified"]
    third = open_cover(street, at=later + 8 * DAY)
    assert street.last_body(third)["repeat_of"] is None


def test_back_soon_after_a_verified_fix_is_a_new_order_not_a_reopening(street):
    """reopen_within reopens an order closed without a confirmed fix; after a verified fix the problem is new."""
    order_id = open_cover(street)
    close_cover(street, "MH-0003", 1500.0)
    street.platform(order_id, 2000.0, "accepted", "resolved")
    street.report("MH-0003", 2300.0, tilt_deg=0.5, open=0)
    street.tick(2300.0)
    street.platform(order_id, 2400.0, "closed")
    again = open_cover(street, at=2600.0)
    assert again != order_id and street.last_body(again)["repeat_of"] == order_id
    # without verification, the same comeback reopens the closed order (as before)
    other = open_cover(street, "MH-0004", 1000.0)
    close_cover(street, "MH-0004", 1500.0)
    street.platform(other, 2000.0, "closed")
    street.report("MH-0004", 2600.0, tilt_deg=30.0, open=1)
    (reopened,) = street.report("MH-0004", 2620.0, tilt_deg=30.0, open=1)
    assert (reopened.order_id, reopened.change) == (other, "reopened")


def test_a_camera_problem_is_verified_by_no_new_detection_for_the_window(street):
    def detection(ts, active=1):
        street.report("CAM-0001", ts, label="car", zone="no_parking", score=0.9, active=active)

    for t in range(0, 400, 10):
        detection(1000.0 + t)
    (order,) = [c for c in street.changes if c.change == "opened"]
    detection(1400.0, active=0)
    detection(1500.0, active=0)
    street.tick(1500.0)
    street.platform(order.order_id, 1600.0, "accepted", "dispatched", "resolved")
    assert street.tick(1600.0 + WITHIN - 1) == []  # a camera's silence is the evidence: the whole window
    (change,) = street.tick(1600.0 + WITHIN)
    assert change.change == "verified"


def test_a_camera_not_heard_from_within_silent_after_is_unverified(street):
    for t in range(0, 400, 10):
        street.report("CAM-0002", 1000.0 + t, label="car", zone="no_parking", score=0.9, active=1)
    (order,) = [c for c in street.changes if c.change == "opened"]
    street.report("CAM-0002", 1400.0, label="car", zone="no_parking", score=0.9, active=0)
    street.report("CAM-0002", 1500.0, label="car", zone="no_parking", score=0.9, active=0)
    street.tick(1500.0)
    resolved = 1500.0 + SILENT_AFTER
    street.platform(order.order_id, resolved, "accepted", "resolved")
    (change,) = street.tick(resolved + WITHIN)
    assert change.change == "unverified"


def test_a_category_may_give_its_own_window(street, tmp_path):
    table = tmp_path / "categories.csv"
    table.write_text(CATEGORIES.read_text().replace(
        "manhole_cover_displaced,B010101,\"Manhole cover missing, displaced or damaged\",component,15m,,,",
        "manhole_cover_displaced,B010101,\"Manhole cover missing, displaced or damaged\",component,15m,,,2h"))
    assert Categories.load(table).get("manhole_cover_displaced").verify_within == 7200.0
    street.book.categories = Categories.load(table)
    order_id = open_cover(street)
    street.platform(order_id, 2000.0, "accepted", "resolved")
    assert street.tick(2000.0 + WITHIN) == []  # still open, but the category gives it 2 h
    assert [c.change for c in street.tick(2000.0 + 7200.0)] == ["not_fixed"]


def test_redispatching_a_resolved_order_stops_its_recheck(street):
    order_id = open_cover(street)
    street.platform(order_id, 2000.0, "accepted", "resolved", "dispatched")
    assert street.tick(2000.0 + WITHIN) == []
    assert street.order(order_id)["verification"] == ""


def test_a_verified_order_stays_verified_whatever_the_platform_does_next(street):
    order_id = verified_fix(street)
    again = open_cover(street, at=3000.0)  # back: a new order, while the fixed one is still resolved
    street.platform(order_id, 3100.0, "dispatched", "resolved")  # the platform sends the crew again anyway
    assert street.order(order_id)["verification"] == "verified"
    assert street.tick(3100.0 + WITHIN) == []
    assert street.order(again)["state"] == "opened"
