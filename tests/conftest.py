"""Shared fixtures: a private Mosquitto for the session, a reference receiver, gateway configs."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import requests

from edge.broker import Broker, BrokerError, start_mosquitto

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules"
REGISTRY = ROOT / "config" / "devices.csv"


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory) -> Broker:
    """A private Mosquitto on a free loopback port, for the whole test session."""
    try:
        broker = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    except BrokerError as error:
        pytest.fail(f"{error}; ./scripts/test installs it on Debian")
    yield broker
    broker.stop()


POSTGRES = os.environ.get("EDGE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The machine's PostgreSQL (EDGE_TEST_POSTGRES, default postgresql://postgres@127.0.0.1:5432):
    its URL without a database. ./scripts/test installs and starts it where it is missing."""
    import psycopg

    try:
        with psycopg.connect(f"{POSTGRES}/postgres", connect_timeout=5):
            pass
    except psycopg.OperationalError as error:
        pytest.fail(f"PostgreSQL at {POSTGRES} does not answer ({error}); ./scripts/test installs and starts it "
                    "on Debian, or set EDGE_TEST_POSTGRES")
    return POSTGRES


@contextmanager
def postgres_database(server: str):
    """A database of its own on ``server`` (its URL), dropped afterwards with whatever is connected to it."""
    import psycopg

    name = f"edge_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server}/{name}"
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh PostgreSQL database for one test (created and dropped around it)."""
    with postgres_database(postgres_server) as url:
        yield url


class ReceiverProcess:
    def __init__(self, process: subprocess.Popen, url: str, db: Path):
        self.process, self.url, self.db = process, url, db

    def orders(self) -> list[dict]:
        return requests.get(f"{self.url}/api/v1/orders", timeout=5).json()["orders"]

    def revisions(self) -> list[dict]:
        return requests.get(f"{self.url}/api/v1/revisions", timeout=5).json()["revisions"]

    def stats(self) -> dict:
        return requests.get(f"{self.url}/api/v1/stats", timeout=5).json()


def start_receiver(db: Path, *extra: str) -> ReceiverProcess:
    if "--mqtt" in extra and "--mqtt-group" not in extra:
        # The session's broker outlives each test's receiver, and a stopped receiver's session stays in its
        # shared group (taking its share of what is published): each receiver gets a group of its own.
        named = extra[extra.index("--mqtt-client-id") + 1] if "--mqtt-client-id" in extra else uuid.uuid4().hex[:8]
        extra = (*extra, "--mqtt-group", f"test-{named}")
    process = subprocess.Popen(
        [sys.executable, "-m", "uplink.receiver", "--port", "0", "--db", str(db), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    line = process.stdout.readline()
    if not line.startswith("receiver listening on "):
        process.kill()
        raise RuntimeError(f"receiver did not start: {line!r}")
    return ReceiverProcess(process, line.split()[3], db)


@pytest.fixture
def receiver(tmp_path) -> ReceiverProcess:
    """The reference central receiver as a real process, with its own SQLite file."""
    proc = start_receiver(tmp_path / "receiver.db")
    yield proc
    proc.process.terminate()
    proc.process.wait(timeout=10)


def write_gateway_config(tmp_path: Path, broker_url: str, receiver_url: str, **overrides: str) -> Path:
    """A gateway.toml using the shipped rules and registry, with a unique MQTT session."""
    values = {
        "id": "gw-test",
        "registry": REGISTRY.as_posix(),
        "rules": RULES.as_posix(),
        "client_id": f"edge-test-{uuid.uuid4().hex[:8]}",
        "broker": broker_url,
        "receiver": receiver_url,
    }
    values.update(overrides)
    path = tmp_path / "gateway.toml"
    path.write_text(
        f"""
[gateway]
id = "{values['id']}"
data_dir = "data"

[registry]
path = "{values['registry']}"

[rules]
paths = ["{values['rules']}"]

[mqtt]
url = "{values['broker']}"
client_id = "{values['client_id']}"

[uplink]
url = "{values['receiver']}"
retry_max = 1.0

[status]
listen = "{values.get('status', '127.0.0.1:0')}"
"""
    )
    return path


def wait_until(predicate, timeout: float, interval: float = 0.1):
    """Poll ``predicate`` until it returns something truthy or ``timeout`` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


def edge_command() -> list[str]:
    return [sys.executable, "-m", "edge"]


@pytest.fixture
def clean_env() -> dict:
    env = dict(os.environ)
    env.pop("EDGE_UPLINK_TOKEN", None)
    return env


class Misbehaving(ThreadingHTTPServer):
    """In front of the receiver, misbehaving per request as ``plan`` says: 'fail' (500), 'hang'
    (answer nothing until the client gives up), 'close' (drop the connection), 'lose_ack' (the
    receiver stores the batch, the gateway gets a 500), then 'pass'."""

    daemon_threads = True

    def __init__(self, target: str, plan: list[str], hang: float = 3.0):
        self.target, self.plan, self.seen = target, list(plan), []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(handler):  # noqa: N802 - the downlink passes through
                answer = requests.get(self.target + handler.path, timeout=5)
                handler.send_response(answer.status_code)
                handler.send_header("Content-Length", str(len(answer.content)))
                handler.end_headers()
                handler.wfile.write(answer.content)

            def do_POST(handler):  # noqa: N802
                body = handler.rfile.read(int(handler.headers["Content-Length"]))
                step = self.plan.pop(0) if self.plan else "pass"
                self.seen.append(step)
                if step == "hang":
                    time.sleep(hang)
                    handler.close_connection = True
                    return
                if step == "close":
                    handler.close_connection = True
                    return
                status, payload = 500, b'{"error": "injected"}'
                if step != "fail":
                    headers = {"Content-Type": "application/json",
                               "Authorization": handler.headers.get("Authorization", "")}
                    answer = requests.post(self.target + handler.path, data=body, headers=headers, timeout=30)
                    if step == "pass":
                        status, payload = answer.status_code, answer.content
                handler.send_response(status)
                handler.send_header("Content-Length", str(len(payload)))
                handler.end_headers()
                handler.wfile.write(payload)

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


def make_tls_files(folder: Path, name: str = "ca") -> dict[str, Path]:
    """With openssl: a CA, a server certificate for 127.0.0.1 and a client certificate, both signed by the CA.

    Returns the paths: ca, server_cert, server_key, client_cert, client_key.
    """
    folder.mkdir(parents=True, exist_ok=True)
    files = {key: folder / f"{name}-{key}.pem" for key in ("ca", "ca_key", "server_cert", "server_key",
                                                          "client_cert", "client_key")}

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(files["ca_key"]), "-out", str(files["ca"]),
        "-days", "1", "-subj", f"/CN=test {name}")
    for who, subject, ext in (("server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1"),
                              ("client", "/CN=edge-gateway", "extendedKeyUsage=clientAuth")):
        request = folder / f"{name}-{who}.csr"
        extfile = folder / f"{name}-{who}.ext"
        extfile.write_text(ext + "\n")
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(files[f"{who}_key"]), "-out", str(request),
            "-subj", subject)
        run("x509", "-req", "-in", str(request), "-CA", str(files["ca"]), "-CAkey", str(files["ca_key"]),
            "-CAcreateserial", "-out", str(files[f"{who}_cert"]), "-days", "1", "-extfile", str(extfile))
    return files


@contextmanager
def running_agent(config_path: Path, broker: Broker):
    """An Agent in a thread of this process, ready and subscribed, and a connected MQTT client
    to publish with; both stopped on leaving (the agent cleanly, as on SIGTERM)."""
    from edge.agent import Agent
    from edge.config import load_config

    agent = Agent(load_config(config_path))
    thread = threading.Thread(target=agent.run, name="agent", daemon=True)
    thread.start()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    try:
        assert agent.ready.wait(60) and agent.subscriber.connected.wait(20)
        client.connect(broker.host, broker.port)
        client.loop_start()
        yield agent, client
    finally:
        client.loop_stop()
        agent.stop()
        thread.join(30)


def tilt(client: mqtt.Client, device: str, start: float, steps: int = 12) -> None:
    """Readings of a cover tilted for more than 10 s of device time: enough to open an order."""
    import orjson

    for step in range(steps):
        payload = orjson.dumps({"ts": start + step, "readings": {"tilt_deg": 35.0, "open": 1}})
        client.publish(f"devices/{device}/telemetry", payload, qos=1).wait_for_publish(5)


SIMULATOR = [sys.executable, "-m", "firmware_sim"]


def scenario_registry(scenario: Path, path: Path) -> Path:
    """The registry the simulator writes for ``scenario``, at ``path``."""
    made = subprocess.run(SIMULATOR + ["registry", str(scenario), "-o", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert made.returncode == 0, made.stderr
    return path


def start_edge_run(config: Path, log: Path, env: dict) -> subprocess.Popen:
    """``edge run --config config`` as a real process, once it has subscribed; its stderr goes to ``log``."""
    gateway = subprocess.Popen(edge_command() + ["run", "--config", str(config)], stderr=log.open("wb"), env=env)
    if not wait_until(lambda: "subscribed to" in log.read_text(), 60):
        gateway.kill()
        raise AssertionError(f"the gateway did not subscribe within 60 s:\n{log.read_text()}")
    return gateway
