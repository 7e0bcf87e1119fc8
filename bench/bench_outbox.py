"""Benchmark of store-and-forward: durable outbox writes, backlog drain, memory with a huge backlog.

1. Durable writes: order revisions into gateway.db (WAL, synchronous=FULL), one per
   transaction and 500 per transaction (the agent commits once per batch).
2. Drain: 100,000 revisions waiting, the reference receiver (a separate process) comes
   up, and the uplink sends them all; time until the outbox is empty.
3. Memory: the gateway (``edge run``, a separate process) with 1,000,000 unsent revisions
   and no platform to send to, against the same gateway with an empty outbox.

    .venv/bin/python bench/bench_outbox.py     # prints, and writes bench/results/outbox.json
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.broker import free_port, start_mosquitto, wait_for_port  # noqa: E402
from edge.outbox import Outbox, open_database, transaction  # noqa: E402
from uplink.sender import Sender  # noqa: E402
from uplink.transport_http import HttpTransport  # noqa: E402

BODY = {
    "order_id": "", "revision": 0, "change": "opened", "gateway": "gw-bench", "device": "MH-0003",
    "device_kind": "manhole_cover", "rule": "cover_tilted", "category": "manhole_cover_displaced",
    "severity": "critical", "title": "Manhole cover MH-0003 open or tilted at 16 Jiefang Rd", "grid": "G01",
    "zone": "Z1", "team": "team-grid-01", "address": "16 Jiefang Rd", "location": {"lat": 31.2312, "lon": 121.47},
    "opened_at": "2026-11-22T10:00:00.000Z", "updated_at": "2026-11-22T10:00:00.000Z", "state": "opened",
    "evidence": [{"metric": "tilt_deg", "value": 31.5, "at": "2026-11-22T10:00:00.000Z", "condition": "tilt_deg > 15"}],
}


def body(order: int, revision: int) -> dict:
    return dict(BODY, order_id=f"gw-bench-{order:07d}", revision=revision)


def durable_writes(path: Path, count: int, per_transaction: int) -> float:
    db = open_database(path)
    outbox = Outbox(db)
    start = time.perf_counter()
    for lo in range(0, count, per_transaction):
        with transaction(db):
            for i in range(lo, min(count, lo + per_transaction)):
                outbox.put(f"gw-bench-{i:07d}", 1, body(i, 1))
    seconds = time.perf_counter() - start
    db.conn.close()
    return count / seconds


def prefill(path: Path, count: int) -> None:
    db = open_database(path)
    outbox = Outbox(db)
    for lo in range(0, count, 10_000):
        with transaction(db):
            for i in range(lo, min(count, lo + 10_000)):
                outbox.put(f"gw-bench-{i // 4:07d}", i % 4 + 1, body(i // 4, i % 4 + 1))
    db.conn.close()


def drain(tmp: Path, count: int) -> float:
    database = tmp / "drain.db"
    prefill(database, count)
    port = free_port()
    receiver = subprocess.Popen([sys.executable, "-m", "uplink.receiver", "--port", str(port), "--db", str(tmp / "r.db")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port, 20, receiver)
        stop, wake = threading.Event(), threading.Event()
        sender = Sender(database, HttpTransport(f"http://127.0.0.1:{port}", "gw-bench", timeout=30), stop, wake,
                        batch_size=2000)
        thread = threading.Thread(target=sender.run, daemon=True)
        start = time.perf_counter()
        thread.start()
        db = open_database(database)
        while Outbox(db).depth() > 0:
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        db.conn.close()
        stop.set()
        wake.set()
        thread.join(30)
        return seconds
    finally:
        receiver.terminate()
        receiver.wait(10)


def rss_of_gateway(tmp: Path, broker_url: str, rows: int) -> int:
    """Resident memory (bytes) of `edge run` with ``rows`` unsent revisions and no platform, after 15 s."""
    work = tmp / f"gw-{rows}"
    (work / "data").mkdir(parents=True)
    if rows:
        prefill(work / "data" / "gateway.db", rows)
    config = work / "gateway.toml"
    config.write_text(f"""
[gateway]
id = "gw-bench"
data_dir = "data"
[registry]
path = "{(ROOT / 'config' / 'devices.csv').as_posix()}"
[rules]
paths = ["{(ROOT / 'rules').as_posix()}"]
[mqtt]
url = "{broker_url}"
client_id = "bench-{rows}"
[uplink]
url = "http://127.0.0.1:{free_port()}"
retry_max = 1.0
""")
    process = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(15)
        status = Path(f"/proc/{process.pid}/status").read_text()
        kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        return kb * 1024
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        single = durable_writes(tmp / "w1.db", 2_000, 1)
        grouped = durable_writes(tmp / "w500.db", 200_000, 500)
        drain_seconds = drain(tmp, 100_000)
        broker = start_mosquitto(tmp / "broker")
        try:
            rss_empty = rss_of_gateway(tmp, broker.url, 0)
            rss_backlog = rss_of_gateway(tmp, broker.url, 1_000_000)
        finally:
            broker.stop()
    results = {
        "durable_writes_per_s_one_per_transaction": round(single),
        "durable_writes_per_s_500_per_transaction": round(grouped),
        "drain_100000_revisions_s": round(drain_seconds, 2),
        "drain_revisions_per_s": round(100_000 / drain_seconds),
        "gateway_rss_empty_outbox_mb": round(rss_empty / 2**20, 1),
        "gateway_rss_1000000_unsent_mb": round(rss_backlog / 2**20, 1),
    }
    print(f"durable writes   {single:10,.0f} revisions/s one per transaction (synchronous=FULL)")
    print(f"                 {grouped:10,.0f} revisions/s 500 per transaction")
    print(f"drain            100,000 revisions in {drain_seconds:.1f} s ({100_000 / drain_seconds:,.0f}/s) to the reference receiver")
    print(f"memory (RSS)     {rss_empty / 2**20:.1f} MB with an empty outbox, {rss_backlog / 2**20:.1f} MB with 1,000,000 unsent")
    out = ROOT / "bench" / "results" / "outbox.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
