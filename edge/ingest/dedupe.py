"""LoRaWAN uplinks heard by several gateways: the same frame counted once.

A sensor's uplink can reach the gateway's broker more than once: several LoRaWAN gateways
hear it and a network server (or two) publishes an event for each, with other ``rxInfo``,
time and ``deduplicationId``. The frame itself is the same: same device, frame counter
(``fCnt``), fPort and bytes. The ChirpStack decoder gives that as the message's
``dedupe_key``; a key seen within ``window`` seconds is a duplicate: counted, acknowledged,
not evaluated again. The bytes are part of the key so that a device that rejoined (its
frame counter starts again at 0) is not taken for a duplicate of its old frames. Keys are
kept in arrival order and forgotten after ``window`` seconds or beyond ``max_keys``.
"""

from __future__ import annotations

__all__ = ["Duplicates"]


class Duplicates:
    def __init__(self, window: float = 600.0, max_keys: int = 100_000):
        self.window, self.max_keys = window, max_keys
        self._seen: dict[tuple, float] = {}  # key -> when first seen; insertion order = arrival order
        self.duplicates = 0

    def seen(self, key: tuple, now: float) -> bool:
        """True when ``key`` came within the window already (then it is counted as a duplicate)."""
        seen = self._seen
        first = seen.get(key)
        if first is not None and now - first <= self.window:
            self.duplicates += 1
            return True
        if first is not None:
            del seen[key]
        seen[key] = now
        if len(seen) > self.max_keys or next(iter(seen.values())) < now - self.window:
            self._forget(now)
        return False

    def _forget(self, now: float) -> None:
        seen, horizon = self._seen, now - self.window
        while seen:
            key, first = next(iter(seen.items()))
            if first >= horizon and len(seen) <= self.max_keys:
                return
            del seen[key]

    def __len__(self) -> int:
        return len(self._seen)
