"""The receiver's HTTP API (FastAPI): the contract of docs/uplink.md, described at ``/openapi.json``.

Every refusal is an answer (4xx with ``{"error": "..."}``) and a count in ``/api/v1/stats``
(``refused``, by reason), never a dropped connection or a dead server. With a token set,
everything but ``/openapi.json`` and ``/healthz`` needs it: ``Authorization: Bearer TOKEN``,
or for the HTML page ``/?token=TOKEN`` once (it then sets a cookie).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, FastAPI, Path, Query, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from uplink.receiver.limits import Limits, refusal, token_matches
from uplink.receiver.models import (
    MAX_INTEGER,
    ChangesAnswer,
    Decision,
    DecisionRecorded,
    OrdersAnswer,
    Problem,
    QualityAnswer,
    ReportsAnswer,
    RevisionsAnswer,
    RuleFileQueued,
    Stats,
    TelemetryAnswer,
    UplinkAnswer,
    UplinkBatch,
)
from uplink.receiver.page import SECURITY_HEADERS, login_page, order_page, orders_page
from uplink.receiver.store import DatabaseUnavailable, ReceiverStore, UnstorableItem

log = logging.getLogger(__name__)
ACTIONS = {"accept": "accepted", "dispatch": "dispatched", "resolve": "resolved", "close": "closed", "reject": "rejected"}
RULE_FILE_NAME = r"^[A-Za-z0-9_.-]+\.ya?ml$"
COOKIE = "receiver_page"
Action = Enum("Action", {name: name for name in ACTIONS}, type=str)

# What each field must be, said in the answer when it is not (the checks are the models').
MUST = {
    "gateway": "must be a non-empty string (at most 1024 characters)",
    "order_id": "must be a non-empty string (at most 1024 characters)",
    "device": "must be a non-empty string (at most 1024 characters)",
    "revision": f"must be an integer from 1 to {MAX_INTEGER}",
    "seq": f"must be an integer from 1 to {MAX_INTEGER}",
    "interval": f"must be an integer from {-MAX_INTEGER - 1} to {MAX_INTEGER}",
    "type": "must be a string", "status": "must be a string", "reason": "must be a string",
    "detail": "must be a string", "file": "must be a string", "at": "must be a string",
    "revisions": "must be a list", "telemetry": "must be a list", "reports": "must be a list",
    "after": f"must be an integer from 0 to {MAX_INTEGER}",
    "limit": "must be an integer from 1 to 5000",
    "name": "must be a file name like bins.yaml (letters, digits, _ . -, ending in .yaml or .yml)",
    "action": f"must be one of {', '.join(sorted(ACTIONS))}",
    "note": "must be a string of at most 4096 characters",
}
BODY_SHAPE = "the body must be a JSON object sent with Content-Type: application/json"


class Refused(HTTPException):
    """A request refused for a reason counted in /api/v1/stats."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(status, message)
        self.reason = reason


class _OrjsonRequest(Request):
    """JSON parsed by orjson: NaN, Infinity and nesting deeper than 1024 are not JSON and are refused."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = orjson.loads(await self.body())
        return self._json


class _OrjsonRoute(APIRoute):
    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(_OrjsonRequest(request.scope, request.receive))

        return route


def _where(loc: tuple) -> str:
    text = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path") else loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def describe(errors: list[dict]) -> tuple[str, str, list[dict]]:
    """(reason, message, detail) for a request that failed its checks."""
    if any(e["type"] == "json_invalid" for e in errors):
        error = next(e for e in errors if e["type"] == "json_invalid")
        return "not_json", f"not JSON: {error.get('ctx', {}).get('error', 'decode error')} (at byte {error['loc'][-1]})", []
    parts, detail = [], []
    for error in errors:
        where = _where(tuple(error["loc"]))
        last = next((p for p in reversed(error["loc"]) if isinstance(p, str)), "")
        if tuple(error["loc"]) == ("body",):
            parts.append(f"{BODY_SHAPE} ({error['msg']})")
        elif isinstance(error["loc"][-1], int):
            parts.append(f"{where} must be a JSON object ({error['msg']})")
        else:
            parts.append(f"{where} {MUST.get(last, 'is invalid')} ({error['msg']})")
        detail.append({"loc": list(error["loc"]), "msg": error["msg"]})
    in_body = all(e["loc"][0] == "body" for e in errors)
    return ("invalid_body" if in_body else "invalid_parameter"), "; ".join(parts[:5]), detail[:20]


def create_app(store: ReceiverStore, token: str = "", limits: Limits = Limits(),
               on_change: Callable[[str, dict], None] | None = None) -> FastAPI:
    """The API over ``store``; ``on_change(gateway, change)`` is told each decision and rule file (MQTT)."""
    app = FastAPI(
        title="Reference central platform", version="1",
        description="Receives work-order revisions, telemetry summaries and reports from street gateways; "
                    "sends back decisions and rule files (docs/uplink.md).",
        docs_url=None, redoc_url=None, openapi_url="/openapi.json",  # no CDN-hosted pages
        max_body_size=limits.max_body,
    )
    bearer = HTTPBearer(auto_error=False, description="The receiver's --token (checked before the body is read).")
    api = APIRouter(prefix="/api/v1", route_class=_OrjsonRoute, dependencies=[Security(bearer)],
                    responses={400: {"model": Problem}, 401: {"model": Problem}, 403: {"model": Problem}, 413: {"model": Problem},
                               503: {"model": Problem}})
    cookie_value = hmac.new(token.encode(), b"receiver page", hashlib.sha256).hexdigest() if token else ""

    def tell(change: dict) -> None:
        if on_change is None:
            return
        try:
            on_change(change["gateway"], change)
        except Exception:  # the change is stored: the gateway also finds it in the changes feed
            log.exception("could not pass change %s to gateway %s over MQTT", change["seq"], change["gateway"])

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> Response:
        reason, message, detail = describe(list(error.errors()))
        if reason == "invalid_body" and request.url.path == "/api/v1/uplink":
            reason = "invalid_batch"
        store.refuse(reason)
        return refusal(400, message, **({"detail": detail} if detail else {}))

    @app.exception_handler(UnstorableItem)
    async def unstorable(request: Request, error: UnstorableItem) -> Response:
        store.refuse("invalid_batch")
        return refusal(400, f"{error}: nothing of this batch was stored")

    @app.exception_handler(DatabaseUnavailable)
    async def unavailable(request: Request, error: DatabaseUnavailable) -> Response:
        store.refuse("database_unavailable")
        log.warning("database unavailable: %s", error)
        return refusal(503, "the platform's database is not answering; nothing of this request was stored, "
                            "send it again later", headers={"Retry-After": "2"})

    @app.exception_handler(HTTPException)
    async def refused(request: Request, error: HTTPException) -> Response:
        reason = getattr(error, "reason", None) or {
            404: "not_found", 405: "method_not_allowed", 408: "body_timeout", 413: "body_too_large",
        }.get(error.status_code, f"http_{error.status_code}")
        message = str(error.detail)
        if error.status_code == 404 and not isinstance(error, Refused):
            message = f"no such resource: {request.method} {request.url.path} (the API is described at /openapi.json)"
        elif error.status_code == 413:
            limit = limits.rule_file_max if "/rules/" in request.url.path else limits.max_body
            message = f"the body is larger than {limit} bytes"
        elif error.status_code == 400 and isinstance(error.__cause__, ClientDisconnect):
            return refusal(400, "the client went away before its body was read")  # no one to answer, nothing to count
        elif error.status_code == 400 and not isinstance(error, Refused):
            reason, message = "not_json", f"the body cannot be read as JSON ({message})"
        if error.status_code != 413:  # counted by the Guard, which sees Starlette's own 413 answers too
            store.refuse(reason)
        return refusal(error.status_code, message, headers=dict(error.headers or {}))

    @api.post("/uplink", response_model=UplinkAnswer, summary="A gateway's batch of order revisions, telemetry and reports")
    def uplink(request: Request, batch: UplinkBatch) -> dict:
        """Each item is acknowledged when stored, or when the platform already had it (a duplicate by
        (order id, revision), (device, interval) or (gateway, report seq): dropped and counted).
        A batch with any invalid item is refused whole (400) and nothing of it is stored.
        A gateway's own token sends only that gateway's batches (403)."""
        own = getattr(request.state, "gateway", None)
        if own is not None and batch.gateway != own:
            raise Refused(403, "forbidden", f"this token is gateway {own!r}'s, the batch says gateway {batch.gateway!r}")
        stored = store.add(batch.gateway, [r.body() for r in batch.revisions], [t.body() for t in batch.telemetry],
                           [r.body() for r in batch.reports], batch.health.body() if batch.health else None)
        return {"acknowledged": stored.acknowledged, "telemetry_acknowledged": stored.telemetry_acknowledged,
                "reports_acknowledged": stored.reports_acknowledged, "duplicates": stored.duplicates}

    @api.get("/orders", response_model=OrdersAnswer, summary="The latest revision of every order")
    def orders(state: str | None = None, grid: str | None = None) -> dict:
        found = store.orders()
        if state is not None:
            found = [o for o in found if o.get("state") == state]
        if grid is not None:
            found = [o for o in found if o.get("grid") == grid]
        return {"orders": found}

    @api.get("/revisions", response_model=RevisionsAnswer, summary="Every revision received")
    def revisions() -> dict:
        return {"revisions": store.revisions()}

    @api.get("/telemetry", response_model=TelemetryAnswer, summary="Every telemetry summary received")
    def telemetry() -> dict:
        return {"telemetry": store.telemetry()}

    @api.get("/stats", response_model=Stats, summary="Counts of what was received, dropped as duplicate and refused")
    def stats() -> dict:
        return store.stats()

    @api.get("/quality", response_model=QualityAnswer,
             summary="Fixed means fixed: resolutions the sensors confirmed, found not fixed or could not check, "
                     "and how often a fixed problem came back; overall and by grid, team and category")
    def quality() -> dict:
        return store.quality()

    @api.get("/gateways/{gateway}/changes", response_model=ChangesAnswer,
             summary="Decisions and rule files for a gateway after change number `after`, oldest first")
    def changes(gateway: str, after: Annotated[int, Query(ge=0, le=MAX_INTEGER)] = 0) -> dict:
        return {"changes": store.changes(gateway, after)}

    @api.get("/gateways/{gateway}/reports", response_model=ReportsAnswer,
             summary="What a gateway did with the changes it was sent (applied or refused, and why)")
    def reports(gateway: str, limit: Annotated[int, Query(ge=1, le=5000)] = 500,
                status: Annotated[str | None, Query(max_length=64)] = None) -> dict:
        return {"reports": store.reports(gateway, limit, status)}

    @api.put("/gateways/{gateway}/rules/{name}", response_model=RuleFileQueued, max_body_size=limits.rule_file_max,
             summary="A new rule file for a gateway (YAML body); the gateway validates it before applying it",
             openapi_extra={"requestBody": {"required": True, "content": {"application/yaml": {"schema": {"type": "string"}}}}})
    async def rule_file(request: Request, gateway: str, name: Annotated[str, Path(pattern=RULE_FILE_NAME)]) -> dict:
        try:
            content = (await request.body()).decode("utf-8")
        except UnicodeDecodeError as error:
            raise Refused(400, "rule_file_not_utf8", f"a rule file must be UTF-8 text ({error})") from None
        change = await run_in_threadpool(store.add_rule_file, gateway, name, content)
        tell(change)
        return {"seq": change["seq"], "file": change["file"]}

    @api.post("/orders/{order_id}/{action}", response_model=DecisionRecorded, responses={404: {"model": Problem}},
              summary="The platform's decision on an order; its gateway fetches it from /changes")
    def decide(order_id: str, action: Action, decision: Decision | None = None) -> dict:
        change = store.add_change(order_id, ACTIONS[action.value], decision.note if decision else "")
        if change is None:
            raise Refused(404, "unknown_order", f"no order {order_id!r}")
        tell(change)
        return change

    from uplink.receiver.console import mount  # the command centre's console (/console/)
    mount(app, store, tell)
    app.include_router(api)
    generate_openapi = app.openapi

    def openapi() -> dict:
        """FastAPI's document, without the 422 answers it adds: this API answers 400 (Problem)."""
        if app.openapi_schema is None:
            document = generate_openapi()
            for operations in document["paths"].values():
                for operation in operations.values():
                    if operation.get("responses", {}).pop("422", None) is not None:
                        operation["responses"].setdefault("400", {"description": "Refused: what was wrong",
                                                                  "content": {"application/json": {"schema": {
                                                                      "$ref": "#/components/schemas/Problem"}}}})
            for name in ("HTTPValidationError", "ValidationError"):
                document.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/healthz", response_class=PlainTextResponse, summary="Liveness (no token needed)")
    def healthz() -> str:
        return "ok\n"

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page(request: Request, token_given: Annotated[str | None, Query(alias="token")] = None) -> Response:
        if token and token_given is not None:
            if not token_matches(token_given, token):
                store.refuse("unauthorized")
                return HTMLResponse(login_page(wrong=True), 401, headers=SECURITY_HEADERS)
            answer = RedirectResponse("/", 303)  # the token leaves the address bar and the history
            answer.set_cookie(COOKIE, cookie_value, httponly=True, samesite="strict", path="/",
                              secure=request.url.scheme == "https")
            return answer
        refused = page_refused(request)
        if refused is not None:
            return refused
        body = orders_page(store.orders(), store.reports(limit=100), store.quality())
        return HTMLResponse(body, headers=SECURITY_HEADERS)

    @app.get("/orders/{order_id}", response_class=HTMLResponse, include_in_schema=False)
    def order(request: Request, order_id: str) -> Response:
        refused = page_refused(request)
        if refused is not None:
            return refused
        revisions = store.order_revisions(order_id)
        if not revisions:
            store.refuse("not_found")
            return HTMLResponse(order_page(order_id, []), 404, headers=SECURITY_HEADERS)
        return HTMLResponse(order_page(order_id, revisions), headers=SECURITY_HEADERS)

    def page_refused(request: Request) -> Response | None:
        """The login page (401) when a token is set and the request has neither it nor the page's cookie."""
        if not token:
            return None
        header = request.headers.get("authorization", "")
        if token_matches(header, f"Bearer {token}") or token_matches(request.cookies.get(COOKIE, ""), cookie_value):
            return None
        store.refuse("unauthorized")
        return HTMLResponse(login_page(wrong=False), 401, headers=SECURITY_HEADERS)

    return app
