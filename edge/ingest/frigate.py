"""Frigate-style camera events on ``frigate/events`` (``type`` new / update / end).

The camera (``after.camera``) is the registry id. Readings: ``label``, ``zone`` (first of
``current_zones``, or ""), ``score`` (``after.score``, else ``top_score``), ``active`` (1 for
new and update, 0 for end) and ``duration_s`` (from ``start_time`` to the frame's time, else
the end time, else the gateway's clock when the event arrived). The reading's time is
``after.frame_time``, else the end or start time. With the gateway's ``received_at``, the
reading's time and ``start_time`` must both be within ``Limits``' window.
"""

from __future__ import annotations

import math
import time

from edge.ingest.decode import (DEFAULT_LIMITS, MAX_TEXT, DecodeError, Limits, Message, check_device_id, check_size,
                               check_text, load_json)

NAME = "frigate"
TOPIC_FILTER = "frigate/events"
TYPES = {"new": 1.0, "update": 1.0, "end": 0.0}


def matches(topic: str) -> bool:
    return topic == TOPIC_FILTER


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _text(after: dict, key: str) -> str:
    value = after.get(key)
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise DecodeError("wrong_type", f"'after.{key}' must be text of at most {MAX_TEXT} characters, got {value!r:.80}")
    return value


def decode(topic: str, payload: bytes, model_of=None, limits: Limits = DEFAULT_LIMITS,
           received_at: float | None = None, vendor=None) -> Message:
    check_size(payload, limits.max_payload_bytes)
    if not matches(topic):
        raise DecodeError("bad_topic", f"topic {topic[:200]!r} is not {TOPIC_FILTER}")
    event = load_json(payload)
    if not isinstance(event, dict):
        raise DecodeError("wrong_type", "event is not a JSON object")
    kind = event.get("type")
    if not isinstance(kind, str) or kind not in TYPES:
        raise DecodeError("wrong_type", f"'type' must be one of {', '.join(TYPES)}, got {kind!r:.80}")
    after = event.get("after")
    if not isinstance(after, dict):
        raise DecodeError("wrong_type", "'after' must be an object")
    camera = _text(after, "camera")
    if not camera:
        raise DecodeError("wrong_type", "'after.camera' is empty")
    check_device_id(camera)
    label = check_text("label", _text(after, "label"))
    zones = after.get("current_zones")
    if zones is None:
        zones = []
    if not isinstance(zones, list):
        raise DecodeError("wrong_type", "'after.current_zones' must be a list")
    zone = ""
    if zones:
        if not isinstance(zones[0], str) or len(zones[0]) > MAX_TEXT:
            raise DecodeError("wrong_type", f"zone must be short text, got {zones[0]!r:.80}")
        zone = check_text("zone", zones[0])
    score = _number(after.get("score"))
    if score is None:
        score = _number(after.get("top_score"))
    if score is None:
        raise DecodeError("wrong_type", "'after.score' (or 'top_score') must be a number")
    start = _number(after.get("start_time"))
    frame = _number(after.get("frame_time"))
    end = _number(after.get("end_time")) if kind == "end" else None
    ts, what = frame, "after.frame_time"
    if ts is None:
        ts, what = end, "after.end_time"
    if ts is None:
        ts, what = start, "after.start_time"
    if ts is None or ts <= 0:
        raise DecodeError("bad_timestamp", "event has no frame_time, end_time or start_time in seconds")
    ts = limits.check_time(ts, received_at, what)
    values: dict[str, float | str] = {"label": label, "zone": zone, "score": score, "active": TYPES[kind]}
    if start is not None:
        limits.check_time(start, received_at, "after.start_time")
        until = frame if frame is not None else end if end is not None else (
            received_at if received_at is not None else time.time())
        duration = until - start
        if not math.isfinite(duration):
            raise DecodeError("bad_timestamp", f"start_time {start!r} gives no usable duration")
        values["duration_s"] = max(0.0, duration)
    return Message(camera, ts, values)
