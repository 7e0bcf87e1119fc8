"""LoRaWAN (ChirpStack) and camera (Frigate) events through a real broker into orders; bad ones quarantined."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter

import orjson
import pytest

from conftest import ROOT, running_agent, wait_until, write_gateway_config
from edge.ingest import chirpstack, frigate
from edge.ingest.decode import DecodeError
from edge.ingest.decoders import DEFAULT_TOPICS, decode, decoder_for
from firmware_sim.protocols import lorawan
from uplink.receiver import ReceiverServer, ReceiverStore

REGISTRY = """id,kind,model,address,lat,lon,grid,zone,team,depth_cm
MH-L01,manhole_cover,MCL-300,1 Test Rd,31.23,121.47,G01,Z1,team-a,
BIN-L01,bin,SBL-220,2 Test Rd,31.23,121.47,G01,Z1,team-a,120
CAM-0001,camera,FRIGATE,3 Test Rd,31.23,121.47,G01,Z1,team-a,
"""

COVER = {"tilt_deg": 30.0, "open": 1, "water_cm": 150.0, "ch4_lel_pct": 1.0, "h2s_ppm": 0.5, "temp_c": 18.0,
         "battery_v": 3.6, "rssi_dbm": -87}
BIN = {"distance_cm": 10.0, "temp_c": 20.0, "tilt_deg": 1.0, "battery_v": 3.6, "rssi_dbm": -80}


def camera_event(kind: str, start: float, t: float, score: float = 0.9, zones=("no_parking",)) -> bytes:
    after = {"id": f"{start}-cam", "camera": "CAM-0001", "label": "car", "score": score, "top_score": score,
             "frame_time": t, "start_time": start, "end_time": t if kind == "end" else None,
             "current_zones": list(zones) if kind != "end" else []}
    return orjson.dumps({"type": kind, "before": after, "after": after})


def test_every_default_topic_has_a_decoder():
    assert DEFAULT_TOPICS == ["devices/+/telemetry", "application/+/device/+/event/up", "frigate/events"]
    assert decoder_for("application/x/device/a84041/event/up") is chirpstack
    assert decoder_for("frigate/events") is frigate
    assert load_config_default_topics() == DEFAULT_TOPICS


def load_config_default_topics():
    from edge.config import MqttSection
    return MqttSection().topics


def test_chirpstack_event_decodes_with_registry_model_or_profile():
    frame, expected = lorawan.report("street", "BIN-L01", "SBL-220", 1.75e9, BIN, False, 3, 3)
    message = decode(frame.topic, frame.payload, lambda device: None)  # profile name decides
    assert (message.device_id, message.ts, message.values) == (expected.device, expected.ts, expected.readings)
    assert decode(frame.topic, frame.payload, lambda device: "SBL-220").values == expected.readings
    with pytest.raises(DecodeError) as caught:
        decode(frame.topic, frame.payload, lambda device: "MCL-300")  # the registry's model wins: wrong size
    assert caught.value.reason == "truncated"


def test_frigate_event_readings():
    message = decode("frigate/events", camera_event("update", 1000.0, 1060.0))
    assert (message.device_id, message.ts) == ("CAM-0001", 1060.0)
    assert message.values == {"label": "car", "zone": "no_parking", "score": 0.9, "active": 1.0, "duration_s": 60.0}
    ended = decode("frigate/events", camera_event("end", 1000.0, 1300.0))
    assert ended.values["active"] == 0.0 and ended.values["zone"] == ""


@pytest.mark.parametrize(
    "topic, payload, reason",
    [
        ("frigate/events", b'{"type": "update", "before": null}', "wrong_type"),
        ("frigate/events", b'{"type": "gone", "after": {}}', "wrong_type"),
        ("frigate/events", b'{"type": "new", "after": {"camera": "CAM-0001", "label": "car", "score": "hi"}}',
         "wrong_type"),
        ("frigate/events", b'{"type": "new", "after": {"camera": "CAM-0001", "label": "car", "score": 0.5}}',
         "bad_timestamp"),
        ("frigate/events", b"{trunc", "malformed_json"),
        ("frigate/events", b" " * 70000, "payload_too_large"),
        ("application/a/device/a840410000000000/event/up", b"[]", "wrong_type"),
        ("application/a/device/a840410000000000/event/up",
         b'{"deviceInfo": {"deviceName": "BIN-L01", "devEui": "ffff"}}', "device_mismatch"),
        ("application/a/device/a840410000000000/event/up",
         b'{"deviceInfo": {"deviceName": "BIN-L01"}, "time": "yesterday", "fPort": 1, "data": ""}', "bad_timestamp"),
        ("application/a/device/a840410000000000/event/up",
         b'{"deviceInfo": {"deviceName": "X", "deviceProfileName": "NOPE"}, "time": "2025-06-01T08:00:00+00:00",'
         b' "fPort": 1, "data": "AAAA"}', "unknown_model"),
        ("somewhere/else", b"{}", "bad_topic"),
    ],
)
def test_bad_protocol_payloads_are_refused_with_a_reason(topic, payload, reason):
    with pytest.raises(DecodeError) as caught:
        decode(topic, payload)
    assert caught.value.reason == reason


def test_lorawan_and_camera_events_open_orders_through_a_real_broker(tmp_path, mosquitto):
    registry = tmp_path / "devices.csv"
    registry.write_text(REGISTRY)
    store = ReceiverStore(tmp_path / "receiver.db")
    server = ReceiverServer("127.0.0.1", 0, store)
    server.start_background()
    config = write_gateway_config(tmp_path, mosquitto.url, server.url, registry=registry.as_posix())
    try:
        with running_agent(config, mosquitto) as (agent, client):

            def publish(topic, payload):
                client.publish(topic, payload, qos=1).wait_for_publish(5)

            now = time.time()
            # Bad messages first: each is quarantined, and nothing else is affected.
            for n, variant in enumerate(lorawan.MALFORMED):
                bad = lorawan.malformed("street", "MH-L01", "MCL-300", now - 400, COVER, n, n, variant)
                publish(bad.topic, bad.payload)
            good, _ = lorawan.report("street", "BIN-L01", "SBL-220", now - 400, BIN, False, 1, 1)
            publish(lorawan.uplink_topic("street", "MH-L01"), good.payload)  # devEui of another device
            publish(frigate.TOPIC_FILTER, b'{"type": "update", "before": null}')
            publish(frigate.TOPIC_FILTER, camera_event("update", now - 400, now - 300)[:40])
            publish(lorawan.uplink_topic("street", "XX-L99"),
                    lorawan.report("street", "XX-L99", "SBL-220", now - 400, BIN, False, 1, 1)[0].payload)

            for step in range(12):  # the cover tilted and open for 11 s of device time
                frame, _ = lorawan.report("street", "MH-L01", "MCL-300", now - 300 + step, COVER, True, 10 + step, 10 + step)
                publish(frame.topic, frame.payload)
            frame, _ = lorawan.report("street", "BIN-L01", "SBL-220", now - 300, BIN, True, 2, 2)  # 92 % full
            publish(frame.topic, frame.payload)
            start = now - 400
            publish(frigate.TOPIC_FILTER, camera_event("new", start, start))
            for minute in range(1, 7):  # a car in the no-parking zone for 6 minutes of camera time
                publish(frigate.TOPIC_FILTER, camera_event("update", start, start + 60 * minute))

            assert wait_until(lambda: store.stats()["orders"] == 3, 20)
            assert {(o["device"], o["rule"]) for o in store.orders()} == {
                ("MH-L01", "cover_tilted"), ("BIN-L01", "bin_full"), ("CAM-0001", "illegal_parking")}
            assert agent.stats.quarantined == {"truncated": 1, "unknown_fport": 1, "bad_base64": 1,
                                               "device_mismatch": 1, "wrong_type": 1, "malformed_json": 1}
            assert agent.stats.unknown_devices == {"XX-L99": 1}
    finally:
        server.shutdown()
        store.close()
    with sqlite3.connect(tmp_path / "data" / "gateway.db") as conn:
        reasons = Counter(row[0] for row in conn.execute("SELECT reason FROM quarantine"))
    assert reasons == {"truncated": 1, "unknown_fport": 1, "bad_base64": 1, "device_mismatch": 1,
                       "wrong_type": 1, "malformed_json": 1}


@pytest.mark.parametrize("section", ["mqtt", "modbus"])
def test_every_mqtt_and_modbus_key_is_in_the_example_config_and_has_a_description(section):
    """Docs that cannot drift: config/gateway.toml shows every key (set or commented out)."""
    import re

    from edge.config import GatewayConfig

    example = (ROOT / "config" / "gateway.toml").read_text()
    model = GatewayConfig.model_fields[section].annotation
    block = example.split(f"[{section}]", 1)[1].split("\n[", 1)[0]
    for name, field in model.model_fields.items():
        assert re.search(rf"^#? ?{name} = ", block, re.MULTILINE), f"[{section}] {name} is not in config/gateway.toml"
        assert field.description, f"[{section}] {name} has no description"
