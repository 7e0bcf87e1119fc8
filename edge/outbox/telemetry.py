"""Periodic telemetry summaries: per device and interval, each metric's latest, min, max and count.

The central platform's status screen shows them. Every ``interval`` seconds of the
gateway's clock, the summary of each device heard from in the interval goes into the
outbox, after all order revisions in priority. Text metrics (a camera's label) keep their
latest value only.

Bounded whatever devices send: a device's summary holds at most ``max_metrics`` metrics
per interval (further names are counted in ``metrics_dropped``, not kept), and no device
time, however wrong, makes a summary fail (a time no calendar can show is written as
"invalid-time"; ingest refuses such times before they get here).
"""

from __future__ import annotations

import datetime as dt

MAX_METRICS = 64  # metrics per device and interval (a device kind has at most 8)


def _iso(ts: float) -> str:
    try:
        return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (ValueError, OverflowError, OSError, TypeError):
        return "invalid-time"


class TelemetrySummaries:
    def __init__(self, interval: float, max_metrics: int = MAX_METRICS):
        self.interval = interval
        self.max_metrics = max_metrics
        self.current = None  # the interval number being collected
        self.devices: dict[str, dict[str, list]] = {}
        self.last_seen: dict[str, float] = {}
        self.metrics_dropped = 0  # readings of metric names beyond max_metrics in a device's interval

    def add(self, device: str, ts: float, values: dict[str, float | str], now: float) -> None:
        metrics = self.devices.get(device)
        if metrics is None:
            metrics = self.devices[device] = {}
        self.last_seen[device] = ts
        for name, value in values.items():
            entry = metrics.get(name)
            if entry is None:
                if len(metrics) >= self.max_metrics:
                    self.metrics_dropped += 1
                    continue
                metrics[name] = [value, value, value, 1]
            elif isinstance(value, str) or isinstance(entry[1], str):
                entry[0] = value
                entry[3] += 1
            else:
                entry[0] = value
                if value < entry[1]:
                    entry[1] = value
                if value > entry[2]:
                    entry[2] = value
                entry[3] += 1

    def due(self, now: float) -> list[tuple[str, int, dict]]:
        """The finished interval's summaries, (device, interval number, body), once its end has passed."""
        number = int(now // self.interval)
        if self.current is None:
            self.current = number
            return []
        if number == self.current:
            return []
        finished, self.current = self.current, number
        start = finished * self.interval
        out = []
        for device, metrics in self.devices.items():
            body = {
                "device": device,
                "interval": finished,
                "start": _iso(start),
                "end": _iso(start + self.interval),
                "last_seen": _iso(self.last_seen.get(device, start)),
                "metrics": {
                    name: ({"last": e[0], "count": e[3]} if isinstance(e[0], str) or isinstance(e[1], str)
                           else {"last": e[0], "min": e[1], "max": e[2], "count": e[3]})
                    for name, e in metrics.items()
                },
            }
            out.append((device, finished, body))
        self.devices = {}
        return out
