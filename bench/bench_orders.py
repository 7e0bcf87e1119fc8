"""Measure of "one order per problem": a simulated storm through the real gateway and receiver.

Runs config/scenarios/storm.yaml (four hours of a street in a minute: a storm floods two of
three grids, a cover is knocked open) against `edge run` and the reference receiver, then
reports the alerts the rules raised against the orders opened (the duplicate suppression
ratio: grouping makes one flooding order per grid), and the simulator's score of the orders
against its ground truth: events found, missed, false orders, duplicates, detection delay.

    .venv/bin/python bench/bench_orders.py    # prints, and writes bench/results/orders.json
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.broker import free_port, start_mosquitto, wait_for_port  # noqa: E402

SCENARIO = ROOT / "config" / "scenarios" / "storm.yaml"


def unsent(database: Path) -> int:
    if not database.exists():
        return -1
    with sqlite3.connect(database) as conn:
        return conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0]


def main() -> None:
    python = sys.executable
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        broker = start_mosquitto(tmp / "broker")
        port = free_port()
        receiver = subprocess.Popen([python, "-m", "uplink.receiver", "--port", str(port), "--db", str(tmp / "r.db")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        gateway = None
        try:
            wait_for_port("127.0.0.1", port, 20, receiver)
            subprocess.run([python, "-m", "firmware_sim", "registry", str(SCENARIO), "-o", str(tmp / "registry.csv")],
                           check=True, capture_output=True)
            config = tmp / "gateway.toml"
            config.write_text(f"""
[gateway]
id = "gw-storm"
data_dir = "data"
[registry]
path = "{(tmp / 'registry.csv').as_posix()}"
[rules]
paths = ["{(ROOT / 'rules').as_posix()}"]
[mqtt]
url = "{broker.url}"
client_id = "gw-storm"
[uplink]
url = "http://127.0.0.1:{port}"
""")
            log = tmp / "gateway.log"
            gateway = subprocess.Popen([python, "-m", "edge", "run", "--config", str(config)], stderr=log.open("wb"))
            deadline = time.monotonic() + 60
            while "subscribed to" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.2)
            started = time.monotonic()
            subprocess.run([python, "-m", "firmware_sim", "scenario", str(SCENARIO), "--broker", broker.url,
                            "--out", str(tmp / "run"), "--start", "now"], check=True, capture_output=True)
            simulated = time.monotonic() - started
            deadline = time.monotonic() + 60
            while unsent(tmp / "data" / "gateway.db") != 0 and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(2)
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(60)
            stopped = re.search(r"stopped: (\d+) messages, (\d+) readings, (\d+) alerts raised, (\d+) orders opened",
                                log.read_text())
            messages, readings, alerts, opened = (int(x) for x in stopped.groups())
            with sqlite3.connect(tmp / "data" / "gateway.db") as conn:  # every revision, by what changed
                changes = dict(conn.execute("SELECT change, count(*) FROM order_events GROUP BY change ORDER BY 2 DESC"))
            scored = subprocess.run([python, "-m", "firmware_sim", "score", "--truth", str(tmp / "run" / "truth.jsonl"),
                                     "--receiver", f"http://127.0.0.1:{port}", "--json"],
                                    check=True, capture_output=True, text=True)
            score = json.loads(scored.stdout)
        finally:
            if gateway is not None and gateway.poll() is None:
                gateway.kill()
            receiver.terminate()
            receiver.wait(10)
            broker.stop()
    results = {
        "scenario": "storm (config/scenarios/storm.yaml), 4 h of device time",
        "simulated_in_s": round(simulated, 1),
        "messages": messages,
        "readings": readings,
        "alerts_raised": alerts,
        "orders_opened": opened,
        "alerts_per_order": round(alerts / opened, 2) if opened else None,
        "revisions_by_change": changes,
        "score": {k: score[k] for k in score if not k.endswith("_list")},
    }
    print(f"storm scenario: {messages} messages, {readings} readings in {simulated:.0f} s")
    print(f"alerts raised {alerts}, orders opened {opened}: {results['alerts_per_order']} alerts per order")
    print("revisions by change: " + ", ".join(f"{change} {n}" for change, n in changes.items()))
    print("score: " + ", ".join(f"{k} {v}" for k, v in results["score"].items() if not isinstance(v, (dict, list))))
    out = ROOT / "bench" / "results" / "orders.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
