"""MQTT transport: order revisions and telemetry summaries published with QoS 1 to an upstream broker.

For platforms that take orders over MQTT. Topic layout (``<gw>`` is the gateway id):

- ``edge/<gw>/orders/<order id>``: one order revision per message (the same JSON as over
  HTTP); the platform drops a duplicate by its ``order_id`` and ``revision``.
- ``edge/<gw>/telemetry/<device>``: one telemetry summary per message.
- ``edge/<gw>/changes``: the platform's decisions for this gateway's orders, JSON
  ``{"seq": N, "order_id": ..., "state": "accepted"|...}``; the gateway subscribes with QoS 1
  and a persistent session, and applies each ``seq`` once.

A revision counts as acknowledged when the upstream broker has acknowledged its publish
(PUBACK): from there the broker, not the gateway, is responsible for it.
"""

from __future__ import annotations

import threading
import time
from urllib.parse import urlparse

import orjson
import paho.mqtt.client as mqtt

from uplink.transport_http import TransportError


class MqttTransport:
    def __init__(self, url: str, gateway_id: str, username: str = "", password: str = "",
                 timeout: float = 10.0, ca_file: str | None = None):
        parsed = urlparse(url)
        if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
            raise ValueError(f"expected mqtt://host:port or mqtts://host:port, got {url!r}")
        self.gateway_id = gateway_id
        self.timeout = timeout
        self.prefix = f"edge/{gateway_id}"
        self._changes: list[dict] = []
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edge-uplink-{gateway_id}",
                                  clean_session=False, protocol=mqtt.MQTTv311)
        if username:
            self.client.username_pw_set(username, password or None)
        if parsed.scheme == "mqtts" or ca_file:
            self.client.tls_set(ca_certs=ca_file)
        self.client.max_inflight_messages_set(1000)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *args: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.connect_async(parsed.hostname, parsed.port or (8883 if parsed.scheme == "mqtts" else 1883), 30)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        client.subscribe(f"{self.prefix}/changes", qos=1)
        self.connected.set()

    def _on_message(self, client, userdata, message) -> None:
        try:
            change = orjson.loads(message.payload)
            int(change["seq"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return  # not a decision; the platform's mistake, nothing of ours is lost
        with self._lock:
            self._changes.append(change)

    def send(self, revisions: list[dict], telemetry: list[dict] | None = None) -> set[tuple[str, int]]:
        if not self.connected.wait(self.timeout):
            raise TransportError("upstream MQTT broker not connected")
        infos = []
        for body in revisions:
            info = self.client.publish(f"{self.prefix}/orders/{body['order_id']}", orjson.dumps(body), qos=1)
            infos.append(((body["order_id"], body["revision"]), info))
        for body in telemetry or []:
            info = self.client.publish(f"{self.prefix}/telemetry/{body['device']}", orjson.dumps(body), qos=1)
            infos.append(((f"telemetry/{body['device']}", body["interval"]), info))
        deadline = time.monotonic() + self.timeout
        acknowledged = set()
        for key, info in infos:
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                pass
            if info.is_published():
                acknowledged.add(key)
        if not acknowledged and infos:
            raise TransportError("upstream MQTT broker acknowledged nothing in time")
        return acknowledged

    def changes(self, after: int, wait: float = 0.0) -> list[dict]:
        with self._lock:
            pending = sorted((c for c in self._changes if int(c["seq"]) > after), key=lambda c: int(c["seq"]))
            self._changes = [c for c in self._changes if int(c["seq"]) > after]
        return pending

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
