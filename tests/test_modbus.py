"""Modbus RTU sensors polled over a real pseudo-terminal: readings open orders, bad frames are quarantined."""

from __future__ import annotations

import re
import sqlite3
import struct
import threading
import time

import pytest
import requests

from conftest import REGISTRY, wait_until, write_gateway_config
from edge.agent import Agent
from edge.config import ConfigError, load_config
from edge.ingest import modbus_rtu
from edge.ingest.decode import DecodeError
from edge.ingest.modbus_poll import ModbusSetupError, polled_devices
from edge.registry import Registry
from firmware_sim.protocols.modbus import PtyLine, RegisterBank, RtuServer, to_registers, with_crc
from uplink.receiver import ReceiverServer, ReceiverStore

RTU_DEVICES = """id,kind,model,address,lat,lon,grid,zone,team,depth_cm,modbus_unit,poll_s
RMH-0001,manhole_cover,MC-200R,1 Serial Rd,31.23,121.47,G21,Z1,team-g21,,1,0.1
RMH-0002,manhole_cover,MC-200R,3 Serial Rd,31.23,121.47,G21,Z1,team-g21,,2,0.1
RBIN-0001,bin,SB-120R,5 Serial Rd,31.23,121.47,G21,Z1,team-g21,100,3,0.1
RMH-0004,manhole_cover,MC-200R,7 Serial Rd,31.23,121.47,G21,Z1,team-g21,,4,0.2
RMH-0009,manhole_cover,MC-200R,9 Serial Rd,31.23,121.47,G21,Z1,team-g21,,9,0.2
"""


def reply(unit: int, regs: list[int], function: int = 4) -> bytes:
    return with_crc(bytes([unit, function, 2 * len(regs)]) + struct.pack(f">{len(regs)}H", *regs))


def model(device):
    return {"RMH-0001": "MC-200R", "RBIN-0001": "SB-120R"}.get(device)


def test_decoder_reads_a_cover_and_a_bin_with_the_simulators_register_map():
    t = 1_763_830_000
    cover = to_registers("manhole_cover", {"tilt_deg": 31.5, "open": 1, "water_cm": 150.0, "temp_c": -2.5,
                                           "battery_v": 3.61}, t, alarm=True)
    message = modbus_rtu.decode("modbus/1/RMH-0001", reply(1, cover), model)
    assert (message.device_id, message.ts) == ("RMH-0001", float(t))
    assert message.values == {"tilt_deg": 31.5, "open": 1.0, "water_cm": 150.0, "temp_c": -2.5, "battery_v": 3.61}
    bin_regs = to_registers("bin", {"distance_cm": 12.5, "temp_c": 21.0}, t, alarm=False)
    assert modbus_rtu.decode("modbus/3/RBIN-0001", reply(3, bin_regs, 3), model).values == {
        "distance_cm": 12.5, "temp_c": 21.0}


@pytest.mark.parametrize("topic, frame, reason", [
    ("modbus/1/RMH-0001", b"", "timeout"),
    ("modbus/1/RMH-0001", reply(1, [0] * 10)[:-1] + b"\x00", "crc"),
    ("modbus/1/RMH-0001", reply(1, [0] * 10)[:9], "crc"),
    ("modbus/1/RMH-0001", with_crc(bytes([1, 0x84, 2])), "exception"),
    ("modbus/1/RMH-0001", reply(2, [0] * 10), "bad_reply"),
    ("modbus/1/RMH-0001", reply(1, [0] * 7), "bad_reply"),
    ("modbus/1/RMH-0001", reply(1, [0xFFFF] * 10), "no_reading"),
    ("modbus/1/RMH-0001", reply(1, [0] * 10), "bad_timestamp"),
    ("modbus/5/RMH-0005", reply(5, [0] * 10), "unknown_model"),
    ("modbus/x/RMH-0001", reply(1, [0] * 10), "bad_topic"),
    ("modbus/300/RMH-0001", reply(1, [0] * 10), "bad_topic"),
])
def test_decoder_refuses_bad_frames_with_a_reason(topic, frame, reason):
    with pytest.raises(DecodeError) as caught:
        modbus_rtu.decode(topic, frame, model)
    assert caught.value.reason == reason


def test_registry_columns_are_checked(tmp_path):
    path = tmp_path / "devices.csv"
    path.write_text(RTU_DEVICES)
    devices = polled_devices(Registry.load(path), 60.0)
    assert [(d.device_id, d.unit, d.count, d.interval) for d in devices] == [
        ("RMH-0001", 1, 10, 0.1), ("RMH-0002", 2, 10, 0.1), ("RBIN-0001", 3, 7, 0.1), ("RMH-0004", 4, 10, 0.2),
        ("RMH-0009", 9, 10, 0.2)]
    for bad, message in [
        (RTU_DEVICES.replace(",3,0.1", ",1,0.1"), "modbus_unit 1 is already RMH-0001's"),
        (RTU_DEVICES.replace(",3,0.1", ",300,0.1"), "modbus_unit 300 is not a unit id 1..247"),
        (RTU_DEVICES.replace("SB-120R", "SB-120"), "model 'SB-120' has no Modbus register map"),
        (RTU_DEVICES.replace(",3,0.1", ",3,0"), "poll_s must be more than 0 seconds"),
    ]:
        path.write_text(bad)
        with pytest.raises(ModbusSetupError, match=message):
            polled_devices(Registry.load(path), 60.0)


class CorruptingLine(PtyLine):
    """A pty whose replies for one unit get a flipped byte (fault injection: a noisy RS-485 line)."""

    corrupt_unit = 2

    def write(self, data: bytes) -> None:
        if data and data[0] == self.corrupt_unit:
            data = data[:3] + bytes([data[3] ^ 0xFF]) + data[4:]
        super().write(data)


def gateway_config(tmp_path, receiver_url: str, broker_url: str, port: str, registry) -> object:
    path = write_gateway_config(tmp_path, broker_url, receiver_url, registry=registry.as_posix())
    path.write_text(path.read_text() + f'\n[modbus]\nport = "{port}"\ntimeout = 0.2\nreopen_interval = 0.2\n')
    return load_config(path)


def test_polled_cover_opens_an_order_and_bad_frames_are_quarantined(tmp_path, mosquitto):
    registry = tmp_path / "devices.csv"
    registry.write_text(RTU_DEVICES)
    bank = RegisterBank()
    bank.add(1, "manhole_cover")
    bank.add(2, "manhole_cover")  # its replies are corrupted on the line
    bank.add(3, "bin")
    bank.add(4, "bin")  # the registry says it is a cover (10 registers): it answers exception 02
    # unit 9 is not on the bus: timeouts
    line = CorruptingLine()
    server = RtuServer(bank, line).start()
    store = ReceiverStore(tmp_path / "receiver.db")
    receiver = ReceiverServer("127.0.0.1", 0, store)
    receiver.start_background()
    agent = Agent(gateway_config(tmp_path, receiver.url, mosquitto.url, server.path, registry))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        assert agent.ready.wait(60)
        t0 = int(time.time()) - 60
        bank.update(1, {"tilt_deg": 2.0, "open": 0, "water_cm": 150.0}, t0, alarm=False)
        bank.update(3, {"distance_cm": 80.0}, t0, alarm=False)
        assert wait_until(lambda: agent.stats.readings >= 3, 20)
        for step in range(12):  # tilted for 11 s of device time; each measurement is polled once
            bank.update(1, {"tilt_deg": 31.0, "open": 1, "water_cm": 150.0}, t0 + 1 + step, alarm=True)
            polls = agent.poller.polls
            assert wait_until(lambda: agent.poller.polls >= polls + 5, 20)  # past unit 1 at least once
        assert wait_until(lambda: store.stats()["orders"] == 1, 20)
        (order,) = store.orders()
        assert (order["device"], order["rule"], order["grid"]) == ("RMH-0001", "cover_tilted", "G21")
        assert wait_until(lambda: {"crc", "exception", "timeout"} <= set(agent.stats.quarantined), 20)
        assert agent.poller.unchanged > 0  # the same measurement polled again is not evaluated again
        metrics = requests.get(f"http://127.0.0.1:{agent.status_server.port}/metrics", timeout=5).text
        polls = re.search(r"^edge_modbus_polls_total (\d+)$", metrics, re.M)
        assert polls and int(polls.group(1)) >= 60 and re.search(r"^edge_modbus_replies_total [1-9]", metrics, re.M)
    finally:
        agent.stop()
        thread.join(30)
        server.stop()
        receiver.shutdown()
        store.close()
    assert not thread.is_alive()
    with sqlite3.connect(tmp_path / "data" / "gateway.db") as conn:
        rows = conn.execute("SELECT topic, reason, detail FROM quarantine").fetchall()
    by_reason = {reason: (topic, detail) for topic, reason, detail in rows}
    assert by_reason["crc"][0] == "modbus/2/RMH-0002"
    assert by_reason["exception"] == ("modbus/4/RMH-0004",
                                      "unit 4 answered exception 2 (illegal data address) to function 4")
    assert by_reason["timeout"] == ("modbus/9/RMH-0009", "unit 9 did not answer")


def test_a_missing_serial_port_does_not_stop_the_gateway(tmp_path, mosquitto):
    registry = tmp_path / "devices.csv"
    registry.write_text(RTU_DEVICES)
    missing = tmp_path / "ttyUSB9"
    agent = Agent(gateway_config(tmp_path, "http://127.0.0.1:9", mosquitto.url, str(missing), registry))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        assert agent.ready.wait(60) and agent.subscriber.connected.wait(20)
        assert wait_until(lambda: agent.poller.port_errors >= 2, 10)
        assert "cannot open the Modbus serial port" in agent.poller.last_error and str(missing) in agent.poller.last_error
        assert thread.is_alive()
    finally:
        agent.stop()
        thread.join(30)
    assert not thread.is_alive()


def test_a_bad_modbus_registry_is_refused_before_start(tmp_path, mosquitto):
    registry = tmp_path / "devices.csv"
    registry.write_text(RTU_DEVICES.replace(",3,0.1", ",1,0.1"))
    with pytest.raises(ConfigError, match="RBIN-0001: modbus_unit 1 is already RMH-0001's"):
        Agent(gateway_config(tmp_path, "http://127.0.0.1:9", mosquitto.url, "/dev/null", registry))
    # without [modbus] port the columns are not used
    config = load_config(write_gateway_config(tmp_path, mosquitto.url, "http://127.0.0.1:9",
                                              registry=registry.as_posix()))
    assert Agent(config).poller is None


def test_shipped_registry_has_no_modbus_devices():
    assert polled_devices(Registry.load(REGISTRY), 60.0) == []


def test_the_simulators_registry_has_the_unit_ids_the_simulator_serves(tmp_path):
    from pathlib import Path

    from firmware_sim.scenario import load_scenario
    from firmware_sim.simulation import Simulation, write_registry

    scenario = load_scenario(Path(__file__).resolve().parent.parent / "config" / "scenarios" / "rs485.yaml")
    simulation = Simulation(scenario)
    write_registry(simulation.devices, tmp_path / "registry.csv")
    polled = polled_devices(Registry.load(tmp_path / "registry.csv"), 60.0)
    served = {node.reg.id: node.unit for node in simulation.nodes if node.protocol == "modbus"}
    assert len(served) == 6 and sorted(served.values()) == [1, 2, 3, 4, 5, 6]
    assert {p.device_id: p.unit for p in polled} == served


def test_config_check_finds_a_bad_modbus_registry_when_the_line_is_polled(tmp_path):
    from edge.config_check import check_config

    registry = tmp_path / "devices.csv"
    registry.write_text(RTU_DEVICES.replace(",3,0.1", ",1,0.1"))  # two devices at unit 1
    config = write_gateway_config(tmp_path, "mqtt://127.0.0.1:1", "http://127.0.0.1:9", registry=registry.as_posix())
    assert check_config(config) == []  # not polled: the columns are only parameters
    config.write_text(config.read_text() + '\n[modbus]\nport = "/dev/ttyUSB0"\n')
    (problem,) = check_config(config)
    assert problem.startswith(f"{config}:") and "registry.path" in problem
    assert "modbus_unit 1 is already RMH-0001's" in problem and "[modbus] port is set" in problem


def test_frames_are_pymodbus_frames_on_both_sides():
    from pymodbus.framer import FramerRTU
    from pymodbus.pdu import DecodePDU, ExceptionResponse

    from edge.ingest.modbus_map import read_request
    from firmware_sim.protocols.modbus import answer

    assert read_request(1, 3, 0, 10) == bytes.fromhex("01 03 00 00 00 0a c5 cd")  # the read of 10 registers every Modbus guide shows
    server_side, client_side = FramerRTU(DecodePDU(is_server=True)), FramerRTU(DecodePDU(is_server=False))
    used, request = server_side.handleFrame(read_request(7, 4, 0, 10), 0, 0)
    assert (used, request.dev_id, request.function_code, request.address, request.count) == (8, 7, 4, 0, 10)
    bank = RegisterBank()
    bank.add(7, "manhole_cover")
    bank.update(7, {"tilt_deg": 31.0, "open": 1}, 1_700_000_000, alarm=True)
    used, reply = client_side.handleFrame(answer(bank, read_request(7, 4, 0, 10)), 7, 0)
    assert reply.registers[:2] == [310, 1] and reply.registers[8:] == [1_700_000_000 >> 16, 1_700_000_000 & 0xFFFF]
    _, refused = client_side.handleFrame(answer(bank, read_request(7, 4, 8, 5)), 7, 0)
    assert isinstance(refused, ExceptionResponse) and refused.exception_code == 2
