"""ChirpStack v4-style LoRaWAN uplink events on ``application/<app>/device/<devEUI>/event/up``.

The event's ``data`` is the device's binary frame in base64; the codec is chosen by the
registry's ``model`` for the device (``deviceInfo.deviceName`` is the registry id), or, when
the registry has no codec model for it, by ``deviceInfo.deviceProfileName``. The reading's
time is the event's ``time`` (LoRaWAN frames carry no clock); ``rssi_dbm`` comes from the
first ``rxInfo`` entry. The message's ``dedupe_key`` (device, ``fCnt``, fPort, data) lets the
agent count an uplink heard by several gateways once (``edge/ingest/dedupe.py``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import math

import orjson

from edge.ingest import codecs
from edge.ingest.decode import MAX_PAYLOAD_BYTES, DecodeError, Message

NAME = "chirpstack"
TOPIC_FILTER = "application/+/device/+/event/up"


def matches(topic: str) -> bool:
    parts = topic.split("/")
    return len(parts) == 6 and parts[0] == "application" and parts[2] == "device" and parts[4:] == ["event", "up"]


def parse_time(value) -> float:
    if not isinstance(value, str):
        raise DecodeError("bad_timestamp", f"'time' must be an ISO 8601 text, got {value!r}")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise DecodeError("bad_timestamp", f"'time' is not ISO 8601: {value[:64]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    try:
        ts = parsed.timestamp()
    except (OverflowError, ValueError, OSError):
        raise DecodeError("bad_timestamp", f"'time' out of range: {value[:64]!r}") from None
    if not math.isfinite(ts) or ts <= 0:
        raise DecodeError("bad_timestamp", f"'time' is before the epoch: {value[:64]!r}")
    return ts


def decode(topic: str, payload: bytes, model_of=None) -> Message:
    """``model_of(device_id)`` gives the registry's model of a device, or None."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise DecodeError("oversized", f"{len(payload)} bytes, limit {MAX_PAYLOAD_BYTES}")
    if not matches(topic):
        raise DecodeError("bad_topic", f"topic {topic!r} is not application/<app>/device/<devEUI>/event/up")
    topic_eui = topic.split("/")[3]
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError as error:
        raise DecodeError("malformed_json", str(error)) from None
    if not isinstance(event, dict):
        raise DecodeError("wrong_type", "uplink event is not a JSON object")
    info = event.get("deviceInfo")
    if not isinstance(info, dict):
        raise DecodeError("wrong_type", "'deviceInfo' must be an object")
    device_id = info.get("deviceName")
    if not isinstance(device_id, str) or not device_id:
        raise DecodeError("wrong_type", "'deviceInfo.deviceName' must be the device's registry id")
    eui = info.get("devEui")
    if eui is not None and (not isinstance(eui, str) or eui.lower() != topic_eui.lower()):
        raise DecodeError("device_mismatch", f"event devEui {eui!r} on topic of {topic_eui!r}")
    ts = parse_time(event.get("time"))
    fport = event.get("fPort")
    if isinstance(fport, bool) or not isinstance(fport, int):
        raise DecodeError("wrong_type", f"'fPort' must be an integer, got {fport!r}")
    data = event.get("data")
    if not isinstance(data, str):
        raise DecodeError("wrong_type", "'data' must be base64 text")
    try:
        frame = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError("bad_base64", f"'data' is not base64: {data[:64]!r}") from None
    model = model_of(device_id) if model_of else None
    if model not in codecs.CODECS:
        profile = info.get("deviceProfileName")
        model = profile if isinstance(profile, str) else None
    if model not in codecs.CODECS:
        raise DecodeError("unknown_model", f"no codec for device {device_id!r} (model {model!r}); "
                                           f"models: {', '.join(codecs.CODECS)}")
    try:
        values: dict[str, float | str] = dict(codecs.decode(model, fport, frame))
    except codecs.CodecError as error:
        raise DecodeError(error.reason, error.detail) from None
    rx = event.get("rxInfo")
    if isinstance(rx, list) and rx and isinstance(rx[0], dict):
        rssi = rx[0].get("rssi")
        if isinstance(rssi, (int, float)) and not isinstance(rssi, bool) and math.isfinite(rssi):
            values["rssi_dbm"] = float(rssi)
    fcnt = event.get("fCnt")
    key = (device_id, fcnt, fport, data) if isinstance(fcnt, int) and not isinstance(fcnt, bool) else None
    return Message(device_id, ts, values, key)
