"""The reference receiver under hostile input: a real receiver process (python -m uplink.receiver),
real HTTP (requests, and raw sockets for what requests would never send), a real Mosquitto.

Every hostile case checks what was answered, that it was counted in /api/v1/stats (``refused``,
by reason), and then that the same receiver process still takes a valid uplink.
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from urllib.parse import urlparse

import orjson
import paho.mqtt.client as mqtt
import pytest
import requests
import sqlite_utils

from conftest import start_receiver, wait_until
from edge.broker import start_mosquitto
from uplink.receiver.store import SCHEMA_VERSION

TOKEN = "hostile-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 65536
RULE_FILE_MAX = 1024 * 1024


class Rx:
    """A receiver process and what the tests ask of it."""

    def __init__(self, proc, token: str = TOKEN):
        self.proc, self.url = proc, proc.url
        parsed = urlparse(proc.url)
        self.host, self.port = parsed.hostname, parsed.port
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, headers=kw.pop("headers", self.auth), timeout=10, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path, headers=kw.pop("headers", self.auth), timeout=10, **kw)

    def refused(self) -> dict[str, int]:
        return self.get("/api/v1/stats").json()["refused"]

    def order_ids(self) -> set[str]:
        return {o["order_id"] for o in self.get("/api/v1/orders").json()["orders"]}

    def exchange(self, data: bytes, wait: float = 10.0) -> bytes:
        """Send raw bytes on a new connection; everything answered until the server closed it."""
        with socket.create_connection((self.host, self.port), timeout=wait) as sock:
            try:
                sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):  # answered and closed before it read it all
                pass
            chunks = []
            while True:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:  # closed with part of what was sent unread: the answer came first
                    break
                except socket.timeout:
                    raise AssertionError(f"no answer and no close within {wait} s; got {b''.join(chunks)[:200]!r}")
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks)

    def still_serving(self) -> None:
        """The same process takes a valid uplink and shows its order."""
        assert self.proc.process.poll() is None, "the receiver exited"
        order_id = f"valid-{uuid.uuid4().hex[:12]}"
        answer = self.post("/api/v1/uplink", json={"gateway": "gw-valid", "revisions": [
            {"order_id": order_id, "revision": 1, "state": "open", "grid": "G1"}]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["acknowledged"] == [[order_id, 1]]
        assert order_id in self.order_ids()
        assert self.proc.process.poll() is None


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module")
def rx(tmp_path_factory):
    proc = start_receiver(tmp_path_factory.mktemp("rx") / "receiver.db", "--token", TOKEN, "--idle-timeout", "1",
                          "--max-body", str(MAX_BODY))
    yield Rx(proc)
    stop(proc.process)


def valid_revision(**fields) -> dict:
    return {"order_id": f"o-{uuid.uuid4().hex[:12]}", "revision": 1, "state": "open", **fields}


# -- bodies that are JSON but not a batch --------------------------------------------------

def revision_with(**fields) -> dict:
    return {"gateway": "gw-h", "revisions": [{"order_id": "o-bad", "revision": 1, **fields}]}


BAD_BATCHES = {
    "revision 2**63": (revision_with(revision=2**63), "revisions[1].revision must be an integer from 1 to"),
    "revision 0": (revision_with(revision=0), "revision must be an integer"),
    "revision -1": (revision_with(revision=-1), "revision must be an integer"),
    "revision true": (revision_with(revision=True), "revision must be an integer"),
    "revision 1.5": (revision_with(revision=1.5), "revision must be an integer"),
    "revision '1'": (revision_with(revision="1"), "revision must be an integer"),
    "revision null": (revision_with(revision=None), "revision must be an integer"),
    "revision -2**70": (revision_with(revision=-(2**70)), "revision must be an integer"),
    "order_id an object": (revision_with(order_id={"a": 1}), "order_id must be a non-empty string"),
    "order_id empty": (revision_with(order_id=""), "order_id must be a non-empty string"),
    "order_id a number": (revision_with(order_id=7), "order_id must be a non-empty string"),
    "order_id of 2000 characters": (revision_with(order_id="x" * 2000), "order_id must be a non-empty string"),
    "no order_id": ({"gateway": "gw-h", "revisions": [{"revision": 1}]}, "order_id must be"),
    "revision not an object": ({"gateway": "gw-h", "revisions": [1]}, "revisions[1]"),
    "revisions not a list": ({"gateway": "gw-h", "revisions": {"order_id": "o", "revision": 1}}, "revisions must be a list"),
    "no gateway": ({"revisions": []}, "gateway must be a non-empty string"),
    "gateway a number": ({"gateway": 5, "revisions": []}, "gateway must be a non-empty string"),
    "gateway empty": ({"gateway": "", "revisions": []}, "gateway must be a non-empty string"),
    "telemetry interval 2**63": ({"gateway": "gw-h", "revisions": [], "telemetry": [{"device": "D", "interval": 2**63}]},
                                 "telemetry[0].interval must be an integer"),
    "telemetry without device": ({"gateway": "gw-h", "revisions": [], "telemetry": [{"interval": 1}]},
                                 "telemetry[0].device must be"),
    "report seq a string": ({"gateway": "gw-h", "revisions": [], "reports": [{"seq": "x", "type": "rules", "status": "refused"}]},
                            "reports[0].seq must be an integer"),
    "report seq 0": ({"gateway": "gw-h", "revisions": [], "reports": [{"seq": 0, "type": "rules", "status": "refused"}]},
                     "reports[0].seq must be an integer"),
    "report without status": ({"gateway": "gw-h", "revisions": [], "reports": [{"seq": 1, "type": "rules"}]},
                               "reports[0].status must be a string"),
    "reports not a list": ({"gateway": "gw-h", "revisions": [], "reports": "all fine"}, "reports must be a list"),
    "body a list": ([{"gateway": "gw-h", "revisions": []}], "the body must be a JSON object"),
    "body a string": ("gw-h", "the body must be a JSON object"),
    "body null": (None, "the body must be a JSON object"),
}


@pytest.mark.parametrize("case", sorted(BAD_BATCHES))
def test_a_malformed_batch_is_refused_whole_counted_and_harmless(rx, case):
    body, message = BAD_BATCHES[case]
    companion = valid_revision()
    if isinstance(body, dict) and isinstance(body.get("revisions"), list):  # a valid revision in the same batch
        body = {**body, "revisions": [companion, *body["revisions"]]}
    before = rx.refused()
    answer = rx.post("/api/v1/uplink", data=json.dumps(body), headers={**AUTH, "Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"], answer.json()
    assert delta(before, rx.refused()) == {"invalid_batch": 1}
    assert companion["order_id"] not in rx.order_ids()  # nothing of a refused batch is stored
    rx.still_serving()


def nested(depth: int) -> bytes:
    return b'{"gateway": "gw-h", "revisions": [{"order_id": "o-deep", "revision": 1, "evidence": ' + \
        b"[" * depth + b"]" * depth + b"}]}"


BAD_BYTES = {
    "not JSON": (b'{"gateway": ', "not_json", "not JSON"),
    "NaN": (b'{"gateway": "gw-h", "revisions": [{"order_id": "o", "revision": NaN}]}', "not_json", "not JSON"),
    "Infinity": (b'{"gateway": "gw-h", "revisions": [], "x": Infinity}', "not_json", "not JSON"),
    "1e400": (b'{"gateway": "gw-h", "revisions": [{"order_id": "o", "revision": 1, "v": 1e400}]}', "not_json", "not JSON"),
    "invalid UTF-8": (b'{"gateway": "gw-\xff\xfe", "revisions": []}', "not_json", "not JSON"),
    "a lone surrogate": (b'{"gateway": "gw-\\ud800", "revisions": []}', "not_json", "not JSON"),
    "nested 30,000 deep": (b"[" * 30_000 + b"]" * 30_000, "not_json", "not JSON"),
    "nested 600 deep in a revision": (nested(600), "invalid_batch", "revisions[0]"),
    "empty body": (b"", "invalid_batch", "the body must be a JSON object"),
    "trailing garbage": (b'{"gateway": "gw-h", "revisions": []} {"more": 1}', "not_json", "not JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_BYTES))
def test_bytes_that_are_not_a_batch_are_refused_and_counted(rx, case):
    data, reason, message = BAD_BYTES[case]
    before = rx.refused()
    answer = rx.post("/api/v1/uplink", data=data, headers={**AUTH, "Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"]
    assert delta(before, rx.refused()) == {reason: 1}
    rx.still_serving()


def test_a_batch_without_a_json_content_type_is_refused(rx):
    body = orjson.dumps({"gateway": "gw-h", "revisions": [valid_revision()]})
    before = rx.refused()
    answer = rx.post("/api/v1/uplink", data=body, headers={**AUTH, "Content-Type": "text/plain"})
    assert answer.status_code == 400 and "Content-Type: application/json" in answer.json()["error"]
    assert delta(before, rx.refused()) == {"invalid_batch": 1}
    rx.still_serving()


@pytest.mark.parametrize("query", ["after=1e23", "after=abc", "after=-1", f"after={2**63}", "after=", "after=1.5",
                                   "after=%00"])
def test_a_bad_changes_cursor_gets_400_not_a_closed_connection(rx, query):
    before = rx.refused()
    answer = rx.get(f"/api/v1/gateways/gw-h/changes?{query}")
    assert answer.status_code == 400
    assert "after must be an integer from 0 to" in answer.json()["error"]
    assert delta(before, rx.refused()) == {"invalid_parameter": 1}
    assert rx.get(f"/api/v1/gateways/gw-h/changes?after={2**63 - 1}").json() == {"changes": []}
    rx.still_serving()


@pytest.mark.parametrize("path, status, reason", [
    ("/api/v1/gateways/gw-h/reports?limit=0", 400, "invalid_parameter"),
    ("/api/v1/gateways/gw-h/reports?limit=99999999999999999999999", 400, "invalid_parameter"),
    ("/api/v1/nothing-here", 404, "not_found"),
    ("/api/v1/gateways/a%2Fb/changes", 404, "not_found"),
])
def test_bad_queries_and_paths_are_answered_and_counted(rx, path, status, reason):
    before = rx.refused()
    answer = rx.get(path)
    assert answer.status_code == status and answer.json()["error"]
    assert delta(before, rx.refused()) == {reason: 1}
    rx.still_serving()


# -- HTTP that requests would never send ----------------------------------------------------

HEAD = b"Host: receiver\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n"
SMUGGLED = b"GET /api/v1/orders HTTP/1.1\r\n" + HEAD + b"\r\n"
RAW = {
    "Content-Length -1": (b"POST /api/v1/uplink HTTP/1.1\r\n" + HEAD + b"Content-Length: -1\r\n\r\n{}", 400, "malformed_http"),
    "Content-Length abc": (b"POST /api/v1/uplink HTTP/1.1\r\n" + HEAD + b"Content-Length: abc\r\n\r\n{}", 400, "malformed_http"),
    "Content-Length +5": (b"POST /api/v1/uplink HTTP/1.1\r\n" + HEAD + b"Content-Length: +5\r\n\r\n{}", 400, "malformed_http"),
    "two Content-Lengths": (b"POST /api/v1/uplink HTTP/1.1\r\n" + HEAD + b"Content-Length: 2\r\nContent-Length: 9\r\n\r\n{}",
                            400, "malformed_http"),
    "rule file with Content-Length -1": (b"PUT /api/v1/gateways/gw-h/rules/x.yaml HTTP/1.1\r\n" + HEAD +
                                         b"Content-Length: -1\r\n\r\nrules: []", 400, "malformed_http"),
    "a bad chunk size": (b"POST /api/v1/uplink HTTP/1.1\r\n" + HEAD + b"Content-Type: application/json\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400, "malformed_http"),
    "a TLS hello on the HTTP port": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(64), 400, "malformed_http"),
    "no Host header": (b"GET /healthz HTTP/1.1\r\n\r\n", 400, "malformed_http"),
    "a NUL in the request line": (b"GET /api/v1/stats\x00 HTTP/1.1\r\n" + HEAD + b"\r\n", 400, "malformed_http"),
    "a header without a colon": (b"GET /api/v1/stats HTTP/1.1\r\n" + HEAD + b"nonsense\r\n\r\n", 400, "malformed_http"),
    "a head of 300 kB": (b"GET /api/v1/stats HTTP/1.1\r\n" + HEAD + b"X-Pad: " + b"a" * 300_000 + b"\r\n\r\n",
                         400, "malformed_http"),
    "a body declared larger than the limit": (b"POST /api/v1/uplink HTTP/1.1\r\n" + HEAD + b"Content-Type: application/json\r\n"
                                              b"Content-Length: 10000000000\r\n\r\n", 413, "body_too_large"),
    "a chunked body larger than the limit": (b"POST /api/v1/uplink HTTP/1.1\r\n" + HEAD + b"Content-Type: application/json\r\n"
                                             b"Transfer-Encoding: chunked\r\n\r\n" +
                                             (b"9000\r\n" + b" " * 0x9000 + b"\r\n") * 2 + b"0\r\n\r\n",
                                             413, "body_too_large"),
    "a rule file declared at 2 MiB": (b"PUT /api/v1/gateways/gw-h/rules/x.yaml HTTP/1.1\r\n" + HEAD +
                                      b"Content-Length: 2097152\r\n\r\n", 413, "body_too_large"),
    "Expect 100-continue with a body too large": (b"POST /api/v1/uplink HTTP/1.1\r\n" + HEAD + b"Expect: 100-continue\r\n"
                                                  b"Content-Type: application/json\r\nContent-Length: 999999999\r\n\r\n",
                                                  413, "body_too_large"),
    "a request smuggled in a refused body": (b"POST /api/v1/uplink HTTP/1.1\r\nHost: receiver\r\nContent-Length: " +
                                             str(len(SMUGGLED)).encode() + b"\r\n\r\n" + SMUGGLED, 401, "unauthorized"),
    "a request after a refused body": (b"POST /api/v1/uplink HTTP/1.1\r\nHost: receiver\r\nContent-Length: 2\r\n\r\n{}" +
                                       SMUGGLED, 401, "unauthorized"),
    "a request smuggled behind Transfer-Encoding": (b"POST /api/v1/uplink HTTP/1.1\r\nHost: receiver\r\nContent-Length: 4\r\n"
                                                    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
                                                    401, "unauthorized"),
    "an unknown method": (b"BREW /api/v1/stats HTTP/1.1\r\n" + HEAD + b"\r\n", 405, "method_not_allowed"),
    "a rule file that is not UTF-8": (b"PUT /api/v1/gateways/gw-h/rules/x.yaml HTTP/1.1\r\n" + HEAD +
                                      b"Content-Length: 4\r\n\r\n\xff\xfe\x00\x01", 400, "rule_file_not_utf8"),
    "a rule file named ../x.yaml": (b"PUT /api/v1/gateways/gw-h/rules/..%2Fx.yaml HTTP/1.1\r\n" + HEAD +
                                    b"Content-Length: 2\r\n\r\n{}", 404, "not_found"),
    "a rule file named x.txt": (b"PUT /api/v1/gateways/gw-h/rules/x.txt HTTP/1.1\r\n" + HEAD +
                                b"Content-Length: 2\r\n\r\n{}", 400, "invalid_parameter"),
    "a decision with a note that is not a string": (b"POST /api/v1/orders/o-x/accept HTTP/1.1\r\n" + HEAD +
                                                    b"Content-Type: application/json\r\nContent-Length: 13\r\n\r\n"
                                                    b'{"note": [1]}', 400, "invalid_body"),
    "a decision on an unknown order": (b"POST /api/v1/orders/no-such-order/accept HTTP/1.1\r\n" + HEAD +
                                       b"Content-Length: 0\r\n\r\n", 404, "unknown_order"),
    "an unknown decision": (b"POST /api/v1/orders/o-x/approve HTTP/1.1\r\n" + HEAD + b"Content-Length: 0\r\n\r\n",
                            400, "invalid_parameter"),
}


@pytest.mark.parametrize("case", sorted(RAW))
def test_malformed_http_gets_one_answer_and_the_connection_closed(rx, case):
    data, status, reason = RAW[case]
    before = rx.refused()
    answer = rx.exchange(data)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:300]
    assert answer.count(b"HTTP/1.1 ") == 1, answer  # nothing after it was read as a request
    assert delta(before, rx.refused()) == {reason: 1}
    rx.still_serving()


def test_pipelined_valid_requests_are_each_answered(rx):
    answer = rx.exchange(b"GET /healthz HTTP/1.1\r\nHost: r\r\n\r\nGET /healthz HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200 OK") == 2
    rx.still_serving()


def test_a_head_sent_a_byte_at_a_time_is_cut_off(rx):
    before = rx.refused()
    with socket.create_connection((rx.host, rx.port), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/uplink HTTP/1.1\r\nHost: r\r\n")
        closed = False
        for _ in range(20):  # one more header byte every 0.5 s: the 1 s deadline is for the whole head
            try:
                sock.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.5)
        if not closed:
            sock.settimeout(5)
            try:
                closed = sock.recv(100) == b""
            except ConnectionResetError:
                closed = True
    assert closed
    assert delta(before, rx.refused()) == {"slow_request_head": 1}
    rx.still_serving()


def test_a_body_that_stops_coming_gets_408(rx):
    before = rx.refused()
    answer = rx.exchange(b"POST /api/v1/uplink HTTP/1.1\r\n" + HEAD + b"Content-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"gateway\"")
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert delta(before, rx.refused()) == {"body_timeout": 1}
    rx.still_serving()


def test_300_idle_connections_hold_nothing_and_are_closed(rx):
    sockets = [socket.create_connection((rx.host, rx.port), timeout=10) for _ in range(300)]
    try:
        rx.still_serving()  # asyncio: an idle connection is no thread
        for sock in sockets:
            assert sock.recv(10) == b""  # the server closed it (no request head within --idle-timeout)
    finally:
        for sock in sockets:
            sock.close()
    rx.still_serving()


def test_connections_beyond_the_limit_get_503_until_they_go(tmp_path):
    proc = start_receiver(tmp_path / "receiver.db", "--max-connections", "5", "--idle-timeout", "60")
    rx = Rx(proc, token="")
    try:
        idle = [socket.create_connection((rx.host, rx.port), timeout=10) for _ in range(6)]
        assert wait_until(lambda: requests.get(rx.url + "/api/v1/stats", timeout=10).status_code == 503, 10)
        for sock in idle:
            sock.close()
        assert wait_until(lambda: requests.get(rx.url + "/api/v1/stats", timeout=10).status_code == 200, 10)
        rx.still_serving()
    finally:
        stop(proc.process)


# -- the token -------------------------------------------------------------------------------

EVERY_ENDPOINT = [
    ("GET", "/api/v1/orders"), ("GET", "/api/v1/revisions"), ("GET", "/api/v1/telemetry"), ("GET", "/api/v1/stats"),
    ("GET", "/api/v1/gateways/gw-h/changes?after=0"), ("GET", "/api/v1/gateways/gw-h/reports"),
    ("POST", "/api/v1/uplink"), ("POST", "/api/v1/orders/o-x/accept"), ("POST", "/api/v1/orders/o-x/dispatch"),
    ("POST", "/api/v1/orders/o-x/resolve"), ("POST", "/api/v1/orders/o-x/close"), ("POST", "/api/v1/orders/o-x/reject"),
    ("PUT", "/api/v1/gateways/gw-h/rules/x.yaml"), ("GET", "/api/v1/nothing"), ("GET", "/docs"),
]


@pytest.mark.parametrize("method, path", EVERY_ENDPOINT)
@pytest.mark.parametrize("given", [None, "Bearer wrong", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN])
def test_every_api_call_needs_the_token(rx, method, path, given):
    before = rx.refused()
    headers = {"Authorization": given} if given else {}
    answer = requests.request(method, rx.url + path, headers=headers, data=b'{"gateway": "gw-h", "revisions": []}',
                              timeout=10)
    assert answer.status_code == 401 and answer.headers["WWW-Authenticate"] == "Bearer"
    assert "orders" not in answer.json() and "revisions" not in answer.json()
    assert delta(before, rx.refused()) == {"unauthorized": 1}


def test_the_page_needs_the_token_and_takes_it_once_from_the_address(rx):
    secret = valid_revision(title="secret-title", address="12 Hidden Street")
    assert rx.post("/api/v1/uplink", json={"gateway": "gw-h", "revisions": [secret]}).status_code == 200
    for answer in (requests.get(rx.url + "/", timeout=10), requests.get(rx.url + "/?token=wrong", timeout=10),
                   requests.get(rx.url + "/", cookies={"receiver_page": TOKEN}, timeout=10),
                   requests.get(rx.url + "/", cookies={"receiver_page": "0" * 64}, timeout=10)):
        assert answer.status_code == 401 and "secret-title" not in answer.text and "<form" in answer.text
    with requests.Session() as browser:
        opened = browser.get(rx.url + f"/?token={TOKEN}", timeout=10, allow_redirects=False)
        assert opened.status_code == 303 and opened.headers["Location"] == "/"
        cookie = opened.cookies["receiver_page"]
        assert TOKEN not in cookie and "httponly" in opened.headers["Set-Cookie"].lower()
        page = browser.get(rx.url + "/", timeout=10)
        assert page.status_code == 200 and "secret-title" in page.text
        assert browser.get(rx.url + "/api/v1/orders", timeout=10).status_code == 401  # the cookie is for the page only
    assert "secret-title" in rx.get("/").text  # the bearer token opens it too
    assert requests.get(rx.url + "/openapi.json", timeout=10).status_code == 200
    assert requests.get(rx.url + "/healthz", timeout=10).text == "ok\n"


def test_the_openapi_document_describes_every_endpoint_from_the_models(rx):
    document = requests.get(rx.url + "/openapi.json", timeout=10).json()
    assert set(document["paths"]) == {
        "/api/v1/uplink", "/api/v1/orders", "/api/v1/revisions", "/api/v1/telemetry", "/api/v1/stats",
        "/api/v1/gateways/{gateway}/changes", "/api/v1/gateways/{gateway}/reports",
        "/api/v1/gateways/{gateway}/rules/{name}", "/api/v1/orders/{order_id}/{action}", "/api/v1/quality", "/healthz"}
    batch = document["components"]["schemas"]["UplinkBatch"]
    assert batch["required"] == ["gateway", "revisions"] and "reports" in batch["properties"]
    assert document["components"]["schemas"]["Revision"]["properties"]["revision"]["minimum"] == 1
    assert "422" not in str(document["paths"])  # refusals are 400, as answered
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_a_receiver_on_a_public_address_without_a_token_warns(tmp_path):
    def first_lines(host: str, *extra: str) -> str:
        process = subprocess.Popen([sys.executable, "-m", "uplink.receiver", "--host", host, "--port", "0",
                                    "--db", str(tmp_path / f"{host}.db"), *extra],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert process.stdout.readline().startswith("receiver listening on ")
        finally:
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=10)
        assert process.returncode == 0, err
        return err

    assert "without a token" in first_lines("0.0.0.0") and "--token" in first_lines("0.0.0.0")
    assert "without a token" not in first_lines("0.0.0.0", "--token", "t")
    assert "without a token" not in first_lines("127.0.0.1")


# -- what the page shows ---------------------------------------------------------------------

def test_device_and_gateway_text_is_escaped_on_the_page(rx):
    hostile = valid_revision(title="<script>alert(1)</script>", severity="x' onmouseover='alert(2)",
                             grid="<img src=x onerror=alert(3)>", device="MH-\x1b[31m<b>", rule='"><iframe>')
    report = {"seq": 1, "type": "rules", "status": "refused", "file": "<svg onload=alert(4)>.yaml",
              "detail": "x.yaml:3: <script>alert(5)</script>", "at": "<i>now</i>"}
    gateway = "gw-<script>alert(6)</script>"
    assert rx.post("/api/v1/uplink", json={"gateway": gateway, "revisions": [hostile], "reports": [report]}).status_code == 200
    page = rx.get("/")
    assert page.status_code == 200
    for raw in ("<script>", "<img", "<iframe>", "<svg", "<i>now", "' onmouseover='", "<b>"):
        assert raw not in page.text, raw
    for shown in ("&lt;script&gt;alert(1)&lt;/script&gt;", "&lt;img src=x onerror=alert(3)&gt;",
                  "x&#x27; onmouseover=&#x27;alert(2)", "&quot;&gt;&lt;iframe&gt;",
                  "rule file &lt;svg onload=alert(4)&gt;.yaml refused: x.yaml:3: &lt;script&gt;alert(5)&lt;/script&gt;",
                  "gw-&lt;script&gt;alert(6)&lt;/script&gt;"):
        assert shown in page.text, shown
    assert "script-src" not in page.headers["Content-Security-Policy"]
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")
    rx.still_serving()


# -- reports ---------------------------------------------------------------------------------

def test_reports_are_stored_acknowledged_once_and_shown(rx):
    gateway = f"gw-rep-{uuid.uuid4().hex[:6]}"
    reports = [
        {"seq": 12, "type": "rules", "status": "refused", "reason": "rule_file_invalid", "file": "bins.yaml",
         "detail": "bins.yaml:3: unknown function 'avgg' (did you mean 'avg'?)", "at": "2026-01-01T00:00:00Z"},
        {"seq": 13, "type": "rules", "status": "applied", "file": "covers.yaml", "at": "2026-01-01T00:00:01Z"},
        {"seq": 14, "type": "order", "status": "refused", "reason": "illegal_transition",
         "detail": "dispatched -> accepted", "at": "2026-01-01T00:00:02Z", "order_id": "o-1"},
        {"seq": 15, "type": "unknown", "status": "refused", "reason": "malformed_change", "detail": "x" * 10_000},
    ]
    revision = valid_revision()
    first = rx.post("/api/v1/uplink", json={"gateway": gateway, "revisions": [revision], "reports": reports})
    assert first.status_code == 200
    assert first.json() == {"acknowledged": [[revision["order_id"], 1]], "telemetry_acknowledged": [],
                            "reports_acknowledged": [12, 13, 14, 15], "duplicates": 0}
    again = rx.post("/api/v1/uplink", json={"gateway": gateway, "revisions": [], "reports": reports[:2]})
    assert again.json()["reports_acknowledged"] == [12, 13] and again.json()["duplicates"] == 2
    stored = rx.get(f"/api/v1/gateways/{gateway}/reports").json()["reports"]
    assert [r["seq"] for r in stored] == [12, 13, 14, 15]
    assert stored[0]["detail"] == reports[0]["detail"] and stored[2]["order_id"] == "o-1"
    assert len(stored[3]["detail"]) == 4096  # cut, not refused
    assert [r["seq"] for r in rx.get(f"/api/v1/gateways/{gateway}/reports?status=refused").json()["reports"]] == [12, 14, 15]
    assert rx.get("/api/v1/gateways/nobody/reports").json() == {"reports": []}
    page = rx.get("/").text
    assert "rule file bins.yaml refused: bins.yaml:3: unknown function &#x27;avgg&#x27;" in page
    assert "rule file covers.yaml applied" in page
    assert "order change #14 refused (illegal_transition): dispatched -&gt; accepted" in page
    nothing = rx.post("/api/v1/uplink", json={"gateway": gateway, "revisions": []})
    assert nothing.json()["reports_acknowledged"] == []  # the key says: this platform takes reports
    rx.still_serving()


# -- the database ------------------------------------------------------------------------------

def test_an_old_receiver_database_is_migrated_not_recreated(tmp_path):
    path = tmp_path / "receiver.db"
    old = sqlite_utils.Database(path)  # as the first receivers created it, without a schema version
    old["revisions"].create({"order_id": str, "revision": int, "gateway": str, "received_at": float, "body": str},
                            pk=("order_id", "revision"))
    old["counters"].create({"name": str, "value": int}, pk="name")
    old["telemetry"].create({"device": str, "interval": int, "gateway": str, "received_at": float, "body": str},
                            pk=("device", "interval"))
    old["changes"].create({"seq": int, "gateway": str, "type": str, "order_id": str, "state": str, "note": str,
                           "content": str, "at": float}, pk="seq")
    old["revisions"].insert({"order_id": "o-old", "revision": 1, "gateway": "gw-old", "received_at": 1.0,
                             "body": orjson.dumps({"order_id": "o-old", "revision": 1, "state": "open"}).decode()})
    old["counters"].insert({"name": "duplicates", "value": 7})
    old.conn.close()
    proc = start_receiver(path)
    rx = Rx(proc, token="")
    try:
        assert "o-old" in rx.order_ids()
        assert rx.get("/api/v1/stats").json()["duplicates"] == 7
        answer = rx.post("/api/v1/uplink", json={"gateway": "gw-old", "revisions": [],
                                                 "reports": [{"seq": 1, "type": "rules", "status": "applied"}]})
        assert answer.json()["reports_acknowledged"] == [1]
        rx.still_serving()
    finally:
        stop(proc.process)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT count(*) FROM revisions WHERE order_id = 'o-old'").fetchone()[0] == 1
        assert conn.execute("SELECT gateway, state FROM orders WHERE order_id = 'o-old'").fetchone() == ("gw-old", "open")


def test_a_database_from_a_newer_receiver_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "receiver.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    done = subprocess.run([sys.executable, "-m", "uplink.receiver", "--port", "0", "--db", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "schema version 99" in done.stderr and "newer receiver" in done.stderr


# -- the MQTT listener ---------------------------------------------------------------------------

class MqttRx(Rx):
    def __init__(self, proc, broker):
        super().__init__(proc, token="")
        self.publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.publisher.connect(broker.host, broker.port)
        self.publisher.loop_start()

    def publish(self, topic: str, payload: bytes) -> None:
        self.publisher.publish(topic, payload, qos=1).wait_for_publish(10)

    def mqtt_still_serving(self, gateway: str) -> None:
        """A valid revision published after the bad message is stored by the same process."""
        order_id = f"mq-{uuid.uuid4().hex[:12]}"
        self.publish(f"edge/{gateway}/orders/{order_id}", orjson.dumps({"order_id": order_id, "revision": 1}))
        assert wait_until(lambda: order_id in self.order_ids(), 20), "a valid revision after it was not stored"
        self.still_serving()

    def until_listening(self, gateway: str, timeout: float = 40) -> None:
        """Publish a valid revision until it is stored: the listener is connected and subscribed
        (a message published before it subscribes, with no session on the broker, reaches no one)."""
        order_id = f"mq-{uuid.uuid4().hex[:12]}"

        def stored() -> bool:
            self.publish(f"edge/{gateway}/orders/{order_id}", orjson.dumps({"order_id": order_id, "revision": 1}))
            return wait_until(lambda: order_id in self.order_ids(), 1)

        assert wait_until(stored, timeout), "the MQTT listener never took a message"

    def close(self) -> None:
        self.publisher.loop_stop()
        self.publisher.disconnect()


def start_mqtt_receiver(db, broker, client_id: str) -> MqttRx:
    proc = start_receiver(db, "--mqtt", broker.url, "--mqtt-client-id", client_id)
    rx = MqttRx(proc, broker)
    try:
        rx.until_listening("gw-warmup")
    except BaseException:
        stop(proc.process)
        rx.close()
        raise
    return rx


@pytest.fixture(scope="module")
def mqtt_rx(tmp_path_factory, mosquitto):
    rx = start_mqtt_receiver(tmp_path_factory.mktemp("mqtt-rx") / "receiver.db", mosquitto, f"rx-{uuid.uuid4().hex[:8]}")
    yield rx
    rx.close()
    stop(rx.proc.process)


MQTT_BAD = {
    "order_id an object": ("orders/o", orjson.dumps({"order_id": {"a": 1}, "revision": 1}), "mqtt_invalid_revision"),
    "revision 2**63": ("orders/o", orjson.dumps({"order_id": "o", "revision": 2**63}), "mqtt_invalid_revision"),
    "revision a string": ("orders/o", b'{"order_id": "o", "revision": "1"}', "mqtt_invalid_revision"),
    "a JSON list": ("orders/o", b"[1, 2]", "mqtt_invalid_revision"),
    "JSON null": ("orders/o", b"null", "mqtt_invalid_revision"),
    "nested 600 deep": ("orders/o", b'{"order_id": "o", "revision": 1, "e": ' + b"[" * 600 + b"]" * 600 + b"}",
                        "mqtt_invalid_revision"),
    "not JSON": ("orders/o", b"\x00\x01 not json", "mqtt_not_json"),
    "invalid UTF-8": ("orders/o", b'{"order_id": "\xff", "revision": 1}', "mqtt_not_json"),
    "NaN": ("orders/o", b'{"order_id": "o", "revision": 1, "v": NaN}', "mqtt_not_json"),
    "nested 5,000 deep": ("orders/o", b"[" * 5000 + b"]" * 5000, "mqtt_not_json"),
    "empty": ("orders/o", b"", "mqtt_not_json"),
    "2 MiB": ("orders/o", b'{"order_id": "o", "revision": 1, "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}', "mqtt_too_large"),
    "a summary with a bad interval": ("telemetry/D-1", b'{"device": "D-1", "interval": 1.5}', "mqtt_invalid_summary"),
    "a summary without device": ("telemetry/D-1", b'{"interval": 5}', "mqtt_invalid_summary"),
    "a report without seq": ("reports", b'{"type": "rules", "status": "refused"}', "mqtt_invalid_report"),
    "a report with seq 2**64": ("reports", orjson.dumps({"seq": 2**64 - 1, "type": "rules", "status": "refused"}),
                                "mqtt_invalid_report"),
}


@pytest.mark.parametrize("case", sorted(MQTT_BAD))
def test_a_bad_mqtt_message_is_refused_counted_and_never_kills_the_listener(mqtt_rx, case):
    suffix, payload, reason = MQTT_BAD[case]
    gateway = f"gw-{uuid.uuid4().hex[:8]}"
    before = mqtt_rx.refused()
    mqtt_rx.publish(f"edge/{gateway}/{suffix}", payload)
    assert wait_until(lambda: delta(before, mqtt_rx.refused()) == {reason: 1}, 20), delta(before, mqtt_rx.refused())
    mqtt_rx.mqtt_still_serving(gateway)
    assert delta(before, mqtt_rx.refused()) == {reason: 1}


def test_a_message_on_a_topic_without_a_gateway_is_refused(mqtt_rx):
    before = mqtt_rx.refused()
    mqtt_rx.publish("edge//orders/o", orjson.dumps({"order_id": "o-nogw", "revision": 1}))
    assert wait_until(lambda: delta(before, mqtt_rx.refused()) == {"mqtt_unexpected_topic": 1}, 20)
    assert "o-nogw" not in mqtt_rx.order_ids()
    mqtt_rx.mqtt_still_serving("gw-after-topic")


def test_reports_over_mqtt_are_stored(mqtt_rx):
    gateway = f"gw-{uuid.uuid4().hex[:8]}"
    report = {"seq": 3, "type": "rules", "status": "refused", "reason": "rule_file_invalid", "file": "x.yaml",
              "detail": "x.yaml:3: mapping values are not allowed here"}
    mqtt_rx.publish(f"edge/{gateway}/reports", orjson.dumps(report))
    assert wait_until(lambda: mqtt_rx.get(f"/api/v1/gateways/{gateway}/reports").json()["reports"], 20)
    (stored,) = mqtt_rx.get(f"/api/v1/gateways/{gateway}/reports").json()["reports"]
    assert stored["seq"] == 3 and stored["detail"] == report["detail"] and stored["gateway"] == gateway
    assert "rule file x.yaml refused: x.yaml:3: mapping values are not allowed here" in mqtt_rx.get("/").text


def test_the_listener_reconnects_after_the_broker_restarts_and_a_poison_message_is_answered_once(tmp_path):
    broker = start_mosquitto(tmp_path / "broker", persistent=True)
    port, client_id, db = broker.port, f"rx-{uuid.uuid4().hex[:8]}", tmp_path / "receiver.db"
    poison = orjson.dumps({"order_id": {"a": 1}, "revision": 1})
    rx = start_mqtt_receiver(db, broker, client_id)
    try:
        rx.publish("edge/gw-r/orders/o", poison)
        assert wait_until(lambda: rx.refused() == {"mqtt_invalid_revision": 1}, 20)
        rx.close()
        broker.stop()
        broker = start_mosquitto(tmp_path / "broker", port=port, persistent=True)
        rx.publisher.reconnect()
        rx.publisher.loop_start()
        rx.until_listening("gw-r")  # paho reconnected and subscribed again
        rx.publish("edge/gw-r/orders/o", poison)  # and the same poison again kills nothing
        assert wait_until(lambda: rx.refused() == {"mqtt_invalid_revision": 2}, 20)
        rx.mqtt_still_serving("gw-r")
        rx.close()
        stop(rx.proc.process)

        # While the receiver is down, its session on the broker keeps what is published for it, and
        # would send again what it left unacknowledged. The poison was acknowledged: the next
        # receiver gets the queued revision and not the poison.
        publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        publisher.connect(broker.host, broker.port)
        publisher.loop_start()
        publisher.publish("edge/gw-r/orders/o-queued", orjson.dumps({"order_id": "o-queued", "revision": 1}),
                          qos=1).wait_for_publish(10)
        publisher.loop_stop()
        publisher.disconnect()
        rx = start_mqtt_receiver(db, broker, client_id)
        assert wait_until(lambda: "o-queued" in rx.order_ids(), 20)
        assert rx.refused() == {}
    finally:
        rx.close()
        stop(rx.proc.process)
        broker.stop()
