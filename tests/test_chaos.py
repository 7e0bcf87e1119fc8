"""Faults with real processes on loopback: kill -9, broker restarts, a failing or absent platform.

Each test is bounded in time; every wait has a deadline.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time

import requests

from conftest import Misbehaving, edge_command, start_receiver, wait_until, write_gateway_config
from edge.broker import free_port, start_mosquitto
from edge.outbox import Outbox, open_database, transaction


def start_gateway(config, log_path):
    return subprocess.Popen(edge_command() + ["run", "--config", str(config)], stderr=log_path.open("ab"))


def unsent(database) -> int:
    with sqlite3.connect(database) as conn:
        return conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0]


def test_kill_9_at_random_moments_loses_no_order_and_delivers_each_once(tmp_path, mosquitto):
    receiver = start_receiver(tmp_path / "receiver.db")
    config = write_gateway_config(tmp_path, mosquitto.url, receiver.url)
    log = tmp_path / "gateway.log"
    covers = ["MH-0002", "MH-0007", "MH-0011", "MH-0015", "MH-0020"]
    bins = ["BIN-0003", "BIN-0009", "BIN-0018"]
    events = [f"open_cover:{c}@{2 + 4 * i}" for i, c in enumerate(covers)] + [f"fill_bin:{b}@{3 + 5 * i}" for i, b in enumerate(bins)]
    gateway = start_gateway(config, log)
    simulator = None
    rng = random.Random(5)
    kills = 0
    try:
        assert wait_until(lambda: "subscribed to" in log.read_text(), 60)
        simulator = subprocess.Popen(
            [sys.executable, "-m", "firmware_sim", "--broker", mosquitto.url, "--seconds", "45", "--interval", "2",
             "--alarm-interval", "1", *[a for e in events for a in ("--event", e)]],
            stdout=subprocess.DEVNULL, stderr=(tmp_path / "sim.log").open("wb"),
        )
        deadline = time.monotonic() + 33
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(4, 9))
            gateway.send_signal(signal.SIGKILL)
            gateway.wait(10)
            kills += 1
            gateway = start_gateway(config, log)
        assert simulator.wait(60) == 0
        expected = {("cover_tilted", c) for c in covers} | {("bin_full", b) for b in bins}
        got = lambda: {(o["rule"], o["device"]) for o in receiver.orders()}  # noqa: E731
        assert wait_until(lambda: got() >= expected and unsent(tmp_path / "data" / "gateway.db") == 0, 40), got()
        orders = receiver.orders()
        assert {(o["rule"], o["device"]) for o in orders} == expected  # nothing extra, nothing missing
        assert len(orders) == len(expected)  # one order per problem, after restarts too
        assert kills >= 3
    finally:
        if simulator is not None and simulator.poll() is None:
            simulator.kill()
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(30)
        receiver.process.terminate()
        receiver.process.wait(10)


def test_broker_restart_mid_stream(tmp_path):
    broker = start_mosquitto(tmp_path / "broker", persistent=True)
    receiver = start_receiver(tmp_path / "receiver.db")
    config = write_gateway_config(tmp_path, broker.url, receiver.url)
    log = tmp_path / "gateway.log"
    gateway = start_gateway(config, log)
    simulator = None
    try:
        assert wait_until(lambda: "subscribed to" in log.read_text(), 60)
        simulator = subprocess.Popen(
            [sys.executable, "-m", "firmware_sim", "--broker", broker.url, "--seconds", "30", "--interval", "2",
             "--event", "open_cover:MH-0004@2", "--event", "open_cover:MH-0009@12", "--event", "fill_bin:BIN-0006@14"],
            stdout=subprocess.DEVNULL, stderr=(tmp_path / "sim.log").open("wb"),
        )
        time.sleep(8)
        broker.stop()
        time.sleep(3)
        broker = start_mosquitto(tmp_path / "broker", port=broker.port, persistent=True)
        assert simulator.wait(60) == 0
        expected = {("cover_tilted", "MH-0004"), ("cover_tilted", "MH-0009"), ("bin_full", "BIN-0006")}
        assert wait_until(lambda: {(o["rule"], o["device"]) for o in receiver.orders()} == expected, 30), receiver.orders()
        assert len(receiver.orders()) == 3
        assert "lost the MQTT broker" in log.read_text()
    finally:
        if simulator is not None and simulator.poll() is None:
            simulator.kill()
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(30)
        receiver.process.terminate()
        receiver.process.wait(10)
        broker.stop()


def prefill(database, orders: int, revisions: int):
    db = open_database(database)
    outbox = Outbox(db)
    with transaction(db):
        for r in range(1, revisions + 1):
            for o in range(orders):
                outbox.put(f"gw-test-{o:06d}", r, {"order_id": f"gw-test-{o:06d}", "revision": r, "state": "opened"})
    db.conn.close()


def arrival_order_is_revision_order(receiver_db) -> bool:
    with sqlite3.connect(receiver_db) as conn:
        rows = conn.execute("SELECT order_id, revision FROM revisions ORDER BY rowid").fetchall()
    last: dict[str, int] = {}
    for order_id, revision in rows:
        if revision <= last.get(order_id, 0):
            return False
        last[order_id] = revision
    return True


def test_platform_that_fails_hangs_and_drops_connections(tmp_path, mosquitto):
    receiver = start_receiver(tmp_path / "receiver.db")
    front = Misbehaving(receiver.url, ["fail", "hang", "close", "lose_ack", "fail", "lose_ack"], hang=3.0)
    config = write_gateway_config(tmp_path, mosquitto.url, front.url)
    config.write_text(config.read_text().replace("retry_max = 1.0", "retry_max = 1.0\ntimeout = 1.0\nbatch_size = 50"))
    prefill(tmp_path / "data" / "gateway.db", orders=100, revisions=3)
    gateway = start_gateway(config, tmp_path / "gateway.log")
    try:
        assert wait_until(lambda: unsent(tmp_path / "data" / "gateway.db") == 0, 60)
        assert front.seen[:6] == ["fail", "hang", "close", "lose_ack", "fail", "lose_ack"]
        stats = receiver.stats()
        assert (stats["orders"], stats["revisions"]) == (100, 300)
        assert stats["duplicates"] == 100  # the two lost acknowledgements' batches, sent again and dropped
        assert arrival_order_is_revision_order(tmp_path / "receiver.db")
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(30)
        receiver.process.terminate()
        receiver.process.wait(10)


def test_long_outage_with_a_backlog_of_100000_revisions(tmp_path, mosquitto):
    port = free_port()
    config = write_gateway_config(tmp_path, mosquitto.url, f"http://127.0.0.1:{port}")
    config.write_text(config.read_text().replace("retry_max = 1.0", "retry_max = 1.0\nbatch_size = 2000"))
    prefill(tmp_path / "data" / "gateway.db", orders=25_000, revisions=4)
    gateway = start_gateway(config, tmp_path / "gateway.log")
    receiver = None
    try:
        assert wait_until(lambda: "uplink failed" in (tmp_path / "gateway.log").read_text(), 60)
        time.sleep(3)  # the platform stays away a while; nothing may be lost meanwhile
        assert unsent(tmp_path / "data" / "gateway.db") == 100_000
        receiver = subprocess.Popen(
            [sys.executable, "-m", "uplink.receiver", "--port", str(port), "--db", str(tmp_path / "receiver.db")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        assert wait_until(lambda: unsent(tmp_path / "data" / "gateway.db") == 0, 180)
        stats = requests.get(f"http://127.0.0.1:{port}/api/v1/stats", timeout=10).json()
        assert (stats["orders"], stats["revisions"]) == (25_000, 100_000)
        assert arrival_order_is_revision_order(tmp_path / "receiver.db")
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(30)
        if receiver is not None:
            receiver.terminate()
            receiver.wait(10)
