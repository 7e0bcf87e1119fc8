"""Periodic telemetry summaries: per device and interval, each metric's latest, min, max and count.

The central platform's status screen shows them. Every ``interval`` seconds of the
gateway's clock, the summary of each device heard from in the interval goes into the
outbox, after all order revisions in priority. Text metrics (a camera's label) keep their
latest value only.
"""

from __future__ import annotations

import datetime as dt


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class TelemetrySummaries:
    def __init__(self, interval: float):
        self.interval = interval
        self.current = None  # the interval number being collected
        self.devices: dict[str, dict[str, list]] = {}
        self.last_seen: dict[str, float] = {}

    def add(self, device: str, ts: float, values: dict[str, float | str], now: float) -> None:
        metrics = self.devices.get(device)
        if metrics is None:
            metrics = self.devices[device] = {}
        self.last_seen[device] = ts
        for name, value in values.items():
            entry = metrics.get(name)
            if entry is None:
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
                "last_seen": _iso(self.last_seen[device]),
                "metrics": {
                    name: ({"last": e[0], "count": e[3]} if isinstance(e[0], str) or isinstance(e[1], str)
                           else {"last": e[0], "min": e[1], "max": e[2], "count": e[3]})
                    for name, e in metrics.items()
                },
            }
            out.append((device, finished, body))
        self.devices = {}
        return out
