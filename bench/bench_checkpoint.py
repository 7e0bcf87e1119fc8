"""Benchmark of the engine's durable state (issue 19): checkpoint, start-up, replay, CPU and disk.

Workload: 10,000 devices and the 21 bench rules of bench/bench_engine.py (its registry,
written as a CSV so that ``edge run`` loads the same devices, and ``bench_rules()``).

1. checkpoint: the engine's state filled by a day of readings (every window slot and
   detector written), then ``checkpoint.take`` (the copy, in the engine's thread) and
   ``checkpoint.write`` (compress, write, fsync, rename, fsync the folder; the writer thread)
   timed, wall and CPU, median of several; the file's bytes on disk; how much of the write is
   compression.
2. restore: ``checkpoint.read`` + ``checkpoint.restore`` of that file into a fresh engine (the
   exact path, same rules and devices), and after one rule changed (the mapping path).
3. replay: 60 s of readings at 5,000 messages/s (300,000 messages) in the changelog of a real
   gateway.db, as the gateway logs them (a row per batch of 100 messages, what 20 ms bring at
   that rate), replayed into an engine restored from the checkpoint; where the time goes
   (reading the rows, decompressing, the engine).
4. start-up: ``edge run`` (a process) from exec to its "running" log line, with that
   checkpoint in its data folder and without one; and the restore time the agent logs.
5. steady 5,000 msg/s: ``edge run`` with the 10,000 devices fed by a publisher process
   (own JSON, QoS 1, each device every 2 s); over a measured period after a warm-up, the
   gateway's CPU seconds (utime + stime, /proc/PID/stat), its bytes written to the block
   layer (write_bytes, /proc/PID/io) and the messages it processed (its status page). Four
   variants, one after the other: ``none`` (the changelog and checkpoints switched off by
   patching ``edge.engine.checkpoint`` in the process: the gateway as it was before issue
   19), ``changelog`` ([engine] checkpoint_interval = 86400: no checkpoint in the period),
   ``default`` (checkpoint_interval = 60) and ``every_5_s`` (5: twelve times the checkpoints,
   so that their cost stands out of the noise). CPU is also counted per thread: the engine's
   loop (the main thread: decode, engine, orders, the changelog's rows and commits), the
   checkpoint writer, and the rest (mostly MQTT's network thread, whose CPU varies most from
   run to run); the overhead to read compares the engine and writer threads with the engine
   thread of ``none``. It is also estimated from the parts measured in this process
   (changelog per message, take + write per checkpoint).
   Bytes per changelog row as written now and with two alternatives (part 1).
6. idle street: ``edge run`` with the shipped registry (52 devices) and rules, fed by
   firmware_sim's street (each device every 5 minutes), bytes written over 5 minutes; a
   second gateway without durable state on the same street at the same time.

Disk figures are bytes per hour and GB per year extrapolated from the measured period.
(write_bytes counts what the process sends to the block layer: the SQLite WAL and database
file, the checkpoint file; not the file system's journal.)

    .venv/bin/python bench/bench_checkpoint.py [--seconds 90] [--idle-seconds 300]
                                               [--only checkpoint,startup,steady,idle]

prints the figures and writes them to bench/results/checkpoint.json (a part not run keeps its
previous figures).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_engine import DEVICES, EXTRA_RULES, make_messages, make_registry  # noqa: E402
from edge.broker import free_port, start_mosquitto  # noqa: E402
from edge.engine import Engine, checkpoint, load_rules  # noqa: E402
from edge.engine.engine import ReadingBatch  # noqa: E402
from edge.outbox import open_database, transaction  # noqa: E402
from edge.registry import Registry  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "checkpoint.json"
T0 = 1_763_000_000.0
FILL_MESSAGES = 500_000  # a day of readings: ~50 a device, every window slot and detector written
RATE = 5_000  # messages a second
REPLAY_SECONDS = 60
BATCH_MESSAGES = 100  # messages per changelog row at 5,000/s (the gateway's batch_wait is 20 ms)
REPEAT = 5


# --- the workload ----------------------------------------------------------------------------

def write_world(folder: Path) -> tuple[Path, Path]:
    """The bench registry as a CSV and the 21 bench rules as a folder, as ``edge run`` reads them."""
    registry = make_registry()
    csv_path = folder / "devices-10k.csv"
    lines = ["id,kind,model,address,lat,lon,grid,zone,team,depth_cm"]
    for d in registry.devices:
        depth = d.params.get("depth_cm", "")
        lines.append(f"{d.id},{d.kind},{d.model},{d.address},{d.lat},{d.lon},{d.grid},{d.zone},{d.team},{depth}")
    csv_path.write_text("\n".join(lines) + "\n")
    rules = folder / "rules"
    rules.mkdir()
    for path in (ROOT / "rules").glob("*.yaml"):
        shutil.copy(path, rules / path.name)
    (rules / "bench_extra.yaml").write_text(EXTRA_RULES)
    return csv_path, rules


def chunks(batch: ReadingBatch, messages: int) -> list[ReadingBatch]:
    """``batch`` cut into batches of ``messages`` messages (a message starts at its marker reading)."""
    markers = np.flatnonzero(batch.met == 0)
    bounds = markers[::messages].tolist() + [len(batch)]
    return [ReadingBatch(batch.dev[lo:hi], batch.met[lo:hi], batch.ts[lo:hi], batch.val[lo:hi])
            for lo, hi in zip(bounds, bounds[1:])]


def shifted(batch: ReadingBatch, start: float, span: float) -> ReadingBatch:
    """The batch's day of device time squeezed into [start, start + span] (markers' arrival times too)."""
    ts = start + (batch.ts - T0) * span / 86_400
    val = np.where(batch.met == 0, ts, batch.val)
    return ReadingBatch(batch.dev, batch.met, ts, val)


def filled_engine(rules, registry) -> Engine:
    engine = Engine(rules, registry, origin=T0)
    engine.warm_up()
    _, batch, _ = make_messages(registry, engine, FILL_MESSAGES, seed=7)
    for part in chunks(batch, 20_000):
        engine.process(part)
    return engine


def timed(function, repeat: int = REPEAT) -> tuple[float, float, object]:
    """Median wall and CPU (this thread) seconds of ``function()``, and its last result."""
    walls, cpus, result = [], [], None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.thread_time()
        result = function()
        cpus.append(time.thread_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return statistics.median(walls), statistics.median(cpus), result


def same_state(a: Engine, b: Engine) -> bool:
    return all(np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True) for name in checkpoint.ARRAYS)


# --- 1-3: in this process ----------------------------------------------------------------------

def checkpoint_and_replay(folder: Path, registry_csv: Path, rules_dir: Path) -> dict:
    registry = Registry.load(registry_csv)
    rules = load_rules([rules_dir])
    started = time.perf_counter()
    engine = filled_engine(rules, registry)
    print(f"state filled with {FILL_MESSAGES:,} messages in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    path = folder / "engine.ckpt"

    take_wall, take_cpu, snapshot = timed(lambda: checkpoint.take(engine, 0))
    write_wall, write_cpu, size = timed(lambda: checkpoint.write(snapshot, path))

    def compress_only():
        buffer = io.BytesIO()
        np.savez_compressed(buffer, header=np.frombuffer(orjson.dumps(snapshot.header), dtype=np.uint8),
                            **snapshot.arrays)
        return buffer

    compress_wall, compress_cpu, _ = timed(compress_only)
    raw = sum(a.nbytes for a in snapshot.arrays.values())
    on_disk = path.stat().st_size
    result = {
        "checkpoint": {
            "devices": len(registry), "rules": len(rules), "state_arrays_bytes": raw,
            "file_bytes": on_disk, "compression_ratio": round(raw / on_disk, 1),
            "take_s": round(take_wall, 4), "take_cpu_s": round(take_cpu, 4),
            "write_s": round(write_wall, 4), "write_cpu_s": round(write_cpu, 4),
            "of_which_compress_s": round(compress_wall, 4),
            "take_and_write_s": round(take_wall + write_wall, 4),
            "take_and_write_cpu_s": round(take_cpu + write_cpu, 4),
            "what": "take: copy of the state arrays (engine thread); write: np.savez_compressed + write + fsync + "
                    "rename + fsync of the folder (writer thread); medians of 5; CPU = thread CPU time",
        },
    }
    assert size == on_disk

    def read_restore():
        fresh = Engine(rules, registry, origin=T0)
        wall, cpu = time.perf_counter(), time.thread_time()
        restored = checkpoint.restore(fresh, checkpoint.read(path))
        return time.perf_counter() - wall, time.thread_time() - cpu, restored, fresh

    runs = [read_restore() for _ in range(REPEAT)]
    exact = runs[-1][2].exact and same_state(engine, runs[-1][3])
    build_wall, _, _ = timed(lambda: Engine(rules, registry, origin=T0), 3)
    changed_text = EXTRA_RULES.replace("avg(water_cm, 10m) < 35", "avg(water_cm, 10m) < 36")
    assert changed_text != EXTRA_RULES
    (rules_dir.parent / "rules-changed").mkdir(exist_ok=True)
    for p in rules_dir.glob("*.yaml"):
        shutil.copy(p, rules_dir.parent / "rules-changed" / p.name)
    (rules_dir.parent / "rules-changed" / "bench_extra.yaml").write_text(changed_text)
    changed_rules = load_rules([rules_dir.parent / "rules-changed"])

    def mapped():
        fresh = Engine(changed_rules, registry, origin=T0)
        wall = time.perf_counter()
        restored = checkpoint.restore(fresh, checkpoint.read(path))
        return time.perf_counter() - wall, restored

    mapped_runs = [mapped() for _ in range(3)]
    result["restore"] = {
        "read_and_restore_s": round(statistics.median(r[0] for r in runs), 4),
        "read_and_restore_cpu_s": round(statistics.median(r[1] for r in runs), 4),
        "exact": bool(exact),
        "engine_build_s": round(build_wall, 4),
        "after_a_rule_change_s": round(statistics.median(r[0] for r in mapped_runs), 4),
        "after_a_rule_change": {"kept": len(mapped_runs[-1][1].kept), "changed": mapped_runs[-1][1].changed},
        "goal_s": 1.0,
        "what": "checkpoint.read + checkpoint.restore into a freshly built engine (not counting the build, "
                "which a start without a checkpoint does too); exact = every array equal to the engine's that "
                "was saved; after_a_rule_change: one of the 21 rules edited, state mapped by device, metric, rule",
    }

    # 3. replay: 60 s at 5,000/s, a row per 100 messages, after the checkpoint
    builder_engine = Engine(rules, registry, origin=T0)
    _, day, _ = make_messages(registry, builder_engine, RATE * REPLAY_SECONDS, seed=8)
    minute = shifted(day, T0 + 86_400, REPLAY_SECONDS)
    batches = chunks(minute, BATCH_MESSAGES)
    db = open_database(folder / "gateway.db")
    with transaction(db) as conn:
        checkpoint.append(conn, "program", T0, checkpoint.encode_program(engine))
        for n, batch in enumerate(batches):
            checkpoint.append(conn, "batch", T0 + 86_400 + n * 0.02, checkpoint.encode_batch(batch))
    rows_bytes = db.conn.execute("SELECT sum(length(body)) FROM engine_changelog").fetchone()[0]

    def replayed():
        fresh = Engine(rules, registry, origin=T0)
        checkpoint.restore(fresh, checkpoint.read(path))
        wall, cpu = time.perf_counter(), time.thread_time()
        steps, _ = checkpoint.replay(fresh, db.conn, 0)
        return time.perf_counter() - wall, time.thread_time() - cpu, steps, fresh

    replays = [replayed() for _ in range(3)]
    direct = Engine(rules, registry, origin=T0)
    checkpoint.restore(direct, checkpoint.read(path))
    for batch in batches:
        direct.process(batch)
    fetch_wall, _, rows = timed(lambda: db.conn.execute(
        "SELECT seq, kind, at, body FROM engine_changelog WHERE seq > 0 ORDER BY seq").fetchall(), 3)
    decode_wall, _, _ = timed(lambda: [checkpoint.decode_batch(body) for _, kind, _, body in rows
                                       if kind == "batch"], 3)

    def process_only():
        fresh = Engine(rules, registry, origin=T0)
        checkpoint.restore(fresh, checkpoint.read(path))
        wall = time.perf_counter()
        for batch in batches:
            fresh.process(batch)
        return time.perf_counter() - wall

    process_wall = statistics.median(process_only() for _ in range(3))
    db.conn.close()
    readings = int((minute.met != 0).sum())
    result["replay"] = {
        "messages": RATE * REPLAY_SECONDS, "readings": readings, "rows": len(batches),
        "changelog_bytes": int(rows_bytes),
        "changelog_bytes_per_message": round(rows_bytes / (RATE * REPLAY_SECONDS), 1),
        "replay_s": round(statistics.median(r[0] for r in replays), 3),
        "replay_cpu_s": round(statistics.median(r[1] for r in replays), 3),
        "same_state_as_processing_directly": bool(same_state(direct, replays[-1][3])),
        "of_which_read_rows_s": round(fetch_wall, 3), "of_which_decompress_s": round(decode_wall, 3),
        "of_which_engine_s": round(process_wall, 3),
        "goal_s": 5.0,
        "what": "checkpoint.replay of 300,000 messages (60 s at 5,000/s) logged as the gateway logs them (one "
                "zlib-compressed row per batch of 100 messages) into an engine restored from the checkpoint",
    }

    # the changelog's own cost per message, as the gateway pays it per batch: encode + insert + commit
    # (commit: synchronous=FULL in WAL mode, an fsync of the WAL per batch)
    db = open_database(folder / "changelog-cost.db")
    sample = batches[:500]

    def log_batches():
        for batch in sample:
            with transaction(db) as conn:
                checkpoint.append(conn, "batch", 0.0, checkpoint.encode_batch(batch))

    def commit_only():
        for _ in sample:
            with transaction(db) as conn:
                conn.execute("INSERT INTO cursors (name, value) VALUES ('bench', 1) "
                             "ON CONFLICT (name) DO UPDATE SET value = value + 1")

    encode_wall, encode_cpu, _ = timed(lambda: [checkpoint.encode_batch(b) for b in sample], 3)
    log_wall, log_cpu, _ = timed(log_batches, 3)
    commit_wall, commit_cpu, _ = timed(commit_only, 3)
    db.conn.close()
    n = len(sample) * BATCH_MESSAGES
    result["changelog_cost"] = {
        "encode_cpu_us_per_message": round(encode_cpu / n * 1e6, 2),
        "encode_insert_commit_cpu_us_per_message": round(log_cpu / n * 1e6, 2),
        "encode_insert_commit_wall_us_per_message": round(log_wall / n * 1e6, 2),
        "a_commit_alone_cpu_us_per_message": round(commit_cpu / n * 1e6, 2),
        "a_commit_alone_wall_us_per_message": round(commit_wall / n * 1e6, 2),
        "what": "per message, in batches of 100: encode_batch; encode + INSERT + COMMIT (a transaction per "
                "batch, as the gateway commits each batch with its changelog row); a commit of a one-row "
                "update alone, for scale (the gateway before issue 19 committed only batches with orders)",
    }
    result["changelog_disk"] = changelog_disk(folder, sample)
    result["checkpoint_compression_levels"] = compression_levels(snapshot, folder)
    return result


def written_by_me() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


def changelog_disk(folder: Path, batches: list[ReadingBatch]) -> dict:
    """Bytes written per changelog row as the gateway writes them, and with two alternatives.

    a_commit_per_batch: engine_changelog of gateway.db (AUTOINCREMENT), a transaction per batch
    ([engine] commit_interval = 0);
    no_autoincrement: the same without AUTOINCREMENT (no sqlite_sequence page per commit);
    commit_every_10_batches: a transaction per 10 batches (200 ms at 5,000 msg/s: what the
    default commit_interval of 0.2 s does).
    Same pragmas as gateway.db (WAL, synchronous=FULL); write_bytes of this process.
    """
    import sqlite3

    bodies = [checkpoint.encode_batch(b) for b in batches]
    out = {}
    for variant in ("a_commit_per_batch", "no_autoincrement", "commit_every_10_batches"):
        path = folder / f"disk-{variant}.db"
        conn = sqlite3.connect(str(path), isolation_level=None)
        for pragma in ("auto_vacuum=INCREMENTAL", "journal_mode=WAL", "synchronous=FULL", "journal_size_limit=4194304"):
            conn.execute(f"PRAGMA {pragma}")
        key = "INTEGER PRIMARY KEY" if variant == "no_autoincrement" else "INTEGER PRIMARY KEY AUTOINCREMENT"
        conn.execute(f"CREATE TABLE engine_changelog (seq {key}, kind TEXT NOT NULL, at REAL NOT NULL, "
                     "body BLOB NOT NULL)")
        group = 10 if variant == "commit_every_10_batches" else 1
        before = written_by_me()
        for start in range(0, len(bodies), group):
            conn.execute("BEGIN IMMEDIATE")
            for body in bodies[start:start + group]:
                conn.execute("INSERT INTO engine_changelog (kind, at, body) VALUES ('batch', 0, ?)", [body])
            conn.execute("COMMIT")
        written = written_by_me() - before
        conn.close()
        messages = len(bodies) * BATCH_MESSAGES
        out[variant] = {"bytes_per_commit": round(written / (len(bodies) / group)),
                        "bytes_per_message": round(written / messages, 1),
                        "mb_per_s_at_5000_msgs_per_s": round(written / messages * RATE / 1e6, 3)}
    out["row_bytes_per_message"] = round(sum(map(len, bodies)) / (len(bodies) * BATCH_MESSAGES), 1)
    out["what"] = ("bytes written (write_bytes of this process: WAL frames, whole 4 KiB pages, and WAL checkpoints) "
                   "per changelog row of 100 messages: a commit per batch (AUTOINCREMENT; [engine] commit_interval = 0), "
                   "the same without AUTOINCREMENT, and a commit per 10 batches (the default commit_interval, "
                   "0.2 s, at 5,000 msg/s)")
    return out


def compression_levels(snapshot, folder: Path) -> dict:
    """The checkpoint's compression at zlib levels 1 and 6 (np.savez_compressed's), time and bytes."""
    import zipfile

    out = {}
    arrays = {"header": np.frombuffer(orjson.dumps(snapshot.header), dtype=np.uint8), **snapshot.arrays}
    for level in (1, 6):
        def compress():
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as archive:
                for name, array in arrays.items():
                    with archive.open(name + ".npy", "w", force_zip64=True) as f:
                        np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)
            return buffer.getvalue()

        wall, cpu, data = timed(compress, 3)
        path = folder / f"level-{level}.ckpt"
        path.write_bytes(data)
        assert np.array_equal(np.load(path, allow_pickle=False)["state"], snapshot.arrays["state"], equal_nan=True)
        out[f"level_{level}"] = {"bytes": len(data), "compress_s": round(wall, 4), "compress_cpu_s": round(cpu, 4)}
    out["what"] = ("the same .npz written with zipfile at zlib level 1, and at 6 (what np.savez_compressed uses); "
                   "np.load reads both")
    return out


# --- 4-6: edge run as a process ---------------------------------------------------------------

RUNNER = r"""
import sys
variant, config = sys.argv[1], sys.argv[2]
if variant == "none":  # the gateway without durable engine state: no changelog rows, no checkpoints
    import itertools
    from edge import agent
    from edge.engine import checkpoint
    steps = itertools.count(1)
    checkpoint.encode_batch = lambda batch: b""
    checkpoint.rows = lambda log: []
    checkpoint.append = lambda conn, kind, at, body: next(steps)
    checkpoint.tick = lambda engine, now: (engine.tick(now), False)
    agent.Agent._checkpoint = lambda self, final=False: None
from edge.cli import main
sys.argv = ["edge", "run", "--config", config]
main()
"""

# argv: host port rate seconds registry.csv; own JSON of each device in turn, device time = now
PUBLISHER = r"""
import csv, sys, time, orjson, paho.mqtt.client as mqtt
host, port, rate, seconds, registry = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
devices = [(row["id"], row["kind"]) for row in csv.DictReader(open(registry))]
def readings(kind, k):
    alarm = k % 20011 == 0  # an alarm now and then (a few a minute): orders, not a storm of them
    if kind == "manhole_cover":
        return {"tilt_deg": 30.0 if alarm else 1.0 + (k % 7) * 0.1, "open": 0, "water_cm": 140.0 - (k % 50) * 0.5,
                "ch4_lel_pct": 1.0, "h2s_ppm": 0.5 + (k % 3) * 0.1, "temp_c": 18.0, "battery_v": 3.6}
    if kind == "bin":
        return {"distance_cm": 10.0 if alarm else 60.0 + (k % 40), "temp_c": 21.0 + (k % 5), "tilt_deg": 1.0,
                "battery_v": 3.6}
    return {"label": "car" if alarm else "person", "zone": "no_parking", "score": 0.8, "active": 1, "duration_s": 30.0}
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
client.max_queued_messages_set(0)
client.max_inflight_messages_set(1000)
client.connect(host, port); client.loop_start()
start = time.time()
sent = 0
while time.time() - start < seconds:
    now = time.time()
    while sent < (now - start) * rate:
        device, kind = devices[sent % len(devices)]
        body = orjson.dumps({"device": device, "ts": now, "readings": readings(kind, sent)})
        client.publish(f"devices/{device}/telemetry", body, qos=1)
        sent += 1
    time.sleep(0.002)
client.disconnect(); client.loop_stop()
print(sent)
"""


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_written(pid: int, task: int | None = None) -> int:
    path = f"/proc/{pid}/io" if task is None else f"/proc/{pid}/task/{task}/io"
    for line in Path(path).read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError(f"no write_bytes in {path}")


def threads(pid: int) -> dict[int, tuple[float, int]]:
    """CPU seconds and bytes written of each thread of the process, by thread id."""
    out = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{task}/stat").read_text().rsplit(")", 1)[1].split()
            out[int(task)] = ((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"),
                              proc_written(pid, int(task)))
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended
    return out


def gateway_config(folder: Path, broker, registry: Path, rules: Path, interval: float, status_port: int) -> Path:
    config = folder / "gateway.toml"
    config.write_text(f"""
[gateway]
id = "gw-bench-ckpt"
data_dir = "{(folder / 'data').as_posix()}"
[registry]
path = "{registry.as_posix()}"
[rules]
paths = ["{rules.as_posix()}"]
[mqtt]
url = "mqtt://{broker.host}:{broker.port}"
client_id = "bench-ckpt-{folder.name}"
[uplink]
url = "http://127.0.0.1:9"
retry_max = 60.0
[status]
listen = "127.0.0.1:{status_port}"
[engine]
checkpoint_interval = {interval}
""")
    return config


class GatewayProcess:
    def __init__(self, config: Path, variant: str = "changelog"):
        self.lines: list[str] = []
        self.started = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, "-c", RUNNER, variant, str(config)], cwd=ROOT,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.running = threading.Event()
        self.subscribed = threading.Event()
        self.running_after: float | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stderr:
            self.lines.append(line)
            del self.lines[:-200]
            if " running: " in line and self.running_after is None:
                self.running_after = time.perf_counter() - self.started
                self.running.set()
            if "subscribed to" in line:
                self.subscribed.set()

    def wait(self, event: threading.Event, what: str, timeout: float = 120) -> None:
        if not event.wait(timeout):
            raise RuntimeError(f"edge run: no {what} in {timeout:g}s:\n" + "".join(self.lines[-30:]))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=10) as answer:
        return json.loads(answer.read())


def startup(folder: Path, registry: Path, rules: Path, ckpt: Path) -> dict:
    """exec -> 'running' of edge run with 10,000 devices, with and without a checkpoint."""
    broker = type("NoBroker", (), {"host": "127.0.0.1", "port": free_port()})()  # nothing listens: start-up only
    out = {}
    for label, with_checkpoint in (("without_checkpoint", False), ("with_checkpoint", True)):
        times, restore_logged = [], []
        for n in range(3):
            run = folder / f"start-{label}-{n}"
            run.mkdir()
            config = gateway_config(run, broker, registry, rules, 60, free_port())
            if with_checkpoint:
                (run / "data").mkdir()
                shutil.copy(ckpt, run / "data" / "engine.ckpt")
            gateway = GatewayProcess(config)
            try:
                gateway.wait(gateway.running, "'running' line")
                times.append(gateway.running_after)
                for line in gateway.lines:
                    if "restored from its checkpoint in" in line:
                        restore_logged.append(float(line.split(" in ")[1].split("s")[0]))
            finally:
                gateway.stop()
        out[label] = {"exec_to_running_s": round(statistics.median(times), 3), "runs_s": [round(t, 3) for t in times]}
        if restore_logged:
            out[label]["agent_logged_restore_s"] = round(statistics.median(restore_logged), 3)
    out["checkpoint_adds_s"] = round(out["with_checkpoint"]["exec_to_running_s"]
                                     - out["without_checkpoint"]["exec_to_running_s"], 3)
    out["what"] = ("edge run with the 10,000 devices and 21 rules, from exec to its 'running' log line (imports, "
                   "registry, rules, engine, warm-up, recovery), median of 3; with_checkpoint: the checkpoint of "
                   "part 1 in its data folder (nothing to replay)")
    return out


def measure(gateway: GatewayProcess, port: int, warmup: float, seconds: float) -> dict:
    pid = gateway.process.pid
    time.sleep(warmup)
    s0, cpu0, io0, t0, th0 = status(port), proc_cpu(pid), proc_written(pid), time.perf_counter(), threads(pid)
    time.sleep(seconds)
    s1, cpu1, io1, t1, th1 = status(port), proc_cpu(pid), proc_written(pid), time.perf_counter(), threads(pid)
    before = lambda task: th0.get(task, (0.0, 0))  # noqa: E731 - a thread started in the period: from 0
    per_thread = {task: (round(th1[task][0] - before(task)[0], 2), th1[task][1] - before(task)[1])
                  for task in sorted(th1)}
    # the checkpoint writer is its own thread: the one, besides the engine's (the main thread), that
    # writes files (the uplink thread writes too when it sends; here the platform is never reached)
    writers = [(written, cpu) for task, (cpu, written) in per_thread.items() if task != pid and written > 0]
    writer_cpu = max(writers)[1] if writers else 0.0
    messages = s1["ingest"]["messages"] - s0["ingest"]["messages"]
    elapsed = t1 - t0
    written = io1 - io0
    out = {
        "seconds": round(elapsed, 1), "messages": messages, "msgs_per_s": round(messages / elapsed),
        "cpu_s": round(cpu1 - cpu0, 2), "cpu_us_per_message": round((cpu1 - cpu0) / max(1, messages) * 1e6, 2),
        "written_bytes": written, "written_bytes_per_s": round(written / elapsed),
        "written_mb_per_hour": round(written / elapsed * 3600 / 1e6, 1),
        "written_gb_per_year": round(written / elapsed * 3600 * 24 * 365 / 1e9, 1),
        "batches": s1["engine"]["batches"] - s0["engine"]["batches"],
        "messages_per_batch": round(messages / max(1, s1["engine"]["batches"] - s0["engine"]["batches"]), 1),
        "checkpoints": (s1["engine"].get("checkpoints") or 0) - (s0["engine"].get("checkpoints") or 0),
        "written_bytes_per_batch": round(written / max(1, s1["engine"]["batches"] - s0["engine"]["batches"])),
        "commits": (s1["engine"].get("commits") or 0) - (s0["engine"].get("commits") or 0),
        "written_bytes_per_commit": round(written / max(1, (s1["engine"].get("commits") or 0)
                                                        - (s0["engine"].get("commits") or 0))),
        "queue_depth_at_end": s1["ingest"]["queue_depth"],
    }
    out["threads_cpu_s_and_written_bytes"] = list(per_thread.values())
    # the engine's loop is the main thread (decode, engine, orders, the changelog's rows and commits);
    # MQTT's network thread (paho) receives: its CPU varies most from run to run
    engine_cpu = per_thread.get(pid, (0.0, 0))[0]
    out["engine_thread_cpu_us_per_message"] = round(engine_cpu / max(1, messages) * 1e6, 2)
    out["checkpoint_writer_thread_cpu_us_per_message"] = round(writer_cpu / max(1, messages) * 1e6, 2)
    out["other_threads_cpu_us_per_message"] = round((cpu1 - cpu0 - engine_cpu - writer_cpu) / max(1, messages) * 1e6, 2)
    out["checkpoint_writer_thread_cpu_s"] = writer_cpu
    out["checkpoint_writer_thread_cpu_pct_of_process"] = round(writer_cpu / max(1e-9, cpu1 - cpu0) * 100, 2)
    info = s1.get("checkpoint") or {}
    out["checkpoint_status"] = {k: info.get(k) for k in ("bytes", "write_seconds", "age_s", "ok") if k in info}
    return out


VARIANTS = (("none", 86_400), ("changelog", 86_400), ("default", 60), ("every_5_s", 5))


def steady(folder: Path, registry: Path, rules: Path, warmup: float, seconds: float, rounds: int,
           part1: dict) -> dict:
    broker = start_mosquitto(folder / "broker")
    runs: dict[str, list[dict]] = {variant: [] for variant, _ in VARIANTS}
    try:
        for r in range(rounds):
            for variant, interval in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
                run = folder / f"steady-{variant}-{r}"
                run.mkdir()
                port = free_port()
                gateway = GatewayProcess(gateway_config(run, broker, registry, rules, interval, port),
                                         "none" if variant == "none" else "as_is")
                publisher = None
                try:
                    gateway.wait(gateway.subscribed, "subscription")
                    publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER, broker.host, str(broker.port),
                                                  str(RATE), str(warmup + seconds + 3), str(registry)],
                                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                    figures = measure(gateway, port, warmup, seconds)
                    figures["checkpoint_interval"] = interval
                    runs[variant].append(figures)
                    print(f"steady {variant} round {r + 1}: {figures}", file=sys.stderr)
                    publisher.wait(warmup + seconds + 60)
                finally:
                    if publisher is not None and publisher.poll() is None:
                        publisher.kill()
                    gateway.stop()
    finally:
        broker.stop()
    out: dict = {"rounds": rounds}
    for variant, figures in runs.items():
        out[variant] = {**figures[0], "rounds": figures} if rounds > 1 else figures[0]
        if rounds > 1:
            for key in ("msgs_per_s", "cpu_us_per_message", "written_bytes_per_s", "messages_per_batch",
                        "written_bytes_per_batch", "checkpoint_writer_thread_cpu_pct_of_process",
                        "engine_thread_cpu_us_per_message", "checkpoint_writer_thread_cpu_us_per_message",
                        "other_threads_cpu_us_per_message"):
                out[variant][key] = round(statistics.median(f[key] for f in figures), 2)
            written = out[variant]["written_bytes_per_s"]
            out[variant]["written_mb_per_hour"] = round(written * 3600 / 1e6, 1)
            out[variant]["written_gb_per_year"] = round(written * 3600 * 24 * 365 / 1e9, 1)
    base = out["none"]["cpu_us_per_message"]
    per_message = {variant: out[variant]["cpu_us_per_message"] for variant, _ in VARIANTS}
    measured = {
        "changelog_pct": round((per_message["changelog"] / base - 1) * 100, 1),
        "default_pct": round((per_message["default"] / base - 1) * 100, 1),
        "every_5_s_pct": round((per_message["every_5_s"] / base - 1) * 100, 1),
        # a checkpoint every 5 s costs 12 times what one a minute does: the difference to the changelog
        # variant, divided by 12, is the default interval's share (when it stands out of the noise)
        "checkpoints_at_60_s_from_every_5_s_pct": round(
            (per_message["every_5_s"] - per_message["changelog"]) / 12 / base * 100, 2),
    }
    ckpt, log = part1.get("checkpoint", {}), part1.get("changelog_cost", {})
    estimated = {}
    if ckpt and log:
        checkpoint_us = ckpt["take_and_write_cpu_s"] / (60 * RATE) * 1e6
        estimated = {
            "changelog_cpu_us_per_message": log["encode_insert_commit_cpu_us_per_message"],
            "checkpoint_cpu_us_per_message_at_60_s": round(checkpoint_us, 2),
            "changelog_pct": round(log["encode_insert_commit_cpu_us_per_message"] / base * 100, 1),
            "checkpoints_at_60_s_pct": round(checkpoint_us / base * 100, 1),
            "total_pct": round((log["encode_insert_commit_cpu_us_per_message"] + checkpoint_us) / base * 100, 1),
        }
    measured["checkpoint_writer_thread_at_60_s_pct"] = out["default"]["checkpoint_writer_thread_cpu_pct_of_process"]
    measured["checkpoint_writer_thread_at_5_s_pct"] = out["every_5_s"]["checkpoint_writer_thread_cpu_pct_of_process"]
    out["cpu_overhead_measured"] = measured
    # the same without the MQTT thread's noise: what the engine thread and the writer thread spend per
    # message more than the engine thread of the gateway without durable state, against its whole CPU
    plain = out["none"]["engine_thread_cpu_us_per_message"]
    out["cpu_overhead_engine_and_writer_threads"] = {
        variant: round((out[variant]["engine_thread_cpu_us_per_message"]
                        + out[variant]["checkpoint_writer_thread_cpu_us_per_message"] - plain) / base * 100, 1)
        for variant in ("changelog", "default", "every_5_s")}
    out["cpu_overhead_estimated_from_parts"] = estimated
    out["goal_cpu_overhead_pct"] = 5.0
    out["written_mb_per_s_default"] = round(out["default"]["written_bytes_per_s"] / 1e6, 3)
    out["written_mb_per_s_without_durable_state"] = round(out["none"]["written_bytes_per_s"] / 1e6, 3)
    out["goal_written_mb_per_s"] = 1.0
    out["what"] = ("edge run, 10,000 devices, 21 rules, a publisher process at 5,000 msg/s; per variant, after a "
                   f"{warmup:g} s warm-up, {seconds:g} s measured: CPU of the gateway process (utime+stime) per "
                   "message it processed, and its write_bytes. none: changelog and checkpoints patched out (the "
                   "gateway as before issue 19); changelog: checkpoint_interval 86400 (no checkpoint in the period); "
                   "default: checkpoint_interval 60; every_5_s: 5; medians of the rounds (alternating order). "
                   "cpu_overhead_measured: CPU per message against none; CPU per message also depends on "
                   "messages_per_batch, which the timing of arrivals decides and which differs from run to run, "
                   "so these differences carry a few % of noise (most of it in MQTT's network thread). "
                   "cpu_overhead_engine_and_writer_threads: the engine thread's and the checkpoint writer's CPU "
                   "per message above the engine thread's of none, against none's whole CPU per message (the "
                   "measure to read). checkpoint_writer_thread_*: the CPU of the "
                   "thread that writes the checkpoints (compression, fsync, truncating the changelog), a share of "
                   "the whole process's in the same period, free of that noise. "
                   "cpu_overhead_estimated_from_parts: part 1's "
                   "in-process costs (changelog per message; take + write of a checkpoint spread over the "
                   "300,000 messages of a minute) against none's CPU per message. Disk: write_bytes per second; "
                   "it follows the number of commits (written_bytes_per_commit): one per [engine] commit_interval "
                   "(0.2 s) or commit_messages (500)")
    return out


def idle(folder: Path, warmup: float, seconds: float) -> dict:
    """52 devices reporting every 5 minutes: what the box writes when nothing much happens.

    Two gateways on one broker take the same street at once: as it is (default settings) and
    without the changelog and checkpoints (``none``, as before issue 19)."""
    broker = start_mosquitto(folder / "broker-idle")
    gateways, ports = {}, {}
    street = None
    out = {}
    try:
        for variant in ("default", "none"):
            run = folder / f"idle-{variant}"
            run.mkdir()
            ports[variant] = free_port()
            gateways[variant] = GatewayProcess(gateway_config(run, broker, ROOT / "config" / "devices.csv",
                                                              ROOT / "rules", 60, ports[variant]),
                                               "none" if variant == "none" else "as_is")
        for gateway in gateways.values():
            gateway.wait(gateway.subscribed, "subscription")
        street = subprocess.Popen([sys.executable, "-m", "firmware_sim", "--broker", broker.url, "--seconds",
                                   str(warmup + seconds + 10), "--interval", "300"], cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        results = {}
        threads = [threading.Thread(target=lambda v=v: results.__setitem__(v, measure(gateways[v], ports[v], warmup,
                                                                                         seconds)))
                   for v in gateways]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        out.update(results)
    finally:
        if street is not None:
            street.send_signal(signal.SIGTERM)
            street.wait(30)
        for gateway in gateways.values():
            gateway.stop()
        broker.stop()
    out["what"] = ("edge run with the shipped registry (52 devices) and rules, default settings "
                   "(checkpoint_interval 60), "
                   "fed by firmware_sim's street (each device every 5 minutes); write_bytes over "
                   f"{seconds:g} s after a {warmup:g} s warm-up. none: a second gateway on the same street at the "
                   "same time, its changelog and checkpoints patched out (as before issue 19)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=90.0, help="measured period of each steady run")
    parser.add_argument("--idle-seconds", type=float, default=300.0,
                        help="measured period of the idle street (a whole round of its 5-minute heartbeats)")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the four steady variants (medians)")
    parser.add_argument("--only", default="checkpoint,startup,steady,idle",
                        help="parts: checkpoint (1-3: checkpoint, restore, replay), startup, steady, idle")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.update({"cpu_count": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()]})
    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as tmp:
        folder = Path(tmp)
        registry, rules = write_world(folder)
        if parts & {"checkpoint", "startup"}:
            results.update(checkpoint_and_replay(folder, registry, rules))
        if "startup" in parts:
            results["startup"] = startup(folder, registry, rules, folder / "engine.ckpt")
            print(f"startup: {results['startup']}", file=sys.stderr)
        if "steady" in parts:
            results["steady_5000_msgs_per_s"] = steady(folder, registry, rules, args.warmup, args.seconds, args.rounds,
                                                       results)
        if "idle" in parts:
            results["idle_street_52_devices"] = idle(folder, args.warmup, args.idle_seconds)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
