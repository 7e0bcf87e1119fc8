"""A vendor codec against the examples of its repository YAML: what ``edge codecs test`` runs.

The Things Network's device repository ships each codec with a YAML file of examples::

    uplinkDecoder:
      fileName: codec.js
      examples:
        - description: Periodic uplink
          input: {fPort: 2, bytes: [0x06, 0xA4, 0x00, 0xDD]}
          output:
            data: {distance: "1700 mm", temperature: "22.1 ℃"}
            warnings: []
            errors: []          # an example of a frame the codec refuses has errors, no data

Each example is run through the codec in the gateway's sandbox (edge/ingest/jscodec.py) and
its result compared with the output, key by key (numbers equal within 1e-9 relative); with a
model's mapping, the readings the gateway would take from it are given too.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from edge.ingest.codecs._errors import CodecError
from edge.ingest.jscodec import JsCodec
from edge.ingest.vendor_models import VendorModel

__all__ = ["ExampleResult", "ExamplesError", "load_examples", "run_examples"]


class ExamplesError(ValueError):
    """The examples file cannot be used; the message says where and why."""


@dataclass
class ExampleResult:
    description: str
    fport: int
    data: bytes
    differences: list[str] = field(default_factory=list)
    readings: dict | None = None
    mapping_problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.differences


def load_examples(path: Path) -> list[dict]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ExamplesError(f"{path}: cannot read: {error.strerror}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise ExamplesError(f"{path}:{mark.line + 1 if mark else 1}: not valid YAML: {getattr(error, 'problem', error)}") from None
    decoder = document.get("uplinkDecoder") if isinstance(document, dict) else None
    examples = decoder.get("examples") if isinstance(decoder, dict) else None
    if not isinstance(examples, list) or not examples:
        raise ExamplesError(f"{path}: no uplinkDecoder.examples (The Things Network's codec YAML format)")
    for number, example in enumerate(examples, 1):
        given = example.get("input") if isinstance(example, dict) else None
        raw = given.get("bytes") if isinstance(given, dict) else None
        if (not isinstance(given, dict) or not isinstance(given.get("fPort"), int)
                or not isinstance(raw, list) or not all(isinstance(b, int) and 0 <= b <= 255 for b in raw)
                or not isinstance(example.get("output"), dict)):
            raise ExamplesError(f"{path}: example {number} needs input.fPort, input.bytes (0..255 each) and output")
    return examples


def run_examples(codec: JsCodec, examples: list[dict], mapping: VendorModel | None = None) -> list[ExampleResult]:
    results = []
    for number, example in enumerate(examples, 1):
        given, expected = example["input"], example["output"]
        result = ExampleResult(str(example.get("description") or f"example {number}"), given["fPort"], bytes(given["bytes"]))
        try:
            got = codec.call(result.fport, result.data)
        except CodecError as error:
            result.differences.append(f"the codec failed: {error.reason}: {error.detail}")
            results.append(result)
            continue
        for key in ("data", "errors", "warnings"):
            if key in expected or got.get(key):
                want = expected.get(key, [] if key != "data" else None)
                result.differences += _differences(key, want, got.get(key, [] if key != "data" else None))
        if mapping is not None and isinstance(got.get("data"), dict) and not got.get("errors"):
            result.readings, result.mapping_problems = mapping.readings(got["data"])
        results.append(result)
    return results


def _differences(where: str, want, got) -> list[str]:
    if isinstance(want, dict) and isinstance(got, dict):
        out = []
        for key in want:
            if key not in got:
                out.append(f"{where}.{key}: expected {_show(want[key])}, missing")
            else:
                out += _differences(f"{where}.{key}", want[key], got[key])
        out += [f"{where}.{key}: not expected, got {_show(got[key])}" for key in got if key not in want]
        return out
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        return [d for n, (w, g) in enumerate(zip(want, got)) for d in _differences(f"{where}[{n}]", w, g)]
    if _number(want) and _number(got):
        return [] if math.isclose(want, got, rel_tol=1e-9, abs_tol=1e-12) else [f"{where}: expected {_show(want)}, got {_show(got)}"]
    return [] if want == got and type(want) is type(got) else [f"{where}: expected {_show(want)}, got {_show(got)}"]


def _show(value) -> str:
    return json.dumps(value, ensure_ascii=False)[:200]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
