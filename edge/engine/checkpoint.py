"""The engine's state on disk: a checkpoint file, and a changelog of what came after it.

A restart must be invisible to the rules. The engine's whole state (latest values and their
device times, ``for`` timers, active flags, settle bits, worse-by baselines, every window
and detector) lives in numpy arrays; ``take`` copies them (milliseconds) and ``write`` puts
the copy on disk atomically (a temporary file, fsync, rename, fsync of the folder), in any
thread. Every batch and every state-changing tick after the checkpoint is kept in the
``engine_changelog`` table of gateway.db, in the same transaction as that step's orders
(``encode_batch``, ``append``); ``write`` is followed by ``truncate`` up to the step the
checkpoint covers. On start the agent ``restore``s the checkpoint into an engine built from
the rules on disk and ``replay``s the changelog rows after it, so the engine is exactly where
it was at the last committed step, and the order book (committed in the same transactions)
agrees with it.

A checkpoint names what its arrays mean: the devices, metrics, texts, and per rule a digest
of its definition and the shape of each function's state. ``restore`` copies the arrays
whole when all of that matches the running engine, else maps them by device id, metric name
and rule: a rule whose definition changed starts fresh (as a rule reload does); a rule whose
functions' state layout differs from this version's (an upgrade changed it) is refused, logged
and counted, and also starts fresh. A file of another ``LAYOUT`` version is refused whole.
The file is read with ``allow_pickle=False``: nothing in it can run code.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import sqlite3
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from edge.engine.engine import Engine, ReadingBatch
from edge.engine.program import PENDING

__all__ = [
    "LAYOUT", "CheckpointError", "Restored", "Snapshot", "append", "decode_batch", "encode_batch",
    "encode_program", "last_step", "read", "replay", "restore", "take", "tick", "truncate", "write",
]

log = logging.getLogger(__name__)

# The meaning of the state arrays (kernels.py, detectors.py, functions.py). Bump it when a change
# gives any slot another meaning; a checkpoint of another layout is then refused, never misread.
LAYOUT = 2  # 2: the anomaly detector's hour-of-day view
MAGIC = "edge-engine-checkpoint"
ARRAYS = ("latest", "latest_ts", "since", "active", "quiet", "reported", "state")


class CheckpointError(Exception):
    """A checkpoint that cannot be used (unreadable, another layout); the engine starts fresh."""


@dataclass
class Snapshot:
    header: dict
    arrays: dict[str, np.ndarray]

    @property
    def covers(self) -> int:
        """The last changelog step whose effect the arrays hold."""
        return int(self.header["covers"])


@dataclass
class Restored:
    exact: bool = False  # every array copied whole
    kept: list[str] = field(default_factory=list)  # rules whose state came back
    changed: list[str] = field(default_factory=list)  # rules whose definition changed: fresh, as on a reload
    refused: dict[str, str] = field(default_factory=dict)  # rule -> why its state could not be used


def rule_digest(rule) -> str:
    return hashlib.sha256(rule.spec.model_dump_json().encode()).hexdigest()[:16]


def _instances_of(engine: Engine, r: int) -> list[dict]:
    p = engine.program
    names = p.metric_names
    return [
        {"function": inst.function, "metric": names[inst.metric] if inst.metric >= 0 else None,
         "param": inst.param, "width": int(p.inst_width[k]), "index": k}
        for k, inst in enumerate(p.instances) if inst.rule == r
    ]


def describe(engine: Engine) -> dict:
    """What the engine's arrays mean, as a checkpoint's header records it."""
    p = engine.program
    return {
        "devices": [d.id for d in engine.registry.devices],
        "metrics": list(p.metric_names),
        "texts": list(p.texts.codes),
        "rules": [
            {"name": rule.name, "digest": rule_digest(rule), "instances": _instances_of(engine, r)}
            for r, rule in enumerate(engine.rules)
        ],
        "state_size": int(p.state_size),
    }


def take(engine: Engine, covers: int, extra: dict | None = None) -> Snapshot:
    """Copy the engine's state (call it between steps, in the engine's thread)."""
    header = {
        "magic": MAGIC, "layout": LAYOUT, "covers": int(covers), "taken_at": time.time(),
        "origin": engine.origin, "late_readings": int(engine.late_readings), "evaluations": int(engine.evaluations),
        **describe(engine), **(extra or {}),
    }
    arrays = {name: getattr(engine, name).copy() for name in ARRAYS}
    arrays["inst_off"] = engine.program.inst_off.copy()
    return Snapshot(header, arrays)


def write(snapshot: Snapshot, path: Path) -> int:
    """Write the snapshot to ``path`` atomically and durably; returns its size in bytes."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, header=np.frombuffer(orjson.dumps(snapshot.header), dtype=np.uint8),
                        **snapshot.arrays)
    data = buffer.getbuffer()
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return len(data)


def read(path: Path) -> Snapshot:
    """The checkpoint at ``path``; CheckpointError when it cannot be used."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            header = orjson.loads(archive["header"].tobytes())
            if header.get("magic") != MAGIC:
                raise CheckpointError(f"{path}: not an engine checkpoint")
            if header.get("layout") != LAYOUT:
                raise CheckpointError(
                    f"{path}: written with state layout {header.get('layout')}, this version reads layout {LAYOUT}")
            arrays = {name: archive[name] for name in (*ARRAYS, "inst_off")}
    except CheckpointError:
        raise
    except Exception as error:  # a torn, truncated or foreign file: never a crash
        raise CheckpointError(f"{path}: unreadable ({type(error).__name__}: {error})") from None
    return Snapshot(header, arrays)


def restore(engine: Engine, snapshot: Snapshot) -> Restored:
    """Put the snapshot's state into ``engine`` (built from the rules and registry of now)."""
    header, arrays = snapshot.header, snapshot.arrays
    now = describe(engine)
    result = Restored()
    engine.origin = float(header["origin"])
    engine.late_readings = int(header["late_readings"])
    engine.evaluations = int(header["evaluations"])
    if all(header.get(key) == now[key] for key in now) \
            and all(arrays[name].shape == getattr(engine, name).shape for name in ARRAYS):
        for name in ARRAYS:
            getattr(engine, name)[...] = arrays[name]
        result.exact = True
        result.kept = [rule.name for rule in engine.rules]
        return result

    old_devices = {device: i for i, device in enumerate(header["devices"])}
    new_rows = np.array([i for i, d in enumerate(now["devices"]) if d in old_devices], dtype=np.int64)
    old_rows = np.array([old_devices[d] for d in now["devices"] if d in old_devices], dtype=np.int64)
    old_metrics = {name: i for i, name in enumerate(header["metrics"])}
    old_text = {float(i + 1): text for i, text in enumerate(header["texts"])}
    text_metrics = engine.program.text_metrics
    for m, name in enumerate(now["metrics"]):
        o = old_metrics.get(name)
        if o is None or not len(new_rows):
            continue
        values = arrays["latest"][old_rows, o]
        if name in text_metrics:  # text codes are numbered per rule set: map them through the text
            texts = engine.program.texts
            values = np.array([texts.code(old_text[v]) if v in old_text else v for v in values.tolist()])
        engine.latest[new_rows, m] = values
        engine.latest_ts[new_rows, m] = arrays["latest_ts"][old_rows, o]

    old_rules = {rule["name"]: (o, rule) for o, rule in enumerate(header["rules"])}
    for r, rule in enumerate(now["rules"]):
        name = rule["name"]
        if name not in old_rules:
            continue
        o, old = old_rules[name]
        if old["digest"] != rule["digest"]:
            result.changed.append(name)
            continue
        if _signature(old["instances"]) != _signature(rule["instances"]):
            result.refused[name] = "the state layout of its functions differs in this version"
            continue
        if len(new_rows):
            for column in ("since", "active", "reported"):
                getattr(engine, column)[new_rows, r] = arrays[column][old_rows, o]
            for k_new, k_old in zip((i["index"] for i in rule["instances"]), (i["index"] for i in old["instances"])):
                width = int(engine.program.inst_width[k_new])
                if width == 0:
                    continue
                new_off = engine.program.inst_off[new_rows, k_new]
                old_off = arrays["inst_off"][old_rows, k_old]
                both = (new_off >= 0) & (old_off >= 0)
                span = np.arange(width)
                engine.state[(new_off[both, None] + span).ravel()] = arrays["state"][(old_off[both, None] + span).ravel()]
        result.kept.append(name)
    engine.quiet[:, PENDING] = ~np.uint64(0)  # times came back: each rule's is looked at once
    return result


def _signature(instances: list[dict]) -> list[tuple]:
    """What a rule's function states are, without where they lie."""
    return [(i["function"], i["metric"], i["param"], i["width"]) for i in instances]


def tick(engine: Engine, now: float) -> tuple[list, bool]:
    """``engine.tick(now)`` and whether it changed the state that decides transitions.

    A tick that changed nothing (most: no rule's condition moved with time alone) need not
    be in the changelog; one that started or ended a wait, or opened or cleared, must be.
    """
    before = (engine.since.copy(), engine.active.copy(), engine.reported.copy())
    transitions = engine.tick(now)
    after = (engine.since, engine.active, engine.reported)
    changed = bool(transitions) or not all(np.array_equal(a, b, equal_nan=True) for a, b in zip(before, after))
    return transitions, changed


# --- the changelog -------------------------------------------------------------------------

def encode_program(engine: Engine) -> bytes:
    """A 'program' row: the metric names and texts the batch rows after it are numbered by."""
    p = engine.program
    return zlib.compress(orjson.dumps({"metrics": list(p.metric_names), "texts": list(p.texts.codes),
                                       "devices": [d.id for d in engine.registry.devices],
                                       "rules": [rule_digest(rule) for rule in engine.rules]}))


def encode_batch(batch: ReadingBatch) -> bytes:
    """A batch as the engine saw it, compressed (columns apart: each compresses on its own)."""
    n = len(batch)
    return zlib.compress(
        n.to_bytes(4, "little") + batch.dev.tobytes() + batch.met.tobytes() + batch.ts.tobytes() + batch.val.tobytes(), 1)


def rows(steps: list[tuple[str, float, object]]) -> list[tuple[str, float, bytes]]:
    """The changelog rows of steps in order: adjacent batches joined into one row, encoded once.

    The engine takes readings one after the other, whatever batch they came in, so batches
    replayed joined leave the state they left apart; one row per commit instead of one per
    batch spares a compression and an insert each (a batch at 5,000 messages/s holds ~20)."""
    out: list[tuple[str, float, bytes]] = []
    pending: list[ReadingBatch] = []
    first = 0.0
    for kind, at, body in steps:
        if kind == "batch" and isinstance(body, ReadingBatch):
            if not pending:
                first = at
            pending.append(body)
            continue
        if pending:
            out.append(("batch", first, encode_batch(_joined(pending))))
            pending = []
        out.append((kind, at, body))
    if pending:
        out.append(("batch", first, encode_batch(_joined(pending))))
    return out


def _joined(batches: list[ReadingBatch]) -> ReadingBatch:
    if len(batches) == 1:
        return batches[0]
    return ReadingBatch(*(np.concatenate([getattr(b, column) for b in batches]) for column in ("dev", "met", "ts", "val")))


def decode_batch(body: bytes) -> ReadingBatch:
    data = zlib.decompress(body)
    n = int.from_bytes(data[:4], "little")
    at = 4
    columns = []
    for dtype, size in ((np.int32, 4), (np.int32, 4), (np.float64, 8), (np.float64, 8)):
        columns.append(np.frombuffer(data, dtype=dtype, count=n, offset=at))
        at += n * size
    return ReadingBatch(*columns)


def append(conn: sqlite3.Connection, kind: str, at: float, body: bytes) -> int:
    """Add a step (inside the caller's transaction); returns its number."""
    return conn.execute("INSERT INTO engine_changelog (kind, at, body) VALUES (?, ?, ?)", [kind, at, body]).lastrowid


def last_step(conn: sqlite3.Connection) -> int:
    """The newest step ever written to this gateway.db (steps are never renumbered)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'engine_changelog'").fetchone()
    return row[0] if row else 0


def truncate(conn: sqlite3.Connection, covers: int) -> int:
    """Forget the steps a written checkpoint covers; returns how many rows went."""
    return conn.execute("DELETE FROM engine_changelog WHERE seq <= ?", [covers]).rowcount


def _renumbering(program: dict, engine: Engine):
    """How to bring batches numbered by ``program`` (another rule set's metrics, texts and
    devices) into the engine's numbering: None when they are numbered alike."""
    p = engine.program
    devices = [d.id for d in engine.registry.devices]
    if program["metrics"] == list(p.metric_names) and program["texts"] == list(p.texts.codes) \
            and program["devices"] == devices:
        return None
    index = {name: i for i, name in enumerate(p.metric_names)}
    metrics = np.array([index.get(name, -1) for name in program["metrics"]], dtype=np.int32)
    where = {device: i for i, device in enumerate(devices)}
    dev = np.array([where.get(device, -1) for device in program["devices"]], dtype=np.int32)
    texts = np.array([p.texts.code(text) for text in program["texts"]], dtype=np.float64)
    text_ids = np.array([index[name] for name in p.text_metrics if name in index], dtype=np.int32)
    return metrics, dev, texts, text_ids


def _remap(batch: ReadingBatch, renumbering) -> ReadingBatch:
    """A batch in the engine's numbering (``renumbering`` from ``_renumbering``)."""
    if renumbering is None:
        return batch
    metrics, devices, texts, text_ids = renumbering
    met = metrics[batch.met]
    dev = devices[batch.dev]
    keep = (met >= 0) & (dev >= 0)
    val = batch.val.copy()
    # the old numbering's code of a text is its position + 1; other codes (unknown: -1) stay
    text = np.isin(met, text_ids) & (val >= 1) & (val <= len(texts)) & (val == np.floor(val))
    val[text] = texts[val[text].astype(np.int64) - 1]
    return ReadingBatch(dev[keep], met[keep], batch.ts[keep], val[keep])


def replay(engine: Engine, conn: sqlite3.Connection, after: int, numbering: dict | None = None) -> tuple[int, int]:
    """Run the changelog's steps after ``after`` through the engine; returns (steps, last step).

    ``numbering``: the devices, metrics and texts the first rows are numbered by (the
    checkpoint's header; a 'program' row changes it); None: the engine's own. Their
    transitions were applied to the order book when they first ran (same transaction), so
    they are dropped here: the engine only catches up with the book. A rule of the engine that
    was not running when a batch was logged (added or changed since) starts fresh after it.
    """
    renumbering = None if numbering is None else _renumbering(numbering, engine)
    digests = [rule_digest(rule) for rule in engine.rules]
    everything = set(range(len(digests)))

    def rules_in(program: dict | None) -> set[int]:
        """The engine's rules that ran (the same definition) when ``program``'s batches did."""
        if program is None or program.get("rules") is None:  # a changelog from before rule digests
            return everything
        theirs = {rule if isinstance(rule, str) else rule["digest"] for rule in program["rules"]}
        return {r for r, digest in enumerate(digests) if digest in theirs}

    # A rule that was not running when a batch was logged (added or changed by a reload later,
    # or by this restart) did not see that batch: it starts fresh where it started then.
    running = rules_in(numbering)
    steps, last = 0, after
    rows = conn.execute("SELECT seq, kind, at, body FROM engine_changelog WHERE seq > ? ORDER BY seq", [after])
    for seq, kind, at, body in rows:
        if kind == "program":
            program = orjson.loads(zlib.decompress(body))
            renumbering = _renumbering(program, engine)
            now_running = rules_in(program)
            engine.reset_rules(sorted(now_running - running))
            running = now_running
        elif kind == "start":
            if steps == 0 and after == 0:
                engine.origin = float(at)  # a first run that ended before its first checkpoint
        elif kind == "batch":
            batch = decode_batch(body)
            engine.process(_remap(batch, renumbering))
        elif kind == "tick":
            engine.tick(at)
        elif kind == "rebase":  # a device whose wrong clock came back (agent._rebase)
            change = orjson.loads(body)
            device = engine.registry.by_id.get(change["device"])
            if device is not None:
                engine.reset_device(device.index)
                for rule in change["active"]:
                    engine.mark_active(rule, device.id)
        steps += 1
        last = seq
    engine.reset_rules(sorted(everything - running))
    return steps, last
