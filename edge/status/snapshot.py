"""One picture of the gateway's health: from its SQLite file, and from the running agent.

``snapshot()`` is the single source of the metrics endpoint (``/metrics``), the status page
(``/``), its JSON (``/status.json``) and ``edge status``. What only a running agent knows
(messages in, engine batch time, uplink latency, each device's last message, memory) is
there when ``agent`` is given; the rest comes from gateway.db, so it is right after a
restart and when the agent is not running at all.

No secret reaches the snapshot: URLs are shown through ``edge.redact.redact_url``.
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge.orders.book import LIVE_STATES, ORDER_STATES
from edge.orders.verification import OUTCOMES, PENDING
from edge.outbox import unsent
from edge.redact import redact_text, redact_url

if TYPE_CHECKING:
    from edge.agent import Agent
    from edge.engine import Engine
    from edge.registry import Registry

RECHECK_STATES = (PENDING, *OUTCOMES)
UNKNOWN_SHOWN = 20  # unknown devices listed on the page, the newest
OPEN_ORDERS_SHOWN = 200


def resident_bytes() -> int | None:
    """This process's resident memory (Linux), or None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _connect(path: Path) -> sqlite3.Connection | None:
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    conn.row_factory = sqlite3.Row
    return conn


def from_database(path: Path, now: float) -> dict:
    """What gateway.db says: orders by state, the open ones, outbox backlog, quarantine, evictions."""
    out: dict = {
        "database": str(path), "orders": {"by_state": {s: 0 for s in ORDER_STATES}, "open": [],
                                          "rechecks": {v: 0 for v in RECHECK_STATES}},
        "outbox": {"unsent_orders": 0, "unsent_telemetry": 0, "unsent_reports": 0, "oldest_unsent_age_s": None, "sent": 0,
                   "used_bytes": 0, "evicted_rows": {}},
        "quarantine": {}, "unknown_devices": 0, "unknown_devices_newest": [],
    }
    conn = _connect(path)
    if conn is None:
        out["database"] += " (not created yet)"
        return out
    try:
        for row in conn.execute("SELECT state, count(*) FROM orders GROUP BY state"):
            out["orders"]["by_state"][row[0]] = row[1]
        if any(column[1] == "verification" for column in conn.execute("PRAGMA table_info(orders)")):
            for row in conn.execute("SELECT verification, count(*) FROM orders WHERE verification != '' "
                                    "GROUP BY verification"):
                out["orders"]["rechecks"][row[0]] = row[1]
        live = ", ".join(f"'{s}'" for s in LIVE_STATES)
        out["orders"]["open"] = [dict(row) for row in conn.execute(
            f"SELECT id, device, rule, category, severity, state, revision, grid, address, title, opened_at, "
            f"updated_at FROM orders WHERE state IN ({live}) ORDER BY opened_at DESC LIMIT {OPEN_ORDERS_SHOWN}"
        )]
        for kind, count in unsent(conn).items():
            key = {"order": "unsent_orders", "report": "unsent_reports"}.get(kind, "unsent_telemetry")
            out["outbox"][key] += count
        oldest = conn.execute("SELECT min(created_at) FROM outbox WHERE sent_at IS NULL").fetchone()[0]
        out["outbox"]["oldest_unsent_age_s"] = None if oldest is None else max(0.0, now - oldest)
        out["outbox"]["sent"] = conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        out["outbox"]["used_bytes"] = (pages - free) * page_size
        out["outbox"]["evicted_rows"] = {
            step: rows for step, rows in conn.execute("SELECT step, sum(rows) FROM evictions GROUP BY step")
        }
        out["quarantine"] = {reason: n for reason, n in conn.execute(
            "SELECT reason, count(*) FROM quarantine GROUP BY reason ORDER BY reason")}
        out["unknown_devices"] = conn.execute("SELECT count(*) FROM unknown_devices").fetchone()[0]
        out["unknown_devices_newest"] = [dict(row) for row in conn.execute(
            f"SELECT device, first_seen, last_seen, count, topic FROM unknown_devices ORDER BY last_seen DESC "
            f"LIMIT {UNKNOWN_SHOWN}")]
    finally:
        conn.close()
    return out


def order_detail(path: Path, order_id: str) -> dict | None:
    """One order as gateway.db holds it: its row, its problems and every revision (the status page's order view)."""
    conn = _connect(path)
    if conn is None:
        return None
    try:
        row = conn.execute("SELECT * FROM orders WHERE id = ?", [order_id]).fetchone()
        if row is None:
            return None
        order = dict(row)
        order["members"] = [dict(r) for r in conn.execute(
            "SELECT rule, device, state, joined_at FROM order_members WHERE order_id = ? ORDER BY joined_at", [order_id])]
        order["timeline"] = [dict(r) for r in conn.execute(
            "SELECT revision, at, change, state, severity FROM order_events WHERE order_id = ? ORDER BY revision",
            [order_id])]
        return order
    finally:
        conn.close()


def from_agent(agent: "Agent", now: float) -> dict:
    """What only the running agent knows."""
    s, sender, engine, config = agent.stats, agent.sender, agent.engine, agent.config
    failing = sender.errors_in_a_row > 0
    downlink = getattr(sender, "downlink", None)
    return {
        "agent": {
            "running": True, "started_at": agent.started_at, "uptime_s": now - agent.started_at,
            "resident_bytes": resident_bytes(), "ready": agent.ready.is_set(),
        },
        "health": health_of(agent),
        "ingest": {
            "messages": s.messages, "readings": s.readings, "queue_depth": agent.inbox.qsize(),
            "queue_max": config.engine.queue_max, "broker": redact_url(config.mqtt.url),
            "broker_connected": agent.subscriber.connected.is_set(),
            "duplicate_uplinks": s.duplicate_uplinks, "quarantine_trimmed": s.quarantine_trimmed,
            "quarantined": dict(s.quarantined),  # since the agent started, by reason: a counter
            "modbus": None if agent.poller is None else {
                "port": config.modbus.port, "polls": agent.poller.polls, "replies": agent.poller.replies,
                "unchanged": agent.poller.unchanged, "port_errors": agent.poller.port_errors,
            },
        },
        "engine": {
            "rules": len(agent.rules), "rule_evaluations": engine.evaluations, "batches": s.batches, "commits": s.commits,
            "batch_seconds_total": s.engine_seconds, "last_batch_seconds": s.last_batch_seconds,
            "rule_reloads": s.rule_reloads, "rule_errors": s.rule_errors, "last_rule_error": s.last_rule_error,
            "alerts_raised": s.alerts_raised, "kernels": engine.kernels.kind,
            "evicted": dict(s.evicted),
            "write_failures": getattr(s, "write_failures", None), "internal_errors": getattr(s, "internal_errors", None),
            "checkpoints": getattr(s, "checkpoints", None), "checkpoint_failures": getattr(s, "checkpoint_failures", None),
            "checkpoint_refused": getattr(s, "checkpoint_refused", None),
            "replayed_steps": getattr(s, "replayed_steps", None), "clock_resets": getattr(s, "clock_resets", None),
        },
        "checkpoint": checkpoint_of(agent, now),
        "uplink": {
            "url": redact_url(config.uplink.url), "mode": config.uplink.mode, "uplinked": sender.uplinked,
            "errors": sender.errors, "last_error": redact_text(sender.last_error),
            "state": "failing" if failing else ("ok" if sender.last_ok_at else "waiting"),
            "last_ok_at": sender.last_ok_at, "latency_last_s": sender.latency_last,
            "latency_avg_s": sender.latency_total / sender.sends if sender.sends else None, "sends": sender.sends,
            "latency_total_s": sender.latency_total,
            "faults": getattr(sender, "faults", 0), "last_fault": redact_text(getattr(sender, "last_fault", "")),
        },
        "downlink": None if downlink is None else {**downlink.status(), "last_error": redact_text(downlink.last_error)},
        "devices": device_table(agent.registry, engine, now, config.status.silent_after, since=agent.started_at),
    }


def health_of(agent: "Agent") -> dict | None:
    """Each part's state (ok, degraded, down), faults and restarts; None for an agent without them."""
    health = getattr(agent, "health", None)
    if health is None:
        return None
    parts = health.parts()
    for part in parts:
        part["last_error"] = redact_text(part["last_error"])
        part["detail"] = redact_text(part["detail"])
    return {"healthy": health.healthy(), "parts": parts,
            "problems": [redact_text(p) for p in health.problems()]}


def checkpoint_of(agent: "Agent", now: float) -> dict | None:
    """The engine checkpoint's figures, with its age, when the agent keeps them."""
    info = getattr(agent, "checkpoint_info", None)
    if not isinstance(info, dict):
        return None
    out = dict(info)
    written = out.get("written_at")
    if "age_s" not in out:
        out["age_s"] = None if written is None else max(0.0, now - written)
    return out


def device_table(registry: "Registry", engine: "Engine", now: float, silent_after: float,
                 since: float | None = None) -> list[dict]:
    """Each device: its last message (arrival time, device time), whether it is silent, and the
    latest value of each metric the rules read.

    Silent: no message for ``silent_after``. A device not heard from yet is silent only once the
    gateway has been running (``since``) that long: a camera that reports only what it sees is not
    silent 30 s after a start."""
    latest, latest_ts, program = engine.latest, engine.latest_ts, engine.program
    heard = latest_ts[:, 0] > -np.inf
    rows = []
    for device in registry.devices:
        d = device.index
        last = float(latest[d, 0]) if heard[d] else None
        readings = {}
        for m, name in enumerate(program.metric_names[1:], start=1):
            if latest_ts[d, m] > -np.inf:
                value = float(latest[d, m])
                readings[name] = program.texts.text(value) if name in program.text_metrics else value
        rows.append({
            "id": device.id, "kind": device.kind, "grid": device.grid, "address": device.address,
            "last_message_at": last, "device_time": float(latest_ts[d, 0]) if heard[d] else None,
            "silent": now - (last if last is not None else (since if since is not None else -math.inf)) > silent_after,
            "readings": readings, "lat": device.lat, "lon": device.lon,
        })
    return rows


def snapshot(database: Path, gateway_id: str, agent: "Agent | None" = None, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    out = {"gateway": gateway_id, "at": now, "agent": {"running": False}}
    out.update(from_database(database, now))
    if agent is not None:
        out.update(from_agent(agent, now))
    return out
