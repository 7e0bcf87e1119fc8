"""The console in a real browser (Debian's Chromium driven by Playwright) against a real platform
(``python -m uplink.receiver``) and a real gateway (``edge run``) fed by the simulator's
flooding street (config/scenarios/flood.yaml): log in, see the district, filter the list, open
a grouped flooding order, see every problem it stands for, accept and dispatch it, and see the
gateway apply the dispatch (``edge orders show``).

Screenshots of every page go to ``<tmp_path>/shots`` and are copied to /tmp/console-shots/.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import requests

from conftest import (
    ROOT, SIMULATOR, edge_command, scenario_registry, start_edge_run, start_receiver, wait_until, write_gateway_config,
)
from uplink.receiver.console import auth
from uplink.receiver.store import ReceiverStore

CHROMIUM = Path("/usr/bin/chromium")
SCENARIO = ROOT / "config" / "scenarios" / "flood.yaml"
SHOTS = Path("/tmp/console-shots")
PASSWORD = "flood night shift"


def grouped_order(receiver_url: str) -> tuple[str, set[tuple[str, str]]]:
    """The order standing for the most problems (device, rule), from all its revisions' evidence."""
    problems: dict[str, set] = {}
    for body in requests.get(f"{receiver_url}/api/v1/revisions", timeout=10).json()["revisions"]:
        found = problems.setdefault(body["order_id"], {(body["device"], body["rule"])})
        found |= {(e["device"], e["rule"]) for e in body.get("evidence") or []}
    order_id = max(problems, key=lambda o: (len(problems[o]), o))
    return order_id, problems[order_id]


def test_a_dispatcher_works_a_flooding_order_in_the_browser(tmp_path, mosquitto, clean_env, monkeypatch):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: ./scripts/test-tools installs Debian's chromium (Playwright cannot "
                    "download its own browser here)")
    from playwright.sync_api import expect, sync_playwright

    registry = scenario_registry(SCENARIO, tmp_path / "registry.csv")
    monkeypatch.setenv("RECEIVER_REGISTRY", str(registry))  # the platform draws every device of the street
    receiver = start_receiver(tmp_path / "receiver.db")
    store = ReceiverStore(receiver.db)
    auth.add_user(store, "duty", PASSWORD, "dispatcher")
    auth.add_user(store, "chief", PASSWORD, "admin")
    store.close()
    config = write_gateway_config(tmp_path, mosquitto.url, receiver.url, id="gw-flood", registry=registry.as_posix())
    config.write_text(config.read_text().replace("retry_max = 1.0", "retry_max = 1.0\ndownlink_interval = 0.2"))
    gateway = start_edge_run(config, tmp_path / "gateway.log", clean_env)
    shots = tmp_path / "shots"
    shots.mkdir()
    try:
        run = subprocess.run(SIMULATOR + ["scenario", str(SCENARIO), "--broker", mosquitto.url, "--out",
                                          str(tmp_path / "run"), "--speed", "max", "--duration", "6h"],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        # the storm's orders have reached the platform: one of them stands for the camera and its covers
        assert wait_until(lambda: len(grouped_order(receiver.url)[1]) >= 3, 30, interval=0.5), receiver.orders()
        wait_until(lambda: requests.get(f"{receiver.url}/console/login", timeout=5).ok and
                   len({o["order_id"] for o in receiver.orders()}) == len(receiver.orders()) and
                   _settled(receiver.url), 10, interval=0.5)
        order_id, problems = grouped_order(receiver.url)

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))

            def shot(name: str) -> None:
                page.evaluate("window.scrollTo(0, 0)")  # the sticky header at the top of the picture
                page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

            page.goto(f"{receiver.url}/console/orders")
            expect(page).to_have_url(re.compile(r"/console/login\?next="))
            shot("01-login")
            page.fill("input[name=name]", "duty")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            expect(page).to_have_url(f"{receiver.url}/console/orders")
            page.goto(f"{receiver.url}/console/")
            expect(page.locator("svg.map a.marker").first).to_be_visible()
            assert page.locator("svg.map circle.device").count() == 96  # every device of the flood's registry
            shot("02-district")

            page.goto(f"{receiver.url}/console/orders")
            page.select_option("select[name=state]", "any")
            page.select_option("select[name=category]", "waterlogging")
            page.click("form.filters button[type=submit]")
            expect(page).to_have_url(re.compile(r"/console/orders\?state=any&category=waterlogging&sort=received&dir=desc$"))
            categories = page.locator("table.orders tbody tr td:nth-child(7)").all_inner_texts()
            expected = [o for o in receiver.orders() if o["category"] == "waterlogging"]
            assert categories == ["waterlogging"] * len(expected) and expected
            page.click("table.orders th a:has-text('grid')")  # sort by grid, in the browser
            expect(page).to_have_url(re.compile(r"sort=grid"))
            grids = page.locator("table.orders tbody tr td:nth-child(4)").all_inner_texts()
            assert grids == sorted(grids)
            shot("03-orders-filtered")

            if not any(o["order_id"] == order_id for o in expected):  # the biggest group is of another category
                page.goto(f"{receiver.url}/console/orders?state=any")
            page.click(f"table.orders a[href='/console/orders/{order_id}']")
            expect(page).to_have_url(f"{receiver.url}/console/orders/{order_id}")
            rows = page.locator("table.problems tbody tr")
            shown = {(r.locator("td").nth(0).inner_text(), r.locator("td").nth(1).inner_text()) for r in rows.all()}
            assert shown == problems, (shown, problems)
            shot("04-order")

            page.click("form.action-accept button")
            expect(page.locator(".alert-ok")).to_contain_text("Decision recorded: accepted")
            # the gateway applies it at its next poll and sends the revision back
            for _ in range(60):
                if page.locator("form.action-dispatch button:enabled").count():
                    break
                page.wait_for_timeout(250)
                page.reload()
            team = page.locator("form.action-dispatch select[name=team]").input_value()
            assert team.startswith("team-g")  # the order's own team is offered first
            page.click("form.action-dispatch button")
            expect(page.locator(".alert-ok")).to_contain_text("Decision recorded: dispatched")

            def dispatched_on_gateway() -> str | None:
                shown = subprocess.run(edge_command() + ["orders", "show", order_id, "--config", str(config)],
                                       capture_output=True, text=True, timeout=30, env=clean_env)
                return shown.stdout if re.search(r"dispatched\s+-> dispatched", shown.stdout) else None

            on_gateway = wait_until(dispatched_on_gateway, 30, interval=0.5)
            assert on_gateway, "the gateway did not apply the dispatch"
            assert re.search(r"accepted\s+-> accepted", on_gateway)
            for device, rule in problems:  # the gateway's order stands for the same problems
                assert f"{rule} on {device}" in on_gateway
            for _ in range(40):
                page.reload()
                if page.locator("table.timeline .dec-waiting").count() == 0:
                    break
                page.wait_for_timeout(250)
            timeline = page.locator("table.timeline").inner_text()
            assert "dispatched by duty" in timeline and "waiting" not in timeline
            assert page.locator("form.action-resolve button:enabled").count() == 1
            shot("05-order-dispatched")

            page.goto(f"{receiver.url}/console/fleet")
            expect(page.locator("table.fleet")).to_contain_text("gw-flood")
            shot("06-fleet")
            page.goto(f"{receiver.url}/console/numbers")
            expect(page.locator("#by-grid table")).to_contain_text("G12")
            shot("07-numbers")
            assert errors == [], errors  # no script error, nothing the Content-Security-Policy refused
            forbidden = page.goto(f"{receiver.url}/console/users")  # a dispatcher does not manage users
            assert forbidden.status == 403
            expect(page.locator(".alert-bad")).to_contain_text("which cannot manage users")
            errors.clear()  # the browser logs the 403 itself
            shot("08-forbidden")
            page.goto(f"{receiver.url}/console/orders/{order_id}")
            page.click("header form button")  # log out
            expect(page).to_have_url(f"{receiver.url}/console/login")

            # an admin pushes a rule file with a mistake: the gateway refuses it and says why
            page.fill("input[name=name]", "chief")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.goto(f"{receiver.url}/console/fleet")
            page.fill("input[name=file]", "storm.yaml")
            page.select_option("select[name=target]", "gateway:gw-flood")
            page.fill("textarea[name=content]", "rules:\n  - name: deep_water\n    when: avgg(water_cm, 5m) > 60\n")
            page.click("form.push button[type=submit]")
            expect(page.locator(".alert-ok")).to_contain_text("Rule file storm.yaml queued")
            # the fleet refreshes itself (htmx) until the gateway's answer is in
            expect(page.locator("#pushes")).to_contain_text("1 refused", timeout=20_000)
            expect(page.locator("#pushes")).to_contain_text("storm.yaml:3")
            shot("09-fleet-push-refused")
            page.goto(f"{receiver.url}/console/users")
            expect(page.locator("main table")).to_contain_text("duty")
            shot("10-users")
            page.goto(f"{receiver.url}/console/")
            expect(page.locator("svg.map polygon").first).to_be_visible()  # the dispatched order: a triangle
            shot("11-district-after")
            browser.close()
        assert errors == [], errors  # no script error, nothing the Content-Security-Policy refused
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=30)
        receiver.process.terminate()
        receiver.process.wait(timeout=10)
        SHOTS.mkdir(exist_ok=True)
        for png in shots.glob("*.png"):
            shutil.copy(png, SHOTS / png.name)
    assert "Traceback" not in (tmp_path / "gateway.log").read_text()


def _settled(url: str, seen: dict = {}) -> bool:  # noqa: B006 - remembers the last count between calls
    """True once the platform's revision count stopped growing between two calls."""
    count = requests.get(f"{url}/api/v1/stats", timeout=5).json()["revisions"]
    settled = seen.get(url) == count
    seen[url] = count
    return settled
