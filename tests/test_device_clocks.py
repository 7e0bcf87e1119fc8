"""Wrong device clocks: what the gateway does with each (docs/ingest.md, "Device clocks").

Each case sends a cover's report with a wrong time, then a real alarm from the same cover
(two tilted reports 11 s apart in device time, the shipped cover_tilted rule) and one from
another cover; both orders must reach the receiver exactly once. A real Mosquitto, a real
receiver process, the agent in this process on a real gateway.db.
"""

from __future__ import annotations

import time

import orjson
import pytest

from conftest import running_agent, wait_until, write_gateway_config

COVERS = [f"MH-{n:04d}" for n in range(1, 25)]


def publish(client, device: str, ts, readings: dict) -> None:
    body = orjson.dumps({"device": device, "ts": ts, "readings": readings}) if not isinstance(ts, bytes) else ts
    client.publish(f"devices/{device}/telemetry", body, qos=1).wait_for_publish(5)


def alarm(client, device: str, at: float) -> None:
    publish(client, device, at, {"tilt_deg": 31.0, "open": 1})
    publish(client, device, at + 11.0, {"tilt_deg": 32.0, "open": 1})


def opened(receiver, device: str) -> list[dict]:
    return [r for r in receiver.revisions() if r["device"] == device and r["change"] == "opened"]


@pytest.fixture(scope="module")
def street(tmp_path_factory, mosquitto):
    from conftest import start_receiver

    folder = tmp_path_factory.mktemp("clocks")
    receiver = start_receiver(folder / "receiver.db")
    config = write_gateway_config(folder, mosquitto.url, receiver.url)
    with running_agent(config, mosquitto) as (agent, client):
        yield agent, client, receiver
    receiver.process.terminate()
    receiver.process.wait(10)


CASES = {
    # name: (the wrong time, from the gateway's clock now; what the gateway does with that report)
    "in milliseconds": (lambda now: now * 1000, "timestamp_out_of_range"),
    "in microseconds": (lambda now: now * 1e6, "timestamp_out_of_range"),
    "reset to 1970": (lambda now: 12.0, "timestamp_out_of_range"),
    "year 2100": (lambda now: 4102444800.0, "timestamp_out_of_range"),
    "1e300": (lambda now: 1e300, "timestamp_out_of_range"),
    "eight days behind": (lambda now: now - 8 * 86400, "timestamp_out_of_range"),
    "a day ahead, once": (lambda now: now + 86400, None),  # accepted; the device's next true time starts it afresh
    "an hour ahead, once": (lambda now: now + 3600, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_wrong_clock_neither_stops_the_gateway_nor_blinds_the_device(street, case):
    agent, client, receiver = street
    n = list(CASES).index(case)
    device, other = COVERS[2 * n], COVERS[2 * n + 1]
    wrong, reason = CASES[case]
    now = time.time()
    before = agent.stats.quarantined[reason] if reason else None
    publish(client, device, wrong(now), {"tilt_deg": 1.0, "open": 0})
    if reason:
        assert wait_until(lambda: agent.stats.quarantined[reason] > before, 10)
    alarm(client, device, now)
    alarm(client, other, now)
    assert wait_until(lambda: len(opened(receiver, device)) == 1 and len(opened(receiver, other)) == 1, 20), case
    time.sleep(0.5)  # nothing more may come
    assert len(opened(receiver, device)) == 1 and len(opened(receiver, other)) == 1
    assert agent.health.healthy() or all(p["name"] not in ("engine", "ingest") for p in agent.health.parts()
                                         if p["state"] != "ok")


def test_a_clock_that_runs_ahead_steadily_is_that_device_s_time(street):
    """A device whose clock is 5 minutes fast, always: its readings are used at its own time."""
    agent, client, receiver = street
    device = COVERS[20]
    start = time.time() + 300
    resets = agent.stats.clock_resets
    alarm(client, device, start)
    assert wait_until(lambda: len(opened(receiver, device)) == 1, 20)
    assert opened(receiver, device)[0]["opened_at"].startswith(time.strftime("%Y-%m-%dT", time.gmtime(start + 11)))
    assert agent.stats.clock_resets == resets  # a clock that is steadily off is not a clock that came back
