"""RS-485 sensors speaking Modbus RTU, served on a serial line (a pseudo-terminal in tests).

The simulator is the slave side of the bus: every Modbus device of the scenario answers at
its own unit id (1..247, in registry order). The gateway (master) polls with function 03
(read holding registers) or 04 (read input registers); both read the same map. Frames are
RTU: unit, function, data, CRC-16/Modbus (low byte first). A frame with a bad CRC, or for
another unit, gets no answer, as on a real bus; an unknown function gets exception 01, an
address outside the map exception 02, a count of 0 or over 125 exception 03.

The register maps and the frames are the gateway's (edge/ingest/modbus_map.py, framed by
pymodbus): the simulator serves exactly what the gateway decodes.
"""

from __future__ import annotations

import os
import select
import termios
import threading
import time
import tty

from pymodbus.pdu import ExceptionResponse

from edge.ingest.modbus_map import (  # noqa: F401 (re-exported for the simulator's users)
    MAX_COUNT, NO_READING, READ_REQUESTS, REGISTER_MAPS, Reg, check_crc, exception_reply, from_registers,
    parse_reply, parse_request, read_reply, read_request, to_registers, with_crc,
)
from edge.ingest.modbus_poll import exchange


class ModbusError(Exception):
    """A Modbus exchange that failed; ``reason`` is ``timeout``, ``crc``, ``exception`` or ``bad_reply``."""

    def __init__(self, reason: str, detail: str, code: int | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.code = reason, detail, code


class RegisterBank:
    """The registers of every device on the bus, by unit id; the simulation writes, the server reads."""

    def __init__(self) -> None:
        self.units: dict[int, list[int]] = {}
        self.kinds: dict[int, str] = {}
        self.lock = threading.Lock()

    def add(self, unit: int, kind: str) -> None:
        if not 1 <= unit <= 247:
            raise ValueError(f"Modbus unit id {unit} is outside 1..247")
        self.kinds[unit] = kind
        self.units[unit] = [NO_READING] * len(REGISTER_MAPS[kind])

    def update(self, unit: int, readings: dict[str, float], t: float, alarm: bool) -> list[int]:
        regs = to_registers(self.kinds[unit], readings, t, alarm)
        with self.lock:
            self.units[unit] = regs
        return regs

    def read(self, unit: int, address: int, count: int) -> list[int] | None:
        with self.lock:
            regs = self.units.get(unit)
            if regs is None or address + count > len(regs):
                return None
            return regs[address: address + count]


def answer(bank: RegisterBank, frame: bytes) -> bytes | None:
    """The slave's reply to one request frame, or None when a real slave stays silent."""
    if not check_crc(frame):
        return None
    unit, function = frame[0], frame[1]
    if unit not in bank.units:
        return None
    if function not in READ_REQUESTS:
        return exception_reply(unit, function, 1)
    request = parse_request(frame)
    if request is None or len(frame) != request.rtu_frame_size:  # a count outside 1..125, or a cut request
        return exception_reply(unit, function, 3)
    regs = bank.read(unit, request.address, request.count)
    if regs is None:
        return exception_reply(unit, function, 2)
    return read_reply(unit, function, regs)


class PtyLine:
    """A pseudo-terminal: the simulator holds the master end, the gateway opens ``path`` with pyserial."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave, termios.TCSANOW)
        self.path = os.ttyname(self.slave)

    def read(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return b""
        try:
            return os.read(self.master, 256)
        except OSError:  # the other end is closed for now
            time.sleep(timeout)
            return b""

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


class SerialLine:
    """A real serial port (a USB RS-485 adapter), through pyserial."""

    def __init__(self, port: str, baudrate: int = 9600) -> None:
        import serial

        self.port = serial.Serial(port, baudrate=baudrate, timeout=0.05)
        self.path = port

    def read(self, timeout: float) -> bytes:
        self.port.timeout = timeout
        return self.port.read(256)

    def write(self, data: bytes) -> None:
        self.port.write(data)

    def close(self) -> None:
        self.port.close()


class RtuServer:
    """Answers Modbus RTU requests on a line from a background thread until ``stop()``.

    A frame ends at a silence of ``gap`` seconds (RTU's 3.5 characters), or as soon as the
    8 bytes of a read request with a good CRC are in.
    """

    def __init__(self, bank: RegisterBank, line, gap: float = 0.01):
        self.bank, self.line, self.gap = bank, line, gap
        self.requests = self.replies = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="modbus-rtu", daemon=True)

    @property
    def path(self) -> str:
        return self.line.path

    def start(self) -> "RtuServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.line.close()

    def _serve(self) -> None:
        buffer = b""
        while not self._stop.is_set():
            chunk = self.line.read(self.gap if buffer else 0.2)
            if chunk:
                buffer += chunk
                if not (len(buffer) == 8 and buffer[1] in (3, 4) and check_crc(buffer)):
                    continue
            if not buffer:
                continue
            frame, buffer = buffer, b""
            self.requests += 1
            reply = answer(self.bank, frame)
            if reply is not None:
                self.line.write(reply)
                self.replies += 1


def read_registers(port, unit: int, address: int, count: int, function: int = 4, timeout: float = 1.0) -> list[int]:
    """The master's side: one read request over a pyserial port; raises ModbusError."""
    reply = exchange(port, read_request(unit, function, address, count), 5 + 2 * count, timeout)
    if len(reply) < 5:
        raise ModbusError("timeout", f"unit {unit} did not answer in {timeout:g}s")
    if not check_crc(reply):
        raise ModbusError("crc", f"reply from unit {unit} has a bad CRC: {reply.hex(' ')}")
    pdu = parse_reply(reply)
    if isinstance(pdu, ExceptionResponse):
        raise ModbusError("exception", f"unit {unit} answered exception {pdu.exception_code}", code=pdu.exception_code)
    if pdu is None or reply[0] != unit or pdu.function_code != function or len(pdu.registers) != count:
        raise ModbusError("bad_reply", f"unexpected reply {reply.hex(' ')}")
    return list(pdu.registers)
