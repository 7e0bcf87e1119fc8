"""Scenario files: which devices, where, how often they report, and what happens when.

A scenario is YAML (see config/scenarios/ and docs/simulator.md). It is validated before
anything runs: unknown keys, wrong types and unknown devices are refused with the file and
line. Times in a scenario are durations from the start of the run (``90s``, ``10m``,
``2h``, ``1d`` or a number of seconds), in device time; ``speed`` says how fast device time
runs (1 = real time, 1440 = a day in a minute, ``max`` = as fast as the machine can).
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

PROTOCOLS = ("mqtt_json", "lorawan", "frigate", "modbus")

# The order rules each kind of event should give, by today's rule files. A scenario
# overrides them in ``expect:`` (rule names are still evolving), an event in its own ``expect``.
DEFAULT_EXPECT: dict[str, list[str]] = {
    "cover_open": ["cover_tilted"],
    "water_rising": ["water_rising"],
    "gas_leak": ["gas_danger"],
    "cover_hot": ["cover_hot"],
    "bin_full": ["bin_full"],
    "bin_fire": ["bin_fire"],
    "bin_knocked_over": ["bin_knocked_over"],
    "battery_dead": ["cover_battery_low", "bin_battery_low"],
    "illegal_parking": ["illegal_parking"],
    "waterlogging": ["waterlogging"],
    "garbage_overflow": ["garbage_overflow"],
    "street_vending": ["street_vending"],
    "silent": ["cover_silent", "bin_silent"],
}

DEVICE_EVENTS = {
    "manhole_cover": ("cover_open", "water_rising", "gas_leak", "cover_hot", "battery_dead"),
    "bin": ("bin_full", "bin_fire", "bin_knocked_over", "battery_dead"),
    "camera": ("illegal_parking", "waterlogging", "garbage_overflow", "street_vending"),
}
STREET_EVENTS = ("rain_storm",)
FAULTS = ("stuck", "spike", "dropout", "clock_skew", "duplicate", "out_of_order", "malformed")

DEFAULT_MODELS = {
    ("manhole_cover", "mqtt_json"): "MC-200", ("manhole_cover", "lorawan"): "MCL-300",
    ("manhole_cover", "modbus"): "MC-200R", ("bin", "mqtt_json"): "SB-120", ("bin", "lorawan"): "SBL-220",
    ("bin", "modbus"): "SB-120R", ("camera", "frigate"): "FRIGATE", ("camera", "mqtt_json"): "CAM-JSON",
}


def lorawan_models() -> dict[str, str]:
    """Every LoRaWAN model the simulator can speak, with its kind: the built-in codecs' and the
    vendor models' (firmware_sim/vendor_models.py)."""
    from edge.ingest.codecs import CODECS
    from firmware_sim.vendor_models import MODELS

    return {**{model: codec.KIND for model, codec in CODECS.items()}, **{model: v.kind for model, v in MODELS.items()}}


class ScenarioError(Exception):
    """The scenario cannot be used; the message names the file, line and key."""


def parse_duration(value: Any) -> float:
    """``30s``, ``10m``, ``2h``, ``1d`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*(\d+\.?\d*|\.\d+)\s*([smhd]?)\s*", str(value))
        if match is None:
            raise ValueError(f"not a duration: {value!r} (write e.g. 30s, 10m, 2h, 1d)")
        seconds = float(match.group(1)) * DURATION_UNITS[match.group(2) or "s"]
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {value!r}")
    return seconds


def _durations(*names: str):
    """A validator turning duration text (``10m``) into seconds for the named fields."""

    def convert(cls, value: Any) -> float | None:
        return None if value is None else parse_duration(value)

    return field_validator(*names, mode="before")(convert)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Timing(_Model):
    interval: float = Field(1800.0, gt=0, description="Seconds between heartbeats (device time).")
    alarm_interval: float = Field(10.0, gt=0, description="Seconds between reports while in alarm.")
    jitter: float = Field(0.1, ge=0, le=1, description="Heartbeat jitter, a fraction of the interval.")

    durations_ = _durations("interval", "alarm_interval")


class DeviceGroup(_Model):
    """Devices the scenario makes up: ``count`` of one kind spread over ``grids``."""

    kind: Literal["manhole_cover", "bin", "camera"]
    count: int = Field(ge=1, le=1_000_000)
    protocol: Literal["mqtt_json", "lorawan", "frigate", "modbus"] | None = None
    model: str | None = None
    id_prefix: str | None = None
    first: int = Field(1, ge=0, description="Number of the first device (MH-0001).")
    grids: list[str] = Field(default_factory=lambda: ["G01"])
    zones: dict[str, str] = Field(default_factory=dict, description="Zone of each grid; default Z1.")
    street: str = "Jiefang Rd"
    depth_cm: float | None = Field(None, gt=0, description="Bin depth; default 120.")
    timing: Timing | None = None
    flickers_per_day: float = Field(0.0, ge=0, description="Cameras: short low-score detections that must not become orders.")
    network_server_decodes: bool = Field(False, description="LoRaWAN: the network server runs the model's codec "
                                         "and puts the result in the event's 'object', as ChirpStack does.")

    @model_validator(mode="after")
    def _defaults(self) -> "DeviceGroup":
        if self.protocol is None:
            self.protocol = "frigate" if self.kind == "camera" else "mqtt_json"
        if self.kind == "camera" and self.protocol not in ("frigate", "mqtt_json"):
            raise ValueError(f"cameras speak frigate or mqtt_json, not {self.protocol}")
        if self.kind != "camera" and self.protocol == "frigate":
            raise ValueError("only cameras speak frigate")
        if self.model is None:
            self.model = DEFAULT_MODELS[(self.kind, self.protocol)]
        lorawan = lorawan_models()
        if self.protocol == "lorawan":
            kind = lorawan.get(self.model)
            fitting = ", ".join(m for m, k in lorawan.items() if k == self.kind)
            if kind is None:
                raise ValueError(f"no LoRaWAN model {self.model!r}; {self.kind} models: {fitting}")
            if kind != self.kind:
                raise ValueError(f"model {self.model} is a {kind}, not a {self.kind}; {self.kind} models: {fitting}")
        elif self.model in lorawan:
            raise ValueError(f"model {self.model} speaks LoRaWAN: write protocol: lorawan")
        if self.network_server_decodes and self.protocol != "lorawan":
            raise ValueError("network_server_decodes is for LoRaWAN devices (protocol: lorawan)")
        if self.id_prefix is None:
            self.id_prefix = {"manhole_cover": "MH", "bin": "BIN", "camera": "CAM"}[self.kind]
        return self


CREW_OUTCOMES = {  # what the crew's work does, and the gateway's re-check it should give
    "fixed": "verified",            # the problem ends at the crew's time
    "not_fixed": "not_fixed",       # the problem goes on (for the event's duration, or to the end)
    "breaks_again": "verified",     # ends, and the same problem starts again breaks_after later (a repeat)
    "silent": "unverified",         # ends, and the device goes silent until the end of the run
}


class Crew(_Model):
    """A repair crew sent to the event's problem: the platform resolves its order at ``at``."""

    at: float = Field(description="When the crew reports the repair done, from the event's start.")
    outcome: Literal["fixed", "not_fixed", "breaks_again", "silent"] = "fixed"
    breaks_after: float = Field(3 * 86400.0, gt=0, description="breaks_again: when the problem comes back, after the repair.")
    again_for: float = Field(3600.0, gt=0, description="breaks_again: how long the problem lasts the second time.")

    durations_ = _durations("at", "breaks_after", "again_for")


class EventSpec(_Model):
    """Something that happens: on a device (``device`` / ``devices``) or over grids (a storm)."""

    kind: str
    at: float = Field(description="When it starts, from the start of the run.")
    duration: float | None = Field(None, description="How long it lasts; none: until the end of the run.")
    device: str | None = None
    devices: list[str] = Field(default_factory=list)
    grids: list[str] = Field(default_factory=list)
    expect: list[str] | None = Field(None, description="Order rules it should give; default from the scenario's expect.")
    intensity: float = Field(1.0, gt=0, le=2, description="rain_storm: 1 = the storm the covers were drawn for.")
    level_cm: float | None = Field(None, ge=0, description="water_rising: the water this close under the cover.")
    zone: str | None = Field(None, description="Camera events: the zone of the detection.")
    label: str | None = Field(None, description="Camera events: the detector's label.")
    score: float | None = Field(None, gt=0, le=1, description="Camera events: typical confidence.")
    fill_pct: float | None = Field(None, ge=0, le=100, description="bin_full: how full.")
    ramp: float | None = Field(None, ge=0, description="How long the signal takes to reach its peak.")
    crew: Crew | None = Field(None, description="A repair crew: the platform resolves the event's order (needs --platform).")

    durations_ = _durations("at", "duration", "ramp")

    @model_validator(mode="after")
    def _target(self) -> "EventSpec":
        known = STREET_EVENTS + tuple(k for ks in DEVICE_EVENTS.values() for k in ks)
        if self.kind not in known:
            raise ValueError(f"unknown event kind {self.kind!r}; kinds: {', '.join(known)}")
        if self.kind == "rain_storm":
            if not self.grids or self.duration is None:
                raise ValueError("a rain_storm needs grids and a duration")
        elif not (self.device or self.devices):
            raise ValueError(f"event {self.kind} needs a device (or devices)")
        if self.crew is not None:
            if self.kind == "rain_storm":
                raise ValueError("a crew repairs a device's problem, not a storm")
            if self.crew.outcome == "not_fixed" and self.duration is not None and self.duration <= self.crew.at:
                raise ValueError("a crew that does not fix the problem comes while it lasts: crew.at before the duration ends")
        return self

    def targets(self) -> list[str]:
        return ([self.device] if self.device else []) + list(self.devices)

    def params(self) -> dict[str, float]:
        return {k: v for k, v in (("level_cm", self.level_cm), ("fill_pct", self.fill_pct), ("ramp", self.ramp))
                if v is not None}


class FaultSpec(_Model):
    """A device misbehaving: a stuck sensor, spikes, dropouts, clock skew, duplicates, ..."""

    kind: Literal["stuck", "spike", "dropout", "clock_skew", "duplicate", "out_of_order", "malformed"]
    at: float = 0.0
    duration: float | None = None
    device: str | None = None
    devices: list[str] = Field(default_factory=list)
    fraction: float | None = Field(None, gt=0, le=1, description="A share of all devices (drawn with the seed).")
    metric: str | None = Field(None, description="stuck / spike: which metric; default the kind's main one.")
    probability: float = Field(1.0, gt=0, le=1, description="Share of the device's messages it hits.")
    skew: float = Field(0.0, description="clock_skew: seconds the device clock is ahead (negative: behind).")
    delay: float = Field(60.0, gt=0, description="out_of_order: how long a message is held back.")
    expect: list[str] | None = Field(None, description="Order rules it should give; default none.")

    durations_ = _durations("at", "duration", "delay")

    @model_validator(mode="after")
    def _target(self) -> "FaultSpec":
        if not (self.device or self.devices or self.fraction):
            raise ValueError(f"fault {self.kind} needs a device, devices or a fraction")
        return self

    def targets(self) -> list[str]:
        return ([self.device] if self.device else []) + list(self.devices)


class Thresholds(_Model):
    """Where the ground truth draws the line for events that come from the physics, not injection."""

    bin_full_pct: float = Field(85.0, gt=0, le=100, description="A bin filling past this is a bin_full event.")
    water_alarm_cm: float = Field(30.0, gt=0, description="Storm water this close under a cover is a water_rising event.")
    waterlogging_level: float = Field(0.6, gt=0, le=1, description="Storm level at which cameras see the street flooded.")


class Scenario(_Model):
    name: str = "scenario"
    description: str = ""
    seed: int = 1
    start: str = Field("now", description="Device time of the start: 'now', 'now-DURATION' (now-156h) or ISO 8601 UTC.")
    duration: float = Field(3600.0, gt=0)
    speed: float | Literal["max"] = Field(1.0, description="Device seconds per real second; 'max': no waiting.")
    utc_offset_h: float = Field(8.0, ge=-12, le=14, description="Local time of the street, for daily rhythms.")
    registry: Path | None = Field(None, description="A device registry CSV (relative to the scenario file).")
    devices: list[DeviceGroup] = Field(default_factory=list)
    timing: dict[Literal["manhole_cover", "bin", "camera"], Timing] = Field(default_factory=dict)
    collections: list[str] = Field(default_factory=lambda: ["06:30", "18:30"], description="Bin collection rounds, local HH:MM.")
    thresholds: Thresholds = Field(default_factory=Thresholds)
    expect: dict[str, list[str]] = Field(default_factory=dict)
    events: list[EventSpec] = Field(default_factory=list)
    faults: list[FaultSpec] = Field(default_factory=list)
    qos: Literal[0, 1] = 1
    lorawan_application: str = "street-sensors"
    initial_report: bool = Field(True, description="Every device reports once within its first interval.")
    source: Path | None = Field(None, exclude=True)

    durations_ = _durations("duration")

    @field_validator("speed", mode="before")
    @classmethod
    def _speed(cls, value: Any) -> Any:
        if value == "max":
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
        raise ValueError("speed is device seconds per real second (> 0), or 'max'")

    @field_validator("collections")
    @classmethod
    def _collections(cls, value: list[str]) -> list[str]:
        for item in value:
            if not re.fullmatch(r"([01]?\d|2[0-3]):[0-5]\d", item):
                raise ValueError(f"collection time {item!r}: write HH:MM")
        return value

    @field_validator("start")
    @classmethod
    def _start(cls, value: str) -> str:
        if value != "now":
            start_time(value)
        return value

    def expected(self, kind: str, override: list[str] | None) -> list[str]:
        if override is not None:
            return override
        if kind in self.expect:
            return self.expect[kind]
        return DEFAULT_EXPECT.get(kind, [])

    def timing_for(self, kind: str, group: DeviceGroup | None = None) -> Timing:
        if group is not None and group.timing is not None:
            return group.timing
        if kind in self.timing:
            return self.timing[kind]
        return {"manhole_cover": Timing(interval=1800, alarm_interval=10), "bin": Timing(interval=1200, alarm_interval=30),
                "camera": Timing(interval=3600, alarm_interval=5)}[kind]


def start_time(text: str) -> float:
    """'now', 'now-DURATION' (e.g. now-156h: a long run in the past that ends near now, so its device
    times stay within the gateway's [ingest] max_past / max_future) or an ISO 8601 time (UTC unless
    it says otherwise), as seconds since the epoch."""
    import time

    if text == "now":
        return time.time()
    if text.startswith("now-"):
        try:
            return time.time() - parse_duration(text[4:])
        except ValueError:
            raise ValueError(f"start {text!r}: write now-DURATION, e.g. now-156h") from None
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"start {text!r}: write 'now', now-DURATION or an ISO 8601 time, e.g. 2025-06-01T00:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def _line_of(root: yaml.Node | None, loc: tuple) -> int | None:
    """The line of the YAML node at a pydantic error location (best effort)."""
    node, line = root, None
    for key in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            found = None
            for k, v in node.value:
                if k.value == str(key):
                    found = v
                    line = k.start_mark.line + 1
            node = found
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            break
    if node is not None:
        line = node.start_mark.line + 1
    return line


def _did_you_mean(loc: tuple) -> str:
    """" (did you mean 'speed'?)" for an unknown key at ``loc`` close to a key its model has."""
    import difflib
    import typing

    model: Any = Scenario
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return ""
        annotation = fields[part].annotation
        while typing.get_origin(annotation) is not None:  # list[X], X | None, dict[K, X]: the model inside
            annotation = next((a for a in reversed(typing.get_args(annotation)) if hasattr(a, "model_fields")
                               or typing.get_origin(a) is not None), None)
        model = annotation
    names = list(getattr(model, "model_fields", {}))
    close = difflib.get_close_matches(str(loc[-1]), names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_scenario(path: Path) -> Scenario:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ScenarioError(f"{path}: cannot read the scenario: {error.strerror}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ScenarioError(f"{path}{line}: not valid YAML: {getattr(error, 'problem', error)}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}:1: a scenario is a mapping of keys (name, devices, events, ...)")
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and p.startswith(("function-", "literal"))))
            line = _line_of(root, loc)
            where = ".".join(str(p) for p in loc) or "(top)"
            if item["type"] == "extra_forbidden":  # said as the rule checker says it
                problems.append(f"{path}:{line or 1}: unknown key {where!r}{_did_you_mean(loc)}")
                continue
            if item["type"] == "missing":
                problems.append(f"{path}:{line or 1}: missing required key {where!r}")
                continue
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"{path}:{line or 1}: {where}: {message}")
        raise ScenarioError("\n".join(problems)) from None
    scenario.source = path
    if scenario.registry is not None and not scenario.registry.is_absolute():
        scenario.registry = (path.parent / scenario.registry).resolve()
    if scenario.registry is None and not scenario.devices:
        raise ScenarioError(f"{path}:1: the scenario has no devices: give a registry or devices")
    return scenario
