"""The gateways as the command centre sees them, and rule files pushed to them.

Each gateway: when it was last heard from (stale after ``STALE_AFTER``), what its last health
summary says (backlog, rules version, rule files it refused and why, parts not ok, software),
its clock skew (the platform's clock when the summary arrived minus the gateway's clock in it:
positive, the gateway is behind; the link's delay is in it too), and the zones of its orders.
A gateway too old to send a health summary shows "—" for what only the summary tells.

A rule file is pushed to one gateway, to every gateway of a zone (the zones of its orders) or
to all, as one change per gateway in its changes feed. Each gateway's answer comes back as a
report (type ``rules``, with the change's ``seq``, applied or refused with the problems found).
"""

from __future__ import annotations

import re
import time

from uplink.receiver.times import epoch

__all__ = ["FILE_NAME", "MAX_RULE_FILE", "STALE_AFTER", "PushError", "fleet", "gateways_for", "pushes", "targets"]

TELEMETRY_INTERVAL = 300.0  # s: a running gateway uplinks telemetry every 5 minutes ([outbox] telemetry_interval),
# and an idle one its health summary every minute ([uplink] health_interval)
STALE_AFTER = 3 * TELEMETRY_INTERVAL  # s without any contact before a gateway is flagged: three intervals missed
SKEW_WARN = 30.0  # s of clock skew worth a warning (device times and the gateway's are compared with it)
# The names and sizes a gateway takes (uplink/downlink.py FILE_NAME, edge/engine/rules.py MAX_FILE_BYTES)
FILE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}\.ya?ml")
MAX_RULE_FILE = 256 * 1024
PUSH_GAP = 5.0  # s: rule changes of one file by one person this close together are one push


class PushError(ValueError):
    """A push the console refuses before anything is queued; the message says why."""


def _get(mapping, *path):
    for step in path:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(step)
    return mapping


def _zones(store) -> dict[str, list[str]]:
    zones: dict[str, list[str]] = {}
    for row in store.db.read("SELECT DISTINCT gateway, zone FROM orders WHERE zone IS NOT NULL AND zone <> '' "
                             "ORDER BY gateway, zone"):
        zones.setdefault(row["gateway"], []).append(row["zone"])
    return zones


def fleet(store, now: float | None = None) -> list[dict]:
    """Every gateway the platform knows (heard from, or named by an order), with what the console shows of it."""
    now = time.time() if now is None else now
    known = {row["gateway"]: row for row in store.gateways()}
    for row in store.db.read("SELECT gateway, min(first_received_at) AS first, max(received_at) AS last "
                             "FROM orders GROUP BY gateway"):
        known.setdefault(row["gateway"], {"gateway": row["gateway"], "first_contact": row["first"],
                                          "last_contact": row["last"], "batches": None, "items": None,
                                          "health": None, "health_at": None})
    zones = _zones(store)
    live = {row["gateway"]: row["n"] for row in store.db.read(
        "SELECT gateway, count(*) AS n FROM orders WHERE state NOT IN ('closed', 'rejected') GROUP BY gateway")}
    refused_reports = _refused_rule_files(store)
    out = []
    for name in sorted(known):
        g = dict(known[name])
        health = g["health"] if isinstance(g.get("health"), dict) else None
        age = now - g["last_contact"] if g.get("last_contact") is not None else None
        g["age"] = age
        g["stale"] = age is None or age > STALE_AFTER
        g["zones"] = zones.get(name, [])
        g["live_orders"] = live.get(name, 0)
        backlog = _get(health, "backlog")
        g["backlog"] = {k: _get(backlog, k) for k in ("revisions", "telemetry", "reports")} if isinstance(backlog, dict) else None
        g["rules_version"] = _get(health, "rules", "version")
        files = _get(health, "rules", "files")
        g["rule_files"] = [str(f) for f in files] if isinstance(files, list) else None
        refused = _get(health, "rules", "refused")
        if isinstance(refused, list):
            g["refused"] = [r for r in refused if isinstance(r, dict)]
        else:  # an older gateway: what its reports said
            g["refused"] = refused_reports.get(name, [])
        parts = _get(health, "parts")
        g["parts_not_ok"] = ({k: v for k, v in parts.items() if v != "ok"} if isinstance(parts, dict) else None)
        g["software"] = _get(health, "software")
        at = epoch(_get(health, "at"))
        g["skew"] = round(g["health_at"] - at, 1) if at is not None and g.get("health_at") is not None else None
        g["skew_warn"] = g["skew"] is not None and abs(g["skew"]) > SKEW_WARN
        started = epoch(_get(health, "started_at"))
        g["uptime"] = (at - started) if at is not None and started is not None else None
        out.append(g)
    return out


def _refused_rule_files(store) -> dict[str, list[dict]]:
    """Per gateway, the rule files whose last report is a refusal (for gateways without a health summary)."""
    last: dict[tuple[str, str], dict] = {}
    for row in store.db.read("SELECT gateway, seq, status, reason, detail, file, at FROM reports "
                             "WHERE type = 'rules' ORDER BY received_at, seq"):
        last[(row["gateway"], row["file"] or "")] = row
    out: dict[str, list[dict]] = {}
    for (gateway, file), row in last.items():
        if row["status"] == "refused":
            out.setdefault(gateway, []).append({"file": file, "reason": row["reason"], "detail": row["detail"],
                                                "at": row["at"]})
    return out


def targets(store) -> dict:
    """What a push can go to: each gateway, each zone (with its gateways), all."""
    names = sorted({g["gateway"] for g in fleet(store)})
    by_zone: dict[str, list[str]] = {}
    for gateway, zones in _zones(store).items():
        for zone in zones:
            by_zone.setdefault(zone, []).append(gateway)
    return {"gateways": names, "zones": {z: sorted(gs) for z, gs in sorted(by_zone.items())}}


def gateways_for(store, target: str) -> list[str]:
    """The gateways of ``gateway:NAME``, ``zone:NAME`` or ``all``; PushError when there are none."""
    known = targets(store)
    kind, _, name = target.partition(":")
    if kind == "gateway" and name in known["gateways"]:
        return [name]
    if kind == "zone" and name in known["zones"]:
        return known["zones"][name]
    if target == "all" and known["gateways"]:
        return known["gateways"]
    raise PushError(f"no gateway to push to for {target!r}: choose a gateway, a zone or all")


def check_rule_file(name: str, content: str) -> None:
    if not FILE_NAME.fullmatch(name):
        raise PushError(f"file name {name!r}: letters, digits, _ . - ending in .yaml or .yml, no folder "
                        "(at most 100 characters)")
    if not content.strip():
        raise PushError("the rule file is empty")
    if len(content.encode("utf-8", "surrogatepass")) > MAX_RULE_FILE:
        raise PushError(f"the rule file is over {MAX_RULE_FILE // 1024} KiB, which the gateways refuse")
    if "\x00" in content:
        raise PushError("the rule file contains a NUL character")


def pushes(store, limit: int = 200) -> list[dict]:
    """The latest rule files pushed, newest first, each push with every gateway's answer so far.

    An answer is the gateway's report on that change (same gateway and seq): applied, or refused
    with its reason and the problems found; ``waiting`` until it comes.
    """
    rows = store.db.read("SELECT seq, gateway, note AS file, length(content) AS size, at, actor FROM changes "
                         "WHERE type = 'rules' ORDER BY seq DESC LIMIT ?", [limit])
    answers: dict[tuple[str, int], dict] = {}
    if rows:
        seqs = [row["seq"] for row in rows]
        for report in store.db.read(
                "SELECT gateway, seq, status, reason, detail, file, at, received_at FROM reports WHERE type = 'rules' "
                f"AND seq IN ({', '.join('?' for _ in seqs)})", seqs):
            answers[(report["gateway"], report["seq"])] = report
    out: list[dict] = []
    for row in rows:
        answer = answers.get((row["gateway"], row["seq"]))
        if answer is not None and answer["file"] not in (None, "", row["file"]):
            answer = None  # a report of another file under this number: not this push's answer
        target = {"gateway": row["gateway"], "seq": row["seq"], "status": answer["status"] if answer else "waiting",
                  "reason": answer["reason"] if answer else "", "detail": answer["detail"] if answer else "",
                  "answered_at": answer["received_at"] if answer else None}
        push = out[-1] if out else None
        if (push is not None and push["file"] == row["file"] and push["actor"] == row["actor"]
                and abs(push["at"] - row["at"]) <= PUSH_GAP):
            push["targets"].append(target)
            push["at"] = min(push["at"], row["at"])
        else:
            out.append({"file": row["file"], "actor": row["actor"], "at": row["at"], "size": row["size"],
                        "targets": [target]})
    for push in out:
        push["targets"].sort(key=lambda t: t["gateway"])
        statuses = [t["status"] for t in push["targets"]]
        push["counts"] = {s: statuses.count(s) for s in ("applied", "refused", "waiting")}
    return out
