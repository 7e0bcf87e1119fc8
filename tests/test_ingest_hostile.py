"""Hostile input at ingest: whatever a device sends, decode answers with a Message or a DecodeError
with a reason; device clocks outside the [ingest] window are quarantined; the quarantine and the
unknown-device table stay bounded on a real SQLite file; device text printed by the CLI is escaped.
"""

from __future__ import annotations

import base64
import math
import struct
import subprocess

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REGISTRY, edge_command, write_gateway_config
from edge.config import load_config
from edge.ingest import chirpstack, codecs, frigate, modbus_rtu
from edge.ingest.decode import DecodeError, Limits, Message, check_kinds, check_time
from edge.ingest.decoders import DECODERS, decode
from edge.ingest.modbus_map import to_registers, with_crc
from edge.ingest.quarantine import (
    UnknownDevices, quarantine_row, quarantined, record_unknown, store, unknown_devices,
)
from edge.outbox import open_database, transaction
from edge.outbox.telemetry import TelemetrySummaries
from edge.registry import Registry
from edge.text_safety import printable

NOW = 1_763_830_000.0  # the gateway's clock when the messages arrived (2025-11-22)
LIMITS = Limits(max_future=600.0, max_past=7 * 86400.0, max_payload_bytes=65536)
OWN = "devices/MH-0001/telemetry"
LORA = "application/street/device/a84041aabbccddee/event/up"
CAMERA = "frigate/events"
MODBUS = "modbus/1/RMH-0001"
MODELS = {"MH-0001": "MC-200R", "RMH-0001": "MC-200R", "LMH-0001": "MCL-300", "CAM-0001": None}


def model_of(device_id):
    return MODELS.get(device_id)


def run(topic: str, payload: bytes, received_at: float = NOW, limits: Limits = LIMITS) -> Message:
    return decode(topic, payload, model_of, limits=limits, received_at=received_at)


def refused(topic: str, payload: bytes, **kwargs) -> DecodeError:
    with pytest.raises(DecodeError) as caught:
        run(topic, payload, **kwargs)
    assert len(caught.value.detail) <= 403  # a detail quotes what was sent, but never all of it
    return caught.value


def own(ts=NOW - 5, readings=None, **extra) -> bytes:
    return orjson.dumps({"ts": ts, "readings": {"tilt_deg": 1.5} if readings is None else readings, **extra})


def lora(time="2025-11-22T16:46:35Z", name="LMH-0001", readings=None, **extra) -> bytes:
    fport, frame = codecs.encode("MCL-300", readings or {"tilt_deg": 2.0, "open": 0.0})
    event = {"deviceInfo": {"deviceName": name, "deviceProfileName": "MCL-300"}, "fPort": fport,
             "data": base64.b64encode(frame).decode(), "fCnt": 7, "rxInfo": [{"rssi": -90}]}
    if time is not None:
        event["time"] = time
    event.update(extra)
    return orjson.dumps(event)


def camera(kind="update", after=None, **fields) -> bytes:
    base = {"camera": "CAM-0001", "label": "car", "score": 0.9, "frame_time": NOW - 2, "start_time": NOW - 60,
            "current_zones": ["no_parking"]}
    base.update(fields)
    return orjson.dumps({"type": kind, "after": base if after is None else after})


def modbus_frame(t: float, unit: int = 1) -> bytes:
    regs = to_registers("manhole_cover", {"tilt_deg": 1.0, "open": 0.0}, t, False)
    return with_crc(bytes([unit, 4, 2 * len(regs)]) + struct.pack(f">{len(regs)}H", *regs))


# --- valid messages pass (so that every refusal below is about the one thing changed) -------------

def test_valid_messages_of_every_protocol_pass_with_the_window():
    assert run(OWN, own()).ts == NOW - 5
    message = run(LORA, lora())
    assert message.device_id == "LMH-0001" and message.ts == NOW - 5 and message.values["rssi_dbm"] == -90.0
    message = run(CAMERA, camera())
    assert message.ts == NOW - 2 and message.values["duration_s"] == 58.0
    assert run(MODBUS, modbus_frame(NOW - 30)).ts == NOW - 30
    assert run(OWN, own(ts=NOW + 599)).ts == NOW + 599  # just inside max_future
    assert run(OWN, own(ts=NOW - 7 * 86400 + 1)).ts == NOW - 7 * 86400 + 1  # just inside max_past


# --- device clocks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("ts, hint", [
    (NOW * 1000, "looks like milliseconds"),
    (NOW * 1e6, "looks like microseconds"),
    (NOW * 1e9, "looks like nanoseconds"),
    (4102444800.0, ""),  # 2100-01-01: far future
    (NOW + 601, ""),  # just past max_future
    (1e300, "about year"),
    (12345.0, "never set or was reset"),  # seconds since boot / reset to 1970
    (NOW - 8 * 86400, ""),  # older than max_past
])
def test_own_json_device_times_outside_the_window_are_refused(ts, hint):
    error = refused(OWN, own(ts=ts))
    assert error.reason == "timestamp_out_of_range"
    assert "[ingest] max_past 604800 s, max_future 600 s" in error.detail
    assert "2025-11-15T16:46:40Z .. 2025-11-22T16:56:40Z" in error.detail  # the accepted window, in UTC
    assert hint in error.detail


def test_the_window_follows_the_config():
    limits = Limits(max_future=0.0, max_past=60.0)
    assert refused(OWN, own(ts=NOW + 1), limits=limits).reason == "timestamp_out_of_range"
    assert refused(OWN, own(ts=NOW - 61), limits=limits).reason == "timestamp_out_of_range"
    assert run(OWN, own(ts=NOW - 59), limits=limits).ts == NOW - 59


def test_check_time_alone_says_what_it_got():
    assert check_time(NOW, NOW, LIMITS) == NOW
    with pytest.raises(DecodeError) as caught:
        check_time(NOW * 1000, NOW, LIMITS, "ts")
    assert caught.value.reason == "timestamp_out_of_range" and "looks like milliseconds" in caught.value.detail
    assert f"{NOW * 1000!r}" in caught.value.detail
    for bad in (math.inf, math.nan, True, "1763830000", None):
        with pytest.raises(DecodeError) as caught:
            check_time(bad, NOW, LIMITS)
        assert caught.value.reason == "bad_timestamp"


@pytest.mark.parametrize("ts", [True, "1763830000", {"s": 1}, [NOW], None, 0, -5])
def test_own_json_times_that_are_not_times(ts):
    assert refused(OWN, own(ts=ts)).reason == "bad_timestamp"


@pytest.mark.parametrize("time, reason", [
    ("9999-12-31T23:59:59Z", "timestamp_out_of_range"),
    ("2100-01-01T00:00:00+00:00", "timestamp_out_of_range"),
    ("1970-01-01T00:00:01Z", "timestamp_out_of_range"),
    ("2025-11-01T00:00:00Z", "timestamp_out_of_range"),  # 3 weeks old
    ("10000-01-01T00:00:00Z", "bad_timestamp"),  # not ISO 8601 any more
    ("0001-01-01T00:00:00Z", "bad_timestamp"),  # before the epoch
    (1763830000, "bad_timestamp"),  # a number where ISO text is wanted
    (True, "bad_timestamp"),
    ({"seconds": 1}, "bad_timestamp"),
    ("2025-11-22T16:46:35Z" + "x" * 5000, "bad_timestamp"),
])
def test_chirpstack_event_times(time, reason):
    assert refused(LORA, lora(time=time)).reason == reason


def test_chirpstack_rxinfo_times_stand_in_for_a_missing_time_and_are_checked():
    good = run(LORA, lora(time=None, rxInfo=[{"rssi": -80, "nsTime": "2025-11-22T16:46:30Z"}]))
    assert good.ts == NOW - 10 and good.values["rssi_dbm"] == -80.0
    gw = run(LORA, lora(time=None, rxInfo=[{"gwTime": "2025-11-22T16:46:31Z"}]))
    assert gw.ts == NOW - 9
    error = refused(LORA, lora(time=None, rxInfo=[{"gwTime": "9999-12-31T23:59:59Z"}]))
    assert error.reason == "timestamp_out_of_range" and "rxInfo[0].gwTime" in error.detail
    assert refused(LORA, lora(time=None, rxInfo=[{"rssi": -80}])).reason == "bad_timestamp"


@pytest.mark.parametrize("fields, what", [
    ({"frame_time": NOW * 1000}, "after.frame_time"),
    ({"start_time": 1e300}, "after.start_time"),
    ({"start_time": -1e300}, "after.start_time"),
    ({"start_time": 10.0}, "after.start_time"),  # a camera whose clock was reset
    ({"frame_time": None, "start_time": NOW + 3600}, "after.start_time"),
])
def test_frigate_times_outside_the_window(fields, what):
    error = refused(CAMERA, camera(**fields))
    assert error.reason == "timestamp_out_of_range" and what in error.detail


def test_frigate_end_time_far_ahead_is_refused_and_duration_uses_the_arrival_clock():
    error = refused(CAMERA, camera("end", frame_time=None, end_time=4102444800.0))
    assert error.reason == "timestamp_out_of_range" and "after.end_time" in error.detail
    started = run(CAMERA, camera("new", frame_time=None, start_time=NOW - 30))
    assert started.ts == NOW - 30 and started.values["duration_s"] == 30.0  # received_at - start, not time.time()


@pytest.mark.parametrize("t, hint", [
    (0xFFFEFFFF, ""),  # 2106: the largest time the registers can hold
    (NOW + 86400, ""),
    (12.0, "never set or was reset"),
])
def test_modbus_measurement_times_outside_the_window(t, hint):
    error = refused(MODBUS, modbus_frame(t))
    assert error.reason == "timestamp_out_of_range" and hint in error.detail


# --- values ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("readings, reason", [
    ({"tilt_deg": 1e300}, "bad_value"),
    ({"tilt_deg": -1e16}, "bad_value"),
    ({"tilt_deg": 2 ** 63}, "bad_value"),
    ({"tilt_deg": {"nested": 1}}, "wrong_type"),
    ({"tilt_deg": [1, 2]}, "wrong_type"),
    ({"tilt_deg": None}, "wrong_type"),
    ({f"m{i}": 1.0 for i in range(257)}, "too_many_readings"),
    ({"x" * 1000: 1.0}, "bad_metric_name"),
    ({"tilt\x1b[2J": 1.0}, "bad_metric_name"),
    ({"": 1.0}, "bad_metric_name"),
    ({"label": "x" * 65}, "wrong_type"),
    ({"label": "car\x1b]0;pwned\x07"}, "wrong_type"),
    ({"label": "car\x00"}, "wrong_type"),
    ({"label": "car\u202e"}, "wrong_type"),  # a bidi override
])
def test_own_json_values(readings, reason):
    assert refused(OWN, own(readings=readings)).reason == reason


def test_256_readings_pass_and_booleans_are_documented_as_1_and_0():
    assert len(run(OWN, own(readings={f"m{i}": 1.0 for i in range(256)})).values) == 256
    assert run(OWN, own(readings={"open": True})).values == {"open": 1.0}


def test_text_where_a_number_is_wanted_is_refused_for_the_device_kind():
    device = Registry.load(REGISTRY).get("MH-0001")
    message = run(OWN, own(readings={"tilt_deg": "80"}))
    with pytest.raises(DecodeError) as caught:
        check_kinds(device, message.values)
    assert caught.value.reason == "wrong_type"


@pytest.mark.parametrize("after, reason", [
    ({"score": True}, "wrong_type"),
    ({"score": 1e300}, "bad_value"),
    ({"score": "0.9", "top_score": None}, "wrong_type"),
    ({"camera": "CAM\x1b[31m"}, "bad_device_id"),
    ({"camera": "C" * 65}, "wrong_type"),
    ({"label": "l" * 10000}, "wrong_type"),
    ({"label": "car\x1b[8m"}, "wrong_type"),
    ({"current_zones": [{"z": 1}]}, "wrong_type"),
    ({"current_zones": ["zone\x07"]}, "wrong_type"),
    ({"current_zones": "no_parking"}, "wrong_type"),
])
def test_frigate_values(after, reason):
    assert refused(CAMERA, camera(**after)).reason == reason


def test_chirpstack_values_and_names():
    assert refused(LORA, lora(name="L" * 2000)).reason == "bad_device_id"
    assert refused(LORA, lora(name="LMH\x1b[2J\x1b[H")).reason == "bad_device_id"
    assert refused(LORA, lora(fPort=True)).reason == "wrong_type"
    assert refused(LORA, lora(data="not base64!")).reason == "bad_base64"
    long_profile = orjson.loads(lora(name="XX-1"))
    long_profile["deviceInfo"]["deviceProfileName"] = "P" * 5000
    assert refused(LORA, orjson.dumps(long_profile)).reason == "unknown_model"
    huge_rssi = run(LORA, lora(rxInfo=[{"rssi": 1e300}]))
    assert "rssi_dbm" not in huge_rssi.values  # metadata, not a reading: left out, the reading kept


# --- sizes, encodings, nesting, topics, ids -----------------------------------------------------------

def test_payload_size_is_checked_before_anything_else():
    assert refused(OWN, b" " * 70000).reason == "payload_too_large"
    small = Limits(max_payload_bytes=1024)
    error = refused(OWN, own(readings={"label": "x" * 2000}), limits=small)
    assert error.reason == "payload_too_large" and "[ingest] max_payload_bytes" in error.detail
    assert refused(MODBUS, b"\x01" * 100_000).reason == "payload_too_large"
    assert refused("no/such/topic", b"x" * 100_000).reason == "payload_too_large"  # before the topic even


@pytest.mark.parametrize("payload, reason", [
    (b'{"ts": 1, "readings": {"label": "\xff\xfe"}}', "bad_encoding"),
    (b'{"ts": 1, "readings": {"label": "\\ud800"}}', "bad_encoding"),  # a lone surrogate escape
    (b"[" * 2000 + b"]" * 2000, "too_deep"),
    (b'{"ts": ' + b'{"a": ' * 1100 + b"1" + b"}" * 1101, "too_deep"),
    (b'{"ts": \x00}', "malformed_json"),
    (b'{"ts": NaN, "readings": {}}', "malformed_json"),
    (b'{"ts": 1e400, "readings": {}}', "malformed_json"),
    (b"", "malformed_json"),
])
def test_encodings_and_nesting(payload, reason):
    assert refused(OWN, payload).reason == reason


def test_a_leading_byte_order_mark_is_ignored():
    assert run(OWN, b"\xef\xbb\xbf" + own()).ts == NOW - 5


@pytest.mark.parametrize("topic, reason", [
    ("devices/" + "D" * 2000 + "/telemetry", "bad_topic"),
    ("devices/" + "D" * 200 + "/telemetry", "bad_device_id"),
    ("devices/MH\x1b[31m0001/telemetry", "bad_device_id"),
    ("devices/MH\x00/telemetry", "bad_device_id"),
    ("devices/MH-\ufffd/telemetry", "bad_device_id"),  # a topic that was not UTF-8
    ("devices//telemetry", "bad_topic"),
    ("devices/MH-0001/telemetry/extra", "bad_topic"),
    ("modbus/\u00b2/RMH-0001", "bad_topic"),  # a Unicode digit
    ("modbus/" + "9" * 40 + "/RMH-0001", "bad_topic"),
    ("modbus/1/RMH\x1b[0m", "bad_device_id"),
    ("frigate/events/../x", "bad_topic"),
])
def test_topics_and_device_ids(topic, reason):
    payload = own() if topic.startswith("devices") else modbus_frame(NOW)
    assert refused(topic, payload).reason == reason


def test_a_long_device_in_the_payload_gives_a_short_detail():
    error = refused(OWN, own(device="E" * 50000))
    assert error.reason == "device_mismatch" and len(error.detail) < 400


def test_a_decoder_bug_becomes_a_quarantine_reason(monkeypatch):
    """Injected fault: a codec that raises something unexpected must cost one message, not the batch."""
    def broken(model, fport, frame):
        raise IndexError("codec bug")

    monkeypatch.setattr(codecs, "decode", broken)
    error = refused(LORA, lora())
    assert error.reason == "decoder_error" and "IndexError" in error.detail


# --- property: nothing but DecodeError ----------------------------------------------------------------

TOPICS = [OWN, LORA, CAMERA, MODBUS, "devices/\x1b[2J/telemetry", "x"]
scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
           | st.sampled_from([NOW, NOW * 1000, 1e300, -1e300, 0, "9999-12-31T23:59:59Z", "2025-11-22T16:46:35Z"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=25)
shaped = st.fixed_dictionaries({}, optional={
    "ts": json_values, "time": json_values, "readings": st.dictionaries(st.text(max_size=10), json_values) | json_values,
    "deviceInfo": st.fixed_dictionaries({}, optional={"deviceName": st.text(max_size=10) | json_values,
                                                      "deviceProfileName": st.sampled_from(["MCL-300", "SBL-220"])}),
    "fPort": st.integers(0, 5) | json_values, "data": st.binary(max_size=24).map(lambda b: base64.b64encode(b).decode()),
    "rxInfo": st.lists(st.fixed_dictionaries({}, optional={"rssi": json_values, "nsTime": json_values}), max_size=2),
    "type": st.sampled_from(["new", "update", "end"]) | json_values,
    "after": st.fixed_dictionaries({}, optional={k: json_values for k in (
        "camera", "label", "score", "top_score", "frame_time", "start_time", "end_time", "current_zones")}),
})


def _dump(doc) -> bytes:
    try:
        return orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return b"{}"


@settings(max_examples=400, deadline=None)
@given(topic=st.sampled_from(TOPICS) | st.text(max_size=30),
       payload=st.binary(max_size=300) | (json_values | shaped).map(_dump),
       received_at=st.sampled_from([NOW, 0.0, 1e12]))
def test_decode_raises_nothing_but_decode_error(topic, payload, received_at):
    try:
        message = run(topic, payload, received_at=received_at)
    except DecodeError as error:
        assert error.reason != "decoder_error", error.detail  # a decoder's own bug, caught but still a bug
        assert isinstance(error.detail, str) and len(error.detail) <= 403
        return
    assert received_at - LIMITS.max_past <= message.ts <= received_at + LIMITS.max_future
    assert 0 < len(message.device_id) <= 128 and printable(message.device_id) == message.device_id
    for name, value in message.values.items():
        assert printable(name) == name
        assert (isinstance(value, str) and len(value) <= 64) or (isinstance(value, float) and abs(value) <= 1e15)


def test_every_decoder_takes_the_limits():
    for decoder in DECODERS:
        with pytest.raises(DecodeError) as caught:
            decoder.decode({"own_json": OWN, "chirpstack": LORA, "frigate": CAMERA, "modbus_rtu": MODBUS}[decoder.NAME],
                           b"x" * 2000, model_of, Limits(max_payload_bytes=1024), NOW)
        assert caught.value.reason == "payload_too_large", decoder.NAME


# --- the quarantine and unknown devices, on a real SQLite file ----------------------------------------

def test_quarantine_keeps_a_cut_payload_and_its_length(tmp_path):
    db = open_database(tmp_path / "gateway.db")
    big = b"\x1b[2J" + b"A" * (10 * 1024 * 1024)
    with transaction(db) as conn:
        store(conn, [(NOW, "devices/" + "T" * 5000 + "/telemetry", big, "payload_too_large", "d" * 50000)], keep_bytes=4096)
        store(conn, [quarantine_row(NOW + 1, OWN, b"{broken", "malformed_json", "x", keep_bytes=4096)])
        store(conn, [quarantine_row(NOW + 2, OWN, b"0123456789", "malformed_json", "x", keep_bytes=4)])
    rows = quarantined(db.conn)
    assert [(len(r["payload"]), r["payload_bytes"]) for r in rows] == [(4, 10), (7, 7), (4096, len(big))]
    assert len(rows[2]["topic"]) == 256 and len(rows[2]["detail"]) == 1000
    assert db.execute("SELECT max(length(payload)) FROM quarantine").fetchone()[0] == 4096
    db.conn.close()
    assert (tmp_path / "gateway.db").stat().st_size < 1024 * 1024  # not the 10 MB


def test_quarantine_keep_bytes_zero_keeps_only_the_length(tmp_path):
    db = open_database(tmp_path / "gateway.db")
    with transaction(db) as conn:
        store(conn, [(NOW, OWN, b"abc", "malformed_json", "x")], keep_bytes=0)
    (row,) = quarantined(db.conn)
    assert row["payload"] == b"" and row["payload_bytes"] == 3
    with pytest.raises(ValueError):
        store(db.conn, [(NOW, OWN, b"abc", "malformed_json", "x")])  # plain rows need keep_bytes
    db.conn.close()


def test_unknown_devices_are_bounded_to_the_most_recently_seen(tmp_path):
    db = open_database(tmp_path / "gateway.db")
    for batch in range(10):  # 10 batches of 100 distinct 2,000-character ids
        seen = [(f"{batch:02d}-{i:03d}-" + "x" * 2000, NOW + batch * 100 + i, NOW + batch * 100 + i, 1, OWN)
                for i in range(100)]
        with transaction(db) as conn:
            record_unknown(conn, seen, max_rows=50)
    rows = unknown_devices(db.conn)
    assert len(rows) == 50
    assert all(len(r["device"]) == 128 for r in rows)
    assert {r["device"][:6] for r in rows} == {f"09-{i:03d}"[:6] for i in range(50, 100)}  # the newest
    assert min(r["last_seen"] for r in rows) == NOW + 950
    # a device seen again is counted and becomes the newest
    with transaction(db) as conn:
        record_unknown(conn, [(rows[-1]["device"], NOW + 5000, NOW + 5000, 3, "devices/x/telemetry")], max_rows=50)
    again = unknown_devices(db.conn)
    assert len(again) == 50 and again[0]["device"] == rows[-1]["device"] and again[0]["count"] == 4
    db.conn.close()


def test_ids_that_agree_on_128_characters_are_one_row(tmp_path):
    db = open_database(tmp_path / "gateway.db")
    prefix = "p" * 128
    with transaction(db) as conn:
        record_unknown(conn, [(prefix + "a", NOW, NOW, 1, OWN), (prefix + "b", NOW + 1, NOW + 1, 2, "t" * 1000)])
    (row,) = unknown_devices(db.conn)
    assert row["device"] == prefix and row["count"] == 3 and row["topic"] == "t" * 256
    db.conn.close()


def test_unknown_devices_in_memory_are_bounded():
    counter = UnknownDevices(3)
    for device in ["A", "B", "A", "C", "D", "E", "A", "Z" * 1000]:
        counter.add(device)
    assert counter == {"A": 3, "B": 1, "C": 1} and counter.other == 3 and counter.total() == 8
    assert len(counter) == 3


# --- telemetry summaries ------------------------------------------------------------------------------

def test_telemetry_summaries_never_raise_on_a_device_time():
    summaries = TelemetrySummaries(interval=60)
    summaries.due(NOW)
    summaries.add("MH-0001", NOW * 1000, {"tilt_deg": 1.0}, NOW)  # year 55,000
    summaries.add("MH-0002", 1e300, {"tilt_deg": 1.0}, NOW)
    summaries.add("MH-0003", -1e300, {"label": "car"}, NOW)
    due = {device: body for device, _, body in summaries.due(NOW + 120)}
    assert due["MH-0001"]["last_seen"] == "invalid-time" and due["MH-0002"]["last_seen"] == "invalid-time"
    assert due["MH-0001"]["metrics"]["tilt_deg"]["count"] == 1
    orjson.dumps(list(due.values()))


def test_telemetry_summaries_hold_at_most_max_metrics_per_device():
    summaries = TelemetrySummaries(interval=60, max_metrics=64)
    summaries.due(NOW)
    summaries.add("MH-0001", NOW, {"tilt_deg": 1.0}, NOW)
    for i in range(1000):
        summaries.add("MH-0001", NOW, {f"flood_{i}": float(i)}, NOW)
    summaries.add("MH-0001", NOW, {"tilt_deg": 5.0}, NOW)
    assert len(summaries.devices["MH-0001"]) == 64 and summaries.metrics_dropped == 1000 - 63
    (body,) = [b for _, _, b in summaries.due(NOW + 120)]
    assert body["metrics"]["tilt_deg"] == {"last": 5.0, "min": 1.0, "max": 5.0, "count": 2}


# --- terminals ----------------------------------------------------------------------------------------

def test_printable_escapes_what_a_terminal_would_act_on():
    assert printable("MH-0001") == "MH-0001"
    assert printable("\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m"
    assert printable("a\u202eb\u200bc\x9bd\x7f") == "a\\u202eb\\u200bc\\x9bd\\x7f"
    assert printable("ok é 漢字 🙂") == "ok é 漢字 🙂"
    assert printable(b"\xff\x1b") == "\ufffd\\x1b" and printable(None) == "" and printable(12) == "12"
    assert printable("x" * 10, 4) == "xxxx..."


EVIL = "EVIL\x1b[2J\x1b]0;owned\x07\x1b[31m\u202e"


def test_cli_escapes_device_text(tmp_path, clean_env):
    config_path = write_gateway_config(tmp_path, "mqtt://127.0.0.1:1", "http://127.0.0.1:1")
    config = load_config(config_path)
    db = open_database(config.database_path)
    with transaction(db) as conn:
        record_unknown(conn, [(EVIL, NOW, NOW, 2, f"devices/{EVIL}/telemetry")], max_rows=100)
        store(conn, [(NOW, f"devices/{EVIL}/telemetry", EVIL.encode(), "bad_device_id", f"device id {EVIL}")],
              keep_bytes=4096)
    db.conn.close()

    def edge(*args):
        return subprocess.run(edge_command() + list(args) + ["--config", str(config_path)], cwd=tmp_path,
                              capture_output=True, env=clean_env, timeout=60)

    unknown = edge("devices", "unknown")
    assert unknown.returncode == 0, unknown.stderr
    assert b"\x1b" not in unknown.stdout and b"\x07" not in unknown.stdout and "\u202e".encode() not in unknown.stdout
    assert b"EVIL\\x1b[2J\\x1b]0;owned\\x07" in unknown.stdout and b"2 message(s)" in unknown.stdout
    listed = edge("quarantine", "list")
    assert listed.returncode == 0, listed.stderr
    assert b"\x1b" not in listed.stdout and b"\x07" not in listed.stdout and b"bad_device_id" in listed.stdout
    assert f"({len(EVIL.encode())} bytes)".encode() in listed.stdout
