"""The hostile world (issue 18): nothing a device, the platform, the network or the disk does stops
the gateway or blinds a device.

Real processes only: `edge run`, the reference receiver (`python -m uplink.receiver`) and
Mosquitto (private brokers: the session's would queue the floods for every persistent session
other tests left). One gateway serves all the device cases of this module, another all the
platform and network cases (behind a platform that lies), a third one lives on a partition
that fills. After
every hostile input ``World.check`` (tests/hostile.py) publishes a valid alarm from another
device and from every registered device the input named, and asserts both orders reached the
receiver exactly once and the gateway is the same process. At the end of the module the tally
of all checks (hostile cases, process exits, devices blinded, valid orders lost) is written for
the README (pytest cache key hostile/test_hostile_world, and the terminal).

Device time is the gateway's clock (time.time()) unless a case is about a wrong clock.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import requests

from conftest import RULES, edge_command, wait_until
from edge.broker import start_mosquitto
from edge.ingest.codecs import mcl300
from hostile import (
    MAX_PAST, LyingPlatform, Tally, World, alarm, b64, chirpstack, frigate, open_world, own_json,
    raw_http, read_db, status_answer, telemetry_topic, unescaped_controls, write_summary,
)

BUDGET = 16 * 1024 * 1024            # [outbox] max_bytes of the device world's gateway
QUARANTINE_MAX = 100                 # [outbox] quarantine_max: the table keeps so few, the counters count all
UNKNOWN_MAX = 1000                   # [ingest] unknown_devices_max
KEEP_BYTES = 4096                    # [ingest] quarantine_keep_bytes (the agreed default)
MB = 1024 * 1024
BENIGN = {"tilt_deg": 0.5, "open": 0, "battery_v": 3.6}  # readings that open nothing

DEVICE_WORLD = f"""
[ingest]
unknown_devices_max = {UNKNOWN_MAX}

[outbox]
max_bytes = {BUDGET}
quarantine_max = {QUARANTINE_MAX}
"""


@pytest.fixture(scope="module")
def tally(request):
    """All checks of this module, written for the README when the module ends."""
    counted = Tally()
    yield counted
    write_summary(request, "test_hostile_world", counted)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tally):
    """The gateway all device cases share, with the shipped rules, on a Mosquitto of its own: the
    session's broker would queue this module's floods (hundreds of MB) for every persistent
    session other tests' gateways left there."""
    folder = tmp_path_factory.mktemp("device-world")
    broker = start_mosquitto(folder / "broker")
    try:
        with open_world(folder, broker, extra=DEVICE_WORLD, tally=tally) as w:
            yield w
    finally:
        broker.stop()


# --- device inputs: one hostile message (or a few), then the check --------------------------------

@dataclass(frozen=True)
class Case:
    """A hostile input from a device. ``build(device, now)`` makes its messages; ``kind`` is the kind of
    the registered device it names (None: it names none). The messages must be quarantined under
    one of ``reasons`` (each counted), or, with ``reasons`` empty, be accepted."""

    id: str
    kind: str | None
    build: Callable[[str | None, float], list]
    reasons: tuple[str, ...] = ()
    may_accept: bool = False          # quarantined under ``reasons``, or accepted: both are right
    protocol: str = "json"            # how the named device's own valid alarm is sent afterwards
    clock_offset: float = 0.0         # the named device's clock, rightly believed, runs this far ahead


TOO_FAR = ("timestamp_out_of_range",)
BAD_TS = ("bad_timestamp", "timestamp_out_of_range")
COVER, BIN, CAMERA = "manhole_cover", "bin", "camera"


def raw(device, payload: bytes):
    return [(telemetry_topic(device), payload)]


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def lorawan(device, now, **kw):
    return [chirpstack(device, now, **kw)]


DEVICE_CASES = [
    # timestamps: a device clock in ms, µs, absurd, before the epoch, not a number, far off
    Case("ts-milliseconds", COVER, lambda d, now: [own_json(d, now * 1000, BENIGN) for _ in range(3)], TOO_FAR),
    Case("ts-microseconds", COVER, lambda d, now: [own_json(d, now * 1e6, BENIGN)], TOO_FAR),
    Case("ts-1e300", COVER, lambda d, now: [own_json(d, 1e300, BENIGN)], TOO_FAR),
    Case("ts-negative", COVER, lambda d, now: [own_json(d, -now, BENIGN)], BAD_TS),
    Case("ts-zero", COVER, lambda d, now: [own_json(d, 0, BENIGN)], BAD_TS),
    Case("ts-nan-as-string", COVER, lambda d, now: [own_json(d, "NaN", BENIGN)], BAD_TS),
    Case("ts-nan-literal", COVER, lambda d, now: raw(d, b'{"device": "%s", "ts": NaN, "readings": {"open": 0}}'
                                                    % d.encode()), ("malformed_json", *BAD_TS)),
    Case("ts-overflow-literal-1e999", COVER,
         lambda d, now: raw(d, b'{"device": "%s", "ts": 1e999, "readings": {"open": 0}}' % d.encode()),
         ("malformed_json", *BAD_TS)),
    Case("ts-iso-text", COVER, lambda d, now: [own_json(d, "2025-06-01T08:00:00Z", BENIGN)], BAD_TS),
    Case("ts-bool", COVER, lambda d, now: [own_json(d, True, BENIGN)], BAD_TS),
    Case("ts-null", COVER, lambda d, now: [own_json(d, None, BENIGN)], BAD_TS),
    Case("ts-1970", COVER, lambda d, now: [own_json(d, 86400.0, BENIGN)], TOO_FAR),
    Case("ts-far-future-2100", COVER, lambda d, now: [own_json(d, 4102444800, BENIGN)], TOO_FAR),
    # ahead once, then right again: quarantined (outside [ingest] max_future), or believed and then
    # the device's clock taken back when it is right again; never blinded either way
    Case("ts-11-minutes-ahead-once", COVER, lambda d, now: [own_json(d, now + 660, BENIGN)], TOO_FAR, may_accept=True),
    Case("ts-1-day-ahead-once", COVER, lambda d, now: [own_json(d, now + 86400, BENIGN)], TOO_FAR, may_accept=True),
    Case("ts-3-days-ahead-once", COVER, lambda d, now: [own_json(d, now + 3 * 86400, BENIGN)], TOO_FAR,
         may_accept=True),
    Case("ts-8-days-behind", COVER, lambda d, now: [own_json(d, now - MAX_PAST - 86400, BENIGN)], TOO_FAR),
    # a device 5 minutes ahead is within [ingest] max_future: believed; its next alarm, in its own
    # clock, opens its order
    Case("ts-5-minutes-ahead-believed", COVER, lambda d, now: [own_json(d, now + 270, BENIGN)], clock_offset=300),
    Case("chirpstack-time-9999-12-31", COVER, lambda d, now: lorawan(d, "9999-12-31T23:59:59Z"), BAD_TS,
         protocol="lorawan"),
    Case("chirpstack-time-1970", COVER, lambda d, now: lorawan(d, "1970-01-01T00:00:01+00:00"), BAD_TS,
         protocol="lorawan"),
    Case("chirpstack-time-year-0001", COVER, lambda d, now: lorawan(d, "0001-01-01T00:00:00+00:00"), BAD_TS,
         protocol="lorawan"),
    Case("chirpstack-time-garbage", COVER, lambda d, now: lorawan(d, "yesterday at noon"), BAD_TS, protocol="lorawan"),
    Case("chirpstack-time-as-number", COVER, lambda d, now: lorawan(d, now, time=now), BAD_TS, protocol="lorawan"),
    Case("frigate-frame-time-ms", CAMERA,
         lambda d, now: [frigate(d, frame_time=now * 1000, start_time=now * 1000, label="vendor")], TOO_FAR),
    # sizes: Mosquitto in tests takes any size (edge/broker.py sets no message_size_limit)
    Case("payload-64KiB-plus-1", COVER, lambda d, now: raw(d, _padded(d, now, 64 * 1024 + 1)), ("payload_too_large",)),
    Case("payload-1MB", COVER, lambda d, now: raw(d, _padded(d, now, MB)), ("payload_too_large",)),
    Case("payload-10MB", COVER, lambda d, now: raw(d, _padded(d, now, 10 * MB)), ("payload_too_large",)),
    Case("payload-10MB-chirpstack", COVER,
         lambda d, now: lorawan(d, now, deduplicationId="x" * (10 * MB)), ("payload_too_large",), protocol="lorawan"),
    Case("payload-10MB-frigate", CAMERA, lambda d, now: [frigate(d, sub_label="x" * (10 * MB))], ("payload_too_large",)),
    # encodings
    Case("invalid-utf8", COVER, lambda d, now: raw(d, b'{"device": "%s", "ts": %f, "readings": {"tilt_deg": "\xff\xfe\xc3"}}'
                                                  % (d.encode(), now)), ("bad_encoding",)),
    Case("utf8-bom", COVER, lambda d, now: raw(d, b"\xef\xbb\xbf" + own_json(d, now - 30, BENIGN)[1]), ("malformed_json",),
         may_accept=True),
    Case("nul-byte-in-a-name", COVER, lambda d, now: raw(d, own_json(d, now, BENIGN)[1].replace(b'"open"', b'"op\x00en"')),
         ("malformed_json", "bad_metric_name")),
    Case("nul-byte-outside-strings", COVER, lambda d, now: raw(d, own_json(d, now, BENIGN)[1].replace(b", ", b",\x00 ", 1)),
         ("malformed_json",)),
    Case("utf16", COVER, lambda d, now: raw(d, own_json(d, now, BENIGN)[1].decode().encode("utf-16")),
         ("bad_encoding", "malformed_json")),
    Case("lone-surrogate", COVER, lambda d, now: raw(d, b'{"device": "%s", "ts": %f, "readings": {"\\ud800": 1}}'
                                                    % (d.encode(), now)), ("bad_encoding", "malformed_json")),
    Case("empty-payload", COVER, lambda d, now: raw(d, b""), ("malformed_json",)),
    Case("chirpstack-latin1-device-name", COVER,
         lambda d, now: [_edited(chirpstack(d, now), lambda p: p.replace(d.encode(), d.encode() + b"\xe9"))],
         ("bad_encoding",), protocol="lorawan"),
    # nesting
    Case("json-nested-100k", COVER, lambda d, now: raw(d, nested(100_000)), ("payload_too_large",)),
    Case("json-nested-30k-under-the-size-limit", COVER,
         lambda d, now: raw(d, b'{"device": "%s", "ts": %f, "readings": ' % (d.encode(), now) + nested(30_000) + b"}"),
         ("too_deep",)),
    Case("chirpstack-nested-deviceinfo", COVER,
         lambda d, now: [_edited(chirpstack(d, now), lambda p: b'{"time": "x", "deviceInfo": ' + b'{"a":' * 10_000
                                 + b"1" + b"}" * 10_000 + b"}")], ("too_deep",), protocol="lorawan"),
    Case("frigate-nested-after", CAMERA,
         lambda d, now: [("frigate/events", b'{"type": "new", "after": ' + nested(20_000) + b"}")], ("too_deep",)),
    # wrong types and shapes
    Case("payload-is-a-list", COVER, lambda d, now: raw(d, json.dumps([d, now, BENIGN]).encode()), ("wrong_type",)),
    Case("readings-as-list", COVER, lambda d, now: [own_json(d, now, [30.0, 1])], ("wrong_type",)),
    Case("readings-missing", COVER, lambda d, now: raw(d, json.dumps({"device": d, "ts": now}).encode()), ("wrong_type",)),
    Case("value-as-object", COVER, lambda d, now: [own_json(d, now, {"tilt_deg": {"value": 30}})], ("wrong_type",)),
    Case("value-as-list", COVER, lambda d, now: [own_json(d, now, {"tilt_deg": [30, 31]})], ("wrong_type",)),
    Case("value-text-in-a-number-metric", COVER, lambda d, now: [own_json(d, now, {"tilt_deg": "30"})], ("wrong_type",)),
    Case("value-nan-text", COVER, lambda d, now: [own_json(d, now, {"tilt_deg": "NaN"})], ("wrong_type",)),
    Case("value-text-10k-chars", COVER, lambda d, now: [own_json(d, now, {"open": "x" * 10_000})], ("wrong_type",)),
    # accepted inputs are sent 30 s back in device time, before the device's valid alarm
    Case("value-bool-accepted", COVER, lambda d, now: [own_json(d, now - 30, {"tilt_deg": False, "open": False})]),
    Case("value-1e308", COVER, lambda d, now: [own_json(d, now, {"battery_v": 1e308, "water_cm": -1e308})], ("bad_value",)),
    Case("value-2-pow-63", COVER, lambda d, now: [own_json(d, now, {"tilt_deg": 2 ** 63})], ("bad_value",)),
    Case("value-huge-integer", COVER, lambda d, now: raw(d, b'{"device": "%s", "ts": %f, "readings": {"battery_v": 1%s}}'
                                                        % (d.encode(), now - 30, b"0" * 400)),
         ("malformed_json", "wrong_type"), may_accept=True),
    Case("readings-4000-unknown-metrics", COVER,
         lambda d, now: [own_json(d, now, {f"m{i}": i for i in range(4000)})], ("too_many_readings",)),
    Case("metric-name-empty", COVER, lambda d, now: [own_json(d, now, {"": 1.0, "open": 0})], ("bad_metric_name",)),
    Case("metric-name-with-terminal-escape", COVER, lambda d, now: [own_json(d, now, {"\x1b[2Jtilt": 1.0})],
         ("bad_metric_name",)),
    Case("metric-name-500-chars", COVER, lambda d, now: [own_json(d, now, {"m" * 500: 1.0})], ("bad_metric_name",)),
    Case("camera-text-with-bidi-override", CAMERA, lambda d, now: [frigate(d, label="car\u202eevil")], ("wrong_type",)),
    Case("camera-label-as-number", CAMERA, lambda d, now: [own_json(d, now, {"label": 5, "score": 0.9})],
         ("wrong_type",)),
    Case("device-field-mismatches-topic", COVER, lambda d, now: raw(d, json.dumps(
        {"device": "HC-9999", "ts": now, "readings": BENIGN}).encode()), ("device_mismatch",)),
    Case("device-field-is-an-object", COVER, lambda d, now: raw(d, json.dumps(
        {"device": {"id": d}, "ts": now, "readings": BENIGN}).encode()), ("device_mismatch", "wrong_type")),
    Case("topic-with-empty-device", None, lambda d, now: [("devices//telemetry", own_json("x", now, BENIGN)[1])],
         ("bad_topic",)),
    Case("device-id-of-60000-chars", None, lambda d, now: [own_json("Z" * 60_000, now, BENIGN)], ("bad_topic",)),
    Case("device-id-of-300-chars", None, lambda d, now: [own_json("Z" * 300, now, BENIGN)], ("bad_device_id",)),
    Case("unknown-device-accepted", None, lambda d, now: [own_json("HC-NOT-IN-THE-REGISTRY", now, BENIGN)]),
    # LoRaWAN
    Case("lorawan-base64-garbage", COVER, lambda d, now: lorawan(d, now, data="!!not*base64$$"), ("bad_base64",),
         protocol="lorawan"),
    Case("lorawan-fport-unknown", COVER, lambda d, now: lorawan(d, now, fPort=99), ("unknown_fport",), protocol="lorawan"),
    Case("lorawan-fport-2-pow-70", COVER, lambda d, now: lorawan(d, now, fPort=2 ** 70),
         ("unknown_fport", "wrong_type", "bad_value", "malformed_json"), protocol="lorawan"),
    Case("lorawan-fport-as-text", COVER, lambda d, now: lorawan(d, now, fPort="1"), ("wrong_type",), protocol="lorawan"),
    Case("lorawan-frame-truncated", COVER, lambda d, now: lorawan(d, now, data=b64(mcl300.encode(BENIGN)[1][:7])),
         ("truncated",), protocol="lorawan"),
    Case("lorawan-frame-empty", COVER, lambda d, now: lorawan(d, now, data=""), ("truncated",), protocol="lorawan"),
    Case("lorawan-frame-too-long", COVER, lambda d, now: lorawan(d, now, data=b64(bytes(1000))), ("too_long",),
         protocol="lorawan"),
    Case("lorawan-deveui-mismatch", COVER, lambda d, now: [_mismatched_eui(d, now)], ("device_mismatch",),
         protocol="lorawan"),
    Case("lorawan-no-deviceinfo", COVER, lambda d, now: lorawan(d, now, deviceInfo="none"), ("wrong_type",),
         protocol="lorawan"),
    Case("lorawan-unknown-model", None, lambda d, now: [_unknown_model(now)], ("unknown_model",)),
    Case("lorawan-rxinfo-garbage-accepted", COVER,
         lambda d, now: lorawan(d, now - 30, rxInfo=[{"rssi": "NaN"}, 5, None], fCnt=-1), protocol="lorawan"),
    # Frigate
    Case("frigate-no-after", CAMERA, lambda d, now: [("frigate/events", b'{"type": "update", "before": null}')],
         ("wrong_type",)),
    Case("frigate-no-camera", CAMERA, lambda d, now: [frigate(d, drop=("camera",))], ("wrong_type",)),
    Case("frigate-no-times", CAMERA, lambda d, now: [frigate(d, drop=("frame_time", "start_time", "end_time"))],
         ("bad_timestamp",)),
    Case("frigate-no-score", CAMERA, lambda d, now: [frigate(d, drop=("score", "top_score"))], ("wrong_type",)),
    Case("frigate-score-as-text", CAMERA, lambda d, now: [frigate(d, score="high", top_score="high")], ("wrong_type",)),
    Case("frigate-unknown-type", CAMERA, lambda d, now: [("frigate/events", frigate(d)[1].replace(b'"update"', b'"teleport"'))],
         ("wrong_type",)),
    Case("frigate-zones-not-a-list", CAMERA, lambda d, now: [frigate(d, current_zones="no_parking")], ("wrong_type",)),
    Case("frigate-label-10k-chars", CAMERA, lambda d, now: [frigate(d, label="car" * 3400)], ("wrong_type",)),
    Case("frigate-start-time-absurd", CAMERA, lambda d, now: [frigate(d, label="vendor", frame_time=now - 400,
                                                                     start_time=-1e308)],
         ("bad_timestamp", "timestamp_out_of_range", "bad_value")),
    Case("frigate-unknown-camera", None, lambda d, now: [frigate("CAM-NOT-REGISTERED")]),
]


def _padded(device: str, now: float, size: int) -> bytes:
    head = json.dumps({"device": device, "ts": now, "readings": BENIGN, "pad": ""}).encode()
    return head[:-2] + b"x" * max(0, size - len(head)) + b'"}'


def _edited(message, edit):
    return message[0], edit(message[1])


def _mismatched_eui(device: str, now: float):
    topic, payload = chirpstack(device, now)
    doc = json.loads(payload)
    doc["deviceInfo"]["devEui"] = "ffffffffffffffff"
    return topic, json.dumps(doc).encode()


def _unknown_model(now: float):
    topic, payload = chirpstack("HC-UNKNOWN-MODEL", now)
    doc = json.loads(payload)
    doc["deviceInfo"]["deviceProfileName"] = "XYZ-9000"
    return topic, json.dumps(doc).encode()


@pytest.mark.parametrize("case", DEVICE_CASES, ids=[c.id for c in DEVICE_CASES])
def test_device_input(world: World, case: Case):
    before = world.begin(case.id)
    device = world.devices.take(case.kind) if case.kind else None
    messages = case.build(device, time.time())
    if case.clock_offset:
        world.clock_offset[device] = case.clock_offset
    world.send(messages)
    world.check(before, (device,) if device else (), quarantined=len(messages) if case.reasons else 0,
                reasons=case.reasons, may_accept=case.may_accept,
                protocol={device: case.protocol} if device else None)


def test_far_future_reading_does_not_blind_its_device_over_lorawan_and_json(world: World):
    """The issue's blinding: 4102444800, then real alarms from the same device, in both its protocols."""
    before = world.begin("far-future-then-alarms")
    cover = world.devices.cover()
    world.send([own_json(cover, 4102444800, BENIGN), chirpstack(cover, "2100-01-01T00:00:00+00:00"),
                own_json(cover, 1e300, BENIGN)])
    world.check(before, (cover,), quarantined=3, reasons=BAD_TS, protocol={cover: "lorawan"})


def test_retained_poison_message(world: World):
    """A retained message with a clock in ms: the broker hands it to every new subscription."""
    before = world.begin("retained-poison-ms")
    cover = world.devices.cover()
    topic, payload = own_json(cover, time.time() * 1000, BENIGN)
    try:
        world.send([(topic, payload)], retain=True)
        world.check(before, (cover,), quarantined=1, reasons=TOO_FAR)
    finally:
        cleared = world.gateway.quarantined()["malformed_json"]
        world.publisher.publish([(topic, b"")], retain=True)  # the broker forgets it
        # the broker also hands the empty message to the gateway once: let it be counted here, not in the next case
        wait_until(lambda: world.gateway.quarantined()["malformed_json"] > cleared, 30)


def test_flood_of_malformed_messages_is_counted_one_by_one(world: World):
    """5,000 malformed messages: each counted in the quarantine counters although the table keeps only
    [outbox] quarantine_max of them (counters count)."""
    before = world.begin("flood-5000-malformed")
    cover = world.devices.cover()
    topic = telemetry_topic(cover)
    world.send([(topic, b'{"device": "%s", "ts": %d, "readings": {' % (cover.encode(), n)) for n in range(5000)],
               timeout=180)
    world.check(before, (cover,), quarantined=5000, reasons=("malformed_json",), timeout=60)
    database = world.gateway.config.parent / "data" / "gateway.db"
    rows = lambda: read_db(database, "SELECT count(*) FROM quarantine")[0][0]  # noqa: E731
    assert wait_until(lambda: rows() <= QUARANTINE_MAX, 10), \
        f"the quarantine table keeps {rows()} rows, [outbox] quarantine_max is {QUARANTINE_MAX}"


def test_flood_of_10000_device_ids_of_2000_characters(world: World):
    """The issue's flood (ids of 2,000 characters, topics over 512): each quarantined and counted,
    the table trimmed, the file within its budget."""
    before = world.begin("flood-10000-ids-of-2000-chars")
    now = time.time()
    world.send([own_json(f"U{n:05d}-" + "u" * 1993, now, BENIGN) for n in range(10_000)], timeout=240)
    world.check(before, (), quarantined=10_000, reasons=("bad_topic", "bad_device_id"), timeout=90)
    data = world.gateway.config.parent / "data"
    assert wait_until(lambda: _files_size(data) <= BUDGET, 30), f"gateway.db files {_files(data)} over {BUDGET}"


def test_flood_of_5000_unknown_devices(world: World):
    """5,000 devices not in the registry (ids of 120 characters): remembered up to
    [ingest] unknown_devices_max, the most recent ones."""
    before = world.begin("flood-5000-unknown-devices")
    now = time.time()
    world.send([own_json(f"N{n:05d}-" + "n" * 113, now, BENIGN) for n in range(5000)], timeout=240)
    world.check(before, (), timeout=90)
    unknown = world.gateway.metric("edge_unknown_devices")
    assert unknown is not None and 0 < unknown <= UNKNOWN_MAX, f"edge_unknown_devices {unknown}, bound {UNKNOWN_MAX}"


def _files(data: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in data.glob("gateway.db*") if p.is_file()}


def _files_size(data: Path) -> int:
    return sum(size for name, size in _files(data).items() if not name.endswith("-shm"))


def test_flood_of_10MB_payloads_stays_within_the_disk_budget(world: World, tally: Tally):
    """20 payloads of 10 MB from registered devices: each quarantined as payload_too_large with a
    truncated copy and its full length; gateway.db and its WAL stay within [outbox] max_bytes."""
    before = world.begin("flood-20x10MB")
    covers = [world.devices.cover() for _ in range(2)]
    now = time.time()
    world.send([(telemetry_topic(covers[n % 2]), _padded(covers[n % 2], now, 10 * MB)) for n in range(20)], timeout=240)
    world.check(before, tuple(covers), quarantined=20, reasons=("payload_too_large",), timeout=60)
    data = world.gateway.config.parent / "data"
    assert wait_until(lambda: _files_size(data) <= BUDGET, 30), f"gateway.db files {_files(data)} over the budget {BUDGET}"
    tally.figures["files_after_10MB_flood_bytes"] = _files_size(data)  # gateway.db + WAL
    tally.figures["disk_budget_bytes"] = BUDGET
    kept = read_db(data / "gateway.db", "SELECT length(payload), payload_bytes FROM quarantine WHERE reason = ?",
                   ("payload_too_large",))
    assert kept, "no payload_too_large row in the quarantine table"
    assert all(length <= KEEP_BYTES and full >= 10 * MB for length, full in kept), \
        f"quarantined payloads kept (bytes kept, bytes received): {sorted(set(kept))[:5]}"


def test_terminal_escapes_are_not_printed_raw(world: World):
    """Device text with terminal escapes (OSC title, clear screen, colours, a bell, C1 CSI, a bidi
    override) from a LoRaWAN network server, a camera and a device's topic: quarantined, and
    `edge quarantine list` and `edge devices unknown` print it escaped."""
    before = world.begin("terminal-escapes-in-device-text")
    evil = "\x1b]0;pwned\x07\x1b[2J\x1b[31mEVIL\x9b1m\u202e\r"
    topic, payload = chirpstack("HC-ESCAPE", time.time())
    doc = json.loads(payload)
    doc["deviceInfo"]["deviceName"] = evil
    messages = [(topic, json.dumps(doc).encode()), frigate("EVIL\x1b[2J", label="car"),
                (telemetry_topic("EVIL-\u202e-NAME"), own_json("x", time.time(), BENIGN)[1])]
    world.send(messages)
    world.check(before, (), quarantined=3, reasons=("bad_device_id", "wrong_type", "device_mismatch"))
    for command in (["quarantine", "list", "--limit", "20"], ["devices", "unknown"]):
        shown = subprocess.run(edge_command() + [*command, "--config", str(world.gateway.config)],
                               capture_output=True, timeout=60)
        assert shown.returncode == 0, shown.stderr.decode(errors="replace")
        text = shown.stdout.decode("utf-8", "replace")
        if command[0] == "quarantine":
            assert "EVIL" in text, text[:2000]
        assert unescaped_controls(text) == [], f"`edge {' '.join(command)}` printed raw: {unescaped_controls(text)}"


# --- the status port probed with garbage HTTP ------------------------------------------------------

STATUS_PROBES = {
    "status-binary-garbage": lambda port: raw_http(port, os.urandom(4096) + b"\r\n\r\n"),
    "status-request-line-100k": lambda port: raw_http(port, b"GET /" + b"A" * 100_000 + b" HTTP/1.1\r\n\r\n"),
    "status-header-1MB": lambda port: raw_http(port, b"GET /metrics HTTP/1.1\r\nX-Big: " + b"b" * MB + b"\r\n\r\n"),
    "status-1000-headers": lambda port: raw_http(port, b"GET / HTTP/1.1\r\n" + b"".join(
        b"X-%d: y\r\n" % n for n in range(1000)) + b"\r\n"),
    "status-unknown-method": lambda port: raw_http(port, b"BREW /pot HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"),
    "status-negative-content-length": lambda port: raw_http(
        port, b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n" + b"x" * 100),
    "status-half-request-then-close": lambda port: raw_http(port, b"GET /metr", read=False),
    "status-http-0.9": lambda port: raw_http(port, b"GET /\r\n"),
    "status-path-traversal-and-nul": lambda port: raw_http(port, b"GET /../../etc/passwd%00 HTTP/1.1\r\n\r\n"),
}


@pytest.mark.parametrize("probe", list(STATUS_PROBES), ids=list(STATUS_PROBES))
def test_status_port_probed_with_garbage(world: World, probe: str):
    before = world.begin(probe)
    try:
        STATUS_PROBES[probe](world.gateway.status_port)
    except OSError:
        pass  # the server may close on us; that is its right
    world.tally.hostile_messages += 1
    world.check(before, ())
    assert status_answer(world.gateway, "/healthz") == 200


def test_status_port_with_200_idle_connections(world: World):
    """200 connections opened (without waiting for the server to take them) and left idle while the
    gateway works; the status page answers while they are open."""
    before = world.begin("status-200-idle-connections")
    sockets = []
    try:
        for _ in range(200):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", world.gateway.status_port))
            sockets.append(sock)
        world.tally.hostile_messages += len(sockets)
        world.check(before, ())
        assert status_answer(world.gateway, "/healthz") == 200
    finally:
        for sock in sockets:
            sock.close()


# --- the platform and the network: a second gateway behind a platform that lies -------------------

@pytest.fixture(scope="module")
def platform_world(tmp_path_factory, tally):
    """A gateway behind a LyingPlatform, on a Mosquitto of its own (persistent, so that it can be
    restarted), with a copy of the shipped rules (the platform pushes files into it)."""
    folder = tmp_path_factory.mktemp("platform-world")
    rules = folder / "rules"
    shutil.copytree(RULES, rules)
    broker = start_mosquitto(folder / "broker", persistent=True)
    worlds = []
    try:
        with open_world(folder, broker, front=LyingPlatform, credentials=f"installer:{SECRET}", rules=rules,
                        tally=tally, uplink="timeout = 2.0\ndownlink_interval = 0.2\n") as w:
            worlds.append(w)
            yield w
    finally:
        for each in [broker, *(w.broker for w in worlds)]:  # the broker it runs on now, if restarted
            each.stop()


SECRET = "s3cr3t-Pw0rd"  # in the platform world's uplink URL: it must never be shown

UPLINK_LIES = {
    "platform-answers-500": ["fail", "fail", "fail"],
    "platform-hangs": ["hang"],
    "platform-drops-the-connection": ["close", "close"],
    "platform-200-with-html-captive-portal": ["html", "html"],
    "platform-acknowledges-revisions-it-was-not-sent": ["fake_ack"],
    "platform-acknowledgements-of-wrong-types": ["garbage_ack"],
    "platform-answer-not-an-object": ["not_object"],
    "platform-answer-20MB": ["huge"],
    "platform-loses-the-acknowledgement": ["lose_ack"],
    "platform-401-token-expired": ["unauthorized"],
    "platform-redirects-forever": ["redirect"],
}


@pytest.mark.parametrize("lie", list(UPLINK_LIES), ids=list(UPLINK_LIES))
def test_platform_that_lies_on_uplink(platform_world: World, lie: str):
    w = platform_world
    before = w.begin(lie)
    steps = UPLINK_LIES[lie]
    seen = len(w.front.seen)
    w.front.plan.extend(steps)
    w.tally.hostile_messages += len(steps)
    w.check(before, (), witness_kind="bin", timeout=40)
    assert w.front.seen[seen:seen + len(steps)] == steps, f"the lies told: {w.front.seen[seen:]}"
    # a platform that lies is not a fault of the gateway's (docs/operations.md): the uplink part stays ok
    assert w.gateway.metric("edge_part_up", part="uplink") == 1


def _rule_file(name: str, when: str = "temp_c > 1000", category: str = "bin_fire", extra: str = "") -> str:
    return (f"rules:\n  - name: {name}\n    applies_to: {{kind: bin}}\n    when: {when}\n{extra}"
            f"    order: {{category: {category}, severity: minor, title: \"{name} {{device}}\"}}\n")


ALIAS_BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
rules:
  - name: bomb
    applies_to: {kind: bin, devices: *i}
    when: temp_c > 1000
    order: {category: bin_fire, severity: minor, title: *i}
"""


@dataclass(frozen=True)
class Push:
    """A downlink item from the platform; ``file`` is written to rules/ only when ``applied``."""

    id: str
    item: Callable[[int, World], object]
    reasons: tuple[str, ...] = ()       # a refusal reported with one of these (empty: any reason)
    applied: bool = False
    file: str | None = None
    restart: bool = False               # the gateway must still start afterwards
    has_seq: bool = True                # an item without a seq cannot be reported: the next one must be applied


def _rules_push(name: str, content: str):
    return lambda seq, w: {"seq": seq, "type": "rules", "file": name, "content": content}


DOWNLINK_PUSHES = [
    Push("push-valid-rule-file-is-applied", _rules_push("hostile_control.yaml", _rule_file("hostile_control")),
         applied=True, file="hostile_control.yaml"),
    Push("push-rule-5000-nested-parentheses", _rules_push("deep.yaml", _rule_file("deep", "(" * 5000 + "temp_c > 1"
                                                                                  + ")" * 5000)),
         ("rule_file_invalid",), file="deep.yaml"),
    Push("push-yaml-alias-bomb", _rules_push("bomb.yaml", ALIAS_BOMB), ("rule_file_invalid",), file="bomb.yaml"),
    Push("push-rule-unknown-category", _rules_push("category.yaml", _rule_file("odd", category="no_such_category")),
         ("rule_file_invalid",), file="category.yaml", restart=True),
    Push("push-rule-file-5MB", _rules_push("big.yaml", _rule_file("big") + "#" + "x" * (5 * MB) + "\n"),
         ("rule_file_invalid",), file="big.yaml"),
    Push("push-rule-file-not-yaml", _rules_push("binary.yaml", "\x00\x01\x02 rules: [ {{{ \t\x7f"),
         ("rule_file_invalid",), file="binary.yaml"),
    Push("push-rule-file-name-traversal", _rules_push("../../escaped.yaml", _rule_file("escaped")), (),
         file="../../escaped.yaml"),
    Push("push-rule-content-not-text", lambda seq, w: {"seq": seq, "type": "rules", "file": "obj.yaml",
                                                      "content": {"rules": [1, 2]}},
         ("rule_file_invalid", "malformed_change"), file="obj.yaml"),
    Push("change-without-order-id", lambda seq, w: {"seq": seq, "type": "order", "state": "accepted"},
         ("malformed_change",)),
    Push("change-order-id-is-an-object", lambda seq, w: {"seq": seq, "type": "order", "order_id": {"a": 1},
                                                        "state": "accepted"}, ("malformed_change",)),
    Push("change-for-an-unknown-order", lambda seq, w: {"seq": seq, "type": "order", "order_id": "gw-hostile-nope",
                                                       "state": "accepted"}, ("unknown_order",)),
    Push("change-to-an-unknown-state", lambda seq, w: {"seq": seq, "type": "order", "order_id": w.last_order,
                                                      "state": "exploded"},
         ("illegal_transition", "malformed_change")),
    Push("change-of-unknown-type", lambda seq, w: {"seq": seq, "type": "firmware", "url": "http://evil/x.bin"}),
    Push("change-not-an-object", lambda seq, w: ["seq", seq], has_seq=False),
    Push("change-without-seq", lambda seq, w: {"type": "order", "order_id": w.last_order, "state": "accepted"},
         has_seq=False),
    Push("change-seq-as-text", lambda seq, w: {"seq": "DROP TABLE cursors", "type": "order",
                                              "order_id": w.last_order, "state": "accepted"}, has_seq=False),
]


@pytest.mark.parametrize("push", DOWNLINK_PUSHES, ids=[p.id for p in DOWNLINK_PUSHES])
def test_platform_pushes_hostile_downlink(platform_world: World, push: Push):
    """Each item is refused with a reason reported back to the platform (or, for the valid file,
    applied), the cursor moves past it, nothing refused is written to rules/, the uplink and the
    rest of the gateway go on; after a refused unknown category the gateway still starts."""
    w = platform_world
    before = w.begin(push.id)
    w.last_order = _some_order_id(w)
    counted = _downlink_counters(w)
    seq = _next_seq(w)
    w.front.push(seq, push.item(seq, w))
    w.tally.hostile_messages += 1
    if push.has_seq:
        assert wait_until(lambda: max(w.front.afters[-3:] or [0]) >= seq and w.front.report(seq) is not None, 30), (
            f"[{push.id}] the gateway did not move its downlink cursor past {seq} and report it "
            f"(afters {w.front.afters[-3:]}, reports {w.front.reports[-3:]}); log:\n{w.gateway.log_tail(8)}")
        report = w.front.report(seq)
        if push.applied:
            assert report.get("status") == "applied", report
        else:
            assert report.get("status") == "refused", report
            if push.reasons:
                assert report.get("reason") in push.reasons, report
            assert report.get("detail"), f"a refusal without a detail: {report}"
    else:
        _assert_next_push_applied(w, seq + 1, push.id)
    if push.file:
        written = (w.rules / push.file).resolve()
        assert written.exists() == push.applied, f"{written} exists: {written.exists()}"
    if push.has_seq:
        now_counted = _downlink_counters(w)
        grew = {k: now_counted[k] - counted.get(k, 0) for k in now_counted if now_counted[k] != counted.get(k, 0)}
        if push.applied:
            want = {"edge_rule_files_applied_total": 1}
        elif push.file:
            want = {"edge_rule_files_refused_total": 1, f"edge_downlink_refused_total:{report['reason']}": 1}
        else:
            want = {f"edge_downlink_refused_total:{report['reason']}": 1}
        assert {k: grew.get(k) for k in want} == want, f"the metrics counted {grew}, want {want}"
    w.check(before, (), timeout=30)
    if push.restart:
        assert w.gateway.stop() == 0, "the gateway did not stop cleanly on SIGTERM"
        w.gateway.start()  # raises when it does not start
        again = w.begin(push.id + "-then-restart")
        w.check(again, ())


def _downlink_counters(w: World) -> dict[str, float]:
    """edge_rule_files_applied_total, edge_rule_files_refused_total, edge_downlink_refused_total:<reason>."""
    metrics = w.gateway.metrics()
    out = {name: sum(metrics.get(name, {}).values())
           for name in ("edge_rule_files_applied_total", "edge_rule_files_refused_total")}
    for labels, value in metrics.get("edge_downlink_refused_total", {}).items():
        out[f"edge_downlink_refused_total:{dict(labels).get('reason')}"] = value
    return out


def _assert_next_push_applied(w: World, seq: int, case: str) -> None:
    """A valid rule file pushed after a broken item is applied: the downlink moved on."""
    name = f"after_{seq}.yaml"
    w.front.push(seq, {"seq": seq, "type": "rules", "file": name, "content": _rule_file(f"after_{seq}")})
    assert wait_until(lambda: (w.rules / name).exists(), 30), (
        f"[{case}] a valid rule file pushed after it was never applied: the downlink is stuck "
        f"(afters {w.front.afters[-3:]}); log:\n{w.gateway.log_tail(8)}")


DOWNLINK_ANSWERS = {
    "downlink-200-html": (200, "text/html", b"<html>portal</html>"),
    "downlink-changes-not-a-list": (200, "application/json", b'{"changes": {"seq": 1}}'),
    "downlink-changes-of-scalars": (200, "application/json", b'{"changes": [1, "two", null, [3]]}'),
    "downlink-body-cut-short": (200, "application/json", b'{"changes": ['),
    "downlink-500": (500, "text/plain", b"oops"),
}


@pytest.mark.parametrize("answer", list(DOWNLINK_ANSWERS), ids=list(DOWNLINK_ANSWERS))
def test_platform_downlink_answers_garbage(platform_world: World, answer: str):
    """The changes endpoint answers garbage a few times: the gateway stays up, keeps uplinking and
    takes the next valid change."""
    w = platform_world
    before = w.begin(answer)
    asked = len(w.front.afters)
    w.front.changes_answer = DOWNLINK_ANSWERS[answer]
    w.tally.hostile_messages += 1
    try:
        assert wait_until(lambda: len(w.front.afters) >= asked + 2, 20), "the downlink stopped asking"
    finally:
        w.front.changes_answer = None
    w.check(before, ())
    _assert_next_push_applied(w, _next_seq(w), answer)


def test_platform_change_with_seq_2_pow_64(platform_world: World):
    """A seq that no SQLite integer holds: refused, the gateway goes on."""
    w = platform_world
    before = w.begin("downlink-seq-2-pow-64")
    seq = _next_seq(w)
    w.front.push(seq, {"seq": 2 ** 64, "type": "order", "order_id": _some_order_id(w), "state": "accepted"})
    w.tally.hostile_messages += 1
    _assert_next_push_applied(w, seq + 1, "downlink-seq-2-pow-64")
    w.check(before, ())


def _some_order_id(w: World) -> str:
    orders = w.receiver.orders()
    return orders[-1]["order_id"] if orders else "gw-hostile-none"


def _next_seq(w: World) -> int:
    return max([cursor for cursor, _ in w.front.changes] + [0]) + 1


def test_broker_restart_mid_stream(platform_world: World):
    """Alarms from 10 devices published while the device broker restarts: each order once, same PID."""
    w = platform_world
    before = w.begin("broker-restart-mid-stream")
    bins = [w.devices.bin() for _ in range(10)]
    first = [alarm(b, "bin", time.time()) for b in bins[:5]]
    w.publisher.publish([m for a in first for m in a.messages])
    w.broker.stop()
    time.sleep(1.0)  # the broker is away a moment
    w.broker = start_mosquitto(w.broker.log_path.parent, port=w.broker.port, persistent=True)
    w.publisher.connect()
    second = [alarm(b, "bin", time.time()) for b in bins[5:]]
    w.publisher.publish([m for a in second for m in a.messages])
    w.tally.hostile_messages += 1
    w.check(before, (), already=tuple(first + second), timeout=60)


def test_credentials_in_the_uplink_url_are_never_shown(platform_world: World):
    """After all the platform's lies (each logged with the URL it failed on), the password in
    [uplink] url is in no log line, status page, /status.json, /metrics or `edge status` output."""
    w = platform_world
    w.front.plan.extend(["fail", "close", "html"])
    before = w.begin("credentials-in-uplink-url")
    w.check(before, (), timeout=40)
    shown = {path: requests.get(w.gateway.url + path, timeout=10).text for path in ("/", "/status.json", "/metrics")}
    status = subprocess.run(edge_command() + ["status", "--config", str(w.gateway.config)], capture_output=True,
                            timeout=60)
    shown["edge status"] = status.stdout.decode(errors="replace") + status.stderr.decode(errors="replace")
    shown["gateway log"] = w.gateway.log.read_text(errors="replace")
    leaked = sorted(where for where, text in shown.items() if SECRET in text)
    assert leaked == [], f"the uplink password is shown in: {leaked}"
    assert "uplink failed" in shown["gateway log"] or "HTTP 500" in shown["gateway log"], \
        "the lies left no trace in the log: the URL was never logged, so this test proves nothing"


# --- the disk: a partition that fills ---------------------------------------------------------------

def _namespace_wrapper(data_dir: Path, size: str) -> tuple[str, ...]:
    """The gateway in a mount namespace of its own, with data_dir a tmpfs of ``size``."""
    script = 'mount -t tmpfs -o size="$1" tmpfs "$2" && shift 2 && exec "$@"'
    namespace = ("unshare", "--mount", "--propagation", "private") if os.geteuid() == 0 else \
        ("unshare", "--user", "--map-root-user", "--mount")
    return (*namespace, "sh", "-c", script, "sh", size, str(data_dir))


def test_partition_that_fills(tmp_path, tally):
    """gateway.db on a 24 MB partition that another writer keeps full: the gateway keeps running,
    says so in health (/healthz 503, edge_part_up{part="disk"} 0), does not acknowledge what it
    cannot store, and, when the space returns, is healthy again by itself and delivers every alarm
    sent meanwhile exactly once. The time from freeing the space to the last order delivered is
    the README's recovery figure."""
    assert shutil.which("unshare"), "this test needs util-linux's unshare to give the gateway a partition of its own"
    data = tmp_path / "data"
    data.mkdir()
    broker = start_mosquitto(tmp_path / "broker")
    try:
        with open_world(tmp_path, broker, tally=tally, devices=(20, 40, 4),
                        wrapper=_namespace_wrapper(data, "24m")) as w:
            inside = Path(f"/proc/{w.gateway.pid}/root") / data.relative_to("/")
            assert wait_until(lambda: (inside / "gateway.db").exists(), 20), "gateway.db is not on the small partition"
            before = w.begin("disk-fills")
            failures = w.gateway.metric("edge_write_failures_total") or 0
            filling = threading.Event()
            filler = threading.Thread(target=_keep_full, args=(inside / "filler", filling), daemon=True)
            filling.set()
            filler.start()
            try:
                assert wait_until(lambda: (inside / "filler").exists() and shutil.disk_usage(inside).free < MB, 20), \
                    "the partition did not fill"
                alarms = tuple(alarm(w.devices.bin(), "bin", time.time()) for _ in range(6))
                w.publisher.publish([m for a in alarms for m in a.messages])
                w.tally.hostile_messages += 1
                unhealthy = wait_until(lambda: w.gateway.alive() and _health(w) == (503, 0), 20)
                full_but_running = w.gateway.alive() and w.gateway.pid == before.pid
                write_failures = (w.gateway.metric("edge_write_failures_total") or 0) - failures if full_but_running else 0
            finally:
                filling.clear()
                filler.join(10)
                (inside / "filler").unlink(missing_ok=True)
            freed = time.monotonic()
            assert full_but_running, f"the gateway exited on a full disk: {w.gateway.log_tail(10)}"
            assert unhealthy, f"health while the disk was full: /healthz and edge_part_up{{disk}} {_health(w)}, want (503, 0)"
            assert write_failures > 0, "edge_write_failures_total did not count the commits that found no room"
            w.check(before, (), already=alarms, timeout=60)
            assert wait_until(lambda: _health(w) == (200, 1), 30), f"not healthy again after the space returned: {_health(w)}"
            # freed -> every order sent while full delivered and /healthz 200 again
            tally.figures["disk_full_recovery_s"] = round(time.monotonic() - freed, 1)
    finally:
        broker.stop()


def _keep_full(path: Path, filling: threading.Event) -> None:
    """Another writer on the partition: whatever room appears (a reserve given back), it takes."""
    with path.open("ab", buffering=0) as f:
        while filling.is_set():
            try:
                f.write(b"\0" * 65536)
            except OSError:
                time.sleep(0.05)


def _health(w: World) -> tuple[int, float | None]:
    try:
        return status_answer(w.gateway, "/healthz"), w.gateway.metric("edge_part_up", part="disk")
    except requests.RequestException as error:
        return -1, str(error)
