"""The platform's MQTT side: takes revisions, summaries, reports and health summaries from
``edge/+/orders/+``, ``edge/+/telemetry/+``, ``edge/+/reports`` and ``edge/+/health`` (QoS 1,
persistent session), and publishes decisions to ``edge/<gw>/changes``. See
uplink/transport_mqtt.py for the layout.

Several listeners (one per worker, each with its own client id) split the gateways' messages
between them: they subscribe as MQTT 5 shared subscriptions, ``$share/<group>/edge/+/...``
(group ``platform`` by default), so the broker gives each message to one of them.

A message is checked with the same models as the HTTP uplink. One that cannot be taken (not
JSON, the wrong shape, too large, an unknown topic) is refused: logged, counted in
``/api/v1/stats`` (``refused``, reasons ``mqtt_...``) and acknowledged, so the broker does not
send it again; the listener goes on. Messages are stored in batches (up to ``batch`` messages
or ``linger`` seconds, one transaction) and acknowledged (PUBACK) only once stored or refused:
if the listener is killed mid-batch, or the database is away, nothing of the batch is
acknowledged and the broker sends it again (to this client id when it comes back: its
session keeps them); a message stored twice that way is dropped by its key. paho reconnects
by itself (1 s doubling to 30 s) after the broker goes away, and every connection subscribes
again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import BaseModel, ValidationError

from uplink.receiver.models import GatewayHealth, Report, Revision, TelemetrySummary
from uplink.receiver.store import DatabaseUnavailable, ReceiverStore, UnstorableItem

log = logging.getLogger(__name__)
FILTERS = ("edge/+/orders/+", "edge/+/telemetry/+", "edge/+/reports", "edge/+/health")
SESSION_EXPIRY = 7 * 86400  # seconds the broker keeps a listener's session (and its messages) while it is away


@dataclass
class _Taken:
    """A checked message waiting for its batch's transaction."""

    mid: int
    qos: int
    gateway: str
    kind: str
    body: dict
    shown: str


class MqttListener:
    def __init__(self, url: str, store: ReceiverStore, max_payload: int = 1024 * 1024,
                 client_id: str = "reference-receiver", group: str = "platform", batch: int = 500,
                 linger: float = 0.02, subscribe: bool = True):
        parsed = self.check_settings(url, group)
        self.store = store
        self.max_payload = max_payload
        self.topics = [f"$share/{group}/{topic}" for topic in FILTERS]
        self.batch, self.linger = batch, linger
        self.subscribe = subscribe
        self.last_message = time.monotonic()
        self.connected = threading.Event()
        self.connects = 0
        self._waiting: queue.SimpleQueue[_Taken | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                                  manual_ack=True)
        if parsed.username:
            self.client.username_pw_set(unquote(parsed.username), unquote(parsed.password or "") or None)
        if parsed.scheme == "mqtts":
            self.client.tls_set()
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        session = Properties(PacketTypes.CONNECT)
        session.SessionExpiryInterval = SESSION_EXPIRY
        default_port = 8883 if parsed.scheme == "mqtts" else 1883
        self.writer = threading.Thread(target=self._write, name="mqtt-store", daemon=True)
        self.writer.start()
        self.client.connect_async(parsed.hostname, parsed.port or default_port, 30, clean_start=False,
                                  properties=session)
        self.client.loop_start()

    @staticmethod
    def check_settings(url: str, group: str):
        """The broker's URL parsed; ValueError with what to give instead."""
        parsed = urlparse(url)
        if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
            raise ValueError(f"{url!r}: give the broker as mqtt://host:port or mqtts://host:port")
        if not group or any(c in group for c in "/+#"):
            raise ValueError(f"{group!r}: a shared subscription group is a name without / + or #")
        return parsed

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("MQTT broker refused the connection: %s; trying again", reason_code)
            return
        self.connects += 1
        if not self.subscribe:  # retiring a session: it keeps its subscriptions until it ends
            self.connected.set()
            log.info("MQTT: connected as %s to take what its session kept", client._client_id.decode())
            return
        client.subscribe([(topic, SubscribeOptions(qos=1)) for topic in self.topics])
        self.connected.set()
        log.info("MQTT: connected, subscribed to %s", ", ".join(self.topics))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            log.warning("MQTT: connection to the broker lost (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, message) -> None:
        self.last_message = time.monotonic()
        taken = self.check(message.topic, message.payload)
        if isinstance(taken, dict):
            self._waiting.put(_Taken(message.mid, message.qos, **taken))
        else:
            self.store.refuse(taken)
            self._ack([(message.mid, message.qos)])

    def _ack(self, mids: list[tuple[int, int]]) -> None:
        for mid, qos in mids:
            try:
                self.client.ack(mid, qos)
            except Exception:
                log.exception("MQTT: could not acknowledge message %s", mid)

    def check(self, topic: str, payload: bytes) -> dict | str:
        """A message checked for storage ({gateway, kind, body, shown}), or the reason it is refused."""
        shown = topic[:200].encode("unicode_escape").decode()
        parts = topic.split("/")
        model: type[BaseModel]
        if len(parts) == 4 and parts[2] == "orders":
            model, kind = Revision, "revision"
        elif len(parts) == 4 and parts[2] == "telemetry":
            model, kind = TelemetrySummary, "summary"
        elif len(parts) == 3 and parts[2] == "reports":
            model, kind = Report, "report"
        elif len(parts) == 3 and parts[2] == "health":
            model, kind = GatewayHealth, "health"
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
        return {"gateway": gateway, "kind": kind, "body": item.body(), "shown": shown}

    def _write(self) -> None:
        """The writer thread: batches of checked messages, each stored in one transaction, then acknowledged."""
        while True:
            first = self._waiting.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.linger
            while len(batch) < self.batch:
                try:
                    item = self._waiting.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self._waiting.put(None)
                    break
                batch.append(item)
            pause = 0.5
            while not self._stop.is_set():
                try:
                    reasons = self._store(batch)
                    break
                except DatabaseUnavailable as error:  # not acknowledged; try again (the broker also keeps them)
                    log.warning("MQTT: database unavailable, %d messages wait: %s", len(batch), error)
                except Exception:
                    log.exception("MQTT: could not store %d messages; they stay unacknowledged", len(batch))
                time.sleep(pause)
                pause = min(pause * 2, 10.0)
            else:
                return
            for item, reason in zip(batch, reasons):
                if reason is not None:
                    self.store.refuse(reason)
            self._ack([(item.mid, item.qos) for item in batch])

    def _store(self, batch: list[_Taken]) -> list[str | None]:
        """Store the batch in one transaction; an item that cannot be stored is refused and the rest stored."""
        try:
            self.store.add_many([_as_batch(item) for item in batch])
            return [None] * len(batch)
        except UnstorableItem:
            if len(batch) == 1:
                item = batch[0]
                log.warning("MQTT: refused a %s on %s: cannot be stored", item.kind, item.shown)
                return [f"mqtt_invalid_{item.kind}"]
        middle = len(batch) // 2  # find the items that cannot be stored; store the others
        return self._store(batch[:middle]) + self._store(batch[middle:])

    def publish_change(self, gateway: str, change: dict) -> None:
        self.client.publish(f"edge/{gateway}/changes", orjson.dumps(change), qos=1)

    def close(self, end_session: bool = False) -> None:
        """Store what is waiting, then disconnect (what could not be stored stays with the broker).

        ``end_session``: the broker forgets this client's session, so it leaves the group; call
        it only after ``drain`` (what the session still held would be lost).
        """
        self._waiting.put(None)
        self.writer.join(10)
        self._stop.set()
        if end_session:
            done = Properties(PacketTypes.DISCONNECT)
            done.SessionExpiryInterval = 0
            self.client.disconnect(properties=done)
        else:
            self.client.disconnect()
        self.client.loop_stop()

    def drain(self, quiet: float = 1.0, limit: float = 60.0) -> bool:
        """Wait until the session has given what it held: connected, then ``quiet`` s without a message."""
        deadline = time.monotonic() + limit
        if not self.connected.wait(max(0.0, deadline - time.monotonic())):
            return False
        self.last_message = max(self.last_message, time.monotonic())
        while time.monotonic() < deadline:
            if time.monotonic() - self.last_message >= quiet:
                return True
            time.sleep(0.1)
        return False


def retire(url: str, store: ReceiverStore, client_id: str, group: str) -> bool:
    """End a listener's session that no worker runs any more (fewer workers than before): take and store
    what the broker kept for it, then end it, so it leaves the shared group. False if it could not drain."""
    listener = MqttListener(url, store, client_id=client_id, group=group, subscribe=False)
    drained = listener.drain()
    listener.close(end_session=drained)
    if drained:
        store.forget_listener(client_id)
        log.info("MQTT: retired the session of %s (no worker uses it now)", client_id)
    else:
        log.warning("MQTT: could not retire the session of %s (broker not reachable); trying at the next start",
                    client_id)
    return drained

def _as_batch(item: _Taken) -> tuple:
    kind, body = item.kind, item.body
    return (item.gateway, [body] if kind == "revision" else [], [body] if kind == "summary" else [],
            [body] if kind == "report" else [], body if kind == "health" else None)
