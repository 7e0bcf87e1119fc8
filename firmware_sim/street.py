"""A simulated street: every device of a registry, reporting on its schedule, with events injected.

An event is written ``KIND:DEVICE@START[+DURATION]``, times in seconds from the start of
the run: ``open_cover:MH-0003@5`` knocks cover MH-0003 open 5 s in and leaves it open;
``open_cover:MH-0003@5+20`` closes it again 20 s later; ``fill_bin:BIN-0002@8`` fills a
bin past 85 %. A device in alarm reports every ``alarm_interval`` seconds, as real ones do.
"""

from __future__ import annotations

import heapq
import logging
import random
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt

from edge.registry import Registry
from firmware_sim.devices import KINDS, SimDevice

log = logging.getLogger(__name__)

_EVENT = re.compile(r"^(?P<kind>[a-z_]+):(?P<device>[^@\s]+)@(?P<start>\d+(\.\d+)?)(\+(?P<duration>\d+(\.\d+)?))?$")


@dataclass(frozen=True)
class Event:
    kind: str
    device: str
    start: float
    duration: float | None = None

    @classmethod
    def parse(cls, text: str) -> "Event":
        match = _EVENT.match(text.strip())
        if match is None:
            raise ValueError(f"bad event {text!r}: write KIND:DEVICE@START[+DURATION], e.g. open_cover:MH-0003@5+20")
        duration = match.group("duration")
        return cls(match.group("kind"), match.group("device"), float(match.group("start")),
                   float(duration) if duration else None)


class Street:
    def __init__(self, registry_path: Path, events: list[Event], interval: float, alarm_interval: float, seed: int):
        registry = Registry.load(registry_path)
        self.rng = random.Random(seed)
        self.devices: dict[str, SimDevice] = {}
        for device in registry.devices:
            cls = KINDS.get(device.kind)
            if cls is not None:
                self.devices[device.id] = cls(device.id, device.kind, dict(device.params), random.Random(self.rng.random()))
        for event in events:
            device = self.devices.get(event.device)
            if device is None:
                raise ValueError(f"event {event.kind}: no simulated device {event.device!r} in {registry_path}")
            if event.kind not in getattr(device, "EVENTS", ()):
                raise ValueError(f"event {event.kind}: not possible on {device.kind} {device.id}; "
                                 f"possible: {', '.join(device.EVENTS)}")
        self.events = sorted(events, key=lambda e: e.start)
        self.interval = interval
        self.alarm_interval = alarm_interval
        self.published = 0
        self.in_flight: list[mqtt.MQTTMessageInfo] = []

    def run(self, client: mqtt.Client, seconds: float, stop: threading.Event) -> None:
        start = time.time()
        queue: list[tuple[float, int, str, str]] = []  # (due, order, what, device id / event index)
        for n, device_id in enumerate(self.devices):
            heapq.heappush(queue, (start + self.rng.uniform(0, self.interval), n, "report", device_id))
        order = len(self.devices)
        for i, event in enumerate(self.events):
            heapq.heappush(queue, (start + event.start, order, "start", str(i)))
            order += 1
            if event.duration is not None:
                heapq.heappush(queue, (start + event.start + event.duration, order, "end", str(i)))
                order += 1
        end = start + seconds
        while queue and not stop.is_set():
            due, _, what, key = heapq.heappop(queue)
            if due >= end:
                break
            delay = due - time.time()
            if delay > 0 and stop.wait(delay):
                break
            now = time.time()
            if what == "report":
                device = self.devices[key]
                self._publish(client, device, now)
                gap = self.alarm_interval if device.alarm else self.interval
                heapq.heappush(queue, (due + gap, order, "report", key))
            else:
                event = self.events[int(key)]
                device = self.devices[event.device]
                if what == "start":
                    device.apply(event.kind, now)
                else:
                    device.end(event.kind, now)
                log.info("event %s %s %s", event.kind, what, event.device)
                self._publish(client, device, now)  # a device reports at once on an alarm
                heapq.heappush(queue, (now + (self.alarm_interval if device.alarm else self.interval), order, "report", event.device))
            order += 1

    def _publish(self, client: mqtt.Client, device: SimDevice, now: float) -> None:
        payload = orjson.dumps({"device": device.id, "ts": round(now, 3), "readings": device.readings(now)})
        self.in_flight.append(client.publish(f"devices/{device.id}/telemetry", payload, qos=1))
        self.published += 1
        if len(self.in_flight) >= 1000:
            self.in_flight = [info for info in self.in_flight if not info.is_published()]

    def flush(self, timeout: float) -> int:
        """Wait for the broker to acknowledge every publish; returns how many are still unacknowledged."""
        deadline = time.monotonic() + timeout
        for info in self.in_flight:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                info.wait_for_publish(remaining)
            except (RuntimeError, ValueError):
                break
        self.in_flight = [info for info in self.in_flight if not info.is_published()]
        return len(self.in_flight)
