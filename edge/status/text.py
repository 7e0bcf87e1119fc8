"""The status snapshot at a glance, for ``edge status`` in a terminal."""

from __future__ import annotations

import time


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    return _span(max(0.0, now - ts)) + " ago"


def _span(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def render(snap: dict, source: str) -> str:
    now = snap.get("at") or time.time()
    agent, orders, outbox = snap["agent"], snap["orders"], snap["outbox"]
    lines = []
    if agent.get("running"):
        memory = f", {agent['resident_bytes'] / 1e6:.0f} MB" if agent.get("resident_bytes") else ""
        lines.append(f"gateway    {snap['gateway']}: agent running, up {_span(agent['uptime_s'])}{memory} ({source})")
        ingest, engine, uplink = snap["ingest"], snap["engine"], snap["uplink"]
        lines.append(
            f"ingest     {ingest['messages']:,} messages, {ingest['readings']:,} readings; queue "
            f"{ingest['queue_depth']}/{ingest['queue_max']}; broker "
            f"{'connected' if ingest['broker_connected'] else 'NOT connected'} ({ingest['broker']})"
        )
        batch = f"{engine['last_batch_seconds'] * 1000:.1f} ms" if engine["batches"] else "-"
        errors = f"; {engine['rule_errors']} rule file(s) refused, latest: {engine['last_rule_error'].splitlines()[0]}" \
            if engine["rule_errors"] else "; no rule errors"
        lines.append(f"engine     {engine['rules']} rules, {engine['rule_evaluations']:,} evaluations, "
                     f"last batch {batch}, kernels {engine.get('kernels', '?')}{errors}")
        latency = f"{uplink['latency_last_s'] * 1000:.0f} ms" if uplink["latency_last_s"] is not None else "-"
        last_error = f"; last error: {uplink['last_error']}" if uplink["last_error"] else ""
        lines.append(f"uplink     {uplink['state']}: last answer {_ago(uplink['last_ok_at'], now)}, latency {latency}; "
                     f"{uplink['uplinked']:,} acknowledged, {uplink['errors']} errors{last_error}")
    else:
        lines.append(f"gateway    {snap['gateway']}: agent NOT running or not reachable ({source}); from the local file only")
    by_state = " · ".join(f"{state} {n}" for state, n in orders["by_state"].items() if n) or "none"
    lines.append(f"orders     {by_state}")
    lines.append(
        f"outbox     {outbox['unsent_orders']} order revisions + {outbox['unsent_telemetry']} telemetry waiting, "
        f"oldest {_span(outbox['oldest_unsent_age_s'])}; {outbox['used_bytes'] / 1e6:.1f} MB in use"
    )
    devices = snap.get("devices")
    if devices is not None:
        silent = [d for d in devices if d["silent"]]
        shown = ", ".join(f"{d['id']} ({_ago(d['last_message_at'], now)})" for d in silent[:8])
        more = f" and {len(silent) - 8} more" if len(silent) > 8 else ""
        lines.append(f"devices    {len(devices)}, {len(silent)} silent" + (f": {shown}{more}" if silent else ""))
    quarantine = ", ".join(f"{reason} {n}" for reason, n in snap["quarantine"].items()) or "none"
    lines.append(f"quarantine {quarantine}; unknown devices {snap['unknown_devices']}")
    for order in orders["open"][:10]:
        lines.append(f"  open     {order['id']}  {order['severity']:<8} {order['state']:<10} {order['device']:<10} "
                     f"{order['rule']}  ({_ago(order['opened_at'], now)})")
    return "\n".join(lines)
