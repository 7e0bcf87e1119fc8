"""The platform's side of "fixed means fixed": the receiver's re-check figures and an order's page (real HTTP)."""

from __future__ import annotations

import requests

from conftest import start_receiver

DAY = 86400


def iso(days: float) -> str:
    import datetime as dt

    return (dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc) + dt.timedelta(days=days)).isoformat().replace("+00:00", "Z")


def revision(order_id: str, revision: int, change: str, state: str, *, device: str = "MH-0001", grid: str = "G01",
             team: str = "team-1", category: str = "manhole_cover_displaced", opened: float = 0.0,
             verified_at: float | None = None, repeat_of: str | None = None, evidence=None) -> dict:
    verification = change if change in ("verified", "not_fixed", "unverified") else None
    return {"order_id": order_id, "revision": revision, "change": change, "state": state, "device": device,
            "rule": "cover_tilted", "grid": grid, "team": team, "category": category, "title": f"<b>{order_id}</b>",
            "opened_at": iso(opened), "updated_at": iso(opened), "verification": verification,
            "verified_at": iso(verified_at) if verified_at is not None else None, "repeat_of": repeat_of,
            "evidence": evidence or []}


def test_quality_figures_by_grid_team_and_category_and_the_order_page(tmp_path):
    receiver = start_receiver(tmp_path / "receiver.db", "--token", "secret")
    auth = {"Authorization": "Bearer secret"}
    try:
        proof = [{"device": "MH-0001", "rule": "cover_tilted", "metric": "open", "value": 0.0, "at": iso(1),
                  "condition": "tilt_deg < 5 and open == 0"}]
        revisions = [
            # A: resolved, verified; its problem back 3 days later (order D, marked) and again 20 days later (E)
            revision("A", 1, "opened", "opened"), revision("A", 2, "resolved", "resolved"),
            revision("A", 3, "verified", "resolved", verified_at=1, evidence=proof),
            revision("D", 1, "opened", "opened", opened=4, repeat_of="A"),
            revision("E", 1, "opened", "opened", opened=21),
            # B: resolved twice: not fixed, then unverified (grid G02, another team)
            revision("B", 1, "opened", "opened", device="MH-0002", grid="G02", team="team-2"),
            revision("B", 2, "resolved", "resolved", device="MH-0002", grid="G02", team="team-2"),
            revision("B", 3, "not_fixed", "dispatched", device="MH-0002", grid="G02", team="team-2"),
            revision("B", 4, "resolved", "resolved", device="MH-0002", grid="G02", team="team-2"),
            revision("B", 5, "unverified", "resolved", device="MH-0002", grid="G02", team="team-2"),
            # C: a bin, resolved and still being re-checked
            revision("C", 1, "opened", "opened", device="BIN-0001", category="bin_overflow"),
            revision("C", 2, "resolved", "resolved", device="BIN-0001", category="bin_overflow"),
        ]
        answer = requests.post(f"{receiver.url}/api/v1/uplink", json={"gateway": "gw-1", "revisions": revisions},
                               headers=auth, timeout=10)
        assert answer.status_code == 200, answer.text
        assert requests.get(f"{receiver.url}/api/v1/quality", timeout=10).status_code == 401
        quality = requests.get(f"{receiver.url}/api/v1/quality", headers=auth, timeout=10).json()
        overall = quality["overall"]
        assert (overall["resolutions"], overall["checked"], overall["verified"], overall["not_fixed"],
                overall["unverified"]) == (4, 3, 1, 1, 1)
        assert (overall["verified_share"], overall["not_fixed_share"]) == (0.3333, 0.3333)
        assert overall["repeats_marked"] == 1
        assert (overall["repeat_rate_7d"], overall["repeat_rate_30d"]) == (1.0, 1.0)  # A's problem came back
        g01, g02 = quality["by_grid"]["G01"], quality["by_grid"]["G02"]
        assert (g01["resolutions"], g01["verified"], g01["checked"]) == (2, 1, 1)
        assert (g02["resolutions"], g02["not_fixed"], g02["unverified"], g02["repeat_rate_7d"]) == (2, 1, 1, None)
        assert quality["by_team"]["team-2"]["not_fixed_share"] == 0.5
        assert quality["by_category"]["bin_overflow"]["resolutions"] == 1
        assert quality["by_category"]["bin_overflow"]["checked"] == 0

        # the page: figures, re-check column and links, everything escaped; the order's own page
        assert requests.get(receiver.url, timeout=10).status_code == 401
        page = requests.get(receiver.url, headers=auth, timeout=10).text
        assert "Fixed means fixed" in page and "verified by sensors" in page and "unverified (device silent)" in page
        assert "<b>A</b>" not in page and "&lt;b&gt;A&lt;/b&gt;" in page
        assert "href='/orders/A'" in page
        assert requests.get(f"{receiver.url}/orders/A", timeout=10).status_code == 401
        order = requests.get(f"{receiver.url}/orders/A", headers=auth, timeout=10)
        assert order.status_code == 200
        assert "verified" in order.text and "open = 0.0" in order.text and "tilt_deg &lt; 5 and open == 0" in order.text
        repeat = requests.get(f"{receiver.url}/orders/D", headers=auth, timeout=10).text
        assert "href='/orders/A'" in repeat
        assert requests.get(f"{receiver.url}/orders/nope", headers=auth, timeout=10).status_code == 404
    finally:
        receiver.process.terminate()
        receiver.process.wait(timeout=10)
