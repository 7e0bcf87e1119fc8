"""A restart is invisible to the rules (issue 19), through real processes.

The same recorded street is published (QoS 1, a private Mosquitto) to one ``edge run`` that
is never interrupted and to gateways that are killed with SIGKILL at random (seeded) moments
and restarted on the same files while the publisher goes on; the broker keeps what they miss
in their persistent sessions. What the reference receiver of each run got must be identical:
every order and revision (id, revision number, change, category, device, rule, evidence,
opened time, state, severity). Transitions made by the gateway's own clock rather than by a
reading (``absent()`` between reports) must be the same transitions, at times that differ by
no more than the time the gateway was down.

The street: config/scenarios/restart.yaml, run once by firmware_sim. Its readings are put on
a 15-second grid of device time (every reading of a cover at a multiple of 15 s, and every
window slot of the rules below a multiple of 15 s), so that a rule's state changes at a
reading and not between readings: between two readings of a device the gateway runs its
clock on by its own (wall) clock, which differs from run to run; with the grid, a `for` or
a window can only complete at a reading, however the runs are timed, unless the gateway is
down for 10 s or more. The recording starts three hours before the test, so its device times
lie within [ingest] max_past and never ahead of the gateway's clock.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt

from conftest import ROOT, RULES, edge_command, start_receiver, wait_until
from edge.orders.book import iso
from firmware_sim.protocols import json_mqtt
from firmware_sim.runner import run_scenario
from firmware_sim.scenario import load_scenario

SCENARIO = ROOT / "config" / "scenarios" / "restart.yaml"
GRID = 15.0  # seconds of device time between the grid's points
GATEWAY = "gw-restart"
RATE = 400.0  # messages a second from the publisher (a 2,400-message hour of the street in about 6 s)
MARKERS = ("RMK-0001", "RMK-0002")

# Rules beyond the shipped ones, so that every kind of state a restart could lose is in play.
# Windows are 2m, 4m, 10m and 20m: slots of 15, 30, 75 and 150 s, all on the grid.
EXTRA_RULES = """
rules:
  - name: water_low_on_average
    applies_to: {kind: manhole_cover}
    when: avg(water_cm, 10m) < 60 and max(water_cm, 4m) < 70
    for: 1m
    clear_when: water_cm > 90
    clear_for: 2m
    order: {category: sewer_overflow, severity: minor, title: "Water low under {device} for 10 minutes"}
  - name: h2s_unusual
    applies_to: {kind: manhole_cover}
    when: zscore(h2s_ppm, 30m) > 4 and h2s_ppm > 2
    clear_when: h2s_ppm < 1.5
    order: {category: manhole_gas, severity: major, title: "Unusual H2S under {device}"}
  - name: methane_unlike_its_past
    applies_to: {kind: manhole_cover}
    when: anomaly(ch4_lel_pct) >= 0.75 and ch4_lel_pct > 3
    clear_when: ch4_lel_pct < 2
    order: {category: manhole_gas, severity: major, title: "Methane under {device} unlike its past"}
  - name: water_sensor_stuck
    applies_to: {kind: manhole_cover}
    when: stuck(water_cm, 20m)
    order: {category: device_maintenance, severity: minor, title: "Water sensor of {device} stuck"}
  - name: cover_heating
    applies_to: {kind: manhole_cover}
    when: temp_c > 30 and rate(temp_c, 20m) > 1
    for: 2m
    clear_when: temp_c < 25
    worse_by: 5
    order: {category: manhole_fire, severity: minor, title: "{device} heating up: {value:.0f} degrees C"}
  - name: cover_held_open
    applies_to: {kind: manhole_cover}
    when: min(tilt_deg, 2m) > 15
    for: 30s
    clear_when: max(tilt_deg, 2m) < 5
    order: {category: manhole_cover_displaced, severity: major, title: "{device} open for minutes"}
  - name: bin_lost
    applies_to: {kind: bin, devices: [RBIN-0005, RBIN-0006]}
    when: absent(3s)
    order: {category: device_offline, severity: minor, title: "Bin {device} lost"}
"""
# The last message of a recording: its order says the gateway has taken everything before it.
MARKER_RULE = """
rules:
  - name: end_of_recording
    applies_to: {kind: manhole_cover, devices: [RMK-0001, RMK-0002]}
    when: temp_c > 100
    order: {category: device_offline, severity: info, title: "{device}: the recording ends here"}
"""
CLOCK_RULES = {"bin_lost"}  # opened by the gateway's clock, between reports
# What must be in play in the run without a crash: rule -> changes its orders must show.
IN_PLAY = {
    "cover_tilted": {"opened", "cleared"},
    "cover_held_open": {"opened", "cleared"},  # min/max windows with for
    "water_rising": {"opened", "updated", "grouped", "cleared"},  # rate window, worse_by, grouping
    "gas_danger": {"opened", "cleared"},
    "h2s_unusual": {"opened", "cleared"},  # zscore
    "methane_unlike_its_past": {"opened", "cleared"},  # anomaly
    "water_sensor_stuck": {"opened", "escalated"},  # stuck window; escalation in the device's clock
    "cover_heating": {"opened", "cleared"},  # rate window with for
    "cover_hot": {"opened", "cleared"},
    "bin_fire": {"opened", "updated", "cleared"},
    "bin_knocked_over": {"opened", "cleared"},
    "bin_full": {"opened", "cleared"},
    "bin_lost": {"opened"},  # absent
    "end_of_recording": {"opened"},
}
GROUPED_IN = {"water_low_on_average"}  # rules whose problems join another rule's order (avg window)


# --- the recording ---------------------------------------------------------------------------

class Street:
    """A recorded street: the registry, and the messages in the order they are published."""

    def __init__(self, registry: Path, messages: list[tuple[str, bytes]], end: float):
        self.registry, self.messages, self.end = registry, messages, end


def _grid_times(readings: list[dict]) -> dict[tuple[str, float], float]:
    """Each device's reading times moved to the grid, in the same order, never two on one point."""
    times: dict[str, set[float]] = defaultdict(set)
    for reading in readings:
        times[reading["device"]].add(reading["ts"])
    moved = {}
    for device, stamps in times.items():
        last = -math.inf
        for ts in sorted(stamps):
            last = max(math.ceil(ts / GRID) * GRID, last + GRID)
            moved[(device, ts)] = last
    return moved


def _add_markers(registry: Path) -> None:
    with registry.open("a", newline="") as f:
        writer = csv.writer(f)
        for n, marker in enumerate(MARKERS, 1):
            writer.writerow([marker, "manhole_cover", "MC-200", f"{n} Marker Rd", 31.25, 121.48, "G39", "Z3",
                             "team-g39", ""])


def record_street(folder: Path) -> Street:
    """Run the scenario once (its seed makes it the same street every time) and keep its messages."""
    start = math.floor(time.time() / 3600) * 3600 - 3 * 3600  # in the past, within [ingest] max_past
    run_scenario(load_scenario(SCENARIO), out=folder, start=float(start))
    readings = [orjson.loads(line) for line in (folder / "readings.jsonl").read_bytes().splitlines()]
    moved = _grid_times(readings)
    messages = []
    for reading in readings:
        frame, _ = json_mqtt.report(reading["device"], moved[(reading["device"], reading["ts"])], reading["readings"])
        messages.append((frame.topic, frame.payload))
    end = max(moved.values())
    frame, _ = json_mqtt.report(MARKERS[0], end, {"temp_c": 150.0})
    messages.append((frame.topic, frame.payload))
    registry = folder / "registry.csv"
    _add_markers(registry)
    return Street(registry, messages, end)


def rules_folder(folder: Path, *extra: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path in RULES.glob("*.yaml"):
        shutil.copy(path, folder / path.name)
    for n, text in enumerate(extra):
        (folder / f"extra_{n}.yaml").write_text(text)
    return folder


def categories_file(path: Path) -> Path:
    """The shipped categories, escalating only device_maintenance (after 25 device minutes).

    An escalation is decided at the gateway's ticks, in the device's clock counted from the
    device's clock when the order was stored (``escalate_from``, taken after the whole batch).
    So where it falls among an order's other revisions depends on wall-clock timing, and after
    a restart (the backlog comes in one batch) it comes later by up to the backlog's span of
    device time (the compressed time of this test makes that up to ~15 device minutes). Only
    the stuck sensor's order (no other revision after it opens, at 20 min) escalates here:
    once, at 45 min or somewhat later, in every run; the second would be due 10 device minutes
    after the end of the recording.
    """
    with (ROOT / "config" / "categories.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            row["accept_within"] = "25m" if row["key"] == "device_maintenance" else "1d"
            writer.writerow(row)
    return path


# --- the processes ---------------------------------------------------------------------------

class Publisher:
    """Publishes messages with QoS 1 at a steady rate in a thread; ``acknowledged`` counts PUBACKs."""

    def __init__(self, broker, messages: list[tuple[str, bytes]], rate: float):
        self.messages, self.rate = messages, rate
        self.acknowledged = 0
        self.done = threading.Event()
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"restart-pub-{uuid.uuid4().hex[:8]}")
        self.client.max_inflight_messages_set(100)
        self.client.on_publish = self._acknowledged
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _acknowledged(self, client, userdata, mid, reason_code=None, properties=None):
        with self._lock:
            self.acknowledged += 1

    def start(self) -> "Publisher":
        self.thread.start()
        return self

    def _run(self):
        started = time.monotonic()
        for n, (topic, payload) in enumerate(self.messages):
            delay = started + n / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.client.publish(topic, payload, qos=1)
        self.done.set()

    def finish(self, timeout: float = 30) -> None:
        assert self.done.wait(timeout), "the publisher did not get through its messages"
        assert wait_until(lambda: self.acknowledged == len(self.messages), timeout), \
            f"the broker acknowledged {self.acknowledged} of {len(self.messages)} messages"
        self.client.loop_stop()
        self.client.disconnect()


def write_config(folder: Path, broker, receiver_url: str, registry: Path, rules: Path, categories: Path,
                 checkpoint_interval: float) -> Path:
    path = folder / "gateway.toml"
    path.write_text(f"""
[gateway]
id = "{GATEWAY}"
data_dir = "data"

[registry]
path = "{registry.as_posix()}"

[rules]
paths = ["{rules.as_posix()}"]

[mqtt]
url = "{broker.url}"
client_id = "edge-restart-{uuid.uuid4().hex[:8]}"

[uplink]
url = "{receiver_url}"
retry_max = 1.0

[status]
listen = ""

[orders]
categories = "{categories.as_posix()}"

[engine]
checkpoint_interval = {checkpoint_interval}
""")
    return path


class Gateway:
    """``edge run`` on one config, started again after each kill, all into one log file."""

    def __init__(self, config: Path):
        self.config = config
        self.folder = config.parent
        self.log = self.folder / "gateway.log"
        self.database = self.folder / "data" / "gateway.db"
        self.process: subprocess.Popen | None = None
        self.kills: list[float] = []  # wall times of the kills

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(edge_command() + ["run", "--config", str(self.config)],
                                            stdout=subprocess.DEVNULL, stderr=log, cwd=self.folder)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_subscribed(self, times: int = 1) -> None:
        assert wait_until(lambda: self.log_text().count("subscribed to") >= times, 60), self.log_text()[-3000:]

    def kill(self) -> None:
        self.kills.append(time.time())
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def unsent(self) -> int:
        if not self.database.exists():
            return -1
        with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0]

    def has_order(self, rule: str, device: str) -> bool:
        if not self.database.exists():
            return False
        with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=5) as conn:
            query = "SELECT count(*) FROM orders WHERE rule = ? AND device = ?"
            return conn.execute(query, [rule, device]).fetchone()[0] > 0

    def running_times(self) -> list[float]:
        """When each start of the gateway was ready (its 'running' log lines), as wall times."""
        out = []
        for match in re.finditer(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO edge\.agent: gateway \S+ running",
                                 self.log_text(), re.M):
            out.append(dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
        return out

    def downtime(self) -> float:
        """Seconds from each kill until the next start was ready, summed."""
        ready = self.running_times()
        total = 0.0
        for killed in self.kills:
            after = [t for t in ready if t > killed]
            assert after, f"no start of the gateway after the kill at {killed}"
            total += after[0] - killed
        return total


def finish_run(gateway: Gateway, receiver, expect: set[tuple[str, str]], revisions: int = 0) -> list[dict]:
    """Wait until the receiver has the orders ``expect`` names (and, if it can, ``revisions``
    revisions) and the gateway has sent everything; let it tick once more; stop it."""

    def orders_in():
        return gateway.unsent() == 0 and expect <= {(o["rule"], o["device"]) for o in receiver.orders()}

    assert wait_until(orders_in, 90, 0.2), (
        f"the run did not complete: unsent {gateway.unsent()}, missing "
        f"{expect - {(o['rule'], o['device']) for o in receiver.orders()}}\n{gateway.log_text()[-3000:]}")
    # what the gateway's clock makes (an escalation due at the end) comes at its next tick, later
    # on a loaded machine (tests run two at a time); a revision that never comes still shows in
    # the comparison, so this wait is not asserted and ends as soon as the revisions are there
    wait_until(lambda: len(receiver.revisions()) >= revisions, 30, 0.2)
    time.sleep(1.5)  # one more tick (1 s)
    assert wait_until(lambda: gateway.unsent() == 0, 30, 0.2)
    gateway.stop()
    assert gateway.unsent() == 0, "the gateway made revisions after the run completed (a tick at the end?)"
    return receiver.revisions()


def run_street(tmp: Path, name: str, broker, street: Street, rules: Path, categories: Path, kills: int,
               seed: int, checkpoint_interval: float, revisions: int = 0) -> tuple[list[dict], Gateway]:
    """Publish the street to a fresh gateway and receiver; kill the gateway ``kills`` times meanwhile."""
    folder = tmp / name
    folder.mkdir()
    receiver = start_receiver(folder / "receiver.db")
    gateway = Gateway(write_config(folder, broker, receiver.url, street.registry, rules, categories,
                                   checkpoint_interval))
    publisher = None
    try:
        gateway.start()
        gateway.wait_subscribed()
        publisher = Publisher(broker, street.messages, RATE).start()
        rng = random.Random(seed)
        seconds = len(street.messages) / RATE
        moments, last = [], 0.0
        for at in sorted(rng.uniform(0.08, 0.95) * seconds for _ in range(kills)):
            last = max(at, last + 0.4)  # at least 0.4 s apart: some kills come while it starts up
            moments.append(last)
        started = time.monotonic()
        for moment in moments:
            time.sleep(max(0.0, started + moment - time.monotonic()))
            gateway.kill()
            gateway.start()  # on the same files, at once; the broker holds what comes meanwhile
        publisher.finish()
        revisions = finish_run(gateway, receiver, {("end_of_recording", MARKERS[0]), ("bin_lost", "RBIN-0005"),
                                                   ("bin_lost", "RBIN-0006")}, revisions)
        return revisions, gateway
    finally:
        if publisher is not None and not publisher.done.is_set():
            publisher.done.wait(30)
        gateway.stop()
        receiver.process.terminate()
        receiver.process.wait(10)


# --- comparing ---------------------------------------------------------------------------

FIELDS = ("order_id", "revision", "change", "category", "device", "rule", "opened_at", "state", "severity")


def _evidence(revision: dict, with_time: bool = True) -> list[tuple]:
    return [(e["rule"], e["device"], e["metric"], e["value"], e["at"] if with_time else None)
            for e in revision["evidence"]]


def by_revision(revisions: list[dict]) -> dict[tuple[str, int], dict]:
    """The reading-driven revisions, by (order id, revision), reduced to what must be identical."""
    out = {}
    for r in revisions:
        if r["rule"] in CLOCK_RULES:
            continue
        out[(r["order_id"], r["revision"])] = {**{f: r[f] for f in FIELDS}, "evidence": _evidence(r)}
    return out


def clock_driven(revisions: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """The orders the gateway's clock opened, by (rule, device): their revisions in order."""
    out: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in sorted(revisions, key=lambda r: (r["order_id"], r["revision"])):
        if r["rule"] in CLOCK_RULES:
            out[(r["rule"], r["device"])].append(r)
    return out


def seconds(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def differences(expected: dict, got: dict) -> list[str]:
    problems = []
    for key in sorted(expected.keys() - got.keys()):
        problems.append(f"missing {key}: {expected[key]}")
    for key in sorted(got.keys() - expected.keys()):
        problems.append(f"extra {key}: {got[key]}")
    for key in sorted(expected.keys() & got.keys()):
        if expected[key] != got[key]:
            fields = {f: (expected[key][f], got[key][f]) for f in expected[key] if expected[key][f] != got[key][f]}
            problems.append(f"differs {key}: (no crash, crash) {fields}")
    return problems


def clock_differences(expected: dict, got: dict, tolerance: float) -> list[str]:
    problems = []
    if expected.keys() != got.keys():
        return [f"orders opened by the clock: no crash {sorted(expected)}, crash {sorted(got)}"]
    for key in expected:
        a, b = expected[key], got[key]
        shape = lambda revs: [  # noqa: E731
            (r["revision"], r["change"], r["state"], r["severity"], r["category"], _evidence(r, False)) for r in revs]
        if shape(a) != shape(b):
            problems.append(f"{key}: no crash {shape(a)}, crash {shape(b)}")
            continue
        moved = abs(seconds(a[0]["opened_at"]) - seconds(b[0]["opened_at"]))
        if moved > tolerance:
            problems.append(f"{key}: opened at {a[0]['opened_at']} without a crash, {b[0]['opened_at']} with "
                            f"({moved:.1f} s apart; the gateway was down {tolerance:.1f} s, tick included)")
    return problems


# --- the tests ---------------------------------------------------------------------------

def test_kill_9_at_random_moments_gives_the_orders_of_a_run_without_a_crash(tmp_path, mosquitto):
    street = record_street(tmp_path / "street")
    rules = rules_folder(tmp_path / "rules", EXTRA_RULES, MARKER_RULE)
    categories = categories_file(tmp_path / "categories.csv")

    clean, _ = run_street(tmp_path, "no-crash", mosquitto, street, rules, categories, kills=0, seed=0,
                          checkpoint_interval=60)
    changes: dict[str, set[str]] = defaultdict(set)
    for r in clean:
        changes[r["rule"]].add(r["change"])
    for rule, wanted in IN_PLAY.items():
        assert wanted <= changes[rule], \
            f"rule {rule}: changes {sorted(changes[rule])}, the street should give {sorted(wanted)}"
    assert GROUPED_IN <= {e["rule"] for r in clean for e in r["evidence"]}
    expected, expected_clock = by_revision(clean), clock_driven(clean)

    # checkpoints every second (kills land in checkpoints and in replays of a short changelog),
    # every 2 s, and at the default (a restart replays everything since the last start)
    for n, (kills, interval) in enumerate(((4, 1), (5, 2), (3, 60))):
        revisions, gateway = run_street(tmp_path, f"crash-{n}", mosquitto, street, rules, categories, kills=kills,
                                        seed=1900 + n, checkpoint_interval=interval, revisions=len(clean))
        assert len(gateway.kills) == kills
        assert "replayed" in gateway.log_text() or "restored from its checkpoint" in gateway.log_text()
        problems = differences(expected, by_revision(revisions))
        problems += clock_differences(expected_clock, clock_driven(revisions), gateway.downtime() + 2.0)
        assert not problems, (f"run crash-{n} ({kills} kills, checkpoint_interval {interval}) differs from the run "
                              f"without a crash:\n" + "\n".join(problems[:40]))


def test_covers_split_by_a_kill_9_still_open_their_orders(tmp_path, mosquitto):
    """The issue's harness, smaller: N covers each report a tilt of 30 twice, 20 s apart in device
    time (shipped cover_tilted: > 15 for 10 s); kill -9 between the two halves of the stream,
    restart on the same files: all N orders, each opened at its second report, as without a crash."""
    n = 120
    covers = [f"RTC-{i:04d}" for i in range(1, n + 1)]
    registry = tmp_path / "registry.csv"
    with registry.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "kind", "model", "address", "lat", "lon", "grid", "zone", "team", "depth_cm"])
        for i, cover in enumerate(covers):
            writer.writerow([cover, "manhole_cover", "MC-200", f"{i + 1} Tilt Rd", 31.2, 121.4, "G40", "Z4",
                             "team-g40", ""])
    _add_markers(registry)
    rules = rules_folder(tmp_path / "rules", MARKER_RULE)
    t0 = math.floor(time.time()) - 3600.0
    reports = sorted((t0 + 0.25 * i + lap * 20.0, cover) for i, cover in enumerate(covers) for lap in (0, 1))
    messages = [json_mqtt.report(cover, ts, {"tilt_deg": 30.0, "open": 0.0})[0] for ts, cover in reports]
    half = len(messages) // 2
    first_of = {cover: ts for ts, cover in reversed(reports)}
    cut = reports[half][0]
    split = [c for c in covers if first_of[c] < cut <= first_of[c] + 20.0]
    assert len(split) >= n // 2

    receiver = start_receiver(tmp_path / "receiver.db")
    config = write_config(tmp_path, mosquitto, receiver.url, registry, rules,
                          categories_file(tmp_path / "categories.csv"), checkpoint_interval=60)
    gateway = Gateway(config)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    try:
        gateway.start()
        gateway.wait_subscribed()
        client.connect(mosquitto.host, mosquitto.port)
        client.loop_start()

        def publish(frames):
            infos = [client.publish(f.topic, f.payload, qos=1) for f in frames]
            for info in infos:
                info.wait_for_publish(10)

        publish(messages[:half] + [json_mqtt.report(MARKERS[0], cut - 0.1, {"temp_c": 150.0})[0]])
        assert wait_until(lambda: gateway.has_order("end_of_recording", MARKERS[0]), 30)  # the first half is in
        gateway.kill()
        publish(messages[half:] + [json_mqtt.report(MARKERS[1], reports[-1][0], {"temp_c": 150.0})[0]])
        gateway.start()
        finish_run(gateway, receiver, {("end_of_recording", MARKERS[1])} | {("cover_tilted", c) for c in covers})
        orders = [o for o in receiver.orders() if o["rule"] == "cover_tilted"]
        assert sorted(o["device"] for o in orders) == covers
        second = {cover: iso(ts) for ts, cover in reports}  # the later report of each cover wins
        assert {o["device"]: o["opened_at"] for o in orders} == second
        assert all(o["revision"] == 1 and o["state"] == "opened" for o in orders)
        assert "replayed" in gateway.log_text()
    finally:
        client.loop_stop()
        gateway.stop()
        receiver.process.terminate()
        receiver.process.wait(10)
