"""The device registry: which devices exist, where they are, and who looks after them.

A district's asset list exports to CSV, so that is the format::

    id,kind,model,address,lat,lon,grid,zone,team,depth_cm
    MH-0001,manhole_cover,MC-200,12 Jiefang Rd,31.2301,121.4701,G01,Z1,team-north,180

The first nine columns are fixed. An optional ``tags`` column holds tags separated by ``;``
(``school;flood_prone``) that rules can select on. Every further column is a numeric per-device parameter
(a bin's depth, a cover's depth to the water) that rules read as ``device.<column>``; an
empty cell means the device has no such parameter.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from edge.kinds import KINDS

FIXED_COLUMNS = ("id", "kind", "model", "address", "lat", "lon", "grid", "zone", "team")


class RegistryError(Exception):
    """The registry file is unusable; the message names the file and line."""


@dataclass(frozen=True)
class Device:
    id: str
    kind: str
    model: str
    address: str
    lat: float
    lon: float
    grid: str
    zone: str
    team: str
    index: int
    params: dict[str, float] = field(default_factory=dict)
    tags: tuple[str, ...] = ()


class Registry:
    """Devices by id, each with a dense index used by the engine's state arrays."""

    def __init__(self, devices: list[Device], param_names: list[str]):
        self.devices = devices
        self.param_names = param_names
        self.by_id = {d.id: d for d in devices}

    def __len__(self) -> int:
        return len(self.devices)

    def get(self, device_id: str) -> Device | None:
        return self.by_id.get(device_id)

    def param(self, device: Device, name: str) -> float:
        return device.params.get(name, math.nan)

    @classmethod
    def load(cls, path: Path) -> "Registry":
        try:
            handle = path.open(newline="", encoding="utf-8")
        except OSError as error:
            raise RegistryError(f"{path}: cannot read the device registry: {error.strerror}") from None
        with handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            missing = [c for c in FIXED_COLUMNS if c not in header]
            if missing:
                raise RegistryError(f"{path}:1: missing column(s): {', '.join(missing)}")
            param_names = [c for c in header if c not in FIXED_COLUMNS and c != "tags"]
            devices: list[Device] = []
            seen: dict[str, int] = {}
            for row in reader:
                line = reader.line_num
                device_id = (row["id"] or "").strip()
                if not device_id:
                    raise RegistryError(f"{path}:{line}: empty device id")
                if device_id in seen:
                    raise RegistryError(f"{path}:{line}: device {device_id} already listed on line {seen[device_id]}")
                seen[device_id] = line
                kind = row["kind"].strip()
                if kind not in KINDS:
                    raise RegistryError(f"{path}:{line}: unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
                try:
                    lat, lon = float(row["lat"]), float(row["lon"])
                    params = {
                        name: float(row[name]) for name in param_names if row.get(name) not in (None, "")
                    }
                except ValueError as error:
                    raise RegistryError(f"{path}:{line}: {error}") from None
                devices.append(
                    Device(
                        id=device_id,
                        kind=kind,
                        model=row["model"].strip(),
                        address=row["address"].strip(),
                        lat=lat,
                        lon=lon,
                        grid=row["grid"].strip(),
                        zone=row["zone"].strip(),
                        team=row["team"].strip(),
                        index=len(devices),
                        params=params,
                        tags=tuple(t.strip() for t in (row.get("tags") or "").split(";") if t.strip()),
                    )
                )
        return cls(devices, param_names)
