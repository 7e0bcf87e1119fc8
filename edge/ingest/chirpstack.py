"""ChirpStack v4-style LoRaWAN uplink events on ``application/<app>/device/<devEUI>/event/up``.

The event's ``data`` is the device's binary frame in base64; the codec is chosen by the
registry's ``model`` for the device (``deviceInfo.deviceName`` is the registry id), or, when
the registry has no codec model for it, by ``deviceInfo.deviceProfileName``. A vendor model
(a mapping in ``[codecs] models``, edge/ingest/vendor_models.py) takes the event's ``object``
when the network server decoded the uplink, else runs the model's JavaScript codec on
``data``; either result goes through the model's mapping. A built-in model (edge/ingest/codecs)
decodes ``data``. The reading's
time is the event's ``time`` (LoRaWAN frames carry no clock), or, in an event without one,
the first ``rxInfo`` entry's ``nsTime``, ``gwTime`` or ``time``; with the gateway's
``received_at`` it must be within ``Limits``' window. ``rssi_dbm`` comes from the first
``rxInfo`` entry (left out when it is not a plausible -200..50 dBm). The message's ``dedupe_key`` (device, ``fCnt``, fPort, data) lets the
agent count an uplink heard by several gateways once (``edge/ingest/dedupe.py``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import math

from edge.ingest import codecs
from edge.ingest.decode import DEFAULT_LIMITS, MAX_TOPIC, DecodeError, Limits, Message, check_device_id, check_size, load_json
from edge.ingest.vendor_models import VendorModels

NAME = "chirpstack"
TOPIC_FILTER = "application/+/device/+/event/up"


def matches(topic: str) -> bool:
    parts = topic.split("/")
    return len(parts) == 6 and parts[0] == "application" and parts[2] == "device" and parts[4:] == ["event", "up"]


def parse_time(value, what: str = "time") -> float:
    if not isinstance(value, str):
        raise DecodeError("bad_timestamp", f"'{what}' must be an ISO 8601 text, got {value!r:.80}")
    if len(value) > 64:
        raise DecodeError("bad_timestamp", f"'{what}' is not ISO 8601: {value[:64]!r}...")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise DecodeError("bad_timestamp", f"'{what}' is not ISO 8601: {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    try:
        ts = parsed.timestamp()
    except (OverflowError, ValueError, OSError):
        raise DecodeError("bad_timestamp", f"'{what}' out of range: {value!r}") from None
    if not math.isfinite(ts) or ts <= 0:
        raise DecodeError("bad_timestamp", f"'{what}' is before the epoch: {value!r}")
    return ts


def event_time(event: dict) -> tuple[float, str]:
    """The event's ``time``; without one, the first ``rxInfo`` entry's ``nsTime``, ``gwTime`` or
    ``time``; with the field it came from."""
    if "time" in event:
        return parse_time(event["time"]), "time"
    rx = event.get("rxInfo")
    first = rx[0] if isinstance(rx, list) and rx and isinstance(rx[0], dict) else {}
    for key in ("nsTime", "gwTime", "time"):
        if key in first:
            what = f"rxInfo[0].{key}"
            return parse_time(first[key], what), what
    raise DecodeError("bad_timestamp", "the event has no 'time' (nor rxInfo[0].nsTime, gwTime or time)")


def decode(topic: str, payload: bytes, model_of=None, limits: Limits = DEFAULT_LIMITS,
           received_at: float | None = None, vendor: VendorModels | None = None) -> Message:
    """``model_of(device_id)`` gives the registry's model of a device, or None; ``vendor`` has the
    mapped vendor models (edge/ingest/vendor_models.py)."""
    check_size(payload, limits.max_payload_bytes)
    if len(topic) > MAX_TOPIC or not matches(topic):
        raise DecodeError("bad_topic", f"topic {topic[:200]!r} is not application/<app>/device/<devEUI>/event/up")
    topic_eui = topic.split("/")[3]
    event = load_json(payload)
    if not isinstance(event, dict):
        raise DecodeError("wrong_type", "uplink event is not a JSON object")
    info = event.get("deviceInfo")
    if not isinstance(info, dict):
        raise DecodeError("wrong_type", "'deviceInfo' must be an object")
    device_id = info.get("deviceName")
    if not isinstance(device_id, str) or not device_id:
        raise DecodeError("wrong_type", "'deviceInfo.deviceName' must be the device's registry id")
    check_device_id(device_id)
    eui = info.get("devEui")
    if eui is not None and (not isinstance(eui, str) or eui.lower() != topic_eui.lower()):
        raise DecodeError("device_mismatch", f"event devEui {eui!r:.80} on topic of {topic_eui!r:.80}")
    ts, what = event_time(event)
    ts = limits.check_time(ts, received_at, what)
    fport = event.get("fPort")
    if isinstance(fport, bool) or not isinstance(fport, int):
        raise DecodeError("wrong_type", f"'fPort' must be an integer, got {fport!r:.80}")
    model = model_of(device_id) if model_of else None
    mapped = vendor is not None and model in vendor
    if not mapped and model not in codecs.CODECS:
        profile = info.get("deviceProfileName")
        model = profile if isinstance(profile, str) else None
        mapped = vendor is not None and model in vendor
    if not mapped and model not in codecs.CODECS:
        known = [*codecs.CODECS, *(vendor.models if vendor is not None else ())]
        raise DecodeError("unknown_model", f"no codec for device {device_id!r} (model {model!r:.80}); "
                                           f"models: {', '.join(known)}")
    decoded = event.get("object") if mapped else None
    data = event.get("data")
    try:
        if isinstance(decoded, dict):  # the network server ran the codec: its result, through the mapping
            values: dict[str, float | str] = dict(vendor.from_object(model, decoded))
        else:
            frame = _frame(data)
            if mapped:
                values = dict(vendor.from_bytes(model, fport, frame, device_id))
            else:
                values = dict(codecs.decode(model, fport, frame))
    except codecs.CodecError as error:
        raise DecodeError(error.reason, error.detail) from None
    rx = event.get("rxInfo")
    if isinstance(rx, list) and rx and isinstance(rx[0], dict):
        rssi = rx[0].get("rssi")
        if isinstance(rssi, (int, float)) and not isinstance(rssi, bool) and -200 <= rssi <= 50:
            values["rssi_dbm"] = float(rssi)
    fcnt = event.get("fCnt")
    key = (device_id, fcnt, fport, data) if isinstance(fcnt, int) and not isinstance(fcnt, bool) and isinstance(data, str) else None
    return Message(device_id, ts, values, key)


def _frame(data) -> bytes:
    if not isinstance(data, str):
        raise DecodeError("wrong_type", "'data' must be base64 text")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError("bad_base64", f"'data' is not base64: {data[:64]!r}") from None
