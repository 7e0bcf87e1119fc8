"""The numba engine against the plain-Python reference, and the semantics of `for` and clearing."""

from __future__ import annotations

import math
import random

from hypothesis import event, given, settings
from hypothesis import strategies as st

from edge.engine import Engine
from edge.engine.reference import ReferenceEngine
from edge.engine.rules import load_rules
from edge.registry import Device, Registry

RULES = """\
rules:
  - name: tilted
    applies_to: {kind: manhole_cover}
    when: tilt_deg > 15
    for: 10s
    clear_when: tilt_deg < 5
    clear_for: 5s
    worse_by: 10%
    order: {category: c1, severity: critical, title: "{device}"}
  - name: full
    applies_to: {kind: bin}
    when: 100 * (1 - distance_cm / device.depth_cm) >= 85
    order: {category: c2, severity: minor, title: "{device}"}
  - name: wet_and_open
    applies_to: {kind: manhole_cover, grid: G2}
    when: water_cm < 30 and not (open == 0)
    for: 3s
    order: {category: c3, severity: major, title: "{device}"}
"""

FUNCTION_RULES = """rules:
  - name: avg_tilt
    applies_to: {kind: manhole_cover}
    when: avg(tilt_deg, 20s) > 12 and count(tilt_deg, 10s) >= 2
    for: 5s
    order: {category: c, severity: minor, title: "{device}"}
  - name: fast_filling
    applies_to: {kind: bin}
    when: rate(distance_cm, 30s) < -10 or delta(distance_cm, 20s) < -40
    order: {category: c, severity: minor, title: "{device}"}
  - name: silent
    applies_to: {kind: [manhole_cover, bin]}
    when: absent(15s)
    order: {category: c, severity: minor, title: "{device}"}
  - name: odd_tilt
    applies_to: {kind: manhole_cover}
    when: zscore(tilt_deg, 30s) > 2 or max(tilt_deg, 10s) - min(tilt_deg, 10s) > 20
    clear_when: zscore(tilt_deg, 30s) < 1
    order: {category: c, severity: minor, title: "{device}"}
  - name: just_opened
    applies_to: {kind: manhole_cover}
    when: changed(open) and open == 1
    clear_for: 2s
    order: {category: c, severity: minor, title: "{device}"}
  - name: flat
    applies_to: {kind: manhole_cover}
    when: stuck(water_cm, 20s)
    order: {category: c, severity: minor, title: "{device}"}
  - name: odd_water
    applies_to: {kind: manhole_cover}
    when: anomaly(water_cm) > 0.5
    order: {category: c, severity: minor, title: "{device}"}
  - name: parked
    applies_to: {kind: camera}
    when: label == "car" and zone == "no_parking" and score >= 0.7 and active == 1
    for: 5s
    clear_when: active == 0 or label != "car"
    order: {category: c, severity: minor, title: "{device}"}
"""


def make_registry() -> Registry:
    devices = [
        Device("c1", "manhole_cover", "m", "a", 0, 0, "G1", "Z1", "t", 0, {}),
        Device("c2", "manhole_cover", "m", "a", 0, 0, "G2", "Z1", "t", 1, {}),
        Device("b1", "bin", "m", "a", 0, 0, "G1", "Z1", "t", 2, {"depth_cm": 100.0}),
        Device("b2", "bin", "m", "a", 0, 0, "G2", "Z1", "t", 3, {}),
        Device("k1", "camera", "m", "a", 0, 0, "G1", "Z1", "t", 4, {}),
    ]
    return Registry(devices, ["depth_cm"])


def make_rules(tmp_path, text=RULES):
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return load_rules([path])


def run_kernel(engine: Engine, registry: Registry, messages, batch_size: int):
    out = []
    for start in range(0, len(messages), batch_size):
        builder = engine.builder()
        for device_id, ts, values in messages[start:start + batch_size]:
            builder.add(registry.get(device_id).index, ts, values)
        out += [(t.kind, t.rule.name, t.device.id, t.ts) for t in engine.process(builder.build())]
    return out


def test_for_waits_for_a_message_at_least_that_long_after(tmp_path):
    registry = make_registry()
    engine = Engine(make_rules(tmp_path), registry)
    messages = [("c1", 100.0, {"tilt_deg": 20}), ("c1", 105.0, {"tilt_deg": 25}), ("c1", 109.9, {"tilt_deg": 25}),
                ("c1", 110.0, {"battery_v": 3.5}),  # any report of the device advances time
                ("c1", 111.0, {"tilt_deg": 26}),  # already open, and not worse by 10% of 15: nothing new
                ("c1", 112.0, {"tilt_deg": 3}), ("c1", 116.0, {"tilt_deg": 3}), ("c1", 117.0, {"tilt_deg": 2})]
    assert run_kernel(engine, registry, messages, 100) == [
        ("open", "tilted", "c1", 110.0),
        ("clear", "tilted", "c1", 117.0),
    ]


def test_interrupted_condition_starts_over_and_late_readings_are_ignored(tmp_path):
    registry = make_registry()
    engine = Engine(make_rules(tmp_path), registry)
    messages = [("c1", 100.0, {"tilt_deg": 20}), ("c1", 108.0, {"tilt_deg": 10}), ("c1", 109.0, {"tilt_deg": 20}),
                ("c1", 115.0, {"tilt_deg": 20}),
                ("c1", 90.0, {"tilt_deg": 1}),  # late: older than what we have
                ("c1", 119.0, {"tilt_deg": 20})]
    assert run_kernel(engine, registry, messages, 100) == [("open", "tilted", "c1", 119.0)]
    assert engine.late_readings == 2  # the late message's marker and its reading


def test_a_wait_carried_over_to_reloaded_rules_ends_on_time(tmp_path):
    registry = make_registry()
    before = Engine(make_rules(tmp_path), registry)
    assert run_kernel(before, registry, [("c1", 100.0, {"tilt_deg": 20})], 10) == []  # `for: 10s` starts
    after = Engine(make_rules(tmp_path), registry)
    assert "tilted" in after.carry_over(before)
    assert run_kernel(after, registry, [("c1", 105.0, {"tilt_deg": 20}), ("c1", 110.0, {"tilt_deg": 20})], 10) == [
        ("open", "tilted", "c1", 110.0),  # from 100, not from the first message after the reload
    ]


def test_registry_parameters_and_missing_parameters(tmp_path):
    registry = make_registry()
    engine = Engine(make_rules(tmp_path), registry)
    messages = [("b1", 1.0, {"distance_cm": 10.0}), ("b2", 1.0, {"distance_cm": 0.0})]  # b2 has no depth
    assert run_kernel(engine, registry, messages, 100) == [("open", "full", "b1", 1.0)]


_message = st.tuples(
    st.sampled_from(["c1", "c2", "b1", "b2"]),
    st.integers(0, 40).map(float),
    st.fixed_dictionaries(
        {},
        optional={
            "tilt_deg": st.sampled_from([0.0, 4.0, 10.0, 16.0, 30.0]),
            "water_cm": st.sampled_from([10.0, 50.0]),
            "open": st.sampled_from([0.0, 1.0]),
            "distance_cm": st.sampled_from([5.0, 15.0, 60.0]),
            "battery_v": st.just(3.3),
        },
    ),
)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, 4), _message), max_size=80), batch_size=st.integers(1, 30))
def test_kernel_matches_reference(tmp_path_factory, steps, batch_size):
    """Random, irregular, late and duplicate messages: the kernel and the reference agree."""
    tmp_path = tmp_path_factory.mktemp("rules")
    rules, registry = make_rules(tmp_path), make_registry()
    clock, messages = 0.0, []
    for gap, (device, offset, values) in steps:
        clock += gap
        messages.append((device, clock - offset if offset > 35 else clock, values))  # a few go back in time
    reference = ReferenceEngine(rules, registry)
    want = [t for m in messages for t in reference.message(*m)]
    assert run_kernel(Engine(rules, registry), registry, messages, batch_size) == want


_camera = st.tuples(
    st.just("k1"),
    st.integers(0, 40).map(float),
    st.fixed_dictionaries(
        {"active": st.sampled_from([0.0, 1.0])},
        optional={
            "label": st.sampled_from(["car", "truck", "person"]),
            "zone": st.sampled_from(["no_parking", "road"]),
            "score": st.sampled_from([0.5, 0.7, 0.9]),
        },
    ),
)
_cover = st.tuples(
    st.sampled_from(["c1", "c2"]),
    st.integers(0, 40).map(float),
    st.fixed_dictionaries(
        {"tilt_deg": st.sampled_from([1.0, 1.0, 2.0, 14.0, 30.0])},
        optional={"water_cm": st.sampled_from([10.0, 50.0]), "open": st.sampled_from([0.0, 1.0])},
    ),
)
_action = st.one_of(
    st.tuples(st.integers(0, 4), st.one_of(_cover, _camera, _message)),
    st.tuples(st.integers(0, 6), st.sampled_from(["tick", "tick", "tick set back"])),  # the gateway's clock set back 9 s
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(_action, min_size=10, max_size=150), skew=st.sampled_from([0.0, 3.0, -7.5]))
def test_kernel_matches_reference_with_functions_ticks_and_skewed_clocks(tmp_path_factory, steps, skew):
    tmp_path = tmp_path_factory.mktemp("rules")
    rules, registry = make_rules(tmp_path, FUNCTION_RULES), make_registry()
    engine, reference = Engine(rules, registry, origin=0.0), ReferenceEngine(rules, registry, origin=0.0)
    got, want, clock = [], [], 0.0

    def name(t):
        return (t.kind, t.rule.name, t.device.id, t.ts)

    for gap, action in steps:
        clock += gap
        if action in ("tick", "tick set back"):
            now = clock - 9.0 if action == "tick set back" else clock
            got += [name(t) for t in engine.tick(now)]
            want += reference.tick(now)
            continue
        device, offset, values = action
        ts = clock - offset if offset > 35 else clock
        device_ts = ts - skew if device == "c1" else ts  # c1's clock is off; arrival is the gateway's time
        builder = engine.builder()
        builder.add(registry.get(device).index, device_ts, values, arrival=ts)
        got += [name(t) for t in engine.process(builder.build())]
        want += reference.message(device, device_ts, values, arrival=ts)
    assert got == want
    event(f"transitions: {min(len(want), 5)}+" if len(want) >= 5 else f"transitions: {len(want)}")
    for kind, rule, device, ts in want:
        event(f"rule fired: {rule}")


def test_a_device_clock_never_runs_back_before_its_newest_report(tmp_path):
    """A tick at a gateway time before the last report arrived (the gateway's clock set back)
    evaluates at the device's newest time; so does a late report. Kernel and reference agree."""
    rules, registry = make_rules(tmp_path, FUNCTION_RULES), make_registry()
    engine, reference = Engine(rules, registry, origin=0.0), ReferenceEngine(rules, registry, origin=0.0)
    got, want = [], []
    for ts, values in [(1.0, {"tilt_deg": 30.0}), (2.0, {"tilt_deg": 30.0}),
                       (11.0, {"tilt_deg": 1.0, "open": 0.0}), (12.0, {"tilt_deg": 1.0, "open": 0.0}),
                       (5.0, {"water_cm": 50.0})]:  # the last one late, with a metric it is the newest for
        builder = engine.builder()
        builder.add(registry.get("c2").index, ts, values, arrival=ts)
        got += [(t.kind, t.rule.name, t.device.id, t.ts) for t in engine.process(builder.build())]
        want += reference.message("c2", ts, values, arrival=ts)
    got += [(t.kind, t.rule.name, t.device.id, t.ts) for t in engine.tick(11.0)]
    want += reference.tick(11.0)
    assert got == want == [("open", "avg_tilt", "c2", 11.0), ("open", "odd_tilt", "c2", 11.0)]


def test_a_value_that_is_not_a_finite_number_is_not_a_reading(tmp_path):
    """NaN and infinity are dropped, as if the metric were absent from those reports: they
    neither become the latest value nor enter a window (whose scans weigh each slot by 0 or 1,
    which needs finite values). Kernel and reference agree."""
    rules, registry = make_rules(tmp_path, FUNCTION_RULES), make_registry()
    engine, reference = Engine(rules, registry, origin=0.0), ReferenceEngine(rules, registry, origin=0.0)
    messages = [("c1", 1.0, {"tilt_deg": 14.0}), ("c1", 2.0, {"tilt_deg": math.nan}),
                ("c1", 3.0, {"tilt_deg": math.inf}), ("c1", 4.0, {"tilt_deg": 14.0}), ("c1", 9.0, {"tilt_deg": -math.inf})]
    want = [t for m in messages for t in reference.message(*m)]
    # avg 14 > 12 with two readings in 10 s from 4.0; `for: 5s` ends at the report at 9.0
    assert run_kernel(engine, registry, messages, 2) == want == [("open", "avg_tilt", "c1", 9.0)]
    tilt = engine.program.metric_names.index("tilt_deg")
    assert (engine.latest[0, tilt], engine.latest_ts[0, tilt]) == (14.0, 4.0)


def test_a_function_a_rule_uses_twice_is_one_state_learnt_once(tmp_path):
    """`when` and the clear_when made from it, or a function written twice, share one state;
    the same function in another rule has its own (its state carries over with its rule)."""
    text = FUNCTION_RULES.replace("when: avg(tilt_deg, 20s) > 12 and count(tilt_deg, 10s) >= 2",
                                  "when: avg(tilt_deg, 20s) > 12 and avg(tilt_deg, 20s) < 25 and count(tilt_deg, 10s) >= 2")
    text += """  - name: avg_tilt_again
    applies_to: {kind: manhole_cover}
    when: avg(tilt_deg, 20s) > 20
    order: {category: c, severity: minor, title: "{device}"}
"""
    rules, registry = make_rules(tmp_path, text), make_registry()
    program = Engine(rules, registry).program
    names = [rule.name for rule in rules]
    instances = [(names[i.rule], i.function, i.param) for i in program.instances]
    assert instances.count(("avg_tilt", "avg", 20.0)) == 1
    assert instances.count(("avg_tilt_again", "avg", 20.0)) == 1
    assert instances.count(("odd_tilt", "zscore", 30.0)) == 1  # in `when` and in `clear_when`
    assert len(instances) == len(set(instances))
    messages = [("c1", float(t), {"tilt_deg": v}) for t, v in enumerate([1, 30, 30, 14, 30, 2, 2, 30, 30, 30, 1, 1])]
    reference = ReferenceEngine(rules, registry)
    want = [t for m in messages for t in reference.message(*m)]
    assert {rule for _, rule, _, _ in want} >= {"avg_tilt", "avg_tilt_again"}
    assert run_kernel(Engine(rules, registry), registry, messages, 3) == want


def test_text_evidence_and_camera_duration(tmp_path):
    rules, registry = make_rules(tmp_path, FUNCTION_RULES), make_registry()
    engine = Engine(rules, registry, origin=0.0)
    builder = engine.builder()
    for t in (100.0, 103.0, 106.0):
        builder.add(4, t, {"label": "car", "zone": "no_parking", "score": 0.9, "active": 1.0})
    (opened,) = engine.process(builder.build())
    assert (opened.rule.name, opened.ts) == ("parked", 106.0)
    assert {e.metric: e.value for e in opened.evidence} == {"label": "car", "zone": "no_parking", "score": 0.9, "active": 1.0}


def test_silent_device_opens_on_a_tick_and_clears_when_it_reports(tmp_path):
    rules, registry = make_rules(tmp_path, FUNCTION_RULES), make_registry()
    engine = Engine(rules, registry, origin=1000.0)
    builder = engine.builder()
    builder.add(0, 1000.0, {"tilt_deg": 1.0})
    engine.process(builder.build())
    assert [t for t in engine.tick(1010.0) if t.rule.name == "silent"] == []
    silent = {(t.device.id, t.ts) for t in engine.tick(1016.0) if t.rule.name == "silent"}
    assert silent == {("c1", 1016.0), ("c2", 1016.0), ("b1", 1016.0), ("b2", 1016.0)}
    builder = engine.builder()
    builder.add(0, 1020.0, {"tilt_deg": 1.0})
    cleared = [(t.kind, t.device.id) for t in engine.process(builder.build()) if t.rule.name == "silent"]
    assert cleared == [("clear", "c1")]


def test_sparse_reporter_opens_after_for_on_a_tick(tmp_path):
    registry = make_registry()
    engine = Engine(make_rules(tmp_path), registry, origin=0.0)
    builder = engine.builder()
    builder.add(0, 500.0, {"tilt_deg": 40.0}, arrival=800.0)  # the cover's clock is 300 s behind
    assert engine.process(builder.build()) == []
    assert engine.tick(805.0) == []
    (opened,) = engine.tick(810.0)
    assert (opened.kind, opened.rule.name, opened.ts) == ("open", "tilted", 510.0)


def test_anomaly_opens_on_a_reading_unlike_the_device_past_and_matches_the_reference(tmp_path):
    rules = make_rules(tmp_path, """rules:
  - name: odd_water
    applies_to: {kind: manhole_cover}
    when: anomaly(water_cm) > 0.9
    clear_when: water_cm > 50
    order: {category: c, severity: minor, title: "{device}"}
""")
    registry = make_registry()
    engine, reference = Engine(rules, registry, origin=0.0), ReferenceEngine(rules, registry, origin=0.0)
    rng = random.Random(7)
    messages = [("c1", 60.0 * i, {"water_cm": 75.0 + rng.uniform(-15, 15)}) for i in range(400)]
    messages += [("c1", 60.0 * 400, {"water_cm": 8.0}), ("c1", 60.0 * 401, {"water_cm": 80.0})]
    messages += [("c2", 60.0 * i, {"water_cm": 75.0 + rng.uniform(-15, 15)}) for i in range(402)]
    got = run_kernel(engine, registry, messages, batch_size=50)
    want = [step for device, ts, values in messages for step in reference.message(device, ts, values)]
    assert got == want
    assert got == [("open", "odd_water", "c1", 60.0 * 400), ("clear", "odd_water", "c1", 60.0 * 401)]


def test_an_open_problem_getting_worse_by_the_step_gives_an_update(tmp_path):
    rules = make_rules(tmp_path, """rules:
  - name: water_high
    applies_to: {kind: manhole_cover}
    when: water_cm < 30 and open == 0
    worse_by: 10%
    clear_when: water_cm > 50
    order: {category: c, severity: major, title: "{device}"}
  - name: water_stepped
    applies_to: {kind: manhole_cover}
    when: water_cm < 30
    worse_by: 5
    clear_when: water_cm > 50
    order: {category: c, severity: major, title: "{device}"}
  - name: water_quiet
    applies_to: {kind: manhole_cover}
    when: water_cm < 30
    order: {category: c, severity: major, title: "{device}"}
""")
    registry = make_registry()
    engine, reference = Engine(rules, registry, origin=0.0), ReferenceEngine(rules, registry, origin=0.0)
    # lower is worse (water_cm < 30): 10% of 30 = 3 cm below the value last reported
    levels = [40, 29, 27, 25.9, 26, 22.5, 35, 31, 45, 20, 60]
    messages = [("c1", 10.0 * i, {"water_cm": float(x), "open": 0}) for i, x in enumerate(levels)]
    got = run_kernel(engine, registry, messages, batch_size=3)
    want = [step for device, ts, values in messages for step in reference.message(device, ts, values)]
    assert got == want
    by_rule = {name: [(kind, ts) for kind, rule, _, ts in got if rule == name] for name in
               ("water_high", "water_stepped", "water_quiet")}
    # 29 opens; 27 is only 2 below it; 25.9 is 3.1 below: update; 22.5 is 3.4 below 25.9: update;
    # 35, 31, 45 are better (in the band between the two conditions); 20 is only 2.5 below the 22.5
    # last reported: no update; 60 clears
    assert by_rule["water_high"] == [("open", 10.0), ("update", 30.0), ("update", 50.0), ("clear", 100.0)]
    assert by_rule["water_stepped"] == [("open", 10.0), ("update", 50.0), ("clear", 100.0)]
    assert by_rule["water_quiet"] == [("open", 10.0), ("clear", 60.0), ("open", 90.0), ("clear", 100.0)]


# Rules the kernels may skip when none of their metrics changed value (a step "settles"):
# conditions that overlap (a transition must be followed by a fresh look at the same values),
# functions that cannot move between messages (zscore, absent) and ones that can (windows,
# changed), functions behind a cheap side of `and`, and worsening updates of open orders.
SETTLING_RULES = """rules:
  - name: flip_flop
    applies_to: {kind: manhole_cover}
    when: tilt_deg > 10
    clear_when: tilt_deg > 5
    order: {category: c, severity: minor, title: "{device}"}
  - name: unusual_behind_a_guard
    applies_to: {kind: manhole_cover}
    when: water_cm < 20 and zscore(water_cm, 30s) > 1
    order: {category: c, severity: minor, title: "{device}"}
  - name: not_silent
    applies_to: {kind: manhole_cover}
    when: not absent(10s) and open == 1
    for: 3s
    order: {category: c, severity: minor, title: "{device}"}
  - name: window_or_value
    applies_to: {kind: manhole_cover}
    when: open == 1 or avg(tilt_deg, 10s) > 12
    clear_when: open == 0 and changed(tilt_deg)
    order: {category: c, severity: minor, title: "{device}"}
  - name: rising_average
    applies_to: {kind: manhole_cover}
    when: avg(tilt_deg, 8s) > 12
    order: {category: c, severity: minor, title: "{device}"}
  - name: getting_worse
    applies_to: {kind: manhole_cover}
    when: tilt_deg >= 14
    clear_when: tilt_deg < 2
    worse_by: 5
    order: {category: c, severity: minor, title: "{device}"}
"""

_repeating = st.tuples(
    st.sampled_from(["c1", "c2"]),
    st.integers(0, 40).map(float),
    st.fixed_dictionaries(
        {},
        optional={
            "tilt_deg": st.sampled_from([1.0, 8.0, 14.0, 20.0, 30.0]),
            "water_cm": st.sampled_from([10.0, 10.0, 50.0]),
            "open": st.sampled_from([0.0, 1.0]),
        },
    ),
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, 4), st.one_of(_repeating, st.just("tick"))), min_size=5, max_size=120),
       repeat=st.integers(1, 3))
def test_skipped_rules_match_the_reference_on_repeated_values(tmp_path_factory, steps, repeat):
    tmp_path = tmp_path_factory.mktemp("rules")
    rules, registry = make_rules(tmp_path, SETTLING_RULES), make_registry()
    engine, reference = Engine(rules, registry, origin=0.0), ReferenceEngine(rules, registry, origin=0.0)
    got, want, clock = [], [], 0.0
    for gap, action in steps:
        clock += gap
        if action == "tick":
            got += [(t.kind, t.rule.name, t.device.id, t.ts) for t in engine.tick(clock)]
            want += reference.tick(clock)
            continue
        device, offset, values = action
        for k in range(repeat):  # the same values again, a second apart
            clock += 1.0 if k else 0.0
            ts = clock - offset if offset > 35 else clock
            builder = engine.builder()
            builder.add(registry.get(device).index, ts, values, arrival=clock)
            got += [(t.kind, t.rule.name, t.device.id, t.ts) for t in engine.process(builder.build())]
            want += reference.message(device, ts, values, arrival=clock)
    assert got == want


def test_a_device_with_more_rules_than_settle_bits_matches_the_reference(tmp_path):
    # The kernels keep a bit per rule of a device for its first 63 rules (program.QUIET_RULES);
    # the rules past those are stepped at every message. Both kinds must give the reference's results.
    lines = ["rules:"]
    for i in range(70):
        lines += [f"  - name: tilt_over_{i}", "    applies_to: {kind: manhole_cover}", f"    when: tilt_deg > {i}",
                  f"    clear_when: tilt_deg < {i} - 3", "    for: 2s",
                  "    order: {category: c, severity: minor, title: \"{device}\"}"]
    rules, registry = make_rules(tmp_path, "\n".join(lines) + "\n"), make_registry()
    engine, reference = Engine(rules, registry, origin=0.0), ReferenceEngine(rules, registry, origin=0.0)
    tilts = [0.0, 10.0, 10.0, 66.5, 66.5, 66.5, 66.5, 5.0, 5.0, 5.0, 68.0, 68.0, 68.0, 68.0, 0.0, 0.0, 0.0]
    messages = [("c1", float(2 * step), {"tilt_deg": tilt}) for step, tilt in enumerate(tilts)]
    got = run_kernel(engine, registry, messages, batch_size=3)
    want = [event for device, ts, values in messages for event in reference.message(device, ts, values)]
    assert got == want
    opened = {name for kind, name, _, _ in got if kind == "open"}
    assert {"tilt_over_0", "tilt_over_62", "tilt_over_63", "tilt_over_66", "tilt_over_67"} <= opened
    assert "tilt_over_69" not in opened
    assert {name for kind, name, _, _ in got if kind == "clear"} >= {"tilt_over_63", "tilt_over_66"}
