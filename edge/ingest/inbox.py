"""The bounded queue between the network (and the Modbus poller) and the engine.

Producers ``put`` one message at a time; the engine ``take``s a whole batch at once. A full
inbox makes ``put`` wait (the MQTT network thread then stops reading its socket, so the
broker holds the backlog, not this process's memory). It is a deque with two events rather
than ``queue.Queue``: appending and taking a batch cost no lock per message.
"""

from __future__ import annotations

import threading
import time
from collections import deque

__all__ = ["Full", "Inbox"]


class Full(Exception):
    """The inbox stayed full for the whole timeout of ``put``."""


class Inbox:
    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._items: deque = deque()
        self._arrived = threading.Event()  # set when something was put since the engine last looked
        self._space = threading.Event()  # set when there is room again
        self._space.set()
        self.high_water = 0  # most messages held at once
        self.waits = 0  # times a producer had to wait for room

    def __len__(self) -> int:
        return len(self._items)

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def put(self, item, timeout: float | None = None) -> None:
        """Append ``item``; waits while the inbox is full, up to ``timeout`` seconds (then raises ``Full``)."""
        items = self._items
        if len(items) >= self.maxsize:
            self.waits += 1
            deadline = None if timeout is None else time.monotonic() + timeout
            while len(items) >= self.maxsize:
                self._space.clear()
                if len(items) < self.maxsize:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise Full
                self._space.wait(remaining if remaining is None else min(remaining, 0.5))
        items.append(item)
        if len(items) > self.high_water:
            self.high_water = len(items)
        if not self._arrived.is_set():
            self._arrived.set()

    def take(self, limit: int, first_wait: float, batch_wait: float = 0.0, quiet: float = 0.001) -> list:
        """A batch of at most ``limit`` messages.

        Waits up to ``first_wait`` seconds for the first; then takes whatever has arrived, and
        keeps collecting, looking again every ``quiet`` seconds, while more keeps coming, until
        the batch is ``batch_wait`` seconds old. Under load the engine finds many messages
        waiting and takes them at once; at a trickle a message waits at most ``quiet``. Looking
        every ``quiet`` seconds (rather than being woken by each message) keeps the cost per
        message on the producers' side to an append.
        """
        items = self._items
        if not items:
            self._arrived.clear()
            if not items and not self._arrived.wait(first_wait):
                return []
        deadline = time.monotonic() + batch_wait
        batch: list = []
        pop = items.popleft
        while True:
            n = min(len(items), limit - len(batch))
            batch.extend([pop() for _ in range(n)])
            if n and not self._space.is_set():
                self._space.set()
            if len(batch) >= limit:
                return batch
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return batch
            time.sleep(min(quiet, remaining))
            if not items:
                return batch

    def drain(self) -> list:
        batch = [self._items.popleft() for _ in range(len(self._items))]
        self._space.set()
        return batch
