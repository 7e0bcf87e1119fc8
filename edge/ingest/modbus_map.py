"""Modbus RTU as the gateway reads it: the register map of each polled device kind, and the
frame CRC. The gateway decodes replies with these (modbus_rtu.py, modbus_poll.py); the
simulator serves the same maps (firmware_sim/protocols/modbus.py), so the two cannot drift.

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

import struct
from dataclasses import dataclass

MAX_COUNT = 125
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


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _TABLE[(crc ^ byte) & 0xFF]
    return crc


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<H", crc16(body))


def check_crc(frame: bytes) -> bool:
    return len(frame) >= 4 and struct.unpack("<H", frame[-2:])[0] == crc16(frame[:-2])


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
