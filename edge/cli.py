"""The ``edge`` command: thin click commands over the gateway's library."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import click

from edge import __version__

# An order's states (edge/orders/book.py: LIVE_STATES, then the final ones), for --state.
ORDER_STATES = ("opened", "cleared", "accepted", "dispatched", "resolved", "closed", "rejected")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge")
def main() -> None:
    """Street-side IoT edge gateway.

    Takes readings from manhole covers, bins and cameras over MQTT, evaluates the rule
    files, opens one work order per real problem, keeps it in SQLite and uplinks it to
    the district's central platform.

    \b
    Start here:
      edge demo                      the whole system on this machine, about 30 s
      edge run --config FILE         the gateway daemon
      edge config check FILE         validate a configuration before starting with it
      edge status                    the running gateway's health at a glance
      edge rules check rules/        validate rule files before deploying them
      edge codecs test CODEC.js      run a vendor's codec against its examples
    """


@main.command()
@click.option("--seconds", default=30.0, show_default=True, type=click.FloatRange(min=15.0),
              help="How long the simulated street runs (at least 15: a cover must stay tilted 10 s).")
@click.option("--broker", "broker_url", default=None, metavar="URL",
              help="Use this MQTT broker (mqtt://host:port) instead of starting a private one.")
@click.option("--embedded-broker", is_flag=True,
              help="Use the embedded Python broker (amqtt) even when Mosquitto is installed.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the demo's files (databases, logs, config) here instead of a temporary folder.")
@click.option("--keep", is_flag=True, help="After the summary, keep the broker, gateway and receiver running (their "
                                            "pages stay up) until Ctrl-C or SIGTERM.")
def demo(seconds: float, broker_url: str | None, embedded_broker: bool, workdir: Path | None, keep: bool) -> None:
    """Run the whole system on this machine: broker, simulated street, gateway, central receiver.

    Starts a private Mosquitto (or, when Mosquitto is not installed, an embedded Python
    broker), the reference receiver, the gateway with the shipped rules/ and
    config/devices.csv, and a simulated street in which covers are knocked open and bins
    fill up. Shows progress, then a summary. Exits 0 only if every order the gateway opened
    was acknowledged by the receiver.
    """
    import threading

    from edge.demo import run_demo

    stop = None
    if keep:
        stop = threading.Event()
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, lambda *_: stop.set())

    def show(summary) -> None:
        for line in summary.lines():
            click.echo(line)

    try:
        summary = run_demo(seconds, broker_url, workdir, embedded_broker=embedded_broker, keep=stop,
                           on_summary=show if keep else None)
    except Exception as error:  # the demo's own failures: say what and where, not a traceback
        raise click.ClickException(f"the demo could not run: {error}") from None
    if not keep:
        show(summary)
    sys.exit(0 if summary.ok else 1)


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Gateway configuration file (TOML), e.g. config/gateway.toml.")
@click.option("--log-level", default=None, type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              help="Least important level logged. Default: [log] level in the config (info).")
@click.option("--log-format", default=None, type=click.Choice(["text", "json"]),
              help="text: a line per record (journald); json: a JSON object per line (log collectors). "
                   "Default: [log] format in the config (text).")
def run(config_path: Path, log_level: str | None, log_format: str | None) -> None:
    """Run the gateway daemon until SIGTERM or Ctrl-C.

    Subscribes to the broker in the config, evaluates the rules, keeps orders in
    <data_dir>/gateway.db and uplinks them. On SIGTERM it stops taking messages, finishes
    the batch in hand, flushes what the platform will take, and exits 0.

    Changed rule files are picked up within [rules] watch_interval seconds, or at once on
    SIGHUP: validated, then swapped in; rules that did not change keep their state. A bad
    file is refused with its errors in the log, and the running rules stay.

    Health: a status page, /metrics (Prometheus) and /status.json on [status] listen
    (default http://127.0.0.1:9180/); `edge status` reads them. Under systemd it reports
    readiness and pings the watchdog (config/systemd/edge-gateway.service, docs/service.md).
    """
    from edge import logs
    from edge.agent import Agent
    from edge.config import ConfigError, load_config
    from edge.engine import RuleFileError
    from edge.orders.categories import CategoryError
    from edge.redact import url_secrets
    from edge.registry import RegistryError

    from edge.config_check import data_dir_problem

    try:
        config = load_config(config_path)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    problem = data_dir_problem(config.gateway.data_dir)
    if problem:  # said before anything starts, as `edge config check` says it
        raise click.ClickException(f"{config_path}: gateway.data_dir: {problem}")
    logs.setup(log_level or config.log.level, log_format or config.log.format,
               secrets=[config.uplink.token, config.mqtt.password,
                        *url_secrets(config.uplink.url), *url_secrets(config.mqtt.url)])
    try:
        agent = Agent(config)
    except (ConfigError, RegistryError, CategoryError) as error:
        raise click.ClickException(str(error)) from None
    except RuleFileError as error:
        raise click.ClickException("the rules cannot be loaded:\n" + str(error)) from None

    def _stop(signum, frame) -> None:
        logging.getLogger("edge").info("signal %s: stopping", signal.Signals(signum).name)
        agent.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, lambda signum, frame: agent.request_reload())
    agent.run()


@main.group()
def engine() -> None:
    """Build the rule engine's kernels ahead of time, and see which kernels run.

    The engine's kernels are numba code. Built ahead of time on the gateway (scripts/setup
    does it), they load with no numba: the daemon starts faster and holds about 120 MB less
    memory. Without a built module that matches the installed source, numba compiles them
    (or loads its cache) and the gateway runs the same code, only heavier.
    """


@engine.command("build")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to put the module (default: $EDGE_KERNELS_DIR, else share/edge-gateway/kernels in "
                   "the Python environment). The engine looks there.")
@click.option("--if-missing", is_flag=True, help="Do nothing when a module for the current source is there already.")
def engine_build(directory: Path | None, if_missing: bool) -> None:
    """Compile the engine's kernels into an extension module for this machine's CPU (tens of seconds).

    Needs a C compiler and the Python headers (Debian: gcc, python3-dev). Run it again after
    an upgrade: a module built from other sources is never loaded.
    """
    import time

    from edge.engine import aot

    found = aot.find(directory) if if_missing else None
    if found is not None:
        click.echo(f"up to date: {found}")
        return
    click.echo("building the engine's kernels for this machine's CPU (tens of seconds, once) ...", err=True)
    started = time.perf_counter()
    try:
        path = aot.build(directory)
    except Exception as error:  # a missing compiler or header: the gateway still runs, on numba
        raise click.ClickException(f"the kernels could not be built ({type(error).__name__}: {error}); "
                                   "the gateway will compile them with numba at start instead") from None
    click.echo(f"built {path} in {time.perf_counter() - started:.0f} s")


@engine.command("which")
def engine_which() -> None:
    """Say which kernels the engine would run now: built ahead of time (and where) or numba's."""
    from edge.engine import aot

    chosen = aot.implementation()
    click.echo(f"{chosen.kind}: {chosen.where}")


@main.group()
def rules() -> None:
    """Check rule files, and see what they would do on recorded data."""


@rules.command("check")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--categories", "categories_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The category table the orders' categories must be in (default: config/categories.csv).")
def rules_check(paths: tuple[Path, ...], categories_path: Path | None) -> None:
    """Validate rule files (or folders of *.yaml) without running them.

    Checks the syntax, durations, functions, metrics of each device kind, types, and that
    every order category is in the category table. Prints every problem as
    file:line: message and exits 1 if there is any.
    """
    from edge.engine import RuleFileError, load_rules
    from edge.orders.categories import Categories, CategoryError
    from edge.paths import default_categories

    try:
        categories = Categories.load(categories_path or default_categories())
    except CategoryError as error:
        raise click.ClickException(str(error)) from None
    try:
        loaded = load_rules(list(paths), categories.keys())
    except RuleFileError as error:
        for problem in error.problems:
            click.echo(str(problem), err=True)
        sys.exit(1)
    files = len({rule.source for rule in loaded})
    click.echo(f"ok: {len(loaded)} rules in {files} file{'s' if files != 1 else ''}")


@rules.command("test")
@click.argument("rules_path", metavar="RULES", type=click.Path(exists=True, path_type=Path))
@click.option("--replay", "data", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Recorded readings: JSON Lines (.jsonl) or CSV (ts,device,metric,value); "
                   "python -m firmware_sim writes them.")
@click.option("--against", "other", type=click.Path(exists=True, path_type=Path),
              help="Another version of the rules (file or folder) to compare with.")
@click.option("--registry", "registry_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Device registry CSV (default: registry.csv beside the recording, as python -m firmware_sim "
                   "writes it; else the project's config/devices.csv).")
@click.option("--categories", "categories_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The category table for the order book (default: the project's config/categories.csv).")
@click.option("--tick", default=1.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Seconds of data time between evaluations of time-dependent rules (silence, windows, for).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also draw the metrics, thresholds and orders per device into this PNG.")
def rules_test(rules_path: Path, data: Path, other: Path | None, registry_path: Path | None,
               categories_path: Path | None, tick: float, as_json: bool, plot_path: Path | None) -> None:
    """Replay recorded readings through RULES and the gateway's order book: the alerts they raise
    and the orders the platform would get (grouping, worse_by updates, reopening, escalation).

    With --against, also runs the other rules and prints the difference: alerts only one
    version raises, and alerts whose opening time moved. Exits 1 if a rule file is invalid
    or the data cannot be read; the result itself never fails the command.
    """
    import orjson

    from edge import backtest
    from edge.engine import RuleFileError, load_rules
    from edge.engine.replay import ReplayError, compare, describe, describe_difference, read_messages
    from edge.orders.categories import Categories, CategoryError
    from edge.paths import default_categories, default_registry
    from edge.registry import Registry, RegistryError

    beside = data.parent / "registry.csv"
    registry_path = registry_path or (beside if beside.is_file() else default_registry())
    click.echo(f"registry: {registry_path}", err=True)
    try:
        categories = Categories.load(categories_path or default_categories())
    except CategoryError as error:
        raise click.ClickException(str(error)) from None
    try:
        registry = Registry.load(registry_path)
        versions = [(str(rules_path), load_rules([rules_path]))]
        if other is not None:
            versions.append((str(other), load_rules([other])))
        messages = read_messages(data)
    except RuleFileError as error:
        raise click.ClickException("the rules cannot be loaded:\n" + str(error)) from None
    except (RegistryError, ReplayError) as error:
        raise click.ClickException(str(error)) from None
    tests = [(label, backtest.backtest(loaded, registry, messages, categories, tick)) for label, loaded in versions]
    results = [(label, test.replayed) for label, test in tests]
    difference = compare(results[0][1], results[1][1]) if other is not None else None
    if plot_path is not None:
        from edge.engine.plot import plot_replay

        panels = plot_replay(plot_path, messages, registry, results)
        click.echo(f"plot: {plot_path} ({panels} device panel(s))", err=True)
    if as_json:
        document = {
            "versions": [
                {"rules": label, "registry": str(registry_path), "messages": test.replayed.messages,
                 "episodes": [e.as_dict() for e in test.replayed.episodes],
                 "unknown_devices": dict(test.replayed.unknown_devices), **test.as_dict()}
                for label, test in tests
            ]
        }
        if difference is not None:
            document["difference"] = {
                "only_in_rules": [e.as_dict() for e in difference.only_a],
                "only_in_against": [e.as_dict() for e in difference.only_b],
                "moved": [{"before": a.as_dict(), "after": b.as_dict(), "shift_s": b.opened_at - a.opened_at}
                          for a, b in difference.moved],
                "unchanged": difference.same,
            }
        click.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
        return
    for label, test in tests:
        for line in describe(label, test.replayed) + backtest.describe(test):
            click.echo(line)
    if difference is not None:
        for line in describe_difference(results[0][0], results[1][0], difference):
            click.echo(line)


@main.group()
def orders() -> None:
    """Work orders kept on this gateway."""


def _order_book(config_path: Path):
    from edge.config import ConfigError, load_config
    from edge.orders import OrderBook
    from edge.orders.categories import Categories, CategoryError
    from edge.outbox import open_database
    from edge.paths import default_categories

    try:
        config = load_config(config_path)
        categories = Categories.load(config.orders.categories or default_categories())
    except (ConfigError, CategoryError) as error:
        raise click.ClickException(str(error)) from None
    if not config.database_path.exists():
        raise click.ClickException(f"no gateway file at {config.database_path}: has the gateway run with this config?")
    return OrderBook(open_database(config.database_path), config.gateway.id, categories)


_CONFIG_OPTION = click.option("--config", "config_path", default="config/gateway.toml", show_default=True,
                              type=click.Path(dir_okay=False, path_type=Path), help="The gateway's configuration file.")


@orders.command("list")
@_CONFIG_OPTION
@click.option("--state", type=click.Choice(ORDER_STATES), help="Only orders in this state.")
@click.option("--grid", help="Only orders of this grid.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def orders_list(config_path: Path, state: str | None, grid: str | None, as_json: bool) -> None:
    """The gateway's orders, newest first."""
    import orjson

    from edge.orders.book import iso
    from edge.text_safety import printable as safe

    book = _order_book(config_path)
    found = book.orders(state=state, grid=grid)
    if as_json:
        click.echo(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode())
        return
    if not found:
        click.echo("no orders" + (f" in state {state}" if state else "") + (f" in grid {grid}" if grid else ""))
        return
    width = max(len(safe(o["id"])) for o in found)
    click.echo(f"{'order':<{width}}  {'opened (device time)':<24}  {'state':<10} {'severity':<8} {'grid':<5} "
               f"{'rule':<18} {'device':<9} rev  title")
    for o in found:
        click.echo(f"{safe(o['id']):<{width}}  {iso(o['opened_at']):<24}  {safe(o['state']):<10} {safe(o['severity']):<8} "
                   f"{safe(o['grid']):<5} {safe(o['rule']):<18} {safe(o['device']):<9} r{o['revision']:<3} {safe(o['title'])}")


@orders.command("show")
@click.argument("order_id")
@_CONFIG_OPTION
def orders_show(order_id: str, config_path: Path) -> None:
    """One order: what it is, the problems it stands for, its evidence and its timeline."""
    import orjson

    from edge.orders.book import iso
    from edge.text_safety import printable as safe

    book = _order_book(config_path)
    found = [o for o in book.orders() if o["id"] == order_id]
    if not found:
        raise click.ClickException(f"no order {safe(order_id)!r} on this gateway (edge orders list shows them)")
    o = found[0]
    click.echo(f"{safe(o['id'])}: {safe(o['title'])}")
    click.echo(f"  state {safe(o['state'])}, severity {safe(o['severity'])}, revision {o['revision']}, "
               f"escalated {o['escalations']}x")
    click.echo(f"  category {safe(o['category'])}; grid {safe(o['grid'])}, zone {safe(o['zone'])}, team {safe(o['team'])}; "
               f"{safe(o['address'])}")
    click.echo("  problems: " + ", ".join(f"{safe(rule)} on {safe(device)} ({safe(state)})"
                                          for rule, device, state in book.members(order_id)))
    click.echo("  evidence:")
    for item in orjson.loads(o["evidence"]):
        click.echo(f"    {safe(item.get('at', ''))}  {safe(item.get('device', o['device']))}  {safe(item.get('metric'))} = "
                   f"{safe(item.get('value'))}  ({safe(item.get('condition', ''))})")
    click.echo("  timeline:")
    for event in book.timeline(order_id):
        click.echo(f"    r{event['revision']}  {iso(event['at'])}  {safe(event['change']):<10} -> {safe(event['state'])}, "
                   f"{safe(event['severity'])}")


def _gateway_db(config_path: Path):
    from edge.config import ConfigError, load_config
    from edge.outbox import open_database

    try:
        config = load_config(config_path)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    if not config.database_path.exists():
        raise click.ClickException(f"no gateway file at {config.database_path}: has the gateway run with this config?")
    return open_database(config.database_path)


@main.group()
def quarantine() -> None:
    """Messages ingest could not decode, kept with the reason."""


@quarantine.command("list")
@_CONFIG_OPTION
@click.option("--reason", help="Only this reason (malformed_json, wrong_type, truncated, unknown_fport, bad_base64, ...).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), help="At most this many, newest first.")
def quarantine_list(config_path: Path, reason: str | None, limit: int) -> None:
    """Quarantined messages, newest first: when, reason, topic, detail and the start of the payload."""
    from edge.ingest.quarantine import quarantined
    from edge.orders.book import iso
    from edge.text_safety import printable as safe

    db = _gateway_db(config_path)
    found = quarantined(db.conn, reason, limit)
    if not found:
        click.echo("nothing quarantined")
    for q in found:
        payload = bytes(q["payload"][:60]).decode("utf-8", "replace")
        size = q["payload_bytes"] or len(q["payload"])
        click.echo(f"{iso(q['received_at'])}  {safe(q['reason']):<16} {safe(q['topic'], 200)}  {safe(q['detail'], 400)}  "
                   f"payload {safe(repr(payload))} ({size} bytes)")


@main.group()
def devices() -> None:
    """Devices as ingest sees them."""


@devices.command("unknown")
@_CONFIG_OPTION
def devices_unknown(config_path: Path) -> None:
    """Devices that sent messages but are not in the registry: first and last seen, how many messages."""
    from edge.ingest.quarantine import unknown_devices
    from edge.orders.book import iso
    from edge.text_safety import printable as safe

    db = _gateway_db(config_path)
    found = unknown_devices(db.conn)
    if not found:
        click.echo("no unknown devices")
    for d in found:
        click.echo(f"{safe(d['device'], 128):<12} first {iso(d['first_seen'])}  last {iso(d['last_seen'])}  "
                   f"{d['count']} message(s)  last topic {safe(d['topic'], 200)}")


if __name__ == "__main__":
    main()


@main.group()
def codecs() -> None:
    """Vendor payload codecs (JavaScript, The Things Network's format) and device-model mappings."""


@codecs.command("test")
@click.argument("codec_path", metavar="CODEC.js", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--examples", "examples_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The codec's examples (uplinkDecoder.examples); default: the .yaml beside CODEC.js.")
@click.option("--mapping", "mapping_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A device-model mapping (config/models/*.yaml): also print the readings the gateway would get.")
def codecs_test(codec_path: Path, examples_path: Path | None, mapping_path: Path | None) -> None:
    """Run a vendor's codec against its examples before putting it on a box.

    Each example's input (fPort, bytes) goes through decodeUplink in the gateway's sandbox
    (the same time and memory limits as the gateway's defaults), and the result is compared
    with the example's output: PASS, or each difference. With --mapping, the readings the
    gateway would take from each result, and the vendor fields the mapping leaves out.
    Exits 1 when an example fails or the mapping has a problem.
    """
    from edge.ingest.codec_examples import ExamplesError, load_examples, run_examples
    from edge.ingest.jscodec import CodecError, JsCodec
    from edge.ingest.vendor_models import load_mapping

    examples_path = examples_path or codec_path.with_suffix(".yaml")
    if not examples_path.is_file():
        raise click.UsageError(f"no examples file {examples_path}; give one with --examples")
    try:
        codec = JsCodec(codec_path)
        examples = load_examples(examples_path)
    except (CodecError, ExamplesError) as error:
        raise click.ClickException(getattr(error, "detail", None) or str(error)) from None
    mapping = None
    if mapping_path is not None:
        mapping, problems = load_mapping(mapping_path, codec_path.parent)
        for problem in problems:
            click.echo(problem, err=True)
        if mapping is None:
            raise click.ClickException(f"{len(problems)} problem(s) in {mapping_path}")
        if mapping.codec is not None and mapping.codec.path.resolve() != codec_path.resolve():
            click.echo(f"note: {mapping_path} names codec {mapping.codec.path.name}, tested here: {codec_path.name}", err=True)
    results = run_examples(codec, examples, mapping)
    for result in results:
        click.echo(f"{'PASS' if result.passed else 'FAIL'}  {result.description}  (fPort {result.fport}, "
                   f"{result.data.hex(' ')})")
        for difference in result.differences:
            click.echo(f"      {difference}")
        if result.readings is not None:
            shown = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in result.readings.items())
            click.echo(f"      readings: {shown or '(none)'}")
            for problem in result.mapping_problems:
                click.echo(f"      left out: {problem}")
    failed = sum(not r.passed for r in results)
    click.echo(f"{len(results) - failed} of {len(results)} example(s) pass")
    if failed:
        sys.exit(1)


@main.group()
def config() -> None:
    """The gateway's configuration file (TOML; every key in docs/configuration.md)."""


@config.command("check")
@click.argument("config_path", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path))
def config_check(config_path: Path) -> None:
    """Check a configuration file before starting the gateway with it.

    Reports every problem as `file:line: message`: TOML syntax, unknown keys, wrong types,
    missing registry, rule, category, certificate files, rule file errors (with the rule
    file's line), and a data folder the gateway could not write. Exits 1 on any problem.
    """
    from edge.config_check import check_config

    problems = check_config(config_path)
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        raise click.ClickException(f"{len(problems)} problem(s) in {config_path}")
    click.echo(f"{config_path}: ok")


@main.command()
@_CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the whole snapshot as JSON.")
@click.option("--timeout", default=2.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds to wait for the running agent's answer.")
def status(config_path: Path, as_json: bool, timeout: float) -> None:
    """The gateway's health at a glance: agent, ingest, engine, orders, outbox, uplink, devices.

    Asks the running agent (its [status] listen port, /status.json); when it does not answer,
    shows what the local gateway.db says (orders, outbox backlog, quarantine) and says so.
    Exits 0 when the agent answered and every part is ok, 1 when it answered and a part is
    degraded or down (the same as /healthz answering 503), 3 when it did not answer.
    """
    import orjson
    import requests

    from edge.config import ConfigError, load_config
    from edge.status import text
    from edge.status.snapshot import snapshot

    try:
        config = load_config(config_path)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    snap, source = None, "no status port configured"
    if config.status.address is not None:
        host, port = config.status.address
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/status.json"
        try:
            snap = requests.get(url, timeout=timeout).json()
            source = url
        except (requests.RequestException, ValueError) as error:
            source = f"{url} did not answer: {type(error).__name__}"
    if snap is None:
        snap = snapshot(config.database_path, config.gateway.id)
    click.echo(orjson.dumps(snap, option=orjson.OPT_INDENT_2).decode() if as_json else text.render(snap, source))
    if not snap["agent"].get("running"):
        sys.exit(3)
    sys.exit(0 if (snap.get("health") or {}).get("healthy", True) else 1)
