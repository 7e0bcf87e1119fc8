"""A platform that lies: real `edge run` processes against an HTTP platform that pushes hostile
changes and answers hostile things, and the transports' parsing of what a platform says.

The platform here is a small real HTTP server in the test process (the reference receiver
does not take reports yet, and a hostile platform must be able to say what the receiver
never would). It stores what the gateway uplinks (each revision once, by order id and
revision) and the reports, and serves a changes feed the test writes, raw answers included.

After each hostile input the gateway must still be the same process, show the refusal (in
status.json, and in /healthz for a refused rule file), have reported it to the platform, and
deliver a fresh alarm's order exactly once.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import orjson
import paho.mqtt.client as mqtt
import pytest
import requests

from conftest import REGISTRY, RULES, edge_command, wait_until, write_gateway_config
from edge.broker import free_port
from uplink.transport_http import HttpTransport, TransportError, parse_acknowledgement

GATEWAY = "gw-hostile"


class Platform(ThreadingHTTPServer):
    """A central platform as hostile as the test wants: ``feed`` is its changes feed, ``raw_changes``
    and ``raw_uplink`` are answers given (once each, in order) instead of the normal ones."""

    daemon_threads = True

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.feed: list = []  # changes, as the platform will send them (any shape)
        self.raw_changes: list[tuple[int, str, bytes]] = []  # (status, content type, body) answers to GET changes
        self.raw_uplink: list[tuple[int, str, bytes]] = []  # ... and to POST uplink (nothing stored then)
        self.revisions: dict[tuple[str, int], int] = {}  # (order id, revision) -> times received and acknowledged
        self.bodies: dict[str, dict] = {}
        self.reports: list[dict] = []
        self.uplink_answers: list[str] = []  # "normal" or "raw", per POST
        platform = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10

            def log_message(self, *args):
                pass

            def answer(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                url = urlparse(self.path)
                if url.path != f"/api/v1/gateways/{GATEWAY}/changes":
                    self.answer(404, "text/plain", b"no")
                    return
                after = int(parse_qs(url.query).get("after", ["0"])[0])
                with platform.lock:
                    if platform.raw_changes:
                        self.answer(*platform.raw_changes.pop(0))
                        return
                    changes = [c for c in platform.feed if not _numbered(c) or not 0 < c["seq"] <= after]
                self.answer(200, "application/json", json.dumps({"changes": changes}).encode())  # 2**70 too

            def do_POST(self):  # noqa: N802
                body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with platform.lock:
                    if platform.raw_uplink:
                        platform.uplink_answers.append("raw")
                        self.answer(*platform.raw_uplink.pop(0))
                        return
                    platform.uplink_answers.append("normal")
                    acknowledged = []
                    for revision in body["revisions"]:
                        key = (revision["order_id"], revision["revision"])
                        platform.revisions[key] = platform.revisions.get(key, 0) + 1
                        platform.bodies[revision["order_id"]] = revision
                        acknowledged.append(list(key))
                    platform.reports += body.get("reports", [])
                    answer = {"acknowledged": acknowledged,
                              "telemetry_acknowledged": [[t["device"], t["interval"]] for t in body["telemetry"]],
                              "reports_acknowledged": [r["seq"] for r in body.get("reports", [])]}
                self.answer(200, "application/json", orjson.dumps(answer))

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def push(self, change) -> None:
        with self.lock:
            self.feed.append(change)

    def report(self, seq: int) -> dict | None:
        with self.lock:
            return next((r for r in self.reports if r["seq"] == seq), None)

    def orders_of(self, device: str) -> dict[tuple[str, int], int]:
        with self.lock:
            return {key: n for key, n in self.revisions.items() if self.bodies[key[0]]["device"] == device}


def _numbered(change) -> bool:
    return isinstance(change, dict) and isinstance(change.get("seq"), int) and not isinstance(change["seq"], bool)


class World:
    """One gateway process, its platform and broker, for the whole module: every case must leave it running."""

    def __init__(self, tmp_path, mosquitto):
        self.platform = Platform()
        self.rules = tmp_path / "rules"
        shutil.copytree(RULES, self.rules)
        self.originals = {p.name: p.read_text() for p in self.rules.iterdir()}
        self.status_port = free_port()
        config = write_gateway_config(tmp_path, mosquitto.url, self.platform.url, id=GATEWAY,
                                      rules=self.rules.as_posix(), status=f"127.0.0.1:{self.status_port}")
        config.write_text(config.read_text().replace("[mqtt]", "watch_interval = 0.2\n\n[mqtt]")
                          .replace("[uplink]", "[uplink]\ndownlink_interval = 0.2\ntimeout = 2.0"))
        self.config = config
        self.log = tmp_path / "gateway.log"
        self.process = subprocess.Popen(edge_command() + ["run", "--config", str(config)], stderr=self.log.open("wb"))
        self.pid = self.process.pid
        self.seqs = itertools.count(1)
        devices = [line.split(",")[:2] for line in REGISTRY.read_text().splitlines()[1:]]
        self.alarms = iter([d for d, kind in devices if kind == "manhole_cover"] + [d for d, kind in devices if kind == "bin"])
        self.mqtt = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}")
        self.mqtt.connect(mosquitto.host, mosquitto.port)
        self.mqtt.loop_start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.status_port}"

    def status(self) -> dict:
        return requests.get(f"{self.base}/status.json", timeout=10).json()

    def healthz(self) -> requests.Response:
        return requests.get(f"{self.base}/healthz", timeout=10)

    def refused(self, reason: str) -> int:
        return self.status()["downlink"]["refused"].get(reason, 0)

    def alarm(self) -> str:
        """A device not used before raises an alarm: a cover knocked open (10 s), or a bin on fire."""
        device = next(self.alarms)
        t0 = time.time() - 30
        if device.startswith("MH-"):
            readings = [(t0 + s, {"tilt_deg": 31.0, "open": 1}) for s in (0, 6, 12)]
        else:
            readings = [(t0, {"temp_c": 80.0})]
        for ts, values in readings:
            payload = orjson.dumps({"device": device, "ts": ts, "readings": values})
            self.mqtt.publish(f"devices/{device}/telemetry", payload, qos=1).wait_for_publish(10)
        return device

    def alarm_delivered_once(self, device: str | None = None) -> None:
        """An alarm's order reaches the platform, exactly once, and the gateway is still the process it was."""
        device = device or self.alarm()
        assert wait_until(lambda: self.platform.orders_of(device), 60), (device, self.log.read_text()[-3000:])
        time.sleep(0.5)  # a duplicate, if the gateway sent one, would arrive now
        received = self.platform.orders_of(device)
        assert list(received.values()) == [1], received  # one revision, received once
        assert self.process.poll() is None and self.process.pid == self.pid, self.log.read_text()[-3000:]

    def stop(self) -> None:
        self.mqtt.loop_stop()
        self.mqtt.disconnect()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.platform.shutdown()


@pytest.fixture(scope="module")
def world(tmp_path_factory, mosquitto):
    w = World(tmp_path_factory.mktemp("hostile"), mosquitto)
    try:
        assert wait_until(lambda: "subscribed to" in w.log.read_text(), 90), w.log.read_text()
        assert wait_until(lambda: _answers(w), 30)
        yield w
    finally:
        w.stop()


def _answers(w: World) -> bool:
    try:
        return w.healthz().status_code == 200
    except requests.RequestException:
        return False


def bins_with(old: str, new: str) -> str:
    text = (RULES / "bins.yaml").read_text()
    assert old in text
    return text.replace(old, new, 1)


ALIAS_BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{b}: &{b} [{','.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")) + "rules: [*i]\n"

# (case, the change pushed (seq filled in), refusal reason, text the report's detail must hold)
RULE_FILES = [
    ("nested_parentheses", {"file": "bins.yaml", "content": bins_with("fill_pct >= 85", "(" * 5000 + "fill_pct >= 85" + ")" * 5000)},
     "bins.yaml:10: rule 'bin_full': when: in condition"),
    ("alias_bomb", {"file": "bomb.yaml", "content": ALIAS_BOMB}, "bomb.yaml:1: not valid YAML: YAML anchors and aliases"),
    ("300_kb", {"file": "big.yaml", "content": (RULES / "bins.yaml").read_text() + "#" + "x" * 300_000 + "\n"},
     "big.yaml:1: file is larger than 256 KiB"),
    ("unknown_category", {"file": "cameras.yaml",
                          "content": (RULES / "cameras.yaml").read_text().replace("category: ", "category: x_", 1)},
     "is not in the category table"),
    ("yaml_nested_5000", {"file": "deep.yaml", "content": "rules: " + "[" * 5000 + "]" * 5000 + "\n"},
     "deep.yaml:1: not valid YAML: nested more than 20 levels deep"),
    ("title_width_bomb", {"file": "bins.yaml", "content": bins_with("{value:.0f}", "{value:999999999}")},
     "widths and precisions above 64 are not allowed"),
    ("content_not_text", {"file": "bins.yaml", "content": {"rules": []}}, "bins.yaml:1: the content must be text"),
    ("path_in_name", {"file": "../../etc/evil.yaml", "content": "rules: []\n"}, "is not a rule file name"),
    ("duplicate_rule_name", {"file": "bins2.yaml", "content": (RULES / "bins.yaml").read_text()},
     "rule name 'bin_full' is already used at"),
]


@pytest.mark.parametrize("case,change,detail", RULE_FILES, ids=[c[0] for c in RULE_FILES])
def test_a_refused_rule_file_is_reported_shown_and_not_written(world, case, change, detail):
    seq = next(world.seqs)
    before = world.status()["downlink"]["rule_files_refused"]
    world.platform.push({"seq": seq, "type": "rules", **change})
    assert wait_until(lambda: world.platform.report(seq), 30), world.log.read_text()[-3000:]
    report = world.platform.report(seq)
    assert (report["type"], report["status"], report["reason"]) == ("rules", "refused", "rule_file_invalid")
    assert detail in report["detail"], report["detail"]
    name = change["file"]
    for line in report["detail"].splitlines():  # the file is cited as pushed, never by a temporary path
        assert f"{name}:" not in line or line.startswith(f"{name}:"), line
    snap = world.status()
    assert snap["downlink"]["rule_files_refused"] == before + 1
    assert snap["downlink"]["last_refused_rule_file"]["seq"] == seq
    health = world.healthz()
    assert health.status_code == 503 and "downlink degraded" in health.text, health.text
    assert {p.name: p.read_text() for p in world.rules.iterdir()} == world.originals  # nothing written
    assert not list(world.rules.glob(".*"))
    world.alarm_delivered_once()


# (case, the change (seq filled in where "SEQ" stands), reason, text the report's detail must hold)
ORDER_CHANGES = [
    ("no_order_id", {"seq": "SEQ", "type": "order", "state": "accepted"}, "malformed_change", "order_id must be text"),
    ("order_id_not_text", {"seq": "SEQ", "order_id": {"a": 1}, "state": "accepted"}, "malformed_change",
     "order_id must be text"),
    ("state_not_text", {"seq": "SEQ", "order_id": "x", "state": ["accepted"]}, "malformed_change", "state must be text"),
    ("unknown_type", {"seq": "SEQ", "type": "firmware", "url": "http://evil"}, "malformed_change", "unknown type"),
    ("seq_as_text", {"seq": "'SEQ'", "order_id": "x", "state": "accepted"}, "malformed_change",
     "seq must be a JSON integer"),
    ("unknown_order", {"seq": "SEQ", "order_id": "no-such-order", "state": "accepted"}, "unknown_order", "no order"),
    ("huge_state", {"seq": "SEQ", "order_id": "x", "state": "a" * 100_000}, "malformed_change", "state must be text"),
]


@pytest.mark.parametrize("case,change,reason,detail", ORDER_CHANGES, ids=[c[0] for c in ORDER_CHANGES])
def test_a_malformed_order_change_is_refused_reported_and_passed(world, case, change, reason, detail):
    seq = next(world.seqs)
    change = {k: (seq if v == "SEQ" else str(seq) if v == "'SEQ'" else v) for k, v in change.items()}
    before = world.refused(reason)
    world.platform.push(change)
    assert wait_until(lambda: world.platform.report(seq), 30), world.log.read_text()[-3000:]
    report = world.platform.report(seq)
    assert (report["status"], report["reason"]) == ("refused", reason) and detail in report["detail"], report
    assert world.refused(reason) == before + 1
    world.alarm_delivered_once()


# Changes the gateway cannot even number: refused and counted once each, never reported (the
# platform could not tell which change a report meant); the cursor is not theirs to move.
UNNUMBERED = [
    ("change_is_a_list", [1, 2, 3]),
    ("change_is_a_number", 42),
    ("no_seq", {"type": "order", "order_id": "x", "state": "accepted"}),
    ("seq_is_text", {"seq": "twelve", "order_id": "x", "state": "accepted"}),
    ("seq_is_negative", {"seq": -5, "order_id": "x", "state": "accepted"}),
    ("seq_beyond_64_bits", {"seq": 2**70, "order_id": "x", "state": "accepted"}),
    ("seq_is_true", {"seq": True, "order_id": "x", "state": "accepted"}),
]


@pytest.mark.parametrize("case,change", UNNUMBERED, ids=[c[0] for c in UNNUMBERED])
def test_a_change_without_a_usable_seq_is_counted_once(world, case, change):
    before = world.refused("invalid_seq")
    world.platform.push(change)  # the feed then holds it for ever: it must be counted once, not at every poll
    assert wait_until(lambda: world.refused("invalid_seq") == before + 1, 30), world.log.read_text()[-3000:]
    time.sleep(1.0)  # five more polls of the same feed
    assert world.refused("invalid_seq") == before + 1
    world.alarm_delivered_once()


ANSWERS = [
    ("uplink_html_200", "raw_uplink", (200, "text/html", b"<html><body>Welcome to CityWiFi, please log in</body></html>"),
     "not JSON"),
    ("uplink_wrong_shape", "raw_uplink", (200, "application/json", b'{"acknowledged": "all of them"}'),
     "unreadable acknowledgement"),
    ("uplink_ack_not_pairs", "raw_uplink", (200, "application/json", b'{"acknowledged": [[1, 2, 3]]}'),
     "unreadable acknowledgement"),
    ("uplink_json_list", "raw_uplink", (200, "application/json", b"[]"), "unreadable acknowledgement"),
    ("uplink_deep_json", "raw_uplink", (200, "application/json", b"[" * 100_000 + b"]" * 100_000), "not JSON"),
    ("changes_html_200", "raw_changes", (200, "text/html", b"<html>captive portal</html>"), "not JSON"),
    ("changes_is_a_list", "raw_changes", (200, "application/json", b"[]"), 'answer is not {"changes"'),
    ("changes_not_a_list", "raw_changes", (200, "application/json", b'{"changes": {"seq": 1}}'),
     'answer is not {"changes"'),
    ("changes_huge_number", "raw_changes", (200, "application/json", b'{"changes": [{"seq": 1e400}]}'), None),
]


@pytest.mark.parametrize("case,where,answer,error", ANSWERS, ids=[c[0] for c in ANSWERS])
def test_an_answer_that_cannot_be_read_is_a_failed_exchange(world, case, where, answer, error):
    snap = world.status()
    errors_before, faults_before = snap["uplink"]["errors"], snap["uplink"]["faults"]
    getattr(world.platform, where).append(answer)
    if where == "raw_uplink":  # an answer comes to a send: give the gateway something to send
        device = world.alarm()
        assert wait_until(lambda: world.status()["uplink"]["errors"] > errors_before, 30), world.log.read_text()[-3000:]
        assert error in world.status()["uplink"]["last_error"], world.status()["uplink"]
        world.alarm_delivered_once(device)  # sent again after the failure, and received once
    else:
        assert wait_until(lambda: not world.platform.raw_changes, 30)
        if error is not None:
            assert wait_until(lambda: error in world.log.read_text(), 10)
    assert world.status()["uplink"]["faults"] == faults_before  # a failed exchange, not a crash caught
    world.alarm_delivered_once()


def test_a_valid_rule_file_after_refused_ones_is_applied_reported_and_health_recovers(world):
    seq = next(world.seqs)
    content = bins_with("fill_pct >= 85", "fill_pct >= 86")
    world.platform.push({"seq": seq, "type": "rules", "file": "bins.yaml", "content": content})
    assert wait_until(lambda: world.platform.report(seq), 30), world.log.read_text()[-3000:]
    assert world.platform.report(seq)["status"] == "applied"
    assert (world.rules / "bins.yaml").read_text() == content
    assert wait_until(lambda: world.healthz().status_code == 200, 30), world.healthz().text
    assert wait_until(lambda: world.status()["engine"]["rule_reloads"] >= 1, 30)
    world.alarm_delivered_once()


def test_the_gateway_shows_it_all_and_keeps_no_secret(world):
    metrics = requests.get(f"{world.base}/metrics", timeout=10).text
    assert re.search(r'^edge_downlink_refused_total\{reason="malformed_change"\} [1-9]', metrics, re.M), metrics
    assert re.search(r'^edge_downlink_refused_total\{reason="invalid_seq"\} [1-9]', metrics, re.M)
    assert re.search(r"^edge_rule_files_refused_total [1-9]", metrics, re.M)
    assert re.search(r'^edge_part_up\{part="uplink"\} 1$', metrics, re.M)
    assert re.search(r'^edge_part_faults_total\{part="uplink"\} 0$', metrics, re.M)
    status = subprocess.run(edge_command() + ["status", "--config", str(world.config)], capture_output=True, text=True,
                            timeout=60)
    assert status.returncode == 0, status.stderr
    assert "health     ok" in status.stdout and "rule files 1 applied" in status.stdout, status.stdout
    assert "\x1b" not in status.stdout  # not a terminal: no colours
    assert world.process.poll() is None and world.process.pid == world.pid


# --- the transports' parsing, without a network ------------------------------------------


def test_acknowledgements_of_every_wrong_shape_are_refused():
    revisions = [{"order_id": "o1", "revision": 1}]
    reports = [{"seq": 4}, {"seq": 5}]
    good = {"acknowledged": [["o1", 1]], "telemetry_acknowledged": [["MH-0001", 7]], "reports_acknowledged": [5, 99]}
    assert parse_acknowledgement(good, revisions, reports) == {("o1", 1), ("telemetry/MH-0001", 7), ("report-5", 5)}
    # No reports_acknowledged: a platform that does not take reports; they count as delivered.
    assert parse_acknowledgement({"acknowledged": []}, revisions, reports) == {("report-4", 4), ("report-5", 5)}
    for wrong in ([], "ok", None, {"acknowledged": None}, {"acknowledged": [["o1"]]}, {"acknowledged": [[1, 1]]},
                  {"acknowledged": [["o1", "1"]]}, {"acknowledged": [["o1", True]]},
                  {"acknowledged": [], "telemetry_acknowledged": "x"},
                  {"acknowledged": [], "reports_acknowledged": ["5"]}, {"acknowledged": [], "reports_acknowledged": 5}):
        with pytest.raises(ValueError):
            parse_acknowledgement(wrong, revisions, reports)


def test_a_password_in_the_platform_url_stays_out_of_errors():
    transport = HttpTransport(f"http://edge:s3cretpw@127.0.0.1:{free_port()}", "gw", timeout=2)
    with pytest.raises(TransportError) as raised:
        transport.send([], [])
    assert "s3cretpw" not in str(raised.value) and "edge:***@127.0.0.1" in str(raised.value)
    with pytest.raises(TransportError) as raised:
        transport.changes(0)
    assert "s3cretpw" not in str(raised.value)


def test_the_mqtt_transport_keeps_whatever_arrives_on_changes_and_publishes_reports(mosquitto):
    from uplink.transport_mqtt import MqttTransport

    gateway = f"gw-{uuid.uuid4().hex[:8]}"
    transport = MqttTransport(mosquitto.url, gateway, timeout=10)
    platform = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"p-{uuid.uuid4().hex[:8]}")
    reports: list[bytes] = []
    platform.on_message = lambda client, userdata, message: reports.append(message.payload)
    platform.connect(mosquitto.host, mosquitto.port)
    platform.loop_start()
    try:
        assert transport.connected.wait(20)
        platform.subscribe(f"edge/{gateway}/reports", qos=1)
        hostile = [b"{not json", b"[1, 2]", b'{"seq": "x"}', b'{"seq": 1e400}', b"\xff\xfe", b"[" * 100_000,
                   b'{"seq": 3, "order_id": {"a": 1}, "state": "accepted"}', b"x" * (2 * 1024 * 1024)]
        for payload in hostile + [b'{"seq": 7, "order_id": "o1", "state": "accepted"}']:
            platform.publish(f"edge/{gateway}/changes", payload, qos=1).wait_for_publish(10)
        unusable: list = []

        def numbered() -> list:
            got = transport.changes(0)
            unusable.extend(c for c in got if not (isinstance(c, dict) and c.get("seq") in (3, 7)))
            return [c["seq"] for c in got if c not in unusable]

        assert wait_until(lambda: numbered() == [3, 7], 20)  # in seq order (the last one published has arrived)
        assert len(unusable) == len(hostile) - 1  # each returned once
        assert numbered() == [3, 7] and transport.changes(7) == []  # kept until the cursor passes them
        assert any(isinstance(c, str) and c.startswith("a message of 2097152 bytes") for c in unusable)
        assert transport.client.is_connected()  # the network thread outlived all of it
        acknowledged = transport.send([], [], [{"seq": 3, "type": "order", "status": "refused"}])
        assert acknowledged == {("report-3", 3)}
        assert wait_until(lambda: reports, 10) and orjson.loads(reports[0])["seq"] == 3
    finally:
        platform.loop_stop()
        platform.disconnect()
        transport.close()


def test_a_password_in_the_uplink_url_is_never_shown(tmp_path, mosquitto):
    secret = "Sup3rSecretPw"
    platform = Platform()
    port = free_port()
    url = platform.url.replace("http://", f"http://edge:{secret}@")
    config = write_gateway_config(tmp_path, mosquitto.url, url, id=GATEWAY, status=f"127.0.0.1:{port}")
    config.write_text(config.read_text().replace("[uplink]", "[uplink]\ndownlink_interval = 0.2\ntimeout = 2.0"))
    platform.raw_uplink += [(500, "text/plain", b"down for maintenance")] * 2
    platform.raw_changes += [(502, "text/html", b"<html>bad gateway</html>")] * 2
    log = tmp_path / "gateway.log"
    gateway = subprocess.Popen(edge_command() + ["run", "--config", str(config)], stderr=log.open("wb"))
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}")
    try:
        assert wait_until(lambda: "subscribed to" in log.read_text(), 90), log.read_text()
        client.connect(mosquitto.host, mosquitto.port)
        client.loop_start()
        t0 = time.time() - 30
        for s in (0, 6, 12):
            payload = orjson.dumps({"device": "MH-0001", "ts": t0 + s, "readings": {"tilt_deg": 31.0, "open": 1}})
            client.publish("devices/MH-0001/telemetry", payload, qos=1).wait_for_publish(10)
        assert wait_until(lambda: platform.orders_of("MH-0001"), 60), log.read_text()[-3000:]
        base = f"http://127.0.0.1:{port}"
        shown = {path: requests.get(base + path, timeout=10).text for path in ("/", "/status.json", "/metrics", "/healthz")}
        assert "edge:***@127.0.0.1" in shown["/status.json"] and "edge:***@127.0.0.1" in shown["/"]
        for argv in (["status"], ["status", "--json"]):
            result = subprocess.run(edge_command() + argv + ["--config", str(config)], capture_output=True, text=True,
                                    timeout=60)
            shown[" ".join(argv)] = result.stdout + result.stderr
        assert "HTTP 500" in log.read_text() and "HTTP 502" in log.read_text()  # the failures were logged...
        shown["log"] = log.read_text()
        for where, text in shown.items():
            assert secret not in text, where  # ... without the password
    finally:
        client.loop_stop()
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(30)
        platform.shutdown()


def test_redact_url_hides_every_kind_of_credential():
    from edge.redact import redact_text, redact_url, url_secrets

    assert redact_url("http://user:pw@host:8080/x") == "http://user:***@host:8080/x"
    assert redact_url("https://tok3n@host/") == "https://***@host/"
    assert redact_url("mqtts://u:p%40ss@broker:8883") == "mqtts://u:***@broker:8883"
    assert redact_url("http://host/api?token=abc&x=1") == "http://host/api?token=***&x=1"
    assert redact_url("http://host:80/plain") == "http://host:80/plain"
    assert redact_url("http://u:p@[bad") == "http://***@[bad"  # cannot be parsed: everything before @ goes
    assert redact_text("POST http://a:b@h/x failed; GET mqtt://c:d@h2 too") == \
        "POST http://a:***@h/x failed; GET mqtt://c:***@h2 too"
    assert url_secrets("mqtt://u:p%40ss@h:1883") == ["p%40ss", "p@ss"]
    assert url_secrets("http://h/?api_key=k1&x=2") == ["k1"] and url_secrets("http://h/") == []
