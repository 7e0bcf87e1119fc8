"""Vendor models in the simulator: USM-100 and UFL-20 frames through their real JavaScript codecs
(QuickJS, via JsCodec) and mappings, and a scenario whose network server decodes some of them."""

from __future__ import annotations

import base64
import csv
from pathlib import Path

import orjson
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.ingest import chirpstack
from edge.ingest.codecs import CodecError
from edge.ingest.jscodec import JsCodec
from edge.ingest.vendor_models import load_mapping, load_models
from firmware_sim import load_scenario, run_scenario, vendor_models
from firmware_sim.protocols import Frame
from firmware_sim.record import Recorder
from firmware_sim.scenario import ScenarioError
from firmware_sim.simulation import Simulation, Sink, write_registry
from firmware_sim.truth import read_truth

ROOT = Path(__file__).resolve().parent.parent
CODECS = ROOT / "config" / "codecs"
MODELS = ROOT / "config" / "models"
VENDOR_SCENARIO = ROOT / "config" / "scenarios" / "vendor.yaml"
START = 1748736000.0  # 2025-06-01T00:00:00Z


def examples() -> list:
    found = []
    for path in sorted(CODECS.glob("*.yaml")):
        decoder = yaml.safe_load(path.read_text(encoding="utf-8"))["uplinkDecoder"]
        for example in decoder["examples"]:
            found.append(pytest.param(decoder["fileName"], example, id=f"{path.stem}: {example['description']}"))
    return found


def test_both_codecs_have_examples_of_data_and_of_errors():
    by_codec: dict[str, list[dict]] = {}
    for param in examples():
        name, example = param.values
        by_codec.setdefault(name, []).append(example["output"])
    assert sorted(by_codec) == ["ufl20.js", "usm100.js"]
    for outputs in by_codec.values():
        assert len(outputs) >= 3
        assert any("data" in out for out in outputs) and any(out.get("errors") for out in outputs)


@pytest.mark.parametrize("codec_file, example", examples())
def test_every_example_gives_its_output_through_the_codec(codec_file, example):
    codec = JsCodec(CODECS / codec_file)
    fport, frame, output = example["input"]["fPort"], bytes(example["input"]["bytes"]), example["output"]
    if output.get("errors"):
        assert "data" not in output
        with pytest.raises(CodecError) as error:
            codec.decode(fport, frame)
        assert error.value.reason == "codec_error"
        for message in output["errors"]:
            assert message in error.value.detail
        return
    data, warnings = codec.decode(fport, frame)
    assert data == output["data"]
    assert warnings == output.get("warnings", [])


@pytest.fixture(scope="module")
def mappings():
    found = {}
    for model in vendor_models.MODELS:
        vendor, problems = load_mapping(MODELS / f"{model}.yaml", CODECS)
        assert problems == []
        found[model] = vendor
    return found


def test_the_mappings_match_the_simulator_s_models(mappings):
    for model, frames in vendor_models.MODELS.items():
        vendor = mappings[model]
        assert (vendor.model, vendor.kind, vendor.codec.name) == (model, frames.kind, frames.codec)
        assert vendor.ignore, f"{model}'s mapping ignores no field on purpose"


def reading(lo: float, hi: float):
    """A sensor's value, sometimes past what the frame holds (saturates), sometimes missing (no reading)."""
    return st.one_of(st.none(), st.floats(lo, hi, allow_nan=False))


READINGS = {
    "USM-100": st.fixed_dictionaries({
        "water_cm": reading(-5, 7000), "temp_c": reading(-3500, 3500), "tilt_deg": reading(-5, 300),
        "battery_v": reading(0, 5), "open": st.sampled_from([0.0, 1.0]),
        "ch4_lel_pct": reading(0, 100),  # a metric this model has no sensor for
    }),
    "UFL-20": st.fixed_dictionaries({
        "distance_cm": reading(-5, 7000), "temp_c": reading(-3500, 3500), "tilt_deg": reading(-5, 300),
        "battery_v": reading(0, 70),
    }),
}


@pytest.mark.parametrize("model", sorted(vendor_models.MODELS))
def test_encoded_frames_decode_through_the_codec_and_mapping_to_the_truth(model, mappings):
    vendor = mappings[model]

    @settings(max_examples=300, deadline=None)
    @given(READINGS[model], st.booleans())
    def check(readings, alarm):
        readings = {k: v for k, v in readings.items() if v is not None}
        fport, frame = vendor_models.encode(model, readings, alarm)
        assert fport == (3 if alarm else 2) and len(frame) == 8
        data, warnings = vendor.codec.decode(fport, frame)
        got, problems = vendor.readings(data)
        assert (got, problems, warnings) == (vendor_models.truth(model, readings), [], [])
        if model == "USM-100":  # the alarm bits the mappings ignore still say what the layout says
            assert data["water_alarm"] == (got.get("water_cm", 999) < 40)
        else:
            assert data["fire_alarm"] == (got.get("temp_c", 0) >= 60)

    check()


def test_truth_is_the_reading_within_the_frame_s_resolution():
    cover = vendor_models.truth("USM-100", {"water_cm": 170.04, "temp_c": 22.14, "tilt_deg": 3.4, "open": 1.0,
                                            "battery_v": 3.574, "ch4_lel_pct": 12.0})
    assert cover == {"open": 1.0, "water_cm": pytest.approx(170.0), "temp_c": 22.1, "tilt_deg": 3.0, "battery_v": 3.57}
    assert vendor_models.truth("UFL-20", {"distance_cm": 85.0, "temp_c": 9999.0, "battery_v": 0.0}) == {
        "distance_cm": 85.0, "temp_c": 3276.6, "battery_v": 0.0}  # a spike saturates; tilt is no reading


class Capture(Sink):
    def __init__(self):
        self.frames: list[Frame] = []

    def publish(self, frame: Frame, qos: int) -> None:
        self.frames.append(frame)


@pytest.fixture(scope="module")
def vendor_run(tmp_path_factory):
    scenario = load_scenario(VENDOR_SCENARIO)
    scenario.duration = 3600.0
    out = tmp_path_factory.mktemp("vendor")
    recorder = Recorder(out / "readings.jsonl")
    simulation = Simulation(scenario, start=START, recorder=recorder)
    sink = Capture()
    simulation.run(sink, speed="max")
    recorder.close()
    write_registry(simulation.devices, out / "registry.csv")
    return simulation, sink.frames, out


def test_the_vendor_scenario_s_registry_names_each_device_s_model(vendor_run):
    _, _, out = vendor_run
    with (out / "registry.csv").open(newline="", encoding="utf-8") as handle:
        models = {row["id"]: row["model"] for row in csv.DictReader(handle)}
    assert {d: m for d, m in models.items() if d.startswith(("USM", "UFL"))} == {
        **{f"USM-{n:04d}": "USM-100" for n in range(1, 7)}, "UFL-0001": "UFL-20", "UFL-0002": "UFL-20"}
    assert models["MH-0001"] == "MCL-300" and models["MH-0003"] == "MC-200"


def test_only_the_network_server_decoded_group_s_events_carry_object(vendor_run):
    _, frames, _ = vendor_run
    decoded_by_ns = {"USM-0004", "USM-0005", "USM-0006"}
    codec = JsCodec(CODECS / "usm100.js")
    seen = set()
    for frame in frames:
        if not frame.topic.startswith("application/"):
            continue
        event = orjson.loads(frame.payload)
        device = event["deviceInfo"]["deviceName"]
        seen.add(device)
        if device in decoded_by_ns:
            data, _ = codec.decode(event["fPort"], base64.b64decode(event["data"]))
            assert event["object"] == data
        else:
            assert "object" not in event and event["data"]
    assert decoded_by_ns < seen and {"USM-0001", "UFL-0001", "MH-0001"} < seen


def test_the_gateway_s_ingest_gets_the_recorded_readings(vendor_run):
    """Each LoRaWAN event through edge/ingest/chirpstack.py, with the shipped mappings and codecs,
    gives the readings the simulator recorded as the truth (object or data alike)."""
    simulation, frames, out = vendor_run
    vendor, problems = load_models(MODELS, CODECS)
    assert problems == []
    model_of = {device.id: device.model for device, _ in simulation.devices}.get
    lorawan = {device.id for device, protocol in simulation.devices if protocol == "lorawan"}
    recorded = [line for line in map(orjson.loads, (out / "readings.jsonl").read_bytes().splitlines())
                if line["device"] in lorawan]
    events = [frame for frame in frames if frame.topic.startswith("application/")]
    assert len(events) == len(recorded) > 50
    for frame, truth in zip(events, recorded):
        message = chirpstack.decode(frame.topic, frame.payload, model_of, vendor=vendor)
        assert (message.device_id, message.ts, message.values) == (truth["device"], truth["ts"], truth["readings"])


def test_the_vendor_scenario_s_events_become_orders_by_the_shipped_rules(tmp_path):
    from firmware_sim.score import orders_from_replay, score

    run_scenario(load_scenario(VENDOR_SCENARIO), out=tmp_path, start=START, speed="max")
    truth = read_truth(tmp_path / "truth.jsonl")
    result = score(truth, orders_from_replay(ROOT / "rules", tmp_path / "readings.jsonl", tmp_path / "registry.csv"))
    assert {e.device for e in truth} >= {"USM-0002", "USM-0005", "USM-0006", "UFL-0001", "UFL-0002"}
    assert result.found == result.expected and not result.false_orders, result.text()


@pytest.mark.parametrize("group, message", [
    ("{kind: bin, count: 2, protocol: lorawan, model: USM-100}",
     "street.yaml:1: devices.0: model USM-100 is a manhole_cover, not a bin; bin models: SBL-220, UFL-20"),
    ("{kind: manhole_cover, count: 2, protocol: lorawan, model: UFL-20}",
     "street.yaml:1: devices.0: model UFL-20 is a bin, not a manhole_cover; manhole_cover models: MCL-300, USM-100"),
    ("{kind: bin, count: 2, protocol: lorawan, model: UFL-2O}",
     "no LoRaWAN model 'UFL-2O'; bin models: SBL-220, UFL-20"),
    ("{kind: manhole_cover, count: 2, model: USM-100}", "model USM-100 speaks LoRaWAN: write protocol: lorawan"),
    ("{kind: bin, count: 2, network_server_decodes: true}",
     "network_server_decodes is for LoRaWAN devices (protocol: lorawan)"),
])
def test_a_model_that_does_not_fit_the_group_is_refused(tmp_path, group, message):
    path = tmp_path / "street.yaml"
    path.write_text(f"devices: [{group}]\n")
    with pytest.raises(ScenarioError) as error:
        load_scenario(path)
    assert message in str(error.value)
