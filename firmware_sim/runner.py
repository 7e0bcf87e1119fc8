"""Running a scenario with its outputs: the library under ``python -m firmware_sim scenario``.

Writes into ``out`` (when given): ``truth.jsonl`` (ground truth), ``readings.jsonl`` (the
replay format of ``edge rules test``; ``readings.csv`` too with ``csv=True``),
``registry.csv`` (the devices, for the gateway) and ``run.json`` (what was sent).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from firmware_sim.protocols.modbus import PtyLine, RtuServer, SerialLine
from firmware_sim.record import Recorder
from firmware_sim.scenario import Scenario
from firmware_sim.simulation import Simulation, Sink, Stats, write_registry
from firmware_sim.truth import TruthEvent, write_truth


@dataclass
class RunResult:
    simulation: Simulation
    stats: Stats
    truth: list[TruthEvent]
    unacknowledged: int
    modbus_path: str | None


def run_scenario(scenario: Scenario, *, broker: str | None = None, out: Path | None = None,
                 speed: float | str | None = None, start: float | None = None, csv: bool = False,
                 stop: threading.Event | None = None, client_id: str | None = None,
                 modbus_port: str | None = None, on_modbus=None, linger: float = 0.0, progress=None,
                 window: int = 5000, platform=None) -> RunResult:
    """Run a scenario to its end (or until ``stop``); returns the stats and the ground truth.

    Modbus devices are served on ``modbus_port`` (a serial device) or on a new pseudo-terminal;
    ``on_modbus(path)`` is called with its path before the run starts, and the bus keeps
    answering ``linger`` seconds after the run. Crews resolve orders at ``platform``
    (firmware_sim/crews.py).
    """
    recorder = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        recorder = Recorder(out / "readings.jsonl", out / "readings.csv" if csv else None)
    simulation = Simulation(scenario, start=start, recorder=recorder, platform=platform)
    if out is not None:
        write_registry(simulation.devices, out / "registry.csv")
    server = None
    if simulation.bank.units:
        line = SerialLine(modbus_port) if modbus_port else PtyLine()
        server = RtuServer(simulation.bank, line).start()
        if out is not None:
            (out / "modbus.json").write_bytes(orjson.dumps({"path": server.path, "units": {
                n.reg.id: n.unit for n in simulation.nodes if n.unit}}, option=orjson.OPT_INDENT_2))
        if on_modbus is not None:
            on_modbus(server.path)
    sink: Sink = Sink()
    if broker is not None:
        from firmware_sim.mqtt_sink import MqttSink

        sink = MqttSink(broker, client_id or f"firmware-sim-{scenario.seed}-{time.time_ns() % 10**9}", window=window)
    unacknowledged = 0
    try:
        stats = simulation.run(sink, stop=stop, speed=speed, progress=progress)
    finally:
        unacknowledged = sink.close(timeout=30)
        if recorder is not None:
            recorder.close()
        if server is not None:
            if linger > 0 and not (stop and stop.is_set()):
                (stop or threading.Event()).wait(linger)
            server.stop()
    truth = simulation.ground_truth()
    if out is not None:
        write_truth(out / "truth.jsonl", truth)
        (out / "run.json").write_bytes(orjson.dumps({
            "scenario": scenario.name, "seed": scenario.seed, "start": simulation.start, "end": simulation.end,
            "devices": len(simulation.nodes), "events": len(truth), "unacknowledged": unacknowledged,
            "stats": stats.as_dict(),
        }, option=orjson.OPT_INDENT_2))
    return RunResult(simulation, stats, truth, unacknowledged, server.path if server else None)
