"""The two numbers the district is judged by: how fast orders are handled, and how often a problem comes back.

By grid, zone, category and ISO week (of the platform's clock when the order first arrived):

- ``opened``: orders received;
- time to accept and to resolve: from the order's first arrival (``first_received_at``) to the
  platform's first ``accepted`` / ``resolved`` decision, both on the platform's clock; the
  median and the 90th percentile (linear between ranks, as numpy's default), over the orders
  accepted / resolved;
- share accepted within the category's ``accept_within`` (config/categories.csv) and share
  resolved within its resolve limit: the optional ``resolve_within`` column of the same table,
  else ``DEFAULT_RESOLVE_WITHIN`` (1 day) for every category. The share counts the orders whose
  outcome is known: handled (in time or late), or not handled with the limit already passed;
  orders still inside their limit, and orders rejected or closed without that step, are left
  out. An order of a category with no accept limit is left out of the accept share;
- repeat rate within 7 and 30 days: of the orders resolved, the share for which a new order for
  one of the same problems (same device and rule: the order's own, or any its evidence names)
  arrived within 7 / 30 days after the resolution. A resolution whose window is still running
  counts as not repeated (yet).

Percentiles are computed here, in Python, so SQLite and PostgreSQL give the same figures.
"""

from __future__ import annotations

import bisect
import csv
import datetime as dt
import io
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

__all__ = ["BY", "COLUMNS", "DEFAULT_RESOLVE_WITHIN", "Limits", "load_limits", "numbers", "percentile", "to_csv"]

BY = ("grid", "zone", "category", "week")
DEFAULT_RESOLVE_WITHIN = 86400.0  # s: the resolve limit of a category without resolve_within
REPEAT_DAYS = (7, 30)
DAY = 86400.0
CATEGORIES = Path(__file__).resolve().parents[3] / "config" / "categories.csv"
# (key, heading) of every figure, in the order of the tables and the CSV
COLUMNS = (
    ("opened", "opened"), ("accepted", "accepted"), ("accept_median_s", "accept median (s)"),
    ("accept_p90_s", "accept p90 (s)"), ("accept_in_time", "accepted in time"), ("accept_judged", "accept judged"),
    ("accept_share", "accepted within limit"), ("resolved", "resolved"), ("resolve_median_s", "resolve median (s)"),
    ("resolve_p90_s", "resolve p90 (s)"), ("resolve_in_time", "resolved in time"),
    ("resolve_judged", "resolve judged"), ("resolve_share", "resolved within limit"),
    ("repeats_7d", "repeats within 7 d"), ("repeat_rate_7d", "repeat rate 7 d"),
    ("repeats_30d", "repeats within 30 d"), ("repeat_rate_30d", "repeat rate 30 d"),
)


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values``, linear between the closest ranks; None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


_DURATION = re.compile(r"\s*(\d+\.?\d*|\.\d+)\s*([smhd]?)\s*")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(text: str | None) -> float | None:
    """``30m``, ``2h``, ``1d`` or seconds, as in categories.csv; None when empty or not a duration."""
    match = _DURATION.fullmatch(text or "")
    if not (text or "").strip() or match is None:
        return None
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


@dataclass(frozen=True)
class Limits:
    """Each category's limits (seconds), from categories.csv."""

    accept: dict[str, float]
    resolve: dict[str, float]
    source: str
    has_resolve_column: bool

    def resolve_within(self, category: str | None) -> float:
        return self.resolve.get(category or "", DEFAULT_RESOLVE_WITHIN)


def load_limits(path: str | Path | None = None) -> Limits:
    """The category table (``$RECEIVER_CATEGORIES``, else the shipped config/categories.csv); empty if unreadable."""
    path = Path(path or os.environ.get("RECEIVER_CATEGORIES") or CATEGORIES)
    try:
        reader = csv.DictReader(path.read_text(encoding="utf-8").splitlines())
        rows = list(reader)
        has_resolve = "resolve_within" in (reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return Limits({}, {}, f"{path} (not readable: no limits)", False)
    accept, resolve = {}, {}
    for row in rows:
        key = (row.get("key") or "").strip()
        if not key:
            continue
        if (a := _duration(row.get("accept_within"))) is not None:
            accept[key] = a
        if (r := _duration(row.get("resolve_within"))) is not None:
            resolve[key] = r
    return Limits(accept, resolve, str(path), has_resolve)


def week(seconds: float) -> str:
    year, number, _ = dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isocalendar()
    return f"{year}-W{number:02d}"


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _judge(start: float, done: float | None, limit: float | None, dropped: bool, now: float) -> bool | None:
    """In time (True), late (False), or not judged (None) for one order and one limit."""
    if limit is None:
        return None
    if done is not None:
        return done - start <= limit
    if dropped or now - start <= limit:
        return None  # rejected or closed without the step, or still inside its limit
    return False


def numbers(store, limits: Limits, now: float | None = None) -> dict:
    """Every table: {"grid": [rows...], "zone": [...], "category": [...], "week": [...]}, each row the
    group's value (``key``) and its figures; the last row of each is ``all``."""
    now = time.time() if now is None else now
    orders = store.db.read("SELECT order_id, grid, zone, category, device, rule, first_received_at, accepted_at, "
                           "resolved_at, closed_at FROM orders")
    # each problem's arrivals (device, rule) -> sorted first_received_at, for the repeat rate
    arrivals: dict[tuple, list[tuple[float, str]]] = {}
    for o in orders:
        arrivals.setdefault((o["device"], o["rule"]), []).append((o["first_received_at"], o["order_id"]))
    for times in arrivals.values():
        times.sort()
    members = _members(store)
    facts = []
    for o in orders:
        start = o["first_received_at"]
        accepted, resolved, closed = o["accepted_at"], o["resolved_at"], o["closed_at"]
        fact = {
            "grid": o["grid"] or "", "zone": o["zone"] or "", "category": o["category"] or "", "week": week(start),
            "accept_time": max(accepted - start, 0.0) if accepted is not None else None,
            "resolve_time": max(resolved - start, 0.0) if resolved is not None else None,
            "accept_ok": _judge(start, accepted, limits.accept.get(o["category"] or ""),
                                closed is not None and accepted is None, now),
            "resolve_ok": _judge(start, resolved, limits.resolve_within(o["category"]),
                                 closed is not None and resolved is None, now),
            "repeat": {},
        }
        if resolved is not None:
            problems = {(o["device"], o["rule"])} | members.get(o["order_id"], set())
            for days in REPEAT_DAYS:
                fact["repeat"][days] = any(_arrived(arrivals.get(p, []), o["order_id"], resolved, resolved + days * DAY)
                                           for p in problems)
        facts.append(fact)
    return {by: _table(facts, by) for by in BY}


def _members(store) -> dict[str, set[tuple]]:
    """The problems (device, rule) the evidence of each resolved order names."""
    out: dict[str, set[tuple]] = {}
    for row in store.db.read("SELECT order_id, body FROM orders WHERE resolved_at IS NOT NULL"):
        evidence = orjson.loads(row["body"]).get("evidence")
        if isinstance(evidence, list):
            out[row["order_id"]] = {(e.get("device"), e.get("rule")) for e in evidence
                                    if isinstance(e, dict) and isinstance(e.get("device"), str) and isinstance(e.get("rule"), str)}
    return out


def _arrived(times: list[tuple[float, str]], order_id: str, after: float, until: float) -> bool:
    """Whether another order of the problem arrived in (after, until]."""
    i = bisect.bisect_right(times, (after, "\uffff"))
    while i < len(times) and times[i][0] <= until:
        if times[i][1] != order_id:
            return True
        i += 1
    return False


def _figures(facts: list[dict]) -> dict:
    accept = [f["accept_time"] for f in facts if f["accept_time"] is not None]
    resolve = [f["resolve_time"] for f in facts if f["resolve_time"] is not None]
    accept_judged = [f["accept_ok"] for f in facts if f["accept_ok"] is not None]
    resolve_judged = [f["resolve_ok"] for f in facts if f["resolve_ok"] is not None]
    out = {"opened": len(facts), "accepted": len(accept), "accept_median_s": _round(percentile(accept, 0.5)),
           "accept_p90_s": _round(percentile(accept, 0.9)), "accept_in_time": sum(accept_judged),
           "accept_judged": len(accept_judged), "accept_share": _share(sum(accept_judged), len(accept_judged)),
           "resolved": len(resolve), "resolve_median_s": _round(percentile(resolve, 0.5)),
           "resolve_p90_s": _round(percentile(resolve, 0.9)), "resolve_in_time": sum(resolve_judged),
           "resolve_judged": len(resolve_judged), "resolve_share": _share(sum(resolve_judged), len(resolve_judged))}
    for days in REPEAT_DAYS:
        repeats = sum(1 for f in facts if f["repeat"].get(days))
        out[f"repeats_{days}d"] = repeats
        out[f"repeat_rate_{days}d"] = _share(repeats, len(resolve))
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _table(facts: list[dict], by: str) -> list[dict]:
    groups: dict[str, list[dict]] = {}
    for fact in facts:
        groups.setdefault(fact[by], []).append(fact)
    rows = [{"key": key, **_figures(group)} for key, group in sorted(groups.items())]
    rows.append({"key": "all", **_figures(facts)})
    return rows


def _cell(value) -> str:
    """A CSV cell a spreadsheet will not run as a formula (a value from a gateway could start with '=')."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def to_csv(rows: list[dict], by: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([by, *(key for key, _ in COLUMNS)])
    for row in rows:
        writer.writerow([_cell(row["key"]), *(_cell(row[key]) for key, _ in COLUMNS)])
    return out.getvalue()
