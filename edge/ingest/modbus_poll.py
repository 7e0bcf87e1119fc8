"""Polling of Modbus RTU sensors on an RS-485 line (pyserial), into the same queue as MQTT.

A device is polled when the registry gives it a ``modbus_unit`` (1..247) and a model with a
register map (``edge/ingest/modbus_rtu.py``); it is polled every ``poll_s`` seconds (registry
column), or ``[modbus] poll_interval``. One request reads its whole map; the reply frame,
as it came off the line, goes into the agent's queue under ``modbus/<unit>/<device id>`` and
is decoded there like any MQTT payload: a bad frame (CRC, timeout, exception, wrong reply)
is quarantined with its reason. A reply identical to the device's previous one (nothing
measured since) is not queued again. The bus is half-duplex: one request at a time.

The port may be missing when the gateway starts (a USB adapter not plugged in yet) or
vanish: the poller logs it and tries again every ``reopen_interval`` seconds; it never
stops the gateway.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from dataclasses import dataclass

from edge.ingest.modbus_map import check_crc, read_request

from edge.ingest import modbus_rtu
from edge.ingest.inbox import Full
from edge.registry import Registry

log = logging.getLogger(__name__)

__all__ = ["ModbusPoller", "ModbusSetupError", "PolledDevice", "polled_devices"]


class ModbusSetupError(ValueError):
    """The registry's Modbus columns cannot be used; the message says which device and why."""


@dataclass(frozen=True)
class PolledDevice:
    device_id: str
    unit: int
    count: int  # registers in its map
    interval: float
    topic: str


def polled_devices(registry: Registry, default_interval: float) -> list[PolledDevice]:
    """The registry's Modbus devices; refuses a bad unit, a unit used twice, or a model without a map."""
    devices: list[PolledDevice] = []
    units: dict[int, str] = {}
    for device in registry.devices:
        raw_unit = device.params.get("modbus_unit")
        if raw_unit is None:
            continue
        if not float(raw_unit).is_integer() or not 1 <= raw_unit <= 247:
            raise ModbusSetupError(f"device {device.id}: modbus_unit {raw_unit:g} is not a unit id 1..247")
        unit = int(raw_unit)
        if unit in units:
            raise ModbusSetupError(f"device {device.id}: modbus_unit {unit} is already {units[unit]}'s")
        units[unit] = device.id
        count = modbus_rtu.register_count(device.model)
        if count is None:
            raise ModbusSetupError(f"device {device.id}: model {device.model!r} has no Modbus register map; "
                                   f"models: {', '.join(modbus_rtu.MODELS)}")
        interval = device.params.get("poll_s", default_interval)
        if not interval > 0:
            raise ModbusSetupError(f"device {device.id}: poll_s must be more than 0 seconds, got {interval:g}")
        devices.append(PolledDevice(device.id, unit, count, float(interval), modbus_rtu.topic_for(unit, device.id)))
    return devices


def exchange(port, request: bytes, expected: int, timeout: float) -> bytes:
    """Send one request, return the reply bytes read until the expected length or ``timeout``.

    A Modbus exception reply is 5 bytes long; what is returned may be short or empty (the
    decoder says why it is wrong).
    """
    port.reset_input_buffer()
    port.write(request)
    deadline = time.monotonic() + timeout
    reply = b""
    while True:
        want = (5 if len(reply) >= 2 and reply[1] & 0x80 else expected) - len(reply)
        remaining = deadline - time.monotonic()
        if want <= 0 or remaining <= 0:
            return reply
        port.timeout = remaining
        chunk = port.read(want)
        if not chunk:
            return reply
        reply += chunk


def open_serial(path: str, baudrate: int, parity: str, timeout: float):
    import serial

    return serial.Serial(path, baudrate=baudrate, bytesize=8, parity=parity, stopbits=1, timeout=timeout)


class ModbusPoller:
    """Polls the devices on one serial line from a thread until ``stop`` is set."""

    def __init__(self, port: str, devices: list[PolledDevice], put, stop: threading.Event, *,
                 baudrate: int = 9600, parity: str = "N", timeout: float = 0.5, function: int = 4,
                 reopen_interval: float = 5.0, opener=open_serial):
        self.path, self.devices, self.put, self.stop = port, devices, put, stop
        self.baudrate, self.parity, self.timeout, self.function = baudrate, parity, timeout, function
        self.reopen_interval, self.opener = reopen_interval, opener
        self.polls = self.replies = self.unchanged = self.port_errors = 0
        self.last_error = ""
        self._last: dict[str, bytes] = {}
        self._thread = threading.Thread(target=self.run, name="modbus-poll", daemon=True)

    def start(self) -> None:
        if self.devices:
            self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def run(self) -> None:
        due = [(time.monotonic(), n, device) for n, device in enumerate(self.devices)]
        heapq.heapify(due)
        port = None
        log.info("polling %d Modbus RTU device(s) on %s", len(self.devices), self.path)
        try:
            while not self.stop.is_set():
                if port is None:
                    port = self._open()
                    if port is None:
                        continue
                at, n, device = due[0]
                wait = at - time.monotonic()
                if wait > 0:
                    self.stop.wait(min(wait, 0.5))
                    continue
                heapq.heapreplace(due, (max(at + device.interval, time.monotonic()), n, device))
                try:
                    frame = self._poll(port, device)
                except (OSError, ValueError) as error:  # serial.SerialException is an OSError
                    self._port_failed(f"{self.path}: {error}")
                    try:
                        port.close()
                    except (OSError, ValueError):
                        pass
                    port = None
                    continue
                if frame is not None:
                    self._queue(device.topic, frame)
        finally:
            if port is not None:
                port.close()

    def _open(self):
        try:
            return self.opener(self.path, self.baudrate, self.parity, self.timeout)
        except (OSError, ValueError) as error:
            self._port_failed(f"cannot open the Modbus serial port {self.path}: {error}")
            self.stop.wait(self.reopen_interval)
            return None

    def _port_failed(self, message: str) -> None:
        self.port_errors += 1
        if message != self.last_error:
            log.error("%s; trying again every %gs", message, self.reopen_interval)
        self.last_error = message

    def _poll(self, port, device: PolledDevice) -> bytes | None:
        """One read of the device's map; the frame to queue, or None when nothing changed."""
        request = read_request(device.unit, self.function, 0, device.count)
        self.polls += 1
        frame = exchange(port, request, 5 + 2 * device.count, self.timeout)
        if frame:
            self.replies += 1
        if len(frame) == 5 + 2 * device.count and frame[1] == self.function and check_crc(frame):
            if frame == self._last.get(device.device_id):
                self.unchanged += 1
                return None
            self._last[device.device_id] = frame
        return frame

    def _queue(self, topic: str, frame: bytes) -> None:
        while not self.stop.is_set():
            try:
                self.put(topic, frame)
                return
            except Full:
                continue
