"""Load on the central platform: 1,000 gateways over HTTP and MQTT, a storm, faults, and the ceiling.

The platform runs as it does in production, ``python -m uplink.receiver --db postgresql://...
--workers N --mqtt mqtt://...``, against a PostgreSQL cluster and a Mosquitto of this run's own
(the machine's servers are not touched: restarting the cluster must disturb nobody). For each
worker count (``--workers``, default 1 then 2), on a fresh database and a fresh broker:

1. **Steady load with a storm and two faults** (``--seconds``). Every gateway makes a few
   items every ``--interval`` seconds (jittered): order revisions shaped like the gateway's
   (edge/orders/book.py), telemetry summaries, and now and then a health summary. Gateways
   ``--mqtt-share`` of them publish each item QoS 1 to ``edge/<gw>/orders/<id>`` /
   ``edge/<gw>/telemetry/<device>`` through ``--mqtt-connections`` client connections (a
   separate process); the others POST batches to ``/api/v1/uplink`` like the gateway's sender
   (at most ``--batch-size`` items, one request at a time per gateway over a kept-alive
   connection, ``--timeout``, a failed or 503 answer retried after a random wait under a
   doubling limit). At a quarter of the run every gateway of ``--storm-zones`` zones gets
   ``--storm-revisions`` revisions at once; at half, one worker is killed with SIGKILL (the
   main process starts it again); at 70 %, PostgreSQL is restarted (``pg_ctl restart -m
   fast``). Then the generator stops making items and waits until everything it sent is
   acknowledged and in the database.
2. **Capacity**: every gateway gets ``--backlog`` items at once (a city's mobile network
   back after an outage) and sends them as fast as the platform takes them. Items stored per
   second = items / (last row's ``received_at`` - the moment they were queued).
3. **Check**: every item sent is in the database exactly once (``lost`` = acknowledged but
   absent; ``missing`` = sent but absent; ``extra`` = present but never sent), and what the
   faults cost (503s, errors and timeouts, each retried; resends dropped as duplicates).

Latency: HTTP, a request sent -> its 200 answer (p50/p99 of attempts that got one). MQTT: a
publish -> the platform's transaction that stored the item (the row's ``received_at``, taken
at the start of that transaction on the same clock; its commit adds a few ms). CPU: every
process's user+system time, sampled every 0.5 s from /proc, by part (generator, platform,
PostgreSQL, Mosquitto), so the figures say who used the machine's cores.

Then **the ceiling** (``ceiling()``): the same number of rows as the capacity phase over both,
into a fresh database of the platform's schema from this process, no HTTP, no validation: by a
bare ``COPY``, by ``executemany`` and by ``INSERT ... SELECT FROM unnest`` (500 rows per
transaction), through ``ReceiverStore.add`` (the platform's SQL, ``--batch-size`` per
transaction, as an HTTP request) and ``ReceiverStore.add_many`` of 500 one-message batches (as
the MQTT writer), and some of them again beside one CPU-bound thread (as a worker's HTTP threads
are); the platform's capacity is given as a share of each.

    .venv/bin/python bench/bench_platform.py [--gateways 1000] [--workers 1,2] [--seconds 40] [--backlog 60]

prints the figures and writes bench/results/platform.json (with the command, the machine and
the date). Needs PostgreSQL's server binaries (/usr/lib/postgresql/*/bin; Debian: apt-get install
postgresql) and Mosquitto; run as root, the cluster runs as the ``postgres`` user.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import heapq
import json
import math
import os
import platform as platform_module
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from bench.pg_cluster import PrivatePostgres, postgres_bin  # noqa: E402
from edge.broker import free_port, start_mosquitto, wait_for_port  # noqa: E402

ZONES = 10
DEVICES_PER_GATEWAY = 12
KINDS = (("MH", "manhole_cover", "cover_tilted", "manhole_cover_displaced", "tilt_deg"),
         ("WB", "waste_bin", "bin_full", "waste_bin_overflow", "fill_pct"),
         ("FL", "flood_sensor", "water_high", "street_flooding", "water_cm"),
         ("SL", "street_light", "lamp_out", "street_light_fault", "lamp_current_a"))
STREETS = ("Jiefang Rd", "Renmin Rd", "Zhongshan Rd", "Huaihai Rd", "Nanjing Rd", "Xinhua Rd", "Yan'an Rd")
# An order's revisions, in the order a real one goes through them.
LIFE = ("opened", "worsened", "accepted", "dispatched", "resolved", "verified")
STATE_AFTER = {"opened": "opened", "worsened": "opened", "accepted": "accepted", "dispatched": "dispatched",
               "resolved": "resolved", "verified": "resolved"}
SEVERITY = ("low", "medium", "high", "critical")


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# -- the simulated gateways' items (the same code for the HTTP and the MQTT side) -----------------


class Item:
    """One order revision ('r', order id, revision) or telemetry summary ('t', device, interval)."""

    __slots__ = ("kind", "k1", "k2", "body", "made", "sent", "acked", "phase")

    def __init__(self, kind: str, k1: str, k2: int, body: dict, made: float):
        self.kind, self.k1, self.k2, self.body, self.made = kind, k1, k2, body, made
        self.sent = 0.0  # first send (HTTP request / MQTT publish), time.time()
        self.acked = 0.0  # 200 answer listing it / PUBACK
        self.phase = ""


class GatewayData:
    """What one gateway has to say: its devices, its open orders, their next revisions."""

    def __init__(self, index: int, seed: int):
        self.index = index
        self.name = f"gw-{index:04d}"
        self.zone = f"Z{index % ZONES + 1:02d}"
        self.grid = f"G{index % 40 + 1:02d}"
        self.rng = random.Random(seed * 100_003 + index)
        self.devices = [(f"{KINDS[i % 4][0]}-{index:04d}-{i:02d}", KINDS[i % 4]) for i in range(DEVICES_PER_GATEWAY)]
        self.lat, self.lon = 31.2 + self.rng.random() * 0.1, 121.4 + self.rng.random() * 0.1
        self.open: list[dict] = []  # orders not yet verified: their state for the next revision
        self.intervals = {device: 5_000_000 + self.rng.randrange(1000) for device, _ in self.devices}
        self.ticks = 0
        self.started = time.time()

    def _new_order(self, now: float) -> dict:
        device, (prefix, kind, rule, category, metric) = self.rng.choice(self.devices)
        number = self.rng.randrange(1, 400)
        return {"order_id": f"{self.name}-{self.rng.getrandbits(64):016x}", "revision": 0, "step": 0,
                "device": device, "kind": kind, "rule": rule, "category": category, "metric": metric,
                "severity": self.rng.randrange(4), "opened_at": now - self.rng.random() * 30,
                "address": f"{number} {self.rng.choice(STREETS)}", "evidence": [],
                "lat": self.lat + self.rng.random() * 0.01, "lon": self.lon + self.rng.random() * 0.01}

    def revision(self, now: float, new: bool | None = None) -> Item:
        """The next revision of an open order, or a new order's first."""
        if new or not self.open or (new is None and self.rng.random() < 0.35):
            order = self._new_order(now)
            self.open.append(order)
        else:
            order = self.open[self.rng.randrange(len(self.open))]
        change = LIFE[min(order["step"], len(LIFE) - 1)]
        order["step"] += 1
        order["revision"] += 1
        if change in ("opened", "worsened", "verified"):
            value = round(15 + self.rng.random() * 30, 2)
            order["evidence"].append({"metric": order["metric"], "value": value, "at": iso(now - self.rng.random() * 5),
                                      "condition": f"{order['metric']} > 15"})
        if change == "worsened":
            order["severity"] = min(order["severity"] + 1, 3)
        if change == "verified":
            self.open.remove(order)
        kind = order["kind"]
        body = {
            "order_id": order["order_id"], "revision": order["revision"], "change": change, "gateway": self.name,
            "device": order["device"], "device_kind": kind, "rule": order["rule"], "category": order["category"],
            "severity": SEVERITY[order["severity"]],
            "title": f"{kind.replace('_', ' ').capitalize()} {order['device']}: {order['rule'].replace('_', ' ')} "
                     f"at {order['address']}",
            "grid": self.grid, "zone": self.zone, "team": f"team-{self.grid.lower()}", "address": order["address"],
            "location": {"lat": round(order["lat"], 6), "lon": round(order["lon"], 6)},
            "opened_at": iso(order["opened_at"]), "updated_at": iso(now), "state": STATE_AFTER[change],
            "verification": "verified" if change == "verified" else ("pending" if change == "resolved" else None),
            "repeat_of": None, "verified_at": iso(now) if change == "verified" else None,
            "evidence": list(order["evidence"][-5:]),
        }
        return Item("r", order["order_id"], order["revision"], body, now)

    def summary(self, now: float) -> Item:
        device, (prefix, kind, rule, category, metric) = self.rng.choice(self.devices)
        self.intervals[device] += 1
        low = round(self.rng.random() * 10, 2)
        metrics = {metric: {"last": round(low + self.rng.random() * 5, 2), "min": low,
                            "max": round(low + 5 + self.rng.random(), 2), "count": 60},
                   "battery_v": {"last": 3.61, "min": 3.6, "max": 3.62, "count": 60},
                   "rssi_dbm": {"last": -81, "min": -90, "max": -75, "count": 60},
                   "temp_c": {"last": 12.5, "min": 11.0, "max": 13.25, "count": 60}}
        body = {"device": device, "interval": self.intervals[device], "gateway": self.name, "metrics": metrics}
        return Item("t", device, self.intervals[device], body, now)

    def tick(self, now: float) -> list[Item]:
        """One pacing step: a revision (sometimes two) and three telemetry summaries."""
        self.ticks += 1
        items = [self.revision(now)]
        if self.rng.random() < 0.5:
            items.append(self.revision(now))
        items += [self.summary(now) for _ in range(3)]
        return items

    def storm(self, now: float, count: int) -> list[Item]:
        """A storm over the gateway's zone: a fifth of them new orders, the rest their further revisions."""
        return [self.revision(now, new=(i % 5 == 0)) for i in range(count)]

    def backlog(self, now: float, count: int) -> list[Item]:
        """What piled up during an outage: two revisions for every three summaries."""
        return [self.revision(now) if i % 5 < 2 else self.summary(now) for i in range(count)]

    def health(self, now: float, backlog: int) -> dict:
        return {"version": 1, "at": iso(now), "started_at": iso(self.started),
                "backlog": {"revisions": backlog, "telemetry": 0, "reports": 0},
                "rules": {"version": "8edba121687c", "files": ["bins.yaml", "manhole_covers.yaml"], "refused": []},
                "parts": {"checkpoint": "ok", "disk": "ok", "downlink": "ok", "engine": "ok", "uplink": "ok"},
                "software": "0.1.0"}


def interval_of(rng: random.Random, mean: float) -> float:
    return mean * (0.5 + rng.random())


# -- the private PostgreSQL cluster ----------------------------------------------------------------


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


# -- the platform ----------------------------------------------------------------------------------


class Platform:
    """``python -m uplink.receiver --workers N`` against the private cluster and broker.

    With ``--workers 1`` the platform serves in its main process, which nothing supervises: a
    kill -9 is then followed by a start of the same command a second later, as systemd's
    ``Restart=always`` with ``RestartSec=1`` would do.
    """

    def __init__(self, workdir: Path, db_url: str, workers: int, broker_url: str):
        self.port = free_port()
        self.workers = workers
        self.log_path = workdir / f"platform-w{workers}.log"
        self.log_file = self.log_path.open("ab")
        self.command = [sys.executable, "-m", "uplink.receiver", "--port", str(self.port), "--db", db_url,
                        "--workers", str(workers), "--mqtt", broker_url, "--mqtt-client-id", f"bench-platform-w{workers}"]
        self._start()
        self.url = f"http://127.0.0.1:{self.port}"

    def _start(self) -> None:
        connected = self.log_path.read_text().count("MQTT: connected")
        self.process = subprocess.Popen(self.command, cwd=ROOT, stdout=self.log_file, stderr=subprocess.STDOUT)
        if not wait_for_port("127.0.0.1", self.port, 60, self.process):
            raise RuntimeError(f"the platform did not start; see {self.log_path}:\n{self.log_path.read_text()[-3000:]}")
        deadline = time.monotonic() + 30
        while self.log_path.read_text().count("MQTT: connected") < connected + self.workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the platform's MQTT listeners did not subscribe; see {self.log_path}")
            time.sleep(0.05)

    def pids(self) -> list[int]:
        return [self.process.pid, *children(self.process.pid)] if self.process.poll() is None else []

    def workers_now(self) -> list[int]:
        return children(self.process.pid)

    def kill_worker(self, connections: dict[str, int]) -> dict:
        """SIGKILL the worker holding the most HTTP connections (with one worker: the platform's process),
        and wait until it serves again."""
        began = time.monotonic()
        if self.workers == 1:
            victim = self.process.pid
            os.kill(victim, signal.SIGKILL)
            self.process.wait()
            time.sleep(1.0)
            self._start()
            return {"killed_pid": victim, "new_pid": self.process.pid, "how": "the whole platform (one worker), "
                    "started again by the bench after 1 s", "serving_again_after_s": round(time.monotonic() - began, 2)}
        before = self.workers_now()
        victim = max(before, key=lambda pid: connections.get(str(pid), 0))
        os.kill(victim, signal.SIGKILL)
        while True:
            now = self.workers_now()
            if victim not in now and len(now) == self.workers:
                return {"killed_pid": victim, "new_pid": sorted(set(now) - set(before))[0],
                        "how": "one worker, started again by the platform's main process",
                        "restarted_after_s": round(time.monotonic() - began, 2)}
            if time.monotonic() - began > 30:
                return {"killed_pid": victim, "new_pid": None, "restarted_after_s": None}
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log_file.close()

    def log_summary(self) -> dict:
        """Warnings and errors of the platform's log, counted by kind (numbers blanked)."""
        kinds: Counter[str] = Counter()
        for line in self.log_path.read_text(errors="replace").splitlines():
            match = re.search(r" receiver (WARNING|ERROR|CRITICAL) (.*)", line)
            if match:
                text = re.sub(r"\d+", "N", re.sub(r"0x[0-9a-f]+", "0x...", match.group(2)))[:110]
                kinds[f"{match.group(1)} {text}"] += 1
        return dict(kinds.most_common(15))


# -- CPU by part -----------------------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def all_processes() -> dict[int, tuple[str, int]]:
    """Every process of the machine: pid -> (name, CPU ticks used)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            name = text[text.index("(") + 1:text.rindex(")")]
            fields = text.rsplit(")", 1)[1].split()
            found[int(entry.name)] = (name, int(fields[11]) + int(fields[12]))
    return found


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine have used since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / TICK


class CpuMeter(threading.Thread):
    """Every 0.5 s, each part's processes' CPU time; ``mark(name)`` notes the totals at a moment."""

    def __init__(self, parts: dict):
        super().__init__(name="cpu-meter", daemon=True)
        self.parts = parts  # name -> callable giving the part's pids now
        self.last: dict[str, dict[int, int]] = {name: {} for name in parts}
        self.marks: dict[str, tuple[float, dict[str, float]]] = {}
        self.processes: dict[str, dict[int, tuple[str, int]]] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()

    def _sample(self) -> None:
        for name, pids in self.parts.items():
            for pid in pids():
                ticks = cpu_ticks(pid)
                if ticks is not None:
                    with self.lock:
                        self.last[name][pid] = ticks

    def totals(self) -> dict[str, float]:
        with self.lock:
            return {name: sum(seen.values()) / TICK for name, seen in self.last.items()}

    def mark(self, label: str) -> None:
        self._sample()
        self.marks[label] = (time.monotonic(), {**self.totals(), "machine": machine_busy_seconds()})
        self.processes[label] = all_processes()

    def between(self, start: str, end: str) -> dict:
        """Cores used on average by each part, by all of them, and by the whole machine (other users included)."""
        (t0, a), (t1, b) = self.marks[start], self.marks[end]
        wall = t1 - t0
        cores = {name: round((b[name] - a[name]) / wall, 2) for name in a if name != "machine"}
        ours = {pid for seen in self.last.values() for pid in seen}
        before, after = self.processes[start], self.processes[end]
        others: Counter[str] = Counter()
        for pid, (name, ticks) in after.items():
            if pid not in ours:
                others[name] += ticks - before.get(pid, (name, 0))[1]
        return {"wall_s": round(wall, 1), "cores": cores, "total_cores": round(sum(cores.values()), 2),
                "machine_busy_cores": round((b["machine"] - a["machine"]) / wall, 2),
                "other_processes_cores": {name: round(t / TICK / wall, 2) for name, t in others.most_common(4)
                                          if t / TICK / wall >= 0.01}}

    def run(self) -> None:
        while not self.done.wait(0.5):
            self._sample()


# -- the HTTP gateways (this process, asyncio) -----------------------------------------------------


@dataclass
class HttpRecord:
    latencies: list = field(default_factory=list)  # (sent, seconds, phase)
    failures: Counter = field(default_factory=Counter)  # (phase, what) -> count
    requests: int = 0
    retried_batches: int = 0
    items: list = field(default_factory=list)
    unlisted: int = 0  # items of a 200 answer that did not list them (sent again)


class HttpGateway:
    def __init__(self, data: GatewayData):
        self.data = data
        self.outbox: list[Item] = []
        self.wake = asyncio.Event()
        self.health: dict | None = None
        self.busy = False

    def put(self, items: list[Item], record: HttpRecord, phase: str) -> None:
        for item in items:
            item.phase = phase
        self.outbox.extend(items)
        record.items.extend(items)
        self.wake.set()


class HttpSide:
    def __init__(self, gateways: list[GatewayData], url: str, batch_size: int, timeout: float, retry_max: float):
        self.gateways = [HttpGateway(g) for g in gateways]
        self.url = url + "/api/v1/uplink"
        self.batch_size, self.timeout, self.retry_max = batch_size, timeout, retry_max
        self.record = HttpRecord()
        self.phase = "steady"
        self.stopping = False
        self.rng = random.Random(7)

    def idle(self) -> bool:
        return all(not g.outbox and not g.busy for g in self.gateways)

    async def sender(self, gw: HttpGateway, session) -> None:
        import aiohttp

        record = self.record
        while True:
            while not gw.outbox and gw.health is None:
                if self.stopping:
                    return
                gw.wake.clear()
                await gw.wake.wait()
            gw.busy = True
            batch = gw.outbox[:self.batch_size]
            health, gw.health = gw.health, None
            payload = {"gateway": gw.data.name, "revisions": [i.body for i in batch if i.kind == "r"],
                       "telemetry": [i.body for i in batch if i.kind == "t"]}
            if health is not None:
                payload["health"] = health
            data = orjson.dumps(payload)
            limit, tries = 0.5, 0
            while True:
                tries += 1
                sent = time.time()
                for item in batch:
                    item.sent = item.sent or sent
                phase = self.phase
                record.requests += 1
                try:
                    async with session.post(self.url, data=data, headers={"Content-Type": "application/json"}) as answer:
                        text = await answer.read()
                        status = answer.status
                    what = f"http_{status}"
                except asyncio.TimeoutError:
                    status, what = 0, "timeout"
                except aiohttp.ClientError as error:
                    status, what = 0, type(error).__name__
                took = time.time() - sent
                if status == 200:
                    try:
                        answer_json = orjson.loads(text)
                        acked = {("r", o, r) for o, r in answer_json["acknowledged"]}
                        acked |= {("t", d, n) for d, n in answer_json["telemetry_acknowledged"]}
                        break
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                        what = "bad_answer"
                record.failures[(phase, what)] += 1
                await asyncio.sleep(self.rng.uniform(0, limit))
                limit = min(limit * 2, self.retry_max)
            record.latencies.append((sent, took, phase))
            if tries > 1:
                record.retried_batches += 1
            now = time.time()
            done_ids = set()
            for item in batch:
                if (item.kind, item.k1, item.k2) in acked:
                    item.acked = now
                    item.body = None
                    done_ids.add(id(item))
                else:
                    record.unlisted += 1
            gw.outbox = [i for i in gw.outbox if id(i) not in done_ids]
            gw.busy = False

    async def pace(self, gw: HttpGateway, t_end: float) -> None:
        """The gateway's own items every few seconds until t_end, with a health summary every sixth time."""
        rng = random.Random(gw.data.index)
        await asyncio.sleep(rng.random() * 5.0)
        while time.time() < t_end:
            now = time.time()
            gw.put(gw.data.tick(now), self.record, self.phase)
            if gw.data.ticks % 6 == 1:
                gw.health = gw.data.health(now, len(gw.outbox))
                gw.wake.set()
            await asyncio.sleep(min(interval_of(rng, self.interval), max(0.0, t_end - time.time())))

    def storm(self, zones: set[str], count: int) -> int:
        now = time.time()
        n = 0
        for gw in self.gateways:
            if gw.data.zone in zones:
                items = gw.data.storm(now, count)
                gw.put(items, self.record, self.phase)
                n += len(items)
        return n

    def backlog(self, count: int) -> int:
        now = time.time()
        for gw in self.gateways:
            gw.put(gw.data.backlog(now, count), self.record, self.phase)
        return count * len(self.gateways)


# -- the MQTT gateways (a process of their own) ----------------------------------------------------


def publisher(spec_path: str) -> None:
    """``--publisher SPEC``: the MQTT gateways. Commands on stdin, one JSON line each; answers on stdout."""
    import paho.mqtt.client as mqtt

    spec = json.loads(Path(spec_path).read_text())
    gateways = [GatewayData(i, spec["seed"]) for i in spec["gateways"]]
    clients = []
    for n in range(spec["connections"]):
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-gateways-{n}",
                             protocol=mqtt.MQTTv311, clean_session=False)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.connect(spec["host"], spec["port"], 60)
        client.loop_start()
        clients.append(client)
    client_of = {g.name: clients[k % len(clients)] for k, g in enumerate(gateways)}
    records: list[tuple] = []  # (kind, k1, k2, sent, info, phase)
    health_sent = 0

    def publish(gw: GatewayData, items: list[Item], phase: str) -> None:
        client = client_of[gw.name]
        for item in items:
            topic = (f"edge/{gw.name}/orders/{item.k1}" if item.kind == "r" else f"edge/{gw.name}/telemetry/{item.k1}")
            payload = orjson.dumps(item.body)
            sent = time.time()
            records.append((item.kind, item.k1, item.k2, sent, client.publish(topic, payload, qos=1), phase))

    def say(**event) -> None:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    def wait_acked(timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(r[4].is_published() for r in records):
                break
            time.sleep(0.05)
        acked = sum(1 for r in records if r[4].is_published())
        return {"published": len(records), "acked": acked}

    say(event="ready")
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "steady":
            t0, t_end = command["t0"], command["t0"] + command["seconds"]
            rng = random.Random(spec["seed"])
            queue = [(t0 + rng.random() * 5.0, g.index, g) for g in gateways]
            heapq.heapify(queue)
            storm_at, stormed = t0 + command["storm_after"], False
            while queue:
                at, index, gw = queue[0]
                if not stormed and storm_at <= at:
                    time.sleep(max(0.0, storm_at - time.time()))
                    now = time.time()
                    for g in gateways:
                        if g.zone in command["storm_zones"]:
                            publish(g, g.storm(now, command["storm_revisions"]), "storm")
                    stormed = True
                    continue
                heapq.heappop(queue)
                time.sleep(max(0.0, at - time.time()))
                now = time.time()
                publish(gw, gw.tick(now), "steady")
                if gw.ticks % 6 == 1:
                    client_of[gw.name].publish(f"edge/{gw.name}/health", orjson.dumps(gw.health(now, 0)), qos=1)
                    health_sent += 1
                following = at + interval_of(gw.rng, command["interval"])
                if following < t_end:
                    heapq.heappush(queue, (following, index, gw))
            say(event="steady_done", **wait_acked(300))
        elif command["cmd"] == "backlog":
            now = time.time()
            before = len(records)
            for gw in gateways:
                publish(gw, gw.backlog(now, command["count"]), command["phase"])
            say(event="backlog_done", published_now=len(records) - before, **wait_acked(900))
        elif command["cmd"] == "finish":
            rows = [(kind, k1, k2, sent, info.is_published(), phase) for kind, k1, k2, sent, info, phase in records]
            Path(command["out"]).write_bytes(orjson.dumps({"items": rows, "health_sent": health_sent,
                                                           "connections": len(clients)}))
            for client in clients:
                client.disconnect()
                client.loop_stop()
            say(event="finished")
            return


class MqttSide:
    def __init__(self, workdir: Path, gateways: list[int], seed: int, connections: int, broker):
        self.spec = workdir / "publisher.json"
        self.spec.write_text(json.dumps({"gateways": gateways, "seed": seed, "connections": connections,
                                         "host": broker.host, "port": broker.port}))
        self.out = workdir / "published.json"
        self.process = subprocess.Popen([sys.executable, __file__, "--publisher", str(self.spec)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.expect("ready")

    def send(self, **command) -> None:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def expect(self, event: str) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the MQTT publisher stopped (exit {self.process.wait()}) before '{event}'")
        answer = json.loads(line)
        if answer.get("event") != event:
            raise RuntimeError(f"the MQTT publisher said {answer}, expected '{event}'")
        return answer

    def finish(self) -> dict:
        self.send(cmd="finish", out=str(self.out))
        self.expect("finished")
        self.process.wait(30)
        return orjson.loads(self.out.read_bytes())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


# -- figures ---------------------------------------------------------------------------------------


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    values = sorted(values)

    def at(p: float) -> float:
        return values[min(len(values) - 1, int(p * len(values)))]

    return {"n": len(values), "p50_ms": round(at(0.50) * 1000, 1), "p99_ms": round(at(0.99) * 1000, 1),
            "max_ms": round(values[-1] * 1000, 1)}


def stored_rows(url: str) -> dict[tuple, float]:
    """Every revision and summary in the platform's database: key -> received_at."""
    import psycopg

    with psycopg.connect(url) as conn:
        rows = {("r", o, r): at for o, r, at in conn.execute("SELECT order_id, revision, received_at FROM revisions")}
        rows.update({("t", d, i): at for d, i, at in conn.execute("SELECT device, interval, received_at FROM telemetry")})
    return rows


class RowCounter:
    """Revisions + summaries in the platform's database, over one connection kept open (made again after a restart)."""

    def __init__(self, url: str):
        self.url = url
        self.conn = None

    def __call__(self) -> int | None:
        import psycopg

        try:
            if self.conn is None or self.conn.closed:
                self.conn = psycopg.connect(self.url, connect_timeout=3, autocommit=True)
            return self.conn.execute(
                "SELECT (SELECT count(*) FROM revisions) + (SELECT count(*) FROM telemetry)").fetchone()[0]
        except psycopg.Error:
            self.close()
            return None

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None


def check_database(url: str) -> dict:
    """Keys present more than once (the primary keys forbid it: this checks they are there), gateways' rows."""
    import psycopg

    with psycopg.connect(url) as conn:
        one = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
        return {
            "revision_keys_twice": one("SELECT count(*) FROM (SELECT 1 FROM revisions GROUP BY order_id, revision "
                                       "HAVING count(*) > 1) x"),
            "telemetry_keys_twice": one("SELECT count(*) FROM (SELECT 1 FROM telemetry GROUP BY device, interval "
                                        "HAVING count(*) > 1) x"),
            "revisions_of_another_gateway": one("SELECT count(*) FROM revisions WHERE order_id NOT LIKE gateway || '-%'"),
            "orders": one("SELECT count(*) FROM orders"),
            "orders_not_at_latest_revision": one(
                "SELECT count(*) FROM orders o WHERE revision <> (SELECT max(revision) FROM revisions r "
                "WHERE r.order_id = o.order_id)"),
            "gateways": one("SELECT count(*) FROM gateways"),
            "gateways_with_health": one("SELECT count(*) FROM gateways WHERE health IS NOT NULL"),
            "duplicates_counter": (conn.execute("SELECT value FROM counters WHERE name = 'duplicates'").fetchone()
                                   or [0])[0],
        }


async def wait_until(predicate, timeout: float, step: float = 0.2) -> float | None:
    """Seconds until predicate() held, or None after timeout."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if predicate():
            return time.monotonic() - began
        await asyncio.sleep(step)
    return None


# -- one worker count ------------------------------------------------------------------------------


CAPACITY_PHASES = (("capacity_http", True, False), ("capacity_mqtt", False, True), ("capacity_both", True, True))


async def run_workers(args, workers: int, pg: PrivatePostgres, workdir: Path) -> dict:
    import aiohttp

    run_dir = workdir / f"w{workers}"
    run_dir.mkdir()
    db_url = pg.create_database(f"platform_w{workers}")
    pg_log_from = pg.log.stat().st_size
    broker = start_mosquitto(run_dir / "broker")
    indices = list(range(args.gateways))
    mqtt_count = round(args.gateways * args.mqtt_share)
    mqtt_gateways = indices[::2][:mqtt_count] if mqtt_count <= len(indices[::2]) else indices[:mqtt_count]
    mqtt_set = set(mqtt_gateways)
    http_gateways = [GatewayData(i, args.seed) for i in indices if i not in mqtt_set]
    storm_zones = {f"Z{z + 1:02d}" for z in range(args.storm_zones)}
    platform = mqtt = meter = session = None
    count_rows = RowCounter(db_url)
    senders: list = []
    phase_start: dict[str, float] = {}
    faults: dict = {}
    try:
        platform = Platform(run_dir, db_url, workers, broker.url)
        mqtt = MqttSide(run_dir, mqtt_gateways, args.seed, args.mqtt_connections, broker) if mqtt_gateways else None
        http = HttpSide(http_gateways, platform.url, args.batch_size, args.timeout, args.retry_max)
        http.interval = args.interval
        me = os.getpid()
        meter = CpuMeter({"generator_http": lambda: [me],
                          "generator_mqtt": lambda: [mqtt.process.pid] if mqtt else [],
                          "platform": platform.pids, "postgresql": pg.pids,
                          "mosquitto": lambda: [broker.process.pid]})
        meter.start()
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0)
        session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=args.timeout))
        senders = [asyncio.create_task(http.sender(gw, session)) for gw in http.gateways]
        print(f"\n--workers {workers}: {len(http_gateways)} gateways over HTTP, {len(mqtt_gateways)} over MQTT "
              f"({args.mqtt_connections} connections), {args.seconds:.0f} s of load", flush=True)

        async def all_stored(expected: int, timeout: float) -> float | None:
            return await wait_until(lambda: (count_rows() or 0) >= expected, timeout, 0.1)

        # 1. steady load, a storm, a worker killed, PostgreSQL restarted
        t0 = time.time() + 1.0
        phase_start["steady"] = t0
        if mqtt:
            mqtt.send(cmd="steady", t0=t0, seconds=args.seconds, interval=args.interval,
                      storm_after=args.seconds * 0.25, storm_zones=sorted(storm_zones),
                      storm_revisions=args.storm_revisions)
        await asyncio.sleep(t0 - time.time())
        meter.mark("steady_start")
        pacers = [asyncio.create_task(http.pace(gw, t0 + args.seconds)) for gw in http.gateways]
        storm_items: list[Item] = []

        async def storm() -> None:
            await asyncio.sleep(t0 + args.seconds * 0.25 - time.time())
            before = len(http.record.items)
            faults["storm_at"] = time.time()
            http.storm(storm_zones, args.storm_revisions)
            storm_items.extend(http.record.items[before:])

        async def kill() -> None:
            await asyncio.sleep(t0 + args.seconds * 0.5 - time.time())
            faults["worker_killed_at_s"] = round(time.time() - t0, 1)
            connections = faults["http_connections_by_process_before_kill"] = connections_by_pid(platform.port)
            faults["worker_kill"] = await asyncio.to_thread(platform.kill_worker, connections)

        async def restart_postgres() -> None:
            await asyncio.sleep(t0 + args.seconds * 0.7 - time.time())
            faults["postgres_restarted_at_s"] = round(time.time() - t0, 1)
            faults["postgres_restart_s"] = round(await asyncio.to_thread(pg.restart), 2)

        tasks = [asyncio.create_task(storm())]
        if not args.no_faults:
            tasks += [asyncio.create_task(kill()), asyncio.create_task(restart_postgres())]
        await asyncio.gather(*pacers, *tasks)
        await wait_until(http.idle, 300)
        t_http_drained = time.time()
        mqtt_done = await asyncio.to_thread(mqtt.expect, "steady_done") if mqtt else {"published": 0}
        expected = len(http.record.items) + mqtt_done["published"]
        steady_total = expected
        await all_stored(expected, 300)
        meter.mark("steady_end")
        drained = {"http_acknowledged_s": round(t_http_drained - t0 - args.seconds, 1),
                   "all_stored_s": round(time.time() - t0 - args.seconds, 1)}
        print(f"  steady: {steady_total:,} items sent; after the load ended, HTTP all acknowledged in "
              f"{drained['http_acknowledged_s']} s, all stored in {drained['all_stored_s']} s", flush=True)

        # 2. capacity: every gateway (over HTTP, over MQTT, then both) with a backlog at once
        for phase, over_http, over_mqtt in CAPACITY_PHASES:
            if (over_http and not http.gateways) or (over_mqtt and not mqtt):
                continue
            http.phase = phase
            await asyncio.sleep(1.0)
            meter.mark(f"{phase}_start")
            phase_start[phase] = time.time()
            if over_mqtt:
                mqtt.send(cmd="backlog", count=args.backlog, phase=phase)
            count = args.http_backlog if phase == "capacity_http" else args.backlog
            if over_http:
                http.backlog(count)
            await wait_until(http.idle, 900, 0.05)
            faults[f"{phase}_http_acknowledged_s"] = round(time.time() - phase_start[phase], 2)
            if over_mqtt:
                expected += (await asyncio.to_thread(mqtt.expect, "backlog_done"))["published_now"]
            if over_http:
                expected += count * len(http.gateways)
            await all_stored(expected, 900)
            meter.mark(f"{phase}_end")
        http.stopping = True
        for gw in http.gateways:
            gw.wake.set()
        await asyncio.gather(*senders)
        meter.done.set()

        # 3. what reached the database
        with contextlib.suppress(Exception):
            async with aiohttp.ClientSession() as s, s.get(platform.url + "/api/v1/stats") as answer:
                faults["stats"] = await answer.json()
        published = mqtt.finish() if mqtt else {"items": [], "health_sent": 0, "connections": 0}
        rows = stored_rows(db_url)
        checks = check_database(db_url)
        log = platform.log_summary()
    finally:
        count_rows.close()
        for task in senders:
            task.cancel()
        if session is not None:
            await session.close()
        if meter is not None:
            meter.done.set()
        if mqtt is not None:
            mqtt.stop()
        if platform is not None:
            platform.stop()
        broker.stop()

    sent: dict[tuple, tuple] = {}  # key -> (channel, phase, sent, acked)
    storm_mqtt: list[tuple] = []
    for item in http.record.items:
        sent[(item.kind, item.k1, item.k2)] = ("http", item.phase, item.sent, item.acked > 0)
    for kind, k1, k2, at, acked, phase in published["items"]:
        if phase == "storm":
            storm_mqtt.append(((kind, k1, k2), at))
            phase = "steady"
        sent[(kind, k1, k2)] = ("mqtt", phase, at, acked)
    lost = sum(1 for key, (_, _, _, acked) in sent.items() if acked and key not in rows)
    missing = sum(1 for key in sent if key not in rows)
    extra = sum(1 for key in rows if key not in sent)
    never_acked = sum(1 for _, _, _, acked in sent.values() if not acked)

    def stored_rate(phase: str, channel: str | None = None) -> dict:
        times = [rows[k] for k, v in sent.items() if v[1] == phase and (channel is None or v[0] == channel)
                 and k in rows]
        if not times:
            return {}
        span = max(times) - phase_start[phase]
        return {"items": len(times), "seconds": round(span, 2), "items_per_s": round(len(times) / span)}

    storm_at = faults.get("storm_at", t0)

    def mqtt_e2e(phase: str, before: float = math.inf) -> dict:
        return percentiles([rows[k] - v[2] for k, v in sent.items()
                            if v[0] == "mqtt" and v[1] == phase and v[2] < before and k in rows])

    def http_latency(phase: str, before: float = math.inf) -> dict:
        return percentiles([took for at, took, p in http.record.latencies if p == phase and at < before])

    def per_second(channel: str) -> list[int]:
        counts = Counter(int(rows[k] - t0) for k, v in sent.items() if v[0] == channel and v[1] == "steady" and k in rows)
        return [counts.get(s, 0) for s in range(max(counts, default=-1) + 1)]

    storm_http_done = max((i.acked for i in storm_items), default=storm_at) - storm_at
    storm_mqtt_stored = [rows[k] for k, _ in storm_mqtt if k in rows]
    storm_mqtt_from = min((at for _, at in storm_mqtt), default=storm_at)
    failures: dict[str, dict[str, int]] = {}
    for (phase, what), n in http.record.failures.items():
        failures.setdefault(phase, {})[what] = n
    capacity = {phase: stored_rate(phase) for phase, _, _ in CAPACITY_PHASES if phase in phase_start}
    headline = capacity.get("capacity_both", {}).get("items_per_s")
    postgres_log = pg.log.read_bytes()[pg_log_from:].decode(errors="replace")
    result = {
        "workers": workers,
        "gateways": {"http": len(http_gateways), "mqtt": len(mqtt_gateways), "mqtt_connections": published["connections"]},
        "sent": {"steady": steady_total, "storm_revisions": len(storm_items) + len(storm_mqtt),
                 **{phase: capacity[phase].get("items") for phase in capacity},
                 "health_summaries_mqtt": published["health_sent"], "http_requests": http.record.requests},
        "capacity_items_per_s": headline,
        "capacity": {**capacity, "capacity_both_http": stored_rate("capacity_both", "http"),
                     "capacity_both_mqtt": stored_rate("capacity_both", "mqtt"),
                     **{k: v for k, v in faults.items() if k.endswith("_http_acknowledged_s")}},
        "steady": {"items_per_s_offered": round(steady_total / args.seconds), "drain_after_load": drained,
                   "stored_per_s": {"http": per_second("http"), "mqtt": per_second("mqtt")}},
        "latency": {
            "http_request_quiet": http_latency("steady", storm_at),
            "http_request_steady": http_latency("steady"),
            **{f"http_request_{phase}": http_latency(phase) for phase in capacity if phase != "capacity_mqtt"},
            "mqtt_publish_to_stored_quiet": mqtt_e2e("steady", storm_at),
            "mqtt_publish_to_stored_steady": mqtt_e2e("steady"),
            **{f"mqtt_publish_to_stored_{phase}": mqtt_e2e(phase) for phase in capacity if phase != "capacity_http"},
        },
        "storm": {"revisions_http": len(storm_items), "http_all_acknowledged_s": round(storm_http_done, 2),
                  "revisions_mqtt": len(storm_mqtt),
                  "mqtt_all_stored_s": round(max(storm_mqtt_stored) - storm_mqtt_from, 2) if storm_mqtt_stored else None},
        "faults": {k: v for k, v in faults.items() if k not in ("stats", "storm_at") and not k.endswith("acknowledged_s")},
        "http_failed_attempts_retried": failures,
        "http_batches_retried": http.record.retried_batches,
        "http_items_not_listed_in_200": http.record.unlisted,
        "check": {"items_sent": len(sent), "rows_stored": len(rows), "lost": lost, "missing": missing,
                  "extra": extra, "never_acknowledged": never_acked, **checks},
        "platform_stats": faults.get("stats"),
        "platform_log": log,
        "postgresql_log": {"deadlocks_detected": postgres_log.count("deadlock detected"),
                           "first_deadlock": first_deadlock(postgres_log),
                           "errors": dict(Counter(re.sub(r"\d+", "N", m)[:100] for m in
                                                  re.findall(r"(?:ERROR|FATAL):  (.*)", postgres_log)).most_common(8))},
        "cpu": {"steady": meter.between("steady_start", "steady_end"),
                **{phase: meter.between(f"{phase}_start", f"{phase}_end") for phase in capacity}},
    }
    for phase, found in capacity.items():  # CPU per item stored: steadier than a rate on a shared machine
        cpu = result["cpu"][phase]
        found["cpu_us_per_item"] = {name: round(cores * cpu["wall_s"] / found["items"] * 1e6)
                                    for name, cores in (("platform", cpu["cores"]["platform"]),
                                                        ("postgresql", cpu["cores"]["postgresql"]),
                                                        ("this_run", cpu["total_cores"]))}
    print("  capacity: " + "; ".join(f"{phase[9:]} {c.get('items', 0):,} items at {c.get('items_per_s', 0):,}/s"
                                     for phase, c in capacity.items()))
    print(f"  check: lost {lost}, missing {missing}, extra {extra}; resends dropped as duplicates "
          f"{checks['duplicates_counter']}; deadlocks {result['postgresql_log']['deadlocks_detected']}")
    print(f"  faults: {result['faults']}")
    print(f"  failed HTTP attempts (retried): {failures}")
    for phase, cpu in result["cpu"].items():
        print(f"  CPU cores {phase}: {cpu['cores']}, this run {cpu['total_cores']}, machine {cpu['machine_busy_cores']}")
    sys.stdout.flush()
    return result


def first_deadlock(log: str) -> list[str]:
    """The PostgreSQL log's lines about the first deadlock it detected (which rows, which statements)."""
    lines = log.splitlines()
    for n, line in enumerate(lines):
        if "deadlock detected" in line:
            block = [line]
            for following in lines[n + 1:n + 12]:
                if re.match(r"\S+ \S+ \S+ \[\d+\] (ERROR|LOG|FATAL|WARNING)", following):
                    break
                block.append(following.strip()[:300])
            return block
    return []


def connections_by_pid(port: int) -> dict[str, int]:
    """Established connections to the platform's port, by the process that holds them."""
    done = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True)
    return dict(Counter(re.findall(r"pid=(\d+)", done.stdout)))


# -- the ceiling -----------------------------------------------------------------------------------


def ceiling(pg: PrivatePostgres, args, count: int) -> dict:
    """``count`` rows of the capacity phase's mix (2 revisions for 3 summaries), each way into a fresh
    database of the platform's schema, in this process, one connection, nothing else running here:

    - bare rows (revisions and telemetry tables only): ``COPY`` (one transaction), ``executemany``
      of INSERT ... ON CONFLICT DO NOTHING and one ``INSERT ... SELECT FROM unnest(arrays)`` per
      table (500 rows per transaction);
    - the platform's SQL: ``ReceiverStore.add`` per gateway batch of ``--batch-size`` (what an HTTP
      request does) and ``ReceiverStore.add_many`` of 500 one-message batches (what the MQTT writer
      does: on PostgreSQL one ``unnest`` statement per table);
    - and the 500-row writers again beside one CPU-bound thread (a worker's HTTP threads are such
      threads; each round trip to PostgreSQL gives up the GIL and may wait 5 ms,
      ``sys.getswitchinterval()``, to have it back), each for at most 5 s.
    """
    import psycopg

    from uplink.receiver.store import ReceiverStore

    now = time.time()
    gateways = [GatewayData(i, args.seed + 1) for i in range(args.gateways)]
    per = max(1, count // len(gateways))
    by_gateway = [(g.name, g.backlog(now, per)) for g in gateways]
    messages = [(gw, [i.body] if i.kind == "r" else [], [i.body] if i.kind == "t" else [], [], None)
                for gw, items in by_gateway for i in items]
    random.Random(args.seed).shuffle(messages)  # arrival order mixes the gateways
    in_500 = [messages[lo:lo + 500] for lo in range(0, len(messages), 500)]
    per_request = [(gw, items[lo:lo + args.batch_size]) for gw, items in by_gateway
                   for lo in range(0, len(items), args.batch_size)]

    def bare(chunk) -> tuple[list, list]:
        at = time.time()
        return ([(b["order_id"], b["revision"], gw, at, orjson.dumps(b).decode()) for gw, rs, _, _, _ in chunk for b in rs],
                [(b["device"], b["interval"], gw, at, orjson.dumps(b).decode()) for gw, _, ts, _, _ in chunk for b in ts])

    def by_copy(conn, chunk) -> None:
        revisions, summaries = bare(chunk)
        with conn.transaction(), conn.cursor() as cur:
            for table, key, rows in (("revisions", "order_id, revision", revisions),
                                     ("telemetry", "device, interval", summaries)):
                with cur.copy(f"COPY {table} ({key}, gateway, received_at, body) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)

    def by_executemany(conn, chunk) -> None:
        revisions, summaries = bare(chunk)
        with conn.transaction(), conn.cursor() as cur:
            for table, key, rows in (("revisions", "order_id, revision", revisions),
                                     ("telemetry", "device, interval", summaries)):
                cur.executemany(f"INSERT INTO {table} ({key}, gateway, received_at, body) VALUES (%s, %s, %s, %s, %s) "
                                "ON CONFLICT DO NOTHING", rows)

    def by_unnest(conn, chunk) -> None:
        revisions, summaries = bare(chunk)
        with conn.transaction(), conn.cursor() as cur:
            for table, key, rows in (("revisions", "order_id, revision", revisions),
                                     ("telemetry", "device, interval", summaries)):
                columns = [list(c) for c in zip(*rows)] or [[], [], [], [], []]
                cur.execute(f"INSERT INTO {table} ({key}, gateway, received_at, body) SELECT * FROM "
                            "unnest(%s::text[], %s::bigint[], %s::text[], %s::float8[], %s::text[]) "
                            "ON CONFLICT DO NOTHING", columns)

    def by_add(store, request) -> None:
        gw, items = request
        store.add(gw, [i.body for i in items if i.kind == "r"], [i.body for i in items if i.kind == "t"])

    ways = {  # name: (open a connection or a store, write one transaction, the transactions)
        "copy": (psycopg.connect, by_copy, [messages]),
        "executemany": (psycopg.connect, by_executemany, in_500),
        "unnest": (psycopg.connect, by_unnest, in_500),
        "store_add": (ReceiverStore, by_add, per_request),
        "store_add_many_as_mqtt": (ReceiverStore, lambda store, chunk: store.add_many(chunk), in_500),
    }

    def measure(name: str, busy: bool) -> int:
        opener, write, transactions = ways[name]
        url = pg.create_database("ceiling")
        ReceiverStore(url).close()  # the platform's schema, migrated as the platform does
        target = opener(url)
        done = 0
        try:
            with busy_thread() if busy else contextlib.nullcontext():
                began = time.perf_counter()
                for transaction in transactions:
                    write(target, transaction)
                    done += len(transaction) if name != "store_add" else len(transaction[1])
                    if busy and time.perf_counter() - began > 5.0:
                        break
                return round(done / (time.perf_counter() - began))
        finally:
            target.close()

    out: dict = {"rows": len(messages)}
    for name in ways:
        out[f"{name}_rows_per_s"] = measure(name, busy=False)
    for name in ("executemany", "unnest", "store_add_many_as_mqtt"):
        out[f"{name}_beside_a_busy_thread_rows_per_s"] = measure(name, busy=True)
    return out


@contextlib.contextmanager
def busy_thread():
    """A thread that only computes (holds the GIL whenever it can) while the block runs."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# -- main ------------------------------------------------------------------------------------------


def machine() -> dict:
    mosquitto = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout.splitlines()[:1]
    return {"python": platform_module.python_version(), "cpus": os.cpu_count(), "platform": platform_module.platform(),
            "postgresql": postgres_version(), "mosquitto": mosquitto[0] if mosquitto else None,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def postgres_version() -> str:
    return subprocess.run([str(postgres_bin() / "postgres"), "--version"], capture_output=True, text=True).stdout.strip()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--gateways", type=int, default=1000, help="Simulated gateways.")
    parser.add_argument("--mqtt-share", type=float, default=0.5, help="Share of the gateways that publish over MQTT.")
    parser.add_argument("--mqtt-connections", type=int, default=4,
                        help="MQTT client connections carrying the MQTT gateways' topics.")
    parser.add_argument("--workers", default="1,2", help="Platform worker counts to run, comma-separated.")
    parser.add_argument("--seconds", type=float, default=40.0, help="Seconds of steady load per worker count.")
    parser.add_argument("--interval", type=float, default=5.0,
                        help="Mean seconds between a gateway's batches (each 0.5x to 1.5x of it).")
    parser.add_argument("--storm-zones", type=int, default=2, help=f"Zones (of {ZONES}) whose gateways storm.")
    parser.add_argument("--storm-revisions", type=int, default=100, help="Revisions each storming gateway makes at once.")
    parser.add_argument("--backlog", type=int, default=60,
                        help="Items each gateway has queued in the capacity phases over MQTT alone and over both.")
    parser.add_argument("--http-backlog", type=int, default=200,
                        help="Items each HTTP gateway has queued in the capacity phase over HTTP alone (HTTP is faster: "
                             "a longer phase measures it better).")
    parser.add_argument("--batch-size", type=int, default=100, help="Items per HTTP request (the gateway's default).")
    parser.add_argument("--timeout", type=float, default=10.0, help="Seconds an HTTP gateway waits for an answer.")
    parser.add_argument("--retry-max", type=float, default=60.0, help="Longest wait between an HTTP gateway's retries.")
    parser.add_argument("--no-faults", action="store_true", help="Do not kill a worker nor restart PostgreSQL.")
    parser.add_argument("--no-ceiling", action="store_true", help="Skip the COPY / executemany ceiling.")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "platform.json")
    parser.add_argument("--publisher", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.publisher:
        publisher(args.publisher)
        return
    worker_counts = [int(x) for x in args.workers.split(",")]
    results: dict = {
        "command": " ".join(["bench/bench_platform.py", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "publisher"},
        "runs": {},
    }
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))  # so the cleanup below runs
    workdir = Path(tempfile.mkdtemp(prefix="bench-platform-"))
    pg = PrivatePostgres()
    try:
        print(f"PostgreSQL {postgres_version()} on 127.0.0.1:{pg.port} (fsync on), data in {pg.data}")
        for workers in worker_counts:
            results["runs"][f"workers_{workers}"] = asyncio.run(run_workers(args, workers, pg, workdir))
        if not args.no_ceiling:
            results["ceiling"] = ceiling(pg, args, args.backlog * args.gateways)
            for name, run in results["runs"].items():
                run["share_of_ceiling"] = {
                    phase: {k.replace("_rows_per_s", ""): round(found["items_per_s"] / v, 3)
                            for k, v in results["ceiling"].items() if k.endswith("_per_s") and "beside" not in k}
                    for phase in ("capacity_both", "capacity_http", "capacity_mqtt")
                    if (found := run["capacity"].get(phase))}
    finally:
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print_summary(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


def print_summary(results: dict) -> None:
    runs = list(results["runs"].values())

    def lat(run: dict, key: str) -> str:
        found = run["latency"].get(key, {})
        return f"{found['p50_ms']:,.0f} / {found['p99_ms']:,.0f} ms" if found.get("n") else "-"

    def rate(run: dict, key: str) -> str:
        found = run["capacity"].get(key, {})
        return f"{found['items_per_s']:,}/s" if found else "-"

    def cpu(run: dict, phase: str) -> str:
        found = run["cpu"].get(phase)
        if not found:
            return "-"
        cores = found["cores"]
        return (f"gen {cores['generator_http'] + cores['generator_mqtt']:.2f}, platform {cores['platform']:.2f}, "
                f"pg {cores['postgresql']:.2f}; machine {found['machine_busy_cores']:.2f}")

    def failed(run: dict) -> str:
        steady = run["http_failed_attempts_retried"].get("steady", {})
        return ", ".join(f"{k} {v}" for k, v in sorted(steady.items())) or "none"

    def per_item(run: dict, phase: str) -> str:
        found = run["capacity"].get(phase, {}).get("cpu_us_per_item")
        return f"{found['platform']} / {found['postgresql']} us" if found else "-"

    def share(run: dict, phase: str) -> str:
        found = run.get("share_of_ceiling", {}).get(phase)
        return " / ".join(f"{found[k]:.2f}" for k in ("copy", "executemany", "store_add")) if found else "-"

    lines = [
        ("items stored/s, HTTP and MQTT at once", lambda r: rate(r, "capacity_both")),
        ("  HTTP alone", lambda r: rate(r, "capacity_http")),
        ("  MQTT alone", lambda r: rate(r, "capacity_mqtt")),
        ("platform / PostgreSQL CPU per item: HTTP alone", lambda r: per_item(r, "capacity_http")),
        ("  MQTT alone", lambda r: per_item(r, "capacity_mqtt")),
        ("HTTP request -> 200, p50 / p99: quiet", lambda r: lat(r, "http_request_quiet")),
        ("  whole steady run (storm, faults)", lambda r: lat(r, "http_request_steady")),
        ("  capacity, both at once", lambda r: lat(r, "http_request_capacity_both")),
        ("MQTT publish -> stored, p50 / p99: quiet", lambda r: lat(r, "mqtt_publish_to_stored_quiet")),
        ("  whole steady run (storm, faults)", lambda r: lat(r, "mqtt_publish_to_stored_steady")),
        ("storm: HTTP acknowledged / MQTT stored in", lambda r: f"{r['storm']['http_all_acknowledged_s']} s / "
                                                               f"{r['storm']['mqtt_all_stored_s']} s"),
        ("lost / missing / extra / keys twice", lambda r: f"{r['check']['lost']} / {r['check']['missing']} / "
                                                         f"{r['check']['extra']} / {r['check']['revision_keys_twice'] + r['check']['telemetry_keys_twice']}"),
        ("resends dropped as duplicates", lambda r: f"{r['check']['duplicates_counter']:,}"),
        ("HTTP attempts failed and retried", failed),
        ("CPU cores, capacity both", lambda r: cpu(r, "capacity_both")),
        ("share of COPY / executemany / store.add: both", lambda r: share(r, "capacity_both")),
        ("  HTTP alone", lambda r: share(r, "capacity_http")),
    ]
    width = max(len(name) for name, _ in lines)
    print(f"\nsummary: {results['machine']['cpus']} cores shared by the load generator, PostgreSQL, Mosquitto, "
          f"the platform (and whatever else runs)")
    print(" " * width + "".join(f"  {'--workers ' + str(r['workers']):<46}" for r in runs))
    for name, value in lines:
        print(f"{name:<{width}}" + "".join(f"  {value(r):<46}" for r in runs))
    if "ceiling" in results:
        c = results["ceiling"]
        print(f"\nceiling, {c['rows']:,} rows, rows/s (alone / beside a CPU-bound thread):")
        for name, what in (("copy", "bare rows, COPY"), ("executemany", "bare rows, executemany, 500 per transaction"),
                           ("unnest", "bare rows, INSERT ... SELECT FROM unnest, 500 per transaction"),
                           ("store_add", f"ReceiverStore.add, {results['settings']['batch_size']} per transaction (HTTP)"),
                           ("store_add_many_as_mqtt", "ReceiverStore.add_many, 500 messages (the MQTT writer)")):
            busy = c.get(f"{name}_beside_a_busy_thread_rows_per_s")
            print(f"  {what:<66} {c[f'{name}_rows_per_s']:>9,}" + (f" / {busy:,}" if busy is not None else ""))


if __name__ == "__main__":
    main()
