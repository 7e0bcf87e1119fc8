"""The uplink against a real HTTP receiver: acknowledged means sent, lost acks mean harmless resends."""

from __future__ import annotations

import subprocess
import threading

import pytest
import requests

from conftest import Misbehaving, start_receiver, wait_until
from edge.outbox import Outbox, open_database, transaction
from uplink.receiver import ReceiverServer, ReceiverStore
from uplink.sender import Sender
from uplink.transport_http import HttpTransport


def fill_outbox(path, orders: int, revisions: int) -> list[tuple[str, int]]:
    db = open_database(path)
    outbox = Outbox(db)
    keys = []
    with transaction(db):
        for r in range(1, revisions + 1):
            for o in range(orders):
                outbox.put(f"gw-o{o}", r, {"order_id": f"gw-o{o}", "revision": r, "state": "opened"})
                keys.append((f"gw-o{o}", r))
    db.conn.close()
    return keys


def run_sender(path, url, token=""):
    stop, wake = threading.Event(), threading.Event()
    sender = Sender(path, HttpTransport(url, "gw", token, timeout=5), stop, wake, batch_size=7, retry_max=0.2)
    thread = threading.Thread(target=sender.run, daemon=True)
    thread.start()
    return sender, stop, thread


@pytest.fixture
def in_process_receiver(tmp_path):
    store = ReceiverStore(tmp_path / "receiver.db")
    server = ReceiverServer("127.0.0.1", 0, store)
    server.start_background()
    yield server
    server.shutdown()
    store.close()


def test_failures_and_lost_acknowledgements_lose_nothing_and_duplicate_nothing(tmp_path, in_process_receiver):
    keys = fill_outbox(tmp_path / "gateway.db", orders=10, revisions=2)
    front = Misbehaving(in_process_receiver.url, ["fail", "lose_ack", "pass", "fail", "lose_ack", "lose_ack"])
    sender, stop, thread = run_sender(tmp_path / "gateway.db", front.url)
    db = open_database(tmp_path / "gateway.db")
    assert wait_until(lambda: Outbox(db).depth() == 0, 30)
    stop.set()
    thread.join(10)

    store = in_process_receiver.store
    received = [(r["order_id"], r["revision"]) for r in store.revisions()]
    assert sorted(received) == sorted(keys)  # every revision, once
    assert store.stats()["duplicates"] == 3 * 7  # the three lost acknowledgements were resent
    assert sender.errors == 5 and sender.uplinked == len(keys)
    # revisions of one order arrive in order
    for o in range(10):
        mine = [r for r in received if r[0] == f"gw-o{o}"]
        assert mine == sorted(mine)
    db.conn.close()


def test_nothing_is_marked_sent_without_an_acknowledgement(tmp_path, in_process_receiver):
    fill_outbox(tmp_path / "gateway.db", orders=3, revisions=1)
    front = Misbehaving(in_process_receiver.url, ["fail"] * 1000)
    sender, stop, thread = run_sender(tmp_path / "gateway.db", front.url)
    assert wait_until(lambda: len(front.seen) >= 3, 20)
    stop.set()
    thread.join(10)
    db = open_database(tmp_path / "gateway.db")
    assert Outbox(db).depth() == 3 and Outbox(db).sent_count() == 0
    db.conn.close()


def test_receiver_requires_its_token_and_refuses_bad_batches(tmp_path):
    receiver = start_receiver(tmp_path / "r.db", "--token", "s3cret")
    try:
        assert requests.post(f"{receiver.url}/api/v1/uplink", json={"gateway": "g", "revisions": []}, timeout=5).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        bad = requests.post(f"{receiver.url}/api/v1/uplink", json={"gateway": "g", "revisions": [{"order_id": "x"}]},
                            headers=auth, timeout=5)
        assert bad.status_code == 400 and "revision must be an integer" in bad.json()["error"]
        not_json = requests.post(f"{receiver.url}/api/v1/uplink", data=b"{", headers=auth, timeout=5)
        assert not_json.status_code == 400

        keys = fill_outbox(tmp_path / "gateway.db", orders=2, revisions=1)
        sender, stop, thread = run_sender(tmp_path / "gateway.db", receiver.url, token="s3cret")
        assert wait_until(lambda: sender.uplinked == len(keys), 20)
        stop.set()
        thread.join(10)
        stats = requests.get(f"{receiver.url}/api/v1/stats", headers=auth, timeout=5).json()
        assert stats == {"orders": 2, "revisions": 2, "duplicates": 0, "telemetry": 0, "reports": 0,
                     "refused": {"invalid_batch": 2, "unauthorized": 1}}
    finally:
        receiver.process.terminate()
        receiver.process.wait(10)


def test_tls_with_a_ca_file(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    receiver = start_receiver(tmp_path / "r.db", "--tls-cert", str(cert), "--tls-key", str(key), "--token", "t0k")
    try:
        assert receiver.url.startswith("https://")
        fill_outbox(tmp_path / "untrusted.db", orders=1, revisions=1)
        stop, wake = threading.Event(), threading.Event()
        untrusting = Sender(tmp_path / "untrusted.db", HttpTransport(receiver.url, "gw", "t0k", timeout=5), stop, wake,
                            retry_max=0.2)
        thread = threading.Thread(target=untrusting.run, daemon=True)
        thread.start()
        assert wait_until(lambda: untrusting.errors >= 2, 20)
        stop.set()
        thread.join(10)
        assert "SSL" in untrusting.last_error and untrusting.uplinked == 0

        keys = fill_outbox(tmp_path / "gateway.db", orders=3, revisions=1)
        stop, wake = threading.Event(), threading.Event()
        trusting = Sender(tmp_path / "gateway.db", HttpTransport(receiver.url, "gw", "t0k", timeout=5, ca_file=str(cert)),
                          stop, wake)
        thread = threading.Thread(target=trusting.run, daemon=True)
        thread.start()
        assert wait_until(lambda: trusting.uplinked == len(keys), 20)
        stop.set()
        thread.join(10)
    finally:
        receiver.process.terminate()
        receiver.process.wait(10)
