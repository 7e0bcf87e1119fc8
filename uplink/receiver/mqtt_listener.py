"""The reference receiver's MQTT side: takes revisions, summaries and reports from
``edge/+/orders/+``, ``edge/+/telemetry/+`` and ``edge/+/reports`` (QoS 1, persistent session),
and publishes decisions to ``edge/<gw>/changes``. See uplink/transport_mqtt.py for the layout.

A message is checked with the same models as the HTTP uplink. One that cannot be taken (not
JSON, the wrong shape, too large, an unknown topic) is refused: logged, counted in
``/api/v1/stats`` (``refused``, reasons ``mqtt_...``) and acknowledged, so the broker does not
send it again; the listener goes on. A message is acknowledged (PUBACK) only once it is
stored or refused: if the store fails, it is left unacknowledged and the broker sends it
again when the listener next connects. paho reconnects by itself (1 s doubling to 30 s)
after the broker goes away, and every connection subscribes again.
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import unquote, urlparse

import orjson
import paho.mqtt.client as mqtt
from pydantic import BaseModel, ValidationError

from uplink.receiver.models import Report, Revision, TelemetrySummary
from uplink.receiver.store import ReceiverStore, UnstorableItem

log = logging.getLogger(__name__)
TOPICS = [("edge/+/orders/+", 1), ("edge/+/telemetry/+", 1), ("edge/+/reports", 1)]


class MqttListener:
    def __init__(self, url: str, store: ReceiverStore, max_payload: int = 1024 * 1024,
                 client_id: str = "reference-receiver"):
        parsed = urlparse(url)
        if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
            raise ValueError(f"{url!r}: give the broker as mqtt://host:port or mqtts://host:port")
        self.store = store
        self.max_payload = max_payload
        self.connected = threading.Event()
        self.connects = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                                  protocol=mqtt.MQTTv311, manual_ack=True)
        if parsed.username:
            self.client.username_pw_set(unquote(parsed.username), unquote(parsed.password or "") or None)
        if parsed.scheme == "mqtts":
            self.client.tls_set()
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        default_port = 8883 if parsed.scheme == "mqtts" else 1883
        self.client.connect_async(parsed.hostname, parsed.port or default_port, 30)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("MQTT broker refused the connection: %s; trying again", reason_code)
            return
        client.subscribe(TOPICS)
        self.connects += 1
        self.connected.set()
        log.info("MQTT: connected, subscribed to %s", ", ".join(topic for topic, _ in TOPICS))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        log.warning("MQTT: connection to the broker lost (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, message) -> None:
        try:
            reason = self.take(message.topic, message.payload)
        except Exception:  # the store failed: leave it unacknowledged, the broker sends it again
            log.exception("MQTT: could not store the message on %r; it stays unacknowledged", message.topic)
            return
        if reason is not None:
            self.store.refuse(reason)
        try:
            client.ack(message.mid, message.qos)
        except Exception:
            log.exception("MQTT: could not acknowledge message %s", message.mid)

    def take(self, topic: str, payload: bytes) -> str | None:
        """Store one message; returns the reason it was refused, or None when stored."""
        shown = topic[:200].encode("unicode_escape").decode()
        parts = topic.split("/")
        model: type[BaseModel]
        if len(parts) == 4 and parts[2] == "orders":
            model, kind = Revision, "revision"
        elif len(parts) == 4 and parts[2] == "telemetry":
            model, kind = TelemetrySummary, "summary"
        elif len(parts) == 3 and parts[2] == "reports":
            model, kind = Report, "report"
        else:
            log.warning("MQTT: refused a message on %s: not an uplink topic", shown)
            return "mqtt_unexpected_topic"
        gateway = parts[1]
        if not gateway or len(gateway) > 1024:
            log.warning("MQTT: refused a message on %s: no gateway id in the topic", shown)
            return "mqtt_unexpected_topic"
        if len(payload) > self.max_payload:
            log.warning("MQTT: refused a %d-byte message on %s: larger than %d bytes", len(payload), shown, self.max_payload)
            return "mqtt_too_large"
        try:
            item = model.model_validate(orjson.loads(payload))
        except orjson.JSONDecodeError as error:
            log.warning("MQTT: refused a message on %s: not JSON (%s)", shown, error)
            return "mqtt_not_json"
        except ValidationError as error:
            first = error.errors()[0]
            log.warning("MQTT: refused a %s on %s: %s: %s", kind, shown, ".".join(map(str, first["loc"])) or "body",
                        first["msg"])
            return f"mqtt_invalid_{kind}"
        body = item.body()
        try:
            self.store.add(gateway, [body] if kind == "revision" else [], [body] if kind == "summary" else [],
                           [body] if kind == "report" else [])
        except UnstorableItem as error:
            log.warning("MQTT: refused a %s on %s: %s", kind, shown, error)
            return f"mqtt_invalid_{kind}"
        return None

    def publish_change(self, gateway: str, change: dict) -> None:
        self.client.publish(f"edge/{gateway}/changes", orjson.dumps(change), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
