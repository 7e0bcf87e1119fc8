"""The agent's local HTTP port: ``/metrics`` (Prometheus), ``/`` (status page),
``/status.json`` (what ``edge status`` reads) and ``/healthz``.

``/healthz`` answers 200 ``ready`` only while the agent takes messages and every part of it
is ok (``agent.health``); otherwise 503 with one line per problem (``starting``, or
``<part> <state>: <what>``), so systemd, a load balancer or a person sees what is wrong.

Read-only, no secrets in any answer; it listens on loopback by default ([status] listen).
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the standard library's 5 makes a burst of connections wait on the kernel's retries
    daemon_threads = True
from typing import TYPE_CHECKING
from urllib.parse import unquote

import orjson

from edge.redact import redact_text
from edge.status import page, prometheus
from edge.status.snapshot import order_detail, snapshot

if TYPE_CHECKING:
    from edge.agent import Agent

log = logging.getLogger(__name__)


class StatusServer:
    def __init__(self, agent: "Agent", host: str, port: int):
        self.agent = agent
        handler = type("Handler", (_Handler,), {"status": self})
        self.httpd = _Server((host, port), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="status", daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self) -> None:
        self.thread.start()
        host, port = self.httpd.server_address[:2]
        log.info("status page on http://%s:%d/ (metrics at /metrics)", host, port)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def healthz(self) -> tuple[bool, str]:
        """(healthy, the answer's text): ready and every part ok, or what is not."""
        agent = self.agent
        problems = [] if agent.ready.is_set() else ["starting"]
        health = getattr(agent, "health", None)
        if health is not None and not health.healthy():
            problems += [redact_text(p) for p in health.problems()]
        if problems:
            return False, "".join(f"{p}\n" for p in problems)
        return True, "ready\n"

    def snapshot(self) -> dict:
        agent = self.agent
        return snapshot(agent.config.database_path, agent.config.gateway.id, agent)


class _Handler(BaseHTTPRequestHandler):
    status: StatusServer
    server_version = "edge-status"
    timeout = 10  # seconds a connection may sit idle: a stuck client does not hold a thread for ever

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        try:
            if path == "/healthz":
                healthy, text = self.status.healthz()
                self._send(200 if healthy else 503, "text/plain; charset=utf-8", text.encode())
            elif path == "/metrics":
                self._send(200, prometheus.CONTENT_TYPE, prometheus.render(self.status.snapshot()).encode())
            elif path == "/status.json":
                self._send(200, "application/json", orjson.dumps(self.status.snapshot()))
            elif path in ("/", "/index.html"):
                self._send(200, "text/html; charset=utf-8", page.render(self.status.snapshot()).encode())
            elif path.startswith("/orders/"):
                order = order_detail(self.status.agent.config.database_path, unquote(path[len("/orders/"):]))
                self._send(200 if order is not None else 404, "text/html; charset=utf-8",
                           page.render_order(order, unquote(path[len("/orders/"):])).encode())
            else:
                self._send(404, "text/plain", b"not found: try /, /orders/ID, /metrics, /status.json, /healthz\n")
        except Exception:  # a broken page must never take the agent down
            log.exception("status page failed for %s", path)
            self._send(500, "text/plain", b"internal error; see the gateway log\n")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # requests are not worth a log line each
        log.debug("status %s", format % args)
