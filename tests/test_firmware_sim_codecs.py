"""Every LoRaWAN codec: round trips, documented examples, and clear errors on bad frames."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.ingest.codecs import CODECS, CodecError, codec_for, decode, encode

METRIC_RANGES = {
    "tilt_deg": (0, 180), "water_cm": (0, 500), "ch4_lel_pct": (0, 100), "h2s_ppm": (0, 500),
    "temp_c": (-40, 125), "battery_v": (2.0, 4.2), "distance_cm": (0, 400),
}


def readings_for(codec):
    metrics = [f.metric for f in codec.FIELDS if not f.metric.startswith("_")]
    values = {m: st.floats(*METRIC_RANGES[m], allow_nan=False) for m in metrics}
    if codec.KIND == "manhole_cover":
        values["open"] = st.sampled_from([0.0, 1.0])
    return st.fixed_dictionaries(values)


@pytest.mark.parametrize("model", sorted(CODECS))
def test_round_trip_within_the_scale(model):
    codec = codec_for(model)

    @settings(max_examples=200, deadline=None)
    @given(readings_for(codec), st.booleans())
    def check(readings, alarm):
        fport, data = codec.encode(readings, alarm=alarm)
        decoded = codec.decode(fport, data)
        assert set(decoded) == set(readings)
        for field in codec.FIELDS:
            if field.metric in readings:
                assert decoded[field.metric] == pytest.approx(readings[field.metric], abs=0.5 / field.scale + 1e-9)
        if "open" in readings:
            assert decoded["open"] == readings["open"]

    check()


@pytest.mark.parametrize("model", sorted(CODECS))
def test_documented_example_decodes_as_documented(model):
    codec = codec_for(model)
    match = re.search(r"Example: ``([0-9a-f ]+)`` on fPort (\d+) decodes to\s+``(\{.*?\})``", codec.__doc__, re.S)
    assert match, f"{model}: no example in the docstring"
    data = bytes.fromhex(match.group(1))
    expected = json_numbers(match.group(3))
    assert decode(model, int(match.group(2)), data) == expected
    assert encode(model, expected) == (int(match.group(2)), data)


def json_numbers(text: str) -> dict:
    import json

    return {k: float(v) for k, v in json.loads(" ".join(text.split())).items()}


@pytest.mark.parametrize("model", sorted(CODECS))
def test_truncated_and_long_frames_and_unknown_ports_are_refused_with_a_reason(model):
    fport, data = encode(model, {})
    with pytest.raises(CodecError) as error:
        decode(model, fport, data[:-3])
    assert error.value.reason == "truncated" and f"{len(data) - 3} bytes, expected {len(data)}" in str(error.value)
    with pytest.raises(CodecError) as error:
        decode(model, fport, data + b"\x00")
    assert error.value.reason == "too_long"
    with pytest.raises(CodecError) as error:
        decode(model, 99, data)
    assert error.value.reason == "unknown_fport" and "not 99" in str(error.value)


def test_missing_readings_are_left_out_and_unknown_models_are_refused():
    fport, data = encode("SBL-220", {"distance_cm": 42.0})
    assert decode("SBL-220", fport, data) == {"distance_cm": 42.0}
    with pytest.raises(CodecError) as error:
        codec_for("XYZ-1")
    assert error.value.reason == "unknown_model" and "MCL-300" in str(error.value)
    with pytest.raises(CodecError) as error:
        encode("MCL-300", {"temp_c": 9999})
    assert error.value.reason == "bad_value"
