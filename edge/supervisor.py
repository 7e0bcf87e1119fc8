"""Every part of the gateway supervised, and one true picture of their health.

A part (the uplink, the Modbus poller, the status server, the engine loop's disk writes...)
reports what happens to it here: ``fault()`` when it caught something it could not handle,
``ok()`` when it works again, ``degraded()`` for a condition it keeps running through (a full
disk, a refused checkpoint). ``run_supervised`` runs a part's loop in its thread: an exception
that escapes it is logged, counted and the loop restarted after a capped, randomised backoff,
so one fault never ends the part for good. ``Health.healthy()`` is what ``/healthz`` and
``edge status`` answer: false while any part is down or degraded.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["Health", "Part", "run_supervised"]

log = logging.getLogger(__name__)

OK, DEGRADED, DOWN = "ok", "degraded", "down"


@dataclass
class Part:
    name: str
    state: str = OK
    faults_total: int = 0  # exceptions caught, ever (a counter: only goes up)
    restarts_total: int = 0
    last_error: str = ""
    last_error_at: float | None = None
    since: float = field(default_factory=time.time)  # when it entered its state
    detail: str = ""  # what a person should know about a degraded part

    def as_dict(self) -> dict:
        return {
            "name": self.name, "state": self.state, "faults_total": self.faults_total,
            "restarts_total": self.restarts_total, "last_error": self.last_error,
            "last_error_at": self.last_error_at, "since": self.since, "detail": self.detail,
        }


class Health:
    """The parts of one gateway and their states; safe to use from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[str, Part] = {}

    def part(self, name: str) -> Part:
        with self._lock:
            return self._parts.setdefault(name, Part(name))

    def _set(self, name: str, state: str, detail: str = "") -> None:
        part = self.part(name)
        with self._lock:
            if part.state != state:
                part.state, part.since = state, time.time()
            part.detail = detail

    def ok(self, name: str) -> None:
        if self.part(name).state != OK:
            log.info("%s is working again", name)
        self._set(name, OK)

    def degraded(self, name: str, detail: str) -> None:
        if self.part(name).state != DEGRADED:
            log.error("%s degraded: %s", name, detail)
        self._set(name, DEGRADED, detail)

    def down(self, name: str, detail: str) -> None:
        self._set(name, DOWN, detail)

    def fault(self, name: str, error: BaseException | str) -> None:
        """Count a fault the part caught (it keeps its state unless told otherwise)."""
        part = self.part(name)
        with self._lock:
            part.faults_total += 1
            part.last_error = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
            part.last_error_at = time.time()

    def parts(self) -> list[dict]:
        with self._lock:
            return [p.as_dict() for p in sorted(self._parts.values(), key=lambda p: p.name)]

    def healthy(self) -> bool:
        with self._lock:
            return all(p.state == OK for p in self._parts.values())

    def problems(self) -> list[str]:
        """One line per part that is not ok, for a person."""
        with self._lock:
            return [f"{p.name} {p.state}: {p.detail or p.last_error}" for p in self._parts.values() if p.state != OK]


def run_supervised(health: Health, name: str, loop: Callable[[], None], stop: threading.Event,
                   backoff_min: float = 1.0, backoff_max: float = 60.0) -> None:
    """Run ``loop`` until it returns (it should when ``stop`` is set); restart it when it raises.

    Each restart waits longer (doubling from ``backoff_min`` up to ``backoff_max``, drawn
    between half and all of it); a loop that ran for a minute without failing starts again
    from ``backoff_min``. While it waits the part is down, so health shows it.
    """
    failures = 0
    health.ok(name)
    while not stop.is_set():
        started = time.monotonic()
        try:
            loop()
            return
        except Exception as error:  # noqa: BLE001 - the supervisor's job is exactly this
            if time.monotonic() - started > 60:
                failures = 0
            failures += 1
            health.fault(name, error)
            delay = min(backoff_max, backoff_min * 2 ** (failures - 1))
            delay = random.uniform(delay / 2, delay)
            health.down(name, f"failed ({type(error).__name__}: {error}); restarting in {delay:.1f}s")
            log.exception("%s failed; restarting it in %.1fs (failure %d in a row)", name, delay, failures)
            if stop.wait(delay):
                return
            health.part(name).restarts_total += 1
            health.ok(name)
