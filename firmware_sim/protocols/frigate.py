"""Camera analytics publishing Frigate-style events on ``frigate/events``.

Each detection is one event id with ``type`` ``new``, then ``update`` while it lasts, then
``end``; ``before`` is the previous state and ``after`` the current one::

    {"type": "update",
     "before": {...},
     "after": {"id": "1718000000.123456-cam-0001-1", "camera": "CAM-0001", "label": "car",
               "score": 0.81, "top_score": 0.84, "frame_time": 1718000030.1,
               "start_time": 1718000000.1, "end_time": null, "current_zones": ["no_parking"],
               "entered_zones": ["no_parking"], "stationary": true, "has_snapshot": true,
               "snapshot": {"frame_time": ..., "score": ...}, ...}}

``camera`` is the registry id. The gateway's readings for an event: ``label``, ``zone`` (the
first current zone), ``score``, ``active`` (0 on ``end``), ``duration_s``.
"""

from __future__ import annotations

import orjson

from firmware_sim.devices import Episode
from firmware_sim.protocols import Decoded, Frame

TOPIC = "frigate/events"


def _state(camera: str, episode: Episode, t: float, frame: dict, ended: bool) -> dict:
    return {
        "id": episode.id, "camera": camera, "frame_time": round(t, 6), "snapshot_time": round(t, 6),
        "label": episode.label, "sub_label": None, "top_score": round(episode.top_score, 3),
        "false_positive": False, "start_time": round(episode.start, 6),
        "end_time": round(t, 6) if ended else None, "score": frame["score"],
        "box": [420, 210, 640, 380], "area": 37400, "ratio": 1.29, "region": [320, 0, 960, 640],
        "stationary": episode.label in ("car", "garbage", "waterlogging"), "motionless_count": episode.updates,
        "position_changes": 1, "current_zones": [] if ended else [episode.zone],
        "entered_zones": [episode.zone], "has_clip": True, "has_snapshot": True,
        "snapshot": {"frame_time": round(t, 6), "score": frame["score"], "box": [420, 210, 640, 380]},
    }


def event(camera: str, episode: Episode, t: float, frame: dict, kind: str, before: dict | None) -> tuple[Frame, Decoded, dict]:
    after = _state(camera, episode, t, frame, ended=kind == "end")
    payload = orjson.dumps({"type": kind, "before": before or after, "after": after})
    return Frame(TOPIC, payload), Decoded(camera, round(t, 6), dict(frame)), after


MALFORMED = ("no_after", "truncated")


def malformed(camera: str, episode: Episode, t: float, frame: dict, variant: str) -> Frame:
    if variant == "no_after":
        return Frame(TOPIC, orjson.dumps({"type": "update", "before": None}))
    good = orjson.dumps({"type": "update", "after": _state(camera, episode, t, frame, False)})
    return Frame(TOPIC, good[: len(good) // 3])
