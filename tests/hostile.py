"""Harness of the hostile-world tests: a real gateway (`edge run`), the reference receiver and a
real Mosquitto, the messages a hostile world sends, and the check that follows every one.

After a hostile input a test calls ``World.check``: it publishes a valid alarm from a device
the input did not name and from every registered device it did name, waits until their orders
reach the receiver and the gateway has nothing left to send, and asserts

- the gateway is the same process (same PID, still running), never restarted;
- each alarm's order reached the receiver exactly once: one order id per (device, rule), its
  first revision there, no other order for that problem;
- the platform dropped no duplicate (with an honest platform: nothing was sent twice);
- the quarantine counters went up by the number of hostile messages, under the expected
  reasons (or stayed put for an input the gateway is right to accept).

Every check is tallied (hostile inputs tried, process exits, devices blinded, valid orders
lost); the tally is written at the end of a module (``write_summary``) for the README. The
assertions are per case; the tally only counts what they found.

A gateway found dead at the start of a case is started again with a fresh MQTT session (the
broker would otherwise hand it the poison again), so that each case is judged on its own.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import uuid
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import orjson
import paho.mqtt.client as mqtt
import requests

from conftest import RULES, edge_command, start_receiver, wait_until, write_gateway_config
from edge.broker import free_port
from edge.ingest.codecs import mcl300
from firmware_sim.protocols.lorawan import dev_eui, event as lorawan_event

COVER_MODEL, BIN_MODEL, CAMERA_MODEL = "MCL-300", "SBL-220", "FRIGATE"
BIN_DEPTH_CM = 120
GATEWAY_ID = "gw-hostile"
APPLICATION = "hostile-street"

# The gateway's agreed [ingest] max_past (docs/ingest.md): a device time further back than this
# is quarantined as timestamp_out_of_range.
MAX_PAST = 7 * 86400.0

COVER_RULE, BIN_RULE, CAMERA_RULE = "cover_tilted", "bin_full", "illegal_parking"
KIND_RULE = {"manhole_cover": COVER_RULE, "bin": BIN_RULE, "camera": CAMERA_RULE}

ORDER_TIMEOUT = 20.0  # seconds for a valid alarm's order to reach the receiver


# --- the registry: enough devices that no two cases share one -------------------------------

def write_registry(path: Path, covers: int = 300, bins: int = 300, cameras: int = 60) -> dict[str, str]:
    """A registry of covers (LoRaWAN model MCL-300, so ChirpStack frames decode by the registry),
    bins (depth 120 cm) and cameras; returns {device id: kind}."""
    rows = ["id,kind,model,address,lat,lon,grid,zone,team,depth_cm"]
    kinds: dict[str, str] = {}
    for kind, prefix, model, count, depth in (("manhole_cover", "HC", COVER_MODEL, covers, ""),
                                              ("bin", "HB", BIN_MODEL, bins, str(BIN_DEPTH_CM)),
                                              ("camera", "HK", CAMERA_MODEL, cameras, "")):
        for n in range(1, count + 1):
            device = f"{prefix}-{n:04d}"
            grid = f"G{1 + n % 4:02d}"
            rows.append(f"{device},{kind},{model},{n} Hostile Rd,31.23,121.47,{grid},Z{1 + n % 2},team-{grid.lower()},{depth}")
            kinds[device] = kind
    path.write_text("\n".join(rows) + "\n")
    return kinds


class Devices:
    """Hands out registry devices never used before in this module, by kind."""

    def __init__(self, kinds: dict[str, str]):
        self.kinds = kinds
        self._free = {kind: [d for d, k in kinds.items() if k == kind] for kind in set(kinds.values())}

    def take(self, kind: str) -> str:
        if not self._free[kind]:
            raise RuntimeError(f"the test registry has no unused {kind} left; write_registry() needs more")
        return self._free[kind].pop(0)

    def cover(self) -> str:
        return self.take("manhole_cover")

    def bin(self) -> str:
        return self.take("bin")

    def camera(self) -> str:
        return self.take("camera")


# --- messages, valid and hostile -------------------------------------------------------------

Message = tuple[str, bytes]


def telemetry_topic(device: str) -> str:
    return f"devices/{device}/telemetry"


def own_json(device: str, ts, readings, **extra) -> Message:
    """The devices' own JSON (docs/ingest.md); ``ts`` and ``readings`` are sent as given."""
    body = {"device": device, "ts": ts, "readings": readings, **extra}
    return telemetry_topic(device), json.dumps(body, allow_nan=True).encode()


_fcnt = iter(range(1, 10**9))


def chirpstack(device: str, t, readings: dict | None = None, *, model: str = COVER_MODEL, fport: int | None = None,
               frame: bytes | None = None, **override) -> Message:
    """A ChirpStack v4 uplink event, as firmware_sim's LoRaWAN devices send it; ``t`` is seconds
    or the literal ``time`` text; ``frame`` the bytes (default: the readings, or benign ones, in
    MCL-300's frame). ``override`` replaces top-level keys (None deletes one)."""
    data = frame
    if data is None:
        port, data = mcl300.encode(readings or {"tilt_deg": 0.5, "open": 0}, alarm=False)
        fport = port if fport is None else fport
    fcnt = next(_fcnt)
    payload = orjson.loads(lorawan_event(APPLICATION, device, model, time.time(), fcnt, 1 if fport is None else fport,
                                         data, -80.0, 7.0, fcnt))
    payload["time"] = t if isinstance(t, str) else _iso(t)
    for key, value in override.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    topic = f"application/{APPLICATION}/device/{dev_eui(device)}/event/up"
    return topic, json.dumps(payload, allow_nan=True).encode()


def _iso(ts: float) -> str:
    import datetime as dt
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat()


def frigate(camera, kind: str = "update", *, label="car", zone="no_parking", score=0.9, frame_time=None,
            start_time=None, drop: tuple[str, ...] = (), **after_override) -> Message:
    """A Frigate event (``frigate/events``); ``drop`` leaves fields out of ``after``."""
    now = time.time()
    after = {
        "id": f"{now:.6f}-{camera}", "camera": camera, "label": label, "score": score, "top_score": score,
        "frame_time": now if frame_time is None else frame_time,
        "start_time": (now if frame_time is None else frame_time) if start_time is None else start_time,
        "end_time": None, "current_zones": [zone] if zone is not None else [], "entered_zones": [zone],
        "stationary": True, "has_snapshot": True,
    }
    after.update(after_override)
    for name in drop:
        after.pop(name, None)
    return "frigate/events", json.dumps({"type": kind, "before": None, "after": after}, allow_nan=True).encode()


@dataclass(frozen=True)
class Alarm:
    """A valid alarm and the order it must open: messages to publish, then (device, rule)."""

    device: str
    rule: str
    messages: tuple[Message, ...]


def alarm(device: str, kind: str, t0: float, protocol: str = "json") -> Alarm:
    """A valid alarm in device time ``t0`` (near the gateway's clock), by the shipped rules:
    a cover tilted 30 degrees for 11 s (two reports, t0 - 11 and t0), a bin 96 % full, a car in
    the no-parking zone for 5 minutes (camera events t0 - 310 and t0)."""
    if kind == "manhole_cover":
        tilted = {"tilt_deg": 30.0, "open": 1}
        if protocol == "lorawan":
            messages = tuple(chirpstack(device, t, frame=mcl300.encode(tilted, alarm=True)[1], fport=2)
                             for t in (t0 - 11, t0))
        else:
            messages = (own_json(device, round(t0 - 11, 3), tilted), own_json(device, round(t0, 3), tilted))
        return Alarm(device, COVER_RULE, messages)
    if kind == "bin":
        return Alarm(device, BIN_RULE, (own_json(device, round(t0, 3), {"distance_cm": 5.0, "temp_c": 21.0}),))
    if kind == "camera":
        start = t0 - 310
        return Alarm(device, CAMERA_RULE, (frigate(device, "new", frame_time=start, start_time=start),
                                           frigate(device, "update", frame_time=t0, start_time=start)))
    raise ValueError(f"no alarm for kind {kind!r}")


# --- MQTT publisher ----------------------------------------------------------------------------

class Publisher:
    """A real MQTT client of the test, publishing with QoS 1 and waiting for each PUBACK."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.client: mqtt.Client | None = None
        self.connect()

    def connect(self) -> None:
        self.close()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"hostile-{uuid.uuid4().hex[:8]}")
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(1000)
        connected = threading.Event()
        client.on_connect = lambda *args: connected.set()
        client.connect(self.host, self.port)
        client.loop_start()
        if not connected.wait(20):
            raise RuntimeError(f"the test's MQTT client could not connect to {self.host}:{self.port}")
        self.client = client

    def publish(self, messages, qos: int = 1, retain: bool = False, timeout: float = 120.0) -> int:
        """Publish (topic, payload) pairs in order; returns how many, after the last PUBACK."""
        infos = [self.client.publish(topic, payload, qos=qos, retain=retain) for topic, payload in messages]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            if not info.is_published():
                raise AssertionError(f"the broker did not acknowledge a publish within {timeout:.0f}s")
        return len(infos)

    def close(self) -> None:
        if self.client is not None:
            self.client.loop_stop()
            self.client.disconnect()
            self.client = None


# --- the gateway process ------------------------------------------------------------------------

_METRIC = re.compile(r'^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[str, dict[tuple, float]]:
    out: dict[str, dict[tuple, float]] = defaultdict(dict)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _METRIC.match(line)
        if match:
            labels = tuple(sorted(_LABEL.findall(match.group(2) or "")))
            out[match.group(1)][labels] = float(match.group(3))
    return out


class Gateway:
    """``edge run`` as a real process; its status port tells its health and counters."""

    def __init__(self, config: Path, log: Path, status_port: int, wrapper: tuple[str, ...] = ()):
        self.config, self.log, self.status_port, self.wrapper = config, log, status_port, wrapper
        self.process: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.status_port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 90.0) -> None:
        self.starts += 1
        with self.log.open("ab") as log:
            log.write(f"\n==== hostile harness: start {self.starts} ====\n".encode())
        self.process = subprocess.Popen([*self.wrapper, *edge_command(), "run", "--config", str(self.config)],
                                        stdout=subprocess.DEVNULL, stderr=self.log.open("ab"))
        if not wait_until(lambda: not self.alive() or self._connected(), timeout, 0.2) or not self.alive():
            raise AssertionError(f"the gateway did not start (exit {self.process.poll()}); log {self.log}:\n"
                                 + self.log_tail())

    def _connected(self) -> bool:
        try:
            return self.metric("edge_broker_connected") == 1
        except (requests.RequestException, ValueError):
            return False

    def restart_fresh_session(self) -> None:
        """Start again with a new MQTT client id: the broker keeps the old session's poison."""
        text = self.config.read_text()
        self.config.write_text(re.sub(r'client_id = "[^"]*"', f'client_id = "hostile-{uuid.uuid4().hex[:8]}"', text))
        self.start()

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            return None

    def metrics(self) -> dict[str, dict[tuple, float]]:
        answer = requests.get(f"{self.url}/metrics", timeout=10)
        answer.raise_for_status()
        return parse_metrics(answer.text)

    def metric(self, name: str, **labels) -> float | None:
        samples = self.metrics().get(name, {})
        return samples.get(tuple(sorted(labels.items())))

    def quarantined(self) -> Counter:
        """edge_quarantined_messages_total by reason."""
        samples = self.metrics().get("edge_quarantined_messages_total", {})
        return Counter({dict(labels).get("reason", ""): value for labels, value in samples.items()})

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def status_answer(gateway: Gateway, path: str = "/healthz") -> int:
    return requests.get(gateway.url + path, timeout=10).status_code


# --- the tally ----------------------------------------------------------------------------------

@dataclass
class Tally:
    """What the checks found, for the README: each case asserts; this only counts."""

    hostile_inputs: int = 0      # hostile cases tried (a flood is one case)
    hostile_messages: int = 0    # messages and requests they sent
    checks: int = 0              # witness checks run after them
    process_exits: int = 0       # the gateway process gone or replaced after a case
    devices_blinded: int = 0     # a named device's valid alarm opened no order, the gateway alive
    valid_orders_lost: int = 0   # valid alarms whose order never reached the receiver
    valid_orders_duplicated: int = 0  # valid alarms that gave more than one order
    failed_cases: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def write_summary(request, name: str, tally: Tally) -> None:
    """Keep the module's tally in pytest's cache (.pytest_cache/v/hostile/NAME) and show it."""
    figures = tally.as_dict()
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    if cache is not None:
        cache.set(f"hostile/{name}", figures)
    target = os.environ.get("HOSTILE_SUMMARY_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        (Path(target) / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    line = (f"hostile world [{name}]: {tally.hostile_inputs} hostile cases ({tally.hostile_messages} messages), "
            f"{tally.checks} checks, process exits {tally.process_exits}, devices blinded {tally.devices_blinded}, "
            f"valid orders lost {tally.valid_orders_lost}, duplicated {tally.valid_orders_duplicated}"
            + "".join(f", {k} {v}" for k, v in tally.figures.items()))
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # the module's teardown output is captured otherwise
            reporter.write_line("")
            reporter.write_line(line)
            if tally.failed_cases:
                reporter.write_line(f"  cases that failed a check: {', '.join(tally.failed_cases)}")


# --- the world -----------------------------------------------------------------------------------

@dataclass
class Before:
    case: str
    pid: int
    quarantined: Counter
    duplicates: int


def order_ids_by_problem(revisions: list[dict]) -> dict[tuple[str, str], dict[str, list[int]]]:
    """(device, rule) -> {order id: [revisions received]} from the receiver's revisions."""
    out: dict[tuple[str, str], dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for body in revisions:
        out[(body.get("device"), body.get("rule"))][body["order_id"]].append(body["revision"])
    return out


class World:
    """One gateway, its receiver (the real one, or a lying platform in front of it), a publisher."""

    def __init__(self, gateway: Gateway, receiver, publisher: Publisher, devices: Devices, tally: Tally,
                 honest_platform: bool = True):
        self.gateway, self.receiver, self.publisher = gateway, receiver, publisher
        self.devices, self.tally, self.honest_platform = devices, tally, honest_platform
        self.clock_offset: dict[str, float] = {}  # a device whose clock is (rightly) believed to run ahead
        self.front: LyingPlatform | None = None
        self.broker = None            # a Broker of the world's own, when it has one
        self.rules: Path | None = None  # the rules folder the gateway runs (and the platform pushes into)

    def begin(self, case: str) -> Before:
        """Before a hostile input: a running gateway (started again if an earlier case ended it), and
        the counters the check compares with."""
        if not self.gateway.alive():  # it ended after the previous case's check had passed
            code, tail = self.gateway.process.poll(), self.gateway.log_tail(12)
            self.tally.process_exits += 1
            self.tally.failed_cases.append(f"{case} (found the gateway gone)")
            self.gateway.restart_fresh_session()
            raise AssertionError(f"[{case}] the gateway had exited (code {code}) after the previous case; started "
                                 f"again for the next one. Log tail:\n{tail}")
        return Before(case, self.gateway.pid, self.gateway.quarantined(), self.receiver.stats()["duplicates"])

    def send(self, messages, **kwargs) -> int:
        count = self.publisher.publish(messages, **kwargs)
        self.tally.hostile_messages += count
        return count

    def check(self, before: Before, named: tuple[str, ...] = (), *, quarantined: int = 0,
              reasons: tuple[str, ...] = (), may_accept: bool = False, witness_kind: str = "bin",
              protocol: dict[str, str] | None = None, already: tuple[Alarm, ...] = (),
              aimed: tuple[str, ...] = (), counters: bool = True, timeout: float = ORDER_TIMEOUT) -> None:
        """Witness alarms after a hostile input, then every assertion of the rule (module docstring).

        ``quarantined`` hostile messages must show in edge_quarantined_messages_total under
        ``reasons`` (any of them); with ``may_accept`` the gateway may instead accept them.
        ``already``: valid alarms the case published during the hostile input (their devices get
        no new alarm, so a lost one cannot be hidden by the next): their orders must arrive too;
        ``aimed`` are those of their devices the hostile input named (a missing order is then a
        device blinded). ``counters=False`` leaves the quarantine counters unchecked (random input: its count is
        not known).
        """
        self.tally.hostile_inputs += 1
        self.tally.checks += 1
        witness = self.devices.take(witness_kind)
        alarms = [alarm(witness, self.devices.kinds[witness], time.time())]
        for device in named:
            kind = self.devices.kinds[device]
            t0 = time.time() + self.clock_offset.get(device, 0.0)
            alarms.append(alarm(device, kind, t0, (protocol or {}).get(device, "json")))
        problems: list[str] = []
        try:
            self.publisher.publish([m for a in alarms for m in a.messages])
        except Exception as error:  # noqa: BLE001 - the broker itself may be what the case broke
            problems.append(f"publishing the valid alarms failed: {error}")
        wanted = {(a.device, a.rule) for a in [*alarms, *already]}
        found = self._await_orders(wanted, timeout)
        alive, same = self.gateway.alive(), self.gateway.alive() and self.gateway.pid == before.pid
        missing = {pair for pair in wanted if not found.get(pair)}
        duplicated = {pair for pair in wanted if len(found.get(pair, {})) > 1}
        named_missing = {pair for pair in missing if pair[0] in named or pair[0] in aimed}
        if not same:
            self.tally.process_exits += 1
            code = self.gateway.process.poll()
            problems.append(f"the gateway process {before.pid} is gone (exit {code}): log tail:\n{self.gateway.log_tail(12)}"
                            if not alive else f"the gateway was replaced: PID {before.pid} -> {self.gateway.pid}")
        if alive and named_missing:
            self.tally.devices_blinded += len(named_missing)
        self.tally.valid_orders_lost += len(missing)
        self.tally.valid_orders_duplicated += len(duplicated)
        if missing:
            problems.append(f"valid alarms whose order never reached the receiver within {timeout:.0f}s: "
                            f"{sorted(missing)}" + (" (devices blinded: the gateway is running)" if alive and named_missing else ""))
        if duplicated:
            problems.append(f"more than one order for one problem: { {p: dict(found[p]) for p in duplicated} }")
        for pair in wanted - missing:
            for order_id, revisions in found[pair].items():
                if 1 not in revisions or len(revisions) != len(set(revisions)):
                    problems.append(f"order {order_id} of {pair}: revisions {revisions} (want revision 1, each once)")
        if alive and same and not problems:
            problems += self._duplicates(before)
            if counters:
                problems += self._counters(before, quarantined, reasons, may_accept)
        if problems:
            self.tally.failed_cases.append(before.case)
            raise AssertionError(f"[{before.case}] " + "\n".join(problems))

    def _duplicates(self, before: Before) -> list[str]:
        """With an honest platform nothing is ever sent twice: the receiver drops no duplicate."""
        if not self.honest_platform:
            return []
        duplicates = self.receiver.stats()["duplicates"]
        if duplicates != before.duplicates:
            return [f"the receiver dropped {duplicates - before.duplicates} duplicate(s): something was delivered twice"]
        return []

    def _counters(self, before: Before, quarantined: int, reasons: tuple[str, ...], may_accept: bool) -> list[str]:
        problems: list[str] = []
        after = self.gateway.quarantined()
        grew = {r: after[r] - before.quarantined.get(r, 0) for r in after if after[r] != before.quarantined.get(r, 0)}
        if quarantined:
            in_reasons = sum(grew.get(r, 0) for r in reasons)
            if may_accept and not grew:
                return problems
            if in_reasons != quarantined or set(grew) - set(reasons):
                problems.append(f"quarantine counters: want +{quarantined} under {reasons}, got {grew or 'no change'}")
        elif grew:
            problems.append(f"quarantine counters: want no change (a valid input), got {grew}")
        return problems

    def _await_orders(self, wanted: set, timeout: float) -> dict:
        """Wait until every wanted (device, rule) has an order at the receiver and the gateway has no
        order revision left to send; returns what the receiver has for them."""
        found: dict = {}

        def done() -> bool:
            nonlocal found
            if not self.gateway.alive():
                return True
            try:
                by_problem = order_ids_by_problem(self.receiver.revisions())
            except requests.RequestException:
                return False
            found = {pair: by_problem.get(pair, {}) for pair in wanted}
            if not all(found.values()):
                return False
            try:
                return self.gateway.metric("edge_outbox_unsent", kind="order") == 0
            except (requests.RequestException, ValueError):
                return False

        wait_until(done, timeout, 0.2)
        try:
            by_problem = order_ids_by_problem(self.receiver.revisions())
            found = {pair: by_problem.get(pair, {}) for pair in wanted}
        except requests.RequestException:
            pass
        return found


def gateway_config(folder: Path, broker_url: str, receiver_url: str, registry: Path, rules: Path,
                   status_port: int, extra: str = "", uplink: str = "") -> Path:
    """write_gateway_config's file with this module's registry and rules, and more settings."""
    folder.mkdir(parents=True, exist_ok=True)
    path = write_gateway_config(folder, broker_url, receiver_url, id=GATEWAY_ID, registry=registry.as_posix(),
                                rules=rules.as_posix(), status=f"127.0.0.1:{status_port}",
                                client_id=f"hostile-{uuid.uuid4().hex[:8]}")
    text = path.read_text()
    text = text.replace("[mqtt]\n", "[mqtt]\nreconnect_min = 0.2\nreconnect_max = 2.0\n")
    text = text.replace("retry_max = 1.0\n", "retry_max = 1.0\n" + uplink)
    path.write_text(text + extra)
    return path


@contextmanager
def open_world(folder: Path, broker, *, front=None, credentials: str = "", extra: str = "", uplink: str = "",
               rules: Path = RULES,
               devices: tuple[int, int, int] = (300, 300, 60), wrapper: tuple[str, ...] = (), tally: Tally | None = None):
    """A receiver, a registry, one gateway process and a publisher; all stopped on leaving.

    ``front(receiver_url)`` makes a platform (a LyingPlatform) the gateway talks to instead of the
    receiver itself; the world keeps it as ``world.front``. ``credentials`` (user:password) go into
    the uplink URL, as an installer might write them."""
    folder.mkdir(parents=True, exist_ok=True)
    receiver = start_receiver(folder / "receiver.db")
    publisher = gateway = platform = None
    try:
        platform = front(receiver.url) if front is not None else None
        kinds = write_registry(folder / "devices.csv", *devices)
        uplink_url = platform.url if platform else receiver.url
        if credentials:
            uplink_url = uplink_url.replace("http://", f"http://{credentials}@", 1)
        config = gateway_config(folder, broker.url, uplink_url, folder / "devices.csv", rules, free_port(), extra, uplink)
        gateway = Gateway(config, folder / "gateway.log", int(re.search(r'listen = "127.0.0.1:(\d+)"',
                                                                        config.read_text()).group(1)), wrapper)
        gateway.start()
        publisher = Publisher(broker.host, broker.port)
        world = World(gateway, receiver, publisher, Devices(kinds), tally if tally is not None else Tally(),
                      honest_platform=platform is None)
        world.front, world.broker, world.rules = platform, broker, rules
        yield world
    finally:
        if publisher is not None:
            publisher.close()
        if gateway is not None:
            gateway.stop()
        if platform is not None:
            platform.shutdown()
            platform.server_close()
        receiver.process.terminate()
        receiver.process.wait(10)


def read_db(path: Path, sql: str, args=()) -> list[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def raw_http(port: int, data: bytes, read: bool = True, timeout: float = 5.0) -> bytes:
    """Send raw bytes to a local port; what came back (b"" when the server closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            return b""
        if not read:
            return b""
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except (socket.timeout, OSError):
            pass
        return b"".join(chunks)


# --- a platform that lies ------------------------------------------------------------------------

class LyingPlatform(ThreadingHTTPServer):
    """The central platform as the gateway sees it, in front of the real receiver.

    Each POST to /api/v1/uplink takes the next step of ``plan`` ('pass' when it is empty):

    - ``pass``: forwarded to the receiver, its answer returned;
    - ``fail``: 500; ``unauthorized``: 401; ``close``: the connection dropped unanswered;
    - ``hang``: nothing answered for ``hang`` seconds, then the connection dropped;
    - ``html``: 200 with a captive portal's HTML page;
    - ``fake_ack``: not forwarded; 200 acknowledging revisions it was never sent;
    - ``garbage_ack``: not forwarded; 200 with acknowledgements of the wrong types;
    - ``not_object``: not forwarded; 200 with a JSON list;
    - ``huge``: not forwarded; 200 with 20 MB of JSON acknowledging nothing;
    - ``lose_ack``: forwarded (the receiver stores it), then 500;
    - ``redirect``: 307 to a path that redirects to itself forever.

    ``reports`` (the agreed contract) are taken out of each body before it is forwarded, kept in
    ``reports``, and acknowledged by this platform. GET .../changes is answered from
    ``changes`` (what the test pushes: (cursor, item) pairs, an item returned while the
    gateway's ``after`` is below its cursor), or with ``changes_answer`` (status, content type,
    body) while that is set; every ``after`` asked is kept in ``afters``.
    """

    daemon_threads = True

    def __init__(self, target: str, hang: float = 4.0):
        self.target, self.hang = target, hang
        self.plan: list[str] = []
        self.seen: list[str] = []
        self.reports: list[dict] = []
        self.afters: list[int] = []
        self.changes: list[tuple[int, object]] = []
        self.changes_answer: tuple[int, str, bytes] | None = None
        self.lock = threading.Lock()
        platform = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self, status: int, body: bytes, content_type: str = "application/json", **headers):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                url = urlparse(self.path)
                if re.fullmatch(r"/api/v1/gateways/[^/]+/changes", url.path):
                    after = parse_qs(url.query).get("after", ["0"])[0]
                    try:
                        after_number = int(float(after))
                    except ValueError:
                        after_number = -1
                    with platform.lock:
                        platform.afters.append(after_number)
                        answer = platform.changes_answer
                        items = [item for cursor, item in platform.changes if after_number < cursor]
                    if answer is not None:
                        self._answer(answer[0], answer[2], answer[1])
                    else:
                        self._answer(200, json.dumps({"changes": items}).encode())
                    return
                answer = requests.get(platform.target + self.path, timeout=10)
                self._answer(answer.status_code, answer.content, answer.headers.get("Content-Type", "text/plain"))

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.startswith("/loop"):
                    self._answer(307, b"", Location=self.path)
                    return
                with platform.lock:
                    step = platform.plan.pop(0) if platform.plan else "pass"
                    platform.seen.append(step)
                try:
                    sent = json.loads(body)
                except ValueError:
                    sent = {}
                reports = sent.pop("reports", None) if isinstance(sent, dict) else None
                if isinstance(reports, list):
                    with platform.lock:
                        platform.reports.extend(r for r in reports if isinstance(r, dict))
                if step == "hang":
                    time.sleep(platform.hang)
                    self.close_connection = True
                    return
                if step == "close":
                    self.close_connection = True
                    return
                if step == "fail":
                    return self._answer(500, b'{"error": "injected"}')
                if step == "unauthorized":
                    return self._answer(401, b'{"error": "token expired"}')
                if step == "html":
                    return self._answer(200, b"<html><body><h1>Welcome to City WiFi</h1>Please log in.</body></html>",
                                        "text/html")
                if step == "fake_ack":
                    return self._answer(200, json.dumps({"acknowledged": [["gw-ghost-0001", 1], ["gw-ghost-0002", 7]],
                                                         "telemetry_acknowledged": [["ghost", 12]],
                                                         "duplicates": 0}).encode())
                if step == "garbage_ack":
                    return self._answer(200, b'{"acknowledged": [[{"a": 1}, "x"], 7, null, ["only"], '
                                             b'[1e999999, -1]], "telemetry_acknowledged": "all"}')
                if step == "not_object":
                    return self._answer(200, b'[["everything", 1]]')
                if step == "huge":
                    return self._answer(200, b'{"acknowledged": [], "pad": "' + b"x" * (20 * 1024 * 1024) + b'"}')
                if step == "redirect":
                    return self._answer(307, b"", Location="/loop/api/v1/uplink")
                answer = requests.post(platform.target + self.path, data=json.dumps(sent).encode(),
                                       headers={"Content-Type": "application/json",
                                                "Authorization": self.headers.get("Authorization", "")}, timeout=30)
                if step == "lose_ack":
                    return self._answer(500, b'{"error": "acknowledgement lost"}')
                payload = answer.content
                if answer.status_code == 200 and isinstance(reports, list):
                    try:
                        doc = answer.json()
                        doc.setdefault("reports_acknowledged", [r.get("seq") for r in reports if isinstance(r, dict)])
                        payload = json.dumps(doc).encode()
                    except ValueError:
                        pass
                self._answer(answer.status_code, payload, answer.headers.get("Content-Type", "application/json"))

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def push(self, cursor: int, item) -> None:
        with self.lock:
            self.changes.append((cursor, item))

    def report(self, seq) -> dict | None:
        with self.lock:
            return next((r for r in self.reports if r.get("seq") == seq), None)


def unescaped_controls(text: str) -> list[str]:
    """Control characters (other than newline and tab) and bidi overrides in text printed to a terminal."""
    return sorted({f"U+{ord(c):04X}" for c in text if (ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F
                   or 0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069})


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
