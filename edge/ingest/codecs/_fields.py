"""Scaled big-endian integer fields, shared by the model codecs."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from edge.ingest.codecs._errors import CodecError


@dataclass(frozen=True)
class Field:
    metric: str
    fmt: str          # struct code: "H" uint16, "h" int16, "B" uint8
    scale: float      # raw = round(value * scale)
    sentinel: int     # raw value meaning "no reading"

    def raw(self, readings: dict[str, float]) -> int:
        value = readings.get(self.metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return self.sentinel
        lo, hi = _RANGES[self.fmt]
        raw = round(float(value) * self.scale)
        if raw == self.sentinel:  # keep the sentinel for "no reading"
            raw -= 1 if raw > 0 else -1
        if not lo <= raw <= hi:
            raise CodecError("bad_value", f"{self.metric}={value} does not fit the frame ({lo / self.scale}..{hi / self.scale})")
        return raw


_RANGES = {"H": (0, 0xFFFF), "h": (-0x8000, 0x7FFF), "B": (0, 0xFF)}


def pack(flags: int, fields: tuple[Field, ...], readings: dict[str, float]) -> bytes:
    layout = ">B" + "".join(f.fmt for f in fields)
    return struct.pack(layout, flags, *(f.raw(readings) for f in fields))


_LAYOUTS: dict[int, tuple[struct.Struct, tuple[tuple[str, int, float], ...]]] = {}


def _layout(fields: tuple[Field, ...]) -> tuple[struct.Struct, tuple[tuple[str, int, float], ...]]:
    """The compiled frame layout of a field table, made once per table (codecs keep theirs for good)."""
    known = _LAYOUTS.get(id(fields))
    if known is None:
        known = (struct.Struct(">B" + "".join(f.fmt for f in fields)),
                 tuple((f.metric, f.sentinel, f.scale) for f in fields))
        _LAYOUTS[id(fields)] = known
        _KEEP.append(fields)  # the id stays this table's while the table lives
    return known


_KEEP: list = []


def unpack(model: str, fport: int, data: bytes, fields: tuple[Field, ...]) -> tuple[int, dict[str, float]]:
    layout, table = _layout(fields)
    size = layout.size
    if len(data) < size:
        raise CodecError("truncated", f"{model} frame on fPort {fport} is {len(data)} bytes, expected {size}")
    if len(data) > size:
        raise CodecError("too_long", f"{model} frame on fPort {fport} is {len(data)} bytes, expected {size}")
    flags, *raws = layout.unpack(data)
    readings = {}
    for (metric, sentinel, scale), raw in zip(table, raws):
        if raw != sentinel:
            readings[metric] = raw / scale
    return flags, readings
