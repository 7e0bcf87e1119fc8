"""The console's pages and forms (FastAPI routes, Jinja2 templates with autoescape).

Every page needs a session (else the login page); a form that changes something needs the
session's CSRF token and the role for it (else 403 with a page that says why). Pages are plain
HTML that work without JavaScript; htmx (static/vendor) polls the fragments named ``*.part``.
Served with a Content-Security-Policy that allows scripts and styles from the console only.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from uplink.receiver.console import auth, district, fleet, numbers, orders
from uplink.receiver.times import epoch

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "console_session"
LOGIN_COOKIE = "console_login"  # the login form's CSRF secret (before there is a session)
FORM_MAX = 2 * 1024 * 1024  # bytes of a form (a rule file is at most 256 KiB; its text, url-encoded, fits)
POLL_SECONDS = 5
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
ACTION_ROLE = "dispatcher"
HTMX = next((p.name for p in (HERE / "static" / "vendor").glob("htmx-*.min.js")), "")


class LoginRequired(Exception):
    pass


class Forbidden(Exception):
    def __init__(self, user: auth.User, need: str, what: str):
        super().__init__(what)
        self.user, self.need, self.what = user, need, what


class CsrfRefused(Exception):
    pass


# -- formatting for the templates -----------------------------------------------------------

def _utc(seconds) -> str:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "—"
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _iso(text) -> str:
    """A device's or gateway's ISO time as the console writes times (UTC), or the text as sent."""
    if not isinstance(text, str) or not text:
        return "—"
    seconds = epoch(text)
    return text if seconds is None else _utc(seconds)


def _duration(seconds) -> str:
    """``42 s``, ``4 min 10 s``, ``2 h 05 min``, ``1 d 3 h`` (a zero last part left out)."""
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "—"
    s = abs(seconds)
    sign = "-" if seconds < 0 else ""
    if s < 60:
        return f"{sign}{s:.0f} s" if s >= 10 or s == int(s) else f"{sign}{s:.1f} s"
    for unit, name, small, small_name, width in ((86400, "d", 3600, "h", 1), (3600, "h", 60, "min", 2),
                                                 (60, "min", 1, "s", 2)):
        if s >= unit:
            big, rest = int(s // unit), int(s % unit // small)
            return f"{sign}{big} {name}" + (f" {rest:0{width}d} {small_name}" if rest else "")
    return "—"


def _ago(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "—"
    return _duration(max(time.time() - seconds, 0)) + " ago"


def _share(value) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _skew(value) -> str:
    if value is None:
        return "—"
    return ("+" if value >= 0 else "−") + _duration(abs(value))


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(utc=_utc, iso=_iso, duration=_duration, ago=_ago, share=_share, skew=_skew,
                       q=lambda value: quote(str(value), safe=""))
    env.globals.update(htmx=HTMX, poll=POLL_SECONDS, severity_colours=district.SEVERITY_COLOURS,
                       state_shapes=district.STATE_SHAPES, roles=auth.ROLES)
    return env


# -- the routes -----------------------------------------------------------------------------

def mount(app: FastAPI, store, tell: Callable[[dict], None] | None = None, categories: str | Path | None = None,
          registry: str | Path | None = None) -> None:
    """Add the console (``/console/...``) and its static files to ``app``.

    ``tell(change)`` is given every decision and rule file the console stores (the receiver's
    MQTT side passes it on; the gateways also fetch it from their changes feed). ``categories``
    (default ``$RECEIVER_CATEGORIES``, else config/categories.csv) gives the limits of the
    numbers page; ``registry`` (default ``$RECEIVER_REGISTRY``, else none) more devices for the map.
    """
    env = environment()
    limits = numbers.load_limits(categories)
    devices = district.Registry(registry)
    router = APIRouter(prefix="/console", include_in_schema=False)

    def render(request: Request, template: str, status: int = 200, user: auth.User | None = None,
               **context) -> HTMLResponse:
        body = env.get_template(template).render(request=request, user=user, path=request.url.path, **context)
        return HTMLResponse(body, status, headers=HEADERS)

    def passed_on(change: dict) -> None:
        if tell is None:
            return
        try:
            tell(change)
        except Exception:  # stored: the gateway also finds it in its changes feed
            log.exception("could not pass change %s to gateway %s", change.get("seq"), change.get("gateway"))

    def session_user(request: Request) -> auth.User:
        user = auth.find_session(store, request.cookies.get(SESSION_COOKIE))
        if user is None:
            raise LoginRequired()
        return user

    def need(role: str, what: str) -> Callable[[Request], auth.User]:
        def check(request: Request) -> auth.User:
            user = session_user(request)
            if not user.may(role):
                raise Forbidden(user, role, what)
            return user

        return check

    viewer = need("viewer", "read the console")

    async def form(request: Request, user: auth.User | None) -> dict[str, str]:
        """The posted form (url-encoded), after its CSRF token is checked."""
        body = await request.body()
        if len(body) > FORM_MAX:
            raise CsrfRefused()
        try:
            fields = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50))
        except (UnicodeDecodeError, ValueError):
            raise CsrfRefused() from None
        expected = user.csrf if user is not None else auth.csrf_token(request.cookies.get(LOGIN_COOKIE) or "")
        if not request.cookies.get(LOGIN_COOKIE if user is None else SESSION_COOKIE) or \
                not auth.csrf_matches(fields.get("csrf"), expected):
            raise CsrfRefused()
        return fields

    # -- errors as pages --

    async def login_required(request: Request, error: LoginRequired) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        address = "/console/login?" + urlencode({"next": target})
        if request.headers.get("hx-request"):  # a fragment's poll: the whole page goes to the login
            return Response(status_code=401, headers={**HEADERS, "HX-Redirect": address})
        return RedirectResponse(address, 303, headers=HEADERS)

    async def forbidden(request: Request, error: Forbidden) -> Response:
        return render(request, "forbidden.html", 403, user=error.user, need=error.need, what=error.what,
                      title="Not allowed")

    async def csrf_refused(request: Request, error: CsrfRefused) -> Response:
        user = auth.find_session(store, request.cookies.get(SESSION_COOKIE))
        return render(request, "forbidden.html", 403, user=user, need="", title="Form refused",
                      what="send this form: it was not sent from a page of this console, or the page is older "
                           "than your session. Go back, reload the page and try again")

    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(Forbidden, forbidden)
    app.add_exception_handler(CsrfRefused, csrf_refused)

    # -- login --

    def safe_next(target: str | None) -> str:
        target = target or ""
        ok = target.startswith("/console/") and not target.startswith("/console//") and "\\" not in target
        return target if ok and "\n" not in target and "\r" not in target else "/console/"

    @router.get("/login")
    def login_page(request: Request, next: str = "/console/") -> Response:  # noqa: A002 - the address's word
        secret = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
        answer = render(request, "login.html", csrf=auth.csrf_token(secret), next=safe_next(next), wrong=False,
                        title="Log in")
        answer.set_cookie(LOGIN_COOKIE, secret, httponly=True, samesite="strict", path="/console/login",
                          secure=request.url.scheme == "https", max_age=3600)
        return answer

    @router.post("/login")
    async def login(request: Request) -> Response:
        fields = await form(request, None)
        name, password = fields.get("name", "").strip(), fields.get("password", "")
        token = await run_in_threadpool(auth.login, store, name, password)
        if token is None:
            log.warning("console: failed login for %r from %s", name[:64], request.client.host if request.client else "?")
            return render(request, "login.html", 401, csrf=fields["csrf"], next=safe_next(fields.get("next")),
                          wrong=True, name=name, title="Log in")
        answer = RedirectResponse(safe_next(fields.get("next")), 303, headers=HEADERS)
        answer.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", path="/console",
                          secure=request.url.scheme == "https", max_age=auth.SESSION_HOURS * 3600)
        answer.delete_cookie(LOGIN_COOKIE, path="/console/login")
        return answer

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        user = await run_in_threadpool(session_user, request)
        await form(request, user)
        await run_in_threadpool(auth.end_session, store, request.cookies.get(SESSION_COOKIE))
        answer = RedirectResponse("/console/login", 303, headers=HEADERS)
        answer.delete_cookie(SESSION_COOKIE, path="/console")
        return answer

    # -- the district --

    @router.get("/")
    def district_page(request: Request, user: auth.User = Depends(viewer)) -> Response:
        return render(request, "district.html", user=user, d=district.district(store, devices), gateways=fleet.fleet(store),
                      title="District")

    @router.get("/district.part")
    def district_part(request: Request, user: auth.User = Depends(viewer)) -> Response:
        return render(request, "_district.html", user=user, d=district.district(store, devices), gateways=fleet.fleet(store))

    # -- orders --

    def list_context(request: Request) -> dict:
        query = orders.OrderQuery.from_params(request.query_params)
        return {"query": query, "result": orders.order_list(store, query), "choices": orders.choices(store),
                "sorts": orders.SORTS}

    @router.get("/orders")
    def orders_page(request: Request, user: auth.User = Depends(viewer)) -> Response:
        return render(request, "orders.html", user=user, title="Orders", **list_context(request))

    @router.get("/orders.part")
    def orders_part(request: Request, user: auth.User = Depends(viewer)) -> Response:
        return render(request, "_orders_table.html", user=user, **list_context(request))

    @router.get("/orders/{order_id:path}")
    def order_page(request: Request, order_id: str, done: str = "", user: auth.User = Depends(viewer)) -> Response:
        found = orders.load_order(store, order_id)
        if found is None:
            return render(request, "not_found.html", 404, user=user, what=f"order {order_id}", title="No such order")
        teams = [row["team"] for row in store.db.read("SELECT DISTINCT team FROM orders WHERE team IS NOT NULL "
                                                       "AND team <> '' ORDER BY team")]
        return render(request, "order.html", user=user, o=found, teams=teams, done=done, problem="",
                      actions=orders.ACTIONS, title=f"Order {order_id}")

    @router.post("/orders/{order_id:path}")
    async def decide(request: Request, order_id: str) -> Response:
        user = await run_in_threadpool(session_user, request)
        fields = await form(request, user)
        action = fields.get("action", "")
        if not user.may(ACTION_ROLE):
            raise Forbidden(user, ACTION_ROLE, f"{action or 'decide on'} orders")
        found = await run_in_threadpool(orders.load_order, store, order_id)
        if found is None:
            return render(request, "not_found.html", 404, user=user, what=f"order {order_id}", title="No such order")
        note = fields.get("note", "")[:2000]
        problem = None
        if action not in orders.ACTIONS:
            problem = f"there is no action {action!r}"
        elif action not in found["steps"]:
            problem = (f"the order is {found['state']}: it cannot be {orders.ACTIONS[action]} now "
                       f"(possible: {', '.join(found['steps']) or 'nothing, it is final'})")
        elif action == "reject" and not note.strip():
            problem = "a rejection needs its reason"
        if problem is not None:
            teams = [found["row"]["team"]] if found["row"]["team"] else []
            return render(request, "order.html", 409, user=user, o=found, teams=teams, done="", problem=problem,
                          actions=orders.ACTIONS, title=f"Order {order_id}")
        text = orders.decision_note(action, fields.get("team", ""), note)
        change = await run_in_threadpool(store.add_change, order_id, orders.ACTIONS[action], text, user.name)
        if change is not None:
            passed_on(change)
        return RedirectResponse(f"/console/orders/{quote(order_id, safe='')}?done={action}", 303, headers=HEADERS)

    # -- the fleet --

    def fleet_context() -> dict:
        return {"gateways": fleet.fleet(store), "pushes": fleet.pushes(store, 100), "targets": fleet.targets(store),
                "stale_after": fleet.STALE_AFTER, "skew_warn": fleet.SKEW_WARN}

    @router.get("/fleet")
    def fleet_page(request: Request, user: auth.User = Depends(viewer)) -> Response:
        return render(request, "fleet.html", user=user, title="Fleet", problem="", pushed=request.query_params.get("pushed", ""),
                      form={}, **fleet_context())

    @router.get("/fleet.part")
    def fleet_part(request: Request, user: auth.User = Depends(viewer)) -> Response:
        return render(request, "_fleet.html", user=user, **fleet_context())

    @router.post("/fleet/push")
    async def push(request: Request) -> Response:
        user = await run_in_threadpool(session_user, request)
        fields = await form(request, user)
        if not user.may("admin"):
            raise Forbidden(user, "admin", "push rule files to gateways")
        name, content, target = fields.get("file", "").strip(), fields.get("content", ""), fields.get("target", "")
        content = content.replace("\r\n", "\n")  # a browser's textarea sends CRLF

        def queue() -> list[dict]:
            fleet.check_rule_file(name, content)
            return [store.add_rule_file(gateway, name, content, user.name) for gateway in fleet.gateways_for(store, target)]

        try:
            changes = await run_in_threadpool(queue)
        except fleet.PushError as error:
            context = await run_in_threadpool(fleet_context)
            return render(request, "fleet.html", 400, user=user, title="Fleet", problem=str(error), pushed="",
                          form={"file": name, "content": content, "target": target}, **context)
        for change in changes:
            passed_on(change)
        return RedirectResponse(f"/console/fleet?{urlencode({'pushed': name})}#pushes", 303, headers=HEADERS)

    # -- the numbers --

    @router.get("/numbers")
    def numbers_page(request: Request, user: auth.User = Depends(viewer)) -> Response:
        tables = numbers.numbers(store, limits)
        return render(request, "numbers.html", user=user, tables=tables, columns=numbers.COLUMNS, by=numbers.BY,
                      limits=limits, default_resolve=numbers.DEFAULT_RESOLVE_WITHIN, title="Numbers")

    @router.get("/numbers.csv")
    def numbers_csv(request: Request, by: str = "grid", user: auth.User = Depends(viewer)) -> Response:
        if by not in numbers.BY:
            return Response(f"by must be one of {', '.join(numbers.BY)}\n", 400, media_type="text/plain",
                            headers=HEADERS)
        text = numbers.to_csv(numbers.numbers(store, limits)[by], by)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d")
        return Response(text, media_type="text/csv; charset=utf-8",
                        headers={**HEADERS, "Content-Disposition": f'attachment; filename="numbers-by-{by}-{stamp}.csv"'})

    # -- users (admin) --

    admin = need("admin", "manage users")

    @router.get("/users")
    def users_page(request: Request, user: auth.User = Depends(admin)) -> Response:
        return render(request, "users.html", user=user, users=auth.list_users(store), problem="",
                      done=request.query_params.get("done", ""), title="Users")

    @router.post("/users")
    async def users_change(request: Request) -> Response:
        user = await run_in_threadpool(session_user, request)
        fields = await form(request, user)
        if not user.may("admin"):
            raise Forbidden(user, "admin", "manage users")
        what, name = fields.get("do", ""), fields.get("name", "").strip()
        try:
            if what == "add":
                await run_in_threadpool(auth.add_user, store, name, fields.get("password", ""), fields.get("role", ""))
            elif what == "remove":
                if name == user.name:
                    raise auth.UserError("you cannot remove yourself (another admin can)")
                await run_in_threadpool(auth.remove_user, store, name)
            elif what == "role":
                if name == user.name:
                    raise auth.UserError("you cannot change your own role (another admin can)")
                await run_in_threadpool(auth.set_role, store, name, fields.get("role", ""))
            else:
                raise auth.UserError(f"there is no user action {what!r}")
        except auth.UserError as error:
            listed = await run_in_threadpool(auth.list_users, store)
            return render(request, "users.html", 400, user=user, users=listed, problem=str(error), done="",
                          title="Users")
        log.info("console: %s: %s user %r", user.name, what, name)
        return RedirectResponse(f"/console/users?{urlencode({'done': f'{what} {name}'})}", 303, headers=HEADERS)

    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")
