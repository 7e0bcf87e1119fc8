"""The protocols on the wire: own JSON with status, ChirpStack uplinks, Frigate events (real Mosquitto),
Modbus RTU on a real pseudo-terminal polled with pyserial."""

from __future__ import annotations

import base64
import threading
import uuid
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
import serial

from edge.ingest.codecs import decode
from edge.ingest.decode import decode_telemetry
from firmware_sim import load_scenario, run_scenario
from firmware_sim.protocols.lorawan import dev_eui
from firmware_sim.protocols.modbus import ModbusError, from_registers, read_registers, with_crc

START = 1748736000.0

MIXED = """
seed: 11
duration: 2h
speed: max
lorawan_application: app-{tag}
devices:
  - {{kind: manhole_cover, count: 3, protocol: lorawan, id_prefix: LMH-{tag}}}
  - {{kind: bin, count: 2, protocol: lorawan, id_prefix: LBIN-{tag}}}
  - {{kind: manhole_cover, count: 2, id_prefix: JMH-{tag}}}
  - {{kind: camera, count: 1, id_prefix: CAM-{tag}}}
timing:
  manhole_cover: {{interval: 10m}}
  bin: {{interval: 10m}}
collections: []
events:
  - {{kind: cover_open, device: LMH-{tag}-0001, at: 20m, duration: 5m}}
  - {{kind: street_vending, device: CAM-{tag}-0001, at: 30m, duration: 2m}}
faults:
  - {{kind: malformed, device: LBIN-{tag}-0001, probability: 0.5}}
  - {{kind: dropout, device: JMH-{tag}-0002, at: 1h, duration: 30m}}
"""


class Collector:
    def __init__(self, broker, topics: list[str]):
        self.messages: list[mqtt.MQTTMessage] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}")
        subscribed = threading.Event()
        self.client.on_message = lambda c, u, m: self.messages.append(m)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.subscribe([(t, 1) for t in topics])
        self.client.loop_start()
        assert subscribed.wait(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_lorawan_frigate_and_json_devices_on_a_real_broker(tmp_path, mosquitto):
    tag = uuid.uuid4().hex[:4].upper()
    path = tmp_path / "mixed.yaml"
    path.write_text(MIXED.format(tag=tag))
    collector = Collector(mosquitto, [f"application/app-{tag}/device/+/event/up", "frigate/events",
                                      f"devices/+/telemetry", f"devices/+/status"])
    try:
        result = run_scenario(load_scenario(path), broker=mosquitto.url, out=tmp_path / "out", start=START)
        assert result.unacknowledged == 0
        import time

        def mine():  # the shared broker also holds other tests' retained status messages
            return [m for m in list(collector.messages) if tag in m.topic or tag in m.payload.decode(errors="replace")]

        def complete():  # every protocol's messages in, however busy the machine
            got = mine()
            lorawan = sum(m.topic.startswith(f"application/app-{tag}/") for m in got)
            frigate = sum(m.topic == "frigate/events" for m in got)
            return (lorawan >= result.stats.by_protocol.get("lorawan", 0)
                    and frigate >= result.stats.by_protocol.get("frigate", 0)
                    and len(got) >= result.stats.published + result.stats.status)  # status messages too

        deadline = time.monotonic() + 30
        while not complete() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        collector.close()
    mine = mine()
    recorded = [orjson.loads(line) for line in (tmp_path / "out" / "readings.jsonl").read_bytes().splitlines()]

    # LoRaWAN: ChirpStack uplink events whose base64 frames the model's codec decodes to the recorded readings.
    uplinks = [m for m in mine if m.topic.startswith(f"application/app-{tag}/")]
    decoded, bad = [], 0
    for message in uplinks:
        event = orjson.loads(message.payload)
        device = event["deviceInfo"]["deviceName"]
        assert message.topic == f"application/app-{tag}/device/{dev_eui(device)}/event/up"
        assert event["deviceInfo"]["devEui"] == dev_eui(device) and event["rxInfo"][0]["rssi"] < 0
        try:
            readings = decode(event["deviceInfo"]["deviceProfileName"], event["fPort"], base64.b64decode(event["data"], validate=True))
        except Exception:  # the malformed ones: truncated frame, unknown fPort, bad base64
            bad += 1
            continue
        readings["rssi_dbm"] = float(event["rxInfo"][0]["rssi"])
        decoded.append((device, readings))
    assert bad == result.stats.malformed > 0
    lora_recorded = [(m["device"], m["readings"]) for m in recorded if m["device"].startswith(("LMH", "LBIN"))]
    assert decoded == lora_recorded
    assert any(r.get("open") == 1.0 and r["tilt_deg"] > 15 for d, r in decoded if d == f"LMH-{tag}-0001")
    fcnts = [orjson.loads(m.payload)["fCnt"] for m in uplinks if f"LMH-{tag}-0002".encode() in m.payload]
    assert fcnts == list(range(1, len(fcnts) + 1))

    # Frigate: one event id, new -> update... -> end, with label, score and zone.
    frigate = [orjson.loads(m.payload) for m in mine if m.topic == "frigate/events"]
    assert [e["type"] for e in frigate][0] == "new" and [e["type"] for e in frigate][-1] == "end"
    assert {e["after"]["id"] for e in frigate} == {frigate[0]["after"]["id"]}
    assert all(e["after"]["label"] == "vendor" and e["after"]["camera"] == f"CAM-{tag}-0001" for e in frigate)
    assert frigate[1]["before"] == frigate[0]["after"] and frigate[-1]["after"]["end_time"] is not None
    assert frigate[0]["after"]["current_zones"] == ["pavement"]

    # Own JSON: what the gateway's decoder accepts; retained status online, offline in a dropout and at the end.
    telemetry = [m for m in mine if m.topic.endswith("/telemetry")]
    assert telemetry and all(decode_telemetry(m.topic, m.payload).device_id.startswith("JMH") for m in telemetry)
    status = [(m.topic.split("/")[1], m.payload.decode()) for m in mine if m.topic.endswith("/status")]
    dropped = [s for d, s in status if d == f"JMH-{tag}-0002"]
    assert dropped == ["online", "offline", "online", "offline"]
    assert all(m.retain is False or m.topic.endswith("/status") for m in mine)


MODBUS = """
seed: 2
duration: 1h
speed: 600
devices:
  - {kind: manhole_cover, count: 2, protocol: modbus}
  - {kind: bin, count: 1, protocol: modbus}
timing:
  manhole_cover: {interval: 1m}
  bin: {interval: 1m}
events:
  - {kind: cover_open, device: MH-0002, at: 1s}
"""


def test_modbus_rtu_devices_answer_on_a_real_pty(tmp_path):
    path = tmp_path / "modbus.yaml"
    path.write_text(MODBUS)
    ready, stop = threading.Event(), threading.Event()
    where: list[str] = []

    def serving(port: str) -> None:
        where.append(port)
        ready.set()

    result: list = []
    runner = threading.Thread(target=lambda: result.append(run_scenario(
        load_scenario(path), out=tmp_path / "out", start=START, stop=stop, on_modbus=serving, linger=30)))
    runner.start()
    try:
        assert ready.wait(10)
        port = serial.Serial(where[0], baudrate=9600, timeout=0.5)
        import time

        deadline = time.monotonic() + 10
        regs = read_registers(port, 2, 0, 10, function=3)
        while regs[0] == 0xFFFF and time.monotonic() < deadline:  # not measured yet
            time.sleep(0.05)
            regs = read_registers(port, 2, 0, 10, function=3)
        ts, readings = from_registers("manhole_cover", regs)
        assert readings["open"] == 1.0 and readings["tilt_deg"] > 15 and ts >= START
        bin_regs = read_registers(port, 3, 0, 7)  # function 04
        assert set(from_registers("bin", bin_regs)[1]) <= {"distance_cm", "temp_c", "tilt_deg", "battery_v"}
        with pytest.raises(ModbusError) as error:
            read_registers(port, 1, 8, 5)
        assert error.value.code == 2  # past the end of the map
        with pytest.raises(ValueError):  # pymodbus will not build a read of 0 registers; a master could send one
            read_registers(port, 1, 0, 0)
        port.write(with_crc(bytes([1, 4, 0, 0, 0, 0])))
        port.timeout = 2
        assert port.read(5) == with_crc(bytes([1, 0x84, 3]))  # exception 03, illegal data value
        with pytest.raises(ModbusError) as error:
            read_registers(port, 9, 0, 1, timeout=0.3)
        assert error.value.reason == "timeout"  # no such unit on the bus: silence
        port.write(bytes([1, 3, 0, 0, 0, 1, 0, 0]))  # bad CRC: no answer; after the master's reply timeout
        time.sleep(0.2)                               # the next request is answered
        assert len(read_registers(port, 1, 0, 2)) == 2
        port.close()
    finally:
        stop.set()
        runner.join(30)
    assert result and not runner.is_alive()
    units = orjson.loads((tmp_path / "out" / "modbus.json").read_bytes())
    assert units["units"] == {"MH-0001": 1, "MH-0002": 2, "BIN-0001": 3}
