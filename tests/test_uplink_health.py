"""The health summary (docs/uplink.md, "Health summary (contract version 1)"): a real ``edge run``
against a real ``python -m uplink.receiver``, over HTTP and over MQTT; what the platform stored
for the gateway is what the gateway runs, refused, holds and is."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import shutil
import signal
import sqlite3
import time
import uuid
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import requests

import edge
from conftest import RULES, Misbehaving, start_edge_run, start_receiver, wait_until, write_gateway_config

ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def stored_health(receiver_db: Path, gateway: str) -> tuple[dict | None, float | None]:
    """The receiver's latest health summary of ``gateway`` and when it arrived, read from its SQLite file."""
    if not receiver_db.exists():
        return None, None
    conn = sqlite3.connect(f"file:{receiver_db}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute("SELECT health, health_at FROM gateways WHERE gateway = ?", [gateway]).fetchone()
    except sqlite3.OperationalError:  # not made yet
        return None, None
    finally:
        conn.close()
    if row is None or row[0] is None:
        return None, None
    return orjson.loads(row[0]), row[1]


def rules_version(folder: Path) -> tuple[str, list[str]]:
    """The documented version, computed here on its own: SHA-256 over name NUL size NUL bytes, by name."""
    files = sorted((p.name, p.read_bytes()) for p in folder.iterdir() if p.suffix in (".yaml", ".yml"))
    digest = hashlib.sha256()
    for name, data in files:
        digest.update(name.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    return digest.hexdigest()[:12], [name for name, _ in files]


def seconds(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def unsent_orders(gateway_db: Path) -> int:
    conn = sqlite3.connect(f"file:{gateway_db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL AND kind = 'order'").fetchone()[0]
    finally:
        conn.close()


def gateway_config(tmp_path: Path, broker_url: str, platform_url: str, gateway: str, rules: Path, uplink: str) -> Path:
    config = write_gateway_config(tmp_path, broker_url, platform_url, rules=rules.as_posix(), id=gateway)
    config.write_text(config.read_text().replace("[mqtt]", "watch_interval = 0.1\n\n[mqtt]")
                      .replace("[uplink]", f"[uplink]\ndownlink_interval = 0.2\nhealth_interval = 0.5\n{uplink}"))
    return config


def rules_folder(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir()
    shutil.copy(RULES / "manhole_covers.yaml", rules)
    shutil.copy(RULES / "bins.yaml", rules)
    return rules


def test_the_platform_sees_rules_refusals_backlog_and_parts_over_http(tmp_path, mosquitto, clean_env):
    receiver = start_receiver(tmp_path / "receiver.db")
    front = Misbehaving(receiver.url, [])  # passes everything, until told to lose acknowledgements
    rules = rules_folder(tmp_path)
    config = gateway_config(tmp_path, mosquitto.url, front.url, "gw-health", rules, "batch_size = 1")
    log = tmp_path / "gateway.log"
    gateway = start_edge_run(config, log, clean_env)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)

    def health() -> dict | None:
        return stored_health(receiver.db, "gw-health")[0]

    def push(name: str, text: str) -> None:
        answer = requests.put(f"{receiver.url}/api/v1/gateways/gw-health/rules/{name}", data=text.encode(), timeout=5)
        assert answer.ok, answer.text

    try:
        # An idle gateway: its summary arrives alone, again and again, and says what it runs.
        first = wait_until(health, 60)
        assert first is not None, log.read_text()
        version, files = rules_version(rules)
        assert first["version"] == 1 and first["software"] == edge.__version__
        assert ISO_MS.fullmatch(first["at"]) and ISO_MS.fullmatch(first["started_at"])
        assert seconds(first["started_at"]) <= seconds(first["at"])
        assert first["rules"] == {"version": version, "files": ["bins.yaml", "manhole_covers.yaml"], "refused": []}
        assert files == ["bins.yaml", "manhole_covers.yaml"]
        assert first["backlog"] == {"revisions": 0, "telemetry": 0, "reports": 0}
        assert first["parts"]["uplink"] == "ok" and first["parts"]["disk"] == "ok"
        assert set(first["parts"].values()) <= {"ok", "degraded", "down"}
        assert set(first) == {"version", "at", "started_at", "backlog", "rules", "parts", "software"}
        later = wait_until(lambda: (h := health()) is not None and h["at"] != first["at"] and h, 30)
        assert later, "no second summary from an idle gateway"
        summary, arrived = stored_health(receiver.db, "gw-health")
        assert arrived >= seconds(summary["at"])  # the platform's clock minus `at`: the skew, here >= 0
        assert receiver.stats()["revisions"] == 0  # nothing but summaries was sent

        # A refused rule file is listed with its reason and lines; the rules running stay as they were.
        good = (rules / "bins.yaml").read_text()
        push("bins.yaml", good.replace("fill_pct >= 85", "fill_pct >= >= 85"))
        refused = wait_until(lambda: (h := health()) and h["rules"]["refused"] and h, 30)
        assert refused, health()
        (entry,) = refused["rules"]["refused"]
        assert (entry["file"], entry["reason"]) == ("bins.yaml", "rule_file_invalid")
        assert re.match(r"bins\.yaml:\d+: ", entry["detail"]) and len(entry["detail"]) <= 500
        assert ISO_MS.fullmatch(entry["at"])
        assert refused["rules"]["version"] == version
        assert wait_until(lambda: health()["parts"].get("downlink") == "degraded", 30), health()

        # Another file applied: a new version with it; bins.yaml is still refused (the platform's one never applied).
        push("cameras.yaml", (RULES / "cameras.yaml").read_text())
        with_cameras = wait_until(lambda: "cameras.yaml" in health()["rules"]["files"] and health(), 30)
        assert with_cameras, health()
        assert with_cameras["rules"]["version"] == rules_version(rules)[0] != version
        assert [r["file"] for r in with_cameras["rules"]["refused"]] == ["bins.yaml"]

        # A good bins.yaml applied: no longer refused; everything delivered, nothing waits.
        push("bins.yaml", good.replace("fill_pct >= 85", "fill_pct >= 80"))
        settled = wait_until(lambda: (h := health())["rules"]["refused"] == []
                             and h["rules"]["version"] == rules_version(rules)[0]
                             and h["backlog"] == {"revisions": 0, "telemetry": 0, "reports": 0} and h, 30)
        assert settled, health()
        assert settled["rules"]["files"] == ["bins.yaml", "cameras.yaml", "manhole_covers.yaml"]

        # A file edited on the gateway that a reload refuses is listed too, until the rules load again.
        running = settled["rules"]["version"]
        (rules / "local.yaml").write_text("rules:\n  - name: x\n    when: tilt_deg >\n")
        local = wait_until(lambda: [r for r in health()["rules"]["refused"] if r["file"] == "local.yaml"], 30)
        assert local and local[0]["reason"] == "rule_file_invalid" and "local.yaml:" in local[0]["detail"], health()
        assert health()["rules"]["version"] == running  # the running rules stay
        (rules / "local.yaml").unlink()
        assert wait_until(lambda: health()["rules"]["refused"] == [], 30), health()

        # A backlog: the platform stores every batch but its answers are lost, so nothing drains; each
        # batch (one revision: batch_size = 1) carries a summary with what waits besides it.
        front.plan = ["lose_ack"] * 100_000
        client.connect(mosquitto.host, mosquitto.port)
        client.loop_start()
        t0 = time.time()
        for ts in (t0, t0 + 11):  # cover_tilted holds for 10 s of device time
            for device in ("MH-0001", "MH-0002", "MH-0003"):
                payload = orjson.dumps({"device": device, "ts": ts, "readings": {"tilt_deg": 30.0, "open": 1}})
                client.publish(f"devices/{device}/telemetry", payload, qos=1).wait_for_publish(5)
        gateway_db = tmp_path / "data" / "gateway.db"
        assert wait_until(lambda: unsent_orders(gateway_db) == 3, 30), log.read_text()
        assert wait_until(lambda: health()["backlog"]["revisions"] == 2, 30), health()
        assert unsent_orders(gateway_db) == 3  # none acknowledged: the summary counted the two besides its batch

        front.plan = []  # answers reach the gateway again: the backlog drains
        assert wait_until(lambda: unsent_orders(gateway_db) == 0, 30)
        assert wait_until(lambda: health()["backlog"]["revisions"] == 0, 30), health()
        assert len(receiver.orders()) == 3
    finally:
        client.loop_stop()
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(30) == 0, log.read_text()[-3000:]
        front.shutdown()
        receiver.process.terminate()
        receiver.process.wait(10)


def test_the_health_summary_over_mqtt(tmp_path, mosquitto, clean_env):
    # A group of its own: its session outlives it at the session's broker, and a group member away
    # still gets its share of the messages, which another test's receiver would then miss.
    receiver = start_receiver(tmp_path / "receiver.db", "--mqtt", mosquitto.url,
                              "--mqtt-client-id", f"receiver-health-{uuid.uuid4().hex[:8]}",
                              "--mqtt-group", f"health-{uuid.uuid4().hex[:8]}")
    rules = rules_folder(tmp_path)
    config = gateway_config(tmp_path, mosquitto.url, mosquitto.url, "gw-health-mqtt", rules, 'mode = "mqtt"')
    log = tmp_path / "gateway.log"
    gateway = start_edge_run(config, log, clean_env)

    def health() -> dict | None:
        return stored_health(receiver.db, "gw-health-mqtt")[0]

    try:
        first = wait_until(health, 60)
        assert first is not None, log.read_text()
        assert first["version"] == 1 and ISO_MS.fullmatch(first["at"])
        assert first["rules"] == {"version": rules_version(rules)[0], "files": ["bins.yaml", "manhole_covers.yaml"],
                                  "refused": []}
        assert first["backlog"] == {"revisions": 0, "telemetry": 0, "reports": 0}
        assert first["parts"]["uplink"] == "ok" and first["software"] == edge.__version__

        bad = (rules / "bins.yaml").read_text().replace("fill_pct >= 85", "fill_pct >= >= 85")
        answer = requests.put(f"{receiver.url}/api/v1/gateways/gw-health-mqtt/rules/bins.yaml", data=bad.encode(),
                              timeout=5)
        assert answer.ok, answer.text
        refused = wait_until(lambda: (h := health()) and h["rules"]["refused"] and h, 30)
        assert refused, health()
        assert [(r["file"], r["reason"]) for r in refused["rules"]["refused"]] == [("bins.yaml", "rule_file_invalid")]
        assert refused["rules"]["version"] == first["rules"]["version"]
    finally:
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(30) == 0, log.read_text()[-3000:]
        receiver.process.terminate()
        receiver.process.wait(10)
