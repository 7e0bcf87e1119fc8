"""``python -m uplink.receiver``: run the reference central platform."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import click

from uplink.receiver.app import ReceiverServer
from uplink.receiver.store import ReceiverStore


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on; 0 picks a free one (printed at start).")
@click.option("--db", "db_path", default="receiver.db", show_default=True, type=click.Path(dir_okay=False, path_type=Path),
              help="SQLite file the received orders are kept in.")
@click.option("--token", default=lambda: os.environ.get("RECEIVER_TOKEN", ""),
              help="Bearer token gateways must send (default: $RECEIVER_TOKEN; empty: no auth).")
@click.option("--mqtt", "mqtt_url", default=None, metavar="URL",
              help="Also take orders over MQTT from this broker (mqtt://host:port), topics edge/+/orders/+ "
                   "and edge/+/telemetry/+, and publish decisions to edge/<gateway>/changes.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Serve HTTPS with this certificate (PEM); the key in --tls-key or in the same file.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None, help="Private key (PEM) of --tls-cert.")
@click.option("--debug", is_flag=True, help="Log every request.")
def main(host: str, port: int, db_path: Path, token: str, mqtt_url: str | None, tls_cert: str | None,
         tls_key: str | None, debug: bool) -> None:
    """Reference central platform: stores work-order revisions uplinked by gateways.

    Drops a duplicate by (order id, revision) and acknowledges it all the same, so a
    gateway that resends after a crash is harmless. Stop it with Ctrl-C or SIGTERM.
    """
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(asctime)s receiver %(levelname)s %(message)s")
    store = ReceiverStore(db_path)
    server = ReceiverServer(host, port, store, token, tls_cert, tls_key)
    listener = None
    if mqtt_url:
        from uplink.receiver.mqtt_listener import MqttListener

        listener = MqttListener(mqtt_url, store)
        server.on_change = listener.publish_change
    signal.signal(signal.SIGTERM, _interrupt)
    click.echo(f"receiver listening on {server.url} (database {db_path})", err=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if listener is not None:
            listener.close()
        server.server_close()
        store.close()


if __name__ == "__main__":
    main()
