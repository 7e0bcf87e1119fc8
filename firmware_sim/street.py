"""The original command line: a street from a registry, events given as ``KIND:DEVICE@START[+DURATION]``.

Times are seconds from the start of the run: ``open_cover:MH-0003@5`` knocks cover MH-0003
open 5 s in and leaves it open; ``open_cover:MH-0003@5+20`` closes it again 20 s later;
``fill_bin:BIN-0002@8`` fills a bin past 85 %. Any event kind of a scenario works too
(``gas_leak:MH-0004@3+30``). This builds a one-off scenario that runs in real time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from firmware_sim.scenario import EventSpec, Scenario, Timing

_EVENT = re.compile(r"^(?P<kind>[a-z_]+):(?P<device>[^@\s]+)@(?P<start>\d+(\.\d+)?)(\+(?P<duration>\d+(\.\d+)?))?$")

# The first names of events, still accepted.
ALIASES = {"open_cover": "cover_open", "fill_bin": "bin_full"}


@dataclass(frozen=True)
class Event:
    kind: str
    device: str
    start: float
    duration: float | None = None

    @classmethod
    def parse(cls, text: str) -> "Event":
        match = _EVENT.match(text.strip())
        if match is None:
            raise ValueError(f"bad event {text!r}: write KIND:DEVICE@START[+DURATION], e.g. open_cover:MH-0003@5+20")
        duration = match.group("duration")
        kind = ALIASES.get(match.group("kind"), match.group("kind"))
        return cls(kind, match.group("device"), float(match.group("start")), float(duration) if duration else None)


def legacy_scenario(registry: Path, events: list[Event], seconds: float, interval: float, alarm_interval: float,
                    seed: int) -> Scenario:
    timing = Timing(interval=interval, alarm_interval=alarm_interval, jitter=0.0)
    try:
        specs = [EventSpec(kind=e.kind, device=e.device, at=e.start, duration=e.duration) for e in events]
    except ValueError as error:
        raise ValueError(str(error).splitlines()[-1].strip().removeprefix("Value error, ")) from None
    return Scenario(
        name="command line", seed=seed, start="now", duration=seconds, speed=1.0, registry=registry.resolve(),
        timing={"manhole_cover": timing, "bin": timing, "camera": timing}, collections=[], events=specs,
        source=registry,
    )
