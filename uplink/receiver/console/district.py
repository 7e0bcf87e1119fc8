"""The district at a glance: an SVG map drawn from the orders' own positions (no map tiles, nothing
fetched), the live orders on it, and the open orders counted by grid.

Positions are what the orders carry (``location`` of the device that opened each order) and,
when the platform is given one (``$RECEIVER_REGISTRY``), a device registry in the gateways'
format (``id,kind,...,lat,lon,grid,zone,...``, as config/devices.csv): every device is a dot; a
grid is the rectangle around its devices, padded and labelled; a live order is a marker on its
device, coloured by severity and shaped by state. Longitude is scaled by the cosine of the
latitude, so the map is not stretched east-west.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import orjson

from uplink.receiver.console.orders import LIVE

__all__ = ["SEVERITY_COLOURS", "STATE_SHAPES", "Registry", "district"]

WIDTH, HEIGHT, MARGIN = 1000, 560, 40  # the SVG's viewBox, in its units
GRID_PAD = 16  # units around a grid's devices
GRID_MIN = 56  # units: the smallest a grid is drawn (one device, or devices in a line)
LABEL_CHAR = 7.6  # units a character of a grid's label takes, to keep labels inside the map
MIN_SPAN = 0.002  # degrees (about 200 m): a district narrower than this is drawn this wide
SEVERITY_COLOURS = {"critical": "#d1242f", "major": "#e8590c", "minor": "#d4a106", "info": "#2f7fc1"}
OTHER_COLOUR = "#7a828c"
# How a live order's state is drawn: its shape, and whether it is filled (hollow: nothing to do now)
STATE_SHAPES = {"opened": ("circle", True), "cleared": ("circle", False), "accepted": ("square", True),
                "dispatched": ("triangle", True), "resolved": ("diamond", False)}
SEVERITY_ORDER = ("critical", "major", "minor", "info")


@dataclass
class Projection:
    lon0: float
    lat0: float
    scale: float
    x0: float
    y0: float
    k: float  # cos(latitude)

    def __call__(self, lat: float, lon: float) -> tuple[float, float]:
        return (round(self.x0 + (lon - self.lon0) * self.k * self.scale, 1),
                round(self.y0 - (lat - self.lat0) * self.scale, 1))


def _projection(points: list[tuple[float, float]]) -> Projection:
    lats, lons = [p[0] for p in points], [p[1] for p in points]
    mid = (min(lats) + max(lats)) / 2
    k = max(math.cos(math.radians(mid)), 0.05)
    span_x = max((max(lons) - min(lons)) * k, MIN_SPAN)
    span_y = max(max(lats) - min(lats), MIN_SPAN)
    scale = min((WIDTH - 2 * MARGIN - 2 * GRID_PAD) / span_x, (HEIGHT - 2 * MARGIN - 2 * GRID_PAD) / span_y)
    centre_lon, centre_lat = (min(lons) + max(lons)) / 2, mid
    return Projection(centre_lon, centre_lat, scale, WIDTH / 2, HEIGHT / 2, k)


class Registry:
    """The devices of a registry file (id, kind, lat, lon, grid, zone), read again when the file changes."""

    def __init__(self, path: str | Path | None = None):
        given = path or os.environ.get("RECEIVER_REGISTRY") or ""
        self.path = Path(given) if given else None
        self._seen: tuple | None = None
        self._devices: list[dict] = []

    def devices(self) -> list[dict]:
        if self.path is None:
            return []
        try:
            stat = self.path.stat()
            if self._seen != (stat.st_mtime_ns, stat.st_size):
                rows = list(csv.DictReader(self.path.read_text(encoding="utf-8").splitlines()))
                self._devices = [d for d in (_registry_device(row) for row in rows) if d is not None]
                self._seen = (stat.st_mtime_ns, stat.st_size)
        except (OSError, UnicodeDecodeError, csv.Error):
            return self._devices  # the last good read (none if never)
        return self._devices


def _registry_device(row: dict) -> dict | None:
    try:
        lat, lon = float(row.get("lat") or "nan"), float(row.get("lon") or "nan")
    except ValueError:
        return None
    device = {"device": (row.get("id") or "").strip(), "grid": (row.get("grid") or "").strip(), "lat": lat, "lon": lon,
              "kind": (row.get("kind") or "").strip(), "last": None}
    return device if device["device"] and _located(device) else None


def _shape(kind: str, x: float, y: float, r: float) -> str:
    """SVG points for a polygon marker (square, triangle, diamond) of radius ``r`` around (x, y)."""
    if kind == "square":
        corners = [(x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r)]
    elif kind == "triangle":
        corners = [(x, y - r * 1.2), (x + r * 1.1, y + r * 0.8), (x - r * 1.1, y + r * 0.8)]
    else:  # diamond
        corners = [(x, y - r * 1.25), (x + r * 1.25, y), (x, y + r * 1.25), (x - r * 1.25, y)]
    return " ".join(f"{round(a, 1)},{round(b, 1)}" for a, b in corners)


def _located(row: dict) -> bool:
    lat, lon = row.get("lat"), row.get("lon")
    return (isinstance(lat, (int, float)) and isinstance(lon, (int, float)) and -90 <= lat <= 90
            and -180 <= lon <= 180 and not (lat == 0 and lon == 0))


def district(store, registry: Registry | None = None) -> dict:
    """The map (grids, devices, markers, viewBox) and the open orders counted by grid and state."""
    devices = store.db.read("SELECT device, grid, lat, lon, max(first_received_at) AS last FROM orders "
                            "WHERE lat IS NOT NULL AND lon IS NOT NULL GROUP BY device, grid, lat, lon")
    live = store.db.read(
        "SELECT order_id, state, severity, category, grid, zone, team, device, title, lat, lon, first_received_at, body "
        f"FROM orders WHERE state IN ({', '.join('?' for _ in LIVE)}) ORDER BY first_received_at", list(LIVE))
    devices = [d for d in devices if _located(d)]
    # one dot per device (its latest known position), grids from the devices in them
    where: dict[str, dict] = {str(d["device"]): d for d in (registry.devices() if registry else [])}
    for d in sorted(devices, key=lambda d: d["last"] or 0):
        where[str(d["device"])] = d  # where its orders say it is
    points = [(d["lat"], d["lon"]) for d in where.values()]
    result = {"width": WIDTH, "height": HEIGHT, "view": f"0 0 {WIDTH} {HEIGHT}", "grids": [], "devices": [],
              "markers": [], "unplaced": 0,
              "by_grid": _counts(live), "totals": _totals(live)}
    if not points:
        result["unplaced"] = len(live)
        return result
    project = _projection(points)
    boxes: dict[str, list[float]] = {}
    for d in where.values():
        x, y = project(d["lat"], d["lon"])
        result["devices"].append({"x": x, "y": y, "device": d["device"], "grid": d["grid"]})
        grid = str(d["grid"] or "?")
        box = boxes.setdefault(grid, [x, y, x, y])
        box[:] = [min(box[0], x), min(box[1], y), max(box[2], x), max(box[3], y)]
    open_by_grid = {g["grid"]: g["total"] for g in result["by_grid"]}
    for grid, (x1, y1, x2, y2) in sorted(boxes.items()):
        w, h = max(x2 - x1 + 2 * GRID_PAD, GRID_MIN), max(y2 - y1 + 2 * GRID_PAD, GRID_MIN)
        x, y = (x1 + x2 - w) / 2, (y1 + y2 - h) / 2
        label = grid + (f" · {open_by_grid[grid]} open" if open_by_grid.get(grid) else "")
        result["grids"].append({"name": grid, "x": round(x, 1), "y": round(y, 1), "w": round(w, 1), "h": round(h, 1),
                                "open": open_by_grid.get(grid, 0), "label": label,
                                "label_x": round(min(max(x + 6, 4), WIDTH - 4 - len(label) * LABEL_CHAR), 1),
                                "label_y": round(max(y - 6, 14), 1)})
    # live orders on their devices; several on one spot are set around it
    stacked: dict[tuple[float, float], int] = {}
    for order in live:
        if not _located(order):
            result["unplaced"] += 1
            continue
        x, y = project(order["lat"], order["lon"])
        n = stacked.get((x, y), 0)
        stacked[(x, y)] = n + 1
        if n:
            angle = n * 2.4  # the golden angle, so markers spread without lining up
            x, y = round(x + 11 * math.cos(angle), 1), round(y + 11 * math.sin(angle), 1)
        shape, filled = STATE_SHAPES.get(order["state"], ("circle", True))
        radius = 9 if order["severity"] == "critical" else 7.5
        colour = SEVERITY_COLOURS.get(order["severity"], OTHER_COLOUR)
        # the other devices of a grouped order: a ring each, tied to the order's marker
        members = []
        for device in sorted(_members(order["body"]) - {str(order["device"])}):
            at = where.get(device)
            if at is not None:
                mx, my = project(at["lat"], at["lon"])
                members.append({"x": mx, "y": my, "device": device})
        result["markers"].append({
            "x": x, "y": y, "r": radius, "shape": shape, "filled": filled,
            "points": _shape(shape, x, y, radius) if shape != "circle" else "", "colour": colour,
            "order_id": order["order_id"], "title": order["title"], "state": order["state"],
            "severity": order["severity"], "grid": order["grid"], "device": order["device"], "members": members})
    # the worst on top
    rank = {s: i for i, s in enumerate(reversed(SEVERITY_ORDER))}
    result["markers"].sort(key=lambda m: rank.get(m["severity"], -1))
    result["view"] = _view(result)
    return result


def _members(body: str) -> set[str]:
    """The devices an order's (latest) evidence names."""
    try:
        evidence = orjson.loads(body).get("evidence")
    except (orjson.JSONDecodeError, AttributeError):
        return set()
    if not isinstance(evidence, list):
        return set()
    return {e["device"] for e in evidence if isinstance(e, dict) and isinstance(e.get("device"), str)}


def _view(result: dict) -> str:
    """The SVG's viewBox: what was drawn (grids with their labels, devices, markers) and a margin, no more."""
    xs = [g["x"] for g in result["grids"]] + [g["x"] + g["w"] for g in result["grids"]]
    xs += [g["label_x"] + len(g["label"]) * LABEL_CHAR for g in result["grids"]]
    ys = [g["label_y"] - 14 for g in result["grids"]] + [g["y"] + g["h"] for g in result["grids"]]
    xs += [m["x"] - 12 for m in result["markers"]] + [m["x"] + 12 for m in result["markers"]]
    ys += [m["y"] - 12 for m in result["markers"]] + [m["y"] + 12 for m in result["markers"]]
    x1, x2, y1, y2 = max(min(xs) - 12, 0), min(max(xs) + 12, WIDTH), max(min(ys) - 12, 0), min(max(ys) + 12, HEIGHT)
    if y2 - y1 < 240:  # a district in a line still gets a map's height
        middle = (y1 + y2) / 2
        y1, y2 = middle - 120, middle + 120
    return f"{round(x1, 1)} {round(y1, 1)} {round(x2 - x1, 1)} {round(y2 - y1, 1)}"


def _counts(live: list[dict]) -> list[dict]:
    """Open orders by grid: by state, the worst severity, the zone and team(s)."""
    grids: dict[str, dict] = {}
    for order in live:
        grid = str(order["grid"] or "?")
        g = grids.setdefault(grid, {"grid": grid, "zones": set(), "teams": set(), "total": 0, "worst": None,
                                    **{state: 0 for state in LIVE}, **{s: 0 for s in SEVERITY_ORDER}})
        g["total"] += 1
        g[order["state"]] = g.get(order["state"], 0) + 1
        if order["severity"] in SEVERITY_ORDER:
            g[order["severity"]] += 1
            if g["worst"] is None or SEVERITY_ORDER.index(order["severity"]) < SEVERITY_ORDER.index(g["worst"]):
                g["worst"] = order["severity"]
        if order["zone"]:
            g["zones"].add(str(order["zone"]))
        if order["team"]:
            g["teams"].add(str(order["team"]))
    out = []
    for g in sorted(grids.values(), key=lambda g: g["grid"]):
        g["zones"], g["teams"] = ", ".join(sorted(g["zones"])), ", ".join(sorted(g["teams"]))
        out.append(g)
    return out


def _totals(live: list[dict]) -> dict:
    return {"open": len(live),
            "critical": sum(1 for o in live if o["severity"] == "critical"),
            "major": sum(1 for o in live if o["severity"] == "major"),
            "waiting": sum(1 for o in live if o["state"] in ("opened", "cleared")),
            "accepted": sum(1 for o in live if o["state"] == "accepted"),
            "dispatched": sum(1 for o in live if o["state"] == "dispatched"),
            "resolved": sum(1 for o in live if o["state"] == "resolved")}
