"""Modbus RTU as the gateway reads it: the register map of each polled device kind, and the
frames. The gateway decodes replies with these (modbus_rtu.py, modbus_poll.py); the
simulator serves the same maps (firmware_sim/protocols/modbus.py), so the two cannot drift.

Frames (CRC, request and reply PDUs) are pymodbus's (``FramerRTU``, ``DecodePDU``); the
serial exchange around them is ours, for the reasons in docs/ingest.md ("Modbus RTU").

Register map, one 16-bit register each, big-endian, scaled integers:

Manhole cover (model MC-200R)::

    0  tilt_deg      0.1 degree            uint16
    1  open          0 / 1                 uint16
    2  water_cm      0.1 cm                uint16
    3  ch4_lel_pct   0.1 % LEL             uint16
    4  h2s_ppm       0.1 ppm               uint16
    5  temp_c        0.1 degree C          int16
    6  battery_v     mV                    uint16
    7  status        bit 0: in alarm
    8  time (high)   seconds since the epoch of the measurement, uint32 in registers 8-9
    9  time (low)

Bin (model SB-120R)::

    0  distance_cm   0.1 cm                uint16
    1  temp_c        0.1 degree C          int16
    2  tilt_deg      0.1 degree            uint16
    3  battery_v     mV                    uint16
    4  status        bit 0: in alarm
    5  time (high)   seconds since the epoch, uint32 in registers 5-6
    6  time (low)

Registers of a device that has not measured yet read 0xFFFF ("no reading").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest, ReadHoldingRegistersResponse, ReadInputRegistersRequest, ReadInputRegistersResponse,
)

# pymodbus logs a warning for every frame it cannot decode; a noisy line would flood the log, and
# the gateway quarantines such frames with their reason instead.
logging.getLogger("pymodbus.logging").setLevel(logging.ERROR)

MAX_COUNT = ReadHoldingRegistersRequest.MAX_COUNT
NO_READING = 0xFFFF


@dataclass(frozen=True)
class Reg:
    metric: str
    scale: float
    signed: bool = False


REGISTER_MAPS: dict[str, tuple[Reg, ...]] = {
    "manhole_cover": (
        Reg("tilt_deg", 10), Reg("open", 1), Reg("water_cm", 10), Reg("ch4_lel_pct", 10), Reg("h2s_ppm", 10),
        Reg("temp_c", 10, signed=True), Reg("battery_v", 1000), Reg("_status", 1), Reg("_time_hi", 1), Reg("_time_lo", 1),
    ),
    "bin": (
        Reg("distance_cm", 10), Reg("temp_c", 10, signed=True), Reg("tilt_deg", 10), Reg("battery_v", 1000),
        Reg("_status", 1), Reg("_time_hi", 1), Reg("_time_lo", 1),
    ),
}

_CLIENT = FramerRTU(DecodePDU(is_server=False))
_SERVER = FramerRTU(DecodePDU(is_server=True))
READ_REQUESTS = {3: ReadHoldingRegistersRequest, 4: ReadInputRegistersRequest}
READ_REPLIES = {3: ReadHoldingRegistersResponse, 4: ReadInputRegistersResponse}


def with_crc(body: bytes) -> bytes:
    """``body`` (unit, function, data) with its CRC-16/Modbus appended, as pymodbus frames it."""
    return body + FramerRTU.compute_CRC(body).to_bytes(2, "big")


def check_crc(frame: bytes) -> bool:
    return len(frame) >= 4 and FramerRTU.check_CRC(frame[:-2], int.from_bytes(frame[-2:], "big"))


def read_request(unit: int, function: int, address: int, count: int) -> bytes:
    """The master's request frame: read ``count`` registers from ``address`` (function 03 or 04)."""
    return _CLIENT.buildFrame(READ_REQUESTS[function](dev_id=unit, address=address, count=count))


def read_reply(unit: int, function: int, registers: list[int]) -> bytes:
    """The slave's reply frame carrying ``registers``."""
    return _SERVER.buildFrame(READ_REPLIES[function](dev_id=unit, registers=registers))


def exception_reply(unit: int, function: int, code: int) -> bytes:
    return _SERVER.buildFrame(ExceptionResponse(function, code, device_id=unit))


def parse_reply(frame: bytes) -> ModbusPDU | None:
    """The PDU of a reply frame whose CRC is good, or None when pymodbus cannot decode it."""
    return _CLIENT.decoder.decode(frame[1:-2])


def parse_request(frame: bytes) -> ModbusPDU | None:
    """The PDU of a request frame whose CRC is good, or None (an unknown function, a count outside 1..125)."""
    return _SERVER.decoder.decode(frame[1:-2])


def to_registers(kind: str, readings: dict[str, float], t: float, alarm: bool) -> list[int]:
    regs = []
    seconds = int(t)
    for reg in REGISTER_MAPS[kind]:
        if reg.metric == "_status":
            regs.append(1 if alarm else 0)
        elif reg.metric == "_time_hi":
            regs.append((seconds >> 16) & 0xFFFF)
        elif reg.metric == "_time_lo":
            regs.append(seconds & 0xFFFF)
        elif reg.metric not in readings:
            regs.append(NO_READING)
        else:
            raw = round(float(readings[reg.metric]) * reg.scale)
            if reg.signed:
                raw = max(-0x8000, min(0x7FFE, raw)) & 0xFFFF
            else:
                raw = max(0, min(0xFFFE, raw))
            regs.append(raw)
    return regs


def from_registers(kind: str, regs: list[int]) -> tuple[float | None, dict[str, float]]:
    """Readings and measurement time from a device's whole register map (what the gateway decodes)."""
    readings: dict[str, float] = {}
    hi = lo = None
    for reg, raw in zip(REGISTER_MAPS[kind], regs):
        if reg.metric == "_time_hi":
            hi = raw
        elif reg.metric == "_time_lo":
            lo = raw
        elif reg.metric.startswith("_") or raw == NO_READING:
            continue
        else:
            value = raw - 0x10000 if reg.signed and raw >= 0x8000 else raw
            readings[reg.metric] = value / reg.scale
    ts = float((hi << 16) | lo) if hi is not None and lo is not None and hi != NO_READING else None
    return ts, readings
