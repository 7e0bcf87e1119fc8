"""MQTT uplink mode end to end: orders over QoS 1 to the platform's broker, decisions back the same way."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid

import paho.mqtt.client as mqtt
import requests

from conftest import edge_command, tilt, wait_until, write_gateway_config


def test_orders_and_decisions_over_mqtt(tmp_path, mosquitto):
    receiver = subprocess.Popen(
        [sys.executable, "-m", "uplink.receiver", "--port", "0", "--db", str(tmp_path / "r.db"), "--mqtt", mosquitto.url,
         "--mqtt-group", f"test-{uuid.uuid4().hex[:8]}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    url = receiver.stdout.readline().split()[3]
    config = write_gateway_config(tmp_path, mosquitto.url, mosquitto.url, id="gw-mqtt")
    config.write_text(config.read_text().replace("[uplink]", '[uplink]\nmode = "mqtt"\ndownlink_interval = 0.2'))
    log = tmp_path / "gateway.log"
    gateway = subprocess.Popen(edge_command() + ["run", "--config", str(config)], stderr=log.open("wb"))
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    try:
        assert wait_until(lambda: "subscribed to" in log.read_text(), 60)
        client.connect(mosquitto.host, mosquitto.port)
        client.loop_start()
        tilt(client, "MH-0008", time.time())

        def orders():
            return requests.get(f"{url}/api/v1/orders", timeout=5).json()["orders"]

        assert wait_until(lambda: len(orders()) == 1, 20)
        (order,) = orders()
        assert (order["device"], order["rule"], order["gateway"]) == ("MH-0008", "cover_tilted", "gw-mqtt")
        assert requests.post(f"{url}/api/v1/orders/{order['order_id']}/accept", timeout=5).status_code == 200
        assert wait_until(lambda: orders()[0]["revision"] == 2, 20), orders()
        assert orders()[0]["state"] == "accepted"
    finally:
        client.loop_stop()
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(30) == 0
        receiver.terminate()
        receiver.wait(10)
