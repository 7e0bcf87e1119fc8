"""Health of a running gateway: /metrics, the status page in a real headless Chromium,
`edge status` with and without the agent, systemd notifications, JSON logs without secrets."""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid

import orjson
import paho.mqtt.client as mqtt
import pytest
import requests

from conftest import REGISTRY, edge_command, wait_until, write_gateway_config
from edge import logs
from edge.broker import free_port
from edge.registry import Registry

SAMPLE = re.compile(r'^([a-z_]+)(\{([a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*)?\})? (-?[0-9.e+-]+|NaN)$')


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format, strictly: every sample's metric has HELP and TYPE before it."""
    described, values = set(), {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            described.add((line.split()[1], line.split()[2]))  # (HELP or TYPE, metric)
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample: {line!r}"
        name = match.group(1)
        assert {("HELP", name), ("TYPE", name)} <= described, f"no HELP and TYPE before {name}"
        values[match.group(1) + (match.group(2) or "")] = float(match.group(5))
    return values


def publish(broker_url: str, messages: list[tuple[str, bytes]]) -> None:
    host, port = broker_url.removeprefix("mqtt://").split(":")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}")
    client.connect(host, int(port))
    client.loop_start()
    try:
        for topic, payload in messages:
            client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("Chromium is missing; ./scripts/test installs Debian's chromium")
    return found


def headless(url: str, profile, *args: str) -> subprocess.CompletedProcess:
    """Debian's Chromium, headless, with a fresh profile and no calls home (the machine has no internet)."""
    return subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", *args, url],
        capture_output=True, text=True, timeout=90,
    )


def test_metrics_status_page_and_edge_status_of_a_running_gateway(tmp_path, mosquitto, receiver, clean_env):
    port = free_port()
    config = write_gateway_config(tmp_path, mosquitto.url, receiver.url, status=f"127.0.0.1:{port}")
    log = tmp_path / "gateway.log"
    gateway = subprocess.Popen(edge_command() + ["run", "--config", str(config)], stderr=log.open("wb"), env=clean_env)
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: "subscribed to" in log.read_text(), 60), log.read_text()
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
        t0 = time.time() - 30
        tilted = [("devices/MH-0003/telemetry", orjson.dumps({"device": "MH-0003", "ts": t0 + s,
                                                                "readings": {"tilt_deg": 31.0, "open": 1}}))
                  for s in (0, 6, 12)]
        warm = ("devices/MH-0002/telemetry", orjson.dumps({"device": "MH-0002", "ts": t0, "readings": {"temp_c": 21.23456}}))
        publish(mosquitto.url, tilted + [("devices/MH-0001/telemetry", b"{not json"),
                                         ("devices/XX-9999/telemetry", orjson.dumps(
                                             {"device": "XX-9999", "ts": t0, "readings": {"tilt_deg": 1.0}})), warm])

        def metrics():
            values = parse_metrics(requests.get(f"{base}/metrics", timeout=5).text)
            done = (values.get('edge_orders{state="opened"}') == 1 and values.get("edge_uplinked_total", 0) >= 1
                    and values.get("edge_messages_total") == 6)
            return values if done else None

        values = wait_until(metrics, 30)
        assert values, requests.get(f"{base}/metrics", timeout=5).text
        devices = len(Registry.load(REGISTRY))
        assert values["edge_agent_up"] == 1
        assert values["edge_messages_total"] == 6
        assert values['edge_quarantined_messages_total{reason="malformed_json"}'] == 1
        assert values["edge_unknown_devices"] == 1
        assert values["edge_alerts_raised_total"] == 1
        assert values["edge_rule_evaluations_total"] > 0 and values["edge_engine_batches_total"] >= 1
        # not heard from yet, 30 s after a start, is not silent: silent_after (7200 s) has not passed since the start
        assert values["edge_devices"] == devices and values["edge_devices_silent"] == 0
        assert values["edge_uplink_failing"] == 0 and values["edge_uplink_sends_total"] >= 1
        assert values['edge_outbox_unsent{kind="order"}'] == 0
        assert 50e6 < values["edge_resident_memory_bytes"] < 2e9

        snap = requests.get(f"{base}/status.json", timeout=5).json()
        (order,) = snap["orders"]["open"]
        assert (order["device"], order["rule"], order["state"]) == ("MH-0003", "cover_tilted", "opened")
        (reporting,) = [d for d in snap["devices"] if d["id"] == "MH-0003"]
        assert reporting["readings"] == {"tilt_deg": 31.0, "open": 1.0} and not reporting["silent"]

        status = subprocess.run(edge_command() + ["status", "--config", str(config)], capture_output=True, text=True,
                                timeout=60, env=clean_env)
        assert status.returncode == 0, status.stderr
        assert "agent running" in status.stdout and order["id"] in status.stdout
        assert "malformed_json 1" in status.stdout and "0 silent" in status.stdout

        # The page, as a browser renders it (no JavaScript needed), and a picture of it.
        dom = headless(base + "/", tmp_path / "chromium", "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        page = dom.stdout
        assert "Gateway gw-test" in page and "cover_tilted" in page and "MH-0003" in page
        assert re.search(r'id="tile-open-orders">open orders<b class="">1</b>', page)
        assert re.search(r'id="tile-uplink">uplink<b class="ok">ok</b>', page)
        assert "Silent devices" in page and "MH-0001" in page
        assert "tilt_deg 31 · open 1" in page and "temp_c 21.23" in page and "21.2345" not in page  # rounded
        rows = re.findall(r"<tr><td>([A-Z]+-\d+)</td><td>(manhole_cover|bin|camera)</td>", page)
        assert rows[0][0] == "MH-0003"  # the device with an open order first
        assert "Unknown devices (1)" in page and "XX-9999" in page
        assert '<svg id="map"' in page and page.count("<circle") == devices and 'fill="#c62828"' in page

        # an open order opens to its timeline
        link = re.search(r'<a href="(/orders/[^"]+)">', page).group(1)
        assert link == f"/orders/{order['id']}"
        timeline = requests.get(base + link, timeout=5)
        assert timeline.status_code == 200 and "Timeline" in timeline.text and "cover_tilted" in timeline.text
        assert "tilt_deg &gt; 15 or open == 1" in timeline.text and "opened" in timeline.text
        assert requests.get(base + "/orders/nope", timeout=5).status_code == 404
        order_shot = tmp_path / "order.png"
        picture = headless(base + link, tmp_path / "chromium", f"--screenshot={order_shot}", "--window-size=1000,800")
        assert picture.returncode == 0 and order_shot.stat().st_size > 10_000, picture.stderr[-2000:]
        shutil.copy(order_shot, tmp_path.parent / "status-order.png")
        shot = tmp_path / "status.png"
        picture = headless(base + "/", tmp_path / "chromium", f"--screenshot={shot}", "--window-size=1200,1400", "--hide-scrollbars")
        assert picture.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", picture.stderr[-2000:]
        assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
        keep = tmp_path.parent / "status-page.png"  # left for a person to look at
        shutil.copy(shot, keep)
    finally:
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=30) == 0

    # Without the agent, `edge status` says so and shows what the file knows.
    status = subprocess.run(edge_command() + ["status", "--config", str(config), "--timeout", "0.5"],
                            capture_output=True, text=True, timeout=60, env=clean_env)
    assert status.returncode == 3
    assert "agent NOT running" in status.stdout and "opened 1" in status.stdout and "malformed_json 1" in status.stdout


def test_systemd_notifications_and_json_logs_without_secrets(tmp_path, mosquitto, receiver, clean_env):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(30)
    config = write_gateway_config(tmp_path, mosquitto.url, receiver.url)
    secret = f"tok-{uuid.uuid4().hex}"
    env = dict(clean_env, NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="400000", EDGE_UPLINK_TOKEN=secret)
    log = tmp_path / "gateway.log"
    gateway = subprocess.Popen(edge_command() + ["run", "--config", str(config), "--log-format", "json",
                                                 "--log-level", "debug"], stderr=log.open("wb"), env=env)
    try:
        received = []
        while not any(m.startswith("READY=1") for m in received):
            received.append(notify.recv(4096).decode())
        pings = 0
        while pings < 2:  # the main loop pings at half the watchdog period
            if notify.recv(4096).decode() == "WATCHDOG=1":
                pings += 1
    finally:
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=30) == 0
    notify.setblocking(False)
    after = []
    while True:
        try:
            after.append(notify.recv(4096).decode())
        except BlockingIOError:
            break
    assert "STOPPING=1" in after
    lines = log.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {"time", "level", "logger", "message"} <= set(records[0])
    assert any("running" in r["message"] and r["logger"] == "edge.agent" for r in records)
    assert secret not in log.read_text()


def test_secrets_are_redacted_whoever_logs_them(capsys):
    logs.setup("info", "json", secrets=["hunter2-token"])
    try:
        logging.getLogger("uplink.anything").warning("POST failed with Authorization: Bearer %s", "hunter2-token")
        try:
            raise RuntimeError("bad password hunter2-token")
        except RuntimeError:
            logging.getLogger("edge").exception("boom")
    finally:
        logging.getLogger().handlers.clear()
    err = capsys.readouterr().err
    assert "hunter2-token" not in err
    first, second = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert first["message"] == "POST failed with Authorization: Bearer ***"
    assert "bad password ***" in second["exception"]
