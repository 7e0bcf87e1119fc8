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

import functools
import math
import re
from fractions import Fraction

__all__ = ["UnitError", "UNITS", "convert", "dimension_of", "to_metric"]


class UnitError(ValueError):
    pass


# unit text -> (dimension, factor, shift): a value x is (x + shift) * factor in the dimension's
# base unit. Factors are fractions where they can be, so that 671 mm is 67.1 cm, not 67.10000000000001.
UNITS: dict[str, tuple[str, Fraction | float, float]] = {}


def _add(dimension: str, factor: Fraction | float, *names: str, shift: float = 0.0) -> None:
    for name in names:
        UNITS[name] = (dimension, Fraction(factor) if isinstance(factor, int) else factor, shift)


_add("length", 1, "cm", "centimetre", "centimeter", "centimetres", "centimeters")
_add("length", Fraction(1, 10), "mm", "millimetre", "millimeter", "millimetres", "millimeters")
_add("length", 100, "m", "metre", "meter", "metres", "meters")
_add("temperature", 1, "degrees C", "°C", "℃", "C", "degC", "celsius", "deg C")
_add("temperature", Fraction(5, 9), "°F", "℉", "F", "degF", "fahrenheit", shift=-32.0)
_add("angle", 1, "degrees", "°", "deg", "degree", "º")
_add("angle", 180 / math.pi, "rad", "radian", "radians")
_add("voltage", 1, "V", "volt", "volts")
_add("voltage", Fraction(1, 1000), "mV", "millivolt", "millivolts")
_add("percent", 1, "%", "pct", "percent")
_add("percent", 1, "% LEL", "%LEL", "LEL", "% lel")  # of the lower explosive limit
_add("concentration", 1, "ppm")
_add("concentration", Fraction(1, 1000), "ppb")
_add("power", 1, "dBm")
_add("time", 1, "s", "sec", "second", "seconds")
_add("time", Fraction(1, 1000), "ms")
_add("time", 60, "min", "minute", "minutes")
_add("time", 3600, "h", "hour", "hours")
_add("flag", 1, "0/1")
_add("fraction", 1, "0..1")

_TRUE = {"true", "on", "yes", "alarm", "open", "1"}
_FALSE = {"false", "off", "no", "normal", "closed", "0"}
_NUMBER_AND_UNIT = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(.*?)\s*$")


def dimension_of(unit: str) -> str | None:
    try:
        return _lookup(unit)[0]
    except UnitError:
        return None


def _lookup(unit: str) -> tuple[str, float, float]:
    found = UNITS.get(unit) or UNITS.get(unit.strip()) or UNITS.get(unit.strip().lower())
    if found is None:
        raise UnitError(f"unknown unit {unit[:40]!r}")
    return found


def convert(number: float, source: str, target: str) -> float:
    if source == target:
        return number
    numerator, denominator, shift_s, shift_t = _conversion(source, target)
    return (number + shift_s) * numerator / denominator - shift_t


@functools.lru_cache(maxsize=1024)
def _conversion(source: str, target: str) -> tuple[float, float, float, float]:
    """(multiply by, divide by, shift before, shift after) from ``source`` to ``target``."""
    dim_s, factor_s, shift_s = _lookup(source)
    dim_t, factor_t, shift_t = _lookup(target)
    if dim_s != dim_t:
        raise UnitError(f"{source!r} is {dim_s}, the metric is in {target!r} ({dim_t})")
    ratio = factor_s / factor_t
    if isinstance(ratio, Fraction):
        return ratio.numerator, ratio.denominator, shift_s, shift_t
    return ratio, 1, shift_s, shift_t


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
