"""SBL-220: LoRaWAN smart bin (ultrasonic fill sensor). 9-byte frames, big-endian.

fPort 1: periodic report; fPort 2: alarm report (full, fire, knocked over), same layout:

=====  =====  ==================  ===================================  ===========
byte   type   metric              scale                                no reading
=====  =====  ==================  ===================================  ===========
0      uint8  flags               bit 0 alarm, bit 1 battery low        -
1-2    uint16 ``distance_cm``     0.1 cm, lid to the rubbish            0xFFFF
3-4    int16  ``temp_c``          0.1 degree C                          0x7FFF
5-6    uint16 ``tilt_deg``        0.1 degree from upright               0xFFFF
7-8    uint16 ``battery_v``       millivolt                             0xFFFF
=====  =====  ==================  ===================================  ===========

The gateway derives ``fill_pct`` from ``distance_cm`` and the registry's ``depth_cm``.
Example: ``00 02 58 00 dc 00 05 0e 10`` on fPort 1 decodes to ``{"distance_cm": 60.0,
"temp_c": 22.0, "tilt_deg": 0.5, "battery_v": 3.6}``.
"""

from __future__ import annotations

from edge.ingest.codecs._errors import CodecError
from edge.ingest.codecs._fields import Field, pack, unpack

MODEL = "SBL-220"
KIND = "bin"
PORT_REPORT = 1
PORT_ALARM = 2

FIELDS = (
    Field("distance_cm", "H", 10, 0xFFFF),
    Field("temp_c", "h", 10, 0x7FFF),
    Field("tilt_deg", "H", 10, 0xFFFF),
    Field("battery_v", "H", 1000, 0xFFFF),
)

FLAG_ALARM, FLAG_BATTERY_LOW = 0x01, 0x02


def encode(readings: dict[str, float], alarm: bool = False) -> tuple[int, bytes]:
    flags = (FLAG_ALARM if alarm else 0) | (FLAG_BATTERY_LOW if readings.get("battery_v", 9.9) < 3.3 else 0)
    return (PORT_ALARM if alarm else PORT_REPORT), pack(flags, FIELDS, readings)


def decode(fport: int, data: bytes) -> dict[str, float]:
    if fport not in (PORT_REPORT, PORT_ALARM):
        raise CodecError("unknown_fport", f"{MODEL} sends on fPort 1 (report) and 2 (alarm), not {fport}")
    _, readings = unpack(MODEL, fport, bytes(data), FIELDS)
    return readings
