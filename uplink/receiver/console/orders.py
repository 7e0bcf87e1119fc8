"""The orders as the console shows them: the filtered, sorted, paged list, and one order whole.

Filters and sorts are SQL with bound parameters; a sort is a name from ``SORTS`` (a whitelist),
so nothing from the address reaches the SQL text. The SQL runs on SQLite and PostgreSQL alike.

One order gathers every problem it stands for (a grouped flooding order: the camera and each
cover that saw the water) from the evidence of all its revisions, and its timeline from both
sides: the gateway's revisions and the platform's decisions, each decision with what the
gateway did with it (applied, refused and why, or not yet fetched).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from urllib.parse import urlencode

import orjson

from uplink.receiver.times import epoch

__all__ = ["ACTIONS", "FILTERS", "NEXT_STEPS", "OrderQuery", "PAGE_SIZE", "SORTS", "decision_note", "load_order",
           "next_steps", "order_list", "choices"]

PAGE_SIZE = 50
SEVERITIES = ("critical", "major", "minor", "info")
STATES = ("opened", "cleared", "accepted", "dispatched", "resolved", "closed", "rejected")
LIVE = ("opened", "cleared", "accepted", "dispatched", "resolved")  # not closed or rejected
FILTERS = ("state", "severity", "category", "grid", "zone", "team", "gateway")
SEVERITY_RANK = ("CASE severity WHEN 'critical' THEN 4 WHEN 'major' THEN 3 WHEN 'minor' THEN 2 "
                 "WHEN 'info' THEN 1 ELSE 0 END")
STATE_RANK = "CASE state " + " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(STATES)) + f" ELSE {len(STATES)} END"
# The columns the list sorts by: the name in the address -> the SQL it sorts by.
SORTS = {
    "received": "first_received_at", "opened": "opened_at", "updated": "received_at", "severity": SEVERITY_RANK,
    "state": STATE_RANK, "title": "title", "grid": "grid", "zone": "zone", "team": "team", "category": "category",
    "device": "device", "gateway": "gateway", "order": "order_id",
}
COLUMNS = ("order_id, gateway, revision, change, state, severity, category, grid, zone, team, device, device_kind, rule, "
           "title, address, verification, repeat_of, lat, lon, opened_at, updated_at, first_received_at, received_at, "
           "accepted_at, dispatched_at, resolved_at, closed_at")

# The console's buttons: action -> the state it asks for.
ACTIONS = {"accept": "accepted", "dispatch": "dispatched", "resolve": "resolved", "close": "closed", "reject": "rejected"}
# What the console offers in each state: the district's workflow, within what the gateway accepts
# (edge/orders/book.py PLATFORM_TRANSITIONS). Close only after a resolution (the sensors'
# re-check comes first); a resolved order may be dispatched again (the crew goes back).
NEXT_STEPS = {
    "opened": ("accept", "reject"),
    "cleared": ("accept", "reject"),
    "accepted": ("dispatch", "reject"),
    "dispatched": ("resolve",),
    "resolved": ("close", "dispatch"),
}


def next_steps(state: str | None) -> tuple[str, ...]:
    return NEXT_STEPS.get(state or "", ())


def _utc(text: str, end: bool) -> float | None:
    """``2026-12-03`` or ``2026-12-03T14:05`` (UTC) as epoch seconds; a date alone ends at its last second."""
    text = (text or "").strip()
    seconds = epoch(text) if text else None
    if seconds is None:
        return None
    if end and len(text) == 10:  # a whole day
        seconds += 86400
    return seconds


@dataclass(frozen=True)
class OrderQuery:
    """What the order list shows: the filters, the sort and the page (from and back to the address)."""

    state: str = "live"  # live, any, or one state
    severity: str = ""
    category: str = ""
    grid: str = ""
    zone: str = ""
    team: str = ""
    gateway: str = ""
    since: str = ""  # received from (UTC date or date and time)
    until: str = ""
    q: str = ""  # words in the title, address, device or order id
    sort: str = "received"
    dir: str = "desc"
    page: int = 1

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> OrderQuery:
        values = {}
        for f in fields(cls):
            raw = params.get(f.name)
            if raw is None:
                continue
            if f.name == "page":
                values["page"] = int(raw) if raw.isdigit() and 0 < int(raw) < 10**6 else 1
            else:
                values[f.name] = raw.strip()[:200]
        query = cls(**values)
        if query.sort not in SORTS:
            query = replace(query, sort="received")
        if query.dir not in ("asc", "desc"):
            query = replace(query, dir="desc")
        return query

    def where(self) -> tuple[str, list]:
        clauses, args = [], []
        if self.state == "live":
            clauses.append(f"state IN ({', '.join('?' for _ in LIVE)})")
            args += LIVE
        elif self.state and self.state != "any":
            clauses.append("state = ?")
            args.append(self.state)
        for name in FILTERS[1:]:
            value = getattr(self, name)
            if value:
                clauses.append(f"{name} = ?")
                args.append(value)
        since, until = _utc(self.since, False), _utc(self.until, True)
        if since is not None:
            clauses.append("first_received_at >= ?")
            args.append(since)
        if until is not None:
            clauses.append("first_received_at < ?")
            args.append(until)
        for word in self.q.split()[:5]:
            pattern = "%" + word.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            clauses.append("(" + " OR ".join(f"lower(coalesce({c}, '')) LIKE ? ESCAPE '\\'"
                                             for c in ("title", "address", "device", "order_id")) + ")")
            args += [pattern] * 4
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def order_by(self) -> str:
        expression, direction = SORTS[self.sort], self.dir.upper()
        # NULLs last whichever the direction and the database; the order id breaks ties
        return f" ORDER BY ({expression}) IS NULL, {expression} {direction}, order_id {direction}"

    def link(self, **changes) -> str:
        """The address's query for this list with ``changes`` (the defaults left out)."""
        query = replace(self, **changes)
        default = OrderQuery()
        pairs = [(f.name, getattr(query, f.name)) for f in fields(query)
                 if getattr(query, f.name) != getattr(default, f.name)]
        return urlencode(pairs)

    def sort_link(self, name: str) -> str:
        """Sort by ``name``; the same column again turns the direction."""
        direction = ("asc" if self.dir == "desc" else "desc") if self.sort == name else \
            ("asc" if name in ("title", "grid", "zone", "team", "category", "device", "gateway", "order") else "desc")
        return self.link(sort=name, dir=direction, page=1)


def order_list(store, query: OrderQuery, page_size: int = PAGE_SIZE) -> dict:
    """One page of the list: ``rows`` (with each order's latest decision), ``total``, ``pages``, ``page``."""
    where, args = query.where()
    total = store.db.read_one(f"SELECT count(*) AS n FROM orders{where}", args)["n"]
    pages = max(1, math.ceil(total / page_size))
    page = min(query.page, pages)
    rows = store.db.read(f"SELECT {COLUMNS} FROM orders{where}{query.order_by()} LIMIT ? OFFSET ?",
                         [*args, page_size, (page - 1) * page_size])
    latest = _latest_decisions(store, [row["order_id"] for row in rows])
    for row in rows:
        decision = latest.get(row["order_id"])
        row["decision"] = decision
        # a decision newer than the gateway's last revision is still on its way
        row["pending"] = decision["state"] if decision and decision["at"] > row["received_at"] else None
    return {"rows": rows, "total": total, "pages": pages, "page": page, "page_size": page_size}


def _latest_decisions(store, order_ids: list[str]) -> dict[str, dict]:
    if not order_ids:
        return {}
    marks = ", ".join("?" for _ in order_ids)
    rows = store.db.read(f"SELECT order_id, seq, state, at, actor FROM changes WHERE type = 'order' "
                         f"AND order_id IN ({marks}) ORDER BY seq", order_ids)
    return {row["order_id"]: row for row in rows}


def choices(store) -> dict[str, list[str]]:
    """The values each filter can take (those the orders have), for the filters' menus."""
    out = {}
    for name in FILTERS[1:]:
        rows = store.db.read(f"SELECT DISTINCT {name} AS v FROM orders WHERE {name} IS NOT NULL ORDER BY {name}")
        out[name] = [row["v"] for row in rows if row["v"] != ""][:500]
    out["state"] = list(STATES)
    order = {s: i for i, s in enumerate(SEVERITIES)}
    out["severity"].sort(key=lambda s: order.get(s, len(order)))
    return out


# -- one order ------------------------------------------------------------------------------

def _evidence(body: dict) -> list[dict]:
    evidence = body.get("evidence")
    return [e for e in evidence if isinstance(e, dict)] if isinstance(evidence, list) else []


def _key(entry: dict) -> bytes:
    return orjson.dumps(entry, option=orjson.OPT_SORT_KEYS, default=str)


def problems(order: dict, revisions: list[dict]) -> list[dict]:
    """Every problem (device, rule) the order stands for, from all its revisions' evidence.

    Each: device, rule, first and last (device times of its evidence), readings (evidence
    entries, each counted once though later revisions repeat it), its metrics' latest values,
    the conditions seen, the revision it joined in and how (opened, grouped...).
    """
    found: dict[tuple[str, str], dict] = {}
    seen: set[bytes] = set()

    def problem(device: str, rule: str, revision: int | None, change: str) -> dict:
        key = (device, rule)
        if key not in found:
            found[key] = {"device": device, "rule": rule, "first": None, "last": None, "first_at": None,
                          "last_at": None, "readings": 0, "metrics": {}, "conditions": [], "notes": [],
                          "joined_revision": revision, "joined_change": change}
        return found[key]

    if order.get("device"):
        problem(str(order["device"]), str(order.get("rule") or ""), 1, "opened")
    for body in revisions:
        for entry in _evidence(body):
            mark = _key(entry)
            if mark in seen:
                continue  # a later revision repeats the evidence before it (its last 20 entries)
            seen.add(mark)
            p = problem(str(entry.get("device") or "?"), str(entry.get("rule") or order.get("rule") or ""),
                        body.get("revision"), str(body.get("change") or ""))
            p["readings"] += 1
            at = epoch(entry.get("at"))
            if at is not None:
                if p["first"] is None or at < p["first"]:
                    p["first"], p["first_at"] = at, entry.get("at")
                if p["last"] is None or at >= p["last"]:
                    p["last"], p["last_at"] = at, entry.get("at")
            metric = entry.get("metric")
            if metric is not None:
                previous = p["metrics"].get(str(metric))
                if previous is None or at is None or previous[2] is None or at >= previous[2]:
                    p["metrics"][str(metric)] = (entry.get("value"), entry.get("at"), at)
            condition = entry.get("condition")
            if condition and str(condition) not in p["conditions"]:
                p["conditions"].append(str(condition))
            note = entry.get("note")
            if note and str(note) not in p["notes"]:
                p["notes"].append(str(note))
    return list(found.values())


def _decision_status(decision: dict, revisions: list[dict], refusals: dict[int, dict]) -> tuple[str, str]:
    """What the gateway did with a decision: (applied|refused|waiting, detail)."""
    refusal = refusals.get(decision["seq"])
    if refusal is not None:
        return "refused", f"{refusal['reason']}: {refusal['detail']}".strip(": ")
    for body in revisions:
        received = body.get("received_at")
        if body.get("change") == decision["state"] and isinstance(received, (int, float)) and received >= decision["at"]:
            return "applied", f"revision {body.get('revision')}"
    return "waiting", "not yet applied by the gateway"


def load_order(store, order_id: str) -> dict | None:
    """One order: its row, latest body, problems, timeline, decisions and the state the next step starts from."""
    row = store.db.read_one(f"SELECT {COLUMNS}, body FROM orders WHERE order_id = ?", [order_id])
    if row is None:
        return None
    body = orjson.loads(row.pop("body"))
    revisions = store.order_revisions(order_id)
    decisions = store.decisions(order_id)
    refusals: dict[int, dict] = {}
    if decisions:
        seqs = [d["seq"] for d in decisions]
        for report in store.db.read(
                f"SELECT seq, status, reason, detail, received_at FROM reports WHERE gateway = ? AND type = 'order' "
                f"AND status = 'refused' AND seq IN ({', '.join('?' for _ in seqs)})", [row["gateway"], *seqs]):
            refusals[report["seq"]] = report
    timeline: list[dict] = []
    before: set[tuple[str, str]] = set()
    for revision in revisions:
        keys = {(str(e.get("device")), str(e.get("rule"))) for e in _evidence(revision)}
        joined = sorted(keys - before) if revision.get("change") == "grouped" else []
        before |= keys
        entry = {"side": "gateway", "at": revision.get("received_at"), "revision": revision.get("revision"),
                 "last_revision": revision.get("revision"), "times": 1, "change": revision.get("change"),
                 "state": revision.get("state"), "severity": revision.get("severity"),
                 "gateway_at": revision.get("updated_at"), "verification": revision.get("verification"),
                 "joined": joined}
        previous = timeline[-1] if timeline else None
        if (previous is not None and entry["change"] == "updated" and previous["change"] == "updated"
                and all(previous[k] == entry[k] for k in ("state", "severity", "verification"))):
            # a problem getting worse reading by reading: one line for the run
            previous.update(last_revision=entry["revision"], times=previous["times"] + 1,
                            last_at=entry["at"], last_gateway_at=entry["gateway_at"])
            continue
        timeline.append(entry)
    for decision in decisions:
        status, detail = _decision_status(decision, revisions, refusals)
        decision.update(status=status, status_detail=detail)
        timeline.append({"side": "platform", "at": decision["at"], "seq": decision["seq"], "state": decision["state"],
                         "note": decision["note"], "actor": decision["actor"], "status": status, "detail": detail})
    timeline.sort(key=lambda entry: (entry["at"] if isinstance(entry["at"], (int, float)) else 0,
                                     0 if entry["side"] == "gateway" else 1))
    last = decisions[-1] if decisions else None
    waiting = last if last is not None and last["status"] == "waiting" else None
    state = waiting["state"] if waiting else row["state"]
    return {"row": row, "body": body, "revisions": revisions, "problems": problems(row, revisions),
            "timeline": timeline, "decisions": decisions, "waiting": waiting, "state": state,
            "steps": next_steps(state)}


def decision_note(action: str, team: str, note: str) -> str:
    """The note sent with a decision: the team a dispatch goes to, then the operator's words."""
    note = note.strip()
    if action == "dispatch" and team.strip():
        return f"team {team.strip()}" + (f": {note}" if note else "")
    return note
