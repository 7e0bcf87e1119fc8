"""Decoders chosen by topic: one small module per protocol, all with the same interface.

Each module has ``NAME``, ``TOPIC_FILTER`` (what the gateway subscribes to; None for Modbus
replies, which the gateway polls for and queues under ``modbus/<unit>/<device>``), ``matches(topic)``
and ``decode(topic, payload, model_of=None) -> Message``, raising only ``DecodeError``.
``model_of(device_id)`` gives the registry's model of a device (the LoRaWAN codec needs it).
Adding a protocol is one module here and one line in ``DECODERS``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Callable

from edge.ingest import chirpstack, frigate, modbus_rtu, own_json
from edge.ingest.decode import DecodeError, Message

__all__ = ["DECODERS", "DEFAULT_TOPICS", "decode", "decoder_for"]

DECODERS: tuple[ModuleType, ...] = (own_json, chirpstack, frigate, modbus_rtu)
DEFAULT_TOPICS = [d.TOPIC_FILTER for d in DECODERS if d.TOPIC_FILTER]  # modbus_rtu is polled, not subscribed


_BY_TOPIC: dict[str, ModuleType | None] = {}  # topic -> its decoder: a dict lookup per message, not a match
_BY_TOPIC_MAX = 100_000  # topics remembered (one per device for most protocols); then it starts again


def decoder_for(topic: str) -> ModuleType | None:
    try:
        return _BY_TOPIC[topic]
    except KeyError:
        pass
    found = next((d for d in DECODERS if d.matches(topic)), None)
    if len(_BY_TOPIC) >= _BY_TOPIC_MAX:
        _BY_TOPIC.clear()
    _BY_TOPIC[topic] = found
    return found


def decode(topic: str, payload: bytes, model_of: Callable[[str], str | None] | None = None) -> Message:
    """Decode one message with the decoder for its topic; anything wrong raises ``DecodeError``."""
    decoder = decoder_for(topic)
    if decoder is None:
        raise DecodeError("bad_topic", f"no decoder for topic {topic[:200]!r}")
    return decoder.decode(topic, payload, model_of)
