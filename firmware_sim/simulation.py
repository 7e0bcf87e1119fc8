"""Running a scenario: every device reports on its schedule, events and faults happen on time.

The simulation is a discrete-event loop over device time. Each scheduled action (a report,
an event starting or ending, a collection round, a camera update, a late message released)
sits in a heap keyed by (time, sequence number), so a seeded run does the same things in
the same order every time. With ``speed`` set, the loop waits until the wall clock catches
up with device time (1 = real time); with ``max`` it never waits.

What comes out: frames published through a ``Sink`` (MQTT, or nothing), Modbus registers
updated on the bus, the readings the gateway will decode (``Recorder``), and the ground
truth (``TruthEvent``).
"""

from __future__ import annotations

import csv
import heapq
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge.registry import Device, Registry
from firmware_sim import faults as faultlib
from firmware_sim.devices import CAMERA_KINDS, HOUR, KINDS, Bin, Camera, Cover, Environment, SimDevice, Storm
from firmware_sim.protocols import Decoded, Frame, frigate, json_mqtt, lorawan
from firmware_sim.protocols.modbus import REGISTER_MAPS, RegisterBank, from_registers
from firmware_sim.record import Recorder
from firmware_sim.crews import CrewError, Platform
from firmware_sim.scenario import CREW_OUTCOMES, DEVICE_EVENTS, Scenario, ScenarioError, Timing, start_time
from firmware_sim.truth import TruthEvent, number

log = logging.getLogger(__name__)

REPORT, START, END, CAM_UPDATE, CAM_END, COLLECT, RELEASE, STATUS, CREW = range(9)


class Sink:
    """Where frames go. The base sink drops them (files only)."""

    def publish(self, frame: Frame, qos: int) -> None:
        pass

    def close(self, timeout: float) -> int:
        """Finish; returns how many frames the broker did not acknowledge."""
        return 0


@dataclass
class Node:
    """One device of the run: its registry entry, how it speaks, and its simulated sensors."""

    reg: Device
    protocol: str
    sim: SimDevice
    timing: Timing
    unit: int = 0          # Modbus unit id
    gen: int = 0           # bumped when its report schedule is replaced
    fcnt: int = 0          # LoRaWAN frame counter
    network_server_decodes: bool = False  # LoRaWAN: the event carries the decoded 'object'
    online: bool = False
    faults: list = field(default_factory=list)
    last_frigate: dict = field(default_factory=dict)


@dataclass
class Stats:
    reports: int = 0
    published: int = 0
    recorded: int = 0
    dropped: int = 0
    malformed: int = 0
    duplicated: int = 0
    delayed: int = 0
    status: int = 0
    crews: int = 0          # repairs the platform was told of (resolved)
    crew_errors: int = 0    # repairs it could not be told of (no order, no platform)
    by_protocol: dict = field(default_factory=dict)
    wall_s: float = 0.0
    device_s: float = 0.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def protocol_of(model: str, kind: str) -> str:
    from edge.ingest.codecs import CODECS
    from firmware_sim.vendor_models import MODELS

    if model in CODECS or model in MODELS:
        return "lorawan"
    if model.upper() == "FRIGATE":
        return "frigate"
    if model.endswith("R") and kind in REGISTER_MAPS and model[:-1] in ("MC-200", "SB-120"):
        return "modbus"
    return "mqtt_json"


def build_devices(scenario: Scenario) -> list[tuple[Device, str]]:
    """The scenario's devices: the registry's, then the generated groups, each with its protocol."""
    devices: list[tuple[Device, str]] = []
    if scenario.registry is not None:
        for device in Registry.load(scenario.registry).devices:
            devices.append((device, protocol_of(device.model, device.kind)))
    for group in scenario.devices:
        for n in range(group.count):
            number_ = group.first + n
            grid = group.grids[n % len(group.grids)]
            zone = group.zones.get(grid, "Z1")
            params = {"depth_cm": group.depth_cm or 120.0} if group.kind == "bin" else {}
            lat = 31.23 + 0.0004 * (n // len(group.grids)) % 0.05
            lon = 121.47 + 0.003 * group.grids.index(grid)
            devices.append((Device(
                id=f"{group.id_prefix}-{number_:04d}", kind=group.kind, model=group.model, address=f"{number_} {group.street}",
                lat=round(lat, 6), lon=round(lon, 6), grid=grid, zone=zone, team=f"team-{grid.lower()}",
                index=len(devices), params=params,
            ), group.protocol))
    seen: set[str] = set()
    for device, _ in devices:
        if device.id in seen:
            raise ScenarioError(f"{scenario.source}: device {device.id} is listed twice (registry and devices, or two groups)")
        seen.add(device.id)
    return devices


def modbus_units(devices: list[tuple[Device, str]]) -> dict[str, int]:
    """The Modbus unit id of each device on the RS-485 bus: 1, 2, ... in the scenario's order."""
    on_bus = [device.id for device, protocol in devices if protocol == "modbus"]
    return {device_id: unit for unit, device_id in enumerate(on_bus, start=1)}


def write_registry(devices: list[tuple[Device, str]], path: Path) -> None:
    """The registry CSV the gateway needs for this scenario's devices (with the ``modbus_unit``
    it polls each Modbus device at, when there are any)."""
    units = modbus_units(devices)
    params = sorted({name for device, _ in devices for name in device.params} - {"modbus_unit"})
    if units:
        params.append("modbus_unit")
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "kind", "model", "address", "lat", "lon", "grid", "zone", "team", *params])
        for device, _ in devices:
            values = {**device.params, "modbus_unit": units.get(device.id)}
            writer.writerow([device.id, device.kind, device.model, device.address, device.lat, device.lon, device.grid,
                             device.zone, device.team, *(_cell(values.get(p)) for p in params)])


def _cell(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else str(value)


class Simulation:
    def __init__(self, scenario: Scenario, start: float | None = None, recorder: Recorder | None = None,
                 platform: "Platform | None" = None):
        self.scenario = scenario
        self.platform = platform  # where crews report their repairs (firmware_sim/crews.py)
        self._repeats: list[tuple[TruthEvent, TruthEvent]] = []  # (the problem back, the one repaired)
        self.start = start if start is not None else start_time(scenario.start)
        self.end = self.start + scenario.duration
        self.recorder = recorder or Recorder(None)
        self.stats = Stats()
        self.truth: list[TruthEvent] = []
        self.env = Environment(utc_offset_h=scenario.utc_offset_h)
        self.bank = RegisterBank()
        self.nodes: list[Node] = []
        self.by_id: dict[str, Node] = {}
        self._heap: list[tuple[float, int, int, object]] = []
        self._seq = 0
        self._fault_rng = random.Random(f"{scenario.seed}:faults")
        self._open_natural: dict[str, TruthEvent] = {}
        self._episodes: dict[tuple[str, str], TruthEvent] = {}
        self._held: dict[int, tuple[Node, Frame, Decoded]] = {}
        self.devices = build_devices(scenario)
        self._setup()

    # -- setting up -------------------------------------------------------------------
    def _push(self, t: float, action: int, arg: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, action, arg))

    def _setup(self) -> None:
        sc = self.scenario
        groups = {}
        for group in sc.devices:
            for n in range(group.count):
                groups[f"{group.id_prefix}-{group.first + n:04d}"] = group
        units = modbus_units(self.devices)
        for device, protocol in self.devices:
            cls = KINDS[device.kind]
            rng = random.Random(f"{sc.seed}:{device.id}")
            sim = cls(device.id, device.grid, dict(device.params), rng, self.env)
            if isinstance(sim, Bin):
                sim.full_pct = sc.thresholds.bin_full_pct
                sim.fill_t = self.start
            if isinstance(sim, Cover):
                sim.alarm_water_cm = sc.thresholds.water_alarm_cm + 5  # the firmware alarms a little before
            group = groups.get(device.id)
            node = Node(device, protocol, sim, sc.timing_for(device.kind, group),
                        network_server_decodes=group is not None and group.network_server_decodes)
            if protocol == "modbus":
                node.unit = units[device.id]
                self.bank.add(node.unit, device.kind)
            self.nodes.append(node)
            self.by_id[device.id] = node
            if device.kind != "camera" and sc.initial_report:
                self._push(self.start + sim.rng.uniform(0, min(node.timing.interval, sc.duration)), REPORT, (node, 0))
        self._plan_events()
        self._plan_faults()
        self._plan_collections()
        self._plan_flickers()

    def _node(self, device_id: str, what: str) -> Node:
        node = self.by_id.get(device_id)
        if node is None:
            raise ScenarioError(f"{self.scenario.source}: {what}: no device {device_id!r} in the scenario")
        return node

    def _plan_events(self) -> None:
        sc = self.scenario
        for spec in sc.events:
            if spec.kind == "rain_storm":
                self._plan_storm(spec)
                continue
            for device_id in spec.targets():
                node = self._node(device_id, f"event {spec.kind}")
                if spec.kind not in DEVICE_EVENTS[node.reg.kind]:
                    raise ScenarioError(f"{sc.source}: event {spec.kind} is not possible on {node.reg.kind} {device_id}; "
                                        f"possible: {', '.join(DEVICE_EVENTS[node.reg.kind])}")
                start = self.start + spec.at
                end = None if spec.duration is None else start + spec.duration
                crew = spec.crew
                if crew is not None and crew.outcome != "not_fixed":
                    end = start + crew.at  # the crew ends it
                expect = sc.expected(spec.kind, spec.expect)
                camera = {"zone": spec.zone, "label": spec.label, "score": spec.score}
                truth = self._plan(node, spec.kind, start, end, expect, "injected", spec.params(), **camera)
                if crew is not None and truth is not None:
                    self._plan_crew(node, spec, crew, start + crew.at, truth, expect, camera)

    def _plan_crew(self, node: Node, spec, crew, fix: float, truth: TruthEvent, expect: list[str], camera: dict) -> None:
        """The platform resolves the event's order at ``fix``; then the device does what ``crew.outcome`` says."""
        truth.details["crew"] = {"at": round(fix, 3), "outcome": crew.outcome, "expect": CREW_OUTCOMES[crew.outcome]}
        if fix >= self.end:
            return
        self._push(fix, CREW, (node, truth))
        if crew.outcome == "breaks_again":
            back = fix + crew.breaks_after
            again = self._plan(node, spec.kind, back, back + crew.again_for, expect, "injected", spec.params(), **camera)
            if again is not None:
                self._repeats.append((again, truth))
        elif crew.outcome == "silent":
            quiet = fix + 1.0  # the device's report at the repair still goes out
            node.faults.append(faultlib.Fault("dropout", quiet, self.end, "", 1.0, 0.0, 60.0))
            self.truth.append(TruthEvent(node.reg.id, "silent", round(quiet, 3), None, [], "fault", node.reg.grid,
                                         node.reg.zone, details={"after_crew": True}))
            if node.protocol == "mqtt_json":
                self._push(quiet, STATUS, (node, False))

    def _plan(self, node: Node, kind: str, start: float, end: float | None, expect: list[str], source: str,
              params: dict | None = None, **camera) -> TruthEvent | None:
        if start >= self.end:
            return None
        truth = TruthEvent(node.reg.id, kind, round(start, 3), None if end is None or end >= self.end else round(end, 3),
                           expect, source, node.reg.grid, node.reg.zone)
        self.truth.append(truth)
        self._push(start, START, (node, kind, end, params or {}, camera, truth))
        if end is not None and end < self.end and node.reg.kind != "camera":
            self._push(end, END, (node, kind, truth))
        return truth

    def _plan_storm(self, spec) -> None:
        sc = self.scenario
        storm = Storm(frozenset(spec.grids), self.start + spec.at, spec.duration, spec.intensity)
        self.env.storms.append(storm)
        threshold = sc.thresholds.water_alarm_cm
        for node in self.nodes:
            if node.reg.grid not in storm.grids:
                continue
            if isinstance(node.sim, Cover):
                cover = node.sim
                span = cover.base_water - cover.storm_peak
                if span <= 0:
                    continue
                level = (cover.base_water - threshold) / span / storm.intensity
                if 0 < level <= 1:
                    up, down = storm.when(level)
                    self._plan(node, "water_rising", up, down, sc.expected("water_rising", spec.expect), "storm")
            elif isinstance(node.sim, Camera) and storm.intensity >= sc.thresholds.waterlogging_level:
                up, down = storm.when(sc.thresholds.waterlogging_level / storm.intensity)
                self._plan(node, "waterlogging", up, down, sc.expected("waterlogging", None), "storm")

    def _plan_faults(self) -> None:
        sc = self.scenario
        for spec in sc.faults:
            targets = [self._node(d, f"fault {spec.kind}") for d in spec.targets()] if not spec.fraction else []
            if spec.fraction:
                pool = [n for n in self.nodes if n.reg.kind != "camera" or spec.kind in ("duplicate", "malformed", "out_of_order")]
                count = max(1, round(len(pool) * spec.fraction))
                targets = random.Random(f"{sc.seed}:fault:{spec.kind}:{spec.at}").sample(pool, count)
            start = self.start + spec.at
            end = self.end if spec.duration is None else min(self.end, start + spec.duration)
            for node in targets:
                fault = faultlib.Fault(spec.kind, start, end, spec.metric or faultlib.MAIN_METRIC.get(node.reg.kind, ""),
                                       spec.probability, spec.skew, spec.delay)
                node.faults.append(fault)
                self.truth.append(TruthEvent(node.reg.id, spec.kind if spec.kind != "dropout" else "silent",
                                             round(start, 3), None if end >= self.end else round(end, 3),
                                             list(spec.expect or []), "fault", node.reg.grid, node.reg.zone,
                                             details=fault.details()))
                if spec.kind == "dropout" and node.protocol == "mqtt_json":
                    self._push(start, STATUS, (node, False))
                    if end < self.end:
                        self._push(end, STATUS, (node, True))

    def _plan_collections(self) -> None:
        sc = self.scenario
        bins = [n for n in self.nodes if isinstance(n.sim, Bin)]
        if not bins or not sc.collections:
            return
        day0 = self.start - self.env.hour(self.start) * HOUR
        for day in range(int(sc.duration // 86400) + 2):
            for text in sc.collections:
                hh, mm = (int(x) for x in text.split(":"))
                round_start = day0 + day * 86400 + hh * HOUR + mm * 60
                for k, node in enumerate(bins):
                    t = round_start + (k % 60) * 120.0  # along the route: two minutes a bin
                    if self.start < t < self.end:
                        self._push(t, COLLECT, node)

    def _plan_flickers(self) -> None:
        sc = self.scenario
        rates = {}
        for group in sc.devices:
            if group.kind == "camera" and group.flickers_per_day:
                for n in range(group.count):
                    rates[f"{group.id_prefix}-{group.first + n:04d}"] = group.flickers_per_day
        for device_id, per_day in rates.items():
            node = self.by_id[device_id]
            rng = random.Random(f"{sc.seed}:flicker:{device_id}")
            t = self.start
            while True:
                t += rng.expovariate(per_day / 86400)
                if t >= self.end:
                    break
                kind = rng.choice(tuple(CAMERA_KINDS))
                self._plan(node, "flicker", t, t + rng.uniform(2, 20), [], "natural",
                           label=CAMERA_KINDS[kind][0], zone=CAMERA_KINDS[kind][1], score=rng.uniform(0.35, 0.6))

    # -- running ----------------------------------------------------------------------
    def run(self, sink: Sink | None = None, stop: threading.Event | None = None,
            speed: float | str | None = None, progress=None) -> Stats:
        sink = sink or Sink()
        stop = stop or threading.Event()
        speed = self.scenario.speed if speed is None else speed
        wall0 = time.monotonic()
        qos = self.scenario.qos
        last_progress = wall0
        self._sink, self._qos = sink, qos
        t = self.start
        while self._heap and not stop.is_set():
            t, _, action, arg = heapq.heappop(self._heap)
            if t >= self.end:
                t = self.end
                break
            if speed != "max":
                delay = wall0 + (t - self.start) / speed - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    break
            self._do(t, action, arg)
            if progress is not None and time.monotonic() - last_progress > 2:
                last_progress = time.monotonic()
                progress(self, t)
        else:
            t = self.end if not stop.is_set() else t
        self._finish(t)
        self.stats.wall_s = time.monotonic() - wall0
        self.stats.device_s = t - self.start
        return self.stats

    def _do(self, t: float, action: int, arg) -> None:
        if action == REPORT:
            node, gen = arg
            if gen == node.gen:
                self._report(node, t)
        elif action == START:
            self._start(t, *arg)
        elif action == END:
            node, kind, truth = arg
            node.sim.end(kind, t)
            if kind == "battery_dead":
                self._status(node, True)
            self._report_now(node, t)
        elif action == CAM_UPDATE:
            node, episode = arg
            if episode.id in node.sim.episodes:
                self._camera(node, episode, t, "update")
                self._push(t + node.timing.alarm_interval, CAM_UPDATE, arg)
        elif action == CAM_END:
            node, episode = arg
            self._camera(node, episode, t, "end")
            node.sim.episodes.pop(episode.id, None)
        elif action == COLLECT:
            self._collect(arg, t)
        elif action == RELEASE:
            node, frame, decoded = self._held.pop(arg)
            self._send(node, frame, decoded)
        elif action == STATUS:
            node, online = arg
            self._status(node, online)
        elif action == CREW:
            node, truth = arg
            self._crew(node, truth)

    def _crew(self, node: Node, truth: TruthEvent) -> None:
        """The crew reports its repair: the platform resolves the order of the event's device."""
        report = truth.details["crew"]
        if self.platform is None:
            report["error"] = "no platform to tell (python -m firmware_sim scenario --platform URL)"
            self.stats.crew_errors += 1
            return
        try:
            report["order_id"] = self.platform.resolve(node.reg.id, truth.expect)
            self.stats.crews += 1
        except CrewError as error:
            report["error"] = str(error)
            self.stats.crew_errors += 1
            log.warning("crew on %s: %s", node.reg.id, error)

    def _start(self, t: float, node: Node, kind: str, end: float | None, params: dict, camera: dict, truth) -> None:
        if isinstance(node.sim, Camera):
            episode = node.sim.open_episode(kind, t, end if end is not None else self.end, **camera)
            self._camera(node, episode, t, "new")
            self._push(t + node.timing.alarm_interval, CAM_UPDATE, (node, episode))
            if end is not None and end < self.end:
                self._push(end, CAM_END, (node, episode))
            return
        if truth.source == "injected":
            node.sim.start(kind, t, params)
            if kind == "bin_full" and isinstance(node.sim, Bin):
                self._close_natural(node, t)
        self._report_now(node, t)

    def _report_now(self, node: Node, t: float) -> None:
        """A device reports at once on an alarm (and at its end); its schedule restarts from here."""
        node.gen += 1
        self._report(node, t)

    def _report(self, node: Node, t: float) -> None:
        sim = node.sim
        if isinstance(sim, Bin):
            crossed = sim.crossing(t)
            if crossed is not None:
                truth = TruthEvent(node.reg.id, "bin_full", round(crossed, 3), None,
                                   self.scenario.expected("bin_full", None), "natural", node.reg.grid, node.reg.zone)
                self.truth.append(truth)
                self._open_natural[node.reg.id] = truth
        readings = sim.sample(t)
        self.stats.reports += 1
        if not sim.silent:
            self._emit(node, t, readings)
        elif node.online:
            self._status(node, False)
        gap = node.timing.alarm_interval if sim.alarm else node.timing.interval * (
            1 + node.timing.jitter * (2 * sim.rng.random() - 1))
        due = t + gap
        wake = sim.wake_at(t)
        if wake is not None and t < wake < due:
            due = wake
        self._push(due, REPORT, (node, node.gen))

    def _collect(self, node: Node, t: float) -> None:
        sim = node.sim
        if "bin_full" in sim.active:
            return  # an injected full bin ends when the scenario says
        was_full = sim.collect(t)
        if was_full:
            self._close_natural(node, t)
        self._report_now(node, t)

    def _close_natural(self, node: Node, t: float) -> None:
        truth = self._open_natural.pop(node.reg.id, None)
        if truth is not None:
            truth.end = round(t, 3)

    def _status(self, node: Node, online: bool) -> None:
        if node.protocol != "mqtt_json" or node.online == online:
            return
        node.online = online
        self.stats.status += 1
        self._sink.publish(json_mqtt.status(node.reg.id, online), 1)

    def _emit(self, node: Node, t: float, readings: dict) -> None:
        """Faults, then the protocol, then the sink and the recorder."""
        plan = faultlib.apply(node, t, readings, self._fault_rng) if node.faults else faultlib.Plan(readings)
        if plan.drop:
            self.stats.dropped += 1
            return
        reg = node.reg
        if node.protocol == "modbus":
            regs = self.bank.update(node.unit, plan.readings, t, node.sim.alarm)
            ts, decoded = from_registers(reg.kind, regs)
            self._count("modbus")
            self._record(Decoded(reg.id, float(ts), decoded))
            return
        if not node.online:
            self._status(node, True)
        if node.protocol == "lorawan":
            node.fcnt += 1
            if plan.malformed:
                variant = lorawan.MALFORMED[self.stats.malformed % len(lorawan.MALFORMED)]
                self._malformed(lorawan.malformed(self.scenario.lorawan_application, reg.id, reg.model, t,
                                                  plan.readings, node.fcnt, self._seq, variant))
                return
            frame, decoded = lorawan.report(self.scenario.lorawan_application, reg.id, reg.model, t, plan.readings,
                                            node.sim.alarm, node.fcnt, self._seq, node.network_server_decodes)
        else:
            ts = t + plan.skew
            if plan.malformed:
                variant = json_mqtt.MALFORMED[self.stats.malformed % len(json_mqtt.MALFORMED)]
                self._malformed(json_mqtt.malformed(reg.id, ts, plan.readings, variant))
                return
            frame, decoded = json_mqtt.report(reg.id, ts, plan.readings)
        self._deliver(node, t, frame, decoded, plan)

    def _deliver(self, node: Node, t: float, frame: Frame, decoded: Decoded, plan) -> None:
        if plan.delay:
            self.stats.delayed += 1
            self._held[self._seq] = (node, frame, decoded)
            self._push(t + plan.delay, RELEASE, self._seq)
            return
        self._send(node, frame, decoded)
        if plan.duplicate:
            self.stats.duplicated += 1
            self._send(node, frame, decoded)

    def _send(self, node: Node, frame: Frame, decoded: Decoded) -> None:
        self._sink.publish(frame, self._qos)
        self._count(node.protocol)
        self._record(decoded)

    def _malformed(self, frame: Frame) -> None:
        self.stats.malformed += 1
        self._sink.publish(frame, self._qos)
        self.stats.published += 1

    def _count(self, protocol: str) -> None:
        if protocol != "modbus":
            self.stats.published += 1
        self.stats.by_protocol[protocol] = self.stats.by_protocol.get(protocol, 0) + 1

    def _record(self, decoded: Decoded) -> None:
        self.stats.recorded += 1
        self.recorder.write(decoded)

    def _camera(self, node: Node, episode, t: float, kind: str) -> None:
        camera: Camera = node.sim
        if kind != "new":
            episode.updates += 1
        frame = camera.frame(episode, t, ended=kind == "end")
        plan = faultlib.apply(node, t, {}, self._fault_rng) if node.faults else faultlib.Plan()
        if plan.drop:
            self.stats.dropped += 1
            return
        if node.protocol == "frigate":
            if plan.malformed:
                variant = frigate.MALFORMED[self.stats.malformed % len(frigate.MALFORMED)]
                self._malformed(frigate.malformed(node.reg.id, episode, t, frame, variant))
                return
            out, decoded, after = frigate.event(node.reg.id, episode, t, frame, kind, node.last_frigate.get(episode.id))
            node.last_frigate[episode.id] = after
            if kind == "end":
                node.last_frigate.pop(episode.id, None)
        else:
            out, decoded = json_mqtt.report(node.reg.id, t + plan.skew, frame)
        self._deliver(node, t, out, decoded, plan)

    def _finish(self, t: float) -> None:
        # Late messages still held are released at the end, as a device would eventually send them.
        for key in sorted(self._held):
            node, frame, decoded = self._held.pop(key)
            self._send(node, frame, decoded)
        for node in self.nodes:
            if node.online:
                self._status(node, False)

    def ground_truth(self) -> list[TruthEvent]:
        events = number(list(self.truth))
        for again, repaired in self._repeats:
            again.details["repeat_of_event"] = repaired.id
        return events
