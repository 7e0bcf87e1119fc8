"""The device kinds and the metrics each one reports: one catalogue for ingest, rules and simulator.

A metric is a number unless its type is ``text`` (a camera's label or zone). Rules may only
read metrics of the kinds they apply to; ``edge rules check`` says so when one does not.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricInfo:
    name: str
    unit: str
    description: str
    type: str = "number"  # or "text"


def _metrics(*items: MetricInfo) -> dict[str, MetricInfo]:
    return {m.name: m for m in items}


KIND_METRICS: dict[str, dict[str, MetricInfo]] = {
    "manhole_cover": _metrics(
        MetricInfo("tilt_deg", "degrees", "tilt of the cover from level"),
        MetricInfo("open", "0/1", "1 when the cover is open or displaced"),
        MetricInfo("water_cm", "cm", "distance from the cover down to the water surface"),
        MetricInfo("ch4_lel_pct", "% LEL", "methane, percent of the lower explosive limit"),
        MetricInfo("h2s_ppm", "ppm", "hydrogen sulphide"),
        MetricInfo("temp_c", "degrees C", "temperature under the cover"),
        MetricInfo("battery_v", "V", "battery voltage"),
        MetricInfo("rssi_dbm", "dBm", "radio signal strength"),
    ),
    "bin": _metrics(
        MetricInfo("distance_cm", "cm", "ultrasonic distance from the lid to the rubbish"),
        MetricInfo("fill_pct", "%", "fill level, derived from distance_cm and the registry's depth_cm"),
        MetricInfo("temp_c", "degrees C", "temperature inside the bin (fire)"),
        MetricInfo("tilt_deg", "degrees", "tilt of the bin from upright (knocked over)"),
        MetricInfo("battery_v", "V", "battery voltage"),
        MetricInfo("rssi_dbm", "dBm", "radio signal strength"),
    ),
    "camera": _metrics(
        MetricInfo("label", "", "what the detection is: car, waterlogging, garbage, vendor, ...", "text"),
        MetricInfo("zone", "", "the camera zone the detection is in, e.g. no_parking", "text"),
        MetricInfo("score", "0..1", "the detector's confidence in the detection"),
        MetricInfo("active", "0/1", "1 while the detection lasts, 0 when it has ended"),
        MetricInfo("duration_s", "s", "how long the detection has lasted"),
    ),
}

KINDS = tuple(KIND_METRICS)
