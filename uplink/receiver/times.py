"""Times as the gateways write them (ISO 8601, ``Z`` or an offset; without one, UTC) in epoch seconds."""

from __future__ import annotations

import datetime as dt


def epoch(text) -> float | None:
    """``text`` in seconds since the epoch; None when it is not an ISO 8601 time."""
    if not isinstance(text, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    try:
        return moment.timestamp()
    except (OverflowError, OSError, ValueError):
        return None
