"""Fuzz every decoder: random bytes, JSON and event-shaped structures; only DecodeError may come out."""

from __future__ import annotations

import base64
import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.ingest.decode import DecodeError, Message
from edge.ingest.decoders import DECODERS

TOPICS = {
    "own_json": "devices/MH-0001/telemetry",
    "chirpstack": "application/street/device/a84041aabbccddeeff/event/up",
    "frigate": "frigate/events",
    "modbus_rtu": "modbus/1/RMH-0001",
}

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=20)


def anything(keys):
    """Dicts with the fields decoders look for, each of a random type."""
    return st.fixed_dictionaries({}, optional={k: json_values for k in keys})


chirpstack_like = st.fixed_dictionaries({}, optional={
    "time": st.text(max_size=40) | st.just("2025-06-01T08:00:00+00:00") | json_values,
    "deviceInfo": anything(["deviceName", "devEui", "deviceProfileName"])
    | st.fixed_dictionaries({"deviceName": st.text(max_size=10),
                             "deviceProfileName": st.sampled_from(["MCL-300", "SBL-220", "X"])}),
    "fPort": st.integers(-5, 300) | json_values,
    "data": st.binary(max_size=24).map(lambda b: base64.b64encode(b).decode()) | json_values,
    "rxInfo": st.lists(anything(["rssi"]), max_size=2) | json_values,
})
frigate_like = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["new", "update", "end"]) | json_values,
    "after": anything(["camera", "label", "score", "top_score", "frame_time", "start_time", "end_time",
                       "current_zones"]) | json_values,
})
own_like = st.fixed_dictionaries({}, optional={"device": json_values, "ts": json_values,
                                                "readings": st.dictionaries(st.text(max_size=8), json_values, max_size=4)
                                                | json_values})


def payloads():
    structured = (json_values | chirpstack_like | frigate_like | own_like).map(
        lambda doc: orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS) if _dumpable(doc) else b"{}")
    return st.binary(max_size=200) | structured


def _dumpable(doc) -> bool:
    try:
        orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)
        return True
    except (TypeError, orjson.JSONEncodeError):
        return False


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda d: d.NAME)
@settings(max_examples=300, deadline=None)
@given(payload=payloads(), model=st.sampled_from([None, "MCL-300", "SBL-220", "FRIGATE", "MC-200R", "SB-120R"]))
def test_only_decode_error_comes_out(decoder, payload, model):
    try:
        message = decoder.decode(TOPICS[decoder.NAME], payload, lambda device: model)
    except DecodeError as error:
        assert error.reason and isinstance(error.detail, str)
        return
    assert isinstance(message, Message) and isinstance(message.device_id, str) and message.ts > 0
    for value in message.values.values():
        assert isinstance(value, str) or (isinstance(value, float) and math.isfinite(value))


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda d: d.NAME)
@settings(max_examples=100, deadline=None)
@given(topic=st.text(max_size=60), payload=st.binary(max_size=50))
def test_any_topic_is_refused_cleanly(decoder, topic, payload):
    try:
        decoder.decode(topic, payload)
    except DecodeError:
        pass


def test_crasher_a_duration_that_overflows_is_refused():
    """Found while writing the finite-value check above: far-apart start and frame times gave duration_s = inf."""
    from edge.ingest import frigate

    event = {"type": "new", "after": {"camera": "CAM-0001", "label": "car", "score": 0.5,
                                      "frame_time": 1.7e308, "start_time": -1.7e308}}
    with pytest.raises(DecodeError) as caught:
        frigate.decode("frigate/events", orjson.dumps(event))
    assert caught.value.reason == "bad_timestamp"


@settings(max_examples=300, deadline=None)
@given(unit=st.integers(0, 255), function=st.integers(0, 255), body=st.binary(max_size=30),
       regs=st.lists(st.integers(0, 0xFFFF), min_size=0, max_size=12), as_registers=st.booleans(),
       model=st.sampled_from(["MC-200R", "SB-120R", None]))
def test_modbus_frames_with_a_good_crc(unit, function, body, regs, as_registers, model):
    """Random RTU replies with a correct CRC (random bytes almost never have one): only DecodeError comes out."""
    import struct

    from edge.ingest import modbus_rtu
    from firmware_sim.protocols.modbus import with_crc

    data = bytes([2 * len(regs)]) + struct.pack(f">{len(regs)}H", *regs) if as_registers else body
    frame = with_crc(bytes([unit, function]) + data)
    try:
        message = modbus_rtu.decode("modbus/1/RMH-0001", frame, lambda device: model)
    except DecodeError as error:
        assert error.reason and isinstance(error.detail, str)
        return
    assert message.device_id == "RMH-0001" and message.ts > 0
    assert all(isinstance(v, float) and math.isfinite(v) for v in message.values.values())
