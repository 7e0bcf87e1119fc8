"""MQTT subscription: messages from the broker into a bounded queue for the engine.

The session is persistent (fixed client id, clean_session off, QoS 1), so the broker keeps
readings published while the gateway restarts. A QoS 1 message is acknowledged to the
broker only after the batch it is in has been evaluated and committed (``ack``): a crash
before that, and the broker sends it again. When the queue is full the network thread
waits, which stops reading from the socket: backpressure goes to the broker instead of
memory growing without bound.

The broker sends a client at most ``max_inflight_messages`` unacknowledged messages (20 by
default in Mosquitto): set it to 1000 or more for the gateway's client, or ingest waits on
acknowledgements (config/mosquitto.conf of the private broker does).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawMessage:
    topic: str
    payload: bytes
    received_at: float
    mid: int = 0
    qos: int = 0


class MqttSubscriber:
    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        topics: list[str],
        qos: int,
        inbox: "queue.Queue[RawMessage]",
        stop: threading.Event,
        username: str = "",
        password: str = "",
    ):
        self.host, self.port, self.topics, self.qos = host, port, topics, qos
        self.inbox = inbox
        self.stop = stop
        self.connected = threading.Event()  # set once the broker has confirmed the subscription
        self.messages = 0
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        if username:
            self.client.username_pw_set(username, password or None)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def start(self) -> None:
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def ack(self, messages: list[RawMessage]) -> None:
        """Acknowledge messages whose batch is committed; the broker may then forget them."""
        for message in messages:
            if message.qos > 0:
                self.client.ack(message.mid, message.qos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("MQTT broker %s:%s refused the connection: %s", self.host, self.port, reason_code)
            return
        client.subscribe([(topic, self.qos) for topic in self.topics])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = [code for code in reason_codes if code.is_failure]
        if refused:
            log.error("MQTT broker %s:%s refused the subscription to %s: %s", self.host, self.port,
                      ", ".join(self.topics), ", ".join(str(code) for code in refused))
            return
        log.info("connected to MQTT broker %s:%s, subscribed to %s", self.host, self.port, ", ".join(self.topics))
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if not self.stop.is_set():
            log.warning("lost the MQTT broker %s:%s (%s); reconnecting", self.host, self.port, reason_code)

    def _on_message(self, client, userdata, message) -> None:
        self.messages += 1
        item = RawMessage(message.topic, message.payload, time.time(), message.mid, message.qos)
        while not self.stop.is_set():
            try:
                self.inbox.put(item, timeout=0.5)
                return
            except queue.Full:
                continue
