"""The device broker with TLS, a password file and client certificates (a real Mosquitto started here),
MQTT 5 persistent sessions across a gateway restart, fallback to MQTT 3.1.1, reconnect and resubscribe."""

from __future__ import annotations

import getpass
import random
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest

from conftest import make_tls_files, tilt, wait_until, write_gateway_config
from edge.agent import Agent
from edge.broker import free_port, mosquitto_path, start_amqtt, start_mosquitto, wait_for_port
from edge.config import ConfigError, load_config
from edge.ingest.mqtt import backoff
from uplink.receiver import ReceiverServer, ReceiverStore

USER, PASSWORD = "edge-gw", "s3cret-Pa55"

CONF = """\
user {user}
per_listener_settings false
allow_anonymous false
password_file {passwd}
persistence false
max_queued_messages 100000
max_inflight_messages 1000
log_dest stderr
log_type error
log_type warning

listener {port} 127.0.0.1
cafile {ca}
certfile {server_cert}
keyfile {server_key}

listener {cert_port} 127.0.0.1
cafile {ca}
certfile {server_cert}
keyfile {server_key}
require_certificate true
"""


@dataclass
class SecureBroker:
    port: int
    cert_port: int  # requires a client certificate signed by the CA
    files: dict[str, Path]
    wrong: dict[str, Path]  # another CA and its certificates

    def publisher(self) -> mqtt.Client:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        client.tls_set(ca_certs=str(self.files["ca"]))
        client.username_pw_set(USER, PASSWORD)
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        return client


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory):
    binary = mosquitto_path()
    if binary is None:
        pytest.fail("mosquitto is not installed; ./scripts/test installs it on Debian")
    folder = tmp_path_factory.mktemp("secure-broker")
    files = make_tls_files(folder / "tls")
    wrong = make_tls_files(folder / "other", name="other")
    passwd = folder / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), USER, PASSWORD], check=True, capture_output=True)
    port, cert_port = free_port(), free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(CONF.format(user=getpass.getuser(), passwd=passwd, port=port, cert_port=cert_port, ca=files["ca"],
                                server_cert=files["server_cert"], server_key=files["server_key"]))
    log = (folder / "mosquitto.log").open("ab")
    process = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    if not (wait_for_port("127.0.0.1", port, 10, process) and wait_for_port("127.0.0.1", cert_port, 10, process)):
        process.kill()
        pytest.fail(f"mosquitto with TLS did not start; see {folder / 'mosquitto.log'}")
    yield SecureBroker(port, cert_port, files, wrong)
    process.terminate()
    process.wait(10)
    log.close()


def config_for(tmp_path, url: str, receiver_url: str = "http://127.0.0.1:9", client_id: str | None = None,
               **mqtt_keys) -> Path:
    overrides = {"client_id": client_id} if client_id else {}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = write_gateway_config(tmp_path, url, receiver_url, **overrides)
    lines = "".join(f'{key} = {orjson.dumps(value).decode()}\n' for key, value in mqtt_keys.items())
    path.write_text(path.read_text().replace("[mqtt]\n", "[mqtt]\n" + lines, 1))
    return path


def running(config_path: Path) -> tuple[Agent, threading.Thread]:
    agent = Agent(load_config(config_path))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    assert agent.ready.wait(60)
    return agent, thread


def stop(agent: Agent, thread: threading.Thread) -> None:
    agent.stop()
    thread.join(30)
    assert not thread.is_alive()


@pytest.fixture
def receiver(tmp_path):
    store = ReceiverStore(tmp_path / "receiver.db")
    server = ReceiverServer("127.0.0.1", 0, store)
    server.start_background()
    yield server, store
    server.shutdown()
    store.close()


def test_backoff_doubles_is_capped_and_randomised():
    rng = random.Random(7)
    waits = [backoff(n, 1.0, 60.0, rng) for n in range(12)]
    assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0 and 4.0 <= waits[3] <= 8.0
    assert all(30.0 <= w <= 60.0 for w in waits[6:])
    assert len({round(w, 6) for w in waits[6:]}) == len(waits[6:])  # not in step with other gateways


def test_wrong_password_is_a_clear_error(tmp_path, secure_broker):
    agent, thread = running(config_for(tmp_path, f"mqtts://127.0.0.1:{secure_broker.port}", username=USER,
                                       password="wrong", ca_file=str(secure_broker.files["ca"]),
                                       reconnect_min=0.2, reconnect_max=0.5))
    try:
        assert wait_until(lambda: "refused" in agent.subscriber.last_error, 20), agent.subscriber.last_error
        assert "refused the connection: Not authorized" in agent.subscriber.last_error  # Mosquitto 2.0 says so
        assert "check [mqtt] username and password (or EDGE_MQTT_PASSWORD)" in agent.subscriber.last_error
        assert not agent.subscriber.connected.is_set() and agent.subscriber.connects == 0
    finally:
        stop(agent, thread)


def test_untrusted_broker_certificate_is_a_clear_error(tmp_path, secure_broker):
    agent, thread = running(config_for(tmp_path, f"mqtts://127.0.0.1:{secure_broker.port}", username=USER,
                                       password=PASSWORD, ca_file=str(secure_broker.wrong["ca"]),
                                       reconnect_min=0.2, reconnect_max=0.5))
    try:
        assert wait_until(lambda: "TLS" in agent.subscriber.last_error, 20), agent.subscriber.last_error
        assert "the broker's certificate is not trusted" in agent.subscriber.last_error
        assert "check [mqtt] ca_file" in agent.subscriber.last_error
        assert agent.subscriber.connects == 0
    finally:
        stop(agent, thread)


def test_password_from_the_environment_and_a_missing_ca_file(tmp_path, secure_broker, monkeypatch):
    path = config_for(tmp_path, f"mqtts://127.0.0.1:{secure_broker.port}", username=USER, password="in-the-file",
                      ca_file="no-such-ca.pem")
    with pytest.raises(ConfigError, match=r"gateway.toml:\d+: mqtt.ca_file: no such file"):
        load_config(path)
    path = config_for(tmp_path, f"mqtts://127.0.0.1:{secure_broker.port}", username=USER, password="in-the-file",
                      ca_file=str(secure_broker.files["ca"]))
    monkeypatch.setenv("EDGE_MQTT_PASSWORD", PASSWORD)
    config = load_config(path)
    assert (config.mqtt.password, config.mqtt.tls, config.mqtt.port) == (PASSWORD, True, secure_broker.port)
    with pytest.raises(ConfigError, match="cert_file: a client certificate needs both cert_file and key_file"):
        load_config(config_for(tmp_path, "mqtts://127.0.0.1:1", cert_file=str(secure_broker.files["client_cert"])))
    with pytest.raises(ConfigError, match="unknown key 'mqtt.tls_version'"):
        load_config(config_for(tmp_path, "mqtts://127.0.0.1:1", tls_version="1.3"))


def test_tls_and_password_deliver_readings_and_the_mqtt5_session_survives_a_restart(tmp_path, secure_broker,
                                                                                      receiver, monkeypatch):
    server, store = receiver
    monkeypatch.setenv("EDGE_MQTT_PASSWORD", PASSWORD)
    path = config_for(tmp_path, f"mqtts://127.0.0.1:{secure_broker.port}", server.url, username=USER,
                      ca_file=str(secure_broker.files["ca"]))
    publisher = secure_broker.publisher()
    try:
        agent, thread = running(path)
        try:
            assert agent.subscriber.connected.wait(20), agent.subscriber.last_error
            assert agent.subscriber.mqtt_version == "5"
            tilt(publisher, "MH-0004", time.time())
            assert wait_until(lambda: store.stats()["orders"] == 1, 20)
        finally:
            stop(agent, thread)
        # The gateway is down: the broker keeps the session (MQTT 5 session expiry) and queues these.
        now = time.time()
        tilt(publisher, "MH-0010", now)
        agent, thread = running(path)
        try:
            assert wait_until(lambda: store.stats()["orders"] == 2, 20)
            assert agent.subscriber.session_present and agent.subscriber.mqtt_version == "5"
            assert {o["device"] for o in store.orders()} == {"MH-0004", "MH-0010"}
        finally:
            stop(agent, thread)
    finally:
        publisher.loop_stop()
        publisher.disconnect()


def test_client_certificate(tmp_path, secure_broker):
    url = f"mqtts://127.0.0.1:{secure_broker.cert_port}"
    files = secure_broker.files
    agent, thread = running(config_for(tmp_path / "without", url, username=USER, password=PASSWORD,
                                       ca_file=str(files["ca"]), reconnect_min=0.2, reconnect_max=0.5))
    try:
        assert wait_until(lambda: agent.subscriber.last_error, 20)
        assert agent.subscriber.connects == 0
    finally:
        stop(agent, thread)
    agent, thread = running(config_for(tmp_path / "with", url, username=USER, password=PASSWORD,
                                       ca_file=str(files["ca"]), cert_file=str(files["client_cert"]),
                                       key_file=str(files["client_key"])))
    try:
        assert agent.subscriber.connected.wait(20), agent.subscriber.last_error
    finally:
        stop(agent, thread)


def test_falls_back_to_mqtt_311_when_the_broker_has_no_mqtt5(tmp_path):
    broker = start_amqtt(tmp_path / "amqtt")  # speaks MQTT 3.1.1 only, and says nothing to this MQTT 5 CONNECT
    try:
        agent, thread = running(config_for(tmp_path, broker.url, reconnect_min=0.2, reconnect_max=0.5,
                                           connect_timeout=2.0))
        try:
            assert agent.subscriber.connected.wait(30), agent.subscriber.last_error
            assert agent.subscriber.mqtt_version == "3.1.1"
        finally:
            stop(agent, thread)
    finally:
        broker.stop()


def test_reconnects_and_resubscribes_after_the_broker_restarts(tmp_path, receiver):
    server, store = receiver
    broker = start_mosquitto(tmp_path / "broker", persistent=True)
    port = broker.port
    agent, thread = running(config_for(tmp_path, broker.url, server.url, reconnect_min=0.1, reconnect_max=0.5))
    try:
        assert agent.subscriber.connected.wait(20)
        broker.stop()
        assert wait_until(lambda: not agent.subscriber.connected.is_set(), 10)
        assert wait_until(lambda: agent.subscriber.last_error, 10)
        broker = start_mosquitto(tmp_path / "broker", port=port, persistent=True)
        assert wait_until(lambda: agent.subscriber.connects >= 2 and agent.subscriber.connected.is_set(), 20)
        publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        publisher.connect("127.0.0.1", port)
        publisher.loop_start()
        tilt(publisher, "MH-0007", time.time())
        publisher.loop_stop()
        assert wait_until(lambda: store.stats()["orders"] == 1, 20)
    finally:
        stop(agent, thread)
        broker.stop()
