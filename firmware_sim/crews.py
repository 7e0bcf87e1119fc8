"""Repair crews: the command centre's side of a scenario event with a ``crew``.

When a crew's time comes, the simulator plays the platform: it finds the order the gateway
opened for the event's device (through the reference receiver's API) and moves it to
``resolved`` as a command centre would (accepted, dispatched, resolved), so that the gateway
re-checks the fix on the device's readings (docs/rules.md, "Fixed means fixed"). What the
device does after that (fixed, still broken, silent, breaking again) is the scenario's.
"""

from __future__ import annotations

import time

import requests

# What the platform does to bring an order in each state to resolved.
PATH_TO_RESOLVED = {
    "opened": ("accept", "dispatch", "resolve"),
    "cleared": ("accept", "dispatch", "resolve"),
    "accepted": ("dispatch", "resolve"),
    "dispatched": ("resolve",),
}


class CrewError(Exception):
    """The platform could not be told (no order for the device, the receiver refused or is down)."""


class Platform:
    """The reference receiver's API, as a command centre uses it to mark a repair done."""

    def __init__(self, url: str, token: str = "", wait: float = 10.0, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.wait = wait  # how long (real seconds) to wait for the gateway's order to arrive
        self.timeout = timeout

    def _order_for(self, device: str, rules: list[str]) -> dict | None:
        answer = requests.get(f"{self.url}/api/v1/orders", headers=self.headers, timeout=self.timeout)
        if answer.status_code != 200:
            raise CrewError(f"GET /api/v1/orders answered {answer.status_code}: {answer.text[:200]}")
        mine = [o for o in answer.json()["orders"]
                if o.get("state") in PATH_TO_RESOLVED and (o.get("device") == device or any(
                    e.get("device") == device for e in o.get("evidence") or []))
                and (not rules or o.get("rule") in rules or any(e.get("rule") in rules for e in o.get("evidence") or []))]
        return max(mine, key=lambda o: str(o.get("opened_at", ""))) if mine else None

    def resolve(self, device: str, rules: list[str]) -> str:
        """Resolve the newest live order of ``device`` (one of ``rules``); returns its id."""
        deadline = time.monotonic() + self.wait
        try:
            order = self._order_for(device, rules)
            while order is None and time.monotonic() < deadline:
                time.sleep(0.1)
                order = self._order_for(device, rules)
            if order is None:
                raise CrewError(f"no live order for {device} ({', '.join(rules) or 'any rule'}) at the platform")
            for action in PATH_TO_RESOLVED[order["state"]]:
                answer = requests.post(f"{self.url}/api/v1/orders/{order['order_id']}/{action}", headers=self.headers,
                                       json={"note": f"simulated crew on {device}"}, timeout=self.timeout)
                if answer.status_code != 200:
                    raise CrewError(f"{action} {order['order_id']}: the platform answered {answer.status_code}: "
                                    f"{answer.text[:200]}")
        except requests.RequestException as error:
            raise CrewError(f"cannot reach the platform at {self.url}: {error}") from None
        return order["order_id"]
