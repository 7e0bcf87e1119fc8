"""Ingest through a real broker: bad payloads are quarantined and counted, nothing else is affected."""

from __future__ import annotations

import sqlite3
import threading
import time

import orjson
import paho.mqtt.client as mqtt
import pytest

from conftest import running_agent, wait_until, write_gateway_config
from edge.agent import Agent
from edge.config import load_config
from edge.ingest.decode import DecodeError, decode_telemetry
from uplink.receiver import ReceiverServer, ReceiverStore


@pytest.mark.parametrize(
    "topic, payload, reason",
    [
        ("devices/MH-0001/telemetry", b"{not json", "malformed_json"),
        ("devices/MH-0001/telemetry", b"[1, 2]", "wrong_type"),
        ("devices/MH-0001/telemetry", b'{"ts": 5, "readings": {"tilt_deg": [1]}}', "wrong_type"),
        ("devices/CAM-0001/telemetry", b'{"ts": 5, "readings": {"label": "' + b"x" * 65 + b'"}}', "wrong_type"),
        ("devices/MH-0001/telemetry", b'{"readings": {"tilt_deg": 1}}', "bad_timestamp"),
        ("devices/MH-0001/telemetry", b'{"device": "MH-0002", "ts": 5, "readings": {}}', "device_mismatch"),
        ("devices/MH-0001/status", b'{"ts": 5, "readings": {}}', "bad_topic"),
        ("devices/MH-0001/telemetry", b" " * 70000, "payload_too_large"),
    ],
)
def test_decoder_refuses_bad_payloads_with_a_reason(topic, payload, reason):
    with pytest.raises(DecodeError) as caught:
        decode_telemetry(topic, payload)
    assert caught.value.reason == reason


def test_decoder_reads_numbers_booleans_and_text():
    message = decode_telemetry("devices/MH-0001/telemetry", b'{"ts": 5.5, "readings": {"tilt_deg": 3, "open": true}}')
    assert (message.device_id, message.ts, message.values) == ("MH-0001", 5.5, {"tilt_deg": 3.0, "open": 1.0})
    camera = decode_telemetry("devices/CAM-0001/telemetry", b'{"ts": 5, "readings": {"label": "car", "score": 0.9}}')
    assert camera.values == {"label": "car", "score": 0.9}


def test_bad_and_unknown_messages_do_not_stop_a_real_alarm(tmp_path, mosquitto):
    store = ReceiverStore(tmp_path / "receiver.db")
    server = ReceiverServer("127.0.0.1", 0, store)
    server.start_background()
    config = write_gateway_config(tmp_path, mosquitto.url, server.url)
    try:
        with running_agent(config, mosquitto) as (agent, client):
            now = time.time()

            def publish(topic, payload):
                client.publish(topic, payload, qos=1).wait_for_publish(5)

            publish("devices/MH-0005/telemetry", b"{broken")
            publish("devices/MH-0005/telemetry", orjson.dumps({"device": "MH-0006", "ts": now, "readings": {}}))
            publish("devices/XX-9999/telemetry", orjson.dumps({"ts": now, "readings": {"tilt_deg": 80}}))
            publish("devices/MH-0005/telemetry", orjson.dumps({"ts": now, "readings": {"tilt_deg": "high"}}))
            for step in range(12):
                publish("devices/MH-0005/telemetry", orjson.dumps({"ts": now + step, "readings": {"tilt_deg": 33.0}}))

            assert wait_until(lambda: store.stats()["orders"] == 1, 20)
            assert agent.stats.quarantined == {"malformed_json": 1, "device_mismatch": 1, "wrong_type": 1}
            assert agent.stats.unknown_devices == {"XX-9999": 1}
            (order,) = store.orders()
            assert order["device"] == "MH-0005"
    finally:
        server.shutdown()
        store.close()
    with sqlite3.connect(tmp_path / "data" / "gateway.db") as conn:
        rows = conn.execute("SELECT topic, payload, reason FROM quarantine ORDER BY id").fetchall()
    assert rows[0] == ("devices/MH-0005/telemetry", b"{broken", "malformed_json")
    assert [row[2] for row in rows] == ["malformed_json", "device_mismatch", "wrong_type"]


def test_a_device_sending_garbage_forever_keeps_only_the_newest_quarantined_and_every_count(tmp_path, mosquitto):
    store = ReceiverStore(tmp_path / "receiver.db")
    server = ReceiverServer("127.0.0.1", 0, store)
    server.start_background()
    config = write_gateway_config(tmp_path, mosquitto.url, server.url)
    config.write_text(config.read_text() + "\n[outbox]\nquarantine_max = 100\n")
    db_path = tmp_path / "data" / "gateway.db"

    def kept() -> list[bytes]:
        with sqlite3.connect(db_path) as conn:
            return [row[0] for row in conn.execute("SELECT payload FROM quarantine ORDER BY id")]

    try:
        with running_agent(config, mosquitto) as (agent, client):
            now = time.time()
            for n in range(250):
                client.publish("devices/MH-0007/telemetry", b"{garbage %d" % n, qos=1)
            for step in range(12):
                client.publish("devices/MH-0005/telemetry", orjson.dumps({"ts": now + step, "readings": {"tilt_deg": 33.0}}),
                               qos=1).wait_for_publish(5)
            assert wait_until(lambda: store.stats()["orders"] == 1, 20)  # the real alarm still gets through
            assert wait_until(lambda: agent.stats.quarantined["malformed_json"] == 250, 20)
            assert wait_until(lambda: len(kept()) == 100, 10)  # trimmed at the next tick
            assert agent.stats.quarantine_trimmed == 150
            assert kept() == [b"{garbage %d" % n for n in range(150, 250)]  # the newest
    finally:
        server.shutdown()
        store.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the injected crash
def test_a_reading_is_acknowledged_only_after_its_batch_is_committed(tmp_path, mosquitto, monkeypatch):
    """The gateway dies while committing a batch: the broker still has the readings and sends them again."""
    from edge.orders.book import OrderBook

    store = ReceiverStore(tmp_path / "receiver.db")
    server = ReceiverServer("127.0.0.1", 0, store)
    server.start_background()
    config = load_config(write_gateway_config(tmp_path, mosquitto.url, server.url))
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    real_apply = OrderBook.apply
    crashed = threading.Event()

    def apply_then_die(self, transitions, now=None, clock=None):
        if any(t.kind == "open" for t in transitions) and not crashed.is_set():
            crashed.set()
            raise SystemExit("power cut (injected) before the commit")  # the process ends, as with kill -9
        return real_apply(self, transitions, now, clock)

    try:
        monkeypatch.setattr(OrderBook, "apply", apply_then_die)
        first = Agent(config)
        thread = threading.Thread(target=first.run, daemon=True)
        thread.start()
        assert first.ready.wait(60) and first.subscriber.connected.wait(20)
        client.connect(mosquitto.host, mosquitto.port)
        client.loop_start()
        now = time.time()
        for step in range(11):  # tilted for 10 s: the last reading opens the order, and the commit fails
            payload = orjson.dumps({"ts": now + step, "readings": {"tilt_deg": 33.0, "open": 1}})
            client.publish("devices/MH-0012/telemetry", payload, qos=1).wait_for_publish(5)
        assert crashed.wait(20)
        thread.join(30)
        assert not thread.is_alive() and store.stats()["orders"] == 0
        first.stop()  # its uplink and downlink threads outlive the engine's crash in this process; a power cut ends them

        second = Agent(config)  # the same client id: the broker resends what was never acknowledged
        thread = threading.Thread(target=second.run, daemon=True)
        thread.start()
        assert wait_until(lambda: store.stats()["orders"] == 1, 30)
        assert store.orders()[0]["device"] == "MH-0012"
        second.stop()
        thread.join(30)
    finally:
        client.loop_stop()
        server.shutdown()
        store.close()
