"""Modbus RTU replies from RS-485 sensors polled over serial (``edge/ingest/modbus_poll.py``).

The poller reads each device's whole register map with one request and hands the reply
frame, exactly as it came off the line, to this decoder under the internal topic
``modbus/<unit>/<device id>`` (never subscribed to on MQTT). An empty frame means the unit
did not answer in time. The register map is chosen by the registry's ``model`` (``MODELS``);
the maps themselves, the frames (pymodbus's) and the scaling are the simulator's
(``firmware_sim/protocols/modbus.py``), imported, not copied. The reading's time is the
measurement time the device keeps in its registers.

Reasons a reply is quarantined: ``timeout`` (no answer), ``crc`` (bad CRC, which includes a
truncated frame), ``exception`` (the device answered a Modbus exception), ``bad_reply``
(another unit, function or register count), ``unknown_model``, ``no_reading`` (the device
answered but has not measured yet), ``bad_timestamp``, ``timestamp_out_of_range`` (the
device's clock is outside the accepted window: never set, reset, or far off).
"""

from __future__ import annotations

from pymodbus.pdu import ExceptionResponse

from edge.ingest.modbus_map import REGISTER_MAPS, Reg, check_crc, from_registers, parse_reply

from edge.ingest.decode import DEFAULT_LIMITS, MAX_TOPIC, DecodeError, Limits, Message, check_device_id, check_size

NAME = "modbus_rtu"
TOPIC_FILTER = None  # polled, not subscribed
TOPIC_PREFIX = "modbus/"

# Device model (registry ``model``) -> (register map name, its registers).
MODELS: dict[str, tuple[str, tuple[Reg, ...]]] = {
    "MC-200R": ("manhole_cover", REGISTER_MAPS["manhole_cover"]),
    "SB-120R": ("bin", REGISTER_MAPS["bin"]),
}

EXCEPTIONS = {1: "illegal function", 2: "illegal data address", 3: "illegal data value", 4: "device failure",
              5: "acknowledge", 6: "device busy", 10: "gateway path unavailable", 11: "gateway target failed"}


def topic_for(unit: int, device_id: str) -> str:
    return f"{TOPIC_PREFIX}{unit}/{device_id}"


def matches(topic: str) -> bool:
    return topic.startswith(TOPIC_PREFIX)


def _parse_topic(topic: str) -> tuple[int, str]:
    parts = topic.split("/", 2)
    if len(topic) > MAX_TOPIC or len(parts) != 3 or parts[0] != "modbus" or not (parts[1].isascii() and parts[1].isdigit()) or not parts[2]:
        raise DecodeError("bad_topic", f"topic {topic[:200]!r} is not modbus/<unit>/<device id>")
    if len(parts[1]) > 3:
        raise DecodeError("bad_topic", f"Modbus unit {parts[1][:20]!r}... is outside 1..247")
    unit = int(parts[1])
    if not 1 <= unit <= 247:
        raise DecodeError("bad_topic", f"Modbus unit {unit} is outside 1..247")
    return unit, check_device_id(parts[2])


def register_count(model: str) -> int | None:
    entry = MODELS.get(model)
    return len(entry[1]) if entry else None


def decode(topic: str, payload: bytes, model_of=None, limits: Limits = DEFAULT_LIMITS,
           received_at: float | None = None, vendor=None) -> Message:
    """``payload`` is the reply frame to a read of the device's whole register map (function 03 or 04)."""
    check_size(payload, limits.max_payload_bytes)
    unit, device_id = _parse_topic(topic)
    model = model_of(device_id) if model_of else None
    if model not in MODELS:
        raise DecodeError("unknown_model", f"no Modbus register map for device {device_id!r} (model {model!r}); "
                                           f"models: {', '.join(MODELS)}")
    kind, registers = MODELS[model]
    if not payload:
        raise DecodeError("timeout", f"unit {unit} did not answer")
    if not check_crc(payload):
        raise DecodeError("crc", f"reply from unit {unit} has a bad CRC or is cut short: {payload[:64].hex(' ')}")
    if payload[0] != unit:
        raise DecodeError("bad_reply", f"reply from unit {payload[0]} to a request for unit {unit}")
    pdu = parse_reply(payload)
    if payload[1] & 0x80:
        code = pdu.exception_code if isinstance(pdu, ExceptionResponse) and len(payload) == 5 else -1
        raise DecodeError("exception", f"unit {unit} answered exception {code} "
                                       f"({EXCEPTIONS.get(code, 'unknown')}) to function {payload[1] & 0x7F}")
    count = len(registers)
    if (pdu is None or pdu.function_code not in (3, 4) or len(payload) != 5 + 2 * count or payload[2] != 2 * count
            or len(pdu.registers) != count):
        raise DecodeError("bad_reply", f"unit {unit}: expected function 3 or 4 with {count} registers, "
                                       f"got {payload[:64].hex(' ')}")
    regs = list(pdu.registers)
    ts, values = from_registers(kind, regs)
    if ts is None:
        raise DecodeError("no_reading", f"unit {unit} ({device_id}) has not measured yet")
    if ts <= 0:
        raise DecodeError("bad_timestamp", f"unit {unit} ({device_id}) measurement time is {ts!r}")
    ts = limits.check_time(ts, received_at, f"unit {unit} ({device_id}) measurement time")
    return Message(device_id, ts, values)
