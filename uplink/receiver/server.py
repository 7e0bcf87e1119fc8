"""The receiver served by uvicorn (h11), in a thread of its own: for ``python -m uplink.receiver`` and tests."""

from __future__ import annotations

import ipaddress
import socket
import threading

import uvicorn

from uplink.receiver.app import create_app
from uplink.receiver.gateway_tokens import GatewayTokens
from uplink.receiver.limits import Guard, Limits, guarded_h11
from uplink.receiver.store import ReceiverStore


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class ReceiverServer:
    """The API on ``host:port`` (0: a free port; see ``url``), bound at once, served from ``start_background()``."""

    def __init__(self, host: str, port: int, store: ReceiverStore, token: str = "",
                 tls_cert: str | None = None, tls_key: str | None = None, limits: Limits = Limits(), access_log: bool = False,
                 sock: socket.socket | None = None):
        self.store = store
        self.token = token
        self.limits = limits
        self.on_change = None  # called with (gateway, change) when the platform decides; the MQTT side sets it
        self.app = create_app(store, token, limits, on_change=self._tell)
        self.socket = sock if sock is not None else listen(host, port)
        self.scheme = "https" if tls_cert else "http"
        self.config = uvicorn.Config(
            Guard(self.app, token, limits.body_timeout, store.refuse, GatewayTokens(store), limits.max_uplinks),
            interface="asgi3",
            lifespan="off",
            http=guarded_h11(limits.head_timeout, store.refuse), ws="none",
            limit_concurrency=limits.max_connections, timeout_keep_alive=limits.keep_alive,
            timeout_graceful_shutdown=5, h11_max_incomplete_event_size=16 * 1024,
            proxy_headers=False, server_header=False, log_config=None, access_log=access_log,
            ssl_certfile=tls_cert, ssl_keyfile=tls_key,
        )
        try:
            self.config.load()  # a bad certificate or key fails here, not in the server's thread
        except BaseException:
            self.socket.close()
            raise
        self.server = uvicorn.Server(self.config)
        self.thread: threading.Thread | None = None

    def _tell(self, gateway: str, change: dict) -> None:
        if self.on_change is not None:
            self.on_change(gateway, change)

    @property
    def url(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"{self.scheme}://[{host}]:{port}" if ":" in host else f"{self.scheme}://{host}:{port}"

    def start_background(self) -> threading.Thread:
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, name="receiver",
                                       daemon=True)
        self.thread.start()
        return self.thread

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop taking connections, let requests in progress finish (up to 5 s), and return."""
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)
        self.socket.close()

    server_close = shutdown
