"""The gateway config: refused before start, with the line that is wrong."""

from __future__ import annotations

import subprocess

import pytest

from conftest import ROOT, edge_command, write_gateway_config
from edge.config import ConfigError, load_config


def test_shipped_config_loads_and_resolves_paths():
    config = load_config(ROOT / "config" / "gateway.toml")
    assert config.registry.path == ROOT / "config" / "devices.csv"
    assert config.rules.paths == [ROOT / "rules"]
    assert config.mqtt.client_id == "edge-gw-street-01"


def test_secrets_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_UPLINK_TOKEN", "from-env")
    config = load_config(write_gateway_config(tmp_path, "mqtt://127.0.0.1:1", "http://127.0.0.1:2"))
    assert config.uplink.token == "from-env"


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ('[uplink]\nurl = "http://127.0.0.1:2"', '[uplink]\nurl = "ftp://x"', ":17: uplink.url: expected http(s)://host:port in http mode"),
        ("retry_max = 1.0", "retry_max = 1.0\nbatchsize = 5", ":19: unknown key 'uplink.batchsize'"),
        ('[mqtt]\nurl = "mqtt://127.0.0.1:1"', '[mqtt]\nurl = "mqtt://127.0.0.1:1"\nqos = "one"', ":14: mqtt.qos"),
        ("retry_max = 1.0", "retry_max = 1.0\nhealth_interval = -1", ":19: uplink.health_interval"),
        ("retry_max = 1.0", "retry_max = 1.0\nhealth_interval = inf", ":19: uplink.health_interval"),
    ],
)
def test_bad_config_names_its_line(tmp_path, old, new, expected):
    path = write_gateway_config(tmp_path, "mqtt://127.0.0.1:1", "http://127.0.0.1:2")
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert expected in str(caught.value)
    result = subprocess.run(edge_command() + ["run", "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and expected in result.stderr and "Traceback" not in result.stderr
