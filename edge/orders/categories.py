"""The category table: what a rule's ``order.category`` means to the district platform.

``config/categories.csv``, one row per category::

    key,code,name,class,accept_within,group,group_window
    manhole_cover_displaced,B010101,Manhole cover missing or displaced,component,15m,,

- ``key``: what rule files write in ``order.category``;
- ``code``: the platform's code, sent with every order. The shipped table is modelled on the
  national digital city-management classification of components (B: manhole covers,
  bins, ...) and events (S: exposed garbage, waterlogging, street vending, illegal
  parking, ...) as big class / middle class / item; replace the codes with your district's;
- ``class``: ``component`` (a thing that is broken) or ``event`` (something happening);
- ``accept_within``: how long the platform has to accept an order before the gateway
  escalates it (severity up one level, a new revision); empty: never escalated;
- ``group``, ``group_window``: categories with the same group name make one order per grid:
  a problem of the group that starts within ``group_window`` of a live order of the group
  in the same grid joins that order (with its evidence) instead of opening another. So three
  covers and a camera seeing water in one street in a storm make one order, not four;
- ``verify_within`` (optional column): after the platform resolves an order of the category,
  how long the sensors have to confirm the fix (edge/orders/verification.py); empty: the
  ``[orders] verify_within`` of the configuration.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from edge.engine.expr import parse_duration

COLUMNS = ("key", "code", "name", "class", "accept_within", "group", "group_window")
SEVERITIES = ("info", "minor", "major", "critical")


class CategoryError(Exception):
    """The table is unusable; the message names the file and line."""


@dataclass(frozen=True)
class Category:
    key: str
    code: str
    name: str
    kind: str
    accept_within: float | None
    group: str
    group_window: float | None
    verify_within: float | None = None


class Categories:
    def __init__(self, categories: list[Category]):
        self.by_key = {c.key: c for c in categories}

    def __contains__(self, key: str) -> bool:
        return key in self.by_key

    def get(self, key: str) -> Category | None:
        return self.by_key.get(key)

    def keys(self) -> set[str]:
        return set(self.by_key)

    def in_group(self, group: str) -> set[str]:
        return {c.key for c in self.by_key.values() if group and c.group == group}

    @classmethod
    def load(cls, path: Path) -> "Categories":
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise CategoryError(f"{path}: cannot read the category table: {error.strerror}") from None
        reader = csv.DictReader(text.splitlines())
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise CategoryError(f"{path}:1: missing column(s): {', '.join(missing)}")
        found: list[Category] = []
        seen: set[str] = set()
        for row in reader:
            line = reader.line_num
            key = (row["key"] or "").strip()
            if not key or key in seen:
                raise CategoryError(f"{path}:{line}: {'empty' if not key else 'repeated'} key {key!r}")
            seen.add(key)
            kind = (row["class"] or "").strip()
            if kind not in ("component", "event"):
                raise CategoryError(f"{path}:{line}: class must be component or event, not {kind!r}")
            try:
                accept = parse_duration(row["accept_within"]) if (row["accept_within"] or "").strip() else None
                group = parse_duration(row["group_window"]) if (row["group_window"] or "").strip() else None
                verify = parse_duration(row["verify_within"]) if (row.get("verify_within") or "").strip() else None
            except ValueError as error:
                raise CategoryError(f"{path}:{line}: {error}") from None
            if verify is not None and verify <= 0:
                raise CategoryError(f"{path}:{line}: verify_within must be longer than 0, or empty for the default")
            found.append(Category(key, (row["code"] or "").strip(), (row["name"] or "").strip(), kind, accept,
                                  (row["group"] or "").strip(), group, verify))
        return cls(found)


def escalated(severity: str) -> str:
    """One level up, at most critical."""
    index = SEVERITIES.index(severity) if severity in SEVERITIES else 0
    return SEVERITIES[min(index + 1, len(SEVERITIES) - 1)]
