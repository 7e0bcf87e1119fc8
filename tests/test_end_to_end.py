"""The whole path with real processes: simulator -> Mosquitto -> gateway -> HTTP -> receiver."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from conftest import edge_command, wait_until, write_gateway_config


def unsent(database: Path) -> int:
    with sqlite3.connect(database) as conn:
        return conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0]


def gateway_orders(database: Path) -> int:
    with sqlite3.connect(database) as conn:
        return conn.execute("SELECT count(*) FROM orders").fetchone()[0]


def test_one_open_cover_gives_exactly_one_order(tmp_path, mosquitto, receiver, clean_env):
    config = write_gateway_config(tmp_path, mosquitto.url, receiver.url)
    gateway = subprocess.Popen(
        edge_command() + ["run", "--config", str(config)],
        stderr=(tmp_path / "gateway.log").open("wb"), env=clean_env,
    )
    try:
        log = tmp_path / "gateway.log"
        assert wait_until(lambda: "subscribed to" in log.read_text(), 60), log.read_text()

        simulator = subprocess.run(
            [sys.executable, "-m", "firmware_sim", "--broker", mosquitto.url, "--seconds", "16",
             "--interval", "1", "--alarm-interval", "1", "--event", "open_cover:MH-0003@1"],
            capture_output=True, text=True, timeout=60,
        )
        assert simulator.returncode == 0, simulator.stderr

        database = tmp_path / "data" / "gateway.db"
        assert wait_until(lambda: receiver.orders() and unsent(database) == 0, 20), "no order reached the receiver"
        assert gateway_orders(database) == 1
        orders = receiver.orders()
        assert len(orders) == 1, orders
        order = orders[0]
        assert (order["device"], order["rule"], order["grid"], order["zone"]) == ("MH-0003", "cover_tilted", "G01", "Z1")
        assert order["device_kind"] == "manhole_cover"
        assert order["state"] == "opened" and order["revision"] == 1
        assert order["team"] == "team-grid-01" and order["address"] == "16 Jiefang Rd"
        assert order["evidence"][0]["metric"] == "tilt_deg" and order["evidence"][0]["value"] > 15
        assert order["order_id"].startswith("gw-test-")
        assert receiver.stats()["duplicates"] == 0
    finally:
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=30) == 0
