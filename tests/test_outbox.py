"""The outbox under a disk budget, telemetry summaries, and the platform's decisions coming back."""

from __future__ import annotations

import threading

import pytest
import requests

from conftest import REGISTRY, RULES, wait_until
from edge.engine import Evidence, Transition, load_rules
from edge.orders import OrderBook, OrderError
from edge.outbox import Outbox, open_database, transaction
from edge.outbox.telemetry import TelemetrySummaries
from edge.registry import Registry
from uplink.receiver import ReceiverServer, ReceiverStore
from uplink.sender import Sender
from uplink.transport_http import HttpTransport


def fill(db, orders: int, telemetry_devices: int, intervals: int, body_bytes: int = 2000) -> None:
    outbox = Outbox(db)
    padding = "x" * body_bytes
    with transaction(db):
        for o in range(orders):
            outbox.put(f"o{o}", 1, {"order_id": f"o{o}", "revision": 1, "pad": padding})
        for i in range(intervals):
            for d in range(telemetry_devices):
                outbox.put_telemetry(f"D{d}", i, {"device": f"D{d}", "interval": i, "pad": padding})


def kinds(db) -> dict:
    return dict(db.execute("SELECT kind, count(*) FROM outbox GROUP BY kind").fetchall())


def test_eviction_takes_telemetry_oldest_first_keeps_latest_per_device_and_never_orders(tmp_path):
    db = open_database(tmp_path / "gateway.db")
    fill(db, orders=300, telemetry_devices=50, intervals=20)
    outbox = Outbox(db)
    used = outbox.used_bytes()
    budget = used - 1_000_000  # about 500 of the 1,000 summaries must go
    evictions = outbox.enforce_budget(budget)
    assert [e.step for e in evictions] == ["telemetry_old"]
    assert outbox.used_bytes() <= budget
    assert kinds(db)["order"] == 300
    left = db.execute("SELECT order_id, min(revision) FROM outbox WHERE kind = 'telemetry' GROUP BY order_id").fetchall()
    oldest_left = min(interval for _, interval in left)
    evicted_intervals = db.execute("SELECT count(*) FROM outbox WHERE kind = 'telemetry' AND revision < ?",
                                   [oldest_left]).fetchone()[0]
    assert evicted_intervals == 0 and oldest_left > 0  # the oldest went first

    # Beyond reach (the unsent orders alone are over it): nothing is evicted, and the report says why.
    before = kinds(db)
    report = outbox.enforce_budget(outbox.used_bytes() // 10)
    assert list(report) == [] and "unsent order revisions" in report.problem and not report.within_budget
    assert kinds(db) == before and before["telemetry"] > 50

    # Far over budget but within reach: every old summary goes, then the latest ones, but no order revision.
    twin = open_database(tmp_path / "orders-only.db")
    fill(twin, orders=300, telemetry_devices=0, intervals=0)
    evictions = outbox.enforce_budget(Outbox(twin).used_bytes() + 100_000)
    twin.conn.close()
    assert [e.step for e in evictions] == ["telemetry_old", "telemetry_latest"]
    assert kinds(db) == {"order": 300} and evictions.problem == "" and evictions.within_budget
    logged = db.execute("SELECT step, sum(rows) FROM evictions GROUP BY step").fetchall()
    assert dict(logged) == {"telemetry_old": 950, "telemetry_latest": 50}
    db.conn.close()


def test_acknowledged_rows_go_first_and_orders_only_when_configured(tmp_path):
    db = open_database(tmp_path / "gateway.db")
    fill(db, orders=400, telemetry_devices=10, intervals=1)
    outbox = Outbox(db)
    outbox.mark_sent([(f"o{o}", 1) for o in range(200)])
    evictions = outbox.enforce_budget(outbox.used_bytes() - 100_000)
    assert [e.step for e in evictions] == ["acknowledged"]
    assert outbox.depth() == 210  # nothing unacknowledged went
    telemetry = outbox.depth("telemetry")
    report = outbox.enforce_budget(100_000)  # the 200 unsent orders alone are over it: nothing is evicted
    assert list(report) == [] and "evict_orders is off" in report.problem
    assert outbox.depth("order") == 200 and outbox.depth("telemetry") == telemetry == 10
    evictions = outbox.enforce_budget(400_000, evict_orders=True)
    assert evictions[-1].step == "order_revisions" and outbox.depth("order") < 200
    db.conn.close()


def test_quarantined_messages_go_after_acknowledged_rows_and_before_telemetry(tmp_path):
    db = open_database(tmp_path / "gateway.db")
    fill(db, orders=100, telemetry_devices=10, intervals=2)
    outbox = Outbox(db)
    outbox.mark_sent([(f"o{o}", 1) for o in range(50)])
    with transaction(db) as conn:
        conn.executemany("INSERT INTO quarantine (received_at, topic, payload, reason, detail) VALUES (?, ?, ?, ?, ?)",
                         [(float(n), "devices/MH-0007/telemetry", b"{" + b"x" * 1000, "malformed_json", "")
                          for n in range(2000)])
    budget = outbox.used_bytes() - 100_000 - 700_000  # more than the acknowledged rows, less than the quarantine too
    evictions = outbox.enforce_budget(budget)
    assert [e.step for e in evictions] == ["acknowledged", "quarantine"]
    assert outbox.used_bytes() <= budget
    left = [row[0] for row in db.execute("SELECT received_at FROM quarantine ORDER BY id").fetchall()]
    assert 0 < len(left) < 2000 and left == [float(n) for n in range(2000 - len(left), 2000)]  # the oldest went
    assert kinds(db) == {"order": 50, "telemetry": 20}  # nothing unacknowledged went
    db.conn.close()


def test_telemetry_summaries_per_device_and_interval():
    summaries = TelemetrySummaries(interval=60)
    assert summaries.due(1000.0) == []  # starts collecting interval 16
    summaries.add("MH-0001", 1001.0, {"tilt_deg": 2.0, "open": 0.0}, 1001.0)
    summaries.add("MH-0001", 1010.0, {"tilt_deg": 5.0}, 1010.0)
    summaries.add("CAM-0001", 1011.0, {"label": "car", "score": 0.8}, 1011.0)
    assert summaries.due(1019.0) == []
    due = {device: body for device, interval, body in summaries.due(1021.0)}
    assert due["MH-0001"]["metrics"]["tilt_deg"] == {"last": 5.0, "min": 2.0, "max": 5.0, "count": 2}
    assert due["CAM-0001"]["metrics"]["label"] == {"last": "car", "count": 1}
    assert due["MH-0001"]["interval"] == 16 and due["MH-0001"]["start"] == "1970-01-01T00:16:00Z"
    assert summaries.due(1030.0) == []


def test_platform_decisions_flow_back_and_bad_ones_are_refused(tmp_path):
    registry = Registry.load(REGISTRY)
    rules = {r.name: r for r in load_rules([RULES])}
    db = open_database(tmp_path / "gateway.db")
    book = OrderBook(db, "gw-t")
    (opened,) = book.apply([Transition("open", rules["cover_tilted"], registry.get("MH-0001"), 1000.0,
                                       (Evidence("tilt_deg", 30.0),))])
    store = ReceiverStore(tmp_path / "receiver.db")
    server = ReceiverServer("127.0.0.1", 0, store)
    server.start_background()
    stop, wake = threading.Event(), threading.Event()
    sender = Sender(tmp_path / "gateway.db", HttpTransport(server.url, "gw-t", timeout=5), stop, wake,
                    gateway_id="gw-t", downlink_interval=0.1)
    thread = threading.Thread(target=sender.run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: store.stats()["orders"] == 1, 10)
        url = f"{server.url}/api/v1/orders/{opened.order_id}"
        assert requests.post(f"{url}/accept", timeout=5).status_code == 200
        assert requests.post(f"{url}/dispatch", json={"note": "team 3 on its way"}, timeout=5).status_code == 200
        assert requests.post(f"{url}/accept", timeout=5).status_code == 200  # illegal now: dispatched -> accepted
        assert requests.post(f"{server.url}/api/v1/orders/nope/accept", timeout=5).status_code == 404
        assert wait_until(lambda: sender.downlink_applied == 2 and sender.downlink_refused, 10)
        assert sender.downlink_refused == {"illegal_transition": 1}
        assert wait_until(lambda: [r["state"] for r in store.revisions()] == ["opened", "accepted", "dispatched"], 10)
        assert db.execute("SELECT state, revision FROM orders").fetchone() == ("dispatched", 3)
        with pytest.raises(OrderError, match="no order 'x'"):
            book.apply_platform_state("x", "accepted")
        page = requests.get(server.url + "/", timeout=5).text
        assert "Grid G01" in page and "dispatched" in page
        assert requests.get(server.url + "/openapi.json", timeout=5).json()["openapi"].startswith("3.")
    finally:
        stop.set()
        wake.set()
        thread.join(10)
        server.shutdown()
        store.close()
        db.conn.close()
    # the cursor was saved: a new sender does not apply the same decisions again
    db = open_database(tmp_path / "gateway.db")
    assert db.execute("SELECT value FROM cursors WHERE name = 'downlink'").fetchone()[0] == 3
    db.conn.close()


def test_a_new_order_does_not_wait_behind_a_backlog(tmp_path):
    db = open_database(tmp_path / "gateway.db")
    outbox = Outbox(db)
    with transaction(db):
        for o in range(300):
            for r in (1, 2):
                outbox.put(f"old{o}", r, {"order_id": f"old{o}", "revision": r})
        outbox.put("new", 1, {"order_id": "new", "revision": 1})
        outbox.put("new", 2, {"order_id": "new", "revision": 2})
    first = outbox.pending(50)
    assert len(first) == 50 and ("new", 1) in {(p.key, p.revision) for p in first}
    assert ("new", 2) not in {(p.key, p.revision) for p in first}  # its later revisions keep their place
    seen: dict[str, int] = {}
    while batch := outbox.pending(50):  # drained batch by batch, every order's revisions still in order
        for p in batch:
            assert p.revision == seen.get(p.key, 0) + 1
            seen[p.key] = p.revision
        outbox.mark_sent([(p.key, p.revision) for p in batch])
    assert len(seen) == 301
    db.conn.close()
