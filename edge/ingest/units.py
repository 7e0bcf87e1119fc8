"""Vendor values to the numbers of our metric catalogue: parse a unit, convert it.

Vendor codecs return messy values: numbers, strings with units (``"1700 mm"``, ``"22 ℃"``,
``"0 °"``, ``"3.6V"``), booleans for alarms. ``to_metric(value, metric_unit, given_unit)``
turns one into a number in the unit of the metric (edge/kinds.py), or raises ``UnitError``:

- a number is in ``given_unit`` (the mapping's ``unit``), by default the metric's own unit;
- a string is a number followed by its unit, which wins over ``given_unit``; a string
  without a unit is a number in ``given_unit``;
- a boolean (or "true"/"false", "on"/"off", "yes"/"no") is 1 or 0, for 0/1 metrics only.

Units convert within their dimension (mm to cm, °F to °C, mV to V); another dimension is
an error (``"3.6 V"`` for ``water_cm``).
"""

from __future__ import annotations

import math
import re

__all__ = ["UnitError", "UNITS", "convert", "dimension_of", "to_metric"]


class UnitError(ValueError):
    pass


# unit text -> (dimension, factor to the dimension's base, offset added after scaling)
UNITS: dict[str, tuple[str, float, float]] = {}


def _add(dimension: str, factor: float, *names: str, offset: float = 0.0) -> None:
    for name in names:
        UNITS[name] = (dimension, factor, offset)


_add("length", 1.0, "cm", "centimetre", "centimeter", "centimetres", "centimeters")
_add("length", 0.1, "mm", "millimetre", "millimeter", "millimetres", "millimeters")
_add("length", 100.0, "m", "metre", "meter", "metres", "meters")
_add("temperature", 1.0, "degrees C", "°C", "℃", "C", "degC", "celsius", "deg C")
_add("temperature", 5 / 9, "°F", "℉", "F", "degF", "fahrenheit", offset=-32 * 5 / 9)
_add("angle", 1.0, "degrees", "°", "deg", "degree", "º")
_add("angle", 180 / math.pi, "rad", "radian", "radians")
_add("voltage", 1.0, "V", "volt", "volts")
_add("voltage", 0.001, "mV", "millivolt", "millivolts")
_add("percent", 1.0, "%", "pct", "percent")
_add("percent", 1.0, "% LEL", "%LEL", "LEL", "% lel")  # of the lower explosive limit
_add("concentration", 1.0, "ppm")
_add("concentration", 0.001, "ppb")
_add("power", 1.0, "dBm")
_add("time", 1.0, "s", "sec", "second", "seconds")
_add("time", 0.001, "ms")
_add("time", 60.0, "min", "minute", "minutes")
_add("time", 3600.0, "h", "hour", "hours")
_add("flag", 1.0, "0/1")
_add("fraction", 1.0, "0..1")

_TRUE = {"true", "on", "yes", "alarm", "open", "1"}
_FALSE = {"false", "off", "no", "normal", "closed", "0"}
_NUMBER_AND_UNIT = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(.*?)\s*$")


def dimension_of(unit: str) -> str | None:
    found = UNITS.get(unit) or UNITS.get(unit.strip()) or UNITS.get(unit.strip().lower())
    return found[0] if found else None


def _lookup(unit: str) -> tuple[str, float, float]:
    found = UNITS.get(unit) or UNITS.get(unit.strip()) or UNITS.get(unit.strip().lower())
    if found is None:
        raise UnitError(f"unknown unit {unit[:40]!r}")
    return found


def convert(number: float, source: str, target: str) -> float:
    if source == target:
        return number
    dim_s, factor_s, offset_s = _lookup(source)
    dim_t, factor_t, offset_t = _lookup(target)
    if dim_s != dim_t:
        raise UnitError(f"{source!r} is {dim_s}, the metric is in {target!r} ({dim_t})")
    base = number * factor_s + offset_s
    return (base - offset_t) / factor_t


def to_metric(value, metric_unit: str, given_unit: str | None = None) -> float:
    """``value`` as a number in ``metric_unit``; raises ``UnitError``."""
    source = given_unit or metric_unit
    if isinstance(value, bool):
        if metric_unit != "0/1":
            raise UnitError(f"a true/false value for a metric in {metric_unit!r}")
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if metric_unit == "0/1" and text.lower() in _TRUE | _FALSE:
            return 1.0 if text.lower() in _TRUE else 0.0
        match = _NUMBER_AND_UNIT.fullmatch(text[:80])
        if match is None:
            raise UnitError(f"{value[:40]!r} is not a number with a unit")
        number = float(match.group(1))
        if match.group(2):
            source = match.group(2)
    else:
        raise UnitError(f"{type(value).__name__} is not a number")
    if not math.isfinite(number):
        raise UnitError(f"{value!r:.40} is not a finite number")
    return convert(number, source, metric_unit)
