"""Benchmark of ingest: sustained messages/s from Mosquitto through decode, engine and orders
into the outbox, against a bare paho-mqtt subscriber that only counts, in the same run.

A publisher process sends N QoS 1 messages (own JSON telemetry of 20 of the registry's manhole
covers, one tilted so an order opens; and, one in four, LoRaWAN uplink events) into a persistent
session while its subscriber is offline; the subscriber then connects and drains them. The rate
is N over the time from the first message received to the last one processed (for the gateway:
decoded, evaluated, orders written and the batch committed), so the publisher is not the limit.
Also: decode-only rate of each decoder in this process.

    .venv/bin/python bench/bench_ingest.py [--messages N]   # prints, writes bench/results/ingest.json

Not measured yet (see the report): latency at 5,000 messages/s, resident memory with 10,000 devices.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402

from edge.broker import start_mosquitto  # noqa: E402
from edge.ingest.decoders import DECODERS  # noqa: E402

PUBLISHER = r"""
import sys, time, orjson, paho.mqtt.client as mqtt
sys.path.insert(0, sys.argv[4])
from firmware_sim.protocols import lorawan
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
covers = [f"MH-{i:04d}" for i in range(1, 21)]
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
client.max_queued_messages_set(0)
client.connect(host, port); client.loop_start()
now = time.time()
lora = lorawan.report("street", "MH-L01", "MCL-300", now, {"tilt_deg": 1.0, "open": 0, "water_cm": 150.0,
                       "battery_v": 3.6, "rssi_dbm": -80}, False, 1, 1)[0]
last = None
for i in range(count):
    if i % 4 == 3:
        last = client.publish(lora.topic, lora.payload, qos=1)
    else:
        device = covers[i % len(covers)]
        tilt = 30.0 if device == "MH-0003" else 1.0
        body = orjson.dumps({"ts": now + i * 0.001, "readings": {"tilt_deg": tilt, "open": 0, "water_cm": 150.0}})
        last = client.publish(f"devices/{device}/telemetry", body, qos=1)
last.wait_for_publish(120)
client.disconnect(); client.loop_stop()
"""


def publish(broker, count: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PUBLISHER, broker.host, str(broker.port), str(count), str(ROOT)])


def bare_subscriber(broker, count: int) -> float:
    """A persistent session filled while offline, then drained by a paho callback that only counts."""
    done, first, seen = threading.Event(), [0.0], [0]

    def on_message(client, userdata, message):
        if not seen[0]:
            first[0] = time.perf_counter()
        seen[0] += 1
        if seen[0] == count:
            done.set()

    def connect():
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-bare", clean_session=False)
        client.on_message = on_message
        subscribed = threading.Event()
        client.on_subscribe = lambda *a: subscribed.set()
        client.connect(broker.host, broker.port)
        client.subscribe([(t, 1) for t in ("devices/+/telemetry", "application/+/device/+/event/up")])
        client.loop_start()
        subscribed.wait(10)
        return client

    client = connect()
    client.disconnect()
    client.loop_stop()
    publish(broker, count).wait(300)
    client = connect()
    done.wait(300)
    end = time.perf_counter()
    client.disconnect()
    client.loop_stop()
    return seen[0] / (end - first[0])


def gateway(broker, count: int, workdir: Path) -> tuple[float, dict]:
    from edge.agent import Agent
    from edge.config import load_config

    registry = workdir / "devices.csv"
    registry.write_text((ROOT / "config" / "devices.csv").read_text()
                        + "MH-L01,manhole_cover,MCL-300,1 Bench Rd,31.23,121.47,G01,Z1,team-a,\n")
    config = workdir / "gateway.toml"
    config.write_text(f"""
[gateway]
id = "gw-bench"
data_dir = "{(workdir / 'data').as_posix()}"
[registry]
path = "{registry.as_posix()}"
[rules]
paths = ["{(ROOT / 'rules').as_posix()}"]
[mqtt]
url = "mqtt://{broker.host}:{broker.port}"
client_id = "bench-gateway"
[uplink]
url = "http://127.0.0.1:9"
retry_max = 30.0
""")
    first = Agent(load_config(config))  # creates the persistent session, then goes offline
    thread = threading.Thread(target=first.run, daemon=True)
    thread.start()
    first.ready.wait(120)
    first.subscriber.connected.wait(20)
    first.stop()
    thread.join(60)
    publish(broker, count).wait(300)  # the broker holds them all for the gateway's session
    agent = Agent(load_config(config))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    while agent.stats.messages == 0:
        time.sleep(0.001)
    start = time.perf_counter()
    while agent.stats.messages < count:
        time.sleep(0.005)
    end = time.perf_counter()
    stats = {"readings": agent.stats.readings, "orders_opened": agent.stats.orders_opened,
             "quarantined": sum(agent.stats.quarantined.values())}
    agent.stop()
    thread.join(60)
    return count / (end - start), stats


def decode_rates(count: int = 20000) -> dict:
    from firmware_sim.protocols import lorawan

    samples = {
        "own_json": ("devices/MH-0001/telemetry", json.dumps({"ts": 1.7e9, "readings": {"tilt_deg": 1.5, "open": 0}}).encode()),
        "chirpstack": lorawan.report("street", "MH-L01", "MCL-300", 1.7e9, {"tilt_deg": 1.0, "rssi_dbm": -80}, False, 1, 1)[0],
        "frigate": ("frigate/events", json.dumps({"type": "update", "after": {
            "camera": "CAM-0001", "label": "car", "score": 0.9, "frame_time": 1.7e9, "start_time": 1.7e9 - 60,
            "current_zones": ["no_parking"]}}).encode()),
    }
    rates = {}
    for decoder in DECODERS:
        sample = samples[decoder.NAME]
        topic, payload = (sample.topic, sample.payload) if hasattr(sample, "topic") else sample
        start = time.perf_counter()
        for _ in range(count):
            decoder.decode(topic, payload, lambda device: None)
        rates[decoder.NAME] = round(count / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=50000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = start_mosquitto(Path(tmp) / "broker")
        try:
            bare = bare_subscriber(broker, args.messages)
            through, stats = gateway(broker, args.messages, Path(tmp))
        finally:
            broker.stop()
    results = {
        "messages": args.messages,
        "bare_paho_subscriber_msgs_per_s": round(bare),
        "gateway_decode_engine_orders_outbox_msgs_per_s": round(through),
        "gateway_vs_bare": round(through / bare, 2),
        "gateway_run": stats,
        "decode_only_msgs_per_s": decode_rates(),
    }
    print(json.dumps(results, indent=2))
    out = ROOT / "bench" / "results" / "ingest.json"
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
