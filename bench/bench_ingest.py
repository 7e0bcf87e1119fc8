"""Benchmark of ingest: throughput against a bare paho subscriber, latency at a steady rate, memory.

1. Throughput (same run, alternating rounds). A publisher process sends N QoS 1 messages (own
   JSON telemetry of 20 of the registry's manhole covers, one tilted so an order opens; and,
   one in four, LoRaWAN uplink events of ``--lorawan-model``: MCL-300's Python codec, or a
   vendor model's JavaScript codec such as USM-100's) once; the broker queues them for two offline
   persistent sessions: a bare paho-mqtt subscriber that only counts, and the gateway. Each
   then connects and drains its queue, in alternating order from round to round. A rate is N
   over the time from the first message received to the last one processed (for the gateway:
   decoded, evaluated, orders written and the batch committed), so the publisher is not the
   limit. Both use the same MQTT version (5 by default, like the gateway). The figure is the
   median of the per-round ratios gateway / bare. Because the machine is shared, each round
   also gives messages per CPU second of this process (process_time over the same span),
   which other processes' load disturbs much less than wall time.
2. Latency. ``edge run`` (its own process) with 10,000 manhole covers in the registry and the
   shipped rules; a publisher process sends a steady R messages/s (QoS 1) of ordinary readings
   spread over the covers, and every 50 ms the reading that completes a cover's tilt for 10 s
   (an order opens). Latency = the time this process first sees the order's row committed in
   the outbox (it reads gateway.db every 2 ms) minus the time the publisher handed the reading
   to paho. p50, p99, max.
3. Memory of that ``edge run`` process (VmRSS from /proc): after start with 10,000 devices,
   peak during the latency run, and which kernels it ran (built ahead of time by ``edge engine
   build``, or numba's); and what dominates, in a separate process each way: a bare
   interpreter, then with the gateway's imports, then with the engine for 10,000 devices
   ready, and the engine's state arrays.
4. Decode-only rate of each decoder in this process.

    .venv/bin/python bench/bench_ingest.py [--messages N] [--rounds R] [--rate R] [--seconds S] [--only PART]

prints the figures and writes them to bench/results/ingest.json (a part not run keeps its
previous figures).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from edge.broker import start_mosquitto  # noqa: E402
from edge.ingest.decoders import DECODERS  # noqa: E402

TOPICS = ("devices/+/telemetry", "application/+/device/+/event/up")

PUBLISHER = r"""
import sys, time, orjson, paho.mqtt.client as mqtt
sys.path.insert(0, sys.argv[4])
from firmware_sim.protocols import lorawan
host, port, count, model = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[5]
covers = [f"MH-{i:04d}" for i in range(1, 21)]
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
client.max_queued_messages_set(0)
client.connect(host, port); client.loop_start()
now = time.time()
lora = lorawan.report("street", "MH-L01", model, now, {"tilt_deg": 1.0, "open": 0, "water_cm": 150.0,
                       "temp_c": 12.0, "battery_v": 3.6, "rssi_dbm": -80}, False, 1, 1)[0]
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

# Steady publisher: argv host port rate seconds n_devices; prints {"triggers": {device: t_publish}, ...}.
STEADY = r"""
import sys, time, orjson, paho.mqtt.client as mqtt
host, port, rate, seconds, n = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
devices = [f"LT-{i:05d}" for i in range(n)]
trigger_pool = devices[-2000:]
background = devices[:-2000]
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
client.max_queued_messages_set(0)
client.max_inflight_messages_set(1000)
client.connect(host, port); client.loop_start()
start = time.time()
sent = 0
k = 0
triggers = {}
next_trigger = start + 0.5
last = None
while True:
    now = time.time()
    if now - start >= seconds:
        break
    while sent < (now - start) * rate:
        device = background[k % len(background)]
        k += 1
        body = orjson.dumps({"ts": now, "readings": {"tilt_deg": 1.0, "open": 0, "water_cm": 150.0}})
        last = client.publish(f"devices/{device}/telemetry", body, qos=1)
        sent += 1
    if now >= next_trigger and len(triggers) < len(trigger_pool):
        device = trigger_pool[len(triggers)]
        topic = f"devices/{device}/telemetry"
        client.publish(topic, orjson.dumps({"ts": now - 11.0, "readings": {"tilt_deg": 35.0, "open": 1}}), qos=1)
        body = orjson.dumps({"ts": now, "readings": {"tilt_deg": 35.0, "open": 1}})
        triggers[device] = time.time()
        last = client.publish(topic, body, qos=1)
        sent += 2
        next_trigger += 0.05
    time.sleep(0.001)
elapsed = time.time() - start
if last is not None:
    last.wait_for_publish(60)
client.disconnect(); client.loop_stop()
print(orjson.dumps({"triggers": triggers, "sent": int(sent), "seconds": elapsed}).decode())
"""


def publish(broker, count: int, model: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PUBLISHER, broker.host, str(broker.port), str(count), str(ROOT), model])


# -- 1. throughput ---------------------------------------------------------------------------
class BareSubscriber:
    """A persistent session drained by a paho callback that only counts."""

    def __init__(self, broker, protocol: str):
        self.broker, self.protocol = broker, protocol

    def _connect(self, on_message) -> mqtt.Client:
        v5 = self.protocol == "5"
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-bare",
                             protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, clean_session=None if v5 else False)
        client.on_message = on_message
        subscribed = threading.Event()
        client.on_subscribe = lambda *a: subscribed.set()
        if v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 3600
            client.connect(self.broker.host, self.broker.port, clean_start=False, properties=properties)
        else:
            client.connect(self.broker.host, self.broker.port)
        client.subscribe([(t, 1) for t in TOPICS])
        client.loop_start()
        subscribed.wait(10)
        return client

    def create_session(self) -> None:
        client = self._connect(lambda *a: None)
        client.disconnect()
        client.loop_stop()

    def drain(self, count: int) -> tuple[float, float]:
        done, first, seen = threading.Event(), [0.0, 0.0], [0]

        def on_message(client, userdata, message):
            if not seen[0]:
                first[:] = time.perf_counter(), time.process_time()
            seen[0] += 1
            if seen[0] == count:
                done.set()

        client = self._connect(on_message)
        done.wait(600)
        end, cpu = time.perf_counter(), time.process_time()
        client.disconnect()
        client.loop_stop()
        return seen[0] / (end - first[0]), seen[0] / (cpu - first[1])


def write_config(workdir: Path, broker, registry: Path, client_id: str, protocol: str, extra: str = "") -> Path:
    from edge.config import MqttSection

    config = workdir / f"{client_id}.toml"
    # (a gateway without the protocol key, such as an earlier version run for comparison, speaks 3.1.1)
    protocol_line = f'protocol = "{protocol}"' if "protocol" in MqttSection.model_fields else ""
    config.write_text(f"""
[gateway]
id = "gw-bench"
data_dir = "{(workdir / ('data-' + client_id)).as_posix()}"
[registry]
path = "{registry.as_posix()}"
[rules]
paths = ["{(ROOT / 'rules').as_posix()}"]
[mqtt]
url = "mqtt://{broker.host}:{broker.port}"
client_id = "{client_id}"
{protocol_line}
{extra}
[uplink]
url = "http://127.0.0.1:9"
retry_max = 30.0
""")
    return config


class GatewayDrain:
    def __init__(self, broker, workdir: Path, protocol: str, model: str):
        self.registry = workdir / "devices.csv"
        self.registry.write_text((ROOT / "config" / "devices.csv").read_text()
                                 + f"MH-L01,manhole_cover,{model},1 Bench Rd,31.23,121.47,G01,Z1,team-a,\n")
        self.config = write_config(workdir, broker, self.registry, "bench-gateway", protocol)

    def _start(self):
        from edge.agent import Agent
        from edge.config import load_config

        agent = Agent(load_config(self.config))
        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        return agent, thread

    def create_session(self) -> None:
        agent, thread = self._start()
        agent.ready.wait(120)
        agent.subscriber.connected.wait(20)
        agent.stop()
        thread.join(60)

    def drain(self, count: int) -> tuple[float, float, dict]:
        agent, thread = self._start()
        while agent.subscriber.messages == 0:  # the first message received, as for the bare subscriber
            time.sleep(0.0005)
        start, cpu_start = time.perf_counter(), time.process_time()
        while agent.stats.messages < count:
            time.sleep(0.002)
        end, cpu = time.perf_counter(), time.process_time()
        stats = {"readings": agent.stats.readings, "orders_opened": agent.stats.orders_opened,
                 "quarantined": sum(agent.stats.quarantined.values()), "batches": agent.stats.batches}
        agent.stop()
        thread.join(60)
        return count / (end - start), count / (cpu - cpu_start), stats


def throughput(count: int, rounds: int, protocol: str, workdir: Path, model: str) -> dict:
    broker = start_mosquitto(workdir / "broker")
    try:
        bare, gateway = BareSubscriber(broker, protocol), GatewayDrain(broker, workdir, protocol, model)
        bare.create_session()
        gateway.create_session()
        runs = []
        for r in range(rounds):
            publish(broker, count, model).wait(600)  # queued for both sessions
            if r % 2 == 0:
                b, b_cpu = bare.drain(count)
                g, g_cpu, stats = gateway.drain(count)
            else:
                g, g_cpu, stats = gateway.drain(count)
                b, b_cpu = bare.drain(count)
            runs.append({"bare_msgs_per_s": round(b), "gateway_msgs_per_s": round(g), "ratio": round(g / b, 3),
                         "bare_msgs_per_cpu_s": round(b_cpu), "gateway_msgs_per_cpu_s": round(g_cpu),
                         "cpu_ratio": round(g_cpu / b_cpu, 3), "gateway": stats})
            print(f"round {r + 1}: bare {b:,.0f}/s, gateway {g:,.0f}/s, ratio {g / b:.2f}; per CPU second: "
                  f"bare {b_cpu:,.0f}, gateway {g_cpu:,.0f}, ratio {g_cpu / b_cpu:.2f}", file=sys.stderr)
    finally:
        broker.stop()
    return {
        "messages_per_round": count,
        "mqtt_version": protocol,
        "lorawan_model": model,
        "rounds": runs,
        "bare_paho_subscriber_msgs_per_s_median": round(statistics.median(r["bare_msgs_per_s"] for r in runs)),
        "gateway_msgs_per_s_median": round(statistics.median(r["gateway_msgs_per_s"] for r in runs)),
        "gateway_vs_bare_median_ratio": round(statistics.median(r["ratio"] for r in runs), 2),
        "gateway_vs_bare_per_cpu_second_median_ratio": round(statistics.median(r["cpu_ratio"] for r in runs), 2),
    }


# -- 2 and 3. latency and memory -------------------------------------------------------------
def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def big_registry(path: Path, n: int) -> None:
    lines = ["id,kind,model,address,lat,lon,grid,zone,team,depth_cm"]
    for i in range(n):
        grid = f"G{i % 120 + 1:03d}"
        lines.append(f"LT-{i:05d},manhole_cover,MC-200,{i} Long Rd,31.23,121.47,{grid},Z{i % 4 + 1},team-{grid},")
    path.write_text("\n".join(lines) + "\n")


def memory_floor(registry: Path, kernels: str, warm_first: bool = False) -> dict:
    """RSS of a bare interpreter, then with the gateway's imports, then with the engine for the
    registry warmed up, with ``kernels`` ("aot": built ahead of time, if built; "jit": numba).
    ``warm_first``: run once before measuring, so numba loads its cache instead of compiling
    (a compiling process holds several hundred MB more)."""
    if warm_first:
        memory_floor(registry, kernels)
    code = f"""
import sys, json
sys.path.insert(0, {str(ROOT)!r})
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
out = {{'python': rss()}}
import edge.agent, paho.mqtt.client, sqlite3, orjson
out['gateway_imports'] = rss()
from pathlib import Path
from edge.registry import Registry
from edge.engine import Engine, load_rules
from edge.orders.categories import Categories
from edge.paths import default_categories
registry = Registry.load(Path({str(registry)!r}))
rules = load_rules([Path({str(ROOT / 'rules')!r})], Categories.load(default_categories()).keys())
engine = Engine(rules, registry)
engine.warm_up()
out['engine_ready_10k_devices'] = rss()
out['engine_state_arrays'] = engine.state_bytes() / 2**20
out = {{k: round(v, 1) for k, v in out.items()}}
out['kernels'] = engine.kernels.kind
out['numba_imported'] = 'numba' in sys.modules
print(json.dumps(out))
"""
    env = dict(os.environ)
    env.pop("EDGE_KERNELS", None)
    if kernels == "jit":
        env["EDGE_KERNELS"] = "jit"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    if result.returncode:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def latency_and_memory(rate: float, seconds: float, devices: int, workdir: Path, profile: str | None = None,
                       protocol: str = "5") -> dict:
    broker = start_mosquitto(workdir / "broker-latency")
    registry = workdir / "devices-10k.csv"
    big_registry(registry, devices)
    config = write_config(workdir, broker, registry, "bench-latency", protocol)
    command = [sys.executable, "-m", "edge", "run", "--config", str(config)]
    process = subprocess.Popen(command, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ready = threading.Event()
    spy = None
    log_tail: list[str] = []
    kernels_line: list[str] = []

    def read_log():
        for line in process.stderr:
            log_tail.append(line)
            del log_tail[:-50]
            if "connected to MQTT broker" in line:
                ready.set()
            if "engine kernels:" in line:
                kernels_line.append(line.split("engine kernels:", 1)[1].strip())

    threading.Thread(target=read_log, daemon=True).start()
    db_path = workdir / "data-bench-latency" / "gateway.db"
    seen: dict[str, float] = {}
    stop_polling = threading.Event()
    samples: list[float] = []

    def poll_outbox():
        while not db_path.exists() and not stop_polling.is_set():
            time.sleep(0.01)
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        last = 0
        n = 0
        while not stop_polling.is_set():
            rows = conn.execute("SELECT seq, json_extract(body, '$.device') FROM outbox WHERE seq > ? AND kind = 'order'",
                                (last,)).fetchall()
            now = time.time()
            for seq, device in rows:
                last = max(last, seq)
                seen.setdefault(device, now)
            n += 1
            if n % 250 == 0:
                samples.append(rss_mb(process.pid))
            time.sleep(0.002)
        conn.close()

    try:
        if not ready.wait(120):
            raise RuntimeError("edge run did not connect:\n" + "".join(log_tail))
        if profile:  # py-spy (pip install py-spy) samples the running gateway
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--threads", "--rate", "200",
                                    "--format", "raw", "--output", profile, "--pid", str(process.pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        idle_rss = rss_mb(process.pid)
        poller = threading.Thread(target=poll_outbox, daemon=True)
        poller.start()
        cpu_before, wall_before = cpu_seconds(process.pid), time.time()
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        publisher = subprocess.run([sys.executable, "-c", STEADY, broker.host, str(broker.port), str(rate),
                                    str(seconds), str(devices)], capture_output=True, text=True, timeout=seconds + 120)
        if publisher.returncode:
            raise RuntimeError(publisher.stderr[-2000:])
        elapsed = time.time() - wall_before
        gateway_cpu = (cpu_seconds(process.pid) - cpu_before) / elapsed
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the publisher is the child reaped meanwhile
        publisher_cpu = (children.ru_utime + children.ru_stime - children_before.ru_utime - children_before.ru_stime) / elapsed
        load_after = os.getloadavg()[0]
        sent = json.loads(publisher.stdout)
        triggers = sent["triggers"]
        deadline = time.time() + 10
        while time.time() < deadline and not all(d in seen for d in triggers):
            time.sleep(0.05)
        gateway_cpu_total = cpu_seconds(process.pid) - cpu_before  # publishing, and catching up after it
        stop_polling.set()
        poller.join(5)
        peak_rss = rss_mb(process.pid, "VmHWM")
        end_rss = rss_mb(process.pid)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            spy.wait(30)
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        broker.stop()
    in_order = [1000 * (seen[d] - t) for d, t in sorted(triggers.items(), key=lambda item: item[1]) if d in seen]
    print("latency of each order in publish order, ms: " + " ".join(f"{x:.0f}" for x in in_order), file=sys.stderr)
    latencies = sorted(in_order)
    if not latencies:
        raise RuntimeError("no order reached the outbox:\n" + "".join(log_tail))

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 1)

    return {
        "latency": {
            "target_rate_msgs_per_s": rate,
            "mqtt_version": protocol,
            "achieved_rate_msgs_per_s": round(sent["sent"] / sent["seconds"]),
            "seconds": round(sent["seconds"], 1),
            "orders_expected": len(triggers),
            "orders_seen": len(latencies),
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "max_ms": round(latencies[-1], 1),
            "gateway_cpu_share_during_run": round(gateway_cpu, 2),  # CPU seconds per second (1.0 = one core)
            "publisher_cpu_share_during_run": round(publisher_cpu, 2),
            "gateway_cpu_us_per_message": round(1e6 * gateway_cpu_total / sent["sent"], 1),
            "load_average_1min_after_run": round(load_after, 2),
            "latency_over_time_ms": [round(x) for x in in_order[::10]],  # every 10th order, in publish order
            "method": "publish time in the publisher process to first sight of the committed outbox row "
                      "(gateway.db read every 2 ms from the bench process)",
        },
        "memory": {
            "devices": devices,
            "edge_run_kernels": kernels_line[0] if kernels_line else "unknown",
            "edge_run_rss_idle_mb": round(idle_rss, 1),
            "edge_run_rss_during_latency_run_max_sampled_mb": round(max(samples + [end_rss]), 1),
            "edge_run_peak_rss_vmhwm_mb": round(peak_rss, 1),
            "floor": {"kernels_built_ahead_of_time": memory_floor(registry, "aot"),
                      "kernels_numba_jit": memory_floor(registry, "jit", warm_first=True)},
        },
    }


# -- 4. decode only --------------------------------------------------------------------------
def decode_rates(count: int = 20000) -> dict:
    from firmware_sim.protocols import lorawan

    samples = {
        "own_json": ("devices/MH-0001/telemetry", json.dumps({"ts": 1.7e9, "readings": {"tilt_deg": 1.5, "open": 0}}).encode()),
        "chirpstack": lorawan.report("street", "MH-L01", "MCL-300", 1.7e9, {"tilt_deg": 1.0, "rssi_dbm": -80}, False, 1, 1)[0],
        "frigate": ("frigate/events", json.dumps({"type": "update", "after": {
            "camera": "CAM-0001", "label": "car", "score": 0.9, "frame_time": 1.7e9, "start_time": 1.7e9 - 60,
            "current_zones": ["no_parking"]}}).encode()),
    }
    model_of = lambda device: None  # noqa: E731
    if any(d.NAME == "modbus_rtu" for d in DECODERS):
        from firmware_sim.protocols.modbus import to_registers, with_crc
        import struct

        regs = to_registers("manhole_cover", {"tilt_deg": 1.0, "open": 0, "water_cm": 150.0}, 1.7e9, False)
        samples["modbus_rtu"] = ("modbus/1/RMH-0001", with_crc(bytes([1, 4, 20]) + struct.pack(">10H", *regs)))
        model_of = lambda device: "MC-200R" if device == "RMH-0001" else None  # noqa: E731
    rates = {}
    for decoder in DECODERS:
        sample = samples[decoder.NAME]
        topic, payload = (sample.topic, sample.payload) if hasattr(sample, "topic") else sample
        start = time.perf_counter()
        for _ in range(count):
            decoder.decode(topic, payload, model_of)
        rates[decoder.NAME] = round(count / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=50000, help="messages per throughput round (default 50000)")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds, alternating who drains first (default 3)")
    parser.add_argument("--protocol", choices=["5", "3.1.1"], default="5", help="MQTT version of the subscribers (throughput: both; latency: the gateway) (default 5)")
    parser.add_argument("--rate", type=float, default=5000, help="steady publish rate of the latency run, messages/s (default 5000)")
    parser.add_argument("--seconds", type=float, default=20, help="length of the latency run (default 20)")
    parser.add_argument("--devices", type=int, default=10000, help="devices in the registry of the latency/memory run (default 10000)")
    parser.add_argument("--profile", metavar="FILE", help="record the latency run's gateway with py-spy into FILE "
                                                           "(collapsed stacks; needs py-spy: pip install -e '.[bench]')")
    parser.add_argument("--lorawan-model", default="MCL-300", help="model of the one message in four that is a LoRaWAN "
                        "uplink in the throughput rounds: MCL-300 (built-in Python codec) or a vendor model decoded by "
                        "its JavaScript codec, e.g. USM-100 (default MCL-300)")
    parser.add_argument("--only", choices=["throughput", "latency", "decode"], action="append",
                        help="run only this part (repeatable); default: all")
    args = parser.parse_args()
    parts = set(args.only or ["throughput", "latency", "decode"])
    out = ROOT / "bench" / "results" / "ingest.json"
    try:
        results = json.loads(out.read_text())
    except (OSError, ValueError):
        results = {}
    for stale in ("messages", "bare_paho_subscriber_msgs_per_s", "gateway_decode_engine_orders_outbox_msgs_per_s",
                  "gateway_vs_bare", "gateway_run"):
        results.pop(stale, None)  # the single-run layout of earlier versions
    results["cpu_count"] = os.cpu_count()
    results["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        if "throughput" in parts:
            key = ("throughput_mqtt5" if args.protocol == "5" else "throughput_mqtt311") + (
                "" if args.lorawan_model == "MCL-300" else f"_lorawan_{args.lorawan_model}")
            results[key] = throughput(args.messages, args.rounds, args.protocol, Path(tmp) / "throughput",
                                      args.lorawan_model)
        if "latency" in parts:
            (Path(tmp) / "latency").mkdir()
            results.update(latency_and_memory(args.rate, args.seconds, args.devices, Path(tmp) / "latency",
                                              args.profile, args.protocol))
    if "decode" in parts:
        results["decode_only_msgs_per_s"] = decode_rates()
    print(json.dumps(results, indent=2))
    if args.profile:
        print(f"profiled run: figures not written (py-spy slows the gateway down); profile in {args.profile}",
              file=sys.stderr)
        return
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
