"""``python -m uplink.receiver``: run the reference central platform."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import sys
import threading

import click

from uplink.receiver.limits import Limits
from uplink.receiver.mqtt_listener import MqttListener, retire
from uplink.receiver.server import ReceiverServer, is_loopback, listen
from uplink.receiver.workers import supervise
from uplink.receiver.store import ReceiverStore, StoreError

log = logging.getLogger("uplink.receiver")
DEFAULTS = Limits()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on; 0 picks a free one (printed at start).")
@click.option("--db", "db_path", default="receiver.db", show_default=True, metavar="FILE|URL",
              help="Where orders are kept: a SQLite file (the embedded default), or postgresql://user@host:port/name "
                   "for production and several workers. An older receiver's database is migrated, never recreated.")
@click.option("--token", default=lambda: os.environ.get("RECEIVER_TOKEN", ""),
              help="Bearer token for the API and the orders page (default: $RECEIVER_TOKEN; empty: no auth, "
                   "only sensible on 127.0.0.1).")
@click.option("--mqtt", "mqtt_url", default=None, metavar="URL",
              help="Also take orders over MQTT from this broker (mqtt://[user:password@]host:port), topics "
                   "edge/+/orders/+, edge/+/telemetry/+, edge/+/reports and edge/+/health as MQTT 5 shared "
                   "subscriptions ($share/GROUP/...), and publish decisions to edge/<gateway>/changes.")
@click.option("--mqtt-group", default="platform", show_default=True,
              help="Shared subscription group of --mqtt: the platform's listeners (every worker, every process "
                   "given the same group) split the gateways' messages between them.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Serve HTTPS with this certificate (PEM); the key in --tls-key or in the same file.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None, help="Private key (PEM) of --tls-cert.")
@click.option("--max-body", default=DEFAULTS.max_body, show_default=True, type=click.IntRange(1024),
              help="Largest request body in bytes (an uplink batch); larger gets 413. Rule files: at most 1 MiB.")
@click.option("--max-connections", default=DEFAULTS.max_connections, show_default=True, type=click.IntRange(1),
              help="Open connections and requests in progress; beyond, new requests get 503.")
@click.option("--max-uplinks", default=DEFAULTS.max_uplinks, show_default=True, type=click.IntRange(1),
              help="Uplink batches one worker stores at once; beyond, 503 with Retry-After: 1 at once, and the "
                   "gateway sends it again after a pause (rather than waiting in a queue past its timeout).")
@click.option("--idle-timeout", default=DEFAULTS.head_timeout, show_default=True, type=click.FloatRange(0.1),
              help="Seconds a client may take to send a request's head (from connecting or the last answer: "
                   "then the connection is closed) and each piece of a body (then 408). An idle connection "
                   "after an answer is closed after 5 s.")
@click.option("--mqtt-client-id", default="reference-receiver", show_default=True,
              help="MQTT client id of --mqtt (its persistent session on the broker): one per receiver; "
                   "with --workers N, worker n uses ID-n.")
@click.option("--db-wait", default=10.0, show_default=True, type=click.FloatRange(0),
              help="PostgreSQL: seconds a request waits for a lost database (a restart, a failover) before the "
                   "answer is 503 and the gateway sends it again later.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Processes serving the API (and, with --mqtt, listening) on the same port and database; a worker "
                   "that dies is started again. Use PostgreSQL for more than one (SQLite serialises their writes).")
@click.option("--debug", is_flag=True, help="Log every request.")
def main(host: str, port: int, db_path: str, token: str, mqtt_url: str | None, mqtt_group: str, tls_cert: str | None,
         tls_key: str | None, max_body: int, max_connections: int, max_uplinks: int, idle_timeout: float, mqtt_client_id: str,
         db_wait: float, workers: int, debug: bool) -> None:
    """Reference central platform: stores work-order revisions uplinked by gateways.

    Drops a duplicate by (order id, revision) and acknowledges it all the same, so a
    gateway that resends after a crash is harmless. Refuses bad input with an answer and
    counts it (GET /api/v1/stats). Stop it with Ctrl-C or SIGTERM.
    """
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s receiver %(levelname)s %(message)s")
    if not debug:
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    try:
        store = ReceiverStore(db_path, retry_for=db_wait)  # migrates the database once, before any worker starts
    except (StoreError, OSError) as error:
        raise click.ClickException(str(error)) from None
    limits = Limits(max_body=max_body, max_connections=max_connections, max_uplinks=max_uplinks, head_timeout=idle_timeout,
                    body_timeout=idle_timeout)
    if not token and not is_loopback(host):
        log.warning("listening on %s without a token: anyone who can reach this address can read every order "
                    "(with its address) and push rule files to the gateways; set --token or $RECEIVER_TOKEN", host)
    if mqtt_url:
        try:
            MqttListener.check_settings(mqtt_url, mqtt_group)
        except ValueError as error:
            store.close()
            raise click.ClickException(str(error)) from None
        _retire_sessions(store, mqtt_url, mqtt_client_id, mqtt_group, workers)

    def serve(store: ReceiverStore, sock: socket.socket | None, client_id: str, announce: bool) -> None:
        try:
            server = ReceiverServer(host, port, store, token, tls_cert, tls_key, limits=limits, access_log=debug,
                                    sock=sock)
        except OSError as error:
            store.close()
            raise click.ClickException(f"cannot listen on {host}:{port}: {error}") from None
        listener = None
        if mqtt_url:
            store.note_listener(client_id, mqtt_group)
            listener = MqttListener(mqtt_url, store, client_id=client_id, group=mqtt_group)
            server.on_change = listener.publish_change
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        thread = server.start_background()
        if announce:
            click.echo(f"receiver listening on {server.url} (database {store.where})")
        try:
            while not stop.wait(0.5):
                if not thread.is_alive():
                    raise click.ClickException("the HTTP server stopped; see the log above")
        finally:
            if listener is not None:
                listener.close()
            server.shutdown()
            store.close()

    if workers == 1:
        serve(store, None, mqtt_client_id, announce=True)
        return
    store.close()
    try:
        sock = listen(host, port)
    except OSError as error:
        raise click.ClickException(f"cannot listen on {host}:{port}: {error}") from None
    bound, bound_port = sock.getsockname()[:2]
    scheme = "https" if tls_cert else "http"
    shown = f"[{bound}]" if ":" in bound else bound
    click.echo(f"receiver listening on {scheme}://{shown}:{bound_port} (database {store.where}, {workers} workers)")
    sys.stdout.flush()

    def worker(number: int, sock: socket.socket) -> None:
        try:
            mine = ReceiverStore(db_path, retry_for=db_wait)
        except (StoreError, OSError) as error:
            raise click.ClickException(str(error)) from None
        serve(mine, sock, f"{mqtt_client_id}-{number}", announce=False)

    supervise(workers, sock, worker)


def _client_ids(base: str, workers: int) -> list[str]:
    return [base] if workers == 1 else [f"{base}-{n}" for n in range(1, workers + 1)]


def _retire_sessions(store: ReceiverStore, url: str, base: str, group: str, workers: int) -> None:
    """The sessions this platform's earlier runs left that no worker will use now (it ran more workers,
    or one where it now runs several): their messages are taken and stored, then the sessions end."""
    wanted = set(_client_ids(base, workers))
    ours = re.compile(rf"{re.escape(base)}(-[0-9]+)?")
    for row in store.listeners():
        if row["client_id"] not in wanted and ours.fullmatch(row["client_id"]):
            retire(url, store, row["client_id"], row["grp"])


if __name__ == "__main__":
    main()
