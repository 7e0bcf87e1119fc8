"""`edge config check`: every problem that would stop the gateway, each with its line."""

from __future__ import annotations

import re
import subprocess

import pytest

from conftest import ROOT, edge_command, write_gateway_config
from edge.config import GatewayConfig
from edge.config_check import check_config


def check(path):
    return subprocess.run(edge_command() + ["config", "check", str(path)], capture_output=True, text=True, timeout=60)


def test_the_shipped_config_is_ok():
    result = check(ROOT / "config" / "gateway.toml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(": ok")


def test_every_problem_is_reported_with_its_line(tmp_path):
    path = write_gateway_config(tmp_path, "mqtt://127.0.0.1:1", "http://127.0.0.1:2")
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "bad.yaml").write_text("rules:\n  - name: x\n    applies_to: {kind: manhole_cover}\n"
                                    "    when: tilt_dg > 15\n    order: {category: manhole_cover_displaced, "
                                    "severity: major, title: t}\n")
    (tmp_path / "blocker").write_text("a file where the data folder's parent should be")
    text = path.read_text()
    text = re.sub(r'path = ".*devices.csv"', 'path = "missing.csv"', text)
    text = re.sub(r'paths = \[".*"\]', f'paths = ["{rules.as_posix()}"]', text)
    text = text.replace('data_dir = "data"', 'data_dir = "blocker/data"')
    text = text.replace("retry_max = 1.0", 'retry_max = 1.0\nca_file = "no-such-ca.pem"')
    path.write_text(text)
    lines = text.splitlines()

    def line_of(fragment):
        return next(i + 1 for i, line in enumerate(lines) if fragment in line)

    problems = check_config(path)
    assert problems == [
        f"{path}:{line_of('missing.csv')}: registry.path: no such file: {tmp_path / 'missing.csv'}",
        f"{rules / 'bad.yaml'}:4: rule 'x': when: unknown metric 'tilt_dg' for manhole_cover (did you mean 'tilt_deg'?); "
        "its metrics: tilt_deg, open, water_cm, ch4_lel_pct, h2s_ppm, temp_c, battery_v, rssi_dbm",
        f"{path}:{line_of('ca_file')}: uplink.ca_file: no such file: {tmp_path / 'no-such-ca.pem'}",
        f"{path}:{line_of('data_dir')}: gateway.data_dir: {tmp_path / 'blocker'} is not a folder",
    ]
    result = check(path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[:4] == problems and "4 problem(s)" in result.stderr


@pytest.mark.parametrize("change, expected", [
    (("[uplink]", "[uplink]\nretries = 3"), ":17: unknown key 'uplink.retries'"),
    (("[uplink]", "[uplink]\nretry_maxx = 3"), ":17: unknown key 'uplink.retry_maxx' (did you mean 'uplink.retry_max'?)"),
    (("[uplink]", "[uplinks]"), ":16: unknown key 'uplinks' (did you mean 'uplink'?)"),
    (('listen = "127.0.0.1:0"', 'listen = "9180"'), ":21: status.listen: expected host:port"),
    (("[uplink]", '[log]\nformat = "xml"\n[uplink]'), ":17: log.format"),
    (("[uplink]", "[uplink\n"), ":16: not valid TOML"),
])
def test_syntax_and_type_problems_are_reported_with_their_line(tmp_path, change, expected):
    path = write_gateway_config(tmp_path, "mqtt://127.0.0.1:1", "http://127.0.0.1:2")
    path.write_text(path.read_text().replace(*change, 1))
    result = check(path)
    assert result.returncode == 1 and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_every_setting_is_documented():
    reference = (ROOT / "docs" / "configuration.md").read_text()
    for section, field in GatewayConfig.model_fields.items():
        assert f"## [{section}]" in reference
        for key in field.annotation.model_fields:
            assert f"| `{section}.{key}` |" in reference, f"{section}.{key} is not in docs/configuration.md"


@pytest.mark.parametrize("folder", ["/proc/edge", "/sys/edge-data"])
def test_a_data_folder_that_cannot_be_made_is_found_by_check_and_refused_by_run_without_a_traceback(tmp_path, folder):
    """Permission bits say yes (root may write anywhere); the folder still cannot be made there."""
    path = write_gateway_config(tmp_path, "mqtt://127.0.0.1:1", "http://127.0.0.1:2")
    path.write_text(path.read_text().replace('data_dir = "data"', f'data_dir = "{folder}"'))
    checked = check(path)
    assert checked.returncode == 1 and f"gateway.data_dir: cannot create {folder}" in checked.stderr, checked.stderr
    run = subprocess.run(edge_command() + ["run", "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and f"gateway.data_dir: cannot create {folder}" in run.stderr
    assert "Traceback" not in run.stderr


def test_checking_a_data_folder_leaves_nothing_behind(tmp_path):
    path = write_gateway_config(tmp_path, "mqtt://127.0.0.1:1", "http://127.0.0.1:2")
    path.write_text(path.read_text().replace('data_dir = "data"', 'data_dir = "a/b/data"'))
    assert check(path).returncode == 0
    assert not (tmp_path / "a").exists()


def test_a_wrong_key_and_a_missing_file_are_reported_in_one_pass(tmp_path):
    path = write_gateway_config(tmp_path, "mqtt://127.0.0.1:1", "http://127.0.0.1:2")
    text = re.sub(r'path = ".*devices.csv"', 'path = "missing.csv"', path.read_text())
    text = text.replace("[uplink]", "[uplink]\nretries = 3").replace('listen = "127.0.0.1:0"', 'listen = "9180"')
    path.write_text(text)
    result = check(path)
    assert result.returncode == 1
    problems = result.stderr.splitlines()[:-1]
    assert any("unknown key 'uplink.retries'" in p for p in problems)
    assert any("status.listen: expected host:port" in p for p in problems)
    assert any(f"registry.path: no such file: {tmp_path / 'missing.csv'}" in p for p in problems)
    assert "3 problem(s)" in result.stderr, result.stderr
    run = subprocess.run(edge_command() + ["run", "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "unknown key 'uplink.retries'" in run.stderr and "Traceback" not in run.stderr
