"""Running as a service: the systemd unit is valid, and SIGTERM stops cleanly so that a
restart picks up where the gateway stopped (orders waiting for a platform that was down,
readings published while it was stopped)."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import time
import uuid

import orjson
import paho.mqtt.client as mqtt
import pytest

from conftest import ROOT, edge_command, start_receiver, wait_until, write_gateway_config
from edge.broker import free_port


def test_the_unit_file_is_valid_for_systemd(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing; ./scripts/test installs Debian's systemd")
    unit = (ROOT / "config" / "systemd" / "edge-gateway.service").read_text()
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "Restart=always" in unit
    # verify checks that the commands exist: point them at this checkout's .venv
    here = tmp_path / "edge-gateway.service"
    here.write_text(unit.replace("/opt/edge", str(ROOT)))
    result = subprocess.run(["systemd-analyze", "verify", str(here)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    broken = tmp_path / "broken.service"
    broken.write_text(here.read_text().replace("WatchdogSec=30", "WatchdogSec=soon"))
    result = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert "WatchdogSec" in result.stderr or "soon" in result.stderr  # the check can fail


def orders_in(database) -> list[tuple]:
    with sqlite3.connect(database) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return conn.execute("SELECT rule, device FROM orders ORDER BY device").fetchall()


def test_sigterm_finishes_and_a_restart_resumes(tmp_path, mosquitto, clean_env):
    dead = f"http://127.0.0.1:{free_port()}"  # the platform is down: orders wait in the outbox
    config = write_gateway_config(tmp_path, mosquitto.url, dead)
    log = tmp_path / "gateway.log"
    gateway = subprocess.Popen(edge_command() + ["run", "--config", str(config)], stderr=log.open("ab"), env=clean_env)
    host, port = mosquitto.url.removeprefix("mqtt://").split(":")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}")
    client.connect(host, int(port))
    client.loop_start()

    def tilt(device, ts, degrees):
        payload = {"device": device, "ts": ts, "readings": {"tilt_deg": degrees, "open": int(degrees > 15)}}
        client.publish(f"devices/{device}/telemetry", orjson.dumps(payload), qos=1).wait_for_publish(10)

    database = tmp_path / "data" / "gateway.db"
    try:
        assert wait_until(lambda: "subscribed to" in log.read_text(), 60), log.read_text()
        t0 = time.time() - 100
        for s in (0, 6, 12):
            tilt("MH-0002", t0 + s, 40.0)
        assert wait_until(lambda: database.exists() and orders_in(database) == [("cover_tilted", "MH-0002")], 30)
        for i in range(300):  # messages in flight while it stops
            tilt("MH-0005", t0 + i * 0.01, 2.0)
        started = time.monotonic()
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=30) == 0
        assert time.monotonic() - started < 20  # a failing platform does not hold the shutdown up
        assert "stopped" in log.read_text()
        # while it is down: another cover is knocked open
        for s in (0, 6, 12):
            tilt("MH-0009", t0 + 20 + s, 35.0)
    finally:
        if gateway.poll() is None:
            gateway.kill()

    receiver = start_receiver(tmp_path / "receiver.db")
    config.write_text(config.read_text().replace(dead, receiver.url))
    gateway = subprocess.Popen(edge_command() + ["run", "--config", str(config)], stderr=log.open("ab"), env=clean_env)
    try:
        expected = {("cover_tilted", "MH-0002"), ("cover_tilted", "MH-0009")}
        assert wait_until(lambda: {(o["rule"], o["device"]) for o in receiver.orders()} == expected, 40), \
            receiver.orders()
        assert len(receiver.orders()) == 2 and receiver.stats()["duplicates"] == 0
        assert [r["revision"] for r in receiver.revisions()] == [1, 1]
    finally:
        client.loop_stop()
        client.disconnect()
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=30) == 0
        receiver.process.terminate()
        receiver.process.wait(10)
