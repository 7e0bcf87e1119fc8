"""MQTT transport: order revisions and telemetry summaries published with QoS 1 to an upstream broker.

For platforms that take orders over MQTT. Topic layout (``<gw>`` is the gateway id):

- ``edge/<gw>/orders/<order id>``: one order revision per message (the same JSON as over
  HTTP); the platform drops a duplicate by its ``order_id`` and ``revision``.
- ``edge/<gw>/telemetry/<device>``: one telemetry summary per message.
- ``edge/<gw>/reports``: one report per message on a change the gateway refused (or a
  rule file it applied), the same JSON as an item of ``reports`` over HTTP.
- ``edge/<gw>/health``: the gateway's health summary now and then (edge/status/summary.py),
  the same JSON as ``health`` over HTTP; not retained.
- ``edge/<gw>/changes``: the platform's decisions for this gateway's orders, JSON
  ``{"seq": N, "order_id": ..., "state": "accepted"|...}``; the gateway subscribes with QoS 1
  and a persistent session, and applies each ``seq`` once.

A revision (or report, or health summary) counts as acknowledged when the upstream broker
has acknowledged its publish (PUBACK): from there the broker, not the gateway, is responsible
for it.

Whatever arrives on the changes topic is kept for the sender, which checks each item's shape
and refuses (counts, reports) the bad ones; nothing a message holds can raise in the MQTT
client's thread. At most ``MAX_WAITING`` changes wait for the sender; beyond, the newest
are dropped and counted (``dropped``).
"""

from __future__ import annotations

import logging
import threading
import time
from urllib.parse import urlparse

import orjson
import paho.mqtt.client as mqtt

from edge.redact import redact_url
from uplink.transport_http import HEALTH, TransportError, loads, preview

log = logging.getLogger(__name__)

MAX_WAITING = 10_000
MAX_CHANGE_BYTES = 1024 * 1024  # a change carries at most a rule file (256 KiB)


def _seq(change: object) -> int | None:
    """A change's seq when it has a usable one (an integer 1 .. 2**63-1), else None."""
    seq = change.get("seq") if isinstance(change, dict) else None
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 < seq < 2**63:
        return None
    return seq


class MqttTransport:
    def __init__(self, url: str, gateway_id: str, username: str = "", password: str = "",
                 timeout: float = 10.0, ca_file: str | None = None):
        parsed = urlparse(url)
        if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
            raise ValueError(f"expected mqtt://host:port or mqtts://host:port, got {redact_url(url)!r}")
        self.gateway_id = gateway_id
        self.timeout = timeout
        self.prefix = f"edge/{gateway_id}"
        self._changes: list = []
        self.dropped = 0  # changes that arrived while MAX_WAITING were waiting
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edge-uplink-{gateway_id}",
                                  clean_session=False, protocol=mqtt.MQTTv311)
        self.client.suppress_exceptions = True  # a bug in a callback is logged, never ends the network thread
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
        """Keep what arrived for the sender: the parsed change, or a text saying what it was."""
        try:
            payload = message.payload
            if len(payload) > MAX_CHANGE_BYTES:
                change: object = f"a message of {len(payload)} bytes (at most {MAX_CHANGE_BYTES})"
            else:
                try:
                    change = loads(payload)
                except ValueError:
                    change = f"not JSON: {preview(payload, 80)}"
            with self._lock:
                if len(self._changes) >= MAX_WAITING:
                    self.dropped += 1
                    return
                self._changes.append(change)
        except Exception:  # noqa: BLE001 - the network thread must outlive any message
            log.exception("uplink MQTT: a message on %s could not be kept", message.topic)

    def _publish(self, topic: str, body: dict, key: tuple[str, int], infos: list) -> None:
        try:
            infos.append((key, self.client.publish(topic, orjson.dumps(body), qos=1)))
        except (ValueError, TypeError) as error:  # e.g. a topic with + or #: left unacknowledged, logged
            log.error("uplink MQTT: cannot publish %s to %r: %s", key, topic, error)

    def send(self, revisions: list[dict], telemetry: list[dict] | None = None,
             reports: list[dict] | None = None, health: dict | None = None) -> set[tuple[str, int]]:
        if not self.connected.wait(self.timeout):
            raise TransportError("upstream MQTT broker not connected")
        infos: list = []
        for body in revisions:
            self._publish(f"{self.prefix}/orders/{body['order_id']}", body, (body["order_id"], body["revision"]), infos)
        for body in telemetry or []:
            self._publish(f"{self.prefix}/telemetry/{body['device']}", body,
                          (f"telemetry/{body['device']}", body["interval"]), infos)
        for body in reports or []:
            self._publish(f"{self.prefix}/reports", body, (f"report-{body['seq']}", body["seq"]), infos)
        if health is not None:
            self._publish(f"{self.prefix}/health", health, HEALTH, infos)
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

    def changes(self, after: int, wait: float = 0.0) -> list:
        """The changes with a seq after ``after``, oldest first, then (once) those without a usable seq."""
        with self._lock:
            kept = [c for c in self._changes if (_seq(c) or 0) > after]
            unusable = [c for c in self._changes if _seq(c) is None]
            self._changes = kept
        return sorted(kept, key=lambda c: _seq(c) or 0) + unusable

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
