"""The gateway's configuration file (TOML), as typed models refused before start.

Relative paths in the file are relative to the file's own folder. Secrets may come from the
environment instead of the file: ``EDGE_UPLINK_TOKEN``, ``EDGE_MQTT_PASSWORD`` (and
``EDGE_MQTT_USERNAME``).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from urllib.parse import urlparse

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge.redact import redact_url

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(Exception):
    """The configuration is unusable; the message says where and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GatewaySection(_Section):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="This gateway's id, unique in the district.")
    data_dir: Path = Field(Path("var"), description="Folder of gateway.db (orders, outbox, quarantine).")


class RegistrySection(_Section):
    path: Path = Field(description="The device registry CSV.")


class RulesSection(_Section):
    paths: list[Path] = Field(description="Rule files, or folders of *.yaml rule files.")
    watch_interval: float = Field(2.0, gt=0, description="Seconds between checks for changed rule files (SIGHUP checks at once).")


class MqttSection(_Section):
    url: str = Field("mqtt://127.0.0.1:1883", description="Broker the devices publish to: mqtt://host:port, or mqtts://host:port "
                                                          "for TLS (port 8883 when not given).")
    client_id: str = Field("", description="Client id; fixed, so the broker keeps the session. Default: edge-<gateway id>.")
    topics: list[str] = Field(
        ["devices/+/telemetry", "application/+/device/+/event/up", "frigate/events"],
        description="Topic filters to subscribe to; each message goes to the decoder for its topic "
                    "(own JSON, ChirpStack LoRaWAN uplinks, Frigate camera events).",
    )
    qos: int = Field(1, ge=0, le=1, description="Subscription QoS; 1 keeps readings published during a restart.")
    username: str = Field("", description="User name at the broker; empty: none.")
    password: str = Field("", description="Password at the broker; or set EDGE_MQTT_PASSWORD.")
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        "auto", description="MQTT version: auto tries 5 and falls back to 3.1.1 when the broker does not speak 5.")
    session_expiry: int = Field(
        7 * 24 * 3600, ge=1, le=0xFFFFFFFF,
        description="MQTT 5: seconds the broker keeps the session (and queues readings) while the gateway is away.")
    keepalive: int = Field(30, ge=5, le=3600, description="Seconds between keep-alive pings.")
    ca_file: Path | None = Field(None, description="CA certificate(s) that signed the broker's TLS certificate; "
                                                   "setting it turns TLS on (default for mqtts://: the system's CAs).")
    cert_file: Path | None = Field(None, description="Client certificate (PEM) for brokers that require one; needs key_file.")
    key_file: Path | None = Field(None, description="Private key (PEM, unencrypted) of cert_file.")
    connect_timeout: float = Field(10.0, gt=0, le=300, description="Seconds to wait for the broker to accept a connection "
                                                                  "(auto: then MQTT 3.1.1 is tried).")
    reconnect_min: float = Field(1.0, gt=0, description="Shortest wait, seconds, before reconnecting to the broker.")
    reconnect_max: float = Field(60.0, gt=0, description="Longest wait, seconds: waits double from reconnect_min up to this, "
                                                         "each randomised between half and all of it.")

    @field_validator("url")
    @classmethod
    def _mqtt_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
            raise ValueError(f"expected mqtt://host:port or mqtts://host:port, got {redact_url(value)!r}")
        return value

    @model_validator(mode="after")
    def _pairs(self) -> "MqttSection":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file: a client certificate needs both cert_file and key_file")
        if self.reconnect_max < self.reconnect_min:
            raise ValueError(f"reconnect_max: must be at least reconnect_min ({self.reconnect_min:g})")
        if self.password and not self.username:
            raise ValueError("username: a password is set (in the file or EDGE_MQTT_PASSWORD) but no username")
        return self

    @property
    def tls(self) -> bool:
        return urlparse(self.url).scheme == "mqtts" or self.ca_file is not None or self.cert_file is not None

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlparse(self.url).port or (8883 if urlparse(self.url).scheme == "mqtts" else 1883)


class ModbusSection(_Section):
    port: str = Field("", description="Serial port of the RS-485 line, e.g. /dev/ttyUSB0; empty: no Modbus polling. "
                                      "Devices with a modbus_unit column in the registry are polled.")
    baudrate: int = Field(9600, gt=0, description="Line speed, bits per second.")
    parity: Literal["N", "E", "O"] = Field("N", description="Parity: N (none), E (even) or O (odd); 8 data bits, 1 stop bit.")
    timeout: float = Field(0.5, gt=0, le=10, description="Seconds to wait for a device's reply before it counts as a timeout.")
    function: Literal[3, 4] = Field(4, description="Read function: 3 (holding registers) or 4 (input registers).")
    poll_interval: float = Field(60.0, gt=0, description="Seconds between polls of a device whose registry row has no poll_s.")
    reopen_interval: float = Field(5.0, gt=0, description="Seconds between attempts to open a missing or failed serial port.")


class CodecsSection(_Section):
    models: Path | None = Field(None, description="Folder of device-model mappings (*.yaml): vendor fields to metrics "
                                "with their units, and each model's JavaScript codec (docs/ingest.md); default: the "
                                "project's config/models.")
    folder: Path | None = Field(None, description="Folder of vendor payload codecs (*.js, The Things Network's "
                                "decodeUplink format) that mappings name; default: the project's config/codecs.")
    time_limit: float = Field(0.05, gt=0, le=5, description="Seconds one codec call may run; longer is quarantined "
                              "as codec_timeout.")
    memory_limit_mb: int = Field(16, ge=1, le=1024, description="Memory of one codec's JavaScript context, MiB; more "
                                 "is quarantined as codec_memory.")
    suspend_after: int = Field(3, ge=1, description="Calls in a row that run out of time or memory on one device's "
                               "frames before its codec is suspended for that device.")
    suspend_for: float = Field(60.0, gt=0, description="Seconds a suspended device's messages are quarantined "
                               "(codec_suspended) without running the codec.")

    def limits(self):
        from edge.ingest.jscodec import JsLimits

        return JsLimits(self.time_limit, self.memory_limit_mb << 20, self.suspend_after, self.suspend_for)

    def load(self):
        """The mapped vendor models with their codecs, and every problem of their files."""
        from edge.ingest.vendor_models import load_models
        from edge.paths import default_codecs, default_models

        from edge.ingest.vendor_models import VendorModels

        models = self.models or default_models()
        if self.models is None and not models.is_dir():  # the default folder may be left out of an install
            return VendorModels(), []
        return load_models(models, self.folder or default_codecs(), self.limits())


class UplinkSection(_Section):
    mode: Literal["http", "mqtt"] = Field("http", description="http: POST batches to the platform; mqtt: publish with QoS 1 to its broker.")
    url: str = Field(description="The central platform: http(s)://host:port, or mqtt(s)://host:port in mqtt mode.")
    token: str = Field("", description="Bearer token (http), or the MQTT password (mqtt); or set EDGE_UPLINK_TOKEN.")
    username: str = Field("", description="MQTT user name (mqtt mode).")
    batch_size: int = Field(100, ge=1, le=10000, description="Revisions per request.")
    timeout: float = Field(10.0, gt=0, description="Seconds to wait for the platform's answer.")
    ca_file: Path | None = Field(None, description="CA certificate(s) to check the platform's TLS certificate; default: the system's.")
    downlink_interval: float = Field(5.0, ge=0, description="Seconds between fetches of the platform's decisions; 0 turns the downlink off.")
    retry_max: float = Field(60.0, gt=0, description="Longest wait between retries, seconds.")
    health_interval: float = Field(60.0, ge=0, allow_inf_nan=False,
                                   description="Seconds between health summaries sent to the platform; 0 turns them off.")

    @model_validator(mode="after")
    def _url_fits_mode(self) -> "UplinkSection":
        parsed = urlparse(self.url)
        schemes = ("http", "https") if self.mode == "http" else ("mqtt", "mqtts")
        if parsed.scheme not in schemes or not parsed.hostname:
            raise ValueError(f"url: expected {schemes[0]}(s)://host:port in {self.mode} mode, got {redact_url(self.url)!r}")
        self.url = self.url.rstrip("/")
        return self


class EngineSection(_Section):
    batch_max: int = Field(5000, ge=1, description="Most messages evaluated in one batch.")
    batch_wait: float = Field(0.02, gt=0, description="Longest wait, seconds, to fill a batch (bounds the latency it adds).")
    batch_quiet: float = Field(0.001, gt=0, description="A batch is evaluated as soon as no message has come for this long.")
    queue_max: int = Field(50000, ge=100, description="Messages held between the network and the engine.")
    tick: float = Field(1.0, gt=0, le=60, description="Seconds between evaluations of rules that change with time alone.")
    commit_interval: float = Field(0.2, ge=0, le=5, description="Longest time, seconds, evaluated batches wait to be "
                                   "committed together to gateway.db (their messages are acknowledged to the broker only "
                                   "then). One commit for several batches writes far fewer bytes to the SD card; 0 commits "
                                   "each batch on its own. Ticks, checkpoints, rule reloads and stopping commit at once.")
    commit_messages: int = Field(500, ge=1, description="Commit as soon as this many messages wait (keep it below the "
                                 "broker's max_inflight_messages, 1000 for the private broker of edge/broker.py, or the broker waits too).")
    checkpoint_interval: float = Field(60.0, ge=1, le=86400, description="Seconds between checkpoints of the engine's state "
                                       "(engine.ckpt in data_dir); between them every batch is kept in a changelog and replayed "
                                       "after a restart (docs/rules.md, 'What survives a restart'). Longer: fewer bytes written "
                                       "to the SD card, a longer replay at start.")


class IngestSection(_Section):
    max_future: float = Field(2 * 86400.0, ge=0, description="Seconds a device's time may be ahead of the gateway's clock; a "
                              "message further ahead is quarantined as timestamp_out_of_range (docs/ingest.md, 'Device "
                              "clocks'). Two days by default: a street simulated faster than real time runs ahead too.")
    clock_tolerance: float = Field(600.0, gt=0, description="A device whose newest time was more than this ahead of the "
                                   "gateway's clock, and which then reports a time within this of it, had a wrong clock that "
                                   "is right again: its rules start afresh (a wrong clock never blinds a device).")
    max_past: float = Field(7 * 86400.0, gt=0, description="Seconds a device's time may be behind the gateway's clock (a device "
                            "sending what it buffered offline); older is quarantined as timestamp_out_of_range.")
    max_payload_bytes: int = Field(65536, ge=1024, description="Largest payload decoded; a larger one is quarantined as "
                                   "payload_too_large before anything else is done with it.")
    quarantine_keep_bytes: int = Field(4096, ge=0, le=1048576, description="Bytes of a quarantined payload kept in gateway.db "
                                       "(its full length is recorded too).")
    unknown_devices_max: int = Field(10000, ge=10, description="Devices not in the registry remembered in gateway.db (the most "
                                     "recently seen); their ids are kept up to 128 characters.")


class OutboxSection(_Section):
    max_bytes: int = Field(256 * 1024 * 1024, ge=1024 * 1024, description="Disk budget of gateway.db and its WAL on disk; beyond it rows are evicted as documented.")
    evict_orders: bool = Field(False, description="Evict unsent order revisions too when nothing else is left (default: never).")
    telemetry_interval: float = Field(300.0, gt=0, description="Seconds per telemetry summary of each device.")
    quarantine_max: int = Field(10000, ge=100, description="Quarantined messages kept in gateway.db, the newest; older ones "
                                "are deleted (the counts per reason stay in /metrics).")


class OrdersSection(_Section):
    categories: Path | None = Field(None, description="The category table (CSV); default: the project's config/categories.csv.")
    reopen_within: float = Field(3600.0, ge=0, description="A problem back within this many seconds after its order was closed reopens it; 0: always a new order.")
    verify_within: float = Field(1800.0, gt=0, description="After the platform resolves an order, how long (device time) the "
                                 "sensors have to confirm the fix: verified, not_fixed or unverified (docs/rules.md); a "
                                 "category's verify_within column overrides it.")
    repeat_within: float = Field(604800.0, ge=0, description="A problem back within this many seconds (device time) of its "
                                 "verified fix opens an order marked repeat_of the fixed one; 0: never marked.")


class StatusSection(_Section):
    listen: str = Field("127.0.0.1:9180", description="host:port of the status page, /metrics and /status.json; "
                        "empty turns it off. Keep it on loopback or a maintenance network: it has no login.")
    silent_after: float = Field(7200.0, gt=0, description="Seconds without a message after which a device is "
                                "shown as silent on the status page and counted in edge_devices_silent.")

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value == "":
            return value
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected host:port such as 127.0.0.1:9180, got {value!r}")
        return value

    @property
    def address(self) -> tuple[str, int] | None:
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class LogSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Least important level logged; `edge run --log-level` overrides it.")
    format: Literal["text", "json"] = Field("text", description="text: one line per record (journald); json: one JSON object per line, for a central log collector. `edge run --log-format` overrides it.")


class GatewayConfig(_Section):
    gateway: GatewaySection
    registry: RegistrySection
    rules: RulesSection
    mqtt: MqttSection = MqttSection()
    modbus: ModbusSection = ModbusSection()
    codecs: CodecsSection = CodecsSection()
    uplink: UplinkSection
    engine: EngineSection = EngineSection()
    ingest: IngestSection = IngestSection()
    outbox: OutboxSection = OutboxSection()
    orders: OrdersSection = OrdersSection()
    status: StatusSection = StatusSection()
    log: LogSection = LogSection()

    @property
    def database_path(self) -> Path:
        return self.gateway.data_dir / "gateway.db"


def _key_line(text: str, loc: tuple) -> int:
    """Best-effort line of a key path in TOML text: the section header, then the key in it."""
    lines = text.splitlines()
    section = str(loc[0]) if loc else ""
    start = 0
    for number, line in enumerate(lines):
        if re.match(rf"\s*\[{re.escape(section)}\]\s*(#.*)?$", line):
            start = number
            break
    if len(loc) > 1:
        key = str(loc[1])
        for number in range(start, len(lines)):
            if number > start and lines[number].lstrip().startswith("["):
                break
            if re.match(rf"\s*{re.escape(key)}\s*=", lines[number]):
                return number + 1
    return start + 1


def _did_you_mean(loc: tuple) -> str:
    """" (did you mean 'section.key'?)" for an unknown key close to a known one ('' when none is)."""
    import difflib

    if len(loc) == 1:
        names, prefix = list(GatewayConfig.model_fields), ""
    else:
        field = GatewayConfig.model_fields.get(str(loc[0]))
        section = getattr(field, "annotation", None)
        if len(loc) != 2 or not hasattr(section, "model_fields"):
            return ""
        names, prefix = list(section.model_fields), f"{loc[0]}."
    close = difflib.get_close_matches(str(loc[-1]), names, n=1)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


def load_config(path: Path) -> GatewayConfig:
    config, problems = read_config(path)
    if problems or config is None:
        raise ConfigError("\n".join(problems))
    return config


def read_config(path: Path) -> tuple[GatewayConfig | None, list[str]]:
    """The configuration and every problem of the file itself, as ``file:line: message``.

    A key with a wrong value or an unknown key is a problem, and the configuration is still
    made without it (its default stands), so that ``edge config check`` can go on to check
    what the rest points to in the same pass. None only when the file cannot be read as TOML."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        return None, [f"{path}: cannot read: {error.strerror}"]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        where = re.search(r"\(at line (\d+), column \d+\)", str(error))
        line = f":{where.group(1)}" if where else ""
        return None, [f"{path}{line}: not valid TOML: {error}"]
    problems: list[str] = []
    config = None
    for _ in range(4):  # each pass drops the keys found wrong; what is left is checked again
        try:
            config = GatewayConfig.model_validate(data)
            break
        except ValidationError as error:
            for e in error.errors():
                loc, message = _named(tuple(e["loc"]), e)
                problems.append(f"{path}:{_key_line(text, loc)}: {_message(loc, message, e['type'])}")
                _drop(data, loc)
    if config is None:
        return None, problems
    base = path.parent.resolve()
    config.gateway.data_dir = (base / config.gateway.data_dir).resolve()
    config.registry.path = (base / config.registry.path).resolve()
    config.rules.paths = [(base / p).resolve() for p in config.rules.paths]
    if config.orders.categories is not None:
        config.orders.categories = (base / config.orders.categories).resolve()
    if config.uplink.ca_file is not None:
        config.uplink.ca_file = (base / config.uplink.ca_file).resolve()
    for name in ("models", "folder"):
        if getattr(config.codecs, name) is not None:
            setattr(config.codecs, name, (base / getattr(config.codecs, name)).resolve())
    for name in ("ca_file", "cert_file", "key_file"):
        value = getattr(config.mqtt, name)
        if value is not None:
            value = (base / value).resolve()
            if not value.is_file():
                problems.append(f"{path}:{_key_line(text, ('mqtt', name))}: mqtt.{name}: no such file {str(value)!r}")
            setattr(config.mqtt, name, value)
    config.uplink.token = os.environ.get("EDGE_UPLINK_TOKEN", config.uplink.token)
    config.mqtt.password = os.environ.get("EDGE_MQTT_PASSWORD", config.mqtt.password)
    config.mqtt.username = os.environ.get("EDGE_MQTT_USERNAME", config.mqtt.username)
    if config.mqtt.password and not config.mqtt.username:
        problems.append(f"{path}:{_key_line(text, ('mqtt', 'username'))}: mqtt.username: "
                        "EDGE_MQTT_PASSWORD is set but there is no username (set mqtt.username or EDGE_MQTT_USERNAME)")
    if not config.mqtt.client_id:
        config.mqtt.client_id = f"edge-{config.gateway.id}"
    return config, problems


def _named(loc: tuple, error: dict) -> tuple[tuple, str]:
    """The key an error is about, and its message: a check across a section's keys names its key
    in its message (``key: what is wrong``)."""
    message = error["msg"].removeprefix("Value error, ")
    key, _, rest = message.partition(": ")
    return (loc + (key,), rest) if rest and re.fullmatch(r"[a-z_]+", key) else (loc, message)


def _message(loc: tuple, message: str, kind: str) -> str:
    where = ".".join(str(p) for p in loc)
    if kind == "extra_forbidden":
        return f"unknown key {where!r}{_did_you_mean(loc)}"
    if kind == "missing":
        return f"missing required key {where!r}"
    return f"{where}: {message}"


def _drop(data: dict, loc: tuple) -> None:
    """Remove the key at ``loc`` (its default then stands); a whole section when the key is the section."""
    node = data
    for part in loc[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return
    if isinstance(node, dict):
        node.pop(loc[-1], None)
