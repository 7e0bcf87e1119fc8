"""Vendor LoRaWAN models whose frames the gateway decodes with the vendor's JavaScript codec.

USM-100 (ultrasonic manhole sensor) and UFL-20 (ultrasonic bin fill-level sensor) are
fictional models of this project. Their codecs are ``config/codecs/usm100.js`` and
``ufl20.js`` (``decodeUplink`` in The Things Network's format, with examples in the ``.yaml``
beside them); their mappings, ``config/models/USM-100.yaml`` and ``UFL-20.yaml``, turn the
codec's vendor-style fields (``"1700 mm"``, ``"22.1 ℃"``, ``true``) into our metrics. This
module is the devices' side, with the interface of the built-in codecs (edge/ingest/codecs)::

    model.encode(readings, alarm=False) -> (fPort, frame)
    model.decode(fport, frame) -> readings   # what the gateway gets through the JS codec and mapping

Both send a periodic report on fPort 2 and an alarm report on fPort 3. A reading that is
missing (or not finite) goes in the frame as its field's "no reading" value; one outside a
field's range is held at the range's end, as a sensor saturates, so a spike still encodes.
"""

from __future__ import annotations

import functools
import math
import struct

from edge.ingest.codecs._errors import CodecError
from edge.ingest.units import convert

__all__ = ["MODELS", "VendorFrame", "encode", "network_server_object", "truth"]

PORT_REPORT, PORT_ALARM = 2, 3


def _field(value: float | None, scale: float, lo: int, hi: int, sentinel: int) -> int:
    """A reading as the frame's integer: scaled, rounded and held to lo..hi; ``sentinel`` for no reading."""
    if value is None or not math.isfinite(value):
        return sentinel
    return min(hi, max(lo, round(value * scale)))


class VendorFrame:
    """What both models share: their fPorts and the check of a frame before reading it."""

    model = ""
    kind = ""
    codec = ""  # the JavaScript codec's file in config/codecs
    layout = struct.Struct(">")

    def encode(self, readings: dict[str, float], alarm: bool = False) -> tuple[int, bytes]:
        return (PORT_ALARM if alarm else PORT_REPORT), self.pack(readings)

    def decode(self, fport: int, frame: bytes) -> dict[str, float]:
        if fport not in (PORT_REPORT, PORT_ALARM):
            raise CodecError("unknown_fport", f"{self.model} sends on fPort 2 (report) and 3 (alarm), not {fport}")
        if len(frame) != self.layout.size:
            raise CodecError("truncated" if len(frame) < self.layout.size else "too_long",
                             f"{self.model} frame is {len(frame)} bytes, expected {self.layout.size}")
        return self.unpack(bytes(frame))

    def pack(self, readings: dict[str, float]) -> bytes:
        raise NotImplementedError

    def unpack(self, frame: bytes) -> dict[str, float]:
        raise NotImplementedError


class Usm100(VendorFrame):
    """USM-100 ultrasonic manhole sensor. An 8-byte frame, big-endian:

    =====  ======  =============  ======================================  ==========
    byte   type    JS field       meaning (our metric)                    no reading
    =====  ======  =============  ======================================  ==========
    0      uint8   frame_version  1 (ignored by the mapping)              -
    1      uint8   flags          bit 0 ``moved`` (``open``), bit 1       -
                                  ``water_alarm``: water within 400 mm
                                  (ignored)
    2-3    uint16  distance       mm, cover down to the water             0xFFFF
                                  (``water_cm``)
    4-5    int16   temperature    0.1 degree C (``temp_c``)               0x7FFF
    6      uint8   tilt           whole degrees (``tilt_deg``)            0xFF
    7      uint8   battery        2.00 V + n x 0.01 V (``battery_v``)     0xFF
    =====  ======  =============  ======================================  ==========

    Example: ``01 00 06 a4 00 dd 03 9d`` gives ``{"water_cm": 170.0, "temp_c": 22.1,
    "tilt_deg": 3.0, "open": 0.0, "battery_v": 3.57}``. It has no gas sensor.
    """

    model, kind, codec = "USM-100", "manhole_cover", "usm100.js"
    layout = struct.Struct(">BBHhBB")
    VERSION = 1
    MOVED, WATER_ALARM = 0x01, 0x02
    WATER_ALARM_MM = 400

    def pack(self, readings: dict[str, float]) -> bytes:
        mm = _field(readings.get("water_cm"), 10, 0, 0xFFFE, 0xFFFF)
        centivolts = _field(readings.get("battery_v"), 100, 200, 200 + 0xFE, 200 + 0xFF)
        flags = (self.MOVED if readings.get("open") else 0) | (self.WATER_ALARM if mm < self.WATER_ALARM_MM else 0)
        return self.layout.pack(
            self.VERSION, flags, mm,
            _field(readings.get("temp_c"), 10, -0x8000, 0x7FFE, 0x7FFF),
            _field(readings.get("tilt_deg"), 1, 0, 0xFE, 0xFF),
            centivolts - 200,
        )

    def unpack(self, frame: bytes) -> dict[str, float]:
        _, flags, mm, temp, tilt, battery = self.layout.unpack(frame)
        readings = {"open": 1.0 if flags & self.MOVED else 0.0}
        if mm != 0xFFFF:
            readings["water_cm"] = convert(mm, "mm", "cm")
        if temp != 0x7FFF:
            readings["temp_c"] = temp / 10
        if tilt != 0xFF:
            readings["tilt_deg"] = float(tilt)
        if battery != 0xFF:
            readings["battery_v"] = (200 + battery) / 100
        return readings


class Ufl20(VendorFrame):
    """UFL-20 ultrasonic bin fill-level sensor. An 8-byte frame, big-endian:

    =====  ======  ===========  ========================================  ==========
    byte   type    JS field     meaning (our metric)                      no reading
    =====  ======  ===========  ========================================  ==========
    0      uint8   status       bit 0 ``fire_alarm``: 60 degrees C or      -
                                hotter (ignored by the mapping)
    1-2    uint16  distance     mm, lid down to the rubbish               0xFFFF
                                (``distance_cm``)
    3-4    int16   temperature  0.1 degree C (``temp_c``)                 0x7FFF
    5      uint8   tilt         whole degrees (``tilt_deg``)              0xFF
    6-7    uint16  battery      millivolts (``battery_v``)                0xFFFF
    =====  ======  ===========  ========================================  ==========

    Example: ``00 03 52 00 f5 02 0e 1a`` gives ``{"distance_cm": 85.0, "temp_c": 24.5,
    "tilt_deg": 2.0, "battery_v": 3.61}``.
    """

    model, kind, codec = "UFL-20", "bin", "ufl20.js"
    layout = struct.Struct(">BHhBH")
    FIRE_ALARM = 0x01
    FIRE_ALARM_C = 60.0

    def pack(self, readings: dict[str, float]) -> bytes:
        temp = _field(readings.get("temp_c"), 10, -0x8000, 0x7FFE, 0x7FFF)
        status = self.FIRE_ALARM if self.FIRE_ALARM_C * 10 <= temp < 0x7FFF else 0
        return self.layout.pack(
            status,
            _field(readings.get("distance_cm"), 10, 0, 0xFFFE, 0xFFFF),
            temp,
            _field(readings.get("tilt_deg"), 1, 0, 0xFE, 0xFF),
            _field(readings.get("battery_v"), 1000, 0, 0xFFFE, 0xFFFF),
        )

    def unpack(self, frame: bytes) -> dict[str, float]:
        _, mm, temp, tilt, millivolts = self.layout.unpack(frame)
        readings: dict[str, float] = {}
        if mm != 0xFFFF:
            readings["distance_cm"] = convert(mm, "mm", "cm")
        if temp != 0x7FFF:
            readings["temp_c"] = temp / 10
        if tilt != 0xFF:
            readings["tilt_deg"] = float(tilt)
        if millivolts != 0xFFFF:
            readings["battery_v"] = millivolts / 1000
        return readings


MODELS: dict[str, VendorFrame] = {m.model: m for m in (Usm100(), Ufl20())}


def encode(model: str, readings: dict[str, float], alarm: bool = False) -> tuple[int, bytes]:
    """The (fPort, frame) a device of ``model`` sends for ``readings``."""
    return MODELS[model].encode(readings, alarm)


def truth(model: str, readings: dict[str, float]) -> dict[str, float]:
    """The readings the gateway ends with for ``readings`` sent by ``model``: quantised by the
    frame, through the JS codec and the mapping (mm to cm)."""
    vendor = MODELS[model]
    return vendor.decode(*vendor.encode(readings))


@functools.cache
def _js_codec(model: str):
    from edge.ingest.jscodec import JsCodec
    from edge.paths import project_root

    return JsCodec(project_root() / "config" / "codecs" / MODELS[model].codec)


def network_server_object(model: str, fport: int, frame: bytes) -> dict:
    """What ChirpStack puts in the event's ``object`` for the frame: its JS codec's ``data``;
    raises ``CodecError`` as the codec does."""
    data, _ = _js_codec(model).decode(fport, frame)
    return data
