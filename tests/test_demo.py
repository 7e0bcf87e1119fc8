"""`edge demo` runs to completion on its own and every order it opens is acknowledged."""

from __future__ import annotations

import re
import signal
import subprocess

import pytest
import requests

from conftest import edge_command


def run_kept(command: list[str], env: dict) -> str:
    """``edge demo --keep``: when it says it is still running, its pages answer; Ctrl-C ends it, exit 0."""
    process = subprocess.Popen(command + ["--keep"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("still running:"):
                break
        text = "".join(lines)
        assert "still running:" in text, text
        receiver, status = re.search(r"receiver (http://\S+), gateway status (http://\S+),", text).groups()
        assert requests.get(receiver, timeout=10).status_code == 200
        console, user, password = re.search(
            r"console (http://\S+/console/) \(user (\S+), password ([A-Za-z0-9_-]+)\)", text).groups()
        with requests.Session() as browser:  # the login the demo printed opens the console
            form = browser.get(console + "login", timeout=10).text
            csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
            page = browser.post(console + "login", data={"name": user, "password": password, "csrf": csrf,
                                                         "next": "/console/orders"}, timeout=10)
            assert page.status_code == 200 and page.url.endswith("/console/orders"), page.text[:500]
            order_ids = [o["order_id"] for o in requests.get(receiver + "api/v1/orders", timeout=10).json()["orders"]]
            assert order_ids and all(order_id in page.text for order_id in order_ids[:5])
        assert requests.get(status + "metrics", timeout=10).status_code == 200
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
        assert process.returncode == 0, text + rest
        return text + rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_demo_runs_to_completion(tmp_path, clean_env, broker):
    extra = ["--embedded-broker"] if broker == "embedded" else []
    command = edge_command() + ["demo", "--seconds", "15", "--workdir", str(tmp_path / "demo"), *extra]
    if broker == "mosquitto":  # and kept running after its summary, until Ctrl-C
        stdout = run_kept(command, clean_env)
    else:
        result = subprocess.run(command, capture_output=True, text=True, timeout=180, env=clean_env)
        assert result.returncode == 0, result.stdout + result.stderr
        stdout = result.stdout
    summary = stdout.split("\nsummary\n", 1)[1]

    def figure(name: str) -> int:
        return int(re.search(rf"^  {name}\s+(\d+)", summary, re.MULTILINE).group(1))

    opened, acknowledged = figure("orders opened"), figure("orders acknowledged by the receiver")
    readings = figure("readings")
    assert opened == acknowledged > 0
    assert readings > 0
    assert "every opened order was acknowledged" in stdout
    assert (tmp_path / "demo" / "data" / "gateway.db").exists()
    assert ("amqtt" if broker == "embedded" else "broker     mosquitto") in stdout


def test_demo_refuses_too_short_a_run():
    result = subprocess.run(edge_command() + ["demo", "--seconds", "3"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--seconds" in result.stderr
