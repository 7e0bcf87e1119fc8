"""Benchmark of the rule engine: readings per second on one core, against the reference; start-up time.

Workload: the shipped rule files plus generated ones to make at least 20 rules, 10,000
devices (covers, bins, cameras), messages of several readings each in device-time order,
values mostly normal with a few devices in alarm. The engine is timed on prebuilt arrays
(the kernels alone, after compilation) in batches of two sizes: 200,000 readings (about
36,000 messages) and 2,000 messages, the size of the gateway's batches (what arrives in
~5 ms on a busy street); the plain-Python reference on a slice of the same messages, in
the same run. The process is pinned to one core.

Start-up: a fresh interpreter that loads the config, registry and rules, builds the
engine and runs its first kernel call: with the kernels built ahead of time (``edge engine
build``; no numba imported), and under numba with its cache warm and with it cold.

The throughput figures use the kernels the gateway would run (``kernels`` in the results:
built ahead of time when they are built; ``EDGE_KERNELS=jit`` times numba's).

    .venv/bin/python bench/bench_engine.py            # figures printed and written to
                                                      # bench/results/engine.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.engine import Engine, aot, load_rules  # noqa: E402
from edge.engine.engine import ReadingBatch  # noqa: E402
from edge.engine.reference import ReferenceEngine  # noqa: E402
from edge.registry import Device, Registry  # noqa: E402

DEVICES = 10_000
MESSAGES = 2_000_000
REFERENCE_MESSAGES = 20_000
GATEWAY_BATCH = 2_000  # messages per Engine.process call, as the gateway gathers them

EXTRA_RULES = """\
rules:
  - name: bench_cover_water_avg
    applies_to: {kind: manhole_cover}
    when: avg(water_cm, 10m) < 35
    for: 1m
    order: {category: sewer_overflow, severity: major, title: "{device}"}
  - name: bench_cover_h2s_unusual
    applies_to: {kind: manhole_cover}
    when: zscore(h2s_ppm, 1d) > 5 and h2s_ppm > 3
    order: {category: manhole_gas, severity: major, title: "{device}"}
  - name: bench_cover_tilt_swing
    applies_to: {kind: manhole_cover}
    when: max(tilt_deg, 5m) - min(tilt_deg, 5m) > 20
    order: {category: manhole_cover_displaced, severity: major, title: "{device}"}
  - name: bench_bin_filling_fast
    applies_to: {kind: bin}
    when: delta(distance_cm, 30m) < -60
    order: {category: bin_overflow, severity: minor, title: "{device}"}
  - name: bench_bin_temp_stuck
    applies_to: {kind: bin}
    when: stuck(temp_c, 6h)
    order: {category: device_maintenance, severity: minor, title: "{device}"}
  - name: bench_camera_vendor_long
    applies_to: {kind: camera}
    when: label == "vendor" and duration_s > 30m
    order: {category: street_vending, severity: major, title: "{device}"}
"""


def bench_rules():
    """The shipped rule files plus EXTRA_RULES: the 21 rules the engine is timed on."""
    with tempfile.TemporaryDirectory() as tmp:
        extra = Path(tmp) / "extra.yaml"
        extra.write_text(EXTRA_RULES)
        return load_rules([ROOT / "rules", extra])


def make_registry() -> Registry:
    kinds = ["manhole_cover"] * 5 + ["bin"] * 4 + ["camera"]
    devices = [
        Device(f"D{i:05d}", kinds[i % 10], "m", "a", 0.0, 0.0, f"G{i % 126:03d}", f"Z{i % 4}", "t", i,
               {"depth_cm": 120.0} if kinds[i % 10] == "bin" else {})
        for i in range(DEVICES)
    ]
    return Registry(devices, ["depth_cm"])


def make_messages(registry: Registry, engine: Engine, count: int, seed: int = 7):
    """Messages as (device index, ts, {metric: value}) plus the engine's arrays for the same data."""
    rng = np.random.default_rng(seed)
    devices = rng.integers(0, DEVICES, count)
    times = 1_763_000_000.0 + np.sort(rng.uniform(0, 86_400, count))
    alarm = rng.random(count) < 0.001
    messages = []
    for d, t, a in zip(devices.tolist(), times.tolist(), alarm.tolist()):
        kind = registry.devices[d].kind
        if kind == "manhole_cover":
            values = {"tilt_deg": 30.0 if a else 1.0 + (d % 7) * 0.1, "open": 1.0 if a else 0.0,
                      "water_cm": 140.0 - (d % 50), "ch4_lel_pct": 1.0, "h2s_ppm": 0.5 + (d % 3) * 0.1,
                      "temp_c": 18.0, "battery_v": 3.6}
        elif kind == "bin":
            values = {"distance_cm": 10.0 if a else 60.0 + (d % 40), "temp_c": 21.0 + (d % 5),
                      "tilt_deg": 1.0, "battery_v": 3.6}
        else:
            values = {"label": "car" if a else "person", "zone": "no_parking", "score": 0.8,
                      "active": 1.0, "duration_s": 30.0}
        messages.append((d, t, values))
    builder = engine.builder()
    for d, t, values in messages:
        builder.add(d, t, values)
    batch = builder.build()
    real = int((batch.met != 0).sum())
    return messages, batch, real


def time_engine(rules, registry, batch: ReadingBatch, chunk: int = 200_000, messages: int | None = None) -> float:
    """Seconds for the engine to process ``batch`` in chunks of ``chunk`` readings, or of
    ``messages`` messages when given (chunks always end on message boundaries)."""
    engine = Engine(rules, registry, origin=1_763_000_000.0)
    engine.warm_up()
    n = len(batch)
    markers = np.flatnonzero(batch.met == 0)
    if messages is not None:
        bounds = sorted(set([0] + markers[::messages].tolist() + [n]))
    else:
        cuts = list(markers[np.searchsorted(markers, np.arange(chunk, n, chunk))].tolist()) if n > chunk else []
        bounds = [0] + sorted(set(cuts)) + [n]
    start = time.perf_counter()
    for lo, hi in zip(bounds, bounds[1:]):
        engine.process(ReadingBatch(batch.dev[lo:hi], batch.met[lo:hi], batch.ts[lo:hi], batch.val[lo:hi]))
    return time.perf_counter() - start


def time_reference(rules, registry, messages) -> float:
    reference = ReferenceEngine(rules, registry, origin=1_763_000_000.0)
    start = time.perf_counter()
    for d, t, values in messages:
        reference.message(registry.devices[d].id, t, values)
    return time.perf_counter() - start


STARTUP = """
import time
t0 = time.perf_counter()
from pathlib import Path
from edge.config import load_config
from edge.registry import Registry
from edge.engine import Engine, load_rules
config = load_config(Path({config!r}))
engine = Engine(load_rules(config.rules.paths), Registry.load(config.registry.path))
engine.warm_up()
print(time.perf_counter() - t0)
"""


def startup(cache_dir: str | None, kernels: str = "jit") -> float:
    """Seconds from interpreter start to a warmed engine (wall clock of the whole process), with
    ``kernels`` "aot" (built ahead of time) or "jit" (numba, its cache in ``cache_dir`` if given)."""
    env = dict(os.environ)
    env.pop("EDGE_KERNELS", None)
    if kernels == "jit":
        env["EDGE_KERNELS"] = "jit"
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    code = STARTUP.format(config=str(ROOT / "config" / "gateway.toml"))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    rules = bench_rules()
    registry = make_registry()
    probe = Engine(rules, registry)
    messages, batch, real = make_messages(registry, probe, MESSAGES)
    engine_seconds = min(time_engine(rules, registry, batch) for _ in range(3))
    gateway_seconds = min(time_engine(rules, registry, batch, messages=GATEWAY_BATCH) for _ in range(3))
    shipped = load_rules([ROOT / "rules"])
    shipped_probe = Engine(shipped, registry)
    _, shipped_batch, shipped_real = make_messages(registry, shipped_probe, MESSAGES)
    shipped_seconds = min(time_engine(shipped, registry, shipped_batch) for _ in range(3))
    # The same 21 rules over fewer devices: how much is memory (state out of cache) and how much compute.
    global DEVICES
    by_devices = {}
    for count in (1_000, 100):
        saved, DEVICES = DEVICES, count
        small = make_registry()
        _, small_batch, small_real = make_messages(small, Engine(rules, small), MESSAGES // 4)
        by_devices[count] = small_real / min(time_engine(rules, small, small_batch) for _ in range(2))
        DEVICES = saved
    ref_messages = messages[:REFERENCE_MESSAGES]
    ref_readings = sum(len(v) for _, _, v in ref_messages)
    reference_seconds = time_reference(rules, registry, ref_messages)

    startup(None)  # make sure the default cache is warm
    warm = sorted(startup(None) for _ in range(5))[2]
    with tempfile.TemporaryDirectory() as cold_cache:
        cold = startup(cold_cache)
    built = aot.find() is not None
    ahead = sorted(startup(None, "aot") for _ in range(5))[2] if built else None

    engine_rate = real / engine_seconds
    reference_rate = ref_readings / reference_seconds
    results = {
        "rules": len(rules),
        "devices": DEVICES,
        "messages": MESSAGES,
        "readings": real,
        "engine_readings_per_s": round(engine_rate),
        "engine_messages_per_s": round(MESSAGES / engine_seconds),
        "gateway_batch_messages": GATEWAY_BATCH,
        "engine_readings_per_s_gateway_batches": round(real / gateway_seconds),
        "shipped_rules": len(shipped),
        "shipped_readings": shipped_real,
        "shipped_engine_readings_per_s": round(shipped_real / shipped_seconds),
        "shipped_engine_messages_per_s": round(MESSAGES / shipped_seconds),
        "engine_readings_per_s_1000_devices": round(by_devices[1_000]),
        "engine_readings_per_s_100_devices": round(by_devices[100]),
        "reference_readings_per_s": round(reference_rate),
        "reference_messages": REFERENCE_MESSAGES,
        "ratio": round(engine_rate / reference_rate, 1),
        "engine_state_bytes": probe.state_bytes(),
        "kernels": probe.kernels.kind,
        "startup_kernels_built_ahead_of_time_s": round(ahead, 3) if ahead is not None else None,
        "startup_warm_cache_s": round(warm, 3),
        "startup_cold_cache_s": round(cold, 3),
        "python": sys.version.split()[0],
    }
    print(f"rules {len(rules)}, devices {DEVICES}, messages {MESSAGES:,}, readings {real:,}")
    print(f"engine     {engine_rate / 1e6:8.1f} M readings/s   ({MESSAGES / engine_seconds / 1e6:.2f} M messages/s, one core, "
          f"batches of 200,000 readings)")
    print(f"engine     {real / gateway_seconds / 1e6:8.1f} M readings/s   ({MESSAGES / gateway_seconds / 1e6:.2f} M messages/s, "
          f"batches of {GATEWAY_BATCH:,} messages, as the gateway gathers them)")
    print(f"engine     {shipped_real / shipped_seconds / 1e6:8.1f} M readings/s   "
          f"({MESSAGES / shipped_seconds / 1e6:.2f} M messages/s) with only the {len(shipped)} shipped rules")
    print(f"engine     {by_devices[1_000] / 1e6:8.1f} M readings/s with the same rules over 1,000 devices, "
          f"{by_devices[100] / 1e6:.1f} M over 100 (state in cache)")
    print(f"reference  {reference_rate / 1e6:8.3f} M readings/s   (plain Python, {REFERENCE_MESSAGES:,} messages)")
    print(f"ratio      {engine_rate / reference_rate:8.0f}x")
    print(f"state      {probe.state_bytes() / 1e6:8.1f} MB for {DEVICES} devices")
    print(f"kernels    {probe.kernels.kind} ({probe.kernels.where})")
    if ahead is not None:
        print(f"start-up   {ahead:.2f} s with the kernels built ahead of time (median of 5)")
    else:
        print("start-up   kernels not built ahead of time (edge engine build): not measured")
    print(f"start-up   {warm:.2f} s with numba and a warm cache (median of 5), {cold:.2f} s cold")
    out = ROOT / "bench" / "results" / "engine.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
