"""The local status page for a field engineer on site: plain HTML, no JavaScript.

Sections: the parts' health, the uplink (state, backlog), the downlink (changes and rule
files from the platform, the last refused one with its reason), open orders (each opens to its
timeline, ``/orders/ID``), rule errors, silent devices, unknown devices, a map of the devices
(drawn from the registry's lat/lon, no tiles: the box is often offline), then every device,
those that need attention first. It refreshes itself every 10 s (a meta refresh). Everything
shown is escaped; URLs come redacted from the snapshot.
"""

from __future__ import annotations

import datetime as dt
from html import escape
from urllib.parse import quote

import orjson


def _when(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    ago = max(0.0, now - ts)
    if ago < 120:
        text = f"{ago:.0f} s ago"
    elif ago < 7200:
        text = f"{ago / 60:.0f} min ago"
    elif ago < 172800:
        text = f"{ago / 3600:.1f} h ago"
    else:
        text = f"{ago / 86400:.1f} days ago"
    return f'<span title="{_stamp(ts)}">{text}</span>'


def _value(value) -> str:
    """A reading as a person reads it: at most two decimals (87.67, not 87.6667)."""
    if isinstance(value, str):
        return value
    return f"{value:.0f}" if abs(value) >= 1e5 else f"{round(value, 2):g}"


def _order_link(order_id: str, text: str) -> str:
    return f'<a href="/orders/{escape(quote(order_id, safe=""))}">{text}</a>'


MAP_W, MAP_H = 640, 360


def _map(devices: list[dict], open_devices: set[str]) -> str:
    """The devices on their coordinates (an SVG; no map tiles): red with an open order, orange silent."""
    placed = [d for d in devices if isinstance(d.get("lat"), (int, float)) and isinstance(d.get("lon"), (int, float))
              and d["lat"] == d["lat"] and d["lon"] == d["lon"]]
    if not placed:
        return '<p class="empty">No device has coordinates in the registry.</p>'
    lats, lons = [d["lat"] for d in placed], [d["lon"] for d in placed]
    south, north, west, east = min(lats), max(lats), min(lons), max(lons)
    span_y, span_x = max(north - south, 1e-4), max(east - west, 1e-4)
    pad = 20

    def xy(d: dict) -> tuple[float, float]:
        return (pad + (d["lon"] - west) / span_x * (MAP_W - 2 * pad), pad + (north - d["lat"]) / span_y * (MAP_H - 2 * pad))

    dots = []
    for d in sorted(placed, key=lambda d: (d["id"] in open_devices, d["silent"])):  # the ones that matter drawn last
        x, y = xy(d)
        color = "#c62828" if d["id"] in open_devices else "#b26a00" if d["silent"] else "#1a7f37"
        state = "open order" if d["id"] in open_devices else "silent" if d["silent"] else "reporting"
        dots.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{color}"><title>{escape(d["id"])} '
                    f'({escape(d["kind"])}, {escape(d["address"])}): {state}</title></circle>')
    legend = ('<text x="8" y="14" font-size="11">● <tspan fill="#c62828">open order</tspan> · '
              '<tspan fill="#b26a00">silent</tspan> · <tspan fill="#1a7f37">reporting</tspan> · north up</text>')
    return (f'<svg id="map" width="{MAP_W}" height="{MAP_H}" viewBox="0 0 {MAP_W} {MAP_H}" role="img" '
            f'aria-label="devices on a map" style="border:1px solid #ccc;background:#fafafa">{legend}'
            + "".join(dots) + "</svg>")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _table(headers: list[str], rows: list[list[str]], empty: str, css: str = "") -> str:
    if not rows:
        return f'<p class="empty">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; }
h2 { font-size: 1.1em; margin-top: 1.4em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { text-align: left; padding: 0.25em 0.8em 0.25em 0; border-bottom: 1px solid #eee; }
.tiles { display: flex; flex-wrap: wrap; gap: 0.8em; }
.tile { border: 1px solid #ccc; border-radius: 6px; padding: 0.5em 0.9em; min-width: 9em; }
.tile b { display: block; font-size: 1.5em; }
.ok { color: #1a7f37; } .bad { color: #c62828; } .warn { color: #b26a00; }
.sev-critical { color: #c62828; font-weight: bold; } .sev-major { color: #b26a00; }
.empty { color: #777; }
"""


_STATE_CSS = {"ok": "ok", "degraded": "warn", "down": "bad"}


def render(snap: dict) -> str:
    now = snap["at"]
    agent, orders, outbox = snap["agent"], snap["orders"], snap["outbox"]
    running = agent.get("running")
    uplink = snap.get("uplink", {})
    state = uplink.get("state", "unknown (agent not running)")
    state_css = {"ok": "ok", "failing": "bad"}.get(state, "warn")
    open_devices = {o["device"] for o in orders["open"]}
    # what needs attention first: silent devices, then those with an open order, then the rest
    devices = sorted(snap.get("devices", []), key=lambda d: (not d["silent"], d["id"] not in open_devices, d["id"]))
    silent = [d for d in devices if d["silent"]]
    backlog = outbox["unsent_orders"] + outbox["unsent_telemetry"]
    health = snap.get("health")
    tiles = [
        ("agent", "running" if running else "not running", "ok" if running else "bad"),
    ]
    if health is not None:
        bad = [p["name"] for p in health["parts"] if p["state"] != "ok"]
        tiles.append(("health", "ok" if not bad else escape(", ".join(bad)), "ok" if not bad else "bad"))
    tiles += [
        ("uplink", state, state_css),
        ("backlog", f'{backlog} <small>(oldest {_age(outbox["oldest_unsent_age_s"])})</small>',
         "ok" if backlog == 0 else "warn"),
        ("open orders", str(len(orders["open"])), ""),
        ("silent devices", f"{len(silent)} of {len(devices)}" if running else "-", "warn" if silent else "ok"),
        ("quarantined", str(sum(snap["quarantine"].values())), ""),
    ]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' content='10'>",
        f"<title>Gateway {escape(snap['gateway'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>Gateway {escape(snap['gateway'])}</h1>",
        f"<p>{_stamp(now)}"
        + (f" · up {_age(agent['uptime_s'])} · {agent['resident_bytes'] / 1e6:.0f} MB" if running and agent.get("resident_bytes") else "")
        + "</p>",
        '<div class="tiles">' + "".join(
            f'<div class="tile" id="tile-{escape(name.replace(" ", "-"))}">{escape(name)}<b class="{css}">{value}</b></div>'
            for name, value, css in tiles) + "</div>",
    ]
    if health is not None:
        parts.append("<h2>Health</h2>")
        parts.append(_table(
            ["part", "state", "since", "faults", "restarts", "what"],
            [[escape(p["name"]), f'<span class="{_STATE_CSS.get(p["state"], "warn")}">{escape(p["state"])}</span>',
              _when(p["since"], now), str(p["faults_total"]), str(p["restarts_total"]),
              escape(p["detail"] or p["last_error"] or "")] for p in health["parts"]],
            "No parts reported yet.", "health",
        ))
    checkpoint = snap.get("checkpoint")
    if checkpoint is not None:
        size = f'{checkpoint["bytes"] / 1e6:.1f} MB' if checkpoint.get("bytes") is not None else "-"
        error = f' · last error: <span class="bad">{escape(str(checkpoint["last_error"]))}</span>' \
            if checkpoint.get("last_error") else ""
        parts.append(f'<p id="checkpoint">Engine checkpoint: <b class="{"ok" if checkpoint.get("ok") else "bad"}">'
                     f'{"ok" if checkpoint.get("ok") else "failing"}</b> · {size} · '
                     + (f'written {_age(checkpoint["age_s"])} ago' if checkpoint.get("age_s") is not None
                        else "not written yet") + f'{error}</p>')
    parts.append("<h2>Uplink</h2>")
    if running:
        error = f' · last error: <span class="bad">{escape(uplink["last_error"])}</span>' if uplink["last_error"] else ""
        latency = f'{uplink["latency_last_s"] * 1000:.0f} ms' if uplink["latency_last_s"] is not None else "-"
        parts.append(
            f'<p id="uplink">{escape(uplink["mode"])} to {escape(uplink["url"])}: <b class="{state_css}">{escape(state)}</b>'
            f' · last answer {_when(uplink["last_ok_at"], now)} · latency {latency}'
            f' · acknowledged {uplink["uplinked"]} · errors {uplink["errors"]}{error}</p>'
        )
    parts.append(
        f'<p>Outbox: {outbox["unsent_orders"]} order revisions and {outbox["unsent_telemetry"]} telemetry summaries '
        f'waiting; oldest {_age(outbox["oldest_unsent_age_s"])}; {outbox["used_bytes"] / 1e6:.1f} MB in use.</p>'
    )
    downlink = snap.get("downlink")
    if downlink is not None:
        parts.append("<h2>Downlink</h2>")
        refused = ", ".join(f"{escape(r)} {n}" for r, n in sorted(downlink["refused"].items())) or "none"
        error = f' · last error: <span class="bad">{escape(downlink["last_error"])}</span>' if downlink["last_error"] else ""
        parts.append(f'<p id="downlink">changes applied {downlink["applied"]} · refused: {refused} · rule files applied '
                     f'{downlink["rule_files_applied"]}, refused {downlink["rule_files_refused"]}{error}</p>')
        last = downlink.get("last_refused_rule_file")
        if last:
            state = "bad" if downlink.get("refusal_pending") else "warn"
            parts.append(f'<p class="{state}">Last refused rule file from the platform: <b>{escape(last["file"] or "?")}</b> '
                         f'(change {last["seq"]}, {escape(last["reason"])}, {_when(last["at"], now)}); it was not '
                         f'written, the running rules stay:</p><pre id="refused-rule-file">{escape(last["detail"])}</pre>')
    parts.append("<h2>Open orders</h2>")
    parts.append(_table(
        ["opened", "device", "rule", "severity", "state", "rev", "grid", "address"],
        [[_order_link(o["id"], _when(o["opened_at"], now)), escape(o["device"]), escape(o["rule"]),
          f'<span class="sev-{escape(o["severity"])}">{escape(o["severity"])}</span>', escape(o["state"]),
          str(o["revision"]), escape(o["grid"]), escape(o["address"])] for o in orders["open"]],
        "No open orders.", "orders",
    ))
    parts.append("<h2>Rule errors</h2>")
    engine = snap.get("engine")
    if engine and engine["rule_errors"]:
        parts.append(f'<p class="bad">{engine["rule_errors"]} rule file load(s) refused; the previous rules kept '
                     f'running. Latest:</p><pre id="rule-error">{escape(engine["last_rule_error"])}</pre>')
    else:
        parts.append('<p class="empty">None.</p>' if engine else '<p class="empty">Unknown (agent not running).</p>')
    parts.append("<h2>Silent devices</h2>")
    parts.append(_table(
        ["device", "kind", "grid", "address", "last message"],
        [[escape(d["id"]), escape(d["kind"]), escape(d["grid"]), escape(d["address"]), _when(d["last_message_at"], now)]
         for d in silent],
        "None." if running else "Unknown (agent not running).", "silent",
    ))
    unknown = snap.get("unknown_devices_newest") or []
    if snap.get("unknown_devices"):
        parts.append(f"<h2>Unknown devices ({snap['unknown_devices']})</h2>")
        parts.append('<p class="empty">Sending messages but not in the registry (the newest; all of them: '
                     '<code>edge devices unknown</code>).</p>')
        parts.append(_table(
            ["device", "first seen", "last seen", "messages", "topic"],
            [[escape(u["device"]), _when(u["first_seen"], now), _when(u["last_seen"], now), str(u["count"]),
              escape(u["topic"])] for u in unknown], "", "unknown"))
    if running:
        parts.append("<h2>Map</h2>")
        parts.append(_map(devices, open_devices))
    if snap["quarantine"]:
        parts.append("<h2>Quarantined messages</h2>")
        parts.append(_table(["reason", "messages"], [[escape(r), str(n)] for r, n in snap["quarantine"].items()], ""))
    parts.append("<h2>Devices</h2>")
    parts.append(_table(
        ["device", "kind", "grid", "address", "last message", "status", "last readings"],
        [[escape(d["id"]), escape(d["kind"]), escape(d["grid"]), escape(d["address"]), _when(d["last_message_at"], now),
          '<span class="warn">silent</span>' if d["silent"] else '<span class="ok">reporting</span>',
          escape(" · ".join(f"{k} {_value(v)}" for k, v in d["readings"].items()))] for d in devices],
        "Unknown (agent not running).", "devices",
    ))
    parts.append('<p class="empty">Also: <a href="/metrics">/metrics</a> (Prometheus) · '
                 '<a href="/status.json">/status.json</a></p></body></html>')
    return "\n".join(parts)


def render_order(order: dict | None, order_id: str) -> str:
    """One order: what it is, its problems, its evidence and the timeline of its revisions."""
    head = (f"<!doctype html><html><head><meta charset='utf-8'><title>Order {escape(order_id)}</title>"
            f"<style>{STYLE}</style></head><body><p><a href='/'>status page</a></p><h1>Order {escape(order_id)}</h1>")
    if order is None:
        return head + '<p class="bad">No such order in gateway.db.</p></body></html>'
    facts = [("title", escape(order["title"])), ("state", escape(order["state"])),
             ("severity", f'<span class="sev-{escape(order["severity"])}">{escape(order["severity"])}</span>'),
             ("category", escape(order["category"])), ("grid / zone / team",
                                                       escape(f'{order["grid"]} / {order["zone"]} / {order["team"]}')),
             ("address", escape(order["address"])), ("opened (device time)", _stamp(order["opened_at"])),
             ("re-check", escape(order.get("verification") or "-")),
             ("repeat of", _order_link(order["repeat_of"], escape(order["repeat_of"])) if order.get("repeat_of") else "-")]
    parts = [head, _table(["", ""], [[escape(k), v] for k, v in facts], "")]
    parts.append("<h2>Problems</h2>")
    parts.append(_table(["rule", "device", "state", "joined (device time)"],
                        [[escape(m["rule"]), escape(m["device"]), escape(m["state"]), _stamp(m["joined_at"])]
                         for m in order["members"]], "None."))
    parts.append("<h2>Timeline</h2>")
    parts.append(_table(["revision", "at (gateway time)", "change", "state", "severity"],
                        [[str(e["revision"]), _stamp(e["at"]), escape(e["change"]), escape(e["state"]),
                          escape(e["severity"])] for e in order["timeline"]], "No revisions."))
    parts.append("<h2>Evidence</h2>")
    try:
        evidence = orjson.loads(order["evidence"]) if order.get("evidence") else []
    except orjson.JSONDecodeError:
        evidence = []
    parts.append(_table(["device", "metric", "value", "at (device time)", "condition"],
                        [[escape(str(e.get("device", ""))), escape(str(e.get("metric", ""))),
                          escape(_value(e["value"]) if isinstance(e.get("value"), (int, float, str)) else str(e.get("value", ""))),
                          escape(str(e.get("at", ""))), escape(str(e.get("condition", e.get("note", ""))))]
                         for e in evidence if isinstance(e, dict)], "None."))
    return "\n".join(parts) + "</body></html>"


def _stamp(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
