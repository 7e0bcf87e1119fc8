"""The devices' own JSON telemetry on ``devices/<id>/telemetry`` (see edge/ingest/decode.py)."""

from __future__ import annotations

from edge.ingest.decode import DEFAULT_LIMITS, Limits, Message, decode_telemetry

NAME = "own_json"
TOPIC_FILTER = "devices/+/telemetry"


def matches(topic: str) -> bool:
    parts = topic.split("/")
    return len(parts) == 3 and parts[0] == "devices" and parts[2] == "telemetry"


def decode(topic: str, payload: bytes, model_of=None, limits: Limits = DEFAULT_LIMITS,
           received_at: float | None = None, vendor=None) -> Message:
    return decode_telemetry(topic, payload, limits, received_at)
