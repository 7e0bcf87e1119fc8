"""The devices' own JSON telemetry over MQTT.

Telemetry, QoS 1, on ``devices/<id>/telemetry``::

    {"device": "MH-0003", "ts": 1763830000.25, "readings": {"tilt_deg": 31.5, "open": 1}}

``ts`` is the device's clock. Status, retained, on ``devices/<id>/status``: ``online`` when
the device comes up, ``offline`` when it goes away. A real device sets ``offline`` as its
MQTT last will; the simulator shares one MQTT connection among all its devices, so it
publishes ``offline`` itself at the moment the broker would (a device falling silent: dead
battery, dropout) and for every device when it stops.
"""

from __future__ import annotations

import orjson

from firmware_sim.protocols import Decoded, Frame


def telemetry_topic(device_id: str) -> str:
    return f"devices/{device_id}/telemetry"


def status_topic(device_id: str) -> str:
    return f"devices/{device_id}/status"


def status(device_id: str, online: bool) -> Frame:
    return Frame(status_topic(device_id), b"online" if online else b"offline", retain=True)


def report(device_id: str, ts: float, readings: dict) -> tuple[Frame, Decoded]:
    ts = round(ts, 3)
    payload = orjson.dumps({"device": device_id, "ts": ts, "readings": readings})
    return Frame(telemetry_topic(device_id), payload), Decoded(device_id, ts, dict(readings))


# Ways a firmware bug or a radio garbles a payload; the simulator cycles through them.
MALFORMED = ("truncated", "not_an_object", "no_timestamp", "text_value", "wrong_device")


def malformed(device_id: str, ts: float, readings: dict, variant: str) -> Frame:
    good = orjson.dumps({"device": device_id, "ts": round(ts, 3), "readings": readings})
    if variant == "truncated":
        payload = good[: max(1, len(good) // 2)]
    elif variant == "not_an_object":
        payload = orjson.dumps([device_id, ts, readings])
    elif variant == "no_timestamp":
        payload = orjson.dumps({"device": device_id, "readings": readings})
    elif variant == "text_value":
        bad = {k: (f"{v}!" if isinstance(v, float) else v) for k, v in readings.items()}
        payload = orjson.dumps({"device": device_id, "ts": round(ts, 3), "readings": bad})
    else:
        payload = orjson.dumps({"device": device_id + "X", "ts": round(ts, 3), "readings": readings})
    return Frame(telemetry_topic(device_id), payload)
