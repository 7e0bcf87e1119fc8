"""Simulated devices: what each one's sensors read at a given moment, and how events change them.

A device is driven by the simulation's clock (device time, seconds since the epoch): the
simulation asks ``sample(t)`` at every report, and starts and ends events with ``start`` and
``end``. Signals follow the street: a daily rhythm (sewer flow, temperature, how fast bins
fill), noise, battery discharge per transmission, and the rain storms of the
``Environment`` raising the water under every cover of the grids they hit.

Every random draw comes from the device's own generator, seeded from the scenario seed and
the device id, so a device behaves the same whatever else is on the street.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

DAY = 86400.0
HOUR = 3600.0


@dataclass
class Storm:
    """A rain storm over some grids: the water under covers rises, holds, then drains.

    ``level(t)`` is 0 before and after, 1 at the peak: it rises over the first 30 % of the
    storm, holds until 60 %, and drains over the rest.
    """

    grids: frozenset[str]
    start: float
    duration: float
    intensity: float = 1.0

    RISE, HOLD = 0.3, 0.6

    def level(self, t: float) -> float:
        x = (t - self.start) / self.duration
        if x <= 0 or x >= 1:
            return 0.0
        if x < self.RISE:
            return x / self.RISE
        if x < self.HOLD:
            return 1.0
        return (1 - x) / (1 - self.HOLD)

    def when(self, level: float) -> tuple[float, float]:
        """The times the storm's level first reaches ``level`` (0 < level <= 1) and falls below it again."""
        up = self.start + self.duration * self.RISE * level
        down = self.start + self.duration * (1 - (1 - self.HOLD) * level)
        return up, down


@dataclass
class Environment:
    """What devices share: the local time of day and the weather."""

    utc_offset_h: float = 8.0
    storms: list[Storm] = field(default_factory=list)

    def hour(self, t: float) -> float:
        return ((t / HOUR) + self.utc_offset_h) % 24.0

    def ambient_c(self, t: float) -> float:
        """Air temperature: 16 degrees C on average, warmest at 15:00."""
        return 16.0 + 6.0 * math.sin(2 * math.pi * (self.hour(t) - 9.0) / 24.0)

    def storm_level(self, grid: str, t: float) -> float:
        level = 0.0
        for storm in self.storms:
            if grid in storm.grids:
                level = max(level, storm.level(t) * storm.intensity)
        return level


def _ramp(start: float, t: float, over: float) -> float:
    """0 at ``start``, 1 after ``over`` seconds."""
    if over <= 0:
        return 1.0
    return min(1.0, max(0.0, (t - start) / over))


@dataclass
class Active:
    """An event in progress on a device."""

    kind: str
    start: float
    params: dict[str, float]
    origin: dict[str, float] = field(default_factory=dict)  # the signals' values when it started


class SimDevice:
    """What every simulated device has: identity, battery, radio, and events in progress."""

    kind = ""
    EVENTS: tuple[str, ...] = ()
    ALARMS: tuple[str, ...] = ()  # events during which it reports every alarm interval
    # Energy a transmission costs, volts; the battery drops this much per report.
    PER_REPORT_V = 2e-6
    PER_DAY_V = 4e-4

    def __init__(self, id: str, grid: str, params: dict[str, float], rng: random.Random, env: Environment):
        self.id, self.grid, self.params, self.rng, self.env = id, grid, params, rng, env
        self.active: dict[str, Active] = {}
        self.battery = rng.uniform(3.55, 3.68)
        self.rssi = rng.uniform(-108, -72)
        self.last_t: float | None = None
        self.silent = False  # a dead battery: no reports until it is replaced

    @property
    def alarm(self) -> bool:
        return any(kind in self.ALARMS for kind in self.active)

    def start(self, kind: str, t: float, params: dict[str, float] | None = None) -> None:
        if kind not in self.EVENTS:
            raise ValueError(f"{self.kind} {self.id} has no event {kind!r}; possible: {', '.join(self.EVENTS)}")
        self.active[kind] = Active(kind, t, dict(params or {}), self._origin(kind, t))

    def end(self, kind: str, t: float) -> None:
        self.active.pop(kind, None)
        if kind == "battery_dead":
            self.battery = self.rng.uniform(3.6, 3.68)  # replaced
            self.silent = False

    def _origin(self, kind: str, t: float) -> dict[str, float]:
        return {"battery": self.battery}

    def _battery(self, t: float) -> float:
        if self.last_t is not None:
            self.battery -= self.PER_DAY_V * max(0.0, t - self.last_t) / DAY
        self.battery -= self.PER_REPORT_V
        dead = self.active.get("battery_dead")
        if dead is not None:
            # Falls to 3.0 V over the ramp; below 3.05 V the radio browns out.
            over = dead.params.get("ramp", 2 * HOUR)
            v0 = dead.origin["battery"]
            self.battery = min(self.battery, v0 - (v0 - 3.0) * _ramp(dead.start, t, over))
            if self.battery < 3.05:
                self.silent = True
        return self.battery

    def _common(self, t: float, readings: dict[str, float]) -> dict[str, float]:
        readings["battery_v"] = round(self._battery(t), 3)
        readings["rssi_dbm"] = round(self.rssi + self.rng.gauss(0, 2.5))
        self.last_t = t
        return readings

    def sample(self, t: float) -> dict[str, float]:
        raise NotImplementedError

    def wake_at(self, t: float) -> float | None:
        """When the firmware would next report on its own (an alarm threshold crossed), if known."""
        return None


class Cover(SimDevice):
    """A smart manhole cover: tilt and open flag, water level below, gas, temperature."""

    kind = "manhole_cover"
    EVENTS = ("cover_open", "water_rising", "gas_leak", "cover_hot", "battery_dead")
    ALARMS = ("cover_open", "water_rising", "gas_leak", "cover_hot")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        rng = self.rng
        self.base_water = self.params.get("water_base_cm") or rng.uniform(120, 180)
        # How high the water comes under this cover in a full storm (distance left, cm).
        self.storm_peak = rng.uniform(5, 90)
        self.ch4_base = rng.uniform(0.0, 1.5)
        self.h2s_base = rng.uniform(0.0, 1.0)
        self.ground_c = rng.uniform(13, 17)
        self.tilt_rest = abs(rng.gauss(0.8, 0.3))
        self.alarm_water_cm = 40.0  # the firmware reports at once when the water comes this close

    def _origin(self, kind: str, t: float) -> dict[str, float]:
        return {"battery": self.battery, "water": self.water_level(t), "temp": self._temp(t)}

    def storm_water(self, t: float) -> float:
        """The water level under this cover with the weather alone, without noise."""
        hour = self.env.hour(t)
        sewer = 2.0 * math.sin(2 * math.pi * (hour - 5.0) / 24.0)  # more flow in the morning
        level = self.env.storm_level(self.grid, t)
        return self.base_water - sewer - (self.base_water - self.storm_peak) * level

    def storm_peak_for(self, intensity: float) -> float:
        return self.base_water - (self.base_water - self.storm_peak) * intensity

    def water_level(self, t: float) -> float:
        water = self.storm_water(t)
        rising = self.active.get("water_rising")
        if rising is not None:
            target = rising.params.get("level_cm", 15.0)
            water = min(water, rising.origin["water"] + (target - rising.origin["water"])
                        * _ramp(rising.start, t, rising.params.get("ramp", 600.0)))
        return water

    def _temp(self, t: float) -> float:
        temp = self.ground_c + 0.3 * (self.env.ambient_c(t) - 16.0)
        hot = self.active.get("cover_hot")
        if hot is not None:
            temp += (hot.params.get("peak_c", 75.0) - temp) * _ramp(hot.start, t, hot.params.get("ramp", 900.0))
        return temp

    def sample(self, t: float) -> dict[str, float]:
        rng = self.rng
        opened = self.active.get("cover_open")
        if opened is not None:
            tilt = opened.params.setdefault("tilt", rng.uniform(22, 45)) + rng.gauss(0, 0.8)
        else:
            tilt = self.tilt_rest + abs(rng.gauss(0, 0.15))
        ch4 = self.ch4_base + rng.gauss(0, 0.2)
        h2s = self.h2s_base * (1 + 0.3 * math.sin(2 * math.pi * self.env.hour(t) / 24)) + rng.gauss(0, 0.1)
        gas = self.active.get("gas_leak")
        if gas is not None:
            x = _ramp(gas.start, t, gas.params.get("ramp", 300.0))
            ch4 += gas.params.setdefault("ch4_peak", rng.uniform(15, 40)) * x
            h2s += gas.params.setdefault("h2s_peak", rng.uniform(8, 25)) * x
        readings = {
            "tilt_deg": round(max(0.0, tilt), 2),
            "open": 1.0 if opened is not None else 0.0,
            "water_cm": round(max(0.0, self.water_level(t) + rng.gauss(0, 1.2)), 1),
            "ch4_lel_pct": round(max(0.0, ch4), 1),
            "h2s_ppm": round(max(0.0, h2s), 1),
            "temp_c": round(self._temp(t) + rng.gauss(0, 0.2), 1),
        }
        return self._common(t, readings)

    @property
    def alarm(self) -> bool:
        """In alarm during its events, and while storm water is close under the cover."""
        if super().alarm:
            return True
        return self.last_t is not None and self.storm_water(self.last_t) < self.alarm_water_cm


class Bin(SimDevice):
    """A smart bin: an ultrasonic sensor under the lid measures the distance to the rubbish.

    The bin fills through the day (fastest at lunch and in the evening) and is emptied by
    collection rounds; a bin that fills past the firmware's threshold reports at once.
    """

    kind = "bin"
    EVENTS = ("bin_full", "bin_fire", "bin_knocked_over", "battery_dead")
    ALARMS = ("bin_full", "bin_fire", "bin_knocked_over")
    # Share of a day's rubbish thrown in during each local hour (sums to 1).
    PROFILE = tuple(w / 100.0 for w in (
        0.5, 0.3, 0.2, 0.2, 0.3, 0.8, 2.5, 5.0, 6.5, 5.5, 5.0, 6.0,
        8.0, 7.5, 5.5, 5.0, 5.5, 6.5, 8.0, 7.5, 5.5, 3.5, 2.5, 2.2,
    ))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        rng = self.rng
        self.depth = self.params.get("depth_cm") or 120.0
        self.daily_pct = rng.uniform(35, 110)  # how much of the bin a day's rubbish fills
        self.fill = rng.uniform(5, 60)
        self.fill_t: float | None = None
        self.full_pct = 85.0  # set by the simulation: the level a "full" event starts at
        self.full_since: float | None = None  # natural fill past full_pct, not yet collected
        self.tilt_rest = abs(rng.gauss(1.0, 0.4))

    def _rate(self, t: float) -> float:
        """Fill, percent per second, at time t."""
        return self.daily_pct * self.PROFILE[int(self.env.hour(t))] / HOUR

    def _advance(self, t: float) -> float | None:
        """Fill up to t; returns the time it crossed ``full_pct`` on the way, if it did."""
        if self.fill_t is None or t <= self.fill_t:
            self.fill_t = t if self.fill_t is None else self.fill_t
            return None
        crossed = None
        now = self.fill_t
        while now < t:
            step_end = min(t, (math.floor(now / HOUR) + 1) * HOUR)
            rate = self._rate(now)
            added = rate * (step_end - now)
            if crossed is None and self.fill < self.full_pct <= self.fill + added and rate > 0:
                crossed = now + (self.full_pct - self.fill) / rate
            self.fill = min(100.0, self.fill + added)
            now = step_end
        self.fill_t = t
        return crossed

    def crossing(self, t: float) -> float | None:
        """Advance the fill to t; the time it crossed the full level if it just did (a natural 'bin_full')."""
        crossed = self._advance(t)
        if crossed is not None and self.full_since is None and "bin_full" not in self.active:
            self.full_since = crossed
            return crossed
        return None

    def wake_at(self, t: float) -> float | None:
        if self.fill >= self.full_pct or self.full_since is not None:
            return None
        fill, now = self.fill, t
        for _ in range(48):
            step_end = (math.floor(now / HOUR) + 1) * HOUR
            rate = self._rate(now)
            if rate > 0 and fill + rate * (step_end - now) >= self.full_pct:
                return now + (self.full_pct - fill) / rate
            fill += rate * (step_end - now)
            now = step_end
        return None

    def collect(self, t: float) -> bool:
        """A collection round empties the bin; True if it was full (a 'bin_full' ends)."""
        self._advance(t)
        was_full = self.full_since is not None
        self.fill = self.rng.uniform(0, 4)
        self.full_since = None
        return was_full

    def start(self, kind: str, t: float, params: dict[str, float] | None = None) -> None:
        super().start(kind, t, params)
        if kind == "bin_full":
            self._advance(t)
            self.fill = max(self.fill, (params or {}).get("fill_pct", self.rng.uniform(88, 97)))

    def end(self, kind: str, t: float) -> None:
        super().end(kind, t)
        if kind == "bin_full":
            self._advance(t)
            self.fill = self.rng.uniform(0, 4)  # collected
            self.full_since = None

    def sample(self, t: float) -> dict[str, float]:
        rng = self.rng
        self._advance(t)
        distance = self.depth * (1 - self.fill / 100) + rng.gauss(0, 0.7)
        temp = self.env.ambient_c(t) + 2.0 + rng.gauss(0, 0.4)
        fire = self.active.get("bin_fire")
        if fire is not None:
            temp += (fire.params.setdefault("peak_c", rng.uniform(70, 95)) - temp) * _ramp(
                fire.start, t, fire.params.get("ramp", 900.0))
        knocked = self.active.get("bin_knocked_over")
        tilt = (knocked.params.setdefault("tilt", rng.uniform(70, 95)) + rng.gauss(0, 1.0)) if knocked \
            else self.tilt_rest + abs(rng.gauss(0, 0.2))
        readings = {
            "distance_cm": round(min(self.depth + 5, max(0.0, distance)), 1),
            "temp_c": round(temp, 1),
            "tilt_deg": round(max(0.0, tilt), 2),
        }
        return self._common(t, readings)


@dataclass
class Episode:
    """One detection by a camera: a label in a zone, from start to end."""

    id: str
    kind: str       # the ground-truth kind: illegal_parking, waterlogging, ...
    label: str      # what the detector says: car, waterlogging, garbage, vendor
    zone: str
    start: float
    end: float
    score: float    # typical confidence; each frame varies around it
    updates: int = 0
    top_score: float = 0.0


# Ground-truth kind -> (detector label, default zone).
CAMERA_KINDS = {
    "illegal_parking": ("car", "no_parking"),
    "waterlogging": ("waterlogging", "road"),
    "garbage_overflow": ("garbage", "pavement"),
    "street_vending": ("vendor", "pavement"),
}


class Camera(SimDevice):
    """An AI camera: silent until its analytics detect something, then new / update / end."""

    kind = "camera"
    EVENTS = tuple(CAMERA_KINDS) + ("flicker",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.episodes: dict[str, Episode] = {}
        self.counter = 0

    def open_episode(self, kind: str, t: float, end: float, zone: str | None = None, label: str | None = None,
                     score: float | None = None) -> Episode:
        default_label, default_zone = CAMERA_KINDS.get(kind, ("car", "road"))
        self.counter += 1
        episode = Episode(
            id=f"{t:.6f}-{self.id.lower()}-{self.counter}",
            kind=kind, label=label or default_label, zone=zone or default_zone, start=t, end=end,
            score=score if score is not None else self.rng.uniform(0.72, 0.92),
        )
        self.episodes[episode.id] = episode
        return episode

    def frame(self, episode: Episode, t: float, ended: bool = False) -> dict[str, float | str]:
        score = min(0.99, max(0.05, episode.score + self.rng.gauss(0, 0.04)))
        episode.top_score = max(episode.top_score, score)
        return {
            "label": episode.label,
            "zone": episode.zone,
            "score": round(score, 3),
            "active": 0.0 if ended else 1.0,
            "duration_s": round(max(0.0, t - episode.start), 1),
        }

    def sample(self, t: float) -> dict[str, float]:
        return {}


KINDS: dict[str, type[SimDevice]] = {"manhole_cover": Cover, "bin": Bin, "camera": Camera}
