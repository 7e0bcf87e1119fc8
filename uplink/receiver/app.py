"""The receiver's HTTP API (standard library server, one thread per request).

The API is described by the OpenAPI document it serves at ``/openapi.json``; ``/`` is an
HTML page of the orders by grid and state. With a token set, every ``/api/`` call needs
``Authorization: Bearer TOKEN``.
"""

from __future__ import annotations

import hmac
import html
import logging
import re
import ssl
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import orjson

from uplink.receiver.store import ReceiverStore

log = logging.getLogger(__name__)
MAX_BODY = 64 * 1024 * 1024
ACTIONS = {"accept": "accepted", "dispatch": "dispatched", "resolve": "resolved", "close": "closed", "reject": "rejected"}

OPENAPI = {
    "openapi": "3.0.3",
    "info": {"title": "Reference central platform", "version": "1",
             "description": "Receives work-order revisions and telemetry from street gateways; sends back decisions."},
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "security": [{"bearer": []}],
    "paths": {
        "/api/v1/uplink": {"post": {
            "summary": "A gateway's batch of order revisions and telemetry summaries",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["gateway", "revisions"],
                "properties": {
                    "gateway": {"type": "string"},
                    "revisions": {"type": "array", "items": {"type": "object", "required": ["order_id", "revision"],
                                  "properties": {"order_id": {"type": "string"}, "revision": {"type": "integer", "minimum": 1}}}},
                    "telemetry": {"type": "array", "items": {"type": "object", "required": ["device", "interval"],
                                  "properties": {"device": {"type": "string"}, "interval": {"type": "integer"}}}},
                }}}}},
            "responses": {
                "200": {"description": "Every item acknowledged; duplicates (same order id and revision) dropped and counted",
                        "content": {"application/json": {"schema": {"type": "object", "properties": {
                            "acknowledged": {"type": "array", "items": {"type": "array"}},
                            "telemetry_acknowledged": {"type": "array", "items": {"type": "array"}},
                            "duplicates": {"type": "integer"}}}}}},
                "400": {"description": "Malformed batch"}, "401": {"description": "Missing or wrong token"}},
        }},
        "/api/v1/orders": {"get": {"summary": "The latest revision of every order",
                                   "parameters": [{"name": "state", "in": "query", "schema": {"type": "string"}},
                                                  {"name": "grid", "in": "query", "schema": {"type": "string"}}],
                                   "responses": {"200": {"description": "Orders"}}}},
        "/api/v1/revisions": {"get": {"summary": "Every revision received", "responses": {"200": {"description": "Revisions"}}}},
        "/api/v1/telemetry": {"get": {"summary": "Every telemetry summary received", "responses": {"200": {"description": "Summaries"}}}},
        "/api/v1/stats": {"get": {"summary": "Counts of orders, revisions, telemetry summaries and dropped duplicates",
                                  "responses": {"200": {"description": "Counts"}}}},
        "/api/v1/orders/{order_id}/{action}": {"post": {
            "summary": "The platform's decision on an order; its gateway fetches it from /changes",
            "parameters": [{"name": "order_id", "in": "path", "required": True, "schema": {"type": "string"}},
                           {"name": "action", "in": "path", "required": True,
                            "schema": {"type": "string", "enum": sorted(ACTIONS)}}],
            "responses": {"200": {"description": "Recorded"}, "404": {"description": "Unknown order or action"}}}},
        "/api/v1/gateways/{gateway}/changes": {"get": {
            "summary": "Decisions for a gateway's orders after change number `after`, oldest first",
            "parameters": [{"name": "gateway", "in": "path", "required": True, "schema": {"type": "string"}},
                           {"name": "after", "in": "query", "schema": {"type": "integer", "default": 0}}],
            "responses": {"200": {"description": "Changes"}}}},
        "/api/v1/gateways/{gateway}/rules/{file}": {"put": {
            "summary": "A new rule file for a gateway (YAML body); the gateway validates it before applying it",
            "parameters": [{"name": "gateway", "in": "path", "required": True, "schema": {"type": "string"}},
                           {"name": "file", "in": "path", "required": True, "schema": {"type": "string"}}],
            "requestBody": {"required": True, "content": {"application/yaml": {"schema": {"type": "string"}}}},
            "responses": {"200": {"description": "Queued for the gateway"}}}},
        "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "ok"}}}},
    },
}


class _BadRequest(Exception):
    pass


def _validate(data: object) -> tuple[str, list[dict], list[dict]]:
    if not isinstance(data, dict):
        raise _BadRequest("body must be a JSON object")
    gateway = data.get("gateway")
    revisions = data.get("revisions")
    telemetry = data.get("telemetry", [])
    if not isinstance(gateway, str) or not gateway:
        raise _BadRequest("'gateway' must be a non-empty string")
    if not isinstance(revisions, list):
        raise _BadRequest("'revisions' must be a list")
    if not isinstance(telemetry, list):
        raise _BadRequest("'telemetry' must be a list")
    for index, body in enumerate(revisions):
        if not isinstance(body, dict):
            raise _BadRequest(f"revisions[{index}] must be an object")
        if not isinstance(body.get("order_id"), str) or not body["order_id"]:
            raise _BadRequest(f"revisions[{index}].order_id must be a non-empty string")
        revision = body.get("revision")
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
            raise _BadRequest(f"revisions[{index}].revision must be an integer >= 1")
    for index, body in enumerate(telemetry):
        if not isinstance(body, dict) or not isinstance(body.get("device"), str) \
                or isinstance(body.get("interval"), bool) or not isinstance(body.get("interval"), int):
            raise _BadRequest(f"telemetry[{index}] must have a string 'device' and an integer 'interval'")
    return gateway, revisions, telemetry


def orders_page(orders: list[dict]) -> bytes:
    """The HTML page: orders grouped by grid, then by state, newest first."""
    by_grid: dict[str, list[dict]] = {}
    for order in orders:
        by_grid.setdefault(order.get("grid", "?"), []).append(order)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Work orders</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1.5em}"
        "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}th{background:#eee}"
        ".critical{color:#b00;font-weight:bold}.major{color:#c60}</style></head><body>",
        f"<h1>Work orders</h1><p>{len(orders)} order(s) from the street gateways.</p>",
    ]
    for grid in sorted(by_grid):
        rows = sorted(by_grid[grid], key=lambda o: (o.get("platform_state") or o.get("state", ""), o.get("opened_at", "")))
        parts.append(f"<h2>Grid {html.escape(grid)}</h2><table><tr><th>state</th><th>platform</th><th>severity</th>"
                     "<th>title</th><th>device</th><th>rule</th><th>opened</th><th>revision</th><th>order</th></tr>")
        for o in rows:
            severity = html.escape(str(o.get("severity", "")))
            parts.append(
                "<tr>" + "".join(f"<td>{cell}</td>" for cell in (
                    html.escape(str(o.get("state", ""))), html.escape(str(o.get("platform_state") or "")),
                    f"<span class='{severity}'>{severity}</span>", html.escape(str(o.get("title", ""))),
                    html.escape(str(o.get("device", ""))), html.escape(str(o.get("rule", ""))),
                    html.escape(str(o.get("opened_at", ""))), html.escape(str(o.get("revision", ""))),
                    html.escape(str(o.get("order_id", ""))))) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts).encode()


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
        url = urlparse(self.path)
        path, query = url.path, parse_qs(url.query)
        store = self.server.store
        if path == "/healthz":
            self._send(HTTPStatus.OK, b"ok\n", "text/plain")
            return
        if path == "/openapi.json":
            self._send(HTTPStatus.OK, OPENAPI)
            return
        if path == "/":
            self._send(HTTPStatus.OK, orders_page(store.orders()), "text/html; charset=utf-8")
            return
        if not self._authorised():
            return
        if path == "/api/v1/orders":
            orders = store.orders()
            for key in ("state", "grid"):
                if key in query:
                    orders = [o for o in orders if o.get(key) == query[key][0]]
            self._send(HTTPStatus.OK, {"orders": orders})
        elif path == "/api/v1/revisions":
            self._send(HTTPStatus.OK, {"revisions": store.revisions()})
        elif path == "/api/v1/telemetry":
            self._send(HTTPStatus.OK, {"telemetry": store.telemetry()})
        elif path == "/api/v1/stats":
            self._send(HTTPStatus.OK, store.stats())
        elif match := re.fullmatch(r"/api/v1/gateways/([^/]+)/changes", path):
            try:
                after = int(query.get("after", ["0"])[0])
            except ValueError:
                self._send(HTTPStatus.BAD_REQUEST, {"error": "'after' must be an integer"})
                return
            self._send(HTTPStatus.OK, {"changes": store.changes(match.group(1), after)})
        else:
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no such resource: {path}"})

    def do_PUT(self) -> None:  # noqa: N802 - stdlib name
        path = urlparse(self.path).path
        if not self._authorised():
            return
        match = re.fullmatch(r"/api/v1/gateways/([^/]+)/rules/([A-Za-z0-9_.-]+\.ya?ml)", path)
        if match is None:
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no such resource: {path} (PUT /api/v1/gateways/GW/rules/NAME.yaml)"})
            return
        length = int(self.headers.get("Content-Length", "0") or 0)
        if length > 1024 * 1024:
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "a rule file is at most 1 MiB"})
            return
        try:
            content = self.rfile.read(length).decode("utf-8")
        except UnicodeDecodeError:
            self._send(HTTPStatus.BAD_REQUEST, {"error": "a rule file must be UTF-8 text"})
            return
        change = self.server.store.add_rule_file(match.group(1), match.group(2), content)
        if self.server.on_change is not None:
            self.server.on_change(change["gateway"], change)
        self._send(HTTPStatus.OK, {"seq": change["seq"], "file": change["file"]})

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        path = urlparse(self.path).path
        if not self._authorised():
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body must be 0..{MAX_BODY} bytes"})
            return
        raw = self.rfile.read(length)
        if match := re.fullmatch(r"/api/v1/orders/([^/]+)/([a-z]+)", path):
            order_id, action = match.groups()
            if action not in ACTIONS:
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no action {action!r}; actions: {', '.join(sorted(ACTIONS))}"})
                return
            note = ""
            if raw:
                try:
                    note = str(orjson.loads(raw).get("note", ""))
                except (orjson.JSONDecodeError, AttributeError):
                    self._send(HTTPStatus.BAD_REQUEST, {"error": "body must be a JSON object like {\"note\": \"...\"}"})
                    return
            change = self.server.store.add_change(order_id, ACTIONS[action], note)
            if change is None:
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no order {order_id!r}"})
            else:
                if self.server.on_change is not None:
                    self.server.on_change(change["gateway"], change)
                self._send(HTTPStatus.OK, change)
            return
        if path != "/api/v1/uplink":
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no such resource: {path}"})
            return
        try:
            gateway, revisions, telemetry = _validate(orjson.loads(raw))
        except orjson.JSONDecodeError as error:
            self._send(HTTPStatus.BAD_REQUEST, {"error": f"not JSON: {error}"})
            return
        except _BadRequest as error:
            self._send(HTTPStatus.BAD_REQUEST, {"error": str(error)})
            return
        acknowledged, summaries, duplicates = self.server.store.add(gateway, revisions, telemetry)
        self._send(HTTPStatus.OK, {"acknowledged": acknowledged, "telemetry_acknowledged": summaries,
                                   "duplicates": duplicates})


class ReceiverServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, store: ReceiverStore, token: str = "",
                 tls_cert: str | None = None, tls_key: str | None = None):
        super().__init__((host, port), _Handler)
        self.store = store
        self.token = token
        self.scheme = "http"
        if tls_cert:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls_cert, tls_key)
            self.socket = context.wrap_socket(self.socket, server_side=True)
            self.scheme = "https"
        self.on_change = None  # called with (gateway, change) when the platform decides; the MQTT side sets it

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"{self.scheme}://{host}:{port}"

    def start_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="receiver", daemon=True)
        thread.start()
        return thread
