"""``python -m firmware_sim``: run a simulated street against an MQTT broker."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import click
import paho.mqtt.client as mqtt

from edge.paths import default_registry
from edge.registry import RegistryError
from firmware_sim.street import Event, Street


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--broker", default="mqtt://127.0.0.1:1883", show_default=True, help="MQTT broker URL, mqtt://host:port.")
@click.option("--registry", "registry_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Device registry CSV to simulate (default: the project's config/devices.csv).")
@click.option("--seconds", default=60.0, show_default=True, type=click.FloatRange(min=0.1), help="How long to run.")
@click.option("--interval", default=5.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Seconds between a device's routine reports.")
@click.option("--alarm-interval", default=1.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Seconds between reports of a device in alarm.")
@click.option("--event", "events", multiple=True, metavar="KIND:DEVICE@START[+DURATION]",
              help="Inject an event (repeatable): open_cover:MH-0003@5+20 opens cover MH-0003 5 s in, "
                   "for 20 s; fill_bin:BIN-0002@8 fills bin BIN-0002 past 85 % 8 s in.")
@click.option("--seed", default=1, show_default=True, help="Random seed; the same seed gives the same street.")
def main(broker: str, registry_path: Path | None, seconds: float, interval: float, alarm_interval: float,
         events: tuple[str, ...], seed: int) -> None:
    """Simulate a street of smart manhole covers and bins publishing JSON telemetry.

    Each device publishes to devices/<id>/telemetry (QoS 1) every --interval seconds, and
    every --alarm-interval seconds while an injected event keeps it in alarm.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s firmware_sim %(message)s")
    url = urlparse(broker)
    if url.scheme != "mqtt" or not url.hostname:
        raise click.BadParameter(f"expected mqtt://host:port, got {broker!r}", param_hint="--broker")
    try:
        parsed = [Event.parse(e) for e in events]
        street = Street(registry_path or default_registry(), parsed, interval, alarm_interval, seed)
    except (ValueError, RegistryError) as error:
        raise click.ClickException(str(error)) from None

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"firmware-sim-{seed}-{time.time_ns() % 10**9}")
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set() if not rc.is_failure else None
    client.max_queued_messages_set(0)
    try:
        client.connect(url.hostname, url.port or 1883, keepalive=30)
    except OSError as error:
        raise click.ClickException(f"cannot reach the MQTT broker at {broker}: {error}") from None
    client.loop_start()
    if not connected.wait(10):
        raise click.ClickException(f"the MQTT broker at {broker} did not accept the connection")
    click.echo(f"simulating {len(street.devices)} devices on {broker} for {seconds:g}s", err=True)
    try:
        street.run(client, seconds, stop)
    except KeyboardInterrupt:
        pass
    finally:
        unacknowledged = street.flush(timeout=10)
        client.disconnect()
        client.loop_stop()
    click.echo(f"published {street.published} messages", err=True)
    if unacknowledged:
        raise click.ClickException(f"{unacknowledged} messages were not acknowledged by the broker")
    sys.exit(0)


if __name__ == "__main__":
    main()
