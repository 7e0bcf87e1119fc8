"""Device models bought from vendors: a mapping file per model, and the model's JavaScript codec.

A mapping (YAML, one file per model in ``[codecs] models``, default config/models/) says how
the vendor's decoded fields become readings of our metric catalogue (edge/kinds.py)::

    model: USM-100              # the registry's model (or the ChirpStack device profile name)
    kind: manhole_cover         # the metric catalogue its readings belong to
    codec: usm100.js            # in [codecs] folder: decodeUplink(input) -> {data, ...}
    fields:                     # vendor field (a.b for nested) -> metric
      distance: water_cm        #   a number in the metric's unit, or "1700 mm" converted
      temperature: {metric: temp_c, unit: "°C"}   # unit: what a bare number is in
      moved: open               #   true/false -> 1/0
    ignore: [firmware, frame_counter]   # fields left out on purpose

``codec`` may be left out when the network server decodes the uplinks (ChirpStack puts the
result in the event's ``object``). A field neither mapped nor ignored is left out and named
once in the log; a mapped field whose value cannot be converted is left out and named in the
log too; a message left with no reading at all is quarantined (``mapping``).

``load_models`` reads every mapping and reports every problem of every file in one pass, as
``file:line: message`` (an unknown key, kind, metric or unit with "did you mean", a codec file
that is missing or does not load, a model mapped twice).
"""

from __future__ import annotations

import difflib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from edge.ingest.codecs._errors import CodecError
from edge.ingest.jscodec import JsCodec, JsLimits
from edge.ingest.units import UnitError, dimension_of, to_metric
from edge.kinds import KIND_METRICS

__all__ = ["FieldMap", "VendorModel", "VendorModels", "load_models", "load_mapping"]

log = logging.getLogger(__name__)

KEYS = ("model", "kind", "codec", "fields", "ignore", "description")
FIELD_KEYS = ("metric", "unit")
_UNMAPPED_LOGGED_MAX = 1000


@dataclass(frozen=True)
class FieldMap:
    path: tuple[str, ...]  # the vendor field, split at dots
    metric: str
    metric_unit: str
    unit: str | None  # what a bare number is in; None: the metric's unit
    text: bool = False  # a text metric (a camera's label): taken as a string


@dataclass
class VendorModel:
    model: str
    kind: str
    fields: list[FieldMap]
    ignore: frozenset[str]
    codec: JsCodec | None
    source: Path
    _top: frozenset[str] = field(default=frozenset())

    def __post_init__(self) -> None:
        self._top = frozenset(f.path[0] for f in self.fields) | frozenset(i.split(".")[0] for i in self.ignore)

    def readings(self, data: dict) -> tuple[dict[str, float | str], list[str]]:
        """Readings from the vendor's decoded ``data``, and the problems met (fields left out)."""
        readings: dict[str, float | str] = {}
        problems: list[str] = []
        for f in self.fields:
            value = data
            for part in f.path:
                value = value.get(part) if isinstance(value, dict) else None
            if value is None:
                continue
            if f.text:
                if isinstance(value, str):
                    readings[f.metric] = value
                else:
                    problems.append(f"{'.'.join(f.path)}: {value!r:.40} is not text")
                continue
            try:
                readings[f.metric] = to_metric(value, f.metric_unit, f.unit)
            except UnitError as error:
                problems.append(f"{'.'.join(f.path)} -> {f.metric}: {error}")
        problems += [f"{name}: not mapped nor ignored" for name in data if name not in self._top]
        return readings, problems


class VendorModels:
    """Every mapped model, by model name; what chirpstack.py asks for a device's readings."""

    def __init__(self, models: dict[str, VendorModel] | None = None):
        self.models = models or {}
        self._logged: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def __contains__(self, model) -> bool:
        return model in self.models

    def get(self, model) -> VendorModel | None:
        return self.models.get(model)

    def from_object(self, model: str, data: dict) -> dict[str, float | str]:
        """Readings from what the network server decoded (ChirpStack's ``object``)."""
        return self._readings(self.models[model], data)

    def from_bytes(self, model: str, fport: int, frame: bytes, device: str) -> dict[str, float | str]:
        """Readings from the frame, through the model's JavaScript codec; raises ``CodecError``."""
        vendor = self.models[model]
        if vendor.codec is None:
            raise CodecError("no_codec", f"model {model} has no codec (its mapping {vendor.source.name} names none) "
                                         f"and the event carries no decoded 'object'")
        data, warnings = vendor.codec.decode(fport, frame, device)
        for warning in warnings:
            self._log_once(model, f"codec warning: {warning}")
        return self._readings(vendor, data)

    def _readings(self, vendor: VendorModel, data: dict) -> dict[str, float | str]:
        readings, problems = vendor.readings(data)
        for problem in problems:
            self._log_once(vendor.model, problem)
        if not readings:
            shown = "; ".join(problems[:3]) or "none of the mapped fields is in it"
            raise CodecError("mapping", f"no reading from {vendor.model}'s data ({shown}); mapping {vendor.source.name}")
        return readings

    def _log_once(self, model: str, problem: str) -> None:
        key = (model, problem[:200])
        with self._lock:
            if key in self._logged or len(self._logged) >= _UNMAPPED_LOGGED_MAX:
                return
            self._logged.add(key)
        log.warning("model %s: %s (said once)", model, problem[:300])


def load_models(models_dir: Path | None, codecs_dir: Path | None,
                limits: JsLimits = JsLimits()) -> tuple[VendorModels, list[str]]:
    """Every mapping in ``models_dir`` with its codec from ``codecs_dir``, and every problem found."""
    models: dict[str, VendorModel] = {}
    problems: list[str] = []
    if models_dir is None or not models_dir.is_dir():
        return VendorModels(), ([f"{models_dir}: no such folder"] if models_dir is not None else [])
    for path in sorted(models_dir.glob("*.yaml")) + sorted(models_dir.glob("*.yml")):
        vendor, found = load_mapping(path, codecs_dir, limits)
        problems += found
        if vendor is None:
            continue
        if vendor.model in models:
            problems.append(f"{path}:1: model {vendor.model!r} is already mapped by {models[vendor.model].source}")
            continue
        models[vendor.model] = vendor
    return VendorModels(models), problems


def load_mapping(path: Path, codecs_dir: Path | None,
                 limits: JsLimits = JsLimits()) -> tuple[VendorModel | None, list[str]]:
    """One mapping file, and all its problems as ``file:line: message`` (None when it has any)."""
    from edge.engine.rules import _line_for, _load_yaml_with_lines

    try:
        data, lines = _load_yaml_with_lines(path.read_text(encoding="utf-8"))
    except OSError as error:
        return None, [f"{path}: cannot read: {error.strerror}"]
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        return None, [f"{path}:{mark.line + 1 if mark else 1}: not valid YAML: {getattr(error, 'problem', None) or error}"]
    if not isinstance(data, dict):
        return None, [f"{path}:1: a mapping file is a YAML mapping of {', '.join(KEYS)}"]
    problems: list[str] = []

    def say(loc: tuple, message: str) -> None:
        problems.append(f"{path}:{_line_for(lines, loc)}: {message}")

    for key in data:
        if key not in KEYS:
            say((key,), f"unknown key {key!r}{_close(key, KEYS)}")
    model = data.get("model")
    if not isinstance(model, str) or not model.strip():
        say(("model",), "'model' must be the device model's name, as in the registry's model column")
    kind = data.get("kind")
    catalogue = KIND_METRICS.get(kind) if isinstance(kind, str) else None
    if catalogue is None:
        say(("kind",), f"'kind' must be one of {', '.join(KIND_METRICS)}, got {kind!r}{_close(kind, KIND_METRICS)}")
    ignore = data.get("ignore", [])
    if not isinstance(ignore, list) or not all(isinstance(i, str) for i in ignore):
        say(("ignore",), "'ignore' must be a list of vendor field names")
        ignore = []
    fields: list[FieldMap] = []
    raw_fields = data.get("fields")
    if not isinstance(raw_fields, dict) or not raw_fields:
        say(("fields",), "'fields' must map vendor fields to metrics, e.g. 'distance: water_cm'")
        raw_fields = {}
    for name, spec in raw_fields.items():
        loc = ("fields", name)
        if not isinstance(name, str) or not name or any(not part for part in name.split(".")):
            say(loc, f"field {name!r}: a vendor field name, with dots for nested fields (a.b)")
            continue
        if name in ignore:
            say(loc, f"field {name!r} is both mapped and ignored")
        if isinstance(spec, str):
            spec = {"metric": spec}
        if not isinstance(spec, dict):
            say(loc, f"field {name!r}: write a metric name, or {{metric: ..., unit: ...}}")
            continue
        for key in spec:
            if key not in FIELD_KEYS:
                say(loc + (key,), f"field {name!r}: unknown key {key!r}{_close(key, FIELD_KEYS)}")
        metric, unit = spec.get("metric"), spec.get("unit")
        if catalogue is None:
            continue
        info = catalogue.get(metric) if isinstance(metric, str) else None
        if info is None:
            say(loc, f"field {name!r}: {kind} has no metric {metric!r}{_close(metric, catalogue)}; "
                     f"metrics: {', '.join(catalogue)}")
            continue
        if unit is not None:
            if not isinstance(unit, str) or dimension_of(unit) is None:
                say(loc + ("unit",), f"field {name!r}: unknown unit {unit!r}")
                continue
            if info.type == "text" or dimension_of(unit) != dimension_of(info.unit):
                say(loc + ("unit",), f"field {name!r}: {unit!r} cannot be converted to {metric}'s unit {info.unit!r}")
                continue
        if any(f.metric == metric for f in fields):
            say(loc, f"field {name!r}: metric {metric} is already mapped from another field")
            continue
        fields.append(FieldMap(tuple(name.split(".")), metric, info.unit, unit, info.type == "text"))
    codec = None
    codec_name = data.get("codec")
    if codec_name is not None:
        if not isinstance(codec_name, str) or "/" in codec_name or codec_name.startswith("."):
            say(("codec",), f"'codec' must be a file name in the codecs folder, got {codec_name!r}")
        elif codecs_dir is None or not (codecs_dir / codec_name).is_file():
            say(("codec",), f"no codec {codec_name!r} in {codecs_dir} ([codecs] folder)")
        else:
            try:
                codec = JsCodec(codecs_dir / codec_name, limits, name=codec_name)
            except CodecError as error:
                say(("codec",), error.detail)
    if problems:
        return None, problems
    return VendorModel(model.strip(), kind, fields, frozenset(ignore), codec, path), []


def _close(word, names) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, [str(n) for n in names], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
