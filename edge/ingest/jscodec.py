"""Vendor payload codecs in JavaScript, run in a QuickJS sandbox.

Vendors publish a LoRaWAN device's codec as JavaScript in the format of The Things Network's
device repository, which ChirpStack v4 also runs::

    function decodeUplink(input) {          // input.bytes: array of 0..255, input.fPort: int
        return {data: {...}, warnings: [...], errors: [...]};
    }

``JsCodec`` loads one such file and calls its ``decodeUplink`` in a QuickJS context of its
own (the ``quickjs`` package): no ``require``, no ``std``/``os`` modules, no network or file
access, a memory limit for the context and a time limit for each call. A codec that throws,
returns ``errors``, runs past its time, runs out of memory or returns something that is not
``{data: {...}}`` raises ``CodecError`` with its reason, and the message is quarantined with it:

=====================  ==========================================================
``codec_error``        it threw, or returned ``errors`` (given in the detail)
``codec_timeout``      a call ran longer than ``time_limit`` (a loop)
``codec_memory``       the context ran out of its ``memory_limit``
``codec_bad_output``   the result is not an object with an object ``data``
``codec_suspended``    it ran out of time or memory ``suspend_after`` times in a row on
                       one device's frames: that device's messages are quarantined
                       without running it for ``suspend_for`` seconds
=====================  ==========================================================

A call that ran out of time or memory may leave the context broken, so the context is made
again from the source before the next call. The suspension is what keeps a device whose
frames make the codec loop from costing ``time_limit`` per message to every other device's
ingest; it is per device, so the other devices of the model keep being decoded. A codec that
throws or returns ``errors`` costs little and is not suspended.

QuickJS was chosen over V8 (``mini-racer``) by measurement (bench/bench_codecs.py,
docs/performance.md): 51.6 k calls/s against 1.2 k, 0.087 MB per loaded codec against 4.95 MB. A context belongs to the
thread that made it; each thread that calls a codec gets its own.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import quickjs

from edge.ingest.codecs._errors import CodecError

__all__ = ["JsCodec", "JsLimits", "CodecError"]

MAX_SOURCE_BYTES = 1 << 20  # a codec file over 1 MiB is not a codec
MAX_OUTPUT_BYTES = 64 * 1024  # what a call may return, as JSON

# Called with the input as JSON text, returns the output as JSON text: one crossing each way,
# no Python objects shared with the sandbox.
_CALL = """(function (text) {
    var out = decodeUplink(JSON.parse(text));
    return out === undefined ? "null" : JSON.stringify(out);
})"""


@dataclass(frozen=True)
class JsLimits:
    time_limit: float = 0.05  # seconds of one call
    memory_limit: int = 16 << 20  # bytes of one codec's context
    suspend_after: int = 3  # calls in a row out of time or memory, on one device's frames, before suspending
    suspend_for: float = 60.0  # seconds


class JsCodec:
    """One vendor codec file, callable as ``decode(fport, data) -> (data, warnings)``."""

    def __init__(self, path: str | Path, limits: JsLimits = JsLimits(), name: str | None = None):
        self.path = Path(path)
        self.name = name or self.path.name
        self.limits = limits
        raw = self.path.read_bytes()
        if len(raw) > MAX_SOURCE_BYTES:
            raise CodecError("codec_error", f"{self.path}: {len(raw)} bytes, more than a codec has ({MAX_SOURCE_BYTES})")
        try:
            self.source = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise CodecError("codec_error", f"{self.path}: not UTF-8 text ({error})") from None
        self._contexts: dict[int, tuple[quickjs.Context, object]] = {}  # thread id -> (context, call)
        self._costly: dict[str, int] = {}  # device -> time or memory failures in a row
        self._suspended: dict[str, float] = {}  # device -> monotonic time its suspension ends
        self._context()  # a file that does not load, or has no decodeUplink, is refused now

    def _context(self):
        key = threading.get_ident()
        found = self._contexts.get(key)
        if found is not None:
            return found
        context = quickjs.Context()
        context.set_memory_limit(self.limits.memory_limit)
        context.set_time_limit(self.limits.time_limit * 4)  # loading may do more than one call
        try:
            context.eval(self.source)
            if context.eval("typeof decodeUplink") != "function":
                raise CodecError("codec_error", f"{self.path}: defines no function decodeUplink(input)")
            call = context.eval(_CALL)
        except quickjs.JSException as error:
            raise CodecError("codec_error", f"{self.path} does not load: {_first_line(error)}") from None
        context.set_time_limit(self.limits.time_limit)
        self._contexts[key] = found = (context, call)
        return found

    def decode(self, fport: int, data: bytes, device: str = "") -> tuple[dict, list[str]]:
        """The codec's ``data`` and ``warnings`` for one uplink of ``device``; raises ``CodecError``."""
        if self._suspended:
            until = self._suspended.get(device, 0.0)
            now = time.monotonic()
            if now < until:
                raise CodecError("codec_suspended", f"{self.name} ran out of time or memory {self.limits.suspend_after} "
                                                    f"times in a row on {device or 'this device'}'s frames; "
                                                    f"not run for it for {until - now:.0f} s more")
            self._suspended.pop(device, None)
        try:
            out = self._run(fport, data)
        except CodecError as error:
            if error.reason in ("codec_timeout", "codec_memory"):
                self._costly_failure(device)
            raise
        self._costly.pop(device, None)
        return out

    def _costly_failure(self, device: str) -> None:
        count = self._costly.get(device, 0) + 1
        if count < self.limits.suspend_after:
            if len(self._costly) >= 10_000:  # bounded, whatever the device ids
                self._costly.clear()
            self._costly[device] = count
            return
        self._costly.pop(device, None)
        if len(self._suspended) >= 10_000:
            self._suspended.clear()
        self._suspended[device] = time.monotonic() + self.limits.suspend_for

    def call(self, fport: int, data: bytes) -> dict:
        """What ``decodeUplink`` returned, as it returned it (``edge codecs test`` compares it with
        the examples); raises ``CodecError`` when it threw, ran out of time or memory, or returned
        something that is not a JSON object."""
        context, call = self._context()
        text = orjson.dumps({"bytes": list(data), "fPort": fport}).decode()
        try:
            result = call(text)
        except quickjs.JSException as error:
            message = _first_line(error)
            if "interrupted" in message or "out of memory" in message or "stack overflow" in message:
                self._contexts.pop(threading.get_ident(), None)  # it may be left broken: made again next call
            if "interrupted" in message:
                raise CodecError("codec_timeout", f"{self.name} ran longer than {self.limits.time_limit * 1000:g} ms") from None
            if "out of memory" in message or "stack overflow" in message:
                raise CodecError("codec_memory", f"{self.name} ran out of its stack or its "
                                                 f"{self.limits.memory_limit >> 20} MiB: {message}") from None
            raise CodecError("codec_error", f"{self.name} threw: {message}") from None
        except MemoryError:
            self._contexts.pop(threading.get_ident(), None)
            raise CodecError("codec_memory", f"{self.name} ran out of its {self.limits.memory_limit >> 20} MiB") from None
        if not isinstance(result, str) or len(result) > MAX_OUTPUT_BYTES:
            raise CodecError("codec_bad_output", f"{self.name} returned more than {MAX_OUTPUT_BYTES} bytes of JSON")
        try:
            out = orjson.loads(result)
        except orjson.JSONDecodeError as error:  # e.g. an integer beyond 64 bits
            raise CodecError("codec_bad_output", f"{self.name} returned JSON the gateway cannot read: {error}") from None
        if not isinstance(out, dict):
            raise CodecError("codec_bad_output", f"{self.name} returned {result[:80]}, not {{data: {{...}}}}")
        return out

    def _run(self, fport: int, data: bytes) -> tuple[dict, list[str]]:
        out = self.call(fport, data)
        errors = out.get("errors")
        if errors:
            shown = "; ".join(str(e)[:200] for e in errors) if isinstance(errors, list) else str(errors)[:200]
            raise CodecError("codec_error", f"{self.name} says: {shown}")
        decoded = out.get("data")
        if not isinstance(decoded, dict):
            raise CodecError("codec_bad_output", f"{self.name} returned no data object: {orjson.dumps(out)[:120].decode(errors='replace')}")
        warnings = out.get("warnings") or []
        return decoded, [str(w)[:200] for w in warnings] if isinstance(warnings, list) else [str(warnings)[:200]]


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]

