"""The platform on PostgreSQL: several workers, shared MQTT subscriptions, gateway tokens, migrations.

Everything runs against the machine's real PostgreSQL (a database per test, dropped after),
a private Mosquitto and real `python -m uplink.receiver` processes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import psycopg
import pytest
import requests

from bench.pg_cluster import PrivatePostgres
from conftest import edge_command, tilt, wait_until, write_gateway_config
from uplink.receiver.store import MIGRATIONS, ReceiverStore


class Platform:
    def __init__(self, log: Path, *args: str):
        self.log = log
        self.process = subprocess.Popen([sys.executable, "-m", "uplink.receiver", "--port", "0", *args],
                                        stdout=subprocess.PIPE, stderr=log.open("ab"), text=True)
        line = self.process.stdout.readline()
        if not line.startswith("receiver listening on "):
            self.process.kill()
            raise RuntimeError(f"platform did not start: {line!r} {log.read_text()}")
        self.url = line.split()[3]

    def logged(self, text: str) -> int:
        return self.log.read_text().count(text)

    def workers(self) -> list[int]:
        pid = self.process.pid
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            return [int(p) for p in children.read().split()]

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        return self.log.read_text()


def revision(order: str, number: int, gateway: str) -> dict:
    return {"order_id": order, "revision": number, "change": "opened" if number == 1 else "updated",
            "gateway": gateway, "device": f"MH-{order[-3:]}", "rule": "cover_open", "category": "cover",
            "severity": "high", "state": "opened", "grid": "G1", "zone": "Z1", "team": "T1",
            "location": {"lat": 30.1, "lon": 120.2}, "opened_at": "2026-12-03T10:00:00.000Z",
            "evidence": [{"device": f"MH-{order[-3:]}", "rule": "cover_open", "metric": "open", "value": 1}]}


def keys_in(url: str) -> list[tuple[str, int]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT order_id, revision FROM revisions ORDER BY 1, 2").fetchall()


def test_workers_on_postgresql_lose_nothing_when_one_is_killed_mid_run(tmp_path, postgres_url, mosquitto):
    """HTTP and MQTT at once into two workers; one is killed with -9 mid-run. Every item acknowledged
    (HTTP 200, or PUBACK) is stored once; what was not acknowledged is sent again, as a gateway does."""
    platform = Platform(tmp_path / "platform.log", "--db", postgres_url, "--workers", "2", "--mqtt", mosquitto.url,
                        "--mqtt-client-id", f"platform-{os.getpid()}")
    main_pid = platform.process.pid
    sent: set[tuple[str, int]] = set()
    answers: dict[str, int] = {}
    lock = threading.Lock()
    killed = threading.Event()
    try:
        assert wait_until(lambda: len(platform.workers()) == 2, 30)
        first = platform.workers()
        # A shared subscription gets only what is published after it exists: wait for both listeners.
        assert wait_until(lambda: platform.logged("subscribed to $share/platform/") == 2, 30), platform.log.read_text()

        def gateway(number: int) -> None:
            name = f"gw-{number:03d}"
            with requests.Session() as session:
                for batch in range(6):
                    items = [revision(f"{name}-o{batch:03d}", r, name) for r in (1, 2)]
                    body = {"gateway": name, "revisions": items + items[:1]}  # one duplicate in every batch
                    while True:  # as the gateway's sender: the same rows again until acknowledged
                        try:
                            answer = session.post(f"{platform.url}/api/v1/uplink", json=body, timeout=10)
                            status = answer.status_code
                        except requests.RequestException:
                            status = 0
                        with lock:
                            answers[str(status)] = answers.get(str(status), 0) + 1
                        if status == 200:
                            assert sorted(map(tuple, answer.json()["acknowledged"])) == sorted(
                                (i["order_id"], i["revision"]) for i in body["revisions"])
                            break
                        time.sleep(0.1)
                    with lock:
                        sent.update((i["order_id"], i["revision"]) for i in items)
                    if number == 7 and batch == 2:
                        os.kill(first[0], signal.SIGKILL)
                        killed.set()

        publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"gws-{os.getpid()}")
        publisher.max_inflight_messages_set(200)
        publisher.connect(mosquitto.host, mosquitto.port)
        publisher.loop_start()
        with ThreadPoolExecutor(16) as pool:
            http = [pool.submit(gateway, n) for n in range(40)]
            published = []
            for n in range(600):
                item = revision(f"mq-{n % 30:03d}-o{n:04d}", 1, f"mq-{n % 30:03d}")
                published.append(publisher.publish(f"edge/mq-{n % 30:03d}/orders/{item['order_id']}",
                                                   orjson.dumps(item), qos=1))
                sent.add((item["order_id"], 1))
            for future in http:
                future.result()
            for info in published:
                info.wait_for_publish(30)  # PUBACK from the broker: from here the broker answers for it
        publisher.loop_stop()
        assert killed.is_set()
        assert wait_until(lambda: len(keys_in(postgres_url)) >= len(sent), 60), (len(keys_in(postgres_url)), len(sent))
        stored = keys_in(postgres_url)
        assert set(stored) == sent and len(stored) == len(sent)  # nothing lost, nothing twice
        stats = requests.get(f"{platform.url}/api/v1/stats", timeout=5).json()
        assert stats["duplicates"] >= 40 * 6  # every batch's duplicate, dropped by the database and acknowledged
        assert platform.process.poll() is None and platform.process.pid == main_pid
        now = platform.workers()
        assert len(now) == 2 and first[0] not in now and first[1] in now  # the killed one was started again
    finally:
        err = platform.stop()
    assert "worker 1" in err and "signal 9" in err and "starting it again" in err


def test_gateway_tokens_open_only_their_gateway_and_are_revoked_alone(tmp_path):
    db = str(tmp_path / "platform.db")

    def tokens(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "uplink.receiver.gateway_tokens", *args, "--db", db],
                              capture_output=True, text=True, timeout=60)

    one, two = tokens("add", "gw-one", "--label", "Main St").stdout.strip(), tokens("add", "gw-two").stdout.strip()
    assert one.startswith("gwt_") and two.startswith("gwt_") and one != two
    listed = tokens("list").stdout
    assert "gw-one" in listed and "Main St" in listed and one not in listed  # only an id is shown again
    platform = Platform(tmp_path / "platform.log", "--db", db)
    try:
        def uplink(token: str | None, gateway: str) -> requests.Response:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return requests.post(f"{platform.url}/api/v1/uplink", headers=headers, timeout=5,
                                 json={"gateway": gateway, "revisions": [revision(f"{gateway}-o001", 1, gateway)]})

        assert uplink(one, "gw-one").status_code == 200
        assert uplink(two, "gw-two").status_code == 200
        assert uplink(None, "gw-one").status_code == 401  # tokens exist: the API needs one
        other = uplink(one, "gw-two")
        assert other.status_code == 403 and "gw-one" in other.json()["error"]
        auth = {"Authorization": f"Bearer {one}"}
        assert requests.get(f"{platform.url}/api/v1/gateways/gw-one/changes", headers=auth, timeout=5).status_code == 200
        assert requests.get(f"{platform.url}/api/v1/gateways/gw-two/changes", headers=auth, timeout=5).status_code == 403
        assert requests.get(f"{platform.url}/api/v1/orders", headers=auth, timeout=5).status_code == 403
        assert requests.get(f"{platform.url}/healthz", timeout=5).status_code == 200
        revoked = tokens("revoke", "gw-one")
        assert revoked.returncode == 0 and "revoked 1" in revoked.stdout
        assert wait_until(lambda: uplink(one, "gw-one").status_code == 401, 15)  # every worker re-reads within 5 s
        assert uplink(two, "gw-two").status_code == 200  # the other gateway goes on
        assert tokens("revoke", "gw-one").returncode == 1  # nothing left to revoke: said, not silent
        stats = requests.get(f"{platform.url}/api/v1/stats", headers={"Authorization": f"Bearer {two}"}, timeout=5)
        assert stats.status_code == 403
    finally:
        platform.stop()


def test_workers_starting_together_migrate_a_new_postgresql_database_once(postgres_url):
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: ReceiverStore(postgres_url), range(4)))
    try:
        assert min(s.schema_found for s in stores) == 0  # they may share the steps out; each step runs once
        with psycopg.connect(postgres_url) as conn:
            versions = [v for (v,) in conn.execute("SELECT version FROM schema_version ORDER BY version")]
        assert versions == list(range(1, len(MIGRATIONS) + 1))
        stores[0].add("gw", [revision("o-001", 1, "gw")])
        assert stores[3].add("gw", [revision("o-001", 1, "gw")]).duplicates == 1
    finally:
        for store in stores:
            store.close()
    with psycopg.connect(postgres_url) as conn:
        conn.execute("INSERT INTO schema_version VALUES (99)")
    done = subprocess.run([sys.executable, "-m", "uplink.receiver", "--port", "0", "--db", postgres_url],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "schema version 99" in done.stderr


def test_the_current_gateway_against_the_platform_on_postgresql_with_two_workers(tmp_path, postgres_url, mosquitto):
    """The contract test: today's gateway, unchanged, uplinks to the platform (PostgreSQL, 2 workers, its own
    token), and applies a decision the platform made."""
    token = subprocess.run([sys.executable, "-m", "uplink.receiver.gateway_tokens", "add", "gw-contract",
                            "--db", postgres_url], check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    platform = Platform(tmp_path / "platform.log", "--db", postgres_url, "--workers", "2", "--token", "console-secret")
    config = write_gateway_config(tmp_path, mosquitto.url, platform.url, id="gw-contract")
    config.write_text(config.read_text().replace("[uplink]", "[uplink]\ndownlink_interval = 0.2"))
    log = tmp_path / "gateway.log"
    env = {**os.environ, "EDGE_UPLINK_TOKEN": token}
    gateway = subprocess.Popen(edge_command() + ["run", "--config", str(config)], stderr=log.open("wb"), env=env)
    admin = {"Authorization": "Bearer console-secret"}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    try:
        assert wait_until(lambda: "subscribed to" in log.read_text(), 60), log.read_text()
        client.connect(mosquitto.host, mosquitto.port)
        client.loop_start()
        tilt(client, "MH-0008", time.time())

        def orders() -> list[dict]:
            return requests.get(f"{platform.url}/api/v1/orders", headers=admin, timeout=5).json()["orders"]

        assert wait_until(lambda: len(orders()) == 1, 30), log.read_text()
        (order,) = orders()
        assert (order["device"], order["gateway"], order["revision"]) == ("MH-0008", "gw-contract", 1)
        decided = requests.post(f"{platform.url}/api/v1/orders/{order['order_id']}/accept", headers=admin, timeout=5)
        assert decided.status_code == 200
        assert wait_until(lambda: orders()[0]["revision"] == 2, 30), log.read_text()
        assert orders()[0]["state"] == "accepted" and orders()[0]["platform_state"] == "accepted"
        with psycopg.connect(postgres_url) as conn:
            (count,) = conn.execute("SELECT count(*) FROM revisions WHERE order_id = %s", [order["order_id"]]).fetchone()
            (contact,) = conn.execute("SELECT batches FROM gateways WHERE gateway = 'gw-contract'").fetchone()
        assert count == 2 and contact >= 2
    finally:
        client.loop_stop()
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(30) == 0
        platform.stop()


@pytest.mark.parametrize("target", ["sqlite", "postgresql"])
def test_an_order_keeps_its_latest_revision_whatever_order_revisions_arrive_in(tmp_path, postgres_url, target):
    store = ReceiverStore(tmp_path / "p.db" if target == "sqlite" else postgres_url)
    try:
        store.add("gw", [revision("o-001", 3, "gw") | {"state": "dispatched"}])
        store.add("gw", [revision("o-001", 1, "gw"), revision("o-001", 2, "gw") | {"state": "accepted"}])
        (order,) = store.orders()
        assert (order["revision"], order["state"]) == (3, "dispatched")
        assert [r["revision"] for r in store.order_revisions("o-001")] == [1, 2, 3]
        text = revision("o-002", 1, "gw") | {"title": "NUL \x00 in a title"}
        store.add("gw", [text])  # PostgreSQL cannot keep NUL in text: the body keeps it, the column shows U+FFFD
        assert store.order_revisions("o-002")[0]["title"] == "NUL \x00 in a title"
        change = store.add_change("o-001", "resolved", "fixed", actor="ana")
        assert change["seq"] >= 1 and store.decisions("o-001")[0]["actor"] == "ana"
        assert store.add_change("o-unknown", "accepted") is None
    finally:
        store.close()


def test_fewer_workers_than_before_retire_the_extra_sessions_with_what_they_held(tmp_path, postgres_url, mosquitto):
    """Two workers, stopped; messages published meanwhile wait in their two sessions. Started again with
    one worker, the platform takes and stores what both sessions held, ends them, and from then on
    its one listener gets every message (no session left in the group taking a share)."""
    base, group = f"platform-{uuid.uuid4().hex[:6]}", f"g-{uuid.uuid4().hex[:6]}"
    args = ("--db", postgres_url, "--mqtt", mosquitto.url, "--mqtt-client-id", base, "--mqtt-group", group)
    two = Platform(tmp_path / "two.log", *args, "--workers", "2")
    assert wait_until(lambda: two.logged(f"subscribed to $share/{group}/") == 2, 30), two.log.read_text()
    two.stop()

    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    publisher.connect(mosquitto.host, mosquitto.port)
    publisher.loop_start()

    def publish(first: int, count: int) -> set[tuple[str, int]]:
        infos, keys = [], set()
        for n in range(first, first + count):
            item = revision(f"gw-r-o{n:04d}", 1, "gw-r")
            infos.append(publisher.publish(f"edge/gw-r/orders/{item['order_id']}", orjson.dumps(item), qos=1))
            keys.add((item["order_id"], 1))
        for info in infos:
            info.wait_for_publish(30)
        return keys

    sent = publish(0, 200)  # queued in the two stopped workers' sessions
    one = Platform(tmp_path / "one.log", *args)
    try:
        assert one.logged(f"retired the session of {base}-1") == 1 and one.logged(f"retired the session of {base}-2") == 1
        assert set(keys_in(postgres_url)) == sent  # stored before the platform said it was listening
        assert wait_until(lambda: one.logged(f"subscribed to $share/{group}/") == 1, 30)
        sent |= publish(200, 200)
        assert wait_until(lambda: len(keys_in(postgres_url)) == len(sent), 30), len(keys_in(postgres_url))
        assert set(keys_in(postgres_url)) == sent
    finally:
        publisher.loop_stop()
        one.stop()
    with psycopg.connect(postgres_url) as conn:
        assert [c for (c,) in conn.execute("SELECT client_id FROM mqtt_listeners")] == [base]


def test_postgresql_restarted_and_stopped_under_load_loses_nothing(tmp_path, mosquitto):
    """A private PostgreSQL cluster is restarted twice while gateways uplink over HTTP and MQTT, then stopped
    for a while: the platform answers 503 (said, not a dropped connection), keeps MQTT messages
    unacknowledged, and once the database is back stores everything exactly once, in the same processes."""
    pg = PrivatePostgres()
    try:
        url = pg.create_database("platform")
        group = f"g-{uuid.uuid4().hex[:6]}"
        platform = Platform(tmp_path / "platform.log", "--db", url, "--workers", "2", "--db-wait", "2",
                            "--mqtt", mosquitto.url, "--mqtt-client-id", f"pg-{group}", "--mqtt-group", group)
        try:
            assert wait_until(lambda: platform.logged(f"subscribed to $share/{group}/") == 2, 30)
            workers = platform.workers()
            sent: set[tuple[str, int]] = set()
            publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
            publisher.connect(mosquitto.host, mosquitto.port)
            publisher.loop_start()

            def uplink(session: requests.Session, gateway: str, batch: int) -> None:
                body = {"gateway": gateway, "revisions": [revision(f"{gateway}-o{batch:03d}", 1, gateway)]}
                while True:  # as a gateway: the same batch again until it is acknowledged
                    try:
                        status = session.post(f"{platform.url}/api/v1/uplink", json=body, timeout=10).status_code
                    except requests.RequestException:
                        status = 0
                    if status == 200:
                        sent.add((f"{gateway}-o{batch:03d}", 1))
                        return
                    time.sleep(0.2)

            def publish(n: int) -> None:
                item = revision(f"mq-pg-o{n:04d}", 1, "mq-pg")
                publisher.publish(f"edge/mq-pg/orders/{item['order_id']}", orjson.dumps(item), qos=1).wait_for_publish(10)
                sent.add((item["order_id"], 1))

            with requests.Session() as session:
                for batch in range(30):
                    uplink(session, f"gw-{batch % 3}", batch)
                    publish(batch)
                    if batch in (10, 20):
                        pg.restart()
                pg.stop_server()  # away for longer than --db-wait: 503 with Retry-After
                answer = session.post(f"{platform.url}/api/v1/uplink", timeout=30,
                                      json={"gateway": "gw-0", "revisions": [revision("gw-0-o999", 1, "gw-0")]})
                assert answer.status_code == 503 and answer.headers["Retry-After"] == "2"
                assert "database" in answer.json()["error"]
                for n in range(30, 40):  # PUBACK from the broker; the platform cannot store them yet
                    publish(n)
                pg.start()
                uplink(session, "gw-0", 999)
            publisher.loop_stop()
            assert wait_until(lambda: len(keys_in(url)) >= len(sent), 60), (len(keys_in(url)), len(sent))
            stored = keys_in(url)
            assert set(stored) == sent and len(stored) == len(sent) == 30 + 40 + 1
            assert platform.process.poll() is None and platform.workers() == workers  # no worker died of it
        finally:
            log = platform.stop()
        assert "database unavailable" in log
    finally:
        pg.stop()


def test_a_busy_worker_answers_503_at_once_instead_of_queueing(tmp_path):
    """With --max-uplinks 1, a batch whose body is still arriving holds the one place: another batch gets
    503 with Retry-After at once (the gateway backs off), and is taken once the place is free."""
    platform = Platform(tmp_path / "platform.log", "--db", str(tmp_path / "p.db"), "--max-uplinks", "1")
    try:
        host, port = platform.url.removeprefix("http://").split(":")
        body = orjson.dumps({"gateway": "gw-slow", "revisions": [revision("gw-slow-o001", 1, "gw-slow")]})
        slow = socket.create_connection((host, int(port)), timeout=10)
        slow.sendall(b"POST /api/v1/uplink HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])

        def other() -> requests.Response:
            return requests.post(f"{platform.url}/api/v1/uplink", timeout=10,
                                 json={"gateway": "gw-2", "revisions": [revision("gw-2-o001", 1, "gw-2")]})

        assert wait_until(lambda: other().status_code == 503, 10)
        busy = other()
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1" and "again" in busy.json()["error"]
        slow.sendall(body[10:])
        assert slow.recv(4096).startswith(b"HTTP/1.1 200")
        slow.close()
        assert other().status_code == 200
        assert requests.get(f"{platform.url}/api/v1/stats", timeout=5).json()["refused"]["busy"] >= 2
    finally:
        platform.stop()
