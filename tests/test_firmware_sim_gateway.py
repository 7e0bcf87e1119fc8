"""A whole scenario through the real gateway and the reference receiver, scored against the ground truth."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from pathlib import Path

import orjson

from conftest import SIMULATOR, scenario_registry, start_edge_run, wait_until, write_gateway_config

# Ten minutes of a small street in ten seconds. Events only for rules that exist today:
# cover_tilted (tilt over 15 degrees or open, for 10 s) and bin_full (fill 85 % or more).
# The faults must not make orders: duplicates, late and malformed messages, a skewed clock,
# tilt spikes shorter than cover_tilted's 10 s.
SCENARIO = """
name: gateway-score
seed: 21
duration: 10m
speed: 60
devices:
  - {kind: manhole_cover, count: 6, grids: [G01, G02]}
  - {kind: bin, count: 4, grids: [G01, G02], depth_cm: 110}
timing:
  manhole_cover: {interval: 1m, alarm_interval: 5s}
  bin: {interval: 1m, alarm_interval: 10s}
collections: []
events:
  - {kind: cover_open, device: MH-0002, at: 2m, duration: 3m}
  - {kind: cover_open, device: MH-0005, at: 4m}
  - {kind: bin_full, device: BIN-0003, at: 3m, duration: 4m}
faults:
  - {kind: duplicate, device: MH-0001, probability: 0.5}
  - {kind: duplicate, device: MH-0002, probability: 0.5}
  - {kind: out_of_order, device: MH-0003, probability: 0.3, delay: 2m}
  - {kind: malformed, device: BIN-0001, probability: 0.3}
  - {kind: clock_skew, device: MH-0004, skew: -30}
  - {kind: spike, device: MH-0006, metric: tilt_deg, probability: 0.3}
"""


def unsent(database: Path) -> int:
    with sqlite3.connect(database) as conn:
        return conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0]


def test_scenario_through_the_gateway_scores_every_event_found_once(tmp_path, mosquitto, receiver, clean_env):
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(SCENARIO)
    registry = scenario_registry(scenario, tmp_path / "registry.csv")
    sim = SIMULATOR
    config = write_gateway_config(tmp_path, mosquitto.url, receiver.url, registry=registry.as_posix())
    gateway = start_edge_run(config, tmp_path / "gateway.log", clean_env)
    try:
        out = tmp_path / "run"
        run = subprocess.run(sim + ["scenario", str(scenario), "--broker", mosquitto.url, "--out", str(out)],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        database = tmp_path / "data" / "gateway.db"
        assert wait_until(lambda: len(receiver.orders()) >= 3 and unsent(database) == 0, 30), receiver.orders()

        scored = subprocess.run(sim + ["score", "--truth", str(out / "truth.jsonl"), "--receiver", receiver.url, "--json"],
                                capture_output=True, text=True, timeout=60)
        assert scored.returncode == 0, scored.stderr
        result = orjson.loads(scored.stdout)
        summary = {k: result[k] for k in ("events", "found", "missed", "false_orders", "duplicates")}
        assert summary == {"events": 3, "found": 3, "missed": 0, "false_orders": 0, "duplicates": 0}, result
        # cover_tilted holds 10 s and covers in alarm report every 5 s; bin_full opens on the first full reading.
        assert 0 <= result["delay_median_s"] <= result["delay_worst_s"] <= 20, result["delays"]

        from_db = subprocess.run(sim + ["score", "--truth", str(out / "truth.jsonl"), "--db", str(receiver.db)],
                                 capture_output=True, text=True, timeout=60)
        assert from_db.returncode == 0 and "found                      3" in from_db.stdout, from_db.stdout
        # The gateway quarantined the malformed payloads and nothing else.
        with sqlite3.connect(database) as conn:
            quarantined = conn.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        assert quarantined == orjson.loads((out / "run.json").read_bytes())["stats"]["malformed"] > 0
    finally:
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=30) == 0
