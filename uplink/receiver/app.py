"""The receiver's HTTP API (standard library server, one thread per request).

- ``POST /api/v1/revisions``: ``{"gateway": ID, "revisions": [{"order_id": str, "revision": int, ...}]}``;
  answers ``{"acknowledged": [[order_id, revision], ...], "duplicates": N}``.
- ``GET /api/v1/orders``: the latest revision of every order.
- ``GET /api/v1/stats``: counts of orders, revisions and dropped duplicates.
- ``GET /healthz``: ``ok``.

With a token set, every ``/api/`` call needs ``Authorization: Bearer TOKEN``.
"""

from __future__ import annotations

import hmac
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson

from uplink.receiver.store import ReceiverStore

log = logging.getLogger(__name__)
MAX_BODY = 16 * 1024 * 1024


class _BadRequest(Exception):
    pass


def _validate(data: object) -> tuple[str, list[dict]]:
    if not isinstance(data, dict):
        raise _BadRequest("body must be a JSON object")
    gateway = data.get("gateway")
    revisions = data.get("revisions")
    if not isinstance(gateway, str) or not gateway:
        raise _BadRequest("'gateway' must be a non-empty string")
    if not isinstance(revisions, list):
        raise _BadRequest("'revisions' must be a list")
    for index, body in enumerate(revisions):
        if not isinstance(body, dict):
            raise _BadRequest(f"revisions[{index}] must be an object")
        if not isinstance(body.get("order_id"), str) or not body["order_id"]:
            raise _BadRequest(f"revisions[{index}].order_id must be a non-empty string")
        revision = body.get("revision")
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
            raise _BadRequest(f"revisions[{index}].revision must be an integer >= 1")
    return gateway, revisions


class _Handler(BaseHTTPRequestHandler):
    server: "ReceiverServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, payload: object, content_type: str = "application/json") -> None:
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorised(self) -> bool:
        token = self.server.token
        if not token:
            return True
        given = self.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return True
        self._send(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"})
        return False

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(HTTPStatus.OK, b"ok\n", "text/plain")
            return
        if not self._authorised():
            return
        if path == "/api/v1/orders":
            self._send(HTTPStatus.OK, {"orders": self.server.store.orders()})
        elif path == "/api/v1/revisions":
            self._send(HTTPStatus.OK, {"revisions": self.server.store.revisions()})
        elif path == "/api/v1/stats":
            self._send(HTTPStatus.OK, self.server.store.stats())
        else:
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no such resource: {path}"})

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        path = self.path.split("?", 1)[0]
        if not self._authorised():
            return
        if path != "/api/v1/revisions":
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no such resource: {path}"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body must be 0..{MAX_BODY} bytes"})
            return
        try:
            gateway, revisions = _validate(orjson.loads(self.rfile.read(length)))
        except orjson.JSONDecodeError as error:
            self._send(HTTPStatus.BAD_REQUEST, {"error": f"not JSON: {error}"})
            return
        except _BadRequest as error:
            self._send(HTTPStatus.BAD_REQUEST, {"error": str(error)})
            return
        acknowledged, duplicates = self.server.store.add(gateway, revisions)
        self._send(HTTPStatus.OK, {"acknowledged": acknowledged, "duplicates": duplicates})


class ReceiverServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, store: ReceiverStore, token: str = ""):
        super().__init__((host, port), _Handler)
        self.store = store
        self.token = token

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="receiver", daemon=True)
        thread.start()
        return thread
