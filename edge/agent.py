"""The gateway agent: owns its loops (MQTT network, engine, uplink) and stops them cleanly.

Data flow: MQTT -> bounded queue -> decode -> engine -> orders + outbox (one transaction per
batch) -> uplink. ``stop()`` (or SIGTERM under ``edge run``) stops taking messages, finishes
the batch in hand, lets the uplink flush what it can, and closes the database.
"""

from __future__ import annotations

import gc
import logging
import math
import queue
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import orjson

from edge.config import ConfigError, GatewayConfig
from edge.engine import Engine, RuleFileError, load_rules
from edge.engine import checkpoint
from edge.engine.rules import fingerprint
from edge.ingest.decode import DecodeError, Limits, check_kinds, derive
from edge.ingest.decoders import decode as decode_message
from edge.ingest.dedupe import Duplicates
from edge.ingest.inbox import Inbox
from edge.ingest.modbus_poll import ModbusPoller, ModbusSetupError, polled_devices
from edge.ingest.mqtt import MqttSubscriber, RawMessage, TlsSettings, to_ack
from edge.ingest.quarantine import UnknownDevices, quarantine_row, record_unknown
from edge.ingest.quarantine import store as store_quarantine, trim as trim_quarantine
from edge.orders import OrderBook
from edge.orders.categories import Categories
from edge.orders.verification import EngineView
from edge.paths import default_categories
from edge.outbox import Outbox, open_database, transaction
from edge.outbox.disk import DiskFullError, has_room, is_disk_full
from edge.outbox.telemetry import TelemetrySummaries
from edge.registry import Registry
from edge.service import Notifier
from edge.supervisor import Health, run_supervised
from edge.status.server import StatusServer
from edge.status.summary import RuleFiles, health_summary
from uplink.sender import Sender
from uplink.transport_http import HttpTransport
from uplink.transport_mqtt import MqttTransport

log = logging.getLogger(__name__)


@dataclass
class Stats:
    messages: int = 0
    readings: int = 0
    quarantined: Counter = field(default_factory=Counter)
    duplicate_uplinks: int = 0  # LoRaWAN frames heard again (several gateways): counted once
    unknown_devices: UnknownDevices = field(default_factory=UnknownDevices)  # bounded ([ingest] unknown_devices_max)
    alerts_raised: int = 0  # rules that fired (opened) on a device: an order opened, grouped, reopened or already open
    orders_opened: int = 0
    orders_cleared: int = 0
    orders_reopened: int = 0
    other_changes: Counter = field(default_factory=Counter)  # grouped, escalated
    batches: int = 0
    commits: int = 0  # transactions that wrote evaluated batches and ticks (several at once: [engine] commit_interval)
    evicted: Counter = field(default_factory=Counter)
    quarantine_trimmed: int = 0  # quarantined messages deleted beyond [outbox] quarantine_max
    telemetry_summaries: int = 0
    rule_reloads: int = 0
    rule_errors: int = 0
    last_rule_error: str = ""
    engine_seconds: float = 0.0  # time in Engine.process, all batches
    last_batch_seconds: float = 0.0
    internal_errors: int = 0  # messages that made a part of ingest fail unexpectedly (quarantined)
    write_failures: int = 0  # commits that failed (full disk...): retried, nothing acknowledged meanwhile
    checkpoints: int = 0
    checkpoint_failures: int = 0
    checkpoint_refused: int = 0  # checkpoints (or rules' states in one) that could not be used at start
    replayed_steps: int = 0  # changelog steps replayed at start
    clock_resets: int = 0  # devices whose wrong clock came back: their rules started afresh


@dataclass
class Step:
    """What one batch or tick did, to be written in one transaction before its messages are acknowledged."""

    kind: str  # "batch" or "tick"
    at: float  # gateway time
    transitions: list
    log: list = field(default_factory=list)  # the engine changelog's rows (kind, at, body): what changed the engine
    # (a "batch" row's body is the ReadingBatch itself: the batches of one commit are encoded as one row)
    quarantine: list = field(default_factory=list)
    unknown: list = field(default_factory=list)
    acks: list = field(default_factory=list)  # packet ids of its messages, acknowledged to the broker once written


class Agent:
    def __init__(self, config: GatewayConfig):
        self.config = config
        self.registry = Registry.load(config.registry.path)
        self.categories = Categories.load(config.orders.categories or default_categories())
        self._rules_fingerprint = fingerprint(config.rules.paths)
        self.rule_files = RuleFiles()  # what the health summary says of the rule files
        loaded = RuleFiles.version_of(config.rules.paths)
        self.rules = load_rules(config.rules.paths, self.categories.keys())
        self.rule_files.loaded(loaded)
        self.engine = Engine(self.rules, self.registry)
        self._reload_requested = threading.Event()
        self.stats = Stats()
        self.stats.unknown_devices = UnknownDevices(config.ingest.unknown_devices_max)
        self.limits = Limits.from_config(config.ingest)
        self.vendor, problems = config.codecs.load()
        if problems:
            raise ConfigError("device-model mappings and codecs ([codecs]):\n" + "\n".join(problems))
        self.health = Health()
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.inbox = Inbox(config.engine.queue_max)
        self.duplicates = Duplicates()
        self._uplink_wake = threading.Event()
        m = config.mqtt
        tls = None
        if m.tls:
            tls = TlsSettings(str(m.ca_file) if m.ca_file else None, str(m.cert_file) if m.cert_file else None,
                              str(m.key_file) if m.key_file else None)
        self.subscriber = MqttSubscriber(
            m.host, m.port, m.client_id, m.topics, m.qos, self.inbox, self.stop_event, m.username, m.password,
            tls=tls, protocol=m.protocol, session_expiry=m.session_expiry, keepalive=m.keepalive,
            reconnect_min=m.reconnect_min, reconnect_max=m.reconnect_max, connect_timeout=m.connect_timeout,
        )
        self.poller = None
        if config.modbus.port:
            b = config.modbus
            try:
                polled = polled_devices(self.registry, b.poll_interval)
            except ModbusSetupError as error:
                raise ConfigError(f"{config.registry.path}: {error} ([modbus] port is set, so it is polled)") from None
            self.poller = ModbusPoller(b.port, polled, self._put_polled, self.stop_event, baudrate=b.baudrate,
                                       parity=b.parity, timeout=b.timeout, function=b.function,
                                       reopen_interval=b.reopen_interval)
        ca_file = str(config.uplink.ca_file) if config.uplink.ca_file else None
        if config.uplink.mode == "mqtt":
            transport = MqttTransport(config.uplink.url, config.gateway.id, config.uplink.username,
                                      config.uplink.token, config.uplink.timeout, ca_file)
        else:
            transport = HttpTransport(config.uplink.url, config.gateway.id, config.uplink.token,
                                      config.uplink.timeout, ca_file)
        self.sender = Sender(
            config.database_path,
            transport,
            self.stop_event,
            self._uplink_wake,
            batch_size=config.uplink.batch_size,
            retry_max=config.uplink.retry_max,
            gateway_id=config.gateway.id,
            downlink_interval=config.uplink.downlink_interval,
            rules_paths=config.rules.paths,
            health=self.health,
            category_keys=set(self.categories.keys()),
            health_interval=config.uplink.health_interval,
            summary=self._health_summary,
            rule_files=self.rule_files,
        )
        self.summaries = TelemetrySummaries(config.outbox.telemetry_interval)
        self.started_at = time.time()
        self.notifier = Notifier()
        self.status_server: StatusServer | None = None
        self._quarantine_added = True  # trim at the first tick: the file may hold more than quarantine_max
        self._unwritten: list[Step] = []  # steps evaluated but not yet committed (grouped, or a full disk): in order
        self._unwritten_messages = 0  # their messages
        self._next_write_try = 0.0
        self._write_failures_in_a_row = 0
        self._disk_problem = ""  # the disk budget cannot be met (enforce_budget's report)
        self._step = 0  # the engine changelog's last step written
        self._checkpoints: queue.Queue = queue.Queue(maxsize=1)
        self._checkpoint_due = 0.0
        self._checkpointed_step = 0  # the step the newest written checkpoint covers
        self.checkpoint_path = config.gateway.data_dir / "engine.ckpt"
        self.checkpoint_info: dict = {"ok": True, "bytes": None, "written_at": None, "covers": 0,
                                      "write_seconds": None, "last_error": "", "restored": None,
                                      "replayed_steps": 0, "replay_seconds": None}

    @property
    def uplinked(self) -> int:
        return self.sender.uplinked

    def _health_summary(self, db, sending: dict[str, int]) -> dict:
        """The health summary for the platform, made in the uplink's thread with its connection to gateway.db."""
        return health_summary(db, self.started_at, self.health, self.rule_files, sending)

    def _put_polled(self, topic: str, frame: bytes) -> None:
        self.inbox.put(RawMessage(topic, frame, time.time()), timeout=0.5)

    def request_reload(self) -> None:
        """Reload the rule files at the next batch (SIGHUP does this); a refused pushed rule file is seen to."""
        self._reload_requested.set()
        self.sender.acknowledge_refusal()

    def stop(self) -> None:
        self.stop_event.set()
        self._uplink_wake.set()

    # --- start and stop ------------------------------------------------------------------

    def _start_thread(self, name: str, loop) -> threading.Thread:
        thread = threading.Thread(target=run_supervised, args=(self.health, name, loop, self.stop_event),
                                  name=name, daemon=True)
        thread.start()
        return thread

    def _open_database(self):
        """gateway.db, waiting (degraded, /healthz 503) while its partition has no room to open it."""
        delay = 1.0
        while True:
            try:
                db = open_database(self.config.database_path)
            except DiskFullError as error:
                self.health.fault("disk", error)
                self.health.degraded("disk", f"{error}; waiting for room")
                if self.status_server is None:
                    self._start_status_server()
                self.notifier.ready(f"waiting for room on the data partition: {error}")  # not a failed start
                self.notifier.watchdog()
                if self.stop_event.wait(delay):
                    return None
                delay = min(30.0, delay * 2)
                continue
            self.health.ok("disk")
            return db

    def run(self) -> None:
        """Run until ``stop()``; returns after a clean shutdown."""
        db = self._open_database()
        if db is None:
            if self.status_server is not None:
                self.status_server.close()
            return
        orders = self.config.orders
        book = OrderBook(db, self.config.gateway.id, self.categories, orders.reopen_within,
                         verify_within=orders.verify_within, repeat_within=orders.repeat_within)
        self.engine.warm_up()
        self._recover(db)
        for rule, device, state in book.live_orders():
            if state == "opened":
                self.engine.mark_active(rule, device)
        # What start-up built (registry, rules, engine, modules) lives as long as the process:
        # out of the collector's sight, a full collection does not walk it while orders wait.
        gc.collect()  # (start-up's garbage first: frozen objects are never freed)
        gc.freeze()
        writer = threading.Thread(target=self._checkpoint_writer, name="checkpoint", daemon=True)
        writer.start()
        uplink = self._start_thread("uplink", self.sender.run)
        self.subscriber.start()
        poller = None
        if self.poller is not None and self.poller.devices:
            poller = self._start_thread("modbus", self.poller.run)
        if self.status_server is None:
            self._start_status_server()
        log.info(
            "gateway %s running: %d devices, %d rules, database %s",
            self.config.gateway.id, len(self.registry), len(self.rules), self.config.database_path,
        )
        self.ready.set()
        self.notifier.ready(f"{len(self.registry)} devices, {len(self.rules)} rules")
        try:
            next_tick = time.time() + self.config.engine.tick
            next_rule_check = time.time() + self.config.rules.watch_interval
            while not self.stop_event.is_set():
                self.notifier.watchdog()
                try:
                    next_tick, next_rule_check = self._iteration(book, db, next_tick, next_rule_check)
                except Exception as error:  # noqa: BLE001 - one bad step must not end the gateway
                    self.health.fault("engine", error)
                    log.exception("the engine loop failed; it goes on")
                    self.stop_event.wait(1.0)
            leftover = self._drain_inbox()
            if leftover:
                self._process(leftover, book, db)
            self._write(book, db, force=True)
            self._stop_writer(writer)
            if not self._unwritten:
                self._checkpoint(final=True)  # the next start then has nothing to replay
        finally:
            self.notifier.stopping()
            self.subscriber.close()  # unacknowledged messages stay with the broker for the next start
            if poller is not None:
                poller.join(timeout=self.config.modbus.timeout + 2)
            self._uplink_wake.set()
            uplink.join(timeout=self.config.uplink.timeout + 5)
            self._stop_writer(writer)
            if self.status_server is not None:
                self.status_server.close()
            self.notifier.close()
            db.conn.close()
            s = self.stats
            log.info(
                "gateway %s stopped: %d messages, %d readings, %d alerts raised, %d orders opened, %d reopened, "
                "%d cleared, %s", self.config.gateway.id, s.messages, s.readings, s.alerts_raised, s.orders_opened,
                s.orders_reopened, s.orders_cleared,
                ", ".join(f"{n} {change}" for change, n in sorted(s.other_changes.items())) or "nothing grouped or escalated",
            )

    def _iteration(self, book: OrderBook, db, next_tick: float, next_rule_check: float) -> tuple[float, float]:
        if self._unwritten and len(self._unwritten) >= self.config.engine.queue_max // 10:
            self.stop_event.wait(0.2)  # nothing can be stored: hold, the broker keeps the rest
        else:
            batch = self._take_batch()
            if batch:
                self._process(batch, book, db)
        self._write(book, db)
        now = time.time()
        if now >= next_tick:
            self._tick(now)
            self._write(book, db, group=False)
            if not self._unwritten:
                try:
                    self._record(book.escalate(now, clock=self._clock(now)))
                    self._record(book.verify(now, EngineView(self.engine, now), self.config.status.silent_after))
                except sqlite3.OperationalError as error:
                    self._write_failed(error)
            self._housekeeping(db, now)  # also while writes fail: eviction may make the room they need
            next_tick = now + self.config.engine.tick
        if now >= self._checkpoint_due:
            self._write(book, db, group=False)
            if not self._unwritten:  # a checkpoint covers written steps only
                self._checkpoint()
        if now >= next_rule_check or self._reload_requested.is_set():
            self._write(book, db, group=False)
            if not self._unwritten:  # a reload checkpoints the state: only from a written one
                self._maybe_reload(book, db, forced=self._reload_requested.is_set())
            next_rule_check = now + self.config.rules.watch_interval
        return next_tick, next_rule_check

    def _start_status_server(self) -> None:
        address = self.config.status.address
        if address is None:
            return
        try:
            self.status_server = StatusServer(self, *address)
        except OSError as error:  # the gateway's job matters more than its status page
            log.error("status page not started: cannot listen on %s: %s", self.config.status.listen, error)
            self.health.down("status", f"cannot listen on {self.config.status.listen}: {error}")
            return
        self.status_server.start()
        self.health.ok("status")

    # --- durable engine state ------------------------------------------------------------

    def _recover(self, db) -> None:
        """Load the engine's checkpoint and replay the changelog after it (docs/rules.md)."""
        info = self.checkpoint_info
        covers = 0
        snapshot = None
        if self.checkpoint_path.exists():
            started = time.perf_counter()
            try:
                snapshot = checkpoint.read(self.checkpoint_path)
            except checkpoint.CheckpointError as error:
                self.stats.checkpoint_refused += 1
                info["restored"] = f"refused: {error}"
                log.error("engine checkpoint not used, the rules start fresh: %s", error)
            else:
                if snapshot.covers > checkpoint.last_step(db.conn):
                    snapshot = None  # written beside another gateway.db (the file was replaced)
                    self.stats.checkpoint_refused += 1
                    info["restored"] = "refused: it belongs to another gateway.db"
                    log.error("engine checkpoint not used, the rules start fresh: it covers changelog steps this "
                              "gateway.db never had (was gateway.db replaced?)")
            if snapshot is not None:
                restored = checkpoint.restore(self.engine, snapshot)
                covers = snapshot.covers
                info.update(covers=covers, bytes=self.checkpoint_path.stat().st_size,
                            written_at=snapshot.header.get("taken_at"))
                for rule, why in restored.refused.items():
                    self.stats.checkpoint_refused += 1
                    log.error("engine checkpoint: the state of rule %s not used (%s); it starts fresh", rule, why)
                info["restored"] = "exact" if restored.exact else (
                    f"{len(restored.kept)} rules kept, {len(restored.changed)} changed, {len(restored.refused)} refused")
                log.info("engine state restored from its checkpoint in %.3fs (%s)", time.perf_counter() - started,
                         info["restored"])
        started = time.perf_counter()
        steps, last = checkpoint.replay(self.engine, db.conn, covers, snapshot.header if snapshot else None)
        info.update(replayed_steps=steps, replay_seconds=time.perf_counter() - started)
        self.stats.replayed_steps = steps
        if steps:
            log.info("replayed %d engine step(s) after the checkpoint in %.3fs", steps, info["replay_seconds"])
        self._step = max(last, checkpoint.last_step(db.conn))
        self._checkpointed_step = covers
        with transaction(db) as conn:
            if covers == 0 and steps == 0:
                self._step = checkpoint.append(conn, "start", self.engine.origin, b"")
            self._step = checkpoint.append(conn, "program", time.time(), checkpoint.encode_program(self.engine))
        self._checkpoint_due = 0.0 if steps else time.time() + self.config.engine.checkpoint_interval

    def _checkpoint(self, final: bool = False) -> None:
        """Queue a copy of the engine's state for the writer (or write it now, when stopping)."""
        self._checkpoint_due = time.time() + self.config.engine.checkpoint_interval
        if self._step == self._checkpointed_step and not final:
            return  # nothing happened since the last one
        snapshot = checkpoint.take(self.engine, self._step)
        if final:
            self._write_checkpoint(snapshot)
            return
        try:
            self._checkpoints.put_nowait(snapshot)
        except queue.Full:
            pass  # the writer is still at the previous one: the next interval takes a newer copy

    def _stop_writer(self, writer: threading.Thread) -> None:
        if not writer.is_alive():
            return
        try:
            self._checkpoints.get_nowait()  # a copy not yet written: the final one is newer
        except queue.Empty:
            pass
        self._checkpoints.put(None)
        writer.join(timeout=60)

    def _checkpoint_writer(self) -> None:
        while True:
            snapshot = self._checkpoints.get()
            if snapshot is None:
                return
            self._write_checkpoint(snapshot)

    def _write_checkpoint(self, snapshot: checkpoint.Snapshot) -> None:
        info = self.checkpoint_info
        started = time.perf_counter()
        try:
            size = checkpoint.write(snapshot, self.checkpoint_path)
            db = open_database(self.config.database_path)
            try:
                with transaction(db) as conn:
                    checkpoint.truncate(conn, snapshot.covers)
            finally:
                db.conn.close()
        except Exception as error:  # noqa: BLE001 - a full disk: degraded, the changelog keeps growing
            self.stats.checkpoint_failures += 1
            info.update(ok=False, last_error=f"{type(error).__name__}: {error}")
            self.health.fault("checkpoint", error)
            self.health.degraded("checkpoint", f"the engine's state could not be saved: {error}")
            return
        self._checkpointed_step = max(self._checkpointed_step, snapshot.covers)
        self.stats.checkpoints += 1
        info.update(ok=True, bytes=size, written_at=snapshot.header["taken_at"], covers=snapshot.covers,
                    write_seconds=time.perf_counter() - started, last_error="")
        self.health.ok("checkpoint")

    # --- evaluation --------------------------------------------------------------------

    def _clock(self, now: float):
        """Each device's clock at gateway time ``now`` (escalation counts in it)."""
        return self.engine.clock(now)

    def _tick(self, now: float) -> None:
        """Advance the rules that change with time alone; a tick that changed the state is a logged step."""
        transitions, changed = checkpoint.tick(self.engine, now)
        self._count_alerts(transitions)
        if changed:
            self._unwritten.append(Step("tick", now, transitions, log=[("tick", now, b"")]))

    def _commit_wait(self, now: float) -> float:
        """Seconds until the steps evaluated so far are due to be committed (0: now)."""
        engine = self.config.engine
        if not self._unwritten or self._unwritten_messages >= engine.commit_messages:
            return 0.0
        return max(0.0, self._unwritten[0].at + engine.commit_interval - now)

    def _write(self, book: OrderBook, db, group: bool = True, force: bool = False) -> None:
        """Commit the steps evaluated so far, in order, with their orders; then acknowledge their messages.

        Steps wait up to ``[engine] commit_interval`` to be committed together (``group``): one
        commit writes the same pages once instead of once per batch. After a failed commit the
        next try waits its backoff, unless room came back or ``force``.
        """
        if not self._unwritten:
            return
        now = time.time()
        if self._write_failures_in_a_row:
            if now < self._next_write_try and not force and not has_room(self.config.database_path):
                return
        elif group and not force and self._commit_wait(now) > 0:
            return
        steps = self._unwritten
        try:
            with transaction(db) as conn:
                changes, clock = [], self._clock(now)
                for step in steps:
                    changes.append(book.apply(step.transitions, now=now, clock=clock))
                    if step.quarantine:
                        store_quarantine(conn, step.quarantine)
                    if step.unknown:
                        record_unknown(conn, step.unknown, self.config.ingest.unknown_devices_max)
                for kind, at, body in checkpoint.rows([row for step in steps for row in step.log]):
                    self._step = checkpoint.append(conn, kind, at, body)
        except sqlite3.OperationalError as error:
            self._write_failed(error)
            return
        self._unwritten, self._unwritten_messages = [], 0
        self.stats.commits += 1
        if self._write_failures_in_a_row:
            self._write_failures_in_a_row = 0
            if not self._disk_problem:
                self.health.ok("disk")
        quarantined = sum(len(step.quarantine) for step in steps)
        if quarantined:
            self._quarantine_added = True
            log.warning("quarantined %d message(s)", quarantined)
        for change in changes:
            self._record(change)
        acks = [mid for step in steps for mid in step.acks]
        if acks:
            self.subscriber.ack(acks)  # only now: everything these batches changed is on disk

    def _write_failed(self, error: Exception) -> None:
        """A commit failed (full disk, I/O error): nothing of it is acknowledged; try again after a while."""
        self.stats.write_failures += 1
        self._write_failures_in_a_row += 1
        delay = min(30.0, 0.5 * 2 ** min(self._write_failures_in_a_row, 6))
        self._next_write_try = time.time() + delay
        self.health.fault("disk", error)
        what = "the data partition is full" if is_disk_full(error, self.config.database_path) else str(error)
        self.health.degraded("disk", f"cannot write gateway.db ({what}); {len(self._unwritten)} step(s) wait, "
                                     f"their messages are not acknowledged; retrying")

    def _quarantine_row(self, raw: RawMessage, reason: str, detail: str):
        return quarantine_row(raw.received_at, raw.topic, raw.payload, reason, detail,
                              self.config.ingest.quarantine_keep_bytes)

    def _housekeeping(self, db, now: float) -> None:
        """Queue the finished interval's telemetry summaries, and keep the file within its budget."""
        try:
            outbox = Outbox(db)
            due = self.summaries.due(now)
            if due:
                with transaction(db):
                    for device, interval, body in due:
                        outbox.put_telemetry(device, interval, body)
                self.stats.telemetry_summaries += len(due)
                self._uplink_wake.set()
            if self._quarantine_added:
                self._quarantine_added = False
                with transaction(db) as conn:
                    self.stats.quarantine_trimmed += trim_quarantine(conn, self.config.outbox.quarantine_max)
            report = outbox.enforce_budget(self.config.outbox.max_bytes, self.config.outbox.evict_orders)
            for eviction in report:
                self.stats.evicted[eviction.step] += eviction.rows
            self._disk_problem = report.problem
            if report.problem:
                self.health.degraded("disk", report.problem)
            elif not self._write_failures_in_a_row:
                self.health.ok("disk")
        except sqlite3.OperationalError as error:
            self._write_failed(error)

    def _maybe_reload(self, book: OrderBook, db, forced: bool) -> bool:
        """Swap in changed rule files if they are valid; otherwise keep the running rules."""
        self._reload_requested.clear()
        current = fingerprint(self.config.rules.paths)
        if current == self._rules_fingerprint and not forced:
            return False
        self._rules_fingerprint = current
        loaded = RuleFiles.version_of(self.config.rules.paths)  # read before loading: a later change makes a reload
        try:
            rules = load_rules(self.config.rules.paths, self.categories.keys())
        except RuleFileError as error:
            self.stats.rule_errors += 1
            self.stats.last_rule_error = str(error)
            self.rule_files.refused_locally(error.problems)
            for problem in error.problems:
                log.error("rule file refused, the running rules stay: %s", problem)
            return False
        except Exception as error:  # noqa: BLE001 - whatever is in the folder, the running rules stay
            self.stats.rule_errors += 1
            self.stats.last_rule_error = f"{type(error).__name__}: {error}"
            log.exception("rule files could not be loaded, the running rules stay")
            return False
        try:
            engine = Engine(rules, self.registry)
            kept = engine.carry_over(self.engine)
        except Exception as error:  # noqa: BLE001 - rules that check but cannot be compiled: the running rules stay
            self.stats.rule_errors += 1
            self.stats.last_rule_error = f"{type(error).__name__}: {error}"
            log.exception("rule files could not be compiled, the running rules stay")
            return False
        for rule, device, state in book.live_orders():
            if state == "opened":
                engine.mark_active(rule, device)
        self.engine, self.rules = engine, rules
        self.rule_files.loaded(loaded)
        self.stats.rule_reloads += 1
        log.info("rules reloaded: %d rules, %d unchanged kept their state", len(rules), len(kept))
        try:
            with transaction(db) as conn:  # the batches after this are numbered by the new rules
                self._step = checkpoint.append(conn, "program", time.time(), checkpoint.encode_program(engine))
        except sqlite3.OperationalError as error:
            self._write_failed(error)
        self._checkpoint()
        return True

    def _take_batch(self) -> list[RawMessage]:
        engine = self.config.engine
        wait = 0.2
        if self._unwritten and not self._write_failures_in_a_row:
            wait = min(wait, self._commit_wait(time.time()))  # the steps waiting to be committed do not wait longer
        return self.inbox.take(engine.batch_max, wait, engine.batch_wait, engine.batch_quiet)

    def _drain_inbox(self) -> list[RawMessage]:
        return self.inbox.drain()

    def _process(self, batch: list[RawMessage], book: OrderBook, db) -> None:
        engine = self.engine
        builder = engine.builder()
        quarantine = []
        unknown: dict[str, list] = {}  # device -> [first seen, last seen, messages, last topic]
        stats, model_of, vendor = self.stats, self._model_of, self.vendor
        device_of = self.registry.by_id.get
        is_duplicate = self.duplicates.seen
        add_summary = self.summaries.add
        ingest, limits = self.config.ingest, self.limits
        readings = 0
        transitions: list = []
        changelog: list = []
        newest: dict[int, float] = {}  # device -> its newest time in the builder's readings
        started = time.perf_counter()

        def evaluate() -> None:
            """Run what the builder holds through the engine (a batch may be cut where a device's clock came back)."""
            readings_batch = builder.build()
            if len(readings_batch):
                transitions.extend(engine.process(readings_batch))
                changelog.append(("batch", time.time(), readings_batch))

        for raw in batch:
            try:
                message = decode_message(raw.topic, raw.payload, model_of, limits=limits, received_at=raw.received_at,
                                         vendor=vendor)
                device = device_of(message.device_id)
                if device is None:
                    stats.unknown_devices.add(message.device_id)
                    if message.device_id[:128] in unknown or len(unknown) < ingest.unknown_devices_max:
                        seen = unknown.setdefault(message.device_id[:128], [raw.received_at, raw.received_at, 0, raw.topic])
                        seen[1], seen[2], seen[3] = max(seen[1], raw.received_at), seen[2] + 1, raw.topic[:256]
                    continue
                check_kinds(device, message.values)
                if message.dedupe_key is not None and is_duplicate(message.dedupe_key, raw.received_at):
                    stats.duplicate_uplinks += 1
                    continue
                values = derive(device, message.values)
                d = device.index
                if self._clock_came_back(d, message.ts, raw.received_at, newest):
                    evaluate()
                    builder, newest = engine.builder(), {}
                    changelog.append(("rebase", time.time(), self._rebase(device, book)))
                add_summary(device.id, message.ts, values, raw.received_at)
                builder.add(d, message.ts, values, raw.received_at)
                newest[d] = max(newest.get(d, -math.inf), message.ts)
                readings += len(values)
            except DecodeError as error:
                stats.quarantined[error.reason] += 1
                quarantine.append(self._quarantine_row(raw, error.reason, error.detail))
            except Exception as error:  # noqa: BLE001 - a message that breaks ingest is set aside, once
                stats.internal_errors += 1
                stats.quarantined["internal_error"] += 1
                self.health.fault("ingest", error)
                log.exception("message on %r could not be processed; quarantined as internal_error", raw.topic[:200])
                quarantine.append(self._quarantine_row(raw, "internal_error", f"{type(error).__name__}: {error}"))
        evaluate()
        stats.readings += readings
        stats.messages += len(batch)
        self._count_alerts(transitions)
        stats.last_batch_seconds = time.perf_counter() - started
        stats.engine_seconds += stats.last_batch_seconds
        self._unwritten.append(Step(
            "batch", time.time(), transitions, log=changelog, quarantine=quarantine,
            unknown=[(device, *seen) for device, seen in unknown.items()], acks=to_ack(batch),
        ))
        self._unwritten_messages += len(batch)
        stats.batches += 1
        self._write(book, db)

    def _clock_came_back(self, d: int, ts: float, arrival: float, newest: dict[int, float]) -> bool:
        """Device ``d``'s clock was wrong (its newest time well ahead of the gateway's) and is right again.

        Then its next reading is behind that wrong time, and would never be fresh: the device
        would be blind until its clock caught up with the wrong time. (A street simulated
        faster than real time runs ahead of the gateway too, but its readings never come back.)"""
        tolerance = self.config.ingest.clock_tolerance
        latest = max(float(self.engine.latest_ts[d, 0]), newest.get(d, -math.inf))
        return ts < latest and latest > arrival + tolerance and abs(ts - arrival) <= tolerance

    def _rebase(self, device, book: OrderBook) -> bytes:
        """Start the device's rules afresh (its clock came back); its open problems stay open. The changelog's row."""
        self.engine.reset_device(device.index)
        active = sorted({rule for rule, member, state in book.live_orders() if member == device.id and state == "opened"})
        for rule in active:
            self.engine.mark_active(rule, device.id)
        self.stats.clock_resets += 1
        log.warning("device %s: its clock came back from %.0f s ahead of the gateway's; its rules start afresh",
                    device.id, float(self.engine.latest_ts[device.index, 0]))
        return orjson.dumps({"device": device.id, "active": active})

    def _model_of(self, device_id: str) -> str | None:
        device = self.registry.by_id.get(device_id)
        return device.model if device is not None else None

    def _count_alerts(self, transitions: list) -> list:
        self.stats.alerts_raised += sum(1 for t in transitions if t.kind == "open")
        return transitions

    def _record(self, changes) -> None:
        for change in changes:
            if change.change == "opened":
                self.stats.orders_opened += 1
            elif change.change == "cleared":
                self.stats.orders_cleared += 1
            elif change.change == "reopened":
                self.stats.orders_reopened += 1
            else:
                self.stats.other_changes[change.change] += 1
            log.info("order %s revision %d: %s", change.order_id, change.revision, change.change)
        if changes:
            self._uplink_wake.set()
