"""Command line of the simulator: the original street command and the scenario tools."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path

import click
import orjson

from edge.paths import default_registry
from edge.registry import RegistryError
from firmware_sim.scenario import ScenarioError, load_scenario, start_time
from firmware_sim.street import Event, legacy_scenario

SUBCOMMANDS = ("scenario", "registry", "score")
CONTEXT = {"help_option_names": ["-h", "--help"]}


def _stop_on_sigterm() -> threading.Event:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    return stop


def _check_broker(broker: str | None) -> None:
    from firmware_sim.mqtt_sink import parse_broker

    if broker is not None:
        try:
            parse_broker(broker)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--broker") from None


@click.command(context_settings=CONTEXT, epilog="Subcommands: python -m firmware_sim scenario|registry|score --help")
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
                   "for 20 s; fill_bin:BIN-0002@8 fills bin BIN-0002 past 85 % 8 s in. Scenario event kinds "
                   "(gas_leak, bin_fire, illegal_parking, ...) work too.")
@click.option("--seed", default=1, show_default=True, help="Random seed; the same seed gives the same street.")
@click.option("--truth", "truth_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the ground truth (JSON Lines) here.")
def street(broker: str, registry_path: Path | None, seconds: float, interval: float, alarm_interval: float,
           events: tuple[str, ...], seed: int, truth_path: Path | None) -> None:
    """Simulate a street of smart manhole covers and bins publishing JSON telemetry, in real time.

    Each device publishes to devices/<id>/telemetry (QoS 1) every --interval seconds, and
    every --alarm-interval seconds while an injected event keeps it in alarm.
    """
    from firmware_sim.mqtt_sink import BrokerUnavailable
    from firmware_sim.runner import run_scenario
    from firmware_sim.truth import write_truth

    logging.basicConfig(level=logging.INFO, format="%(asctime)s firmware_sim %(message)s")
    _check_broker(broker)
    try:
        scenario = legacy_scenario(registry_path or default_registry(), [Event.parse(e) for e in events],
                                   seconds, interval, alarm_interval, seed)
        stop = _stop_on_sigterm()
        click.echo(f"simulating {registry_path or default_registry()} on {broker} for {seconds:g}s", err=True)
        result = run_scenario(scenario, broker=broker, stop=stop)
    except (ValueError, RegistryError, ScenarioError) as error:
        raise click.ClickException(str(error)) from None
    except BrokerUnavailable as error:
        raise click.ClickException(str(error)) from None
    except KeyboardInterrupt:
        sys.exit(130)
    if truth_path is not None:
        write_truth(truth_path, result.truth)
    click.echo(f"published {result.stats.published} messages", err=True)
    if result.unacknowledged:
        raise click.ClickException(f"{result.unacknowledged} messages were not acknowledged by the broker")


@click.group(context_settings=CONTEXT)
def cli() -> None:
    """Firmware simulator: scenarios of a whole street, their ground truth, and scoring."""


def _speed(value: str | None):
    if value is None:
        return None
    if value == "max":
        return "max"
    try:
        speed = float(value)
    except ValueError:
        raise click.BadParameter("a number (device seconds per real second) or 'max'", param_hint="--speed") from None
    if speed <= 0:
        raise click.BadParameter("must be > 0", param_hint="--speed")
    return speed


def _load(path: Path, seed: int | None, duration: str | None):
    from firmware_sim.scenario import parse_duration

    try:
        scenario = load_scenario(path)
        if seed is not None:
            scenario.seed = seed
        if duration is not None:
            scenario.duration = parse_duration(duration)
    except (ScenarioError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    return scenario


@cli.command("scenario", context_settings=CONTEXT)
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--broker", default=None, help="MQTT broker URL; without it nothing is published, only files written.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for truth.jsonl, readings.jsonl, registry.csv, run.json (and modbus.json).")
@click.option("--speed", default=None, help="Device seconds per real second (1 real time, 1440 a day a minute) or 'max'; "
                                            "default: the scenario's.")
@click.option("--start", default=None, help="Device time of the start: 'now', 'now-DURATION' (now-156h) or ISO 8601; "
                                            "default: the scenario's.")
@click.option("--seed", type=int, default=None, help="Override the scenario's seed.")
@click.option("--duration", default=None, help="Override the scenario's duration (e.g. 2h).")
@click.option("--csv", "write_csv", is_flag=True, help="Also write readings.csv (ts,device,metric,value).")
@click.option("--modbus-port", default=None, help="Serve Modbus devices on this serial port instead of a new pty.")
@click.option("--linger", default=0.0, type=click.FloatRange(min=0), help="Keep the Modbus bus up this long after the run.")
@click.option("--json", "as_json", is_flag=True, help="Print the run's figures as JSON.")
@click.option("--platform", "platform_url", default=None,
              help="The reference receiver's URL: events with a crew resolve their order there (accepted, dispatched, "
                   "resolved), so the gateway re-checks the repair. Without it crews are counted as not sent.")
@click.option("--platform-token", default="", envvar="RECEIVER_TOKEN", show_envvar=True, help="The receiver's token.")
def scenario_command(path: Path, broker: str | None, out: Path | None, speed: str | None, start: str | None,
                     seed: int | None, duration: str | None, write_csv: bool, modbus_port: str | None,
                     linger: float, as_json: bool, platform_url: str | None, platform_token: str) -> None:
    """Run the scenario file PATH: devices, events and faults, with ground truth and recorded readings."""
    from firmware_sim.crews import Platform
    from firmware_sim.mqtt_sink import BrokerUnavailable
    from firmware_sim.runner import run_scenario

    _check_broker(broker)
    scenario = _load(path, seed, duration)
    try:
        start_ts = start_time(start) if start is not None else None
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--start") from None
    stop = _stop_on_sigterm()

    def progress(simulation, t):
        done = (t - simulation.start) / max(1e-9, simulation.end - simulation.start)
        click.echo(f"[{done:4.0%}] {'published' if broker else 'generated'} {simulation.stats.published}", err=True)

    try:
        result = run_scenario(
            scenario, broker=broker, out=out, speed=_speed(speed), start=start_ts, csv=write_csv, stop=stop,
            modbus_port=modbus_port, linger=linger, progress=progress,
            on_modbus=lambda p: click.echo(f"modbus rtu on {p}", err=True),
            platform=Platform(platform_url, platform_token) if platform_url else None,
        )
    except (ScenarioError, RegistryError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    except BrokerUnavailable as error:
        raise click.ClickException(str(error)) from None
    stats = result.stats
    rate = stats.published / stats.wall_s if stats.wall_s > 0 else 0.0
    figures = {
        "scenario": scenario.name, "devices": len(result.simulation.nodes), "events": len(result.truth),
        "expecting_orders": sum(1 for e in result.truth if e.expect), **stats.as_dict(),
        "publish_rate": round(rate, 1) if broker else None, "broker": broker, "unacknowledged": result.unacknowledged,
    }
    if as_json:
        click.echo(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    else:
        sent = (f"published {stats.published} ({rate:.0f}/s)" if broker else
                f"generated {stats.published} messages (nothing published: no --broker)")
        click.echo(f"{figures['devices']} devices, {stats.device_s / 3600:.2f} h of device time in {stats.wall_s:.1f} s; "
                   f"{sent}, recorded {stats.recorded}, dropped {stats.dropped}, "
                   f"malformed {stats.malformed}, duplicated {stats.duplicated}, delayed {stats.delayed}; "
                   f"{figures['events']} ground-truth events, {figures['expecting_orders']} expecting an order"
                   + (f"; crews {stats.crews} sent, {stats.crew_errors} not" if stats.crews or stats.crew_errors else "")
                   + (f"; files in {out}" if out else ""))
    if result.unacknowledged:
        raise click.ClickException(f"{result.unacknowledged} messages were not acknowledged by the broker")


@cli.command("registry", context_settings=CONTEXT)
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the registry CSV.")
def registry_command(path: Path, output: Path) -> None:
    """Write the device registry CSV of scenario PATH, for the gateway's [registry] path."""
    from firmware_sim.simulation import build_devices, write_registry

    scenario = _load(path, None, None)
    try:
        devices = build_devices(scenario)
    except (ScenarioError, RegistryError) as error:
        raise click.ClickException(str(error)) from None
    write_registry(devices, output)
    click.echo(f"{len(devices)} devices written to {output}", err=True)


@cli.command("score", context_settings=CONTEXT)
@click.option("--truth", "truth_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="The ground truth (truth.jsonl) of a run.")
@click.option("--receiver", default=None, help="The receiver's URL (GET /api/v1/revisions).")
@click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Or the receiver's SQLite file.")
@click.option("--replay", "replay_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Or recorded readings (readings.jsonl): score the orders RULES would open on them, no gateway needed.")
@click.option("--rules", "rules_path", type=click.Path(exists=True, path_type=Path), default=None,
              help="With --replay: the rule files (default: the project's rules/).")
@click.option("--registry", "registry_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="With --replay: the registry (default: registry.csv next to the truth file).")
@click.option("--gateway", default=None, help="Only this gateway's orders (a receiver shared by several gateways).")
@click.option("--token", default=None, help="Bearer token of the receiver (default: $EDGE_UPLINK_TOKEN).")
@click.option("--grace", default="10m", show_default=True,
              help="How long after an event's end an order still counts for it (device time).")
@click.option("--early", default="10m", show_default=True,
              help="How long before an event's start an order still counts for it (a reading's noise crossing a "
                   "threshold a little early).")
@click.option("--json", "as_json", is_flag=True, help="Print the score as JSON.")
def score_command(truth_path: Path, receiver: str | None, db_path: Path | None, replay_path: Path | None,
                  rules_path: Path | None, registry_path: Path | None, gateway: str | None, token: str | None, grace: str,
                  early: str, as_json: bool) -> None:
    """Compare a run's ground truth with the orders the receiver got: found, missed, false, duplicates, delay."""
    from firmware_sim.scenario import parse_duration
    from edge.paths import default_rules
    from firmware_sim.score import (
        ScoreError, of_gateway, orders_from_replay, orders_from_revisions, revisions_from_db, revisions_from_http,
        score,
    )
    from firmware_sim.truth import read_truth

    if sum(x is not None for x in (receiver, db_path, replay_path)) != 1:
        raise click.UsageError("give one of --receiver URL, --db FILE or --replay READINGS")
    if gateway is not None and replay_path is not None:
        raise click.UsageError("--gateway picks orders from a receiver (--receiver or --db), not from --replay")
    try:
        grace_s = parse_duration(grace)
        truth = read_truth(truth_path)
        if replay_path is not None:
            orders = orders_from_replay(rules_path or default_rules(), replay_path,
                                        registry_path or truth_path.parent / "registry.csv")
        elif receiver is not None:
            token = token if token is not None else os.environ.get("EDGE_UPLINK_TOKEN", "")
            orders = orders_from_revisions(of_gateway(revisions_from_http(receiver, token), gateway))
        else:
            orders = orders_from_revisions(of_gateway(revisions_from_db(db_path), gateway))
        result = score(truth, orders, grace=grace_s, early=parse_duration(early))
    except (ScoreError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        click.echo(orjson.dumps(result.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(result.text())
