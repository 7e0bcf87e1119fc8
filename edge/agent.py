"""The gateway agent: owns its loops (MQTT network, engine, uplink) and stops them cleanly.

Data flow: MQTT -> bounded queue -> decode -> engine -> orders + outbox (one transaction per
batch) -> uplink. ``stop()`` (or SIGTERM under ``edge run``) stops taking messages, finishes
the batch in hand, lets the uplink flush what it can, and closes the database.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from edge.config import ConfigError, GatewayConfig
from edge.engine import Engine, RuleFileError, load_rules
from edge.engine.rules import fingerprint
from edge.ingest.decode import DecodeError, check_kinds, derive
from edge.ingest.decoders import decode as decode_message
from edge.ingest.dedupe import Duplicates
from edge.ingest.inbox import Inbox
from edge.ingest.modbus_poll import ModbusPoller, ModbusSetupError, polled_devices
from edge.ingest.mqtt import MqttSubscriber, RawMessage, TlsSettings
from edge.ingest.quarantine import record_unknown, trim as trim_quarantine
from edge.orders import OrderBook
from edge.orders.categories import Categories
from edge.paths import default_categories
from edge.outbox import Outbox, open_database, transaction
from edge.outbox.telemetry import TelemetrySummaries
from edge.registry import Registry
from edge.service import Notifier
from edge.status.server import StatusServer
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
    unknown_devices: Counter = field(default_factory=Counter)
    alerts_raised: int = 0  # rules that fired (opened) on a device: an order opened, grouped, reopened or already open
    orders_opened: int = 0
    orders_cleared: int = 0
    orders_reopened: int = 0
    other_changes: Counter = field(default_factory=Counter)  # grouped, escalated
    batches: int = 0
    evicted: Counter = field(default_factory=Counter)
    quarantine_trimmed: int = 0  # quarantined messages deleted beyond [outbox] quarantine_max
    telemetry_summaries: int = 0
    rule_reloads: int = 0
    rule_errors: int = 0
    last_rule_error: str = ""
    engine_seconds: float = 0.0  # time in Engine.process, all batches
    last_batch_seconds: float = 0.0


class Agent:
    def __init__(self, config: GatewayConfig):
        self.config = config
        self.registry = Registry.load(config.registry.path)
        self.categories = Categories.load(config.orders.categories or default_categories())
        self._rules_fingerprint = fingerprint(config.rules.paths)
        self.rules = load_rules(config.rules.paths, self.categories.keys())
        self.engine = Engine(self.rules, self.registry)
        self._reload_requested = threading.Event()
        self.stats = Stats()
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
        )
        self.summaries = TelemetrySummaries(config.outbox.telemetry_interval)
        self.started_at = time.time()
        self.notifier = Notifier()
        self.status_server: StatusServer | None = None
        self._quarantine_added = True  # trim at the first tick: the file may hold more than quarantine_max

    @property
    def uplinked(self) -> int:
        return self.sender.uplinked

    def _put_polled(self, topic: str, frame: bytes) -> None:
        self.inbox.put(RawMessage(topic, frame, time.time()), timeout=0.5)

    def request_reload(self) -> None:
        """Reload the rule files at the next batch (SIGHUP does this)."""
        self._reload_requested.set()

    def stop(self) -> None:
        self.stop_event.set()
        self._uplink_wake.set()

    def run(self) -> None:
        """Run until ``stop()``; returns after a clean shutdown."""
        db = open_database(self.config.database_path)
        book = OrderBook(db, self.config.gateway.id, self.categories, self.config.orders.reopen_within)
        for rule, device, state in book.live_orders():
            if state == "opened":
                self.engine.mark_active(rule, device)
        self.engine.warm_up()
        # What start-up built (registry, rules, engine, modules) lives as long as the process:
        # out of the collector's sight, a full collection does not walk it while orders wait.
        gc.collect()  # (start-up's garbage first: frozen objects are never freed)
        gc.freeze()
        uplink = threading.Thread(target=self.sender.run, name="uplink", daemon=True)
        uplink.start()
        self.subscriber.start()
        if self.poller is not None:
            self.poller.start()
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
                batch = self._take_batch()
                if batch:
                    self._process(batch, book, db)
                now = time.time()
                if now >= next_tick:
                    self._record(book.apply(self._count_alerts(self.engine.tick(now))))
                    self._record(book.escalate(now))
                    self._housekeeping(db, now)
                    next_tick = now + self.config.engine.tick
                if now >= next_rule_check or self._reload_requested.is_set():
                    self._maybe_reload(book, forced=self._reload_requested.is_set())
                    next_rule_check = now + self.config.rules.watch_interval
            leftover = self._drain_inbox()
            if leftover:
                self._process(leftover, book, db)
        finally:
            self.notifier.stopping()
            self.subscriber.close()  # unacknowledged messages stay with the broker for the next start
            if self.poller is not None:
                self.poller.join(timeout=self.config.modbus.timeout + 2)
            self._uplink_wake.set()
            uplink.join(timeout=self.config.uplink.timeout + 5)
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

    def _start_status_server(self) -> None:
        address = self.config.status.address
        if address is None:
            return
        try:
            self.status_server = StatusServer(self, *address)
        except OSError as error:  # the gateway's job matters more than its status page
            log.error("status page not started: cannot listen on %s: %s", self.config.status.listen, error)
            return
        self.status_server.start()

    def _housekeeping(self, db, now: float) -> None:
        """Queue the finished interval's telemetry summaries, and keep the file within its budget."""
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
        for eviction in outbox.enforce_budget(self.config.outbox.max_bytes, self.config.outbox.evict_orders):
            self.stats.evicted[eviction.step] += eviction.rows

    def _maybe_reload(self, book: OrderBook, forced: bool) -> bool:
        """Swap in changed rule files if they are valid; otherwise keep the running rules."""
        self._reload_requested.clear()
        current = fingerprint(self.config.rules.paths)
        if current == self._rules_fingerprint and not forced:
            return False
        self._rules_fingerprint = current
        try:
            rules = load_rules(self.config.rules.paths, self.categories.keys())
        except RuleFileError as error:
            self.stats.rule_errors += 1
            self.stats.last_rule_error = str(error)
            for problem in error.problems:
                log.error("rule file refused, the running rules stay: %s", problem)
            return False
        engine = Engine(rules, self.registry)
        kept = engine.carry_over(self.engine)
        for rule, device, state in book.live_orders():
            if state == "opened":
                engine.mark_active(rule, device)
        self.engine, self.rules = engine, rules
        self.stats.rule_reloads += 1
        log.info("rules reloaded: %d rules, %d unchanged kept their state", len(rules), len(kept))
        return True

    def _take_batch(self) -> list[RawMessage]:
        engine = self.config.engine
        return self.inbox.take(engine.batch_max, 0.2, engine.batch_wait, engine.batch_quiet)

    def _drain_inbox(self) -> list[RawMessage]:
        return self.inbox.drain()

    def _process(self, batch: list[RawMessage], book: OrderBook, db) -> None:
        builder = self.engine.builder()
        quarantine = []
        unknown: dict[str, list] = {}  # device -> [first seen, last seen, messages, last topic]
        stats, model_of = self.stats, self._model_of
        device_of = self.registry.by_id.get
        is_duplicate = self.duplicates.seen
        add_summary, add_reading = self.summaries.add, builder.add
        readings = 0
        for raw in batch:
            try:
                message = decode_message(raw.topic, raw.payload, model_of)
                device = device_of(message.device_id)
                if device is None:
                    stats.unknown_devices[message.device_id] += 1
                    seen = unknown.setdefault(message.device_id[:128], [raw.received_at, raw.received_at, 0, raw.topic])
                    seen[1], seen[2], seen[3] = max(seen[1], raw.received_at), seen[2] + 1, raw.topic
                    continue
                check_kinds(device, message.values)
                if message.dedupe_key is not None and is_duplicate(message.dedupe_key, raw.received_at):
                    stats.duplicate_uplinks += 1
                    continue
            except DecodeError as error:
                stats.quarantined[error.reason] += 1
                quarantine.append((raw.received_at, raw.topic, raw.payload, error.reason, error.detail))
                continue
            values = derive(device, message.values)
            readings += len(values)
            add_summary(device.id, message.ts, values, raw.received_at)
            add_reading(device.index, message.ts, values, raw.received_at)
        stats.readings += readings
        self.stats.messages += len(batch)
        started = time.perf_counter()
        transitions = self._count_alerts(self.engine.process(builder.build()))
        self.stats.last_batch_seconds = time.perf_counter() - started
        self.stats.engine_seconds += self.stats.last_batch_seconds
        changes = book.apply(transitions)
        if quarantine or unknown:
            with transaction(db) as conn:
                conn.executemany(
                    "INSERT INTO quarantine (received_at, topic, payload, reason, detail) VALUES (?, ?, ?, ?, ?)",
                    quarantine,
                )
                record_unknown(conn, [(device, *seen) for device, seen in unknown.items()])
            if quarantine:
                self._quarantine_added = True
                log.warning("quarantined %d malformed message(s)", len(quarantine))
        self._record(changes)
        self.subscriber.ack(batch)  # only now: everything this batch changed is on disk
        self.stats.batches += 1

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
