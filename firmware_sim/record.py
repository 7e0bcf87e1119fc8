"""Recorded readings in the replay format of ``edge rules test``.

JSON Lines, one decoded device message a line, in the order the gateway receives them::

    {"device": "MH-0003", "ts": 1763830000.25, "readings": {"tilt_deg": 31.5, "open": 1.0}}

For LoRaWAN, Frigate and Modbus devices these are the readings after decoding, what the
gateway's ingest produces. A payload sent malformed is not recorded (the gateway
quarantines it); a duplicate is recorded twice, a late message where it arrives. With
``csv=True`` the same readings are also written as CSV, ``ts,device,metric,value``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import orjson

from firmware_sim.protocols import Decoded


class Recorder:
    def __init__(self, jsonl: Path | None, csv_path: Path | None = None):
        self.lines = 0
        self._jsonl = jsonl.open("wb") if jsonl else None
        self._csv_file = csv_path.open("w", newline="", encoding="utf-8") if csv_path else None
        self._csv = csv.writer(self._csv_file) if self._csv_file else None
        if self._csv:
            self._csv.writerow(["ts", "device", "metric", "value"])

    def write(self, message: Decoded) -> None:
        self.lines += 1
        if self._jsonl:
            self._jsonl.write(orjson.dumps({"device": message.device, "ts": message.ts, "readings": message.readings}))
            self._jsonl.write(b"\n")
        if self._csv:
            for metric, value in message.readings.items():
                self._csv.writerow([repr(message.ts), message.device, metric, value])

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
        if self._csv_file:
            self._csv_file.close()
