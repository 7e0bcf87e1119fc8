"""MQTT subscription: messages from the broker into a bounded queue for the engine.

The session is persistent (fixed client id, QoS 1; MQTT 5: clean_start off with a session
expiry interval, MQTT 3.1.1: clean_session off), so the broker keeps readings published
while the gateway restarts. A QoS 1 message is acknowledged to the broker only after the
batch it is in has been evaluated and committed (``ack``): a crash before that, and the
broker sends it again. When the queue is full the network thread waits, which stops
reading from the socket: backpressure goes to the broker instead of memory growing without
bound.

Connection: TLS when ``tls`` is given (CA file, optional client certificate and key), user
name and password; MQTT 5 first when ``protocol`` is "auto", 3.1.1 when the broker refuses
5. A lost or refused connection is retried after a capped, randomised backoff (doubling
from ``reconnect_min`` to ``reconnect_max``, each wait drawn between half and all of it);
every connection subscribes again. ``last_error`` says, in words, why the last attempt
failed (bad password, untrusted certificate, broker down).

Three places reach into paho-mqtt 2.x (pinned below 3) for speed, each commented where it
happens: the network thread registers itself as paho's loop thread (``_thread``, as
``loop_start`` does), a batch's PUBACKs are queued as one packet (``_packet_queue``), and the
socket is wrapped to read ahead (``_sock``). The tests against a real Mosquitto cover all three.

The broker sends a client at most ``max_inflight_messages`` unacknowledged messages (20 by
default in Mosquitto, for MQTT 3.1.1 clients): set it to 1000 or more for the gateway's
client, or ingest waits on acknowledgements (config/mosquitto.conf of the private broker
does).
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from typing import NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.ingest.inbox import Full, Inbox

log = logging.getLogger(__name__)

__all__ = ["MqttSubscriber", "RawMessage", "TlsSettings", "backoff"]


class RawMessage(NamedTuple):
    topic: str
    payload: bytes
    received_at: float
    mid: int = 0
    qos: int = 0


def to_ack(messages: list[RawMessage]) -> list[int]:
    """The packet ids a batch's messages are acknowledged by (QoS 1; QoS 0 and polled ones need none).

    Only these are kept until the batch is committed, not the messages: a flood of 10 MB payloads
    is not held in memory while it waits for its commit."""
    return [message.mid for message in messages if message.qos == 1]


@dataclass(frozen=True)
class TlsSettings:
    ca_file: str | None = None  # None: the system's CAs
    cert_file: str | None = None
    key_file: str | None = None


def backoff(attempt: int, low: float, high: float, rng: random.Random = random._inst) -> float:  # type: ignore[attr-defined]
    """Seconds to wait before reconnect ``attempt`` (0, 1, ...): doubling from ``low``, capped at ``high``,
    drawn between half and all of it so that many gateways do not come back in step."""
    cap = min(high, low * (2 ** min(attempt, 30)))
    return rng.uniform(cap / 2, cap)


class _ReadAhead:
    """The client's socket, read 64 KiB at a time.

    paho reads every packet's fixed header a byte at a time (one ``recv`` system call each, and
    one ``select`` per packet). Behind this wrapper those reads come from memory; ``pending()``
    (which paho asks of TLS sockets) tells it that buffered packets need no ``select``.
    """

    __slots__ = ("_sock", "_buf", "_pos")

    def __init__(self, sock) -> None:
        self._sock, self._buf, self._pos = sock, b"", 0

    def recv(self, size: int) -> bytes:
        if self._pos >= len(self._buf):
            data = self._sock.recv(65536)  # BlockingIOError / SSLWantReadError pass through, as paho expects
            if len(data) <= size:
                return data
            self._buf, self._pos = data, 0
        end = self._pos + size
        chunk = self._buf[self._pos:end]
        self._pos = end
        return chunk

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._buf) - self._pos + inner

    def send(self, data) -> int:
        return self._sock.send(data)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def __getattr__(self, name):
        return getattr(self._sock, name)


# CONNACK codes that say the broker does not speak the MQTT version we tried.
_VERSION_REFUSED = {1, 0x84}
_AUTH_HINT = "check [mqtt] username and password (or EDGE_MQTT_PASSWORD)"


class MqttSubscriber:
    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        topics: list[str],
        qos: int,
        inbox: Inbox,
        stop: threading.Event,
        username: str = "",
        password: str = "",
        *,
        tls: TlsSettings | None = None,
        protocol: str = "auto",
        session_expiry: int = 7 * 24 * 3600,
        keepalive: int = 30,
        reconnect_min: float = 1.0,
        reconnect_max: float = 60.0,
        connect_timeout: float = 10.0,
    ):
        self.host, self.port, self.topics, self.qos = host, port, topics, qos
        self.client_id, self.username, self.password, self.tls = client_id, username, password, tls
        self.inbox = inbox
        self.stop = stop
        self.protocol = protocol
        self.session_expiry, self.keepalive = session_expiry, keepalive
        self.reconnect_min, self.reconnect_max = reconnect_min, reconnect_max
        self.connect_timeout = connect_timeout
        self.connected = threading.Event()  # set once the broker has confirmed the subscription
        self.messages = 0
        self.connects = 0  # successful connections (CONNACK accepted)
        self.session_present = False  # the broker had our session at the last connection
        self.mqtt_version = ""  # "5" or "3.1.1" once connected
        self.last_error = ""
        self._version = mqtt.MQTTv5 if protocol in ("auto", "5") else mqtt.MQTTv311
        self._refused: str | None = None  # why the broker refused the last CONNECT, if it did
        self._got_connack = False
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # acks come from the engine thread, the client is replaced on fallback
        self.client = self._make_client()

    # -- the client ---------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        v5 = self._version == mqtt.MQTTv5
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if v5 else False,
            protocol=self._version,
            manual_ack=True,
            reconnect_on_failure=False,
        )
        if self.username:
            client.username_pw_set(self.username, self.password or None)
        if self.tls is not None:
            context = ssl.create_default_context(cafile=self.tls.ca_file)
            if self.tls.cert_file:
                context.load_cert_chain(self.tls.cert_file, self.tls.key_file)
            client.tls_set_context(context)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mqtt-ingest", daemon=True)
        self._thread.start()

    def ack(self, mids: list[int]) -> None:
        """Acknowledge messages whose batch is committed (their packet ids: ``to_ack``); the broker may then forget them.

        All PUBACKs of a batch go out as one write: each is 4 bytes (type 0x40, remaining length
        2, packet id; in MQTT 5 a PUBACK without reason code means success), so they are packed
        together and queued as one outgoing packet, which the network thread writes. paho's
        per-message ``ack()`` costs a Python call chain and a wake-up of the network thread per
        message, a third of the engine thread's time at 5,000 messages/s.
        """
        if not mids:
            return
        data = struct.pack(f">{len(mids)}I", *[0x40020000 | mid for mid in mids])
        with self._lock:
            # paho's own queueing (what ack() does per message), once for the batch; the network
            # thread is registered as paho's loop thread, so this only queues and wakes it.
            self.client._packet_queue(mqtt.PUBACK, data, 0, 0)

    def close(self) -> None:
        """Send the acknowledgements queued so far, disconnect, and end the network thread."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- the network loop ------------------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        while not self._closing.is_set():
            if self._connect_once():
                attempt = 0
            if self._closing.is_set():
                break
            if self._should_fall_back():
                log.warning("MQTT broker %s:%s does not speak MQTT 5 (%s); using MQTT 3.1.1",
                            self.host, self.port, self.last_error)
                with self._lock:
                    self._version = mqtt.MQTTv311
                    self.client = self._make_client()
                continue
            delay = backoff(attempt, self.reconnect_min, self.reconnect_max)
            attempt += 1
            log.warning("MQTT broker %s:%s: %s; connecting again in %.1fs", self.host, self.port, self.last_error, delay)
            self._closing.wait(delay)

    def _should_fall_back(self) -> bool:
        return (self.protocol == "auto" and self._version == mqtt.MQTTv5 and not self.connects
                and self._refused == "version")

    def _connect_once(self) -> bool:
        """Connect and run the network loop until the connection ends; True if the broker accepted us."""
        client = self.client
        # As in paho's loop_start(): other threads (acks) then only queue packets and wake this one;
        # all socket writes happen here.
        client._thread = threading.current_thread()
        self._refused, self._got_connack = None, False
        try:
            if self._version == mqtt.MQTTv5:
                properties = Properties(PacketTypes.CONNECT)
                properties.SessionExpiryInterval = self.session_expiry
                client.connect(self.host, self.port, self.keepalive, clean_start=False, properties=properties)
            else:
                client.connect(self.host, self.port, self.keepalive)
        except ssl.SSLCertVerificationError as error:
            self.last_error = (f"TLS: the broker's certificate is not trusted ({error.verify_message}); "
                               f"check [mqtt] ca_file ({self.tls.ca_file if self.tls else None})")
            return False
        except ssl.SSLError as error:
            self.last_error = f"TLS handshake failed: {error.reason or error}; check [mqtt] ca_file, cert_file and key_file"
            return False
        except (OSError, socket.timeout) as error:
            self.last_error = f"cannot connect: {error.strerror or error}"
            return False
        if client._sock is not None:
            client._sock = _ReadAhead(client._sock)
        accepted = False
        deadline = time.monotonic() + self.connect_timeout
        while True:
            if self._closing.is_set():
                client.disconnect()  # after the acks already queued
                for _ in range(20):
                    if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                        break
                break
            rc = client.loop(timeout=0.5)
            if self._got_connack and self._refused is None:
                accepted = True
            elif not self._got_connack and time.monotonic() > deadline:
                # A broker without MQTT 5 may say nothing at all to a version 5 CONNECT.
                self._refused = "version" if self._version == mqtt.MQTTv5 else "other"
                self.last_error = f"the broker did not accept the connection within {self.connect_timeout:g}s"
                client.disconnect()
                client.loop(timeout=0.1)
                break
            if rc != mqtt.MQTT_ERR_SUCCESS:
                if self._refused is None:
                    if not self._got_connack and self._version == mqtt.MQTTv5:
                        self._refused = "version"  # closed before any CONNACK: a 3.1.1-only broker may do that
                        self.last_error = "the broker closed the connection before accepting it"
                    elif not self._closing.is_set():
                        self.last_error = f"connection lost ({mqtt.error_string(rc)})"
                break
        self.connected.clear()
        return accepted

    # -- callbacks (network thread) --------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._got_connack = True
        if reason_code.is_failure:
            value = reason_code.value
            if value in _VERSION_REFUSED:
                self._refused = "version"
                self.last_error = f"refused: {reason_code}"
            elif value in (4, 5, 0x86, 0x87):  # bad user name or password / not authorised
                self._refused = "auth"
                self.last_error = f"refused the connection: {reason_code} ({_AUTH_HINT})"
            else:
                self._refused = "other"
                self.last_error = f"refused the connection: {reason_code}"
            log.error("MQTT broker %s:%s %s", self.host, self.port, self.last_error)
            return
        self.connects += 1
        self.session_present = bool(flags.session_present)
        self.mqtt_version = "5" if self._version == mqtt.MQTTv5 else "3.1.1"
        client.subscribe([(topic, self.qos) for topic in self.topics])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = [code for code in reason_codes if code.is_failure]
        if refused:
            self.last_error = (f"refused the subscription to {', '.join(self.topics)}: "
                               f"{', '.join(str(code) for code in refused)}")
            log.error("MQTT broker %s:%s %s", self.host, self.port, self.last_error)
            return
        self.last_error = ""
        log.info("connected to MQTT broker %s:%s (MQTT %s, session %s), subscribed to %s", self.host, self.port,
                 self.mqtt_version, "resumed" if self.session_present else "new", ", ".join(self.topics))
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        if was_connected and not self._closing.is_set():
            log.warning("lost the MQTT broker %s:%s (%s); reconnecting", self.host, self.port, reason_code)

    def _on_message(self, client, userdata, message) -> None:
        self.messages += 1
        try:
            topic = message.topic
        except UnicodeDecodeError:  # paho raises on a topic that is not UTF-8: decoded with U+FFFD, then quarantined
            topic = bytes(getattr(message, "_topic", b"")).decode("utf-8", "replace")
        item = RawMessage(topic, message.payload, time.time(), message.mid, message.qos)
        while True:
            try:
                self.inbox.put(item, timeout=0.5)
                return
            except Full:
                if self.stop.is_set():  # not acknowledged: the broker sends it again after a restart
                    return
