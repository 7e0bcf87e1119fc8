"""``edge demo``: the whole system on one machine, with nothing else installed.

A private broker (Mosquitto if installed, else the embedded amqtt), the reference central
receiver, the gateway, and a simulated street with a few injected problems. Shows progress,
stops by itself, and ends with a summary. Success means every order the gateway opened was
acknowledged by the receiver.
"""

from __future__ import annotations

import logging
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import requests

from edge.agent import Agent
from edge.broker import Broker, free_port, start_private_broker, wait_for_port
from edge.config import load_config
from edge.paths import default_registry, default_rules
from edge.registry import Registry

MIN_SECONDS = 15.0  # a cover must stay tilted 10 s before its order opens

GATEWAY_TOML = """\
# Written by `edge demo`.
[gateway]
id = "gw-demo"
data_dir = "data"

[registry]
path = "{registry}"

[rules]
paths = ["{rules}"]

[mqtt]
url = "{broker}"
client_id = "edge-gw-demo-{nonce}"

[uplink]
url = "{receiver}"

[status]
listen = "127.0.0.1:0"   # any free port; the demo prints it
"""


@dataclass
class Summary:
    devices: int
    messages: int
    readings: int
    alerts: int
    opened: int
    cleared: int
    uplinked: int
    acknowledged: int
    receiver_duplicates: int
    unacknowledged_ids: list[str]

    @property
    def ok(self) -> bool:
        return self.opened > 0 and not self.unacknowledged_ids and self.acknowledged >= self.opened

    def lines(self) -> list[str]:
        return [
            "summary",
            f"  devices            {self.devices}",
            f"  messages           {self.messages}",
            f"  readings           {self.readings}",
            f"  alerts raised      {self.alerts} (rules firing on a device; one order per problem)",
            f"  orders opened      {self.opened}",
            f"  orders cleared     {self.cleared}",
            f"  revisions uplinked {self.uplinked}",
            f"  orders acknowledged by the receiver {self.acknowledged}"
            + (f" (duplicates dropped: {self.receiver_duplicates})" if self.receiver_duplicates else ""),
            "  result: every opened order was acknowledged" if self.ok
            else "  result: FAILED, not acknowledged: " + (", ".join(self.unacknowledged_ids) or "no order opened"),
        ]


def demo_events(seconds: float, registry: Registry) -> list[str]:
    """The problems injected into the street: covers knocked open, bins filling up."""
    covers = [d.id for d in registry.devices if d.kind == "manhole_cover"]
    bins = [d.id for d in registry.devices if d.kind == "bin"]
    events = []
    if covers:
        events.append(f"open_cover:{covers[2 % len(covers)]}@1")
    if bins:
        events.append(f"fill_bin:{bins[4 % len(bins)]}@2")
    if len(covers) > 1 and seconds >= 30:
        # opened, then put back: the order opens after 10 s and clears 5 s after the cover is level
        events.append(f"open_cover:{covers[13 % len(covers)]}@3+12")
    if len(bins) > 1:
        events.append(f"fill_bin:{bins[19 % len(bins)]}@4")
    return events


class _Progress:
    def __init__(self, stream, interactive: bool):
        self.stream = stream
        self.interactive = interactive
        self.last_print = 0.0

    def show(self, text: str, force: bool = False) -> None:
        if self.interactive:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
        elif force or time.monotonic() - self.last_print >= 5:
            self.stream.write(text + "\n")
            self.stream.flush()
            self.last_print = time.monotonic()

    def done(self) -> None:
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()


def _start_receiver(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = (workdir / "receiver.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "uplink.receiver", "--host", "127.0.0.1", "--port", str(port),
         "--db", str(workdir / "receiver.db")],
        stdout=log, stderr=subprocess.STDOUT,
    )
    if not wait_for_port("127.0.0.1", port, 20, process):
        process.kill()
        raise RuntimeError(f"the reference receiver did not start; see {workdir / 'receiver.log'}")
    return process, f"http://127.0.0.1:{port}"


def _console_user(db: Path) -> tuple[str, str]:
    """An admin of the demo's console, with a new random password: (name, password)."""
    from uplink.receiver.console.auth import UserError, add_user, set_password
    from uplink.receiver.store import ReceiverStore

    password = secrets.token_urlsafe(9)
    store = ReceiverStore(db)
    try:
        try:
            add_user(store, "demo", password, "admin")
        except UserError:  # a demo run again in the same folder
            set_password(store, "demo", password)
    finally:
        store.close()
    return "demo", password


def _stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_demo(
    seconds: float,
    broker_url: str | None = None,
    workdir: Path | None = None,
    out=sys.stdout,
    say: Callable[[str], None] | None = None,
    embedded_broker: bool = False,
    keep: threading.Event | None = None,
    on_summary: Callable[[Summary], None] | None = None,
) -> Summary:
    """The demo; with ``keep``, everything goes on running after the summary (``on_summary``) until
    ``keep`` is set (edge demo --keep: Ctrl-C), so the URLs it printed can be looked at."""
    say = say or (lambda text: print(text, file=out, flush=True))
    owned_tmp = None
    if workdir is None:
        owned_tmp = tempfile.TemporaryDirectory(prefix="edge-demo-")
        workdir = Path(owned_tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    logging.getLogger().handlers.clear()
    logging.basicConfig(
        filename=str(workdir / "gateway.log"), level=logging.INFO,
        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s",
    )
    broker: Broker | None = None
    receiver = simulator = None
    agent: Agent | None = None
    agent_thread: threading.Thread | None = None
    try:
        if broker_url is None:
            broker = start_private_broker(workdir / "broker", embedded=embedded_broker)
            broker_url = broker.url
            say(f"broker     {broker.name} on {broker.url}")
        else:
            say(f"broker     {broker_url} (given)")
        receiver, receiver_url = _start_receiver(workdir)
        say(f"receiver   {receiver_url} (python -m uplink.receiver)")
        console_login = _console_user(workdir / "receiver.db")
        say(f"console    {receiver_url}/console/ (user {console_login[0]}, password {console_login[1]})")

        registry_path, rules_path = default_registry(), default_rules()
        config_path = workdir / "gateway.toml"
        config_path.write_text(GATEWAY_TOML.format(
            registry=registry_path.as_posix(), rules=rules_path.as_posix(), broker=broker_url,
            receiver=receiver_url, nonce=time.time_ns() % 10**9,
        ))
        agent = Agent(load_config(config_path))
        agent_thread = threading.Thread(target=agent.run, name="gateway", daemon=True)
        agent_thread.start()
        if not agent.ready.wait(60) or not agent.subscriber.connected.wait(20):
            raise RuntimeError(f"the gateway did not start; see {workdir / 'gateway.log'}")
        say(f"gateway    {len(agent.registry)} devices, {len(agent.rules)} rules from {rules_path}, files in {workdir}")
        if agent.status_server is not None:
            say(f"status     http://127.0.0.1:{agent.status_server.port}/ (metrics at /metrics)")

        events = demo_events(seconds, agent.registry)
        sim_log = (workdir / "firmware_sim.log").open("ab")
        simulator = subprocess.Popen(
            [sys.executable, "-m", "firmware_sim", "--broker", broker_url, "--registry", str(registry_path),
             "--seconds", str(seconds), "--interval", "2", "--alarm-interval", "1"]
            + [arg for event in events for arg in ("--event", event)],
            stdout=sim_log, stderr=subprocess.STDOUT,
        )
        say(f"simulator  street of {len(agent.registry)} devices for {seconds:g}s; events: {', '.join(events)}")

        progress = _Progress(out, interactive=out.isatty())
        start = time.monotonic()
        while simulator.poll() is None and time.monotonic() - start < seconds + 30:
            elapsed = time.monotonic() - start
            stats = agent.stats
            progress.show(
                f"[{min(elapsed, seconds):4.0f}s/{seconds:g}s] readings {stats.readings} · orders opened "
                f"{stats.orders_opened} · cleared {stats.orders_cleared} · uplinked {agent.uplinked}"
            )
            time.sleep(0.25)
        if simulator.returncode not in (0, None):
            say(f"\nwarning: the simulator exited with status {simulator.returncode}; see {workdir / 'firmware_sim.log'}")

        # Let the last messages reach the engine and the outbox drain to the receiver.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.25)
            if agent.inbox.empty() and agent.sender.uplinked >= agent.stats.orders_opened + agent.stats.orders_cleared + agent.stats.orders_reopened:
                break
        progress.show(
            f"[{seconds:4.0f}s/{seconds:g}s] done; readings {agent.stats.readings} · orders opened {agent.stats.orders_opened}"
            f" · cleared {agent.stats.orders_cleared} · uplinked {agent.uplinked}",
            force=True,
        )
        progress.done()
        if keep is None:
            agent.stop()
            agent_thread.join(timeout=30)

        opened_ids = _gateway_order_ids(agent.config.database_path)
        received = requests.get(f"{receiver_url}/api/v1/orders", timeout=10).json()["orders"]
        stats = requests.get(f"{receiver_url}/api/v1/stats", timeout=10).json()
        received_ids = {order["order_id"] for order in received}
        summary = Summary(
            devices=len(agent.registry),
            messages=agent.stats.messages,
            readings=agent.stats.readings,
            alerts=agent.stats.alerts_raised,
            opened=agent.stats.orders_opened,
            cleared=agent.stats.orders_cleared,
            uplinked=agent.uplinked,
            acknowledged=len(received_ids & set(opened_ids)),
            receiver_duplicates=stats["duplicates"],
            unacknowledged_ids=sorted(set(opened_ids) - received_ids),
        )
        if keep is not None:
            if on_summary is not None:
                on_summary(summary)
            say(f"\nstill running: console {receiver_url}/console/ (user {console_login[0]}, password "
                f"{console_login[1]}), receiver {receiver_url}/, gateway status "
                f"{f'http://127.0.0.1:{agent.status_server.port}/' if agent.status_server else '(off)'}, files in "
                f"{workdir}; Ctrl-C to stop")
            keep.wait()
        return summary
    finally:
        if agent is not None and agent_thread is not None and agent_thread.is_alive():
            agent.stop()
            agent_thread.join(timeout=30)
        _stop(simulator)
        _stop(receiver)
        if broker is not None:
            broker.stop()
        logging.shutdown()
        if owned_tmp is not None:
            owned_tmp.cleanup()


def _gateway_order_ids(database_path: Path) -> list[str]:
    from edge.outbox import open_database

    db = open_database(database_path)
    try:
        return [row[0] for row in db.execute("SELECT id FROM orders").fetchall()]
    finally:
        db.conn.close()
