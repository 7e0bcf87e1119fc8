"""Replay recorded readings through the rules, and compare two versions of the rules.

This is what ``edge rules test`` prints: the orders a set of rules would have opened and
cleared on recorded data, so a field engineer sees what a threshold change would do before
deploying it.

Recorded readings, one message per line (JSON Lines, ``.jsonl``)::

    {"device": "MH-0003", "ts": 1763830000.25, "readings": {"tilt_deg": 31.5, "open": 1}}

with an optional ``"received"`` (the gateway's clock when it arrived; default ``ts``), or
CSV (``.csv``) with the header ``ts,device,metric,value``; rows of one device with the same
``ts`` form one message. Values are numbers, or text for a camera's label and zone.
Messages are replayed in file order; time is the devices' clock, accelerated: a day of
data replays in as long as the engine takes.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import orjson

from edge.engine.engine import Engine, Transition
from edge.engine.rules import Rule
from edge.ingest.decode import derive
from edge.registry import Registry


class ReplayError(Exception):
    """The recorded data cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Message:
    device: str
    ts: float
    values: dict[str, float | str]
    received: float


def _value(raw: object, where: str) -> float | str:
    if isinstance(raw, bool):
        return 1.0 if raw else 0.0
    if isinstance(raw, (int, float)) and math.isfinite(raw):
        return float(raw)
    if isinstance(raw, str):
        try:
            number = float(raw)
        except ValueError:
            return raw
        if math.isfinite(number):
            return number
    raise ReplayError(f"{where}: value {raw!r} is neither a number nor text")


def read_messages(path: Path) -> list[Message]:
    """Read recorded readings, JSON Lines or CSV (by the file's suffix)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ReplayError(f"{path}: cannot read: {error.strerror}") from None
    if path.suffix.lower() == ".csv":
        return _read_csv(path, text)
    messages = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise ReplayError(f"{where}: not JSON: {error}") from None
        if not isinstance(data, dict) or not isinstance(data.get("device"), str):
            raise ReplayError(f"{where}: expected {{\"device\": ..., \"ts\": ..., \"readings\": {{...}}}}")
        ts = data.get("ts")
        if isinstance(ts, bool) or not isinstance(ts, (int, float)):
            raise ReplayError(f"{where}: 'ts' must be seconds since the epoch")
        readings = data.get("readings")
        if not isinstance(readings, dict):
            raise ReplayError(f"{where}: 'readings' must be an object")
        received = data.get("received", ts)
        values = {str(k): _value(v, where) for k, v in readings.items()}
        messages.append(Message(data["device"], float(ts), values, float(received)))
    return messages


def _read_csv(path: Path, text: str) -> list[Message]:
    reader = csv.DictReader(text.splitlines())
    missing = {"ts", "device", "metric", "value"} - set(reader.fieldnames or [])
    if missing:
        raise ReplayError(f"{path}:1: missing column(s) {', '.join(sorted(missing))}; header must be ts,device,metric,value")
    messages: list[Message] = []
    for row in reader:
        where = f"{path}:{reader.line_num}"
        try:
            ts = float(row["ts"])
        except (TypeError, ValueError):
            raise ReplayError(f"{where}: ts {row['ts']!r} is not a number") from None
        value = _value(row["value"], where)
        last = messages[-1] if messages else None
        if last is not None and last.device == row["device"] and last.ts == ts:
            last.values[row["metric"]] = value
        else:
            messages.append(Message(row["device"], ts, {row["metric"]: value}, ts))
    return messages


@dataclass
class Episode:
    """One stretch of a problem: opened at one time, cleared at another (or still open)."""

    rule: str
    device: str
    opened_at: float
    title: str
    severity: str
    evidence: dict[str, float | str]
    cleared_at: float | None = None
    clear_evidence: dict[str, float | str] = field(default_factory=dict)
    updates: list[tuple[float, dict[str, float | str]]] = field(default_factory=list)  # got worse while open

    def as_dict(self) -> dict:
        return {
            "rule": self.rule, "device": self.device, "severity": self.severity, "title": self.title,
            "opened_at": iso(self.opened_at), "cleared_at": iso(self.cleared_at) if self.cleared_at else None,
            "evidence": self.evidence, "clear_evidence": self.clear_evidence,
            "updates": [{"at": iso(ts), "evidence": evidence} for ts, evidence in self.updates],
        }


@dataclass
class ReplayResult:
    rules: list[Rule]
    episodes: list[Episode]
    messages: int
    devices: int
    unknown_devices: Counter
    first_ts: float | None
    last_ts: float | None

    @property
    def orders(self) -> int:
        """Orders the gateway would have opened: a problem that clears and comes back reopens its order."""
        return len({(e.rule, e.device) for e in self.episodes})


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def replay(rules: list[Rule], registry: Registry, messages: list[Message], tick: float = 1.0,
           sink: Callable[[Engine, list[Transition], float], None] | None = None) -> ReplayResult:
    """Run recorded messages through the engine, ticking every ``tick`` seconds of the data's clock.

    ``sink(engine, transitions, now)`` sees every step's transitions (also an empty tick) with the
    recording's clock (its messages' arrival times): edge/backtest.py runs the order book on them."""
    from edge.orders.book import render_title

    start = messages[0].received if messages else 0.0
    engine = Engine(rules, registry, origin=start)
    open_episodes: dict[tuple[str, str], Episode] = {}
    episodes: list[Episode] = []
    unknown: Counter = Counter()
    seen: set[str] = set()

    def record(transitions: list[Transition], now: float) -> None:
        if sink is not None:
            sink(engine, transitions, now)
        for t in transitions:
            key = (t.rule.name, t.device.id)
            evidence = {e.metric: e.value for e in t.evidence}
            if t.kind == "open":
                episode = Episode(t.rule.name, t.device.id, t.ts, render_title(t), t.rule.spec.order.severity, evidence)
                open_episodes[key] = episode
                episodes.append(episode)
            elif t.kind == "update" and key in open_episodes:
                open_episodes[key].updates.append((t.ts, evidence))
            elif t.kind == "clear" and key in open_episodes:
                episode = open_episodes.pop(key)
                episode.cleared_at = t.ts
                episode.clear_evidence = evidence

    next_tick = start + tick
    builder = engine.builder()
    for message in messages:
        while message.received >= next_tick:
            record(engine.process(builder.build()), next_tick)
            builder = engine.builder()
            record(engine.tick(next_tick), next_tick)
            next_tick += tick
        device = registry.get(message.device)
        if device is None:
            unknown[message.device] += 1
            continue
        seen.add(device.id)
        builder.add(device.index, message.ts, derive(device, dict(message.values)), message.received)
    end = messages[-1].received if messages else start
    record(engine.process(builder.build()), end)
    if messages:
        record(engine.tick(end), end)
    return ReplayResult(
        rules, episodes, len(messages), len(seen), unknown,
        min((m.ts for m in messages), default=None), max((m.ts for m in messages), default=None),
    )


@dataclass
class Difference:
    only_a: list[Episode]
    only_b: list[Episode]
    moved: list[tuple[Episode, Episode]]  # same problem, opening time differs
    same: int

    @property
    def empty(self) -> bool:
        return not (self.only_a or self.only_b or self.moved)


def _overlaps(a: Episode, b: Episode, end: float) -> bool:
    return a.opened_at <= (b.cleared_at or end) and b.opened_at <= (a.cleared_at or end)


def compare(a: ReplayResult, b: ReplayResult) -> Difference:
    """Match each episode of A with an overlapping one of B for the same rule and device."""
    end = max(a.last_ts or 0.0, b.last_ts or 0.0)
    remaining = list(b.episodes)
    only_a, moved, same = [], [], 0
    for episode in a.episodes:
        match = next(
            (o for o in remaining if o.rule == episode.rule and o.device == episode.device and _overlaps(episode, o, end)),
            None,
        )
        if match is None:
            only_a.append(episode)
            continue
        remaining.remove(match)
        if match.opened_at != episode.opened_at:
            moved.append((episode, match))
        else:
            same += 1
    return Difference(only_a, remaining, moved, same)


def _evidence_text(evidence: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in evidence.items())


def describe(label: str, result: ReplayResult) -> list[str]:
    """The text report of one replay: every episode, in time order."""
    span = f"{iso(result.first_ts)} .. {iso(result.last_ts)}" if result.first_ts is not None else "no data"
    lines = [
        f"{label}: {len(result.rules)} rules; {result.messages} messages from {result.devices} devices, {span}",
        f"  raises {len(result.episodes)} alert(s) on {result.orders} problem(s) (a rule on a device)",
    ]
    if result.unknown_devices:
        lines.append(f"  devices not in the registry (skipped): {', '.join(sorted(result.unknown_devices))}")
    events = []
    for e in result.episodes:
        events.append((e.opened_at, f"  {iso(e.opened_at)}  OPEN   {e.rule:<20} {e.device:<10} {e.severity:<8} "
                                    f"{e.title}  [{_evidence_text(e.evidence)}]"))
        if e.cleared_at is not None:
            events.append((e.cleared_at, f"  {iso(e.cleared_at)}  CLEAR  {e.rule:<20} {e.device:<10} "
                                         f"after {_duration(e.cleared_at - e.opened_at)}  [{_evidence_text(e.clear_evidence)}]"))
    lines += [text for _, text in sorted(events, key=lambda item: item[0])]
    return lines


def _duration(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 120:
        return f"{seconds:g}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def describe_difference(a: str, b: str, difference: Difference) -> list[str]:
    lines = [f"difference, {a} -> {b}:"]
    if difference.empty:
        return lines + [f"  none: the same {difference.same} episode(s) open at the same times"]
    for e in difference.only_a:
        lines.append(f"  only in {a}: {e.rule} on {e.device} opening {iso(e.opened_at)}")
    for e in difference.only_b:
        lines.append(f"  only in {b}: {e.rule} on {e.device} opening {iso(e.opened_at)}")
    for old, new in difference.moved:
        shift = new.opened_at - old.opened_at
        word = "later" if shift > 0 else "earlier"
        lines.append(f"  moved: {old.rule} on {old.device} opens {_duration(shift)} {word} "
                     f"({iso(old.opened_at)} -> {iso(new.opened_at)})")
    lines.append(f"  unchanged: {difference.same} episode(s)")
    return lines
