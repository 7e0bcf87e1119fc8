"""`edge rules test`: recorded readings through two versions of the rules, and their difference."""

from __future__ import annotations

import subprocess

import orjson
import pytest

from conftest import REGISTRY, RULES, edge_command
from edge.engine.replay import ReplayError, compare, read_messages, replay
from edge.engine.rules import load_rules
from edge.registry import Registry

T0 = 1_763_830_000.0


def recording(path, fmt="jsonl"):
    """Two minutes of a street: MH-0003 tilted from 20 s to 80 s, BIN-0002 filling past 85 % at 65 s."""
    rows = []
    for s in range(0, 120, 5):
        for i in range(1, 5):
            tilt = 30.0 if (i == 3 and 20 <= s <= 80) else 1.0
            rows.append((f"MH-000{i}", T0 + s, {"tilt_deg": tilt, "open": 1.0 if tilt > 15 else 0.0}))
            rows.append((f"BIN-000{i}", T0 + s, {"distance_cm": 10.0 if (i == 2 and s > 60) else 80.0}))
    if fmt == "jsonl":
        path.write_bytes(b"\n".join(orjson.dumps({"device": d, "ts": t, "readings": r}) for d, t, r in rows))
    else:
        lines = ["ts,device,metric,value"] + [f"{t},{d},{m},{v}" for d, t, r in rows for m, v in r.items()]
        path.write_text("\n".join(lines) + "\n")
    return path


def stricter(tmp_path):
    folder = tmp_path / "stricter"
    folder.mkdir()
    for source in RULES.glob("*.yaml"):
        text = source.read_text().replace("    when: tilt_deg > 15 or open == 1\n    for: 10s", "    when: tilt_deg > 15 or open == 1\n    for: 30s")
        (folder / source.name).write_text(text.replace("fill_pct >= 85", "fill_pct >= 95"))
    return folder


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_replay_opens_and_clears_at_device_times(tmp_path, fmt):
    messages = read_messages(recording(tmp_path / f"data.{fmt}", fmt))
    result = replay(load_rules([RULES]), Registry.load(REGISTRY), messages)
    episodes = [(e.rule, e.device, e.opened_at - T0, None if e.cleared_at is None else e.cleared_at - T0) for e in result.episodes]
    # tilted at 20 s, `for: 10s` ends at 30 s (a tick between reports); level at 85 s, clear_for 10 s
    assert episodes == [("cover_tilted", "MH-0003", 30.0, 95.0), ("bin_full", "BIN-0002", 65.0, None)]
    assert result.episodes[1].evidence == {"fill_pct": pytest.approx(91.6667, abs=1e-3)}


def test_difference_between_two_versions(tmp_path):
    messages = read_messages(recording(tmp_path / "data.jsonl"))
    registry = Registry.load(REGISTRY)
    a = replay(load_rules([RULES]), registry, messages)
    b = replay(load_rules([stricter(tmp_path)]), registry, messages)
    difference = compare(a, b)
    assert [(e.rule, e.device) for e in difference.only_a] == [("bin_full", "BIN-0002")]
    assert difference.only_b == []
    assert [(x.rule, y.opened_at - x.opened_at) for x, y in difference.moved] == [("cover_tilted", 20.0)]


def test_rules_test_command_text_json_and_plot(tmp_path):
    data = recording(tmp_path / "data.jsonl")
    text = subprocess.run(edge_command() + ["rules", "test", str(RULES), "--replay", str(data),
                                            "--against", str(stricter(tmp_path)), "--plot", str(tmp_path / "p.png")],
                          capture_output=True, text=True, timeout=120)
    assert text.returncode == 0, text.stderr
    assert "OPEN   cover_tilted         MH-0003" in text.stdout
    assert "moved: cover_tilted on MH-0003 opens 20s later" in text.stdout
    assert f"only in {RULES}: bin_full on BIN-0002" in text.stdout
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    as_json = subprocess.run(edge_command() + ["rules", "test", str(RULES), "--replay", str(data), "--json"],
                             capture_output=True, text=True, timeout=120)
    document = orjson.loads(as_json.stdout)
    assert [e["rule"] for e in document["versions"][0]["episodes"]] == ["cover_tilted", "bin_full"]


def test_bad_recordings_name_their_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"device": "MH-0001", "ts": 1, "readings": {}}\n{"device": "MH-0001", "ts": "x", "readings": {}}\n')
    with pytest.raises(ReplayError, match=r"bad\.jsonl:2: 'ts' must be seconds"):
        read_messages(bad)
    result = subprocess.run(edge_command() + ["rules", "test", str(RULES), "--replay", str(bad)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "bad.jsonl:2:" in result.stderr


def test_rules_test_runs_the_gateway_s_order_book_on_the_recording_s_own_registry(tmp_path):
    """The storm recording: 13 alerts, which the order book groups into 3 orders (one flooding order per
    flooded grid, one for the open cover), as the live gateway makes them; titles from the recording's registry."""
    import subprocess
    import sys

    from conftest import ROOT, edge_command

    out = tmp_path / "storm"
    made = subprocess.run([sys.executable, "-m", "firmware_sim", "scenario", str(ROOT / "config" / "scenarios" / "storm.yaml"),
                           "--speed", "max", "--out", str(out), "--start", "2025-06-01T00:00:00Z"],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    run = subprocess.run(edge_command() + ["rules", "test", str(ROOT / "rules"), "--replay", str(out / "readings.jsonl")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"registry: {out / 'registry.csv'}" in run.stderr
    assert "raises 13 alert(s)" in run.stdout and "13 alert(s) make 3 order(s) (10 grouped" in run.stdout, run.stdout
    orders = [line for line in run.stdout.splitlines() if line.startswith("  ORDER")]
    assert len(orders) == 3 and all("Riverside Rd" in line for line in orders)
    assert sum("sewer_overflow" in line for line in orders) == 2
    as_json = subprocess.run(edge_command() + ["rules", "test", str(ROOT / "rules"), "--replay", str(out / "readings.jsonl"),
                                               "--json"], capture_output=True, text=True, timeout=120)
    (version,) = orjson.loads(as_json.stdout)["versions"]
    assert (version["alerts"], version["orders"], version["revisions"]["grouped"]) == (13, 3, 10)
    assert {len(o["problems"]) for o in version["order_list"]} == {7, 5, 1}


def test_the_plot_gives_each_metric_a_panel_and_labels_each_threshold_with_its_rule(tmp_path):
    from edge.engine import expr
    from edge.engine.plot import panels_of, thresholds

    rules = load_rules([RULES])
    registry = Registry.load(REGISTRY)
    result = replay(rules, registry, read_messages(recording(tmp_path / "data.jsonl")))
    panels = panels_of([("rules", result)], registry)
    assert ("MH-0003", "tilt_deg") in panels and ("MH-0003", "open") in panels  # not one axis for both
    assert all(device in {"MH-0003", "BIN-0002"} for device, _ in panels)
    assert thresholds(expr.parse("tilt_deg > 15 or 5 > battery_v")) == [("tilt_deg", ">", 15.0), ("battery_v", "<", 5.0)]
