"""Scenarios without a broker: reproducibility, physics, faults, ground truth, scenario errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from firmware_sim import load_scenario, run_scenario
from firmware_sim.scenario import ScenarioError
from firmware_sim.truth import read_truth

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "config" / "scenarios"
START = 1748736000.0  # 2025-06-01T00:00:00Z

STREET = """
name: test-street
seed: 3
duration: 6h
speed: max
devices:
  - {kind: manhole_cover, count: 8, grids: [G01, G02]}
  - {kind: bin, count: 6, grids: [G01, G02], depth_cm: 100}
  - {kind: camera, count: 2, grids: [G01, G02], flickers_per_day: 24}
timing:
  manhole_cover: {interval: 15m, alarm_interval: 10s}
  bin: {interval: 10m, alarm_interval: 30s}
collections: []
events:
  - {kind: cover_open, device: MH-0002, at: 30m, duration: 10m}
  - {kind: gas_leak, device: MH-0003, at: 1h, duration: 20m}
  - {kind: bin_full, device: BIN-0002, at: 2h, duration: 30m}
  - {kind: illegal_parking, device: CAM-0001, at: 3h, duration: 12m}
  - {kind: battery_dead, device: MH-0004, at: 1h, duration: 3h, ramp: 1h}
  - {kind: rain_storm, grids: [G02], at: 4h, duration: 90m, intensity: 1.5}
faults:
  - {kind: duplicate, device: MH-0001, probability: 0.5}
  - {kind: malformed, device: BIN-0001, probability: 0.5}
  - {kind: out_of_order, device: MH-0005, probability: 0.5, delay: 30m}
  - {kind: clock_skew, device: MH-0007, skew: 300}
  - {kind: stuck, device: BIN-0003, at: 1h, duration: 2h}
  - {kind: dropout, device: MH-0006, at: 2h, duration: 1h}
  - {kind: spike, device: BIN-0005, metric: temp_c, at: 1h, duration: 1h}
"""


def write(tmp_path: Path, text: str, name: str = "street.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def lines(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def street_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("street")
    result = run_scenario(load_scenario(write(tmp, STREET)), out=tmp / "out", start=START, csv=True)
    return result, tmp / "out"


def test_same_seed_same_truth_and_readings_other_seed_other_street(tmp_path, street_run):
    _, first = street_run
    path = write(tmp_path, STREET)
    run_scenario(load_scenario(path), out=tmp_path / "again", start=START)
    for name in ("truth.jsonl", "readings.jsonl", "registry.csv"):
        assert (tmp_path / "again" / name).read_bytes() == (first / name).read_bytes(), name
    scenario = load_scenario(path)
    scenario.seed = 4
    run_scenario(scenario, out=tmp_path / "other", start=START)
    assert (tmp_path / "other" / "readings.jsonl").read_bytes() != (first / "readings.jsonl").read_bytes()


def test_ground_truth_lists_injected_storm_natural_and_fault_events(street_run):
    result, out = street_run
    truth = read_truth(out / "truth.jsonl")
    kinds = {(e.kind, e.device) for e in truth}
    assert {("cover_open", "MH-0002"), ("gas_leak", "MH-0003"), ("bin_full", "BIN-0002"),
            ("illegal_parking", "CAM-0001"), ("battery_dead", "MH-0004"), ("silent", "MH-0006")} <= kinds
    opened = next(e for e in truth if e.kind == "cover_open")
    assert (opened.start, opened.end, opened.expect, opened.source) == (START + 1800, START + 2400, ["cover_tilted"], "injected")
    assert [e.id for e in truth] == [f"E{n:05d}" for n in range(1, len(truth) + 1)]
    storm = [e for e in truth if e.source == "storm"]
    assert storm and all(e.grid == "G02" for e in storm)
    assert {"water_rising", "waterlogging"} <= {e.kind for e in storm}  # intensity 1.5 floods G02
    assert all(START + 4 * 3600 < e.start < (e.end or 1e12) <= START + 4 * 3600 + 5400 for e in storm)
    assert all(not e.expect for e in truth if e.source == "fault") and all(not e.expect for e in truth if e.kind == "flicker")
    assert any(e.kind == "flicker" for e in truth)


def test_recorded_readings_show_the_events_and_the_faults(street_run):
    result, out = street_run
    messages = lines(out / "readings.jsonl")
    by_device: dict[str, list[dict]] = {}
    for m in messages:
        by_device.setdefault(m["device"], []).append(m)
    tilt = [m for m in by_device["MH-0002"] if START + 1800 <= m["ts"] < START + 2400]
    assert len(tilt) >= 50 and all(m["readings"]["tilt_deg"] > 15 and m["readings"]["open"] == 1 for m in tilt)
    gas = [m["readings"]["ch4_lel_pct"] for m in by_device["MH-0003"] if START + 3600 + 300 <= m["ts"] < START + 4800]
    assert gas and min(gas) >= 10
    assert all(m["readings"]["distance_cm"] < 15 for m in by_device["BIN-0002"] if START + 7200 <= m["ts"] < START + 9000)
    # The camera's detection: label, zone, score that varies, active 1 then 0 at the end.
    cam = [m["readings"] for m in by_device["CAM-0001"] if m["readings"]["label"] == "car" and m["readings"]["zone"] == "no_parking"]
    assert cam[0]["active"] == 1 and cam[-1]["active"] == 0 and len({c["score"] for c in cam}) > 3
    assert cam[-1]["duration_s"] == pytest.approx(720, abs=1)
    # Faults.
    ts = [m["ts"] for m in by_device["MH-0001"]]
    assert len(ts) > len(set(ts))                                        # duplicates
    late = by_device["MH-0005"]
    assert any(b["ts"] < a["ts"] for a, b in zip(late, late[1:]))        # out of order
    assert result.stats.malformed > 0 and len(by_device["BIN-0001"]) < len(by_device["BIN-0004"])
    stuck = {m["readings"]["distance_cm"] for m in by_device["BIN-0003"] if START + 3600 <= m["ts"] < START + 3 * 3600}
    assert len(stuck) == 1
    assert not [m for m in by_device["MH-0006"] if START + 7200 <= m["ts"] < START + 3 * 3600]  # dropout
    assert any(m["readings"]["temp_c"] == 125.0 for m in by_device["BIN-0005"])                  # spike
    skewed = by_device["MH-0007"][0]["ts"] - START
    assert 300 <= skewed <= 300 + 900                                     # clock 5 minutes ahead
    # A dead battery: the voltage falls, then the device goes silent until the battery is replaced.
    volts = [(m["ts"], m["readings"]["battery_v"]) for m in by_device["MH-0004"]]
    assert min(v for _, v in volts) < 3.3
    assert not [t for t, _ in volts if START + 2 * 3600 < t < START + 4 * 3600]
    assert any(v > 3.55 for t, v in volts if t >= START + 4 * 3600)


def test_csv_has_the_same_readings_as_the_jsonl(street_run):
    _, out = street_run
    rows = (out / "readings.csv").read_text().splitlines()
    assert rows[0] == "ts,device,metric,value"
    assert len(rows) - 1 == sum(len(m["readings"]) for m in lines(out / "readings.jsonl"))


def test_physics_a_day_of_bins_and_covers(tmp_path):
    """Bins fill through the day and are emptied by the rounds; covers breathe with the sewer."""
    path = write(tmp_path, """
seed: 5
duration: 1d
speed: max
devices: [{kind: bin, count: 20, grids: [G01]}, {kind: manhole_cover, count: 5}]
timing: {bin: {interval: 30m}}
collections: ["06:30", "18:30"]
""")
    result = run_scenario(load_scenario(path), out=tmp_path / "out", start=START)
    natural = [e for e in result.truth if e.kind == "bin_full" and e.source == "natural"]
    assert natural, "some bins should fill past 85 % in a day"
    assert all(e.end is None or e.end > e.start for e in natural)
    readings = lines(tmp_path / "out" / "readings.jsonl")
    depth = {m["device"]: 120 for m in readings}
    fill = [(m["ts"], 100 * (1 - m["readings"]["distance_cm"] / depth[m["device"]])) for m in readings if m["device"].startswith("BIN")]
    assert max(f for _, f in fill) > 85 and min(f for _, f in fill) < 6
    water = [m["readings"]["water_cm"] for m in readings if m["device"].startswith("MH")]
    assert 100 < min(water) and max(water) < 200
    assert all(3.3 < m["readings"]["battery_v"] < 3.7 for m in readings)


def test_replaying_the_recording_through_the_rules_finds_every_event(street_run):
    """The recorded readings replayed by the engine (what `edge rules test` does) against the truth."""
    from firmware_sim.score import orders_from_replay, score

    _, out = street_run
    result = score(read_truth(out / "truth.jsonl"),
                   orders_from_replay(ROOT / "rules", out / "readings.jsonl", out / "registry.csv"))
    found = {k for k, c in result.by_kind.items() if c["found"] == c["expected"]}
    assert {"cover_open", "gas_leak", "bin_full", "illegal_parking", "battery_dead"} <= found, result.text()
    assert not result.duplicates, result.text()


@pytest.mark.parametrize("text, message", [
    ("devices: [{kind: bin, count: 2}]\nspeeed: 3\n", "street.yaml:2: unknown key 'speeed' (did you mean 'speed'?)"),
    ("devices: [{kind: bin, count: 2, gridz: [G01]}]\n",
     "street.yaml:1: unknown key 'devices.0.gridz' (did you mean 'grids'?)"),
    ("devices: [{kind: bin, count: 2}]\nevents:\n  - {kind: bin_fire, device: BIN-0001, at: 1m, crew: {att: 2m}}\n",
     "street.yaml:3: unknown key 'events.0.crew.att' (did you mean 'at'?)"),
    ("devices: [{kind: bin}]\n", "street.yaml:1: missing required key 'devices.0.count'"),
    ("devices: [{kind: bin, count: 2}]\nevents:\n  - {kind: cover_open, device: BIN-0001, at: 1m}\n",
     "event cover_open is not possible on bin BIN-0001"),
    ("devices: [{kind: bin, count: 2}]\nevents:\n  - {kind: fly_away, device: BIN-0001, at: 1m}\n",
     "street.yaml:3: events.0: unknown event kind 'fly_away'"),
    ("devices: [{kind: bin, count: 2}]\nduration: 10 minutes\n", "street.yaml:2: duration: not a duration"),
    ("devices: [{kind: bin, count: 2}]\nfaults:\n  - {kind: stuck, device: NOPE, at: 1m}\n", "no device 'NOPE'"),
    ("name: [unclosed\n", "street.yaml:2: not valid YAML"),
])
def test_bad_scenarios_are_refused_with_file_and_line(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as error:
        run_scenario(load_scenario(path), start=START)
    assert message in str(error.value)


def test_command_line_runs_a_shipped_scenario_and_writes_its_files(tmp_path):
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "firmware_sim", "scenario", str(SCENARIOS / "street-day.yaml"), "--speed", "max",
         "--out", str(out), "--start", "2025-06-01T00:00:00Z", "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    figures = orjson.loads(run.stdout)
    assert figures["devices"] == 52 and figures["published"] > 1000 and figures["unacknowledged"] == 0
    assert sorted(p.name for p in out.iterdir()) == ["readings.jsonl", "registry.csv", "run.json", "truth.jsonl"]
    assert figures["broker"] is None and figures["publish_rate"] is None  # nothing was published
    text = subprocess.run(
        [sys.executable, "-m", "firmware_sim", "scenario", str(SCENARIOS / "street-day.yaml"), "--speed", "max",
         "--duration", "1h", "--start", "2025-06-01T00:00:00Z"], capture_output=True, text=True, timeout=60)
    assert text.returncode == 0 and "nothing published: no --broker" in text.stdout and "published " not in text.stdout
    bad = subprocess.run([sys.executable, "-m", "firmware_sim", "scenario", str(write(tmp_path, "speed: -1\n"))],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "speed" in bad.stderr and "Traceback" not in bad.stderr


def test_every_shipped_scenario_loads(tmp_path):
    for path in sorted(SCENARIOS.glob("*.yaml")):
        scenario = load_scenario(path)
        scenario.duration = 60.0
        run_scenario(scenario, start=START, speed="max")


def test_score_counts_only_the_named_gateway_s_orders(tmp_path):
    """A receiver shared by two gateways: the other one's order for the same device is not a false order."""
    import sqlite3

    truth = tmp_path / "truth.jsonl"
    truth.write_text('{"device":"MH-0003","kind":"cover_open","start":1000.0,"end":1600.0,"expect":["cover_tilted"],'
                     '"source":"injected","grid":"G01","zone":"Z1","id":"E00001"}\n')
    db = tmp_path / "receiver.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE revisions (order_id TEXT, revision INTEGER, gateway TEXT, received_at FLOAT, body TEXT)")
        for n, (gateway, at) in enumerate((("gw-a", "1970-01-01T00:16:50Z"), ("gw-b", "1970-01-01T05:00:00Z"))):
            body = {"order_id": f"{gateway}-1", "revision": 1, "change": "opened", "gateway": gateway,
                    "device": "MH-0003", "rule": "cover_tilted", "opened_at": at}
            conn.execute("INSERT INTO revisions VALUES (?, 1, ?, ?, ?)", [body["order_id"], gateway, n, orjson.dumps(body)])

    def score(*extra):
        run = subprocess.run([sys.executable, "-m", "firmware_sim", "score", "--truth", str(truth), "--db", str(db),
                              "--json", *extra], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        return orjson.loads(run.stdout)

    assert (score()["found"], score()["false_orders"]) == (1, 1)
    assert (score("--gateway", "gw-a")["found"], score("--gateway", "gw-a")["false_orders"]) == (1, 0)
    assert score("--gateway", "gw-b")["missed"] == 1
