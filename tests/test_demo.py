"""`edge demo` runs to completion on its own and every order it opens is acknowledged."""

from __future__ import annotations

import re
import subprocess

import pytest

from conftest import edge_command


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_demo_runs_to_completion(tmp_path, clean_env, broker):
    extra = ["--embedded-broker"] if broker == "embedded" else []
    result = subprocess.run(
        edge_command() + ["demo", "--seconds", "15", "--workdir", str(tmp_path / "demo"), *extra],
        capture_output=True, text=True, timeout=180, env=clean_env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.split("\nsummary\n", 1)[1]

    def figure(name: str) -> int:
        return int(re.search(rf"^  {name}\s+(\d+)", summary, re.MULTILINE).group(1))

    opened, acknowledged = figure("orders opened"), figure("orders acknowledged by the receiver")
    readings = figure("readings")
    assert opened == acknowledged > 0
    assert readings > 0
    assert "every opened order was acknowledged" in result.stdout
    assert (tmp_path / "demo" / "data" / "gateway.db").exists()
    assert ("amqtt" if broker == "embedded" else "broker     mosquitto") in result.stdout


def test_demo_refuses_too_short_a_run():
    result = subprocess.run(edge_command() + ["demo", "--seconds", "3"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--seconds" in result.stderr
