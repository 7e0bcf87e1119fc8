"""Decoding of the devices' own JSON telemetry into readings.

Topic ``devices/<device id>/telemetry``, payload::

    {"device": "MH-0003", "ts": 1763830000.25, "readings": {"tilt_deg": 1.5, "open": 0}}

``ts`` is the device's clock, in seconds since the Unix epoch. Values are numbers (a
boolean is taken as 1 or 0), or short text for a camera's label and zone. A payload that breaks these rules raises ``DecodeError`` with
a short reason code, and the caller quarantines it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import orjson

from edge.kinds import KIND_METRICS
from edge.registry import Device

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_TEXT = 64


class DecodeError(ValueError):
    """A payload that cannot be decoded; ``reason`` is a short code counted per reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Message:
    device_id: str
    ts: float
    values: dict[str, float]
    dedupe_key: tuple | None = None  # the same frame heard twice has the same key (LoRaWAN: fCnt, fPort, bytes)


def device_from_topic(topic: str) -> str | None:
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == "devices" and parts[2] == "telemetry" and parts[1]:
        return parts[1]
    return None


def decode_telemetry(topic: str, payload: bytes) -> Message:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise DecodeError("oversized", f"{len(payload)} bytes, limit {MAX_PAYLOAD_BYTES}")
    topic_device = device_from_topic(topic)
    if topic_device is None:
        raise DecodeError("bad_topic", f"topic {topic!r} is not devices/<id>/telemetry")
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as error:
        raise DecodeError("malformed_json", str(error)) from None
    if not isinstance(data, dict):
        raise DecodeError("wrong_type", "payload is not a JSON object")
    device_id = data.get("device", topic_device)
    if device_id != topic_device:
        raise DecodeError("device_mismatch", f"payload device {device_id!r} on topic of {topic_device!r}")
    ts = data.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts) or ts <= 0:
        raise DecodeError("bad_timestamp", f"ts must be seconds since the epoch, got {ts!r}")
    readings = data.get("readings")
    if not isinstance(readings, dict):
        raise DecodeError("wrong_type", "'readings' must be an object of metric: number")
    values: dict[str, float | str] = {}
    isfinite = math.isfinite
    for name, value in readings.items():
        cls = value.__class__  # orjson gives exactly these classes
        if cls is float and isfinite(value):
            values[name] = value
        elif cls is int:
            values[name] = float(value)
        elif cls is bool:
            values[name] = 1.0 if value else 0.0
        elif cls is str:
            if len(value) > MAX_TEXT:
                raise DecodeError("wrong_type", f"reading {name!r} is text longer than {MAX_TEXT} characters")
            values[name] = value
        else:
            raise DecodeError("wrong_type", f"reading {name!r} is {value!r}, not a number or text")
    return Message(topic_device, float(ts), values)


_TEXT = {kind: frozenset(n for n, info in metrics.items() if info.type == "text") for kind, metrics in KIND_METRICS.items()}
_NUMERIC = {kind: frozenset(n for n, info in metrics.items() if info.type != "text") for kind, metrics in KIND_METRICS.items()}
_NONE: frozenset = frozenset()


def check_kinds(device: Device, values: dict[str, float | str]) -> None:
    """A reading's type must be its metric's type for the device's kind (text only where text belongs)."""
    text, numeric = _TEXT.get(device.kind, _NONE), _NUMERIC.get(device.kind, _NONE)
    for name, value in values.items():
        if isinstance(value, str):
            if name not in numeric:
                continue
            want = "a number"
        elif name in text:
            want = "text"
        else:
            continue
        raise DecodeError("wrong_type", f"{device.kind} reading {name!r} must be {want}, got {value!r}")


def derive(device: Device, values: dict[str, float]) -> dict[str, float]:
    """Add the metrics computed from a device's registry parameters.

    A bin reports the ultrasonic distance from its lid to the rubbish; with the bin's
    ``depth_cm`` from the registry that becomes ``fill_pct`` (0 empty, 100 full).
    """
    if device.kind != "bin":
        return values
    if "distance_cm" in values and "fill_pct" not in values:
        depth = device.params.get("depth_cm")
        if depth and depth > 0:
            fill = 100.0 * (1.0 - values["distance_cm"] / depth)
            values["fill_pct"] = min(100.0, max(0.0, fill))
    return values
