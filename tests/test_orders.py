"""Orders: one live order per (rule, device), a revision per change, all in one SQLite file."""

from __future__ import annotations

import sqlite3

import orjson
import pytest

from conftest import REGISTRY, ROOT, RULES
from edge.engine import Engine, Evidence, Transition, load_rules
from edge.orders import OrderBook
from edge.orders.book import ORDER_COLUMNS
from edge.orders.categories import Categories, CategoryError
from edge.outbox import Outbox, open_database
from edge.registry import Registry


@pytest.fixture
def setup(tmp_path):
    registry = Registry.load(REGISTRY)
    rules = {r.name: r for r in load_rules([RULES])}
    db = open_database(tmp_path / "gateway.db")
    yield registry, rules, db, tmp_path / "gateway.db"
    db.conn.close()


def transition(kind, rules, registry, device="MH-0003", ts=1000.0, value=30.0):
    return Transition(kind, rules["cover_tilted"], registry.get(device), ts, (Evidence("tilt_deg", value),))


def test_lifecycle_opens_once_and_revises_each_change(setup):
    registry, rules, db, _ = setup
    book = OrderBook(db, "gw-1")
    (opened,) = book.apply([transition("open", rules, registry)])
    assert (opened.revision, opened.state, opened.change) == (1, "opened", "opened")
    assert book.apply([transition("open", rules, registry, ts=1010)]) == []  # seen again: same order
    (cleared,) = book.apply([transition("clear", rules, registry, ts=1020, value=2.0)])
    (reopened,) = book.apply([transition("open", rules, registry, ts=1030)])
    assert cleared.order_id == reopened.order_id == opened.order_id
    assert (cleared.revision, reopened.revision) == (2, 3)
    assert book.count() == 1
    pending = Outbox(db).pending(10)
    assert [(p.key, p.revision, p.body["state"]) for p in pending] == [
        (opened.order_id, 1, "opened"), (opened.order_id, 2, "cleared"), (opened.order_id, 3, "opened"),
    ]
    body = pending[0].body
    assert body["title"] == "Manhole cover MH-0003 open or tilted at 16 Jiefang Rd"
    assert (body["grid"], body["zone"], body["team"], body["device_kind"]) == ("G01", "Z1", "team-grid-01", "manhole_cover")
    assert body["evidence"] == [{"device": "MH-0003", "rule": "cover_tilted", "metric": "tilt_deg", "value": 30.0, "at": "1970-01-01T00:16:40.000Z", "condition": "tilt_deg > 15 or open == 1"}]
    clearing = pending[1].body["evidence"][-1]  # a clearing's values are shown with the clearing condition
    assert (clearing["value"], clearing["condition"]) == (2.0, "tilt_deg < 5 and open == 0")


def test_a_second_live_order_for_the_same_problem_is_impossible(setup):
    registry, rules, db, path = setup
    OrderBook(db, "gw-1").apply([transition("open", rules, registry)])
    with sqlite3.connect(path) as conn, pytest.raises(sqlite3.IntegrityError):
        columns = ", ".join(ORDER_COLUMNS)
        conn.execute(f"INSERT INTO orders ({columns}) SELECT 'other', {columns.split(', ', 1)[1]} FROM orders")


def test_restart_resumes_open_orders_so_they_can_clear(setup):
    registry, rules, db, path = setup
    OrderBook(db, "gw-1").apply([transition("open", rules, registry)])
    db.conn.close()

    db2 = open_database(path)  # a new process: engine state is gone, orders are not
    book = OrderBook(db2, "gw-1")
    engine = Engine(list(rules.values()), registry)
    for rule, device, state in book.live_orders():
        if state == "opened":
            engine.mark_active(rule, device)
    builder = engine.builder()
    device = registry.get("MH-0003")
    builder.add(device.index, 2000.0, {"tilt_deg": 1.0, "open": 0})
    builder.add(device.index, 2010.0, {"tilt_deg": 1.0, "open": 0})
    changes = book.apply(engine.process(builder.build()))
    assert [(c.change, c.revision) for c in changes] == [("cleared", 2)]
    db2.conn.close()


def test_schema_is_migrated_not_recreated(setup):
    registry, rules, db, path = setup
    OrderBook(db, "gw-1").apply([transition("open", rules, registry)])
    db.conn.close()
    again = open_database(path)
    assert again.execute("PRAGMA user_version").fetchone()[0] >= 1
    assert again.execute("SELECT count(*) FROM orders").fetchone()[0] == 1
    again.conn.close()


CATEGORIES = ROOT / "config" / "categories.csv"


def test_categories_escalation_and_timeline(setup):
    registry, rules, db, _ = setup
    book = OrderBook(db, "gw-1", Categories.load(CATEGORIES))
    (opened,) = book.apply([transition("open", rules, registry, ts=1000.0)])  # manhole_cover_displaced: 15 min
    assert book.escalate(now=1000.0 + 14 * 60) == []
    (first,) = book.escalate(now=1000.0 + 15 * 60)
    assert book.escalate(now=1000.0 + 20 * 60) == []  # the next one comes a whole limit later
    (second,) = book.escalate(now=1000.0 + 30 * 60)
    assert (first.change, first.revision, second.revision) == ("escalated", 2, 3)
    book.apply_platform_state(opened.order_id, "accepted", now=1000.0 + 31 * 60)
    assert book.escalate(now=1000.0 + 60 * 60) == []  # accepted orders are not escalated
    assert [(e["revision"], e["change"], e["state"], e["severity"]) for e in book.timeline(opened.order_id)] == [
        (1, "opened", "opened", "critical"), (2, "escalated", "opened", "critical"),
        (3, "escalated", "opened", "critical"), (4, "accepted", "accepted", "critical"),
    ]
    body = Outbox(db).pending(10)[0].body
    assert (body["category"], body["category_code"], body["category_name"]) == (
        "manhole_cover_displaced", "B010101", "Manhole cover missing, displaced or damaged")
    assert [o["id"] for o in book.orders(state="accepted", grid="G01")] == [opened.order_id]
    assert book.orders(state="opened") == [] and book.orders(grid="G02") == []


def test_escalation_raises_severity_one_level_at_a_time(setup):
    registry, rules, db, _ = setup
    book = OrderBook(db, "gw-1", Categories.load(CATEGORIES))
    full = Transition("open", rules["bin_full"], registry.get("BIN-0001"), 0.0, (Evidence("fill_pct", 90.0),))
    book.apply([full])  # minor, bin_overflow: 2 h to accept
    severities = [book.escalate(now=hours * 3600.0) and book.orders()[0]["severity"] for hours in (2, 4, 6)]
    assert severities == ["major", "critical", "critical"]


def test_every_rule_category_is_in_the_table():
    table = Categories.load(CATEGORIES)
    for rule in load_rules([RULES]):
        assert rule.spec.order.category in table, rule.name


def test_a_bad_category_table_names_its_line(tmp_path):
    bad = tmp_path / "c.csv"
    bad.write_text("key,code,name,class,accept_within,group,group_window\nx,1,X,thing,1h,,\n")
    with pytest.raises(CategoryError, match=r"c\.csv:2: class must be component or event"):
        Categories.load(bad)


def test_water_seen_by_covers_and_a_camera_in_one_grid_makes_one_order(setup):
    registry, _, db, _ = setup
    rules = {r.name: r for r in load_rules([RULES])}
    book = OrderBook(db, "gw-1", Categories.load(CATEGORIES))

    def water(device, ts, kind="open"):
        return Transition(kind, rules["water_rising"], registry.get(device), ts, (Evidence("water_cm", 20.0),))

    camera = Transition("open", rules["waterlogging"], registry.get("CAM-0001"), 1300.0,
                        (Evidence("label", "waterlogging"), Evidence("score", 0.8)))
    changes = book.apply([water("MH-0001", 1000.0), water("MH-0002", 1100.0), water("MH-0004", 1200.0), camera])
    assert [c.change for c in changes] == ["opened", "grouped", "grouped", "grouped"]
    assert len({c.order_id for c in changes}) == 1 and book.count() == 1
    order_id = changes[0].order_id
    assert [m[1] for m in book.members(order_id)] == ["MH-0001", "MH-0002", "MH-0004", "CAM-0001"]
    evidence_devices = {e["device"] for e in Outbox(db).pending(10)[-1].body["evidence"]}
    assert evidence_devices == {"MH-0001", "MH-0002", "MH-0004", "CAM-0001"}

    other_grid = book.apply([water("MH-0010", 1250.0)])  # G02: its own order
    assert other_grid[0].change == "opened" and other_grid[0].order_id != order_id
    too_late = book.apply([water("MH-0005", 1000.0 + 31 * 60)])  # after the 30 min window: its own order
    assert too_late[0].change == "opened"

    # the order clears only when every problem in it has cleared
    assert book.apply([water("MH-0001", 2000.0, "clear"), water("MH-0002", 2000.0, "clear"),
                       water("MH-0004", 2000.0, "clear")]) == []
    cleared = book.apply([Transition("clear", rules["waterlogging"], registry.get("CAM-0001"), 2100.0, ())])
    assert [(c.order_id, c.change) for c in cleared] == [(order_id, "cleared")]
    reopened = book.apply([water("MH-0002", 2200.0)])  # the same problem again: the same order
    assert [(c.order_id, c.change) for c in reopened] == [(order_id, "reopened")]


def test_a_file_from_the_first_version_is_migrated_with_its_open_orders(tmp_path):
    import sqlite3

    from edge.outbox.database import MIGRATIONS, _statements

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for statement in _statements(MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("PRAGMA user_version=1")
    conn.execute(
        "INSERT INTO orders VALUES ('gw-old-1', 'cover_tilted', 'MH-0003', 'manhole_cover', 'manhole_cover_displaced', "
        "'critical', 't', 'G01', 'Z1', 'team', 'a', 0, 0, 'opened', 1, 1000, 1000, 1000, '[]')"
    )
    conn.commit()
    conn.close()
    db = open_database(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    book = OrderBook(db, "gw-old")
    assert book.members("gw-old-1") == [("cover_tilted", "MH-0003", "opened")]
    registry = Registry.load(REGISTRY)
    rules = {r.name: r for r in load_rules([RULES])}
    (cleared,) = book.apply([transition("clear", rules, registry, ts=2000.0, value=1.0)])
    assert (cleared.order_id, cleared.revision, cleared.change) == ("gw-old-1", 2, "cleared")
    db.conn.close()


def test_orders_commands_and_category_check(tmp_path):
    import subprocess

    from conftest import edge_command, write_gateway_config

    config = write_gateway_config(tmp_path, "mqtt://127.0.0.1:1", "http://127.0.0.1:2")
    registry = Registry.load(REGISTRY)
    rules = {r.name: r for r in load_rules([RULES])}
    db = open_database(tmp_path / "data" / "gateway.db")
    book = OrderBook(db, "gw-test", Categories.load(CATEGORIES))
    (opened,) = book.apply([transition("open", rules, registry, ts=1000.0)])
    book.apply_platform_state(opened.order_id, "accepted", now=1100.0)
    db.conn.close()
    listed = subprocess.run(edge_command() + ["orders", "list", "--config", str(config), "--state", "accepted"],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and opened.order_id in listed.stdout and "cover_tilted" in listed.stdout
    header, row = listed.stdout.splitlines()
    assert header.split()[:4] == ["order", "opened", "(device", "time)"] and "state" in header and "title" in header
    assert row.index("accepted") == header.index("state")  # the columns line up under their names
    bogus = subprocess.run(edge_command() + ["orders", "list", "--config", str(config), "--state", "bogus"],
                           capture_output=True, text=True, timeout=60)
    assert bogus.returncode == 2 and "'bogus' is not one of" in bogus.stderr and "resolved" in bogus.stderr
    none = subprocess.run(edge_command() + ["orders", "list", "--config", str(config), "--state", "closed"],
                          capture_output=True, text=True, timeout=60)
    assert none.returncode == 0 and none.stdout.strip() == "no orders in state closed"
    shown = subprocess.run(edge_command() + ["orders", "show", opened.order_id, "--config", str(config)],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0
    assert "r1" in shown.stdout and "accepted   -> accepted" in shown.stdout and "cover_tilted on MH-0003 (opened)" in shown.stdout
    missing = subprocess.run(edge_command() + ["orders", "show", "nope", "--config", str(config)],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "no order 'nope'" in missing.stderr

    bad_rules = tmp_path / "r.yaml"
    bad_rules.write_text((RULES / "bins.yaml").read_text().replace("category: bin_overflow", "category: bin_overflw"))
    check = subprocess.run(edge_command() + ["rules", "check", str(bad_rules)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 1
    assert "category 'bin_overflw' is not in the category table (did you mean 'bin_overflow'?)" in check.stderr


def run_stream(engine, book, messages, now=None):
    """Feed (device, ts, values) through the engine one message at a time; ticks at each message's time."""
    changes = []
    for device_id, ts, values in messages:
        builder = engine.builder()
        builder.add(engine.registry.get(device_id).index, ts, values)
        changes += book.apply(engine.process(builder.build()), now=ts if now is None else now)
        changes += book.apply(engine.tick(ts), now=ts if now is None else now)
    return changes


def test_storms_flapping_and_returning_problems_open_exactly_the_orders_they_should(setup):
    registry, rules, db, _ = setup
    book = OrderBook(db, "gw-1", Categories.load(CATEGORIES), reopen_within=3600.0)
    t0 = 1_000_000.0
    engine = Engine(list(rules.values()), registry, origin=t0)

    # a storm of repeated alarms from one cover: one order, one revision
    storm = [("MH-0001", t0 + s, {"tilt_deg": 30.0, "open": 1.0}) for s in range(600)]
    changes = run_stream(engine, book, storm)
    assert [(c.change, c.revision) for c in changes] == [("opened", 1)]

    # a flapping sensor around the threshold never holds for 10 s: nothing
    flap = [("MH-0002", t0 + s, {"tilt_deg": 16.0 if s % 2 else 14.0, "open": 0.0}) for s in range(121)]  # ends level
    assert run_stream(engine, book, flap) == []

    # flapping while open does not clear it (hysteresis: level below 5 degrees for 10 s)
    flap_open = [("MH-0001", t0 + 600 + s, {"tilt_deg": 4.0 if s % 2 else 20.0, "open": 0.0}) for s in range(60)]
    assert run_stream(engine, book, flap_open) == []

    # the cover put back: cleared; knocked again: the same order reopened
    level = [("MH-0001", t0 + 700 + s, {"tilt_deg": 1.0, "open": 0.0}) for s in range(15)]
    again = [("MH-0001", t0 + 800 + s, {"tilt_deg": 25.0, "open": 1.0}) for s in range(15)]
    changes = run_stream(engine, book, level + again)
    assert [(c.change, c.revision) for c in changes] == [("cleared", 2), ("reopened", 3)]

    # the platform closes it; back within the cooldown: reopened; after it: a new order
    (order_id,) = {c.order_id for c in changes}
    book.apply_platform_state(order_id, "closed", now=t0 + 900)
    changes = run_stream(engine, book, [("MH-0001", t0 + 910 + s, {"tilt_deg": 1.0, "open": 0.0}) for s in range(15)]
                         + [("MH-0001", t0 + 930 + s, {"tilt_deg": 30.0, "open": 1.0}) for s in range(12)])
    assert [(c.order_id, c.change, c.revision) for c in changes] == [(order_id, "reopened", 5)]
    book.apply_platform_state(order_id, "accepted", now=t0 + 1000)
    book.apply_platform_state(order_id, "closed", now=t0 + 1001)
    later = t0 + 1001 + 3601
    changes = run_stream(engine, book, [("MH-0001", later + s, {"tilt_deg": 1.0, "open": 0.0}) for s in range(15)]
                         + [("MH-0001", later + 20 + s, {"tilt_deg": 30.0, "open": 1.0}) for s in range(12)])
    assert [c.change for c in changes] == ["opened"] and changes[0].order_id != order_id
    assert book.count() == 2


def test_an_open_problem_getting_worse_revises_its_order_and_keeps_the_platform_state(setup):
    registry, rules, db, _ = setup
    book = OrderBook(db, "gw-1", Categories.load(CATEGORIES))
    t0 = 2_000_000.0
    engine = Engine(list(rules.values()), registry, origin=t0)
    # water_rising: `water_cm < 30` for 1m, worse_by 5 (cm closer since the last report)
    rising = [("MH-0004", t0 + 10 * s, {"water_cm": 28.0}) for s in range(60)]  # a storm of the same alarm
    rising += [("MH-0004", t0 + 600 + 10 * s, {"water_cm": w}) for s, w in enumerate([26.0, 24.5, 23.0, 22.0])]
    changes = run_stream(engine, book, rising)
    assert [(c.change, c.revision, c.state) for c in changes] == [("opened", 1, "opened"), ("updated", 2, "opened")]
    (order_id,) = {c.order_id for c in changes}
    book.apply_platform_state(order_id, "accepted", now=t0 + 700)
    worse = [("MH-0004", t0 + 700 + 10 * s, {"water_cm": w}) for s, w in enumerate([20.0, 18.0, 12.0, 11.0])]
    changes = run_stream(engine, book, worse)
    assert [(c.change, c.revision, c.state) for c in changes] == [("updated", 4, "accepted"), ("updated", 5, "accepted")]
    (order,) = book.orders()
    values = [e["value"] for e in orjson.loads(order["evidence"])]
    assert values == [28.0, 23.0, 18.0, 12.0]  # what crossed the limit, and each step worse
    assert [e["change"] for e in book.timeline(order_id)] == ["opened", "updated", "accepted", "updated", "updated"]
    # better again, then clear: no update for getting better
    changes = run_stream(engine, book, [("MH-0004", t0 + 800 + 60 * s, {"water_cm": 70.0}) for s in range(12)])
    assert [c.change for c in changes] == []  # the platform accepted it: the edge no longer clears it
    assert book.count() == 1


def test_escalation_counts_in_the_device_s_clock_from_when_the_gateway_opened_the_order(setup):
    """docs/uplink.md: which clock escalation uses. 15 minutes to accept an open cover."""
    registry, rules, db, _ = setup
    book = OrderBook(db, "gw-1", Categories.load(CATEGORIES))
    gateway_now = 1_000_000.0
    clocks = {
        "MH-0003": gateway_now + 3600,  # its clock runs an hour ahead, steadily
        "MH-0004": gateway_now,  # a backlog: its readings are 5 hours old, sent just now
        "MH-0005": gateway_now,  # a simulated street: device time runs 240x faster than the gateway's
    }
    book.apply([transition("open", rules, registry, "MH-0003", ts=clocks["MH-0003"]),
                transition("open", rules, registry, "MH-0004", ts=gateway_now - 5 * 3600),
                transition("open", rules, registry, "MH-0005", ts=clocks["MH-0005"])],
               now=gateway_now, clock=clocks.__getitem__)
    assert book.escalate(now=gateway_now + 60, clock=clocks.__getitem__) == []  # the backlog: not at once
    clocks["MH-0003"] += 15 * 60  # 15 gateway minutes later
    clocks["MH-0004"] += 15 * 60
    clocks["MH-0005"] += 240  # 1 gateway second later, 4 device minutes
    escalated = book.escalate(now=gateway_now + 15 * 60, clock=clocks.__getitem__)
    assert sorted(book.orders()[[o["id"] for o in book.orders()].index(c.order_id)]["device"]
                  for c in escalated) == ["MH-0003", "MH-0004"]
    clocks["MH-0005"] += 15 * 60 * 240
    (sim,) = book.escalate(now=gateway_now + 15 * 60 + 1, clock=clocks.__getitem__)
    assert [o["device"] for o in book.orders() if o["id"] == sim.order_id] == ["MH-0005"]


def test_the_command_line_knows_every_order_state():
    from edge.cli import ORDER_STATES
    from edge.orders.book import LIVE_STATES, PLATFORM_TRANSITIONS

    assert ORDER_STATES == (*LIVE_STATES, "closed", "rejected")
    assert {s for targets in PLATFORM_TRANSITIONS.values() for s in targets} <= set(ORDER_STATES)
