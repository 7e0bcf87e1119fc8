"""Vendor devices: JavaScript codecs in QuickJS, unit strings, device-model mappings, ChirpStack's
``object``, ``edge codecs test``, and a real gateway fed codecs that throw, loop, eat memory and
return garbage. The codecs here are the tests' own, written in the vendors' format."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import edge_command, start_receiver, wait_until
from edge.broker import free_port
from edge.config_check import check_config
from edge.ingest import chirpstack
from edge.ingest.decode import DecodeError
from edge.ingest.jscodec import JsLimits
from edge.ingest.units import UnitError, to_metric
from edge.ingest.vendor_models import load_mapping, load_models
from hostile import Gateway, Publisher, chirpstack as chirpstack_event, gateway_config, own_json

GOOD = """// ACME-1, an ultrasonic manhole sensor: bytes 0-1 distance to the water in mm, 2 tilt in
// degrees, 3 flags (bit 0: moved). Values come back as the vendors write them.
function decodeUplink(input) {
  var b = input.bytes;
  if (input.fPort !== 2) return {errors: ["unknown fPort " + input.fPort]};
  if (b.length !== 4) return {errors: ["expected 4 bytes, got " + b.length]};
  return {data: {distance: ((b[0] << 8) | b[1]) + " mm", tilt: b[2] + " °", moved: (b[3] & 1) === 1,
                 firmware: "1.2"}, warnings: []};
}
"""
HOSTILE = {
    "throws": "function decodeUplink(input) { throw new Error('frame ' + input.bytes.length + ' bytes'); }",
    "loops": "function decodeUplink(input) { while (true) {} }",
    "hog": "function decodeUplink(input) { var a = []; while (true) a.push(new Array(100000).fill(1)); }",
    "garbage": "function decodeUplink(input) { return 42; }",
}
MAPPING = """model: {model}
kind: manhole_cover
codec: {codec}
fields:
  distance: water_cm
  tilt: tilt_deg
  moved: open
ignore: [firmware]
"""
EXAMPLES = """uplinkDecoder:
  fileName: acme.js
  examples:
    - description: cover tilted and moved
      input: {fPort: 2, bytes: [0x05, 0xDC, 0x1E, 0x01]}
      output:
        data: {distance: "1500 mm", tilt: "30 °", moved: true, firmware: "1.2"}
        warnings: []
    - description: unknown port
      input: {fPort: 9, bytes: [0x01]}
      output:
        errors: ["unknown fPort 9"]
"""


def frame(distance_mm: int, tilt: int, moved: bool) -> bytes:
    return bytes([distance_mm >> 8, distance_mm & 0xFF, tilt, int(moved)])


@pytest.fixture
def vendor_folders(tmp_path) -> tuple[Path, Path]:
    """config/models-like and config/codecs-like folders: ACME-1 and one model per hostile codec."""
    models, codecs = tmp_path / "models", tmp_path / "codecs"
    models.mkdir()
    codecs.mkdir()
    (codecs / "acme.js").write_text(GOOD)
    (codecs / "acme.yaml").write_text(EXAMPLES)
    (models / "ACME-1.yaml").write_text(MAPPING.format(model="ACME-1", codec="acme.js"))
    for name, source in HOSTILE.items():
        (codecs / f"{name}.js").write_text(source)
        (models / f"{name.upper()}-1.yaml").write_text(MAPPING.format(model=f"{name.upper()}-1", codec=f"{name}.js"))
    return models, codecs


@pytest.mark.parametrize("value, unit, given, expected", [
    ("1700 mm", "cm", None, 170.0),
    ("1.7m", "cm", None, 170.0),
    (1700, "cm", "mm", 170.0),
    ("22 ℃", "degrees C", None, 22.0),
    ("71.6 °F", "degrees C", None, 22.0),
    ("0 °", "degrees", None, 0.0),
    ("3600 mV", "V", None, 3.6),
    (3.6, "V", None, 3.6),
    (True, "0/1", None, 1.0),
    ("off", "0/1", None, 0.0),
    ("-4.5", "degrees C", None, -4.5),
])
def test_vendor_values_with_units_become_the_metrics_numbers(value, unit, given, expected):
    assert to_metric(value, unit, given) == pytest.approx(expected)


@pytest.mark.parametrize("value, unit", [("3.6 V", "cm"), ("lots", "cm"), (True, "cm"), ("12 furlongs", "cm"),
                                         (None, "cm"), ("nan mm", "cm"), (float("inf"), "cm")])
def test_values_that_cannot_be_the_metric_are_refused(value, unit):
    with pytest.raises(UnitError):
        to_metric(value, unit)


def test_a_mapping_reports_every_problem_with_its_line_and_a_guess(tmp_path):
    path = tmp_path / "BAD-1.yaml"
    path.write_text("model: BAD-1\n"
                    "kind: manhole_cover\n"
                    "codec: missing.js\n"
                    "fields:\n"
                    "  distance: water_mm\n"
                    "  voltage: {metric: battery_v, unit: mm}\n"
                    "  heat: {metric: temp_c, unit: furlongs}\n"
                    "  firmware: tilt_deg\n"
                    "ignore: [firmware]\n"
                    "colour: red\n")
    vendor, problems = load_mapping(path, tmp_path)
    assert vendor is None
    text = "\n".join(problems)
    assert f"{path}:10: unknown key 'colour'" in text
    assert f"{path}:5: field 'distance': manhole_cover has no metric 'water_mm' (did you mean 'water_cm'?)" in text
    assert f"{path}:6: field 'voltage': 'mm' cannot be converted to battery_v's unit 'V'" in text
    assert f"{path}:7: field 'heat': unknown unit 'furlongs'" in text
    assert f"{path}:8: field 'firmware' is both mapped and ignored" in text
    assert f"{path}:3: no codec 'missing.js' in {tmp_path}" in text
    assert len(problems) == 6


def test_config_check_reports_the_mappings_problems_with_the_other_problems(tmp_path, vendor_folders):
    models, codecs = vendor_folders
    (models / "ACME-1.yaml").write_text(MAPPING.format(model="ACME-1", codec="acme.js").replace("tilt_deg", "tilt_dig"))
    (codecs / "broken.js").write_text("function decodeUplink(input) { return {data: {}; }")
    (models / "BROKEN-1.yaml").write_text(MAPPING.format(model="BROKEN-1", codec="broken.js"))
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nid = "gw"\n[registry]\npath = "missing.csv"\n[rules]\npaths = []\n'
                      f'[uplink]\nurl = "http://127.0.0.1:9"\n[codecs]\nmodels = "{models}"\nfolder = "{codecs}"\n')
    problems = "\n".join(check_config(config))
    assert "missing.csv" in problems  # the registry's problem and the mappings', in one pass
    assert f"{models / 'ACME-1.yaml'}:6: field 'tilt': manhole_cover has no metric 'tilt_dig' (did you mean 'tilt_deg'?)" in problems
    assert re.search(rf"{re.escape(str(models / 'BROKEN-1.yaml'))}:3: .*broken.js does not load: SyntaxError", problems)


def test_edge_codecs_test_passes_good_examples_and_shows_each_difference(tmp_path, vendor_folders):
    models, codecs = vendor_folders
    done = subprocess.run([*edge_command(), "codecs", "test", str(codecs / "acme.js"), "--mapping", str(models / "ACME-1.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS  cover tilted and moved" in done.stdout and "PASS  unknown port" in done.stdout
    assert "readings: water_cm=150, tilt_deg=30, open=1" in done.stdout
    assert "2 of 2 example(s) pass" in done.stdout
    (codecs / "acme.yaml").write_text(EXAMPLES.replace('tilt: "30 °"', 'tilt: "31 °"').replace("unknown fPort 9", "bad port"))
    done = subprocess.run([*edge_command(), "codecs", "test", str(codecs / "acme.js")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert 'data.tilt: expected "31 °", got "30 °"' in done.stdout
    assert 'errors[0]: expected "bad port", got "unknown fPort 9"' in done.stdout
    assert "0 of 2 example(s) pass" in done.stdout


def test_each_hostile_codec_gets_its_reason_and_a_looping_device_is_suspended_alone(vendor_folders):
    models, codecs = vendor_folders
    vendor, problems = load_models(models, codecs, JsLimits(time_limit=0.02, suspend_after=2, suspend_for=60))
    assert problems == []
    reasons = {}
    for name in HOSTILE:
        with pytest.raises(Exception) as error:
            vendor.from_bytes(f"{name.upper()}-1", 2, frame(1500, 30, True), "D-1")
        reasons[name] = error.value.reason
    assert reasons == {"throws": "codec_error", "loops": "codec_timeout", "hog": "codec_memory", "garbage": "codec_bad_output"}
    with pytest.raises(Exception) as error:
        vendor.from_bytes("LOOPS-1", 2, frame(1500, 30, True), "D-1")
    assert error.value.reason == "codec_timeout"  # the second in a row: now suspended for D-1 only
    started = time.monotonic()
    with pytest.raises(Exception) as error:
        vendor.from_bytes("LOOPS-1", 2, frame(1500, 30, True), "D-1")
    assert error.value.reason == "codec_suspended" and time.monotonic() - started < 0.01
    with pytest.raises(Exception) as error:
        vendor.from_bytes("LOOPS-1", 2, frame(1500, 30, True), "D-2")
    assert error.value.reason == "codec_timeout"  # another device of the model is still tried


def event(device: str, model: str, data: bytes, obj: dict | None = None, fport: int = 2) -> tuple[str, bytes]:
    topic, payload = chirpstack_event(device, time.time(), frame=data, fport=fport, model=model)
    doc = json.loads(payload)
    if obj is not None:
        doc["object"] = obj
    return topic, json.dumps(doc).encode()


def test_chirpstack_object_is_used_through_the_mapping_when_the_network_server_decoded(vendor_folders):
    models, codecs = vendor_folders
    vendor, _ = load_models(models, codecs)
    model_of = {"VC-0001": "ACME-1", "VT-0001": "THROWS-1"}.get
    decode = lambda message: chirpstack.decode(*message, model_of, received_at=time.time(), vendor=vendor)  # noqa: E731
    by_codec = decode(event("VC-0001", "ACME-1", frame(1500, 30, True)))
    assert {k: by_codec.values[k] for k in ("water_cm", "tilt_deg", "open")} == {"water_cm": 150.0, "tilt_deg": 30.0, "open": 1.0}
    # the object wins over the bytes: the bytes say something else, and a codec that throws is not run
    decoded = {"distance": "0.9 m", "tilt": "2 °", "moved": False, "firmware": "1.2"}
    by_object = decode(event("VC-0001", "ACME-1", frame(1500, 30, True), decoded))
    assert {k: by_object.values[k] for k in ("water_cm", "tilt_deg", "open")} == {"water_cm": 90.0, "tilt_deg": 2.0, "open": 0.0}
    assert decode(event("VT-0001", "THROWS-1", b"\x00", decoded)).values["water_cm"] == 90.0
    with pytest.raises(DecodeError) as error:
        decode(event("VT-0001", "THROWS-1", b"\x00"))
    assert error.value.reason == "codec_error" and "frame 1 bytes" in error.value.detail
    with pytest.raises(DecodeError) as error:
        decode(event("VC-0001", "ACME-1", frame(1500, 30, True), {"colour": "red"}))
    assert error.value.reason == "mapping"


REGISTRY = """id,kind,model,address,lat,lon,grid,zone,team,depth_cm
VC-0001,manhole_cover,ACME-1,1 Codec Rd,31.23,121.47,G01,Z1,team-g01,
VC-0002,manhole_cover,ACME-1,2 Codec Rd,31.23,121.47,G02,Z1,team-g02,
VT-0001,manhole_cover,THROWS-1,3 Codec Rd,31.23,121.47,G03,Z1,team-g03,
VL-0001,manhole_cover,LOOPS-1,4 Codec Rd,31.23,121.47,G03,Z1,team-g03,
VH-0001,manhole_cover,HOG-1,5 Codec Rd,31.23,121.47,G03,Z1,team-g03,
VG-0001,manhole_cover,GARBAGE-1,6 Codec Rd,31.23,121.47,G03,Z1,team-g03,
HC-0001,manhole_cover,MCL-300,7 Codec Rd,31.23,121.47,G04,Z1,team-g04,
HJ-0001,manhole_cover,MC-200,8 Codec Rd,31.23,121.47,G05,Z1,team-g05,
"""


def test_a_gateway_fed_hostile_codecs_keeps_running_and_every_other_device_gets_its_order(tmp_path, mosquitto, vendor_folders):
    models, codecs = vendor_folders
    (tmp_path / "devices.csv").write_text(REGISTRY)
    receiver = start_receiver(tmp_path / "receiver.db")
    status_port = free_port()
    config = gateway_config(tmp_path / "gw", mosquitto.url, receiver.url, tmp_path / "devices.csv",
                            Path(__file__).resolve().parent.parent / "rules", status_port,
                            extra=f'\n[codecs]\nmodels = "{models}"\nfolder = "{codecs}"\ntime_limit = 0.05\n'
                                  f'suspend_after = 3\n')
    gateway = Gateway(config, tmp_path / "gateway.log", status_port)
    publisher = None
    try:
        gateway.start()
        pid = gateway.pid
        publisher = Publisher(mosquitto.host, mosquitto.port)
        t0 = time.time() - 11
        tilted = frame(1500, 30, True)
        hostile = [event("VT-0001", "THROWS-1", tilted), event("VT-0001", "THROWS-1", tilted),
                   *(event("VL-0001", "LOOPS-1", tilted) for _ in range(5)),
                   event("VH-0001", "HOG-1", tilted), event("VG-0001", "GARBAGE-1", tilted)]
        valid = []
        for t in (t0, t0 + 11):
            for device, model, obj in (("VC-0001", "ACME-1", None),
                                       ("VC-0002", "ACME-1", {"distance": "1500 mm", "tilt": "30 °", "moved": True})):
                topic, payload = event(device, model, tilted if obj is None else b"\x00", obj)
                doc = json.loads(payload)
                doc["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}+00:00"
                valid.append((topic, json.dumps(doc).encode()))
            valid.append(own_json("HJ-0001", round(t, 3), {"tilt_deg": 30.0, "open": 1}))
        from edge.ingest.codecs import mcl300
        for t in (t0, t0 + 11):
            valid.append(chirpstack_event("HC-0001", t, frame=mcl300.encode({"tilt_deg": 30.0, "open": 1}, alarm=True)[1],
                                          fport=2))
        publisher.publish(hostile[:4] + valid[:len(valid) // 2] + hostile[4:] + valid[len(valid) // 2:])
        wanted = {"VC-0001", "VC-0002", "HJ-0001", "HC-0001"}

        def orders() -> set:
            return {o["device"] for o in receiver.orders() if o["rule"] == "cover_tilted"}

        assert wait_until(lambda: orders() >= wanted or not gateway.alive(), 60), (orders(), gateway.log_tail())
        assert gateway.alive() and gateway.pid == pid
        assert orders() == wanted  # the hostile codecs' devices opened nothing
        assert wait_until(lambda: sum(gateway.quarantined().values()) >= len(hostile), 30)
        quarantined = gateway.quarantined()
        assert {reason: quarantined[reason] for reason in
                ("codec_error", "codec_timeout", "codec_suspended", "codec_memory", "codec_bad_output")} == {
            "codec_error": 2, "codec_timeout": 3, "codec_suspended": 2, "codec_memory": 1, "codec_bad_output": 1}
        assert sum(quarantined.values()) == len(hostile)
        details = subprocess.run([*edge_command(), "quarantine", "list", "--config", str(config), "--reason", "codec_error"],
                                 capture_output=True, text=True, timeout=60).stdout
        assert "throws.js threw: Error: frame 4 bytes" in details
    finally:
        if publisher is not None:
            publisher.close()
        gateway.stop()
        receiver.process.terminate()
        receiver.process.wait(10)


def test_the_vendor_street_runs_through_a_real_gateway_into_one_order_per_event(tmp_path, mosquitto, receiver, clean_env):
    """config/scenarios/vendor.yaml: USM-100 covers (half decoded by the network server) and UFL-20 bins
    decoded by the project's own JavaScript codecs, beside built-in and own-JSON devices."""
    import signal

    import orjson

    from conftest import SIMULATOR, scenario_registry, start_edge_run, write_gateway_config

    scenario = Path(__file__).resolve().parent.parent / "config" / "scenarios" / "vendor.yaml"
    sim = SIMULATOR
    registry = scenario_registry(scenario, tmp_path / "registry.csv")
    assert "USM-0004,manhole_cover,USM-100" in registry.read_text() and ",bin,UFL-20," in registry.read_text()
    config = write_gateway_config(tmp_path, mosquitto.url, receiver.url, registry=registry.as_posix())
    log = tmp_path / "gateway.log"
    gateway = start_edge_run(config, log, clean_env)
    try:
        out = tmp_path / "run"
        run = subprocess.run(sim + ["scenario", str(scenario), "--broker", mosquitto.url, "--out", str(out),
                                    "--speed", "1000", "--start", "now-3h"], capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, run.stderr
        assert wait_until(lambda: len(receiver.orders()) >= 6, 60), receiver.orders()
        scored = subprocess.run(sim + ["score", "--truth", str(out / "truth.jsonl"), "--receiver", receiver.url, "--json"],
                                capture_output=True, text=True, timeout=60)
        assert scored.returncode == 0, scored.stderr
        result = orjson.loads(scored.stdout)
        summary = {k: result[k] for k in ("events", "found", "missed", "false_orders", "duplicates")}
        assert summary == {"events": 6, "found": 6, "missed": 0, "false_orders": 0, "duplicates": 0}, result
        devices = {o["device"] for o in receiver.orders()}
        assert {"USM-0002", "USM-0005", "USM-0006", "UFL-0001", "UFL-0002"} <= devices  # by codec, and by the network server's object
        assert "codec_" not in log.read_text() and "mapping" not in log.read_text()
    finally:
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=30) == 0
