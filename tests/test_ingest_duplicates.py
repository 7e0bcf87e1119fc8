"""LoRaWAN uplinks heard by several gateways (same fCnt, other rxInfo) are counted once."""

from __future__ import annotations

import time

import orjson

from conftest import running_agent, wait_until, write_gateway_config
from edge.ingest import chirpstack
from edge.ingest.dedupe import Duplicates
from firmware_sim.protocols import lorawan

REGISTRY = """id,kind,model,address,lat,lon,grid,zone,team,depth_cm
MH-L01,manhole_cover,MCL-300,1 Lora Rd,31.23,121.47,G01,Z1,team-grid-01,
"""
COVER = {"tilt_deg": 2.0, "open": 0, "water_cm": 150.0, "battery_v": 3.6, "rssi_dbm": -80}


def heard_by(payload: bytes, gateway: str, rssi: int, dedup_id: str) -> bytes:
    """The same uplink as another gateway (and network server event) reports it."""
    event = orjson.loads(payload)
    event["deduplicationId"] = dedup_id
    event["rxInfo"] = [{"gatewayId": gateway, "rssi": rssi, "snr": 3.0}]
    return orjson.dumps(event)


def test_window_rejoin_and_bound():
    seen = Duplicates(window=60, max_keys=3)
    key = ("MH-L01", 7, 1, "AAEC")
    assert not seen.seen(key, 1000.0) and seen.seen(key, 1001.0) and seen.seen(key, 1059.0)
    assert not seen.seen(key, 1061.0)  # beyond the window: a new frame
    assert not seen.seen(("MH-L01", 7, 1, "BBEC"), 1062.0)  # rejoined: counter again at 7, other bytes
    for n in range(5):
        seen.seen(("X", n, 1, ""), 1063.0)
    assert len(seen) == 3 and seen.duplicates == 2


def test_decoder_gives_the_same_key_for_the_same_frame_from_two_gateways():
    frame, _ = lorawan.report("street", "MH-L01", "MCL-300", 1.7e9, COVER, False, 42, 1)
    first = chirpstack.decode(frame.topic, frame.payload, lambda d: "MCL-300")
    second = chirpstack.decode(frame.topic, heard_by(frame.payload, "gw-b", -101, "other"), lambda d: "MCL-300")
    assert first.dedupe_key == second.dedupe_key and first.dedupe_key[:3] == ("MH-L01", 42, first.dedupe_key[2])
    later, _ = lorawan.report("street", "MH-L01", "MCL-300", 1.7e9 + 60, COVER, False, 43, 2)
    assert chirpstack.decode(later.topic, later.payload, lambda d: "MCL-300").dedupe_key != first.dedupe_key


def test_an_uplink_from_three_gateways_is_evaluated_once(tmp_path, mosquitto):
    registry = tmp_path / "devices.csv"
    registry.write_text(REGISTRY)
    config = write_gateway_config(tmp_path, mosquitto.url, "http://127.0.0.1:9", registry=registry.as_posix())
    with running_agent(config, mosquitto) as (agent, client):
        now = time.time()
        frame, decoded = lorawan.report("street", "MH-L01", "MCL-300", now, COVER, False, 5, 5)
        for gateway, rssi in (("gw-a", -80), ("gw-b", -97), ("gw-c", -110)):
            client.publish(frame.topic, heard_by(frame.payload, gateway, rssi, f"dedup-{gateway}"), qos=1).wait_for_publish(5)
        following, _ = lorawan.report("street", "MH-L01", "MCL-300", now + 60, COVER, False, 6, 6)
        client.publish(following.topic, following.payload, qos=1).wait_for_publish(5)
        assert wait_until(lambda: agent.stats.messages == 4, 20)
        assert agent.stats.duplicate_uplinks == 2
        assert agent.stats.readings == 2 * len(decoded.readings)  # two frames, each once
        assert not agent.stats.quarantined
