"""Benchmark of the disk: a flood of 10 MB payloads against the disk budget, and recovery from a full disk.

1. Flood. A running gateway (``edge run``, its own process, a private Mosquitto, the reference
   receiver) gets N payloads of S MB each (garbage on ``devices/MH-0001/telemetry``, so each is
   quarantined). Mosquitto 2's default ``message_size_limit``/``max_packet_size`` is 0 (no
   limit; the protocol's own limit is 256 MB), so 10 MB messages reach the gateway; the broker
   config sets it explicitly. Two configurations: the defaults (``[ingest] max_payload_bytes``
   64 KiB, ``quarantine_keep_bytes`` 4 KiB, ``[outbox] max_bytes`` 256 MiB), and the most the
   gateway may keep of each payload (1 MiB) against a small budget (16 MiB), where eviction and
   giving space back must do the work. Figures: gateway.db and its WAL on disk after the flood
   (once the gateway's next ticks have kept the budget) against the budget, their peak during
   it, the messages quarantined, and the gateway's peak resident memory.
2. Disk-full recovery (needs root to mount a tmpfs). The gateway's data folder on an 8 MB
   tmpfs; a runaway writer keeps the partition full; an alarm (a cover tilted for 11 s) is
   published; after ``--full-seconds`` the writer stops and its file is deleted. Recovery time =
   from deleting the file to the alarm's order at the receiver (and to /healthz 200). Each
   round uses another cover. A gateway that exits on the full disk is reported as such (it did
   before the agent treated a full disk as a degraded mode).

    .venv/bin/python bench/bench_disk.py [--payloads 40] [--size-mib 10] [--rounds 3] [--only flood|recovery]

prints the figures and writes them to bench/results/disk.json (a part not run keeps its
previous figures).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
import requests  # noqa: E402

from edge.broker import free_port, mosquitto_path, wait_for_port  # noqa: E402
from edge.outbox.disk import file_sizes, free_bytes  # noqa: E402

MIB = 1024 * 1024
MOSQUITTO_CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 1000000
max_inflight_messages 1000
message_size_limit 0
log_dest stderr
log_type error
log_type warning
"""


class Broker:
    def __init__(self, workdir: Path):
        binary = mosquitto_path()
        if binary is None:
            raise SystemExit("mosquitto is not installed (Debian: apt-get install mosquitto)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.host, self.port = "127.0.0.1", free_port()
        conf = workdir / "mosquitto.conf"
        conf.write_text(MOSQUITTO_CONF.format(port=self.port))
        self.process = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                        stderr=(workdir / "mosquitto.log").open("wb"))
        if not wait_for_port(self.host, self.port, 10, self.process):
            raise SystemExit(f"mosquitto did not start; see {workdir / 'mosquitto.log'}")
        self.url = f"mqtt://{self.host}:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class Receiver:
    def __init__(self, db: Path):
        self.process = subprocess.Popen([sys.executable, "-m", "uplink.receiver", "--port", "0", "--db", str(db)],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        line = self.process.stdout.readline()
        if not line.startswith("receiver listening on "):
            self.process.kill()
            raise SystemExit(f"receiver did not start: {line!r}")
        self.url = line.split()[3]

    def devices(self) -> list[str]:
        return [o["device"] for o in requests.get(f"{self.url}/api/v1/orders", timeout=5).json()["orders"]]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class Gateway:
    """``edge run`` with its data folder at ``data_dir`` and its status page on a known port."""

    def __init__(self, workdir: Path, data_dir: Path, broker: Broker, receiver: Receiver, extra: str = ""):
        self.port = free_port()
        self.log = workdir / "gateway.log"
        self.database = data_dir / "gateway.db"
        config = workdir / "gateway.toml"
        config.write_text(f"""
[gateway]
id = "gw-bench-disk"
data_dir = "{data_dir.as_posix()}"

[registry]
path = "{(ROOT / 'config' / 'devices.csv').as_posix()}"

[rules]
paths = ["{(ROOT / 'rules').as_posix()}"]

[mqtt]
url = "{broker.url}"
client_id = "bench-disk-{uuid.uuid4().hex[:8]}"

[uplink]
url = "{receiver.url}"
retry_max = 1.0

[status]
listen = "127.0.0.1:{self.port}"
{extra}
""")
        self.process = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(config)], cwd=ROOT,
                                        stdout=subprocess.DEVNULL, stderr=self.log.open("ab"))

    def healthz(self) -> int | None:
        try:
            return requests.get(f"http://127.0.0.1:{self.port}/healthz", timeout=5).status_code
        except requests.RequestException:
            return None

    def status(self) -> dict:
        return requests.get(f"http://127.0.0.1:{self.port}/status.json", timeout=10).json()

    def alive(self) -> bool:
        return self.process.poll() is None

    def peak_rss(self) -> int | None:
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def wait_until(predicate, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


def publisher(broker: Broker) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-disk-{uuid.uuid4().hex[:8]}")
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def tilted(device: str, t0: float) -> list[tuple[str, bytes]]:
    return [(f"devices/{device}/telemetry", orjson.dumps({"ts": round(t, 3), "readings": {"tilt_deg": 30.0, "open": 1}}))
            for t in (t0 - 11, t0)]


def quarantined(gateway: Gateway) -> int:
    try:
        agent = gateway.status().get("ingest", {})
    except (requests.RequestException, ValueError):
        return -1
    return sum((agent.get("quarantined") or {}).values())


# -- 1. flood ------------------------------------------------------------------------------------
def flood(workdir: Path, payloads: int, size: int, budget: int, keep: int | None) -> dict:
    broker = Broker(workdir / "broker")
    receiver = Receiver(workdir / "receiver.db")
    extra = f"\n[outbox]\nmax_bytes = {budget}\n"
    if keep is not None:
        extra += f"\n[ingest]\nquarantine_keep_bytes = {keep}\n"
    gateway = Gateway(workdir, workdir / "data", broker, receiver, extra)
    peak = [0, 0]
    sampling = threading.Event()

    def sample():
        while not sampling.wait(0.05):
            db_bytes, wal_bytes = file_sizes(gateway.database)
            peak[0], peak[1] = max(peak[0], db_bytes), max(peak[1], wal_bytes)

    sampler = threading.Thread(target=sample, daemon=True)
    client = None
    try:
        if not wait_until(lambda: gateway.healthz() == 200 or not gateway.alive(), 120) or not gateway.alive():
            raise SystemExit("edge run did not start:\n" + gateway.log_tail())
        sampler.start()
        client = publisher(broker)
        garbage = b"{" + b"\xff" * (size - 1)  # not JSON, not UTF-8: quarantined, whatever the limits
        started = time.monotonic()
        for _ in range(payloads):
            info = client.publish("devices/MH-0001/telemetry", garbage, qos=1)
            info.wait_for_publish(120)
        done = wait_until(lambda: quarantined(gateway) >= payloads or not gateway.alive(), 600, 0.5)
        flood_seconds = time.monotonic() - started
        if not gateway.alive():
            return {"error": "the gateway exited during the flood", "log": gateway.log_tail()}
        time.sleep(3.0)  # the next ticks keep the budget (enforce_budget) and give space back
        sampling.set()
        sampler.join(5)
        db_bytes, wal_bytes = file_sizes(gateway.database)
        return {
            "payloads": payloads, "payload_bytes": size, "budget_bytes": budget,
            "quarantine_keep_bytes": keep if keep is not None else "default (4096)",
            "all_quarantined": bool(done), "quarantined": quarantined(gateway),
            "db_bytes": db_bytes, "wal_bytes": wal_bytes, "files_bytes": db_bytes + wal_bytes,
            "within_budget": db_bytes + wal_bytes <= budget,
            "peak_db_bytes": peak[0], "peak_wal_bytes": peak[1],
            "gateway_peak_rss_bytes": gateway.peak_rss(), "flood_seconds": round(flood_seconds, 1),
            "gateway_alive": gateway.alive(), "healthz": gateway.healthz(),
        }
    finally:
        sampling.set()
        if client is not None:
            client.disconnect()
            client.loop_stop()
        gateway.stop()
        receiver.stop()
        broker.stop()


# -- 2. disk-full recovery ---------------------------------------------------------------------------
class Partition:
    def __init__(self, path: Path, size: str):
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True, timeout=30)
        if done.returncode:
            raise PermissionError(f"cannot mount a tmpfs at {path}: {done.stderr.strip() or 'needs root'}")
        self.path = path
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _fill(self) -> None:
        with open(self.path / "filler", "ab", buffering=0) as f:
            for size in (65536, 4096, 512):
                try:
                    while True:
                        f.write(b"\xa5" * size)
                except OSError:
                    pass

    def keep_full(self) -> None:
        self._stop.clear()
        self._fill()

        def run():
            while not self._stop.wait(0.05):
                self._fill()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def free(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        (self.path / "filler").unlink(missing_ok=True)

    def close(self) -> None:
        self.free()
        if subprocess.run(["umount", str(self.path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


def recovery(workdir: Path, rounds: int, full_seconds: float) -> dict:
    try:
        partition = Partition(workdir / "data", "8m")
    except PermissionError as error:
        return {"error": str(error)}
    broker = Broker(workdir / "broker")
    receiver = Receiver(workdir / "receiver.db")
    gateway = Gateway(workdir, partition.path, broker, receiver, "\n[outbox]\nmax_bytes = 4194304\n")
    client = None
    out: dict = {"partition": "tmpfs 8 MB", "full_seconds": full_seconds, "rounds": []}
    try:
        if not wait_until(lambda: gateway.healthz() == 200 or not gateway.alive(), 120) or not gateway.alive():
            return {"error": "edge run did not start", "log": gateway.log_tail()}
        client = publisher(broker)
        pid = gateway.process.pid
        for n in range(rounds):
            device = f"MH-{5 + 4 * n:04d}"
            partition.keep_full()
            for topic, payload in tilted(device, time.time()):
                client.publish(topic, payload, qos=1).wait_for_publish(20)
            degraded = wait_until(lambda: gateway.healthz() == 503 or not gateway.alive(), 60)
            time.sleep(full_seconds)
            if not gateway.alive():
                out["error"] = (f"the gateway exited on the full disk (round {n + 1}): the agent does not yet treat a "
                                f"full disk as a degraded mode")
                out["log"] = gateway.log_tail()
                break
            delivered_while_full = device in receiver.devices()
            freed = time.monotonic()
            partition.free()
            arrived = wait_until(lambda: device in receiver.devices(), 120)
            order_s = time.monotonic() - freed
            healthy = wait_until(lambda: gateway.healthz() == 200, 120)
            health_s = time.monotonic() - freed
            out["rounds"].append({
                "device": device, "healthz_503_while_full": bool(degraded) and gateway.alive(),
                "order_delivered_while_full": delivered_while_full,
                "order_seconds_after_space_returned": round(order_s, 2) if arrived else None,
                "healthz_200_seconds_after_space_returned": round(health_s, 2) if healthy else None,
                "same_process": gateway.alive() and gateway.process.pid == pid,
            })
            time.sleep(2.0)
        times = [r["order_seconds_after_space_returned"] for r in out["rounds"]
                 if r["order_seconds_after_space_returned"] is not None]
        if times:
            out["recovery_seconds_median"] = round(statistics.median(times), 2)
            out["recovery_seconds_max"] = round(max(times), 2)
        return out
    finally:
        if client is not None:
            client.disconnect()
            client.loop_stop()
        partition.free()
        gateway.stop()
        receiver.stop()
        broker.stop()
        partition.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payloads", type=int, default=40, help="payloads in the flood (default 40)")
    parser.add_argument("--size-mib", type=float, default=10, help="size of each, MiB (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="disk-full recovery rounds (default 3)")
    parser.add_argument("--full-seconds", type=float, default=5, help="how long the disk stays full each round (default 5)")
    parser.add_argument("--only", choices=["flood", "recovery"], action="append", help="run only this part (repeatable)")
    args = parser.parse_args()
    parts = set(args.only or ["flood", "recovery"])
    out = ROOT / "bench" / "results" / "disk.json"
    try:
        results = json.loads(out.read_text())
    except (OSError, ValueError):
        results = {}
    results["cpu_count"] = os.cpu_count()
    results["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    size = int(args.size_mib * MIB)
    with tempfile.TemporaryDirectory() as tmp:
        if "flood" in parts:
            if free_bytes(Path(tmp)) < 2 * args.payloads * min(size, MIB) + 512 * MIB:
                raise SystemExit(f"not enough room in {tmp} for the flood")
            results["flood"] = {
                "defaults": flood(Path(tmp) / "flood-defaults", args.payloads, size, 256 * MIB, None),
                "keep_1_mib_budget_16_mib": flood(Path(tmp) / "flood-keep", args.payloads, size, 16 * MIB, MIB),
            }
        if "recovery" in parts:
            results["recovery"] = recovery(Path(tmp) / "recovery", args.rounds, args.full_seconds)
    print(json.dumps(results, indent=2))
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
