"""The ground truth: every event that really happened on the street, one JSON object a line.

::

    {"id": "E0003", "device": "MH-0003", "kind": "cover_open", "start": 1748736000.0,
     "end": 1748737200.0, "expect": ["cover_tilted"], "source": "injected",
     "grid": "G01", "zone": "Z1"}

``start`` and ``end`` are true time (seconds since the epoch; a device with a skewed clock
reports other times). ``end`` is null for an event still going on when the run ended.
``expect`` lists the order rules any one of which should report it (empty: the event
should give no order, e.g. most faults). ``source`` is ``injected`` (named in the
scenario), ``storm`` (a rain storm's effect on a device), ``natural`` (a bin filling up on
its own) or ``fault``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson


@dataclass
class TruthEvent:
    device: str
    kind: str
    start: float
    end: float | None
    expect: list[str]
    source: str = "injected"
    grid: str = ""
    zone: str = ""
    id: str = ""
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        data = asdict(self)
        if not self.details:
            data.pop("details")
        return data


def number(events: list[TruthEvent]) -> list[TruthEvent]:
    """Order events by start, device, kind and give each a stable id."""
    events.sort(key=lambda e: (e.start, e.device, e.kind, e.end if e.end is not None else float("inf")))
    for n, event in enumerate(events, start=1):
        event.id = f"E{n:05d}"
    return events


def write_truth(path: Path, events: list[TruthEvent]) -> None:
    with path.open("wb") as handle:
        for event in events:
            handle.write(orjson.dumps(event.as_dict(), option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")


def read_truth(path: Path) -> list[TruthEvent]:
    events = []
    for number_, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = orjson.loads(line)
            events.append(TruthEvent(
                device=data["device"], kind=data["kind"], start=float(data["start"]),
                end=None if data.get("end") is None else float(data["end"]), expect=list(data.get("expect") or []),
                source=data.get("source", "injected"), grid=data.get("grid", ""), zone=data.get("zone", ""),
                id=data.get("id", f"L{number_}"), details=data.get("details") or {},
            ))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}:{number_}: not a ground-truth event: {error}") from None
    return events
