"""The status snapshot at a glance, for ``edge status`` in a terminal.

Each part's state is coloured (green ok, yellow degraded, red down) with click's styles,
which ``click.echo`` drops when the output is not a terminal. Text that came from a device
or the platform is shown through ``edge.text_safety.printable``, so it cannot move the
cursor or recolour the terminal.
"""

from __future__ import annotations

import time

import click

from edge.text_safety import printable

STATE_COLOURS = {"ok": "green", "degraded": "yellow", "down": "red"}


def _state(state: str) -> str:
    return click.style(printable(state), fg=STATE_COLOURS.get(state, "red"), bold=state != "ok")


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
    p = printable
    lines = []
    if agent.get("running"):
        memory = f", {agent['resident_bytes'] / 1e6:.0f} MB" if agent.get("resident_bytes") else ""
        lines.append(f"gateway    {p(snap['gateway'])}: agent running, up {_span(agent['uptime_s'])}{memory} ({p(source)})")
        lines += _health(snap.get("health"))
        ingest, engine, uplink = snap["ingest"], snap["engine"], snap["uplink"]
        lines.append(
            f"ingest     {ingest['messages']:,} messages, {ingest['readings']:,} readings; queue "
            f"{ingest['queue_depth']}/{ingest['queue_max']}; broker "
            f"{'connected' if ingest['broker_connected'] else 'NOT connected'} ({p(ingest['broker'])})"
        )
        batch = f"{engine['last_batch_seconds'] * 1000:.1f} ms" if engine["batches"] else "-"
        first_error = (engine["last_rule_error"].splitlines() or [""])[0]
        errors = f"; {engine['rule_errors']} rule file(s) refused, latest: {p(first_error, 300)}" \
            if engine["rule_errors"] else "; no rule errors"
        lines.append(f"engine     {engine['rules']} rules, {engine['rule_evaluations']:,} evaluations, "
                     f"last batch {batch}, kernels {p(engine.get('kernels', '?'))}{errors}")
        checkpoint = snap.get("checkpoint")
        if checkpoint is not None:
            size = f"{checkpoint['bytes'] / 1e6:.1f} MB" if checkpoint.get("bytes") is not None else "-"
            written = f"written {_span(checkpoint['age_s'])} ago" if checkpoint.get("age_s") is not None \
                else "not written yet"
            error = f"; last error: {p(checkpoint['last_error'], 300)}" if checkpoint.get("last_error") else ""
            lines.append(f"checkpoint {_state('ok') if checkpoint.get('ok') else _state('down')}, {size}, {written}{error}")
        latency = f"{uplink['latency_last_s'] * 1000:.0f} ms" if uplink["latency_last_s"] is not None else "-"
        last_error = f"; last error: {p(uplink['last_error'], 300)}" if uplink["last_error"] else ""
        state = click.style(uplink["state"], fg="red" if uplink["state"] == "failing" else "green"
                            if uplink["state"] == "ok" else None)
        lines.append(f"uplink     {state}: last answer {_ago(uplink['last_ok_at'], now)}, latency {latency}; "
                     f"{uplink['uplinked']:,} acknowledged, {uplink['errors']} errors{last_error}")
        lines += _downlink(snap.get("downlink"), now)
    else:
        lines.append(f"gateway    {p(snap['gateway'])}: agent NOT running or not reachable ({p(source)}); "
                     "from the local file only")
    by_state = " · ".join(f"{p(state)} {n}" for state, n in orders["by_state"].items() if n) or "none"
    lines.append(f"orders     {by_state}")
    reports = f" + {outbox['unsent_reports']} reports" if outbox.get("unsent_reports") else ""
    lines.append(
        f"outbox     {outbox['unsent_orders']} order revisions + {outbox['unsent_telemetry']} telemetry{reports} waiting, "
        f"oldest {_span(outbox['oldest_unsent_age_s'])}; {outbox['used_bytes'] / 1e6:.1f} MB in use"
    )
    devices = snap.get("devices")
    if devices is not None:
        silent = [d for d in devices if d["silent"]]
        shown = ", ".join(f"{p(d['id'], 64)} ({_ago(d['last_message_at'], now)})" for d in silent[:8])
        more = f" and {len(silent) - 8} more" if len(silent) > 8 else ""
        lines.append(f"devices    {len(devices)}, {len(silent)} silent" + (f": {shown}{more}" if silent else ""))
    quarantine = ", ".join(f"{p(reason, 64)} {n}" for reason, n in snap["quarantine"].items()) or "none"
    lines.append(f"quarantine {quarantine}; unknown devices {snap['unknown_devices']}")
    for order in orders["open"][:10]:
        lines.append(f"  open     {p(order['id'])}  {p(order['severity']):<8} {p(order['state']):<10} "
                     f"{p(order['device'], 64):<10} {p(order['rule'])}  ({_ago(order['opened_at'], now)})")
    return "\n".join(lines)


def _health(health: dict | None) -> list[str]:
    """The parts' states in colour, then one line per part that is not ok."""
    if health is None:
        return []
    overall = click.style("ok", fg="green") if health["healthy"] else click.style("NOT HEALTHY", fg="red", bold=True)
    states = " · ".join(f"{printable(part['name'])} {_state(part['state'])}" for part in health["parts"])
    lines = [f"health     {overall}" + (f": {states}" if states else "")]
    for part in health["parts"]:
        if part["state"] != "ok":
            lines.append(f"  {_state(part['state'])} {printable(part['name'])}: "
                         f"{printable(part['detail'] or part['last_error'], 300)} "
                         f"(faults {part['faults_total']}, restarts {part['restarts_total']})")
    return lines


def _downlink(downlink: dict | None, now: float) -> list[str]:
    if downlink is None:
        return []
    refused = ", ".join(f"{printable(r)} {n}" for r, n in sorted(downlink["refused"].items())) or "none refused"
    error = f"; last error: {printable(downlink['last_error'], 300)}" if downlink.get("last_error") else ""
    lines = [f"downlink   {downlink['applied']} changes applied, {refused}; rule files "
             f"{downlink['rule_files_applied']} applied, {downlink['rule_files_refused']} refused{error}"]
    last = downlink.get("last_refused_rule_file")
    if last:
        colour = "red" if downlink.get("refusal_pending") else "yellow"
        lines.append("  " + click.style("refused", fg=colour) + f" rule file {printable(last['file'] or '?', 100)} "
                     f"(change {last['seq']}, {printable(last['reason'])}, {_ago(last['at'], now)}), not written:")
        for line in (last["detail"].splitlines() or [""])[:5]:
            lines.append(f"    {printable(line, 300)}")
    return lines
