"""The downlink: the platform's changes for this gateway, checked, applied once each, or refused.

The platform is not trusted. Each change is checked before anything is done with it:

- its ``seq`` must be an integer 1 .. 2**63-1. One written as text or as a float ("12",
  12.0) is refused as ``malformed_change`` (and reported under that number); one with no
  number at all (missing, "abc", a list...) can be neither applied nor reported: it is
  counted once as ``invalid_seq`` and logged;
- ``type`` is ``order`` (also when absent) or ``rules``; anything else is ``malformed_change``;
- an order change needs ``order_id`` and ``state`` as text (``malformed_change``); the
  order book may still refuse it (``unknown_order``, ``illegal_transition``);
- a rule file needs a plain ``file`` name (``*.yaml``) and text ``content``, and is loaded
  with the rules beside it exactly as ``edge run`` would load them (category table, size,
  nesting and alias limits of edge/engine/rules.py) before it is written; else
  ``rule_file_invalid``, with each problem as ``<file as pushed>:<line>: message``.

Every refusal moves the cursor past the change (in the same transaction as its report), is
counted by reason (``refused``), logged, and queued as a report to the platform (outbox kind
``report``, docs/uplink.md); an applied rule file is reported too. A change that raises
anything unexpected three times is refused as ``change_failed`` rather than retried forever.

Health (part ``downlink``): degraded while the last rule file the platform pushed was refused
(``last_refused_rule_file`` says which and why), until a later one is applied, an operator
acknowledges it (``acknowledge_refusal``, called on SIGHUP) or the agent restarts; degraded
too while the downlink pass itself fails unexpectedly.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import Counter, OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from edge.engine.rules import MAX_FILE_BYTES, RuleFileError, load_rules
from edge.orders.book import OrderBook, OrderError, iso
from edge.outbox import Outbox, transaction
from uplink.transport_http import TransportError, preview, show

if TYPE_CHECKING:
    from edge.status.summary import RuleFiles
    from edge.supervisor import Health

log = logging.getLogger(__name__)

FILE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}\.ya?ml")
MAX_ORDER_ID = 200
MAX_STATE = 40
MAX_DETAIL = 4000  # characters of a report's detail
ATTEMPTS = 3  # a change that fails unexpectedly this often is refused
REMEMBERED = 1000  # changes with no usable seq remembered, so each is counted once
PER_POLL = 200  # changes handled in one pass; the rest in the next ones, so sends are not held up


def _number(value: object) -> int | None:
    """An integer seq written some other way (text "12", float 12.0), for reporting; else None."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*\d{1,19}\s*", value):
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63:
        return value
    return None


class Downlink:
    def __init__(self, transport, interval: float, rules_paths: list[Path], category_keys: set[str] | None,
                 health: "Health | None" = None, rule_files: "RuleFiles | None" = None):
        self.transport = transport
        self.rule_files = rule_files  # the health summary's record of refused rule files
        self.interval = interval  # 0: no downlink
        self.rules_paths = rules_paths
        self.category_keys = category_keys
        self.health = health
        self.applied = 0  # order changes applied
        self.refused: Counter = Counter()  # changes refused, by reason
        self.rule_files_applied = 0
        self.rule_files_refused = 0
        self.last_refused_rule_file: dict | None = None  # file, seq, reason, detail, at
        self.refusal_pending = False  # the latest pushed rule file was refused and nobody has acknowledged it
        self.reports_queued = 0
        self.faults = 0
        self.last_error = ""  # the latest failed fetch of the changes feed
        self._next = 0.0
        self._attempts: Counter = Counter()  # seq -> unexpected failures
        self._unnumbered: OrderedDict[bytes, None] = OrderedDict()
        self._fault_pending = ""

    # -- the pass --------------------------------------------------------------------------

    def poll(self, db, book: OrderBook) -> None:
        """Fetch the changes after the saved cursor and apply or refuse each; never raises."""
        if not self.interval or time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.interval
        try:
            self._poll(db, book)
            self._fault_pending = ""
        except Exception as error:  # noqa: BLE001 - the downlink must not stop the uplink
            self.faults += 1
            self._fault_pending = f"{type(error).__name__}: {error}"[:500]
            log.error("downlink: unexpected error, trying again in %.1fs", self.interval, exc_info=error)
            if self.health is not None:
                self.health.fault("downlink", error)
        self._show_health()

    def _poll(self, db, book: OrderBook) -> None:
        row = db.execute("SELECT value FROM cursors WHERE name = 'downlink'").fetchone()
        after = row[0] if row else 0
        try:
            changes = self.transport.changes(after)
        except TransportError as error:
            self.last_error = str(error)
            log.warning("downlink failed: %s", error)
            return
        self.last_error = ""
        numbered: dict[int, object] = {}
        for item in changes if isinstance(changes, list) else [changes]:
            seq = item.get("seq") if isinstance(item, dict) else None
            number = seq if isinstance(seq, int) and not isinstance(seq, bool) and 0 < seq < 2**63 else _number(seq)
            if number is None:
                self._unnumbered_change(item)
            elif number > after and number not in numbered:
                numbered[number] = item
        for seq in sorted(numbered)[:PER_POLL]:
            self._attempt(db, book, seq, numbered[seq])
        if len(numbered) > PER_POLL:
            self._next = 0.0  # more waiting: the next pass comes right after the next send

    def _attempt(self, db, book: OrderBook, seq: int, item: object) -> None:
        try:
            self._apply(db, book, seq, item)
            self._attempts.pop(seq, None)
        except Exception as error:
            self._attempts[seq] += 1
            if self._attempts[seq] < ATTEMPTS:
                raise
            del self._attempts[seq]
            log.error("downlink: change %d failed %d times; refusing it", seq, ATTEMPTS, exc_info=error)
            kind = item.get("type") if isinstance(item, dict) else None
            self._refuse(db, seq, "rules" if kind == "rules" else "order", "change_failed",
                         f"the gateway failed to apply it: {type(error).__name__}: {error}")

    def _apply(self, db, book: OrderBook, seq: int, item: object) -> None:
        if not isinstance(item, dict):
            self._refuse(db, seq, "unknown", "malformed_change", f"a change must be a JSON object, not {show(item, 80)}")
            return
        kind = item.get("type", "order")
        kind = "order" if kind is None else kind
        if kind not in ("order", "rules"):
            self._refuse(db, seq, "unknown", "malformed_change",
                         f"unknown type {show(kind, 60)}: expected \"order\" or \"rules\"")
            return
        if not isinstance(item["seq"], int) or isinstance(item["seq"], bool):
            self._refuse(db, seq, kind, "malformed_change",
                         f"seq must be a JSON integer, got {show(item['seq'], 40)}")
            return
        if kind == "rules":
            self._apply_rule_file(db, seq, item)
            return
        order_id, state = item.get("order_id"), item.get("state")
        if not isinstance(order_id, str) or not 0 < len(order_id) <= MAX_ORDER_ID:
            self._refuse(db, seq, "order", "malformed_change",
                         f"order_id must be text of 1 to {MAX_ORDER_ID} characters, got "
                         f"{show(order_id, 60)}")
            return
        if not isinstance(state, str) or not 0 < len(state) <= MAX_STATE:
            self._refuse(db, seq, "order", "malformed_change",
                         f"state must be text of 1 to {MAX_STATE} characters, got {show(state, 60)}")
            return
        try:
            book.apply_platform_state(order_id, state, cursor=("downlink", seq))
        except OrderError as error:
            self._refuse(db, seq, "order", error.reason, str(error))
            return
        self.applied += 1
        log.info("platform set order %s to %s", preview(order_id, 80), preview(state, 40))

    # -- rule files ------------------------------------------------------------------------

    def _apply_rule_file(self, db, seq: int, change: dict) -> None:
        """Check a pushed rule file with the rules beside it, as ``edge run`` would load them; write it
        only if all are valid. The running agent notices the new file and reloads."""
        name, content = change.get("file"), change.get("content")
        folder = next((p for p in self.rules_paths if p.is_dir()), None)
        problem = None
        if not isinstance(name, str) or not FILE_NAME.fullmatch(name):
            problem = (f"{show(name, 60)} is not a rule file name: letters, digits, _ . - "
                       "ending in .yaml or .yml")
            name = name if isinstance(name, str) else ""
        elif folder is None:
            problem = f"{name}: the gateway has no rules folder to put it in ([rules] paths names no folder)"
        elif not isinstance(content, str):
            problem = f"{name}:1: the content must be text, not {type(content).__name__}"
        else:
            try:
                load_rules(self.rules_paths, self.category_keys, given={folder / name: (name, content)})
            except RuleFileError as error:
                problem = "\n".join(str(p) for p in error.problems)
        if problem is not None:
            self._refuse(db, seq, "rules", "rule_file_invalid", problem, file=name)
            return
        assert folder is not None and isinstance(content, str)
        staged = folder / f".{name}.incoming"
        try:
            staged.write_text(content, encoding="utf-8")
            os.replace(staged, folder / name)
        except OSError as error:
            staged.unlink(missing_ok=True)
            self._refuse(db, seq, "rules", "rule_file_not_written", f"{folder / name}: {error.strerror or error}",
                         file=name)
            return
        with transaction(db):
            db.execute("INSERT OR REPLACE INTO cursors (name, value) VALUES ('downlink', ?)", [seq])
            self._report(db, {"seq": seq, "type": "rules", "status": "applied", "file": name, "at": iso(time.time())})
        self.rule_files_applied += 1
        self.refusal_pending = False
        if self.rule_files is not None:
            self.rule_files.applied(name)
        log.info("rule file %s from the platform (change %d) written to %s", name, seq, folder)

    def acknowledge_refusal(self) -> None:
        self.refusal_pending = False
        self._show_health()

    # -- refusals, reports, health ---------------------------------------------------------

    def _refuse(self, db, seq: int, kind: str, reason: str, detail: str, file: str | None = None) -> None:
        """Move the cursor past change ``seq`` and queue its report, in one transaction; count and log it."""
        detail = detail[:MAX_DETAIL]
        report = {"seq": seq, "type": kind, "status": "refused", "reason": reason, "detail": detail,
                  "at": iso(time.time())}
        if file is not None:
            report["file"] = file
        with transaction(db):
            db.execute("INSERT OR REPLACE INTO cursors (name, value) VALUES ('downlink', ?)", [seq])
            self._report(db, report)
        self.refused[reason] += 1
        lines = detail.splitlines() or [""]
        for line in lines[:20]:
            log.error("refused the platform's change %d (%s, %s): %s", seq, kind, reason, preview(line, 300))
        if kind == "rules":
            self.rule_files_refused += 1
            self.refusal_pending = True
            self.last_refused_rule_file = {"file": file or "", "seq": seq, "reason": reason, "detail": detail,
                                           "at": time.time()}
            if self.rule_files is not None:
                self.rule_files.refused(file or "", reason, detail, self.last_refused_rule_file["at"])

    def _report(self, db, body: dict) -> None:
        Outbox(db).put_report(body["seq"], body)
        self.reports_queued += 1

    def _unnumbered_change(self, item: object) -> None:
        """A change with no usable seq: neither applied nor reported (the platform could not tell
        which it was); counted and logged once per distinct change."""
        try:
            key = orjson.dumps(item, option=orjson.OPT_SORT_KEYS)
        except (TypeError, orjson.JSONEncodeError):
            key = repr(item).encode()
        if key in self._unnumbered:
            return
        self._unnumbered[key] = None
        if len(self._unnumbered) > REMEMBERED:
            self._unnumbered.popitem(last=False)
        self.refused["invalid_seq"] += 1
        log.error("refused a change from the platform with no usable seq (an integer from 1): %s", preview(key, 200))

    def _show_health(self) -> None:
        if self.health is None:
            return
        if self._fault_pending:
            self.health.degraded("downlink", f"unexpected error, retrying: {self._fault_pending}")
        elif self.refusal_pending and self.last_refused_rule_file is not None:
            refused = self.last_refused_rule_file
            first = (refused["detail"].splitlines() or [""])[0]
            self.health.degraded("downlink", f"rule file {refused['file'] or '?'} from the platform refused "
                                             f"(change {refused['seq']}): {preview(first, 200)}")
        else:
            self.health.ok("downlink")

    def status(self) -> dict:
        """The downlink's figures for the status snapshot."""
        return {
            "interval_s": self.interval, "applied": self.applied, "refused": dict(self.refused),
            "rule_files_applied": self.rule_files_applied, "rule_files_refused": self.rule_files_refused,
            "last_refused_rule_file": self.last_refused_rule_file, "refusal_pending": self.refusal_pending,
            "reports_queued": self.reports_queued, "faults": self.faults, "last_error": self.last_error,
        }
