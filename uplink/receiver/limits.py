"""What bounds the receiver's HTTP side, around uvicorn's h11 parser and FastAPI.

uvicorn (h11) parses HTTP: a malformed request line or header (``Content-Length: -1`` or
``abc``, conflicting lengths, a head over 16 KiB) gets 400 and the connection is closed;
an unread body is skipped by its length, never parsed as the next request.
FastAPI/Starlette bound each body (``max_body_size``: 413). What neither does, this module
adds: a deadline for each request's head (a connection that sends nothing, or its headers a
byte at a time, is closed), a deadline for each read of a body (408), the bearer token
checked before any body is read, and a count of everything refused.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from dataclasses import dataclass

import h11
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

OPEN_PATHS = frozenset({"/openapi.json", "/healthz"})  # served without the token
PAGE_PATH = "/"  # checks the token itself: header, ?token= or cookie
CONSOLE = "/console"  # the console's pages: their own login (console/auth.py)


@dataclass(frozen=True)
class Limits:
    max_body: int = 64 * 1024 * 1024  # bytes of an uplink batch (a gateway's batch_size of 10,000 fits)
    rule_file_max: int = 1024 * 1024  # bytes of a pushed rule file
    max_connections: int = 1000  # open connections and requests in progress; beyond, 503
    max_uplinks: int = 256  # uplink batches in progress in one worker; beyond, 503 with Retry-After (the gateway backs off)
    keep_alive: int = 5  # s an idle keep-alive connection stays open after a response
    head_timeout: float = 15.0  # s from connecting (or the last response) to a complete request head
    body_timeout: float = 15.0  # s the server waits for each piece of a body


def token_matches(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode())


def guarded_h11(head_timeout: float, refuse: Callable[[str], None]) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline for each request head, counting what it refuses."""

    class GuardedH11(H11Protocol):
        _head_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_deadline()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # a request head has arrived
                self._disarm_head_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm_head_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_deadline()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            refuse("malformed_http")
            super().send_400_response(msg)

        def _arm_head_deadline(self) -> None:
            self._disarm_head_deadline()
            self._head_deadline = self.loop.call_later(head_timeout, self._head_too_late)

        def _disarm_head_deadline(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None

        def _head_too_late(self) -> None:
            self._head_deadline = None
            busy = self.cycle is not None and not self.cycle.response_complete
            if self.transport.is_closing() or busy or self.conn.their_state is not h11.IDLE:
                return
            if self.conn.trailing_data[0]:  # part of a head, never completed
                refuse("slow_request_head")
            self.transport.close()

    return GuardedH11


def refusal(status: int, message: str, **extra) -> JSONResponse:
    """An error answer; the connection is closed after it, so an unread body is never read as a request."""
    headers = {"Connection": "close", **extra.pop("headers", {})}
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


class Guard:
    """Outermost ASGI layer: the token for everything but OPEN_PATHS and the page (which asks for
    it itself), checked before the body is read; a deadline for each read of the body; every
    error answer closes its connection (what is left of a refused body is never read)."""

    def __init__(self, app: ASGIApp, token: str, body_timeout: float, refuse: Callable[[str], None], tokens=None,
                 max_uplinks: int = Limits.max_uplinks):
        self.app, self.token, self.body_timeout, self.refuse = app, token, body_timeout, refuse
        self.tokens = tokens  # GatewayTokens: each gateway's own token, for its uplink and changes only
        self.max_uplinks = max_uplinks
        self.uplinks = 0  # in progress (counted in the event loop's thread only)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        guarded = path not in OPEN_PATHS and path != PAGE_PATH and not path.startswith(CONSOLE)
        if guarded and (self.token or (self.tokens is not None and self.tokens.enabled())):
            refused = self._refused(scope)
            if refused is not None:
                await refused(scope, receive, send)
                return

        uplink = path == "/api/v1/uplink"
        if uplink and self.uplinks >= self.max_uplinks:
            # Busy: an answer at once, so the gateway backs off, rather than a queue that outlasts its timeout.
            self.refuse("busy")
            response = refusal(503, f"the platform is storing {self.uplinks} batches already; send this one again "
                                    "in a moment", headers={"Retry-After": "1"})
            await response(scope, receive, send)
            return

        async def receive_in_time() -> Message:
            try:
                return await asyncio.wait_for(receive(), self.body_timeout)
            except TimeoutError:
                raise HTTPException(408, f"no part of the body came for {self.body_timeout:g} s") from None

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                if message["status"] == 413:  # answered by Starlette's body limit, before any handler
                    self.refuse("body_too_large")
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        if not uplink:
            await self.app(scope, receive_in_time, send_closing)
            return
        self.uplinks += 1
        try:
            await self.app(scope, receive_in_time, send_closing)
        finally:
            self.uplinks -= 1

    def _refused(self, scope: Scope) -> JSONResponse | None:
        """None when the bearer token opens this path (a gateway's token: noted in scope["state"]["gateway"])."""
        given = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"authorization"), "")
        if self.token and token_matches(given, f"Bearer {self.token}"):
            return None
        gateway = None
        if self.tokens is not None and given.startswith("Bearer "):
            gateway = self.tokens.gateway_for(given[len("Bearer "):])
        if gateway is None:
            self.refuse("unauthorized")
            return refusal(401, "missing or wrong bearer token: send Authorization: Bearer TOKEN",
                           headers={"WWW-Authenticate": "Bearer"})
        path = scope["path"]
        if path == "/api/v1/uplink" or path == f"/api/v1/gateways/{gateway}/changes":
            scope.setdefault("state", {})["gateway"] = gateway
            return None
        self.refuse("forbidden")
        return refusal(403, f"this token is gateway {gateway!r}'s: it opens only POST /api/v1/uplink for that gateway "
                            f"and GET /api/v1/gateways/{gateway}/changes")
