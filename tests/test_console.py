"""The command centre's console (uplink/receiver/console/) on a real receiver server and store:
login and sessions, roles, CSRF, the order list's filters, sorts and pages, one order's problems
and timeline, decisions reaching the gateway's changes feed, the fleet and rule pushes, the
numbers (checked by hand) and their CSV, the users command; SQLite, and PostgreSQL once.

Orders reach the platform through its API (POST /api/v1/uplink), as a gateway sends them; the
times the numbers are made of are then set in the database, to make a data set worked by hand.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import subprocess
import sys
import time

import pytest
import requests

from conftest import ROOT
from uplink.receiver.console import auth, fleet, numbers, orders
from uplink.receiver.server import ReceiverServer
from uplink.receiver.store import ReceiverStore

PASSWORD = "correct horse battery"
CONSOLE = [sys.executable, "-m", "uplink.receiver.console"]
DAY = 86400.0


def iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1000):03d}Z"


def revision(order_id: str, number: int, *, change: str = "opened", state: str = "opened", severity: str = "major",
             category: str = "waterlogging", grid: str = "G1", zone: str = "Z1", team: str = "team-1",
             device: str = "CAM-1", rule: str = "waterlogging", title: str | None = None, evidence: list | None = None,
             gateway: str = "gw-1", lat: float = 31.23, lon: float = 121.47, opened_at: str = "2026-12-01T10:00:00.000Z",
             **extra) -> dict:
    return {"order_id": order_id, "revision": number, "change": change, "gateway": gateway, "device": device,
            "device_kind": "camera", "rule": rule, "category": category, "category_code": "S040701",
            "category_name": "Road waterlogging", "severity": severity, "title": title or f"{rule} at {device}",
            "grid": grid, "zone": zone, "team": team, "address": f"{device} street", "location": {"lat": lat, "lon": lon},
            "opened_at": opened_at, "updated_at": opened_at, "state": state, "verification": None, "repeat_of": None,
            "verified_at": None, "evidence": evidence if evidence is not None else
            [{"device": device, "rule": rule, "metric": "score", "value": 0.9, "at": opened_at, "condition": "c"}],
            **extra}


class Platform:
    """The receiver (API and console) on a free port over ``target``; ``told`` is what reached on_change."""

    def __init__(self, target):
        self.store = ReceiverStore(target)
        self.server = ReceiverServer("127.0.0.1", 0, self.store)
        self.told: list[tuple[str, dict]] = []
        self.server.on_change = lambda gateway, change: self.told.append((gateway, change))
        self.server.start_background()
        self.url = self.server.url

    def uplink(self, gateway: str, revisions: list[dict], reports: list[dict] | None = None,
               health: dict | None = None) -> None:
        batch = {"gateway": gateway, "revisions": revisions, "reports": reports or []}
        if health is not None:
            batch["health"] = health
        answer = requests.post(f"{self.url}/api/v1/uplink", json=batch, timeout=30)
        assert answer.status_code == 200, answer.text

    def changes(self, gateway: str) -> list[dict]:
        return requests.get(f"{self.url}/api/v1/gateways/{gateway}/changes", timeout=10).json()["changes"]

    def user(self, name: str, role: str) -> requests.Session:
        auth.add_user(self.store, name, PASSWORD, role)
        return self.login(name)

    def login(self, name: str, password: str = PASSWORD) -> requests.Session:
        session = requests.Session()
        page = session.get(f"{self.url}/console/login", timeout=10)
        answer = session.post(f"{self.url}/console/login", data={"csrf": csrf_of(page.text), "name": name,
                                                                  "password": password, "next": "/console/"},
                              allow_redirects=False, timeout=10)
        assert answer.status_code == 303, answer.text
        return session

    def set_times(self, order_id: str, **columns) -> None:
        names = ", ".join(f"{name} = ?" for name in columns)
        self.store.db.write(lambda tx: tx.execute(f"UPDATE orders SET {names} WHERE order_id = ?",
                                                  [*columns.values(), order_id]))

    def close(self) -> None:
        self.server.shutdown()
        self.store.close()


@pytest.fixture
def platform(tmp_path):
    p = Platform(tmp_path / "receiver.db")
    yield p
    p.close()


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def post(session: requests.Session, url: str, page_url: str, **fields) -> requests.Response:
    """A form sent from the page at ``page_url`` (with that page's CSRF token)."""
    page = session.get(page_url, timeout=10)
    return session.post(url, data={"csrf": csrf_of(page.text), **fields}, allow_redirects=False, timeout=10)


def ids(html: str) -> list[str]:
    from urllib.parse import unquote

    body = html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [unquote(m) for m in re.findall(r'<td class="title"><a href="/console/orders/([^"]+)">', body)]


def total(html: str) -> int:
    return int(re.search(r"<strong>(\d+)</strong> orders?", html).group(1))


# -- login, sessions, roles, CSRF -----------------------------------------------------------

def test_login_session_cookie_and_logout(platform):
    platform.uplink("gw-1", [revision("o-1", 1)])
    anonymous = requests.get(f"{platform.url}/console/orders?grid=G1", allow_redirects=False, timeout=10)
    assert anonymous.status_code == 303
    assert anonymous.headers["location"] == "/console/login?next=%2Fconsole%2Forders%3Fgrid%3DG1"
    for path in ("/console/", "/console/fleet", "/console/numbers", "/console/numbers.csv", "/console/orders/o-1",
                 "/console/users", "/console/orders.part"):
        assert requests.get(platform.url + path, allow_redirects=False, timeout=10).status_code == 303, path

    auth.add_user(platform.store, "ana", PASSWORD, "viewer")
    session = requests.Session()
    page = session.get(f"{platform.url}/console/login?next=/console/orders%3Fgrid%3DG1", timeout=10)
    assert page.status_code == 200 and "Content-Security-Policy" in page.headers
    wrong = session.post(f"{platform.url}/console/login", data={"csrf": csrf_of(page.text), "name": "ana",
                                                                "password": "not the password"}, timeout=10)
    assert wrong.status_code == 401 and "Wrong name or password" in wrong.text
    unknown = session.post(f"{platform.url}/console/login", data={"csrf": csrf_of(page.text), "name": "nobody",
                                                                  "password": PASSWORD}, timeout=10)
    assert unknown.status_code == 401 and "Wrong name or password" in unknown.text
    right = session.post(f"{platform.url}/console/login",
                         data={"csrf": csrf_of(page.text), "name": "ana", "password": PASSWORD,
                               "next": "/console/orders?grid=G1"}, allow_redirects=False, timeout=10)
    assert right.status_code == 303 and right.headers["location"] == "/console/orders?grid=G1"
    cookie = right.headers["set-cookie"]
    assert "console_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Path=/console" in cookie and "Max-Age=43200" in cookie
    token = session.cookies["console_session"]
    (row,) = platform.store.db.read("SELECT token_hash, name, expires_at - created_at AS life FROM sessions")
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest() and token not in str(row)
    assert (row["name"], row["life"]) == ("ana", 12 * 3600)
    assert "o-1" in session.get(f"{platform.url}/console/orders", timeout=10).text

    out = post(session, f"{platform.url}/console/logout", f"{platform.url}/console/")
    assert out.status_code == 303 and out.headers["location"] == "/console/login"
    assert platform.store.db.read("SELECT * FROM sessions") == []
    stolen = requests.get(f"{platform.url}/console/", cookies={"console_session": token}, allow_redirects=False,
                          timeout=10)
    assert stolen.status_code == 303  # the token is dead on the server, not only forgotten by the browser


def test_login_goes_only_to_console_pages(platform):
    auth.add_user(platform.store, "ana", PASSWORD, "viewer")
    for target in ("https://evil.example/", "//evil.example/console/", "/console//evil.example", "/api/v1/orders"):
        session = requests.Session()
        page = session.get(f"{platform.url}/console/login", timeout=10)
        answer = session.post(f"{platform.url}/console/login", data={"csrf": csrf_of(page.text), "name": "ana",
                                                                     "password": PASSWORD, "next": target},
                              allow_redirects=False, timeout=10)
        assert answer.headers["location"] == "/console/", target


def test_sessions_end_at_expiry_new_password_removal_and_role_change(platform):
    ana = platform.user("ana", "dispatcher")
    url = f"{platform.url}/console/"
    assert ana.get(url, allow_redirects=False, timeout=10).status_code == 200
    platform.store.db.write(lambda tx: tx.execute("UPDATE sessions SET expires_at = ?", [time.time() - 1]))
    assert ana.get(url, allow_redirects=False, timeout=10).status_code == 303
    # one by one, so each cause is seen alone
    auth.add_user(platform.store, "bea", PASSWORD, "dispatcher")
    bea = platform.login("bea")
    auth.set_password(platform.store, "bea", "another long password")
    assert bea.get(url, allow_redirects=False, timeout=10).status_code == 303
    bea = platform.login("bea", "another long password")
    auth.set_role(platform.store, "bea", "viewer")
    assert bea.get(url, allow_redirects=False, timeout=10).status_code == 303
    bea = platform.login("bea", "another long password")
    assert '<span class="role role-viewer">viewer</span>' in bea.get(url, timeout=10).text
    auth.remove_user(platform.store, "bea")
    assert bea.get(url, allow_redirects=False, timeout=10).status_code == 303
    with pytest.raises(auth.UserError, match="no user 'bea'"):
        auth.remove_user(platform.store, "bea")


def test_roles_viewer_reads_dispatcher_decides_admin_pushes(platform):
    platform.uplink("gw-1", [revision("o-1", 1)])
    viewer, dispatcher, admin = (platform.user(n, n) for n in ("viewer", "dispatcher", "admin"))
    page = f"{platform.url}/console/orders/o-1"
    for session in (viewer, dispatcher, admin):
        assert session.get(page, timeout=10).status_code == 200
    assert "deciding needs dispatcher or admin" in viewer.get(page, timeout=10).text

    refused = post(viewer, page, page, action="accept")
    assert refused.status_code == 403
    assert "role <strong>viewer</strong>, which cannot accept orders" in refused.text
    assert platform.changes("gw-1") == [] and platform.told == []

    done = post(dispatcher, page, page, action="accept", note="on it")
    assert done.status_code == 303 and done.headers["location"] == "/console/orders/o-1?done=accept"
    (change,) = platform.changes("gw-1")
    assert (change["type"], change["order_id"], change["state"], change["note"]) == ("order", "o-1", "accepted", "on it")
    assert [(gw, c["seq"], c["state"]) for gw, c in platform.told] == [("gw-1", change["seq"], "accepted")]
    assert platform.store.decisions("o-1")[0]["actor"] == "dispatcher"

    for session in (viewer, dispatcher):
        assert session.get(f"{platform.url}/console/users", timeout=10).status_code == 403
        answer = post(session, f"{platform.url}/console/fleet/push", f"{platform.url}/console/fleet",
                      file="x.yaml", content="rules: []\n", target="all")
        assert answer.status_code == 403 and "push rule files to gateways" in answer.text
    assert all(c["type"] == "order" for c in platform.changes("gw-1"))
    pushed = post(admin, f"{platform.url}/console/fleet/push", f"{platform.url}/console/fleet",
                  file="x.yaml", content="rules: []\r\n", target="gateway:gw-1")
    assert pushed.status_code == 303
    rules = platform.changes("gw-1")[-1]
    assert (rules["type"], rules["file"], rules["content"]) == ("rules", "x.yaml", "rules: []\n")
    assert "Push a rule file" in admin.get(f"{platform.url}/console/fleet", timeout=10).text
    assert "Push a rule file" not in dispatcher.get(f"{platform.url}/console/fleet", timeout=10).text


def test_forms_without_the_sessions_csrf_token_are_refused(platform):
    platform.uplink("gw-1", [revision("o-1", 1)])
    admin = platform.user("admin", "admin")
    other = platform.user("other", "admin")
    page = f"{platform.url}/console/orders/o-1"
    stranger_token = csrf_of(other.get(page, timeout=10).text)
    for fields in ({}, {"csrf": ""}, {"csrf": "0" * 64}, {"csrf": stranger_token}):
        answer = admin.post(page, data={"action": "accept", **fields}, allow_redirects=False, timeout=10)
        assert answer.status_code == 403 and "not sent from a page of this console" in answer.text, fields
        answer = admin.post(f"{platform.url}/console/fleet/push", data={"file": "x.yaml", "content": "a: 1",
                                                                       "target": "all", **fields}, timeout=10)
        assert answer.status_code == 403
        answer = admin.post(f"{platform.url}/console/logout", data=fields, allow_redirects=False, timeout=10)
        assert answer.status_code == 403
    assert platform.changes("gw-1") == []
    # the login form too: its token belongs to the browser that loaded it
    auth.add_user(platform.store, "ana", PASSWORD, "viewer")
    page = requests.get(f"{platform.url}/console/login", timeout=10)
    answer = requests.post(f"{platform.url}/console/login", data={"csrf": csrf_of(page.text), "name": "ana",
                                                                  "password": PASSWORD}, timeout=10)
    assert answer.status_code == 403  # no login cookie: a page elsewhere posting with a token it saw
    assert platform.store.db.read("SELECT count(*) AS n FROM sessions WHERE name = 'ana'")[0]["n"] == 0


# -- decisions ------------------------------------------------------------------------------

def test_only_the_next_legal_steps_are_offered_and_taken(platform):
    from edge.orders.book import PLATFORM_TRANSITIONS

    for state, steps in orders.NEXT_STEPS.items():  # within what the gateway accepts
        assert {orders.ACTIONS[s] for s in steps} <= set(PLATFORM_TRANSITIONS[state]), state
    platform.uplink("gw-1", [revision("o-1", 1, team="team-7")])
    platform.uplink("gw-1", [revision("o-2", 1, team="team-8")])
    boss = platform.user("boss", "dispatcher")
    page = f"{platform.url}/console/orders/o-1"

    def enabled(html: str) -> set[str]:
        return set(re.findall(r'<button type="submit" class="btn-(\w+)">', html))

    assert enabled(boss.get(page, timeout=10).text) == {"accept", "reject"}
    early = post(boss, page, page, action="dispatch", team="team-7")
    assert early.status_code == 409 and "it cannot be dispatched now (possible: accept, reject)" in early.text
    silent = post(boss, page, page, action="reject", note="   ")
    assert silent.status_code == 409 and "a rejection needs its reason" in silent.text
    assert platform.changes("gw-1") == []

    assert post(boss, page, page, action="accept").status_code == 303
    html = boss.get(page, timeout=10).text
    assert "sent, waiting for the gateway" in html and enabled(html) == {"dispatch", "reject"}
    assert 'class="chip st-pending"' in html and "not yet applied by the gateway" in html
    assert '<option value="team-7" selected>team-7</option>' in html and '<option value="team-8">' in html
    # the gateway applies it: a new revision whose change is the decision
    platform.uplink("gw-1", [revision("o-1", 2, change="accepted", state="accepted", team="team-7")])
    html = boss.get(page, timeout=10).text
    assert "sent, waiting" not in html and 'class="chip dec-applied">applied' in html
    assert post(boss, page, page, action="dispatch", team="team-8", note="closer").status_code == 303
    assert platform.changes("gw-1")[-1]["note"] == "team team-8: closer"
    platform.uplink("gw-1", [revision("o-1", 3, change="dispatched", state="dispatched")])
    assert enabled(boss.get(page, timeout=10).text) == {"resolve"}
    assert post(boss, page, page, action="resolve").status_code == 303
    platform.uplink("gw-1", [revision("o-1", 4, change="resolved", state="resolved")])
    assert enabled(boss.get(page, timeout=10).text) == {"close", "dispatch"}
    assert post(boss, page, page, action="close").status_code == 303
    platform.uplink("gw-1", [revision("o-1", 5, change="closed", state="closed")])
    html = boss.get(page, timeout=10).text
    assert enabled(html) == set() and "nothing: the order is final" in html
    assert [c["state"] for c in platform.changes("gw-1")] == ["accepted", "dispatched", "resolved", "closed"]
    # a decision the gateway refused says so, with its reason
    assert post(boss, f"{platform.url}/console/orders/o-2", f"{platform.url}/console/orders/o-2",
                action="reject", note="duplicate of o-1").status_code == 303
    seq = platform.changes("gw-1")[-1]["seq"]
    platform.uplink("gw-1", [], reports=[{"seq": seq, "type": "order", "status": "refused", "reason": "illegal_transition",
                                          "detail": "order o-2 is closed", "at": iso(time.time())}])
    html = boss.get(f"{platform.url}/console/orders/o-2", timeout=10).text
    assert 'class="chip dec-refused">refused' in html and "illegal_transition: order o-2 is closed" in html


def test_an_order_page_shows_every_grouped_problem_from_all_revisions(platform):
    t0 = 1_780_000_000.0

    def ev(device, rule, metric, value, at):
        return {"device": device, "rule": rule, "metric": metric, "value": value, "at": iso(at), "condition": f"{metric} high"}

    def rev(number, **fields):
        return revision("flood-1", number, title="Waterlogging seen by CAM-1 <b>now</b>", **fields)

    evidence = [ev("CAM-1", "waterlogging", "score", 0.9, t0)]
    revisions = [rev(1, evidence=list(evidence))]
    evidence += [ev("MH-1", "water_rising", "water_cm", 20.0, t0 + 60), ev("MH-1", "water_rising", "water_cm", 25.0, t0 + 90)]
    revisions.append(rev(2, change="grouped", evidence=evidence[-20:]))
    for i in range(25):  # the cover's water keeps rising: the camera's evidence leaves the last 20
        evidence.append(ev("MH-1", "water_rising", "water_cm", 30.0 + i, t0 + 120 + 30 * i))
        revisions.append(rev(3 + i, change="updated", evidence=evidence[-20:]))
    evidence.append(ev("MH-2", "water_rising", "water_cm", 41.0, t0 + 2000))
    revisions.append(rev(28, change="grouped", evidence=evidence[-20:], severity="critical"))
    assert all(e["device"] != "CAM-1" for e in revisions[-1]["evidence"])
    platform.uplink("gw-1", revisions)
    viewer = platform.user("eve", "viewer")
    html = viewer.get(f"{platform.url}/console/orders/flood-1", timeout=10).text
    assert "Waterlogging seen by CAM-1 &lt;b&gt;now&lt;/b&gt;" in html and "<b>now</b>" not in html
    found = {(p["device"], p["rule"]): p for p in orders.load_order(platform.store, "flood-1")["problems"]}
    assert set(found) == {("CAM-1", "waterlogging"), ("MH-1", "water_rising"), ("MH-2", "water_rising")}
    assert [found[k]["readings"] for k in sorted(found)] == [1, 27, 1]
    mh1 = found[("MH-1", "water_rising")]
    assert (mh1["first_at"], mh1["last_at"]) == (iso(t0 + 60), iso(t0 + 120 + 30 * 24))
    assert mh1["metrics"]["water_cm"][0] == 54.0 and (mh1["joined_revision"], mh1["joined_change"]) == (2, "grouped")
    problems = html.split("<h2>Problems", 1)[1].split("<h2>Timeline", 1)[0]
    for device, first, last, readings in (("CAM-1", t0, t0, 1), ("MH-1", t0 + 60, t0 + 840, 27), ("MH-2", t0 + 2000, t0 + 2000, 1)):
        row = problems.split(f'<td class="mono">{device}</td>', 1)[1].split("</tr>", 1)[0]
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(first))
        assert stamp in row and time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(last)) in row
        assert f'<td class="num">{readings}</td>' in row
    timeline = html.split("<h2>Timeline", 1)[1]
    assert "rev 3–27 · <strong>updated</strong> ×25" in timeline and "rev 28 · <strong>grouped</strong>" in timeline
    assert "joined: <span class=\"mono\">MH-2</span> water_rising" in timeline


# -- the list -------------------------------------------------------------------------------

STATES = ("opened", "accepted", "dispatched", "resolved", "closed")
SEVERITIES = ("critical", "major", "minor", "info")


def make_list(platform) -> dict[str, dict]:
    made = {}
    for gateway in ("gw-a", "gw-b"):
        batch = []
        for i in range(60):
            n = len(made)
            order = revision(f"{gateway}-{i:03d}", 1, gateway=gateway, grid=f"G{n % 4}", zone=f"Z{n % 2}",
                             team=f"team-{n % 4}", severity=SEVERITIES[n % 4], state=STATES[n % 5],
                             category=("waterlogging", "bin_overflow")[n % 3 == 0], title=f"Problem {n:03d}",
                             device=f"DEV-{n:03d}")
            made[order["order_id"]] = order
            batch.append(order)
        platform.uplink(gateway, batch)
    return made


def test_filters_sorts_and_pages_pick_the_right_rows(platform):
    made = make_list(platform)
    viewer = platform.user("vic", "viewer")

    def get(query: str) -> str:
        answer = viewer.get(f"{platform.url}/console/orders.part?{query}", timeout=10)
        assert answer.status_code == 200
        return answer.text

    def expect(**match) -> set[str]:
        return {o for o, r in made.items() if all(r[k] == v for k, v in match.items())}

    everything = get("state=any")
    assert total(everything) == 120 and len(ids(everything)) == 50
    pages = [ids(get(f"state=any&sort=title&dir=asc&page={n}")) for n in (1, 2, 3)]
    assert [len(p) for p in pages] == [50, 50, 20]
    assert sum(pages, []) == sorted(made, key=lambda o: made[o]["title"])
    assert ids(get("state=any&sort=title&dir=asc&page=9")) == pages[2]  # past the end: the last page
    live = get("sort=title&dir=asc&page=3")  # live by default: not closed
    assert total(live) == 120 - len(expect(state="closed"))
    for query, match in (("state=any&grid=G1&severity=major", {"grid": "G1", "severity": "major"}),
                         ("state=dispatched&gateway=gw-b", {"state": "dispatched", "gateway": "gw-b"}),
                         ("state=any&category=bin_overflow&zone=Z0&team=team-2",
                          {"category": "bin_overflow", "zone": "Z0", "team": "team-2"})):
        html = get(query + "&sort=order&dir=asc")
        assert total(html) == len(expect(**match)) > 0, query
        assert set(ids(html)) == expect(**match), query
    critical_first = ids(get("state=any&sort=severity&dir=desc"))
    assert {made[o]["severity"] for o in critical_first[:30]} == {"critical"}
    assert {made[o]["severity"] for o in critical_first[30:50]} == {"major"}
    by_state = ids(get("state=any&sort=state&dir=asc"))
    assert {made[o]["state"] for o in by_state[:24]} == {"opened"}
    assert ids(get("state=any&q=problem+067")) == ["gw-b-007"]  # words of the title (or address, device, id)
    # received between two dates (UTC): a few orders moved to early January
    for order_id in ("gw-a-001", "gw-b-010"):
        platform.set_times(order_id, first_received_at=1_767_600_000.0)  # 2026-01-05 08:00 UTC
    assert set(ids(get("state=any&since=2026-01-05&until=2026-01-05"))) == {"gw-a-001", "gw-b-010"}
    assert total(get("state=any&since=2026-01-06")) == 118
    # nothing from the address reaches the SQL text
    assert total(get("state=any&grid=G1%27%20OR%20%271%27%3D%271")) == 0
    assert total(get("state=any&q=%25")) == 0 and total(get("state=any&q=_")) == 0
    assert ids(get("state=any&sort=order_id;DROP%20TABLE%20orders&dir=up")) == ids(get("state=any"))
    assert platform.store.db.read_one("SELECT count(*) AS n FROM orders")["n"] == 120
    page = viewer.get(f"{platform.url}/console/orders?state=any&grid=G2&sort=grid", timeout=10).text
    assert 'hx-get="/console/orders.part?state=any&amp;grid=G2&amp;sort=grid"' in page
    assert '<option value="G2" selected>G2</option>' in page
    assert 'href="/console/orders?state=any&amp;grid=G2&amp;sort=grid&amp;dir=asc"' in page  # the column turns


# -- the numbers ----------------------------------------------------------------------------

def test_numbers_worked_by_hand_and_their_csv(platform):
    now = time.time()
    base = now - 40 * DAY

    def order(order_id, device, grid="G1", category="waterlogging", evidence=None):
        return revision(order_id, 1, device=device, rule="r", grid=grid, zone="Z1", category=category,
                        evidence=evidence)

    made = [order(n, f"D{i}") for i, n in enumerate("ABCDEFGH", 1)]
    made[2] = order("C", "D3", evidence=[{"device": "D3", "rule": "r", "at": iso(base)},
                                         {"device": "D9", "rule": "r", "at": iso(base)}])  # C stands for D9 too
    made += [order("R1", "D1", grid="G2", category="sewer_overflow"), order("R2", "D2", grid="G2", category="sewer_overflow"),
             order("R3", "D9", grid="G2", category="sewer_overflow")]
    platform.uplink("gw-1", made)
    # accepted after 60, 120, 300, 600, 3000 s (limit 30 min); resolved after 3600, 7200, 10800, 100000 s (1 d)
    for order_id, accept, resolve in (("A", 60, 3600), ("B", 120, 7200), ("C", 300, 10800), ("D", 600, 100000),
                                      ("E", 3000, None)):
        platform.set_times(order_id, first_received_at=base, accepted_at=base + accept,
                           resolved_at=base + resolve if resolve else None)
    platform.set_times("F", first_received_at=now - 600)  # still within both limits: not judged
    platform.set_times("G", first_received_at=now - 7200)  # late to accept; still within a day to resolve
    platform.set_times("H", first_received_at=base, closed_at=base + 100)  # rejected: left out
    platform.set_times("R1", first_received_at=base + 3600 + 3 * DAY)  # A's problem back after 3 days
    platform.set_times("R2", first_received_at=base + 7200 + 10 * DAY)  # B's after 10 days
    platform.set_times("R3", first_received_at=base + 10800 + 1 * DAY)  # C's second problem after a day

    tables = numbers.numbers(platform.store, numbers.load_limits(ROOT / "config" / "categories.csv"), now=now)
    g1 = next(r for r in tables["grid"] if r["key"] == "G1")
    assert (g1["opened"], g1["accepted"], g1["resolved"]) == (8, 5, 4)
    # accept: 60 120 300 600 3000 -> median 300; p90 at rank 3.6: 600 + 0.6 * (3000 - 600) = 2040
    assert (g1["accept_median_s"], g1["accept_p90_s"]) == (300.0, 2040.0)
    # in time: A B C D; late: E and G (2 h, not accepted); F not judged yet; H rejected
    assert (g1["accept_in_time"], g1["accept_judged"], g1["accept_share"]) == (4, 6, 0.6667)
    # resolve: 3600 7200 10800 100000 -> median 9000; p90 at rank 2.7: 10800 + 0.7 * 89200 = 73240
    assert (g1["resolve_median_s"], g1["resolve_p90_s"]) == (9000.0, 73240.0)
    # within a day: A B C; late: D (100000 s) and E (never, 40 days on); F, G inside the day; H rejected
    assert (g1["resolve_in_time"], g1["resolve_judged"], g1["resolve_share"]) == (3, 5, 0.6)
    # came back: A (3 d) and C (D9, 1 d) within 7 days; and B (10 d) within 30
    assert (g1["repeats_7d"], g1["repeat_rate_7d"], g1["repeats_30d"], g1["repeat_rate_30d"]) == (2, 0.5, 3, 0.75)
    everything = tables["grid"][-1]
    assert everything["key"] == "all" and everything["opened"] == 11 and everything["repeats_30d"] == 3
    assert [r["key"] for r in tables["zone"]] == ["Z1", "all"]
    assert {r["key"] for r in tables["category"]} == {"waterlogging", "sewer_overflow", "all"}
    assert sum(r["opened"] for r in tables["week"][:-1]) == 11
    assert numbers.percentile([5.0], 0.9) == 5.0 and numbers.percentile([], 0.5) is None

    viewer = platform.user("nina", "viewer")
    page = viewer.get(f"{platform.url}/console/numbers", timeout=10).text
    assert "1 d for every category (the category table has no <code>resolve_within</code> column)" in page
    assert "accept ≤ 30 min · resolve ≤ 1 d" in page
    answer = viewer.get(f"{platform.url}/console/numbers.csv?by=grid", timeout=10)
    assert answer.headers["content-type"].startswith("text/csv")
    assert re.fullmatch(r'attachment; filename="numbers-by-grid-\d{8}\.csv"', answer.headers["content-disposition"])
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert [r["grid"] for r in rows] == ["G1", "G2", "all"]
    assert {k: rows[0][k] for k in ("opened", "accept_median_s", "accept_p90_s", "resolve_share", "repeat_rate_30d")} == \
        {"opened": "8", "accept_median_s": "300.0", "accept_p90_s": "2040.0", "resolve_share": "0.6",
         "repeat_rate_30d": "0.75"}
    assert viewer.get(f"{platform.url}/console/numbers.csv?by=team", timeout=10).status_code == 400
    # a grid named like a formula is written so that a spreadsheet does not run it
    platform.uplink("gw-1", [revision("X", 1, grid="=HYPERLINK(\"http://evil\")")])
    rows = list(csv.reader(io.StringIO(viewer.get(f"{platform.url}/console/numbers.csv?by=grid", timeout=10).text)))
    assert ["'=HYPERLINK(\"http://evil\")"] == [r[0] for r in rows if "HYPERLINK" in r[0]]


# -- the fleet ------------------------------------------------------------------------------

def test_fleet_health_stale_gateways_and_a_rule_push_answered_per_gateway(platform):
    now = time.time()
    health = {"version": 1, "at": iso(now - 20), "started_at": iso(now - 3600),
              "backlog": {"revisions": 3, "telemetry": 12, "reports": 0},
              "rules": {"version": "5f0c2a9e", "files": ["bins.yaml", "covers.yaml"],
                        "refused": [{"file": "bad.yaml", "reason": "rule_file_invalid",
                                     "detail": "bad.yaml:3: unknown function 'avgg' (did you mean 'avg'?)", "at": iso(now)}]},
              "parts": {"uplink": "ok", "disk": "degraded"}, "software": "0.1.0"}
    platform.uplink("gw-a", [revision("a-1", 1, gateway="gw-a", zone="Z1")], health=health)
    platform.uplink("gw-b", [revision("b-1", 1, gateway="gw-b", zone="Z1")])  # an older gateway: no summary
    platform.uplink("gw-c", [revision("c-1", 1, gateway="gw-c", zone="Z2")])
    platform.store.db.write(lambda tx: tx.execute("UPDATE gateways SET last_contact = ? WHERE gateway = 'gw-c'",
                                                  [now - fleet.STALE_AFTER - 60]))
    admin = platform.user("root", "admin")
    page = admin.get(f"{platform.url}/console/fleet", timeout=10).text
    rows = {gw: page.split(f">{gw}</a></td>", 1)[1].split("</tr>", 1)[0] for gw in ("gw-a", "gw-b", "gw-c")}
    assert '<span class="chip ok">ok</span>' in rows["gw-a"] and '<span class="chip bad">stale</span>' in rows["gw-c"]
    assert "3 / 12 / 0" in rows["gw-a"] and "5f0c2a9e" in rows["gw-a"] and "bins.yaml, covers.yaml" in rows["gw-a"]
    assert "bad.yaml" in rows["gw-a"] and "unknown function &#39;avgg&#39;" in rows["gw-a"]
    assert "disk: degraded" in rows["gw-a"] and "0.1.0" in rows["gw-a"]
    assert re.search(r'<td class="num">\+(20|21) s</td>', rows["gw-a"]), rows["gw-a"]  # the gateway is 20 s behind
    assert rows["gw-b"].count("<td>—</td>") + rows["gw-b"].count('<td class="num">—</td>') >= 5
    district = admin.get(f"{platform.url}/console/", timeout=10).text
    assert '<span class="n">1/3</span><span class="l">gateways stale</span>' in district

    wrong = post(admin, f"{platform.url}/console/fleet/push", f"{platform.url}/console/fleet",
                 file="../etc/passwd", content="x: 1", target="zone:Z1")
    assert wrong.status_code == 400 and "file name &#39;../etc/passwd&#39;" in wrong.text
    nobody = post(admin, f"{platform.url}/console/fleet/push", f"{platform.url}/console/fleet",
                  file="ok.yaml", content="x: 1", target="zone:Z9")
    assert nobody.status_code == 400 and "no gateway to push to" in nobody.text
    assert all(platform.changes(gw) == [] for gw in ("gw-a", "gw-b", "gw-c"))

    content = "rules:\n  - name: deep_water\n"
    pushed = post(admin, f"{platform.url}/console/fleet/push", f"{platform.url}/console/fleet",
                  file="flooding.yaml", content=content, target="zone:Z1")
    assert pushed.status_code == 303
    (a,), (b,) = platform.changes("gw-a"), platform.changes("gw-b")
    assert platform.changes("gw-c") == [] and (a["file"], a["content"], b["file"]) == ("flooding.yaml", content, "flooding.yaml")
    assert sorted((gw, c["seq"]) for gw, c in platform.told) == sorted([("gw-a", a["seq"]), ("gw-b", b["seq"])])
    part = admin.get(f"{platform.url}/console/fleet.part", timeout=10).text
    assert "2 waiting" in part
    platform.uplink("gw-a", [], reports=[{"seq": a["seq"], "type": "rules", "status": "applied", "file": "flooding.yaml",
                                          "at": iso(time.time())}])
    platform.uplink("gw-b", [], reports=[{"seq": b["seq"], "type": "rules", "status": "refused", "file": "flooding.yaml",
                                          "reason": "rule_file_invalid", "detail": "flooding.yaml:2: rule needs 'when'",
                                          "at": iso(time.time())}])
    part = admin.get(f"{platform.url}/console/fleet.part", timeout=10).text
    pushes = part.split('id="pushes"', 1)[1]
    assert "1 applied" in pushes and "1 refused" in pushes and "waiting" not in pushes
    row_b = pushes.split('<td class="mono">gw-b</td>', 1)[1].split("</tr>", 1)[0]
    assert "refused" in row_b and "flooding.yaml:2: rule needs &#39;when&#39;" in row_b
    assert "root" in pushes  # who pushed


# -- the district ---------------------------------------------------------------------------

def test_district_map_draws_grids_devices_and_live_orders(platform):
    platform.uplink("gw-1", [
        revision("o-1", 1, grid="G1", device="CAM-1", severity="critical", lat=31.2300, lon=121.4700),
        revision("o-2", 1, grid="G1", device="MH-1", severity="minor", state="dispatched", lat=31.2310, lon=121.4705),
        revision("o-3", 1, grid="G2", device="MH-2", severity="major", state="closed", lat=31.2300, lon=121.4760),
        revision("o-4", 1, grid="G2", device="MH-3", severity="info", state="resolved", lat=31.2320, lon=121.4770),
        revision("o-5", 1, grid="G3", device="CAM-9", severity="major", lat=None, lon=None),
    ])
    viewer = platform.user("map", "viewer")
    html = viewer.get(f"{platform.url}/console/", timeout=10).text
    svg = html.split("<svg class=\"map\"", 1)[1].split("</svg>", 1)[0]
    assert svg.count('<circle class="device"') == 4  # every device with a position
    assert "G1 · 2 open" in svg and "G2 · 1 open" in svg
    markers = re.findall(r'<a class="marker" href="/console/orders/([^"]+)">', svg)
    assert markers[-1] == "o-1" and set(markers) == {"o-1", "o-2", "o-4"}  # live only; the worst drawn last
    assert 'fill="#d1242f" stroke="#d1242f"' in svg  # critical, opened: a filled circle
    assert 'fill="#ffffff" stroke="#2f7fc1"' in svg  # info, resolved: a hollow diamond
    assert "1 live order(s) without a position are not on the map." in html
    table = html.split("Open orders by grid", 1)[1]
    assert re.search(r"G1</a>.*?<td class=\"num strong\">2</td>", table, re.S)
    assert '<span class="n">4</span><span class="l">open orders</span>' in html


def test_the_page_at_the_root_links_to_the_console(platform):
    assert "<a href='/console/'>console</a>" in requests.get(platform.url + "/", timeout=10).text


# -- the users command ----------------------------------------------------------------------

def test_users_command_adds_lists_changes_and_removes(tmp_path):
    db = str(tmp_path / "receiver.db")

    def run(*args, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run(CONSOLE + ["users", *args, "--db", db], input=stdin, capture_output=True, text=True,
                              timeout=60)

    added = run("add", "ana", "--role", "dispatcher", "--password-stdin", stdin=PASSWORD + "\n")
    assert added.returncode == 0 and added.stdout == "added ana (dispatcher)\n", added.stderr
    again = run("add", "ana", "--role", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    assert again.returncode == 1 and "there is already a user 'ana'" in again.stderr
    bad_role = run("add", "bob", "--role", "root", "--password-stdin", stdin=PASSWORD + "\n")
    assert bad_role.returncode == 2 and "'root' is not one of 'viewer', 'dispatcher', 'admin'" in bad_role.stderr
    listed = run("list")
    assert re.fullmatch(r"ana  dispatcher  added \d{4}-\d\d-\d\d \d\d:\d\d UTC  sessions 0\n", listed.stdout)
    store = ReceiverStore(db)
    try:
        assert auth.login(store, "ana", PASSWORD) is not None
        assert run("passwd", "ana", "--password-stdin", stdin="a new long password\n").returncode == 0
        assert auth.login(store, "ana", PASSWORD) is None and auth.login(store, "ana", "a new long password")
        (row,) = store.db.read("SELECT password_hash FROM users")
        assert row["password_hash"].startswith("$argon2id$") and "new long" not in row["password_hash"]
        assert run("remove", "ana").stdout == "removed ana\n"
        assert store.db.read("SELECT * FROM users") == [] and store.db.read("SELECT * FROM sessions") == []
    finally:
        store.close()
    gone = run("remove", "ana")
    assert gone.returncode == 1 and "there is no user 'ana'" in gone.stderr


def test_user_names_roles_and_passwords_are_checked(tmp_path):
    store = ReceiverStore(tmp_path / "receiver.db")
    try:
        for name, password, role, message in (
                ("bob", "short", "viewer", "at least 10 characters"), ("", PASSWORD, "viewer", "user name ''"),
                ("bob smith", PASSWORD, "viewer", "user name 'bob smith'"), ("bob", PASSWORD, "root", "role 'root'")):
            with pytest.raises(auth.UserError, match=message):
                auth.add_user(store, name, password, role)
        assert auth.list_users(store) == []
    finally:
        store.close()


# -- PostgreSQL -----------------------------------------------------------------------------

def test_the_console_on_postgresql(postgres_url):
    platform = Platform(postgres_url)
    try:
        made = make_list(platform)
        boss = platform.user("boss", "dispatcher")
        html = boss.get(f"{platform.url}/console/orders.part?state=any&zone=Z1&sort=severity&dir=desc&q=problem",
                        timeout=10).text
        expected = {o for o, r in made.items() if r["zone"] == "Z1"}
        assert total(html) == len(expected) == 60 and set(ids(html)) <= expected
        assert [made[o]["severity"] for o in ids(html)] == ["major"] * 30 + ["info"] * 20  # a page of 50
        assert total(boss.get(f"{platform.url}/console/orders.part?state=any&q=%25", timeout=10).text) == 0
        assert [len(ids(boss.get(f"{platform.url}/console/orders.part?state=any&page={n}", timeout=10).text))
                for n in (1, 2, 3)] == [50, 50, 20]
        order_id = next(o for o, r in made.items() if r["state"] == "opened")
        page = f"{platform.url}/console/orders/{order_id}"
        assert post(boss, page, page, action="accept", note="pg").status_code == 303
        gateway = made[order_id]["gateway"]
        assert platform.changes(gateway)[-1]["state"] == "accepted"
        platform.set_times(order_id, first_received_at=1000.0, accepted_at=1450.0)
        g = next(r for r in numbers.numbers(platform.store, numbers.load_limits())["grid"]
                 if r["key"] == made[order_id]["grid"])
        assert (g["accepted"], g["accept_median_s"]) == (1, 450.0)
        for path in ("/console/", "/console/fleet", "/console/numbers", "/console/numbers.csv?by=week",
                     f"/console/orders/{order_id}"):
            assert boss.get(platform.url + path, timeout=10).status_code == 200, path
        auth.set_role(platform.store, "boss", "viewer")
        assert boss.get(page, allow_redirects=False, timeout=10).status_code == 303
    finally:
        platform.close()


def test_the_console_is_documented():
    """Every page of the console and every users command is in docs/platform.md, "The console"."""
    from uplink.receiver.console.__main__ import users

    doc = (ROOT / "docs" / "platform.md").read_text().split("## The console", 1)[1]
    source = (ROOT / "uplink" / "receiver" / "console" / "web.py").read_text()
    pages = {"/console" + path for path in re.findall(r'@router\.get\("([^"]*)"\)', source)}
    assert len(pages) >= 10
    for path in pages:
        assert f"`{path.replace('{order_id:path}', '<id>').split('?')[0]}" in doc, f"{path} is not documented"
    for name in users.commands:
        assert f"python -m uplink.receiver.console users {name} " in doc, f"users {name} is not documented"
    assert "--password-stdin" in doc and f"{numbers.DEFAULT_RESOLVE_WITHIN / DAY:g} day for every category" in doc


def test_an_order_id_with_slashes_and_markup_opens_and_takes_decisions(platform):
    odd = "gw-1/odd id?&<b>x</b>#1"
    platform.uplink("gw-1", [revision(odd, 1)])
    boss = platform.user("boss", "dispatcher")
    listing = boss.get(f"{platform.url}/console/orders", timeout=10).text
    assert ids(listing) == [odd] and "<b>x</b>" not in listing
    page = f"{platform.url}/console/orders/{requests.utils.quote(odd, safe='')}"
    html = boss.get(page, timeout=10).text
    assert "gw-1/odd id?&amp;&lt;b&gt;x&lt;/b&gt;#1" in html
    done = post(boss, page, page, action="accept")
    assert done.status_code == 303 and platform.changes("gw-1")[0]["order_id"] == odd
    assert boss.get(platform.url + done.headers["location"], timeout=10).status_code == 200
