"""Decoding of the devices' own JSON telemetry into readings, and the limits every decoder keeps.

Topic ``devices/<device id>/telemetry``, payload::

    {"device": "MH-0003", "ts": 1763830000.25, "readings": {"tilt_deg": 1.5, "open": 0}}

``ts`` is the device's clock, in seconds since the Unix epoch. Values are numbers (a
boolean is taken as 1 or 0), or short text for a camera's label and zone. A payload that
breaks these rules raises ``DecodeError`` with a short reason code, and the caller
quarantines it.

``Limits`` holds what ingest accepts from any device (``[ingest]`` in the config): payload
size, how far a device's clock may be from the gateway's, readings per message. Every
decoder takes it; ``edge.ingest.decoders.decode`` is the one entry point the agent calls.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import orjson

from edge.kinds import KIND_METRICS
from edge.registry import Device
from edge.text_safety import is_clean

MAX_PAYLOAD_BYTES = 64 * 1024  # the default of [ingest] max_payload_bytes
MAX_TEXT = 64  # characters of a text reading (a camera's label or zone)
MAX_METRIC_NAME = 64  # characters of a metric's name
MAX_READINGS = 256  # readings in one message
MAX_MAGNITUDE = 1e15  # largest absolute value of a reading: no sensor reads more, and sums of it stay finite
MAX_DEVICE_ID = 128  # characters of a device id (registry ids are short)
MAX_TOPIC = 512  # characters of a topic
MAX_DETAIL = 400  # characters of a DecodeError's detail


class DecodeError(ValueError):
    """A payload that cannot be decoded; ``reason`` is a short code counted per reason.

    ``detail`` says what was wrong, in at most ``MAX_DETAIL`` characters (a detail quotes
    what the device sent, which may be long)."""

    def __init__(self, reason: str, detail: str):
        if len(detail) > MAX_DETAIL:
            detail = detail[:MAX_DETAIL] + "..."
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Message:
    device_id: str
    ts: float
    values: dict[str, float]
    dedupe_key: tuple | None = None  # the same frame heard twice has the same key (LoRaWAN: fCnt, fPort, bytes)


def _iso(ts: float) -> str:
    """``ts`` as ISO 8601 UTC, or its approximate year when no calendar can show it (never raises)."""
    try:
        return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (ValueError, OverflowError, OSError):
        return f"about year {1970 + ts / 31_556_952:.4g}"


@dataclass(frozen=True)
class Limits:
    """What ingest accepts from a device; ``Limits.from_config(config.ingest)`` for the gateway's.

    A device's time must lie in [received_at - max_past, received_at + max_future], where
    ``received_at`` is the gateway's clock when the message arrived."""

    max_future: float = 600.0
    max_past: float = 7 * 86400.0
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    max_readings: int = MAX_READINGS

    @classmethod
    def from_config(cls, ingest) -> "Limits":
        """From the config's ``[ingest]`` section (edge.config.IngestSection)."""
        return cls(max_future=float(ingest.max_future), max_past=float(ingest.max_past),
                   max_payload_bytes=int(ingest.max_payload_bytes))

    def check_size(self, payload: bytes) -> None:
        check_size(payload, self.max_payload_bytes)

    def check_time(self, ts: float, received_at: float | None, what: str = "ts") -> float:
        """``ts`` if it is within the window around ``received_at`` (no check when that is None)."""
        if received_at is None:
            return ts
        return check_time(ts, received_at, self, what)


DEFAULT_LIMITS = Limits()


def check_size(payload: bytes, max_payload_bytes: int) -> None:
    """Refuse a payload longer than ``max_payload_bytes`` before anything else is done with it."""
    if len(payload) > max_payload_bytes:
        raise DecodeError("payload_too_large", f"{len(payload)} bytes, limit {max_payload_bytes} "
                                               "([ingest] max_payload_bytes)")


def _looks_like(ts: float, earliest: float, latest: float) -> str:
    for unit, factor in (("milliseconds", 1e3), ("microseconds", 1e6), ("nanoseconds", 1e9)):
        if earliest <= ts / factor <= latest:
            return f"; looks like {unit} (send seconds since the epoch)"
    if 0 <= ts < 1e9:  # before 2001-09-09: a clock never set, reset to 1970, or counting from boot
        return "; looks like a clock that was never set or was reset (1970)"
    return ""


def check_time(ts: float, received_at: float, limits: Limits = DEFAULT_LIMITS, what: str = "ts") -> float:
    """``ts`` (a device's time, seconds since the epoch) if it is a finite number within
    [received_at - max_past, received_at + max_future]; otherwise ``DecodeError``
    ``timestamp_out_of_range`` (``bad_timestamp`` if it is not a number at all).

    The detail says the time received, the accepted window and, for a time in ms, µs or ns,
    that it looks like one."""
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        raise DecodeError("bad_timestamp", f"{what} must be seconds since the epoch, got {ts!r:.80}")
    if not math.isfinite(ts):
        raise DecodeError("bad_timestamp", f"{what} is {ts!r}, not a finite number")
    earliest, latest = received_at - limits.max_past, received_at + limits.max_future
    if earliest <= ts <= latest:
        return float(ts)
    side = "ahead of" if ts > latest else "behind"
    raise DecodeError(
        "timestamp_out_of_range",
        f"{what} {ts!r:.24} ({_iso(ts)}) is {abs(ts - received_at):.6g} s {side} the gateway's clock; accepted "
        f"{_iso(earliest)} .. {_iso(latest)} ([ingest] max_past {limits.max_past:g} s, max_future "
        f"{limits.max_future:g} s){_looks_like(ts, earliest, latest)}",
    )


def load_json(payload: bytes):
    """The JSON document in ``payload``: ``malformed_json``, ``bad_encoding`` (not UTF-8) or
    ``too_deep`` (nested deeper than 1024, orjson's limit) otherwise. A leading UTF-8 byte
    order mark is ignored (RFC 8259 allows a parser to)."""
    if payload[:3] == b"\xef\xbb\xbf":
        payload = payload[3:]
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as error:
        text = str(error)
        if "depth limit" in text or "recursion" in text.lower():
            raise DecodeError("too_deep", f"JSON nested deeper than orjson's limit of 1024: {text}") from None
        if "UTF-8" in text or "surrogate" in text:
            raise DecodeError("bad_encoding", f"payload is not valid UTF-8: {text}") from None
        raise DecodeError("malformed_json", text) from None
    except (RecursionError, MemoryError) as error:  # never seen from orjson; a poison message all the same
        raise DecodeError("too_deep", f"JSON too deep or too large to parse ({type(error).__name__})") from None


def check_device_id(device_id) -> str:
    """A device id must be 1..128 characters with no control, format or separator character
    and no U+FFFD (a topic that was not UTF-8): ``bad_device_id`` otherwise. Such an id can
    never be a registry id, and it would be printed."""
    if not isinstance(device_id, str) or not device_id:
        raise DecodeError("bad_device_id", f"device id must be non-empty text, got {device_id!r:.80}")
    if len(device_id) > MAX_DEVICE_ID:
        raise DecodeError("bad_device_id", f"device id of {len(device_id)} characters, limit {MAX_DEVICE_ID}: "
                                           f"{device_id[:64]!r}...")
    if not is_clean(device_id):
        raise DecodeError("bad_device_id", f"device id {device_id!r} has control or escape characters")
    if "\ufffd" in device_id:
        raise DecodeError("bad_device_id", f"device id {device_id!r} was not valid UTF-8 (replacement character)")
    return device_id


def check_text(name: str, value: str) -> str:
    """A text reading: at most ``MAX_TEXT`` characters, nothing a terminal would act on."""
    if len(value) > MAX_TEXT:
        raise DecodeError("wrong_type", f"reading {name!r} is text longer than {MAX_TEXT} characters")
    if not is_clean(value):
        raise DecodeError("wrong_type", f"reading {name!r} is text with control or escape characters: {value!r}")
    return value


def check_number(name: str, value: float) -> float:
    """A numeric reading: finite, and at most ``MAX_MAGNITUDE`` either side of 0 (``bad_value``)."""
    if not -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE:  # also false for NaN
        raise DecodeError("bad_value", f"reading {name!r} is {value!r}, outside +-{MAX_MAGNITUDE:g}")
    return value


_GOOD_NAMES: set[str] = set()  # metric names already found good: names repeat in every message
_GOOD_NAMES_MAX = 4096


def check_metric_name(name) -> str:
    if name in _GOOD_NAMES:
        return name
    if not isinstance(name, str) or not name or len(name) > MAX_METRIC_NAME or not is_clean(name):
        raise DecodeError("bad_metric_name", f"metric name must be 1..{MAX_METRIC_NAME} printable characters, "
                                             f"got {name!r:.80}")
    if len(_GOOD_NAMES) >= _GOOD_NAMES_MAX:
        _GOOD_NAMES.clear()
    _GOOD_NAMES.add(name)
    return name


def check_message(message: Message, limits: Limits = DEFAULT_LIMITS, received_at: float | None = None) -> Message:
    """What every decoder's message must be, whatever the protocol: a clean device id, at most
    ``max_readings`` readings with clean names, finite numbers of sane size or short clean
    text, and (with ``received_at``) a time within the window."""
    check_device_id(message.device_id)
    values = message.values
    if len(values) > limits.max_readings:
        raise DecodeError("too_many_readings", f"{len(values)} readings in one message, limit {limits.max_readings}")
    good = _GOOD_NAMES
    for name, value in values.items():
        if name not in good:
            check_metric_name(name)
        cls = value.__class__
        if cls is float or cls is int:
            if not -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE:
                check_number(name, value)
        elif cls is str:
            check_text(name, value)
        else:
            raise DecodeError("wrong_type", f"reading {name!r} is {value!r:.80}, not a number or text")
    ts = message.ts
    if ts.__class__ is not float or not math.isfinite(ts) or ts <= 0:
        raise DecodeError("bad_timestamp", f"the message's time must be seconds since the epoch, got {ts!r:.80}")
    if received_at is not None:
        check_time(ts, received_at, limits)
    return message


def device_from_topic(topic: str) -> str | None:
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == "devices" and parts[2] == "telemetry" and parts[1]:
        return parts[1]
    return None


def decode_telemetry(topic: str, payload: bytes, limits: Limits = DEFAULT_LIMITS,
                     received_at: float | None = None) -> Message:
    """One own-JSON message; with ``received_at`` (the gateway's clock at arrival) its ``ts``
    must be within ``limits``' window."""
    check_size(payload, limits.max_payload_bytes)
    topic_device = device_from_topic(topic) if len(topic) <= MAX_TOPIC else None
    if topic_device is None:
        raise DecodeError("bad_topic", f"topic {topic[:200]!r} is not devices/<id>/telemetry")
    check_device_id(topic_device)
    data = load_json(payload)
    if not isinstance(data, dict):
        raise DecodeError("wrong_type", "payload is not a JSON object")
    device_id = data.get("device", topic_device)
    if device_id != topic_device:
        raise DecodeError("device_mismatch", f"payload device {device_id!r:.140} on topic of {topic_device!r:.140}")
    ts = data.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts) or ts <= 0:
        raise DecodeError("bad_timestamp", f"ts must be seconds since the epoch, got {ts!r:.80}")
    ts = limits.check_time(float(ts), received_at)
    readings = data.get("readings")
    if not isinstance(readings, dict):
        raise DecodeError("wrong_type", "'readings' must be an object of metric: number")
    if len(readings) > limits.max_readings:
        raise DecodeError("too_many_readings", f"{len(readings)} readings in one message, limit {limits.max_readings}")
    values: dict[str, float | str] = {}
    good = _GOOD_NAMES
    for name, value in readings.items():
        if name not in good:
            check_metric_name(name)
        cls = value.__class__  # orjson gives exactly these classes
        if cls is float:  # orjson never gives inf or nan
            values[name] = value if -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE else check_number(name, value)
        elif cls is int:
            values[name] = check_number(name, float(value))
        elif cls is bool:
            values[name] = 1.0 if value else 0.0
        elif cls is str:
            values[name] = check_text(name, value)
        else:
            raise DecodeError("wrong_type", f"reading {name!r} is {value!r:.80}, not a number or text")
    return Message(topic_device, ts, values)


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
        raise DecodeError("wrong_type", f"{device.kind} reading {name!r} must be {want}, got {value!r:.80}")


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
