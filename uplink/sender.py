"""The uplink loop: drain the outbox to the platform, oldest first, marking only what was acknowledged.

On failure it waits with capped exponential backoff and full jitter, then sends the same
revisions again; the platform drops duplicates by (order id, revision).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from pathlib import Path
from typing import Protocol

from edge.outbox import Outbox, open_database
from uplink.transport_http import TransportError

log = logging.getLogger(__name__)


class Transport(Protocol):
    def send(self, revisions: list[dict]) -> set[tuple[str, int]]: ...
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
    ):
        self.database_path = database_path
        self.transport = transport
        self.stop = stop
        self.wake = wake
        self.batch_size = batch_size
        self.retry_max = retry_max
        self.uplinked = 0  # revisions acknowledged by the platform
        self.errors = 0
        self.last_error = ""

    def run(self) -> None:
        outbox = Outbox(open_database(self.database_path))
        failures = 0
        try:
            while True:
                batch = outbox.pending(self.batch_size)
                if not batch:
                    if self.stop.is_set():
                        return
                    self.wake.wait(0.5)
                    self.wake.clear()
                    continue
                try:
                    acknowledged = self.transport.send([p.body for p in batch])
                except TransportError as error:
                    failures += 1
                    self.errors += 1
                    self.last_error = str(error)
                    delay = random.uniform(0, min(self.retry_max, 0.5 * 2 ** min(failures, 16)))
                    log.warning("uplink failed (%s); retry %d in %.1fs", error, failures, delay)
                    if self.stop.wait(delay):
                        return
                    continue
                failures = 0
                wanted = {(p.order_id, p.revision) for p in batch}
                self.uplinked += outbox.mark_sent(sorted(wanted & acknowledged))
                if not wanted <= acknowledged:
                    log.warning("platform left %d of %d revisions unacknowledged", len(wanted - acknowledged), len(wanted))
                    if self.stop.wait(1.0):
                        return
        finally:
            self.transport.close()
            outbox.db.conn.close()


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
