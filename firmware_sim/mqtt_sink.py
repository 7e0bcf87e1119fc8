"""Publishing the street's frames to an MQTT broker over one connection.

QoS 1 publishes are counted as the broker acknowledges them; when more than ``window`` are
unacknowledged the simulation waits, so a fast run measures what the broker takes, instead
of queueing without bound in memory.
"""

from __future__ import annotations

import threading
import time
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

from firmware_sim.protocols import Frame
from firmware_sim.simulation import Sink


class BrokerUnavailable(Exception):
    pass


def parse_broker(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    if parsed.scheme != "mqtt" or not parsed.hostname:
        raise ValueError(f"expected mqtt://host:port, got {url!r}")
    return parsed.hostname, parsed.port or 1883


class MqttSink(Sink):
    def __init__(self, url: str, client_id: str, window: int = 5000, will_topic: str | None = None):
        host, port = parse_broker(url)
        self.url = url
        self.window = window
        self.sent = 0
        self.acked = 0
        self._cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(min(window, 1000))
        if will_topic:
            self.client.will_set(will_topic, b"offline", qos=1, retain=True)
        self.will_topic = will_topic
        connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: connected.set() if not rc.is_failure else None
        self.client.on_publish = self._on_publish
        try:
            self.client.connect(host, port, keepalive=30)
        except OSError as error:
            raise BrokerUnavailable(f"cannot reach the MQTT broker at {url}: {error}") from None
        self.client.loop_start()
        if not connected.wait(10):
            self.client.loop_stop()
            raise BrokerUnavailable(f"the MQTT broker at {url} did not accept the connection")
        if will_topic:
            self.client.publish(will_topic, b"online", qos=1, retain=True)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cond:
            self.acked += 1
            if self.sent - self.acked <= self.window // 2:
                self._cond.notify_all()

    def publish(self, frame: Frame, qos: int) -> None:
        # QoS 0: paho reports a publish once it is written to the socket; QoS 1: once the broker acknowledges it.
        with self._cond:
            while self.sent - self.acked >= self.window:
                self._cond.wait(1.0)
            self.sent += 1
        self.client.publish(frame.topic, frame.payload, qos=qos, retain=frame.retain)

    def close(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.sent > self.acked and time.monotonic() < deadline:
                self._cond.wait(0.1)
            missing = self.sent - self.acked
        if self.will_topic:
            self.client.publish(self.will_topic, b"offline", qos=1, retain=True).wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()
        return missing
