"""`edge quarantine list` and `edge devices unknown` over what a real gateway run recorded."""

from __future__ import annotations

import subprocess
import time

import orjson

from conftest import edge_command, running_agent, wait_until, write_gateway_config
from uplink.receiver import ReceiverServer, ReceiverStore


def test_quarantine_and_unknown_devices_are_listed(tmp_path, mosquitto, clean_env):
    store = ReceiverStore(tmp_path / "receiver.db")
    server = ReceiverServer("127.0.0.1", 0, store)
    server.start_background()
    config_path = write_gateway_config(tmp_path, mosquitto.url, server.url)
    try:
        with running_agent(config_path, mosquitto) as (agent, client):
            now = time.time()
            for payload in (b"{broken", b"[1]", b"{also broken"):
                client.publish("devices/MH-0001/telemetry", payload, qos=1).wait_for_publish(5)
            for step in range(3):
                client.publish("devices/XX-0404/telemetry", orjson.dumps({"ts": now + step, "readings": {}}),
                               qos=1).wait_for_publish(5)
            client.publish("frigate/events", orjson.dumps({"type": "new", "after": {
                "camera": "CAM-9999", "label": "car", "score": 0.9, "frame_time": now, "start_time": now}}),
                qos=1).wait_for_publish(5)
            assert wait_until(lambda: agent.stats.messages == 7, 20)
    finally:
        server.shutdown()
        store.close()

    def edge(*args):
        return subprocess.run(edge_command() + list(args) + ["--config", str(config_path)], cwd=tmp_path,
                              capture_output=True, text=True, env=clean_env, timeout=60)

    listed = edge("quarantine", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert [line.split()[1] for line in lines] == ["malformed_json", "wrong_type", "malformed_json"]
    assert "devices/MH-0001/telemetry" in lines[0] and "{also broken" in lines[0]
    only = edge("quarantine", "list", "--reason", "malformed_json", "--limit", "1").stdout.splitlines()
    assert len(only) == 1 and "{also broken" in only[0]

    unknown = edge("devices", "unknown")
    assert unknown.returncode == 0, unknown.stderr
    rows = {line.split()[0]: line for line in unknown.stdout.splitlines()}
    assert set(rows) == {"XX-0404", "CAM-9999"}
    assert "3 message(s)" in rows["XX-0404"] and "frigate/events" in rows["CAM-9999"]


def test_commands_explain_a_missing_gateway_file(tmp_path, clean_env):
    config_path = write_gateway_config(tmp_path, "mqtt://127.0.0.1:1", "http://127.0.0.1:1")
    result = subprocess.run(edge_command() + ["devices", "unknown", "--config", str(config_path)], cwd=tmp_path,
                            capture_output=True, text=True, env=clean_env, timeout=60)
    assert result.returncode == 1 and "no gateway file" in result.stderr
