"""Decoders chosen by topic: one small module per protocol, all with the same interface.

Each module has ``NAME``, ``TOPIC_FILTER`` (what the gateway subscribes to; None for Modbus
replies, which the gateway polls for and queues under ``modbus/<unit>/<device>``), ``matches(topic)``
and ``decode(topic, payload, model_of=None, limits=DEFAULT_LIMITS, received_at=None, vendor=None) -> Message``,
raising only ``DecodeError``. ``model_of(device_id)`` gives the registry's model of a device
(the LoRaWAN codec needs it), ``vendor`` the mapped vendor models with their JavaScript
codecs (edge/ingest/vendor_models.py); ``limits`` (``[ingest]``) bound the payload's size and, given
``received_at`` (the gateway's clock when the message arrived), the device's time.
Adding a protocol is one module here and one line in ``DECODERS``.

The agent calls ``decode`` below once per message, with the gateway's limits and the
message's arrival time; whatever the payload, it returns a checked ``Message`` or raises
``DecodeError`` (a decoder's own bug included, as ``decoder_error``), so one message can
never take its batch down.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Callable

from edge.ingest import chirpstack, frigate, modbus_rtu, own_json
from edge.ingest.decode import DEFAULT_LIMITS, MAX_TOPIC, DecodeError, Limits, Message, check_message, check_size

__all__ = ["DECODERS", "DEFAULT_TOPICS", "decode", "decoder_for"]

log = logging.getLogger(__name__)

DECODERS: tuple[ModuleType, ...] = (own_json, chirpstack, frigate, modbus_rtu)
DEFAULT_TOPICS = [d.TOPIC_FILTER for d in DECODERS if d.TOPIC_FILTER]  # modbus_rtu is polled, not subscribed


_BY_TOPIC: dict[str, ModuleType | None] = {}  # topic -> its decoder: a dict lookup per message, not a match
_BY_TOPIC_MAX = 100_000  # topics remembered (one per device for most protocols); then it starts again


def decoder_for(topic: str) -> ModuleType | None:
    try:
        return _BY_TOPIC[topic]
    except KeyError:
        pass
    if len(topic) > MAX_TOPIC:  # no decoder's topic is this long; not remembered either
        return None
    found = next((d for d in DECODERS if d.matches(topic)), None)
    if len(_BY_TOPIC) >= _BY_TOPIC_MAX:
        _BY_TOPIC.clear()
    _BY_TOPIC[topic] = found
    return found


def decode(topic: str, payload: bytes, model_of: Callable[[str], str | None] | None = None,
           limits: Limits = DEFAULT_LIMITS, received_at: float | None = None, vendor=None) -> Message:
    """Decode one message with the decoder for its topic; anything wrong raises ``DecodeError``.

    In this order: the payload's size (``payload_too_large``), the topic (``bad_topic``), the
    decoder's own checks, then what every message must be (``check_message``: device id,
    readings, values and, with ``received_at``, the device's time within ``limits``' window:
    ``timestamp_out_of_range``). The gateway calls it as
    ``decode(raw.topic, raw.payload, model_of, limits=Limits.from_config(config.ingest), received_at=raw.received_at)``.
    """
    check_size(payload, limits.max_payload_bytes)
    decoder = decoder_for(topic)
    if decoder is None:
        raise DecodeError("bad_topic", f"no decoder for topic {topic[:200]!r}")
    try:
        message = decoder.decode(topic, payload, model_of, limits, received_at, vendor)
    except DecodeError:
        raise
    except Exception as error:  # a decoder's bug: this message is quarantined, the gateway goes on
        log.exception("decoder %s failed on a message on %r; quarantined as decoder_error", decoder.NAME, topic[:200])
        raise DecodeError("decoder_error", f"{decoder.NAME} failed: {type(error).__name__}: {error}") from None
    return check_message(message, limits, received_at)
