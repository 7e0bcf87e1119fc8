"""How fast the simulator publishes a street of 10,000 devices from one process.

Starts a private Mosquitto (edge.broker.start_mosquitto), runs config/scenarios/scale-10k.yaml
(10,000 devices, own JSON and LoRaWAN) as fast as the broker takes it, and counts messages
the broker acknowledged (QoS 1, PUBACK) per second of wall time, from the first publish to
the last acknowledgement. Setup (building the devices and the schedule) is timed apart.

    .venv/bin/python bench/bench_simulator.py [--duration 30m] [--qos 1]

Prints the figures and writes bench/results/simulator.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.broker import start_mosquitto  # noqa: E402
from firmware_sim.mqtt_sink import MqttSink  # noqa: E402
from firmware_sim.scenario import load_scenario, parse_duration  # noqa: E402
from firmware_sim.simulation import Simulation  # noqa: E402

START = 1748736000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", type=Path, default=ROOT / "config" / "scenarios" / "scale-10k.yaml")
    parser.add_argument("--duration", default=None, help="Device time to simulate (default: the scenario's).")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "simulator.json")
    args = parser.parse_args()

    scenario = load_scenario(args.scenario)
    if args.duration:
        scenario.duration = parse_duration(args.duration)
    scenario.qos = args.qos
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        broker = start_mosquitto(Path(tmp) / "broker")
        try:
            t0 = time.perf_counter()
            simulation = Simulation(scenario, start=START)
            setup_s = time.perf_counter() - t0
            sink = MqttSink(broker.url, "bench-simulator", window=5000)
            t1 = time.perf_counter()
            stats = simulation.run(sink, speed="max")
            t2 = time.perf_counter()
            missing = sink.close(timeout=60)
            t3 = time.perf_counter()
        finally:
            broker.stop()
    published = stats.published + stats.status
    result = {
        "benchmark": "firmware simulator publish rate, one process, private Mosquitto on loopback",
        "scenario": scenario.name,
        "devices": len(simulation.nodes),
        "device_time_s": scenario.duration,
        "qos": args.qos,
        "messages": published,
        "telemetry_messages": stats.published,
        "status_messages": stats.status,
        "by_protocol": stats.by_protocol,
        "unacknowledged": missing,
        "setup_s": round(setup_s, 2),
        "publish_loop_s": round(t2 - t1, 2),
        "drain_s": round(t3 - t2, 2),
        "sustained_messages_per_s": round((published - missing) / (t3 - t1)),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(f"{result['devices']} devices, {published} messages (QoS {args.qos}) in {t3 - t1:.1f} s: "
          f"{result['sustained_messages_per_s']} messages/s acknowledged by the broker; setup {setup_s:.1f} s; "
          f"unacknowledged {missing}; peak RSS {result['peak_rss_mb']} MB")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
