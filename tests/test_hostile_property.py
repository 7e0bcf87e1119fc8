"""Property (issue 18): random hostile messages mixed into a stream of valid alarms, into ONE running
gateway (`edge run`, a real Mosquitto of its own, the reference receiver), never stop it and never cost a
valid alarm its order: every alarm's order reaches the receiver exactly once, and the gateway is
the same process.

Hostile messages come from three strategies: random bytes, random JSON, and messages of the right
shape (own JSON, ChirpStack, Frigate) with hostile fields. They may name the very devices whose
alarms are in the stream; then their time is hostile too (out of any window, not a time at all,
or behind the alarm), so a gateway that does its job has no reason to open nothing. Examples are
not shrunk (each runs real processes); a failure prints its draws.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from edge.broker import start_mosquitto
from edge.ingest.codecs import mcl300
from edge.kinds import KIND_METRICS
from hostile import Tally, World, alarm, chirpstack, open_world, telemetry_topic, write_summary

KINDS = ("manhole_cover", "bin", "camera")
TOPIC_OF = {"own": telemetry_topic, "frigate": lambda device: "frigate/events",
            "chirpstack": lambda device: chirpstack(device, 1.0)[0]}


@pytest.fixture(scope="module")
def tally(request):
    counted = Tally()
    yield counted
    write_summary(request, "test_hostile_property", counted)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tally):
    """One gateway for every example, on a Mosquitto of its own (the session's would keep the
    hostile messages queued for other tests' persistent sessions)."""
    folder = tmp_path_factory.mktemp("property-world")
    broker = start_mosquitto(folder / "broker")
    try:
        with open_world(folder, broker, devices=(120, 120, 40), tally=tally) as w:
            w.noise = [w.devices.take(kind) for kind in KINDS for _ in range(4)]  # hostile-only devices
            yield w
    finally:
        broker.stop()


# --- strategies -------------------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-2 ** 80, 2 ** 80) | st.floats()
           | st.text(max_size=40) | st.sampled_from(["NaN", "Infinity", "\x1b[2J", "\u202e", "\x00", "1e999"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=25)

# A time as the message will carry it, relative to the moment of sending: ("scale", k) is now * k
# (a clock in ms, µs, ns), ("ahead", s) and ("behind", s) are now +- s, ("value", v) is v as is.
# Aimed at an alarm's device, a time is never plausible and ahead: a clock well ahead is either
# refused or taken back when the device is right again, and a time behind the alarm is harmless.
hostile_times = st.one_of(
    st.sampled_from([1e3, 1e6, 1e9]).map(lambda k: ("scale", k)),
    st.floats(700, 1e12).map(lambda s: ("ahead", s)),
    st.just(("value", 1e300)),
    st.floats(320, 1e10).map(lambda s: ("behind", s)),  # before the alarms' first report (a camera's: 310 s)
    st.sampled_from([0, -1, "NaN", "1763830000", True, None, [], {}, "2025-06-01T08:00:00Z"]).map(lambda v: ("value", v)),
)
any_times = hostile_times | st.floats(-700, 700).map(lambda s: ("ahead", s))


# ids of devices not in the registry, as a broker takes them in a topic (no control characters,
# no wildcards, no level separator)
unknown_ids = st.text(st.characters(whitelist_categories=("L", "N", "P", "Zs"), max_codepoint=0xFFFD),
                      min_size=1, max_size=30).filter(lambda d: not set(d) & set("/+#"))


def realise(time_tag, now: float, iso: bool = False):
    kind, value = time_tag
    if kind == "value":
        return value
    ts = now * value if kind == "scale" else now + value if kind == "ahead" else now - value
    if not iso:
        return ts
    try:
        import datetime as dt
        return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat()
    except (OverflowError, ValueError, OSError):
        return f"{ts!r}"


def readings_for(kind: str):
    """Mostly plausible readings (so that the hostile field, often the time, is what is tested),
    sometimes hostile ones."""
    numeric = sorted(n for n, info in KIND_METRICS[kind].items() if info.type != "text")
    plausible = st.dictionaries(st.sampled_from(numeric), st.floats(-50, 200) | st.integers(0, 1), min_size=1, max_size=4)
    names = st.sampled_from(sorted(KIND_METRICS[kind])) | st.text(max_size=12)
    values = (st.floats() | st.integers(-2 ** 70, 2 ** 70) | st.booleans() | st.text(max_size=80)
              | st.sampled_from([1e308, -1e308, "NaN", "car", "no_parking"]) | json_values)
    return plausible | plausible | st.dictionaries(names, values, max_size=8) | json_values


def mostly(value, otherwise):
    """``value`` three times in four, else a draw of ``otherwise``."""
    return st.one_of(st.just(value), st.just(value), st.just(value), otherwise)


@st.composite
def hostile_message(draw, alarm_devices: list[str], noise: list[str], kinds: dict[str, str]):
    """A recipe: (what it is, the alarm device it names or None, a function of the sending time giving
    (topic, payload))."""
    device = draw(st.sampled_from(alarm_devices) | st.sampled_from(noise) | unknown_ids)
    aimed = device in alarm_devices
    target = device if aimed else None
    times = hostile_times if aimed else any_times
    kind = kinds.get(device, draw(st.sampled_from(KINDS)))
    form = draw(st.sampled_from(["bytes", "json", "own", "chirpstack", "frigate", "huge"]))
    protocol = draw(st.sampled_from(sorted(TOPIC_OF)))
    if form == "bytes":
        payload = draw(st.binary(max_size=600))
        return form, target, lambda now: (TOPIC_OF[protocol](device), payload)
    if form == "huge":
        size = draw(st.integers(64 * 1024, 2 * 1024 * 1024))
        return form, target, lambda now: (TOPIC_OF[protocol](device), b'{"device": "' + b"x" * size + b'"}')
    if form == "json":
        doc = draw(json_values)
        return form, target, lambda now: (TOPIC_OF[protocol](device), json.dumps(doc, allow_nan=True).encode())
    when = draw(times)
    if form == "own":
        readings = draw(readings_for(kind))
        device_field = draw(mostly(device, json_values))
        return form, target, lambda now: (telemetry_topic(device), json.dumps(
            {"device": device_field, "ts": realise(when, now), "readings": readings}, allow_nan=True).encode())
    if form == "chirpstack":  # a valid MCL-300 frame, or not; fPort 1 or 2, or not
        frame = draw(st.builds(lambda tilt: mcl300.encode({"tilt_deg": tilt, "open": 0})[1], st.floats(0, 90))
                     | st.binary(max_size=40))
        fport = draw(mostly(1, st.sampled_from([2]) | st.integers(-5, 300) | json_values))
        data = draw(st.just(base64.b64encode(frame).decode()) | json_values)
        rx = draw(st.lists(st.fixed_dictionaries({}, optional={"rssi": json_values}), max_size=2) | json_values)
        as_text = draw(st.booleans())

        def build(now):
            topic, payload = chirpstack(device, 1.0)
            doc = json.loads(payload)
            doc.update(time=realise(when, now, iso=as_text), fPort=fport, data=data, rxInfo=rx)
            return topic, json.dumps(doc, allow_nan=True).encode()
        return form, target, build
    sane = {"label": "car", "score": 0.9, "current_zones": ["no_parking"]}
    hostile = draw(st.fixed_dictionaries({}, optional={
        "label": st.sampled_from(["car", "vendor", "garbage"]) | json_values, "score": st.floats() | json_values,
        "top_score": st.floats() | json_values, "current_zones": st.lists(st.text(max_size=70), max_size=2) | json_values,
        "end_time": json_values}))
    after = {"camera": device, **sane, **hostile}
    event_type = draw(mostly("update", st.sampled_from(["new", "end"]) | json_values))
    start = draw(st.none() | times)

    def build_frigate(now):
        body = dict(after, frame_time=realise(when, now))
        if start is not None:
            body["start_time"] = realise(start, now)
        return "frigate/events", json.dumps({"type": event_type, "after": body}, allow_nan=True).encode()
    return form, target, build_frigate


@settings(max_examples=15, deadline=None, phases=[Phase.explicit, Phase.generate], database=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_hostile_messages_in_a_valid_stream(world: World, data):
    before = world.begin(f"example-{world.tally.hostile_inputs + 1}")
    kinds = data.draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=3), label="alarm kinds")
    devices = [world.devices.take(kind) for kind in kinds]
    recipes = data.draw(st.lists(hostile_message(devices, world.noise, world.devices.kinds), min_size=5, max_size=40),
                        label="hostile messages")
    now = time.time()
    alarms = [alarm(device, kind, now) for device, kind in zip(devices, kinds)]
    stream = [(a.device, m) for a in alarms for m in a.messages]
    for _, target, build in recipes:
        # a message aimed at an alarm's device goes before or after that alarm, not between its reports:
        # a clock taken back from far ahead starts the device's rules afresh, and a `for` begun
        # before it starts again (docs/ingest.md, "Device clocks")
        places = [p for p in range(len(stream) + 1)
                  if target is None or not (any(d == target for d, _ in stream[:p]) and any(d == target for d, _ in stream[p:]))]
        stream.insert(data.draw(st.sampled_from(places), label="position"), (None, build(now)))
    world.tally.hostile_messages += len(recipes)
    world.publisher.publish([m for _, m in stream])
    aimed = tuple({target for _, target, _ in recipes if target is not None})
    world.check(before, (), already=tuple(alarms), aimed=aimed, counters=False)
