"""The engine's state survives a crash: checkpoint + changelog give the orders of a run without one.

In process, fast: the engine and the order book on a real SQLite file, the way the agent
drives them (each step's orders and changelog row in one transaction), crashed at random
points (the engine object is dropped; what was not committed is gone), restored from the
checkpoint file and the changelog. The plain-Python reference engine is the oracle.
The same through real ``edge run`` processes and kill -9: tests/test_restart_equivalence.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.engine import Engine, checkpoint
from edge.engine.reference import ReferenceEngine
from edge.orders import OrderBook
from edge.outbox import open_database, transaction
from edge.registry import Registry
from test_engine import FUNCTION_RULES, RULES, _action, _message, make_registry, make_rules


class Lite:
    """The agent's write path without the network: engine -> (book + changelog) -> checkpoints."""

    def __init__(self, folder, rules, registry):
        self.folder, self.rules, self.registry = folder, rules, registry
        self.db = open_database(folder / "gateway.db")
        self.book = OrderBook(self.db, "gw")
        self.path = folder / "engine.ckpt"
        self.transitions: list[tuple] = []  # what the engine reported while running (not replaying)
        self.start()

    def start(self) -> None:
        """A (re)start: a fresh engine, the checkpoint restored, the changelog replayed."""
        self.engine = Engine(self.rules, self.registry, origin=0.0)
        covers, snapshot = 0, None
        if self.path.exists():
            snapshot = checkpoint.read(self.path)
            checkpoint.restore(self.engine, snapshot)
            covers = snapshot.covers
        _, self.step = checkpoint.replay(self.engine, self.db.conn, covers, snapshot.header if snapshot else None)
        self.step = max(self.step, checkpoint.last_step(self.db.conn))
        with transaction(self.db) as conn:
            self.step = checkpoint.append(conn, "program", 0.0, checkpoint.encode_program(self.engine))

    def _commit(self, kind: str, at: float, transitions, body: bytes | None) -> None:
        self.transitions += [(t.kind, t.rule.name, t.device.id, t.ts) for t in transitions]
        with transaction(self.db) as conn:
            self.book.apply(transitions, now=at)
            if body is not None:
                self.step = checkpoint.append(conn, kind, at, body)

    def message(self, device: str, ts: float, values: dict, arrival: float) -> None:
        builder = self.engine.builder()
        builder.add(self.registry.get(device).index, ts, values, arrival)
        batch = builder.build()
        self._commit("batch", arrival, self.engine.process(batch), checkpoint.encode_batch(batch))

    def tick(self, now: float) -> None:
        transitions, changed = checkpoint.tick(self.engine, now)
        if changed:
            self._commit("tick", now, transitions, b"")

    def checkpoint(self) -> None:
        checkpoint.write(checkpoint.take(self.engine, self.step), self.path)
        with transaction(self.db) as conn:
            checkpoint.truncate(conn, self.step)

    def revisions(self) -> list[dict]:
        keep = ("order_id", "revision", "change", "rule", "device", "opened_at", "state", "evidence")
        rows = self.db.execute("SELECT body FROM outbox ORDER BY seq").fetchall()
        return [{k: orjson.loads(row[0])[k] for k in keep} for row in rows]


def run(folder, rules, registry, steps, crashes=frozenset(), checkpoints=frozenset()) -> Lite:
    lite, clock = Lite(folder, rules, registry), 0.0
    for i, (gap, action) in enumerate(steps):
        if i in checkpoints:
            lite.checkpoint()
        if i in crashes:
            lite.start()  # kill -9: the old engine is gone; everything committed stays
        clock += gap
        if action in ("tick", "tick set back"):
            lite.tick(clock - 9.0 if action == "tick set back" else clock)
            continue
        device, offset, values = action
        ts = clock - offset if offset > 35 else clock
        lite.message(device, ts, values, arrival=clock)
    return lite


def reference_run(rules, registry, steps) -> list[tuple]:
    reference, clock, want = ReferenceEngine(rules, registry, origin=0.0), 0.0, []
    for gap, action in steps:
        clock += gap
        if action in ("tick", "tick set back"):
            want += reference.tick(clock - 9.0 if action == "tick set back" else clock)
            continue
        device, offset, values = action
        ts = clock - offset if offset > 35 else clock
        want += reference.message(device, ts, values, arrival=clock)
    return want


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(_action, min_size=10, max_size=120), data=st.data())
def test_crashes_at_random_points_give_the_orders_of_a_run_without_one(tmp_path_factory, steps, data):
    points = st.sets(st.integers(0, len(steps) - 1), max_size=6)
    crashes, checkpoints = data.draw(points, "crashes"), data.draw(points, "checkpoints")
    folder = tmp_path_factory.mktemp("rules")
    rules, registry = make_rules(folder, FUNCTION_RULES), make_registry()
    calm = run(tmp_path_factory.mktemp("calm"), rules, registry, steps)
    crashed = run(tmp_path_factory.mktemp("crashed"), rules, registry, steps, crashes, checkpoints)
    want = reference_run(rules, registry, steps)
    assert calm.transitions == want
    assert crashed.transitions == want  # every transition once: none lost, none again after a replay
    assert crashed.revisions() == calm.revisions()


def test_a_for_in_progress_and_the_silence_clock_survive_a_restart(tmp_path):
    """The issue's case: a cover's first tilted report before the restart, the second after."""
    rules, registry = make_rules(tmp_path, RULES), make_registry()
    lite = Lite(tmp_path, rules, registry)
    lite.message("c1", 100.0, {"tilt_deg": 30.0}, arrival=100.0)
    lite.checkpoint()
    lite.message("c2", 101.0, {"tilt_deg": 30.0}, arrival=101.0)  # only in the changelog
    lite.start()
    lite.message("c1", 111.0, {"tilt_deg": 30.0}, arrival=111.0)
    lite.message("c2", 112.0, {"tilt_deg": 30.0}, arrival=112.0)
    assert [(kind, device, ts) for kind, _, device, ts in lite.transitions] == [("open", "c1", 111.0), ("open", "c2", 112.0)]
    assert lite.engine.latest_ts[registry.get("c1").index, 0] == 111.0  # last seen: survives too


def test_changed_rules_start_fresh_and_unchanged_ones_keep_their_state(tmp_path):
    rules, registry = make_rules(tmp_path, RULES), make_registry()
    lite = Lite(tmp_path, rules, registry)
    lite.message("c1", 100.0, {"tilt_deg": 30.0, "water_cm": 10.0, "open": 1.0}, arrival=100.0)
    lite.checkpoint()
    changed = RULES.replace("for: 3s", "for: 4s").replace("name: full", "name: full_again")
    folder = tmp_path / "new"
    folder.mkdir()
    engine = Engine(make_rules(folder, changed), registry, origin=0.0)
    restored = checkpoint.restore(engine, checkpoint.read(lite.path))
    assert not restored.exact
    assert restored.kept == ["tilted"] and restored.changed == ["wet_and_open"]
    d = registry.get("c1").index
    assert engine.since[d, 0] == 100.0  # tilted's `for` goes on
    assert np.isnan(engine.since[d, 2])  # wet_and_open changed: fresh
    assert engine.latest[d, engine.program.metric_names.index("tilt_deg")] == 30.0


def test_a_rule_whose_state_layout_changed_is_refused_and_starts_fresh(tmp_path):
    rules, registry = make_rules(tmp_path, FUNCTION_RULES), make_registry()
    lite = Lite(tmp_path, rules, registry)
    for t in range(0, 30, 3):
        lite.message("c1", float(t), {"tilt_deg": 10.0 + t, "water_cm": 40.0}, arrival=float(t))
    snapshot = checkpoint.take(lite.engine, lite.step)
    rule = next(r for r in snapshot.header["rules"] if r["name"] == "avg_tilt")
    rule["instances"][0]["width"] += 1  # as if an upgrade gave avg() one more float per slot
    checkpoint.write(snapshot, lite.path)
    engine = Engine(rules, registry, origin=0.0)
    restored = checkpoint.restore(engine, checkpoint.read(lite.path))
    assert restored.refused == {"avg_tilt": "the state layout of its functions differs in this version"}
    assert "odd_tilt" in restored.kept


def test_a_checkpoint_of_another_layout_or_a_torn_file_is_refused_not_misread(tmp_path):
    rules, registry = make_rules(tmp_path, RULES), make_registry()
    lite = Lite(tmp_path, rules, registry)
    lite.message("c1", 1.0, {"tilt_deg": 30.0}, arrival=1.0)
    snapshot = checkpoint.take(lite.engine, lite.step)
    snapshot.header["layout"] = checkpoint.LAYOUT + 1
    checkpoint.write(snapshot, lite.path)
    with pytest.raises(checkpoint.CheckpointError, match="layout"):
        checkpoint.read(lite.path)
    snapshot.header["layout"] = checkpoint.LAYOUT
    checkpoint.write(snapshot, lite.path)
    lite.path.write_bytes(lite.path.read_bytes()[:300])
    with pytest.raises(checkpoint.CheckpointError, match="unreadable"):
        checkpoint.read(lite.path)


def test_devices_added_and_removed_between_runs_are_mapped_by_id(tmp_path):
    rules, registry = make_rules(tmp_path, RULES), make_registry()
    lite = Lite(tmp_path, rules, registry)
    lite.message("c2", 100.0, {"tilt_deg": 30.0}, arrival=100.0)
    lite.checkpoint()
    lite.message("b1", 101.0, {"distance_cm": 50.0}, arrival=101.0)  # changelog only
    devices = [d for d in registry.devices if d.id != "c1"]  # c1 gone, the rest move up one place
    moved = Registry([dataclasses.replace(d, index=i) for i, d in enumerate(devices)], registry.param_names)
    engine = Engine(rules, moved, origin=0.0)
    snapshot = checkpoint.read(lite.path)
    checkpoint.restore(engine, snapshot)
    checkpoint.replay(engine, lite.db.conn, snapshot.covers, snapshot.header)
    c2, b1 = moved.get("c2").index, moved.get("b1").index
    assert engine.since[c2, 0] == 100.0
    assert engine.latest_ts[b1, 0] == 101.0


def test_batches_logged_under_other_rules_are_renumbered_when_replayed(tmp_path):
    """A changelog written by one rule set, replayed after a restart with another: each reading
    reaches the metric of the same name, a camera's text the new code of the same text."""
    before = RULES + """  - name: person
    applies_to: {kind: camera}
    when: label == "person"
    order: {category: c4, severity: minor, title: "{device}"}
"""
    after = """rules:
  - name: car_or_person
    applies_to: {kind: camera}
    when: label == "car" or label == "bike" or label == "person"
    order: {category: c4, severity: minor, title: "{device}"}
  - name: wet
    applies_to: {kind: manhole_cover}
    when: water_cm < 30
    order: {category: c3, severity: major, title: "{device}"}
"""
    registry = make_registry()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    lite = Lite(tmp_path, make_rules(tmp_path / "a", before), registry)
    lite.message("k1", 100.0, {"label": "dog"}, arrival=100.0)  # a text no rule of either set mentions
    lite.message("c1", 101.0, {"tilt_deg": 30.0, "water_cm": 12.0}, arrival=101.0)
    lite.message("k1", 102.0, {"label": "person"}, arrival=102.0)
    old = lite.engine.program
    assert old.metric_names.index("water_cm") != 0 and old.texts.code("person") == 1.0
    lite.rules = make_rules(tmp_path / "b", after)  # crash; the next start has other rules (no checkpoint)
    lite.start()
    engine = lite.engine
    p = engine.program
    assert p.metric_names.index("water_cm") != old.metric_names.index("water_cm") or \
        p.metric_names.index("label") != old.metric_names.index("label")
    k1, c1 = registry.get("k1").index, registry.get("c1").index
    assert engine.latest[c1, p.metric_names.index("water_cm")] == 12.0
    assert engine.latest_ts[c1, p.metric_names.index("water_cm")] == 101.0
    assert "tilt_deg" not in p.metric_names  # no rule reads it now: its readings were dropped
    assert engine.latest[k1, p.metric_names.index("label")] == p.texts.code("person") == 3.0  # was 1.0
    assert engine.latest_ts[k1, p.metric_names.index("label")] == 102.0
    # car_or_person was not running when those batches were logged: it starts fresh now, as on a
    # reload, and the next report opens its order (had it learnt from the replay, none would open)
    assert not engine.active[k1, 0] and np.isnan(engine.since[k1, 0])
    lite.message("k1", 103.0, {"label": "person"}, arrival=103.0)
    assert lite.transitions[-1] == ("open", "car_or_person", "k1", 103.0)


def test_a_rule_added_by_a_reload_starts_where_the_reload_was_when_replayed(tmp_path):
    """Batches before a reload, the reload (a 'program' row), batches after, kill -9: the new
    rule's state after the replay is that of the run without a crash."""
    first = RULES
    second = RULES + """  - name: many_tilts
    applies_to: {kind: manhole_cover}
    when: count(tilt_deg, 60s) >= 3
    order: {category: c5, severity: minor, title: "{device}"}
"""
    registry = make_registry()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    lite = Lite(tmp_path, make_rules(tmp_path / "a", first), registry)
    lite.message("c1", 100.0, {"tilt_deg": 1.0}, arrival=100.0)
    lite.message("c1", 101.0, {"tilt_deg": 2.0}, arrival=101.0)
    lite.checkpoint()
    lite.message("c1", 102.0, {"tilt_deg": 3.0}, arrival=102.0)  # only in the changelog
    rules = make_rules(tmp_path / "b", second)
    reloaded = Engine(rules, registry, origin=0.0)  # what the agent does on a reload
    reloaded.carry_over(lite.engine)
    lite.engine, lite.rules = reloaded, rules
    with transaction(lite.db) as conn:
        lite.step = checkpoint.append(conn, "program", 0.0, checkpoint.encode_program(reloaded))
    lite.message("c1", 103.0, {"tilt_deg": 4.0}, arrival=103.0)
    lite.message("c1", 104.0, {"tilt_deg": 5.0}, arrival=104.0)
    assert not [t for t in lite.transitions if t[1] == "many_tilts"]  # it counted 2 readings, not 5
    live = {name: getattr(reloaded, name).copy() for name in checkpoint.ARRAYS if name != "quiet"}
    lite.start()  # kill -9
    for name, array in live.items():
        np.testing.assert_array_equal(getattr(lite.engine, name), array, err_msg=name)
    lite.message("c1", 105.0, {"tilt_deg": 6.0}, arrival=105.0)
    assert lite.transitions[-1] == ("open", "many_tilts", "c1", 105.0)


STATE = ("latest", "latest_ts", "since", "active", "quiet", "reported", "state")


@settings(max_examples=60, deadline=None)
@given(messages=st.lists(_message, min_size=1, max_size=80), cuts=st.sets(st.integers(1, 79), max_size=20),
       ticks=st.sets(st.integers(1, 79), max_size=4))
def test_batches_joined_into_one_changelog_row_replay_to_the_state_they_left(tmp_path_factory, messages, cuts, ticks):
    """The agent writes the batches of one commit as one row (checkpoint.rows): replayed joined, they
    leave the engine exactly as the batches processed apart did; a tick between them stays apart."""
    folder = tmp_path_factory.mktemp("rules")
    rules, registry = make_rules(folder, FUNCTION_RULES), make_registry()
    live, replayed = Engine(rules, registry, origin=0.0), Engine(rules, registry, origin=0.0)
    log, clock, builder = [], 0.0, live.builder()
    for n, (device, gap, values) in enumerate(messages, start=1):
        clock += gap
        builder.add(registry.get(device).index, clock, values, arrival=clock)
        if n in cuts or n in ticks or n == len(messages):
            batch = builder.build()
            live.process(batch)
            log.append(("batch", clock, batch))
            builder = live.builder()
        if n in ticks:
            _, changed = checkpoint.tick(live, clock + 1.0)
            log.append(("tick", clock + 1.0, b""))
    rows = checkpoint.rows(log)
    assert sum(kind == "batch" for kind, _, _ in rows) <= len(ticks) + 1
    for kind, at, body in rows:
        if kind == "batch":
            replayed.process(checkpoint.decode_batch(body))
        else:
            checkpoint.tick(replayed, at)
    for name in STATE:
        np.testing.assert_array_equal(getattr(replayed, name), getattr(live, name), err_msg=name)
