"""Benchmark: pymodbus's serial client against the gateway's own exchange, on one Modbus RTU line.

The gateway frames Modbus RTU with pymodbus (edge/ingest/modbus_map.py) but keeps its own
serial exchange (edge/ingest/modbus_poll.py). This measures why, on a pseudo-terminal served
by the simulator's slave (firmware_sim/protocols/modbus.py) whose replies for unit 2 get a
flipped byte (a noisy line):

- what each reports for a good reply (unit 1), a reply with a bad CRC (unit 2) and silence
  (unit 9, not on the bus), and how long each takes to say so;
- the time per poll of a 10-register map (mean of ``--polls``).

    .venv/bin/python bench/bench_modbus.py [--polls 200] [--timeout 0.5]

prints the figures and writes them to bench/results/modbus.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import serial  # noqa: E402
from pymodbus import FramerType  # noqa: E402
from pymodbus.client import ModbusSerialClient  # noqa: E402

from edge.ingest import modbus_rtu  # noqa: E402
from edge.ingest.decode import DecodeError  # noqa: E402
from edge.ingest.modbus_map import read_request  # noqa: E402
from edge.ingest.modbus_poll import exchange  # noqa: E402
from firmware_sim.protocols.modbus import PtyLine, RegisterBank, RtuServer  # noqa: E402

CASES = ((1, "good reply"), (2, "bad CRC"), (9, "silence"))


class NoisyLine(PtyLine):
    """Replies for unit 2 get their fourth byte flipped."""

    def write(self, data: bytes) -> None:
        if data and data[0] == 2:
            data = data[:3] + bytes([data[3] ^ 0xFF]) + data[4:]
        super().write(data)


def pymodbus_client(path: str, polls: int, timeout: float) -> dict:
    seen: list[bytes] = []

    def trace(sending: bool, data: bytes) -> bytes:
        if not sending:
            seen.append(data)
        return data

    client = ModbusSerialClient(path, framer=FramerType.RTU, baudrate=9600, timeout=timeout, retries=0,
                                trace_packet=trace)
    client.connect()
    cases = {}
    for unit, name in CASES:
        seen.clear()
        start = time.perf_counter()
        try:
            reply = client.read_input_registers(0, count=10, device_id=unit)
            said = f"{type(reply).__name__} of {len(reply.registers)} registers"
        except Exception as error:  # what the client raises is what is measured
            said = f"{type(error).__name__}: {error}"
        cases[name] = {"said": said, "seconds": round(time.perf_counter() - start, 3),
                       "raw_reply_bytes": sum(map(len, seen))}
    start = time.perf_counter()
    for _ in range(polls):
        client.read_input_registers(0, count=10, device_id=1)
    per_poll = (time.perf_counter() - start) / polls
    client.close()
    return {"cases": cases, "ms_per_poll": round(per_poll * 1e3, 3)}


def gateway_exchange(path: str, polls: int, timeout: float) -> dict:
    port = serial.Serial(path, 9600, timeout=timeout)
    cases = {}
    for unit, name in CASES:
        start = time.perf_counter()
        frame = exchange(port, read_request(unit, 4, 0, 10), 25, timeout)
        seconds = time.perf_counter() - start
        try:
            modbus_rtu.decode(f"modbus/{unit}/MH-{unit:04d}", frame, lambda device: "MC-200R",
                              received_at=time.time())
            said = "reading"
        except DecodeError as error:
            said = f"quarantined, {error}"
        cases[name] = {"said": said, "seconds": round(seconds, 3), "raw_reply_bytes": len(frame)}
    request = read_request(1, 4, 0, 10)
    start = time.perf_counter()
    for _ in range(polls):
        exchange(port, request, 25, timeout)
    per_poll = (time.perf_counter() - start) / polls
    port.close()
    return {"cases": cases, "ms_per_poll": round(per_poll * 1e3, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--polls", type=int, default=200, help="polls timed for each (default 200)")
    parser.add_argument("--timeout", type=float, default=0.5, help="reply timeout, seconds (default 0.5, as [modbus] timeout)")
    args = parser.parse_args()
    bank = RegisterBank()
    for unit in (1, 2):
        bank.add(unit, "manhole_cover")
        bank.update(unit, {"tilt_deg": 2.0, "open": 0, "water_cm": 150.0}, time.time(), alarm=False)
    server = RtuServer(bank, NoisyLine()).start()
    try:
        results = {"cpu_count": os.cpu_count(), "polls": args.polls, "timeout_s": args.timeout,
                   "pymodbus_client": pymodbus_client(server.path, args.polls, args.timeout),
                   "gateway_exchange": gateway_exchange(server.path, args.polls, args.timeout)}
    finally:
        server.stop()
    for side in ("pymodbus_client", "gateway_exchange"):
        print(f"{side}: {results[side]['ms_per_poll']} ms per poll of 10 registers")
        for name, case in results[side]["cases"].items():
            print(f"  {name:10s} {case['seconds']:6.3f} s  {case['raw_reply_bytes']:3d} bytes seen  {case['said']}")
    out = ROOT / "bench" / "results" / "modbus.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
