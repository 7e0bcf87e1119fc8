"""Simulated devices: what each one reports, and how an injected event changes it."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class SimDevice:
    id: str
    kind: str
    params: dict[str, float]
    rng: random.Random
    alarm: bool = False
    battery_v: float = field(default=3.6)

    def __post_init__(self) -> None:
        """Kinds set up their own state here."""

    def readings(self, now: float) -> dict[str, float]:
        raise NotImplementedError

    def apply(self, event: str, now: float) -> None:
        raise ValueError(f"{self.kind} {self.id} has no event {event!r}")

    def end(self, event: str, now: float) -> None:
        self.alarm = False


class Cover(SimDevice):
    """A smart manhole cover: level and shut, unless knocked open."""

    EVENTS = ("open_cover",)

    def __post_init__(self) -> None:
        self.tilt = 0.0
        self.water_cm = self.rng.uniform(120, 160)

    def apply(self, event: str, now: float) -> None:
        if event != "open_cover":
            super().apply(event, now)
        self.alarm = True
        self.tilt = self.rng.uniform(25, 40)

    def readings(self, now: float) -> dict[str, float]:
        self.battery_v = max(3.0, self.battery_v - 1e-6)
        tilt = self.tilt + self.rng.gauss(0, 0.8) if self.alarm else abs(self.rng.gauss(1.0, 0.4))
        return {
            "tilt_deg": round(tilt, 2),
            "open": 1.0 if self.alarm else 0.0,
            "water_cm": round(self.water_cm + self.rng.gauss(0, 1.5), 1),
            "battery_v": round(self.battery_v, 3),
            "rssi_dbm": round(self.rng.uniform(-95, -70)),
        }


class Bin(SimDevice):
    """A smart bin: ultrasonic distance from the lid to the rubbish; fills slowly."""

    EVENTS = ("fill_bin",)

    def __post_init__(self) -> None:
        self.depth = self.params.get("depth_cm", 120.0)
        self.fill = self.rng.uniform(5, 60)

    def apply(self, event: str, now: float) -> None:
        if event != "fill_bin":
            super().apply(event, now)
        self.alarm = True
        self.fill = self.rng.uniform(88, 97)

    def end(self, event: str, now: float) -> None:
        super().end(event, now)
        self.fill = self.rng.uniform(0, 5)  # collected

    def readings(self, now: float) -> dict[str, float]:
        self.fill = min(100.0, self.fill + 0.0005)
        distance = self.depth * (1 - self.fill / 100) + self.rng.gauss(0, 0.5)
        return {
            "distance_cm": round(max(0.0, distance), 1),
            "temp_c": round(self.rng.gauss(22, 1.5), 1),
            "tilt_deg": round(abs(self.rng.gauss(0.5, 0.2)), 2),
            "battery_v": round(self.battery_v, 3),
        }


KINDS = {"manhole_cover": Cover, "bin": Bin}
