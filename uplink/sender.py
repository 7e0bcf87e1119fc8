"""The uplink loop: drain the outbox to the platform, oldest first, marking only what was acknowledged.

On failure it waits with capped exponential backoff and full jitter, then sends the same
revisions again; the platform drops duplicates by (order id, revision).
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Protocol

from edge.engine.rules import RuleFileError, load_rules, rule_files
from edge.orders.book import OrderBook, OrderError
from edge.outbox import Outbox, open_database, transaction
from uplink.transport_http import TransportError

log = logging.getLogger(__name__)


class Transport(Protocol):
    def send(self, revisions: list[dict], telemetry: list[dict]) -> set[tuple[str, int]]: ...
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
    ):
        self.database_path = database_path
        self.transport = transport
        self.stop = stop
        self.wake = wake
        self.batch_size = batch_size
        self.retry_max = retry_max
        self.uplinked = 0  # rows acknowledged by the platform
        self.errors = 0
        self.errors_in_a_row = 0  # failed sends since the last one the platform answered
        self.last_error = ""
        self.last_ok_at: float | None = None  # when the platform last answered a send (gateway clock)
        self.sends = 0  # sends the platform answered, and their total and latest latency
        self.latency_total = 0.0
        self.latency_last: float | None = None
        self.gateway_id = gateway_id
        self.downlink_interval = downlink_interval  # 0: no downlink
        self.downlink_applied = 0
        self.downlink_refused: dict[str, int] = {}
        self._next_downlink = 0.0
        self.rules_paths = rules_paths or []
        self.rule_files_applied = 0

    def _downlink(self, db, book: OrderBook) -> None:
        """Fetch the platform's decisions since the saved cursor and apply them, each exactly once."""
        if not self.downlink_interval or time.monotonic() < self._next_downlink:
            return
        self._next_downlink = time.monotonic() + self.downlink_interval
        row = db.execute("SELECT value FROM cursors WHERE name = 'downlink'").fetchone()
        after = row[0] if row else 0
        try:
            changes = self.transport.changes(after)
        except TransportError as error:
            log.warning("downlink failed: %s", error)
            return
        for change in changes:
            cursor = ("downlink", int(change["seq"]))
            if change.get("type") == "rules":
                self._apply_rule_file(change)
                with transaction(db):
                    db.execute("INSERT OR REPLACE INTO cursors (name, value) VALUES (?, ?)", list(cursor))
                continue
            try:
                book.apply_platform_state(str(change["order_id"]), str(change["state"]), cursor=cursor)
                self.downlink_applied += 1
                log.info("platform set order %s to %s", change["order_id"], change["state"])
            except OrderError as error:
                self.downlink_refused[error.reason] = self.downlink_refused.get(error.reason, 0) + 1
                with transaction(db):
                    db.execute("INSERT OR REPLACE INTO cursors (name, value) VALUES (?, ?)", list(cursor))
                log.error("refused the platform's change %s: %s", change.get("seq"), error)

    def _apply_rule_file(self, change: dict) -> bool:
        """Validate a rule file from the platform with the rules beside it; write it only if all are valid.

        The running agent notices the new file and reloads, as for a file an engineer copied in.
        """
        name = str(change.get("file", ""))
        folder = next((p for p in self.rules_paths if p.is_dir()), None)
        if folder is None or not re.fullmatch(r"[A-Za-z0-9_.-]+\.ya?ml", name):
            self.downlink_refused["rule_file"] = self.downlink_refused.get("rule_file", 0) + 1
            log.error("refused rule file %r from the platform: no rules folder to put it in, or a bad name", name)
            return False
        with tempfile.TemporaryDirectory() as tmp:
            trial = Path(tmp)
            for existing in rule_files([folder]):
                if existing.name != name:
                    shutil.copy(existing, trial / existing.name)
            (trial / name).write_text(str(change.get("content", "")), encoding="utf-8")
            try:
                load_rules([trial])
            except RuleFileError as error:
                self.downlink_refused["rule_file"] = self.downlink_refused.get("rule_file", 0) + 1
                for problem in error.problems:
                    log.error("refused rule file %s from the platform: %s", name, problem)
                return False
        staged = folder / f".{name}.incoming"
        staged.write_text(str(change.get("content", "")), encoding="utf-8")
        os.replace(staged, folder / name)
        self.rule_files_applied += 1
        log.info("rule file %s from the platform written to %s", name, folder)
        return True

    def run(self) -> None:
        db = open_database(self.database_path)
        outbox = Outbox(db)
        book = OrderBook(db, self.gateway_id)
        failures = 0
        try:
            while True:
                self._downlink(db, book)
                batch = outbox.pending(self.batch_size)
                if not batch:
                    if self.stop.is_set():
                        return
                    self.wake.wait(min(0.5, self.downlink_interval or 0.5))
                    self.wake.clear()
                    continue
                revisions = [p.body for p in batch if p.kind == "order"]
                telemetry = [p.body for p in batch if p.kind == "telemetry"]
                started = time.monotonic()
                try:
                    acknowledged = self.transport.send(revisions, telemetry)
                except TransportError as error:
                    failures += 1
                    self.errors += 1
                    self.errors_in_a_row = failures
                    self.last_error = str(error)
                    delay = random.uniform(0, min(self.retry_max, 0.5 * 2 ** min(failures, 16)))
                    log.warning("uplink failed (%s); retry %d in %.1fs", error, failures, delay)
                    if self.stop.wait(delay):
                        return
                    continue
                failures = self.errors_in_a_row = 0
                self.latency_last = time.monotonic() - started
                self.latency_total += self.latency_last
                self.sends += 1
                self.last_ok_at = time.time()
                wanted = {(p.key, p.revision) for p in batch}
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
