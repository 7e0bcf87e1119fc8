"""How simulated devices speak: one module per protocol, as real devices and their servers do.

- ``json_mqtt``: the devices' own JSON telemetry on ``devices/<id>/telemetry``, with an
  online/offline status on ``devices/<id>/status``.
- ``lorawan``: ChirpStack-style uplink events on ``application/<app>/device/<devEUI>/event/up``
  carrying the model's binary frame (edge/ingest/codecs) in base64.
- ``frigate``: camera analytics events on ``frigate/events`` (new / update / end).
- ``modbus``: RS-485 sensors answering Modbus RTU on a serial line (a pseudo-terminal in tests).

Each MQTT protocol turns a device's report into ``Frame``s to publish, and tells what the
gateway will see once it has decoded them (the readings written to the replay file).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Frame:
    topic: str
    payload: bytes
    retain: bool = False


@dataclass
class Decoded:
    """What the gateway sees after decoding: one message of readings in device time."""

    device: str
    ts: float
    readings: dict[str, float | str]
