"""Fixed means fixed: the sensors re-check an order the platform marked ``resolved``.

When the platform resolves an order, each of its problems (a rule on a device) is judged on
what the device reports after the resolution, in the device's own time, counted from its
clock at the moment of the resolution (``verify_from``) for at most ``verify_within`` (the
category's, else ``[orders] verify_within``):

- **verified**: the problem is clear (its rule's ``clear_when`` held for ``clear_for``, as the
  engine clears an order) and the device reported at least ``clear_for`` after the
  resolution, with the condition not starting to hold again. A camera reports detections,
  not their absence: its problem is verified when no new detection raised it for the whole
  window and the camera was heard from within ``silent_after``.
- **not_fixed**: the problem came back (or was never cleared) within the window; the
  condition still holding when the window ends counts too.
- **unverified**: the window ended without a report that could confirm the fix (a silent
  device). Flagged, not treated as fixed.

An order is verified when every problem is, not fixed as soon as one problem is, and
unverified when the window has ended for every problem and neither holds. docs/rules.md
("Fixed means fixed") says it for field engineers.

This module only judges; edge/orders/book.py applies the outcome (a revision, the state).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    from edge.engine.engine import Engine

VERIFIED, NOT_FIXED, UNVERIFIED, PENDING = "verified", "not_fixed", "unverified", "pending"
OUTCOMES = (VERIFIED, NOT_FIXED, UNVERIFIED)


class DeviceView(Protocol):
    """What the engine knows of the devices now (edge/agent.py builds it for each tick)."""

    def clock(self, device: str) -> float:
        """The device's clock now (Engine.device_time)."""

    def seen(self, device: str) -> float | None:
        """Device time of the device's newest report; None if never heard from."""

    def holding(self, rule: str, device: str) -> bool:
        """The rule's ``when`` holds on the device now, its ``for`` still running (no open yet)."""

    def clear_for(self, rule: str) -> float:
        """The rule's ``clear_for`` (0 for a rule no longer loaded)."""

    def is_camera(self, device: str) -> bool: ...

    def values(self, rule: str, device: str) -> list[dict]:
        """Evidence: the newest value of each metric the rule reads ({device, rule, metric, value, at, condition};
        ``at`` in device seconds)."""


@dataclass(frozen=True)
class Member:
    """One problem of a resolved order, as order_members holds it."""

    rule: str
    device: str
    state: str  # opened (the condition holds) or cleared
    changed_at: float | None  # device time of its last open or clear
    verify_from: float  # the device's clock when the order was resolved


def judge(member: Member, view: DeviceView, within: float, silent_after: float) -> str:
    """The member's outcome so far: verified, not_fixed, unverified or pending."""
    start, now = member.verify_from, view.clock(member.device)
    window_over = now >= start + within
    if member.state == "opened":
        came_back = member.changed_at is not None and member.changed_at >= start
        return NOT_FIXED if came_back or window_over else PENDING
    if view.holding(member.rule, member.device):  # starting again, its `for` not yet over
        return NOT_FIXED if window_over else PENDING
    seen = view.seen(member.device)
    if view.is_camera(member.device):
        if not window_over:
            return PENDING
        return VERIFIED if seen is not None and now - seen <= silent_after else UNVERIFIED
    cleared = member.changed_at if member.changed_at is not None else start
    needed = max(start + view.clear_for(member.rule), cleared)
    if seen is not None and seen > start and seen >= needed:
        return VERIFIED
    return UNVERIFIED if window_over else PENDING


def decide(members: list[Member], view: DeviceView, within: float, silent_after: float) -> tuple[str, list[Member]]:
    """The order's outcome (pending while undecided) and the members that decide it."""
    verdicts = [(judge(m, view, within, silent_after), m) for m in members]
    not_fixed = [m for v, m in verdicts if v == NOT_FIXED]
    if not_fixed:
        return NOT_FIXED, not_fixed
    if all(v == VERIFIED for v, _ in verdicts):
        return VERIFIED, members
    if all(v in (VERIFIED, UNVERIFIED) for v, _ in verdicts):
        return UNVERIFIED, [m for v, m in verdicts if v == UNVERIFIED]
    return PENDING, []


def resolution_clock(clock: Callable[[str], float], device: str, now: float, resolved_at: float) -> float:
    """The device's clock when the order was resolved (gateway time ``resolved_at``), reckoned from its clock now."""
    return clock(device) - max(0.0, now - resolved_at)


class EngineView:
    """DeviceView over the running engine, at gateway time ``now`` (built for each re-check)."""

    def __init__(self, engine: "Engine", now: float):
        self.engine, self.now = engine, now
        self.program = engine.program
        self.rules = {rule.name: (r, rule) for r, rule in enumerate(engine.rules)}
        self.clock = engine.clock(now)

    def seen(self, device: str) -> float | None:
        d = self.engine.registry.get(device)
        newest = float(self.engine.latest_ts[d.index, 0]) if d is not None else -math.inf
        return newest if newest > -math.inf else None

    def holding(self, rule: str, device: str) -> bool:
        d, found = self.engine.registry.get(device), self.rules.get(rule)
        if d is None or found is None:
            return False
        r = found[0]
        return not self.engine.active[d.index, r] and not math.isnan(self.engine.since[d.index, r])

    def clear_for(self, rule: str) -> float:
        found = self.rules.get(rule)
        return float(found[1].spec.clear_for) if found is not None else 0.0

    def is_camera(self, device: str) -> bool:
        d = self.engine.registry.get(device)
        return d is not None and d.kind == "camera"

    def values(self, rule: str, device: str) -> list[dict]:
        d, found = self.engine.registry.get(device), self.rules.get(rule)
        if d is None or found is None:
            return []
        r, condition = found[0], found[1].clear_text
        out = []
        for m in self.program.rule_metrics[r]:
            if m < 0:
                break
            value, at = float(self.engine.latest[d.index, m]), float(self.engine.latest_ts[d.index, m])
            if math.isnan(value):
                continue
            name = self.program.metric_names[m]
            shown = self.program.texts.text(value) if name in self.program.text_metrics else value
            out.append({"device": device, "rule": rule, "metric": name, "value": shown,
                        "at": at, "condition": condition})
        return out
