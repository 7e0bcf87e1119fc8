"""The uplink loop: drain the outbox to the platform, oldest first, marking only what was acknowledged.

On failure it waits with capped exponential backoff and full jitter, then sends the same
revisions again; the platform drops duplicates by (order id, revision).

Between sends it applies the platform's changes (the downlink, see ``uplink.downlink``).
Nothing the platform sends ends this loop: a change of the wrong shape is refused, counted
and reported back; an answer that cannot be read is a failed send; and any other exception
in one pass is caught, logged with its traceback, counted (``faults``, and the ``uplink`` or
``downlink`` part's faults in ``health``), and the loop goes on after a backoff.

Every ``health_interval`` seconds it also sends the gateway's health summary
(edge/status/summary.py): with the next batch when none was delivered for that long, or
alone (a batch with no rows) when the outbox is empty, so an idle gateway still shows its
last contact. A summary the platform did not take is made again and sent with the next try.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

from edge.orders.book import OrderBook
from edge.outbox import Outbox, open_database
from uplink.downlink import Downlink
from uplink.transport_http import HEALTH, TransportError

if TYPE_CHECKING:
    from edge.status.summary import RuleFiles
    from edge.supervisor import Health

log = logging.getLogger(__name__)


class Transport(Protocol):
    def send(self, revisions: list[dict], telemetry: list[dict],
             reports: list[dict] | None = None, health: dict | None = None) -> set[tuple[str, int]]: ...
    def changes(self, after: int, wait: float = 0.0) -> list: ...
    def close(self) -> None: ...


class Sender:
    def __init__(
        self,
        database_path: Path,
        transport: Transport,
        stop: threading.Event,
        wake: threading.Event,
        batch_size: int = 100,
        retry_max: float = 60.0,
        gateway_id: str = "",
        downlink_interval: float = 0.0,
        rules_paths: list[Path] | None = None,
        health: "Health | None" = None,
        category_keys: set[str] | None = None,
        health_interval: float = 0.0,
        summary: Callable[[object, dict[str, int]], dict] | None = None,
        rule_files: "RuleFiles | None" = None,
    ):
        self.database_path = database_path
        self.transport = transport
        self.stop = stop
        self.wake = wake
        self.batch_size = batch_size
        self.retry_max = retry_max
        self.health = health
        self.uplinked = 0  # rows acknowledged by the platform
        self.errors = 0
        self.errors_in_a_row = 0  # failed sends since the last one the platform answered
        self.last_error = ""
        self.last_ok_at: float | None = None  # when the platform last answered a send (gateway clock)
        self.sends = 0  # sends the platform answered, and their total and latest latency
        self.latency_total = 0.0
        self.latency_last: float | None = None
        self.faults = 0  # unexpected exceptions caught in the loop (a counter)
        self.last_fault = ""
        self.gateway_id = gateway_id
        self.downlink = Downlink(transport, downlink_interval, rules_paths or [], category_keys, health, rule_files)
        # The health summary: ``summary(db, rows in the batch by kind)`` makes it (edge/status/summary.py).
        # health_interval 0 or no summary: none is sent.
        self.summary = summary
        self.health_interval = health_interval if summary is not None else 0.0
        self.health_sent = 0  # summaries the platform took
        self._health_due = 0.0  # monotonic: the first goes with the first send

    # The downlink's figures, under the names the agent and tests have used.
    @property
    def downlink_interval(self) -> float:
        return self.downlink.interval

    @property
    def downlink_applied(self) -> int:
        return self.downlink.applied

    @property
    def downlink_refused(self) -> dict[str, int]:
        return self.downlink.refused

    @property
    def rule_files_applied(self) -> int:
        return self.downlink.rule_files_applied

    @property
    def rule_files_refused(self) -> int:
        return self.downlink.rule_files_refused

    def acknowledge_refusal(self) -> None:
        """An operator has seen the refused rule file (e.g. SIGHUP): the downlink is healthy again."""
        self.downlink.acknowledge_refusal()

    def run(self) -> None:
        db = open_database(self.database_path)
        try:
            outbox = Outbox(db)
            book = OrderBook(db, self.gateway_id)
            failures = faults = 0
            while True:
                try:
                    self.downlink.poll(db, book)
                    outcome = self._send(outbox)
                    faults = 0
                    if self.health is not None:
                        self.health.ok("uplink")
                except Exception as error:  # noqa: BLE001 - nothing may end the uplink; counted and shown
                    faults += 1
                    self._fault(error, faults)
                    if self.stop.wait(random.uniform(0.5, 1.0) * min(self.retry_max, 2.0 ** min(faults, 16))):
                        return
                    continue
                if outcome == "stop":
                    return
                if outcome == "failed":
                    failures += 1
                    self.errors_in_a_row = failures
                    delay = random.uniform(0, min(self.retry_max, 0.5 * 2 ** min(failures, 16)))
                    log.warning("uplink failed (%s); retry %d in %.1fs", self.last_error, failures, delay)
                    if self.stop.wait(delay):
                        return
                elif outcome == "sent":
                    failures = self.errors_in_a_row = 0
        finally:
            db.conn.close()
            if self.stop.is_set():
                self.transport.close()

    def _send(self, outbox: Outbox) -> str:
        """One batch to the platform: "sent", "failed", "idle" (nothing to send) or "stop"."""
        batch = outbox.pending(self.batch_size)
        health_due = bool(self.health_interval) and time.monotonic() >= self._health_due
        if not batch:
            if self.stop.is_set():
                return "stop"
            if not health_due:
                self.wake.wait(min(0.5, self.downlink.interval or 0.5))
                self.wake.clear()
                return "idle"
        revisions = [p.body for p in batch if p.kind == "order"]
        telemetry = [p.body for p in batch if p.kind == "telemetry"]
        reports = [p.body for p in batch if p.kind == "report"]
        health = self._summary(outbox, batch) if health_due else None
        if not batch and health is None:
            return "idle"
        started = time.monotonic()
        try:
            if health is None:
                acknowledged = self.transport.send(revisions, telemetry, reports)
            else:
                acknowledged = self.transport.send(revisions, telemetry, reports, health=health)
        except TransportError as error:
            self.errors += 1
            self.last_error = str(error)
            return "failed"
        if health is not None and HEALTH in acknowledged:
            self.health_sent += 1
            self._health_due = time.monotonic() + self.health_interval
        self.latency_last = time.monotonic() - started
        self.latency_total += self.latency_last
        self.sends += 1
        self.last_ok_at = time.time()
        wanted = {(p.key, p.revision) for p in batch}
        self.uplinked += outbox.mark_sent(sorted(wanted & acknowledged))
        if not wanted <= acknowledged:
            log.warning("platform left %d of %d revisions unacknowledged", len(wanted - acknowledged), len(wanted))
            if self.stop.wait(1.0):
                return "stop"
        return "sent"

    def _summary(self, outbox: Outbox, batch: list) -> dict | None:
        """The health summary to send now with ``batch``; None (and the next one an interval later) if it
        could not be made."""
        assert self.summary is not None
        try:
            return self.summary(outbox.db, Counter(p.kind for p in batch))
        except Exception as error:  # noqa: BLE001 - the orders must go out without it
            self._health_due = time.monotonic() + self.health_interval
            self.faults += 1
            self.last_fault = f"health summary: {type(error).__name__}: {error}"[:500]
            log.error("uplink: the health summary could not be made; sending without it", exc_info=error)
            if self.health is not None:
                self.health.fault("uplink", error)
            return None

    def _fault(self, error: Exception, in_a_row: int) -> None:
        self.faults += 1
        self.last_fault = f"{type(error).__name__}: {error}"[:500]
        log.error("uplink: unexpected error (%d in a row), carrying on after a pause", in_a_row, exc_info=error)
        if self.health is not None:
            self.health.fault("uplink", error)
            self.health.degraded("uplink", f"unexpected error, retrying: {self.last_fault}")


def drain(sender: Sender, timeout: float) -> bool:
    """Wait until the outbox is empty or ``timeout`` passes; True when it emptied."""
    outbox = Outbox(open_database(sender.database_path))
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if outbox.depth() == 0:
                return True
            sender.wake.set()
            time.sleep(0.1)
        return outbox.depth() == 0
    finally:
        outbox.db.conn.close()
