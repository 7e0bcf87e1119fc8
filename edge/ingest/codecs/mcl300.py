"""MCL-300: LoRaWAN smart manhole cover. 15-byte frames, big-endian.

fPort 1: periodic heartbeat; fPort 2: alarm report (sent at once when an alarm starts or
ends). Both carry the same layout:

=====  =====  ======================  ===============================  ===========
byte   type   metric                  scale                            no reading
=====  =====  ======================  ===============================  ===========
0      uint8  flags                   bit 0 ``open``, bit 1 alarm,      -
                                      bit 2 battery low
1-2    uint16 ``tilt_deg``            0.1 degree                        0xFFFF
3-4    uint16 ``water_cm``            0.1 cm, cover down to the water   0xFFFF
5-6    uint16 ``ch4_lel_pct``         0.1 % LEL                         0xFFFF
7-8    uint16 ``h2s_ppm``             0.1 ppm                           0xFFFF
9-10   int16  ``temp_c``              0.1 degree C                      0x7FFF
11-12  uint16 ``battery_v``           millivolt                         0xFFFF
13-14  uint16 reserved (0)
=====  =====  ======================  ===============================  ===========

Example: ``01 01 2c 05 dc 00 0f 00 05 00 b4 0e 10 00 00`` on fPort 1 decodes to
``{"open": 1, "tilt_deg": 30.0, "water_cm": 150.0, "ch4_lel_pct": 1.5, "h2s_ppm": 0.5,
"temp_c": 18.0, "battery_v": 3.6}``.
"""

from __future__ import annotations

from edge.ingest.codecs._errors import CodecError
from edge.ingest.codecs._fields import Field, pack, unpack

MODEL = "MCL-300"
KIND = "manhole_cover"
PORT_HEARTBEAT = 1
PORT_ALARM = 2

FIELDS = (
    Field("tilt_deg", "H", 10, 0xFFFF),
    Field("water_cm", "H", 10, 0xFFFF),
    Field("ch4_lel_pct", "H", 10, 0xFFFF),
    Field("h2s_ppm", "H", 10, 0xFFFF),
    Field("temp_c", "h", 10, 0x7FFF),
    Field("battery_v", "H", 1000, 0xFFFF),
    Field("_reserved", "H", 1, 0xFFFF),
)

FLAG_OPEN, FLAG_ALARM, FLAG_BATTERY_LOW = 0x01, 0x02, 0x04


def encode(readings: dict[str, float], alarm: bool = False) -> tuple[int, bytes]:
    flags = (FLAG_OPEN if readings.get("open") else 0) | (FLAG_ALARM if alarm else 0)
    if readings.get("battery_v", 9.9) < 3.3:
        flags |= FLAG_BATTERY_LOW
    values = {k: v for k, v in readings.items() if k != "_reserved"}
    values["_reserved"] = 0
    return (PORT_ALARM if alarm else PORT_HEARTBEAT), pack(flags, FIELDS, values)


def decode(fport: int, data: bytes) -> dict[str, float]:
    if fport not in (PORT_HEARTBEAT, PORT_ALARM):
        raise CodecError("unknown_fport", f"{MODEL} sends on fPort 1 (heartbeat) and 2 (alarm), not {fport}")
    flags, readings = unpack(MODEL, fport, bytes(data), FIELDS)
    readings.pop("_reserved", None)
    readings["open"] = 1.0 if flags & FLAG_OPEN else 0.0
    return readings
