"""The reference receiver's MQTT side: takes revisions and summaries from ``edge/+/orders/+`` and
``edge/+/telemetry/+`` (QoS 1, persistent session), and publishes decisions to ``edge/<gw>/changes``.

See uplink/transport_mqtt.py for the topic layout.
"""

from __future__ import annotations

import logging
from urllib.parse import urlparse

import orjson
import paho.mqtt.client as mqtt

from uplink.receiver.store import ReceiverStore

log = logging.getLogger(__name__)


class MqttListener:
    def __init__(self, url: str, store: ReceiverStore):
        parsed = urlparse(url)
        self.store = store
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="reference-receiver",
                                  clean_session=False, protocol=mqtt.MQTTv311)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([("edge/+/orders/+", 1), ("edge/+/telemetry/+", 1)])
        self.client.on_message = self._on_message
        self.client.connect_async(parsed.hostname, parsed.port or 1883, 30)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        parts = message.topic.split("/")
        try:
            body = orjson.loads(message.payload)
        except orjson.JSONDecodeError:
            log.warning("not JSON on %s; dropped", message.topic)
            return
        gateway = parts[1]
        if parts[2] == "orders" and isinstance(body, dict) and "order_id" in body and "revision" in body:
            self.store.add(gateway, [body], [])
        elif parts[2] == "telemetry" and isinstance(body, dict) and "device" in body and "interval" in body:
            self.store.add(gateway, [], [body])
        else:
            log.warning("unexpected message on %s; dropped", message.topic)

    def publish_change(self, gateway: str, change: dict) -> None:
        self.client.publish(f"edge/{gateway}/changes", orjson.dumps(change), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
