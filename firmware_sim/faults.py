"""Faults of real devices, applied to a device's messages as it sends them.

- ``stuck``: a sensor repeats the value it had when it got stuck.
- ``spike``: a metric jumps to an absurd value in some messages (``probability``).
- ``dropout``: the device sends nothing (its status goes ``offline``).
- ``clock_skew``: the device's clock is ``skew`` seconds off (own JSON; LoRaWAN and Modbus
  readings are timed by the network server / the poll, not the device).
- ``duplicate``: a message is sent twice.
- ``out_of_order``: a message is held back ``delay`` seconds and arrives after later ones.
- ``malformed``: the payload is garbled (truncated JSON, wrong types, a truncated LoRaWAN
  frame, an unknown fPort, ...); the gateway must quarantine it.

A dead battery is an event, not a fault (the device's voltage falls, then it goes silent).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

MAIN_METRIC = {"manhole_cover": "water_cm", "bin": "distance_cm", "camera": "score"}
SPIKES = {
    "water_cm": 0.0, "distance_cm": 0.0, "tilt_deg": 90.0, "temp_c": 125.0, "ch4_lel_pct": 100.0,
    "h2s_ppm": 200.0, "battery_v": 0.0, "score": 0.99, "open": 1.0,
}


@dataclass
class Fault:
    kind: str
    start: float
    end: float
    metric: str
    probability: float = 1.0
    skew: float = 0.0
    delay: float = 60.0
    stuck_value: float | None = None

    def details(self) -> dict:
        out: dict = {}
        if self.kind in ("stuck", "spike"):
            out["metric"] = self.metric
        if self.kind in ("spike", "duplicate", "out_of_order", "malformed") and self.probability < 1:
            out["probability"] = self.probability
        if self.kind == "clock_skew":
            out["skew"] = self.skew
        if self.kind == "out_of_order":
            out["delay"] = self.delay
        return out


@dataclass
class Plan:
    """What the faults do to one message."""

    readings: dict = field(default_factory=dict)
    drop: bool = False
    malformed: bool = False
    duplicate: bool = False
    delay: float = 0.0
    skew: float = 0.0



def apply(node, t: float, readings: dict, rng: random.Random) -> Plan:
    plan = Plan(readings=dict(readings))
    for fault in node.faults:
        if not fault.start <= t < fault.end:
            continue
        kind = fault.kind
        if kind == "dropout":
            plan.drop = True
        elif kind == "stuck" and fault.metric in plan.readings:
            if fault.stuck_value is None:
                fault.stuck_value = plan.readings[fault.metric]
            plan.readings[fault.metric] = fault.stuck_value
        elif kind == "spike" and fault.metric in plan.readings and rng.random() < fault.probability:
            plan.readings[fault.metric] = SPIKES.get(fault.metric, 9999.0)
        elif kind == "clock_skew":
            plan.skew += fault.skew
        elif kind == "duplicate" and rng.random() < fault.probability:
            plan.duplicate = True
        elif kind == "out_of_order" and rng.random() < fault.probability:
            plan.delay = max(plan.delay, fault.delay)
        elif kind == "malformed" and rng.random() < fault.probability:
            plan.malformed = True
    return plan
