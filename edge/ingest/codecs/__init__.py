"""Codecs for LoRaWAN device models: compact binary frames to readings and back.

A LoRaWAN sensor sends a few bytes on an fPort; the network server (ChirpStack) hands them
on base64-encoded in its uplink event, and the gateway turns them into readings with the
codec of the device's model. One module per model, each with::

    encode(readings: dict[str, float]) -> tuple[int, bytes]   # (fPort, frame): the simulator
    decode(fport: int, data: bytes) -> dict[str, float]        # readings: the gateway's ingest

Both raise ``CodecError`` (with a short ``reason``: ``truncated``, ``too_long``,
``unknown_fport``, ``bad_value``) on frames they cannot handle. Values that a frame marks
as "no reading" (the model's sentinel) are left out of the decoded readings.

Signal strength (``rssi_dbm``) is not in any frame: the network server measures it and puts
it in the event's ``rxInfo``.
"""

from __future__ import annotations

from types import ModuleType

from edge.ingest.codecs import mcl300, sbl220
from edge.ingest.codecs._errors import CodecError

__all__ = ["CODECS", "CodecError", "codec_for", "decode", "encode"]

CODECS: dict[str, ModuleType] = {
    mcl300.MODEL: mcl300,
    sbl220.MODEL: sbl220,
}


def codec_for(model: str) -> ModuleType:
    try:
        return CODECS[model]
    except KeyError:
        raise CodecError("unknown_model", f"no codec for device model {model!r}; models: {', '.join(CODECS)}") from None


def encode(model: str, readings: dict[str, float]) -> tuple[int, bytes]:
    return codec_for(model).encode(readings)


def decode(model: str, fport: int, data: bytes) -> dict[str, float]:
    return codec_for(model).decode(fport, data)
