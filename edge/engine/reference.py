"""A plain-Python reference of the engine's semantics, for tests of the numba kernels.

Slow and obvious on purpose: it keeps every reading in lists, walks the condition trees
directly and recomputes each function from the readings. Property tests feed the same
messages and ticks to both and compare the transitions.
"""

from __future__ import annotations

import math

from edge.engine import expr
from edge.engine.detectors_reference import reference_run
from edge.engine.functions import BUCKETS, STUCK_MIN_READINGS, ZSCORE_WARMUP
from edge.engine.program import applies
from edge.engine.rules import Rule
from edge.engine.typecheck import calls_of, strings_of
from edge.registry import Registry

OTHER = "(other)"


def truthy(x) -> bool:
    if isinstance(x, str):
        return True
    return not math.isnan(x) and x != 0.0


class _Series:
    """Every fresh reading of one metric of one device, and when its value last changed."""

    def __init__(self) -> None:
        self.readings: list[tuple[float, float | str]] = []
        self.changed_at = math.nan

    def add(self, ts: float, x: float | str) -> None:
        if self.readings and x != self.readings[-1][1]:
            self.changed_at = ts
        self.readings.append((ts, x))


def _zscore(readings: list[tuple[float, float]], halflife: float) -> float:
    """The z of the latest reading against the weighted mean and variance of those before it."""
    n, mean, var, last_ts, z = 0, 0.0, 0.0, 0.0, math.nan
    for ts, x in readings:
        if n >= ZSCORE_WARMUP:
            z = (x - mean) / math.sqrt(var) if var > 0 else (0.0 if x == mean else math.copysign(math.inf, x - mean))
        else:
            z = math.nan
        if n == 0:
            mean, var = x, 0.0
        else:
            alpha = max(1.0 - 2.0 ** (-(ts - last_ts) / halflife), 1.0 / (n + 1.0))
            diff = x - mean
            increment = alpha * diff
            mean, var = mean + increment, (1.0 - alpha) * (var + diff * increment)
        n, last_ts = n + 1, ts
    return z


def window(readings: list[tuple[float, float]], t: float, length: float) -> list[tuple[float, float]]:
    """The readings in the window ending at ``t``: the BUCKETS slots of length/BUCKETS up to t's."""
    top = math.floor(t * BUCKETS / length)
    return [(ts, x) for ts, x in readings if top - BUCKETS < math.floor(ts * BUCKETS / length) <= top]


class ReferenceEngine:
    """Messages and ticks in, (kind, rule name, device id, time) transitions out."""

    def __init__(self, rules: list[Rule], registry: Registry, origin: float = 0.0):
        self.rules = rules
        self.registry = registry
        self.origin = origin
        self.referenced = {name for rule in rules for name in rule.metrics}
        self.known_texts = {s for rule in rules for s in strings_of(rule.when) + strings_of(rule.clear_when)}
        self.series: dict[tuple[str, str], _Series] = {}
        self.last_message: dict[str, tuple[float, float]] = {}  # device -> (device time, arrival)
        self.active: set[tuple[str, str]] = set()
        self.since: dict[tuple[str, str, bool], float] = {}
        self.reported: dict[tuple[str, str], float] = {}  # the worsening metric's value last reported

    # -- evaluation ------------------------------------------------------------------------

    def _latest(self, device_id: str, metric: str):
        series = self.series.get((device_id, metric))
        return series.readings[-1] if series and series.readings else (math.nan, math.nan)

    def _call(self, node: expr.Call, device_id: str, t: float) -> float:
        if node.name == "absent":
            last = self.last_message.get(device_id, (self.origin, 0))[0]
            return 1.0 if t - last >= node.args[0].value else 0.0
        metric = node.args[0].name
        series = self.series.get((device_id, metric)) or _Series()
        if node.name == "changed":
            return 1.0 if series.changed_at == t else 0.0
        if node.name == "anomaly":  # the score of the latest reading, the detector run over them all
            return reference_run([ts for ts, _ in series.readings], [x for _, x in series.readings])[-1] \
                if series.readings else 0.0
        length = node.args[1].value
        if node.name == "zscore":
            return _zscore(series.readings, length) if series.readings else math.nan
        inside = window(series.readings, t, length)
        values = [x for _, x in inside]
        if node.name == "count":
            return float(len(values))
        latest_ts, latest = self._latest(device_id, metric)
        if node.name == "stuck":
            ok = len(values) >= STUCK_MIN_READINGS and max(values) == min(values) and latest_ts - inside[0][0] >= length / 2
            return 1.0 if ok else 0.0
        if not values:
            return math.nan
        if node.name == "avg":
            return sum(values) / len(values)
        if node.name == "min":
            return min(values)
        if node.name == "max":
            return max(values)
        first_ts, first = inside[0]
        if node.name == "delta":
            return latest - first
        if node.name == "rate":
            span = latest_ts - first_ts
            return (latest - first) / span * 60.0 if span > 0 else math.nan
        raise ValueError(f"the reference has no function {node.name!r}")

    def evaluate(self, node: expr.Node, device, t: float):
        if isinstance(node, expr.Number):
            return node.value
        if isinstance(node, expr.String):
            return node.value
        if isinstance(node, expr.Metric):
            return self._latest(device.id, node.name)[1]
        if isinstance(node, expr.Param):
            return device.params.get(node.name, math.nan)
        if isinstance(node, expr.Call):
            return self._call(node, device.id, t)
        if isinstance(node, expr.Unary):
            value = self.evaluate(node.operand, device, t)
            if node.op == "-":
                return -value
            return 0.0 if truthy(value) else 1.0
        a = self.evaluate(node.left, device, t)
        b = self.evaluate(node.right, device, t)
        op = node.op
        if op == "and":
            return float(truthy(a) and truthy(b))
        if op == "or":
            return float(truthy(a) or truthy(b))
        if isinstance(a, str) or isinstance(b, str):
            if op == "==":
                return float(a == b)
            if op == "!=":
                return float(a != b and not (isinstance(a, float) and math.isnan(a)) and not (isinstance(b, float) and math.isnan(b)))
            raise ValueError(f"text with {op}")
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            return a / b if b != 0.0 else math.nan
        if math.isnan(a) or math.isnan(b):
            return 0.0
        return float({"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "==": a == b, "!=": a != b}[op])

    def _step(self, rule: Rule, device, t: float):
        key = (rule.name, device.id)
        active = key in self.active
        node = rule.clear_when if active else rule.when
        hold = rule.spec.clear_for if active else rule.spec.for_
        if not truthy(self.evaluate(node, device, t)):
            self.since.pop(key + (active,), None)
            return self._worse(rule, device, t) if active else None
        start = self.since.setdefault(key + (active,), t)
        if t - start < hold:
            return None
        self.since.pop(key + (True,), None)
        self.since.pop(key + (False,), None)
        if active:
            self.active.discard(key)
        else:
            self.active.add(key)
            worse = rule.worsening
            self.reported[key] = self._latest(device.id, worse.metric)[1] if worse else math.nan
        return ("clear" if active else "open", rule.name, device.id, t)

    def _worse(self, rule: Rule, device, t: float):
        """An update when the open problem's metric got worse by the rule's step while `when` still holds."""
        worse = rule.worsening
        if worse is None:
            return None
        key = (rule.name, device.id)
        value = self._latest(device.id, worse.metric)[1]
        if isinstance(value, str) or math.isnan(value):
            return None
        last = self.reported.get(key, math.nan)
        if math.isnan(last):
            self.reported[key] = value
            return None
        change = (value - last) * worse.direction
        if change > 0 and change >= worse.step and truthy(self.evaluate(rule.when, device, t)):
            self.reported[key] = value
            return ("update", rule.name, device.id, t)
        return None

    # -- input -----------------------------------------------------------------------------

    def message(self, device_id: str, ts: float, values: dict, arrival: float | None = None) -> list[tuple]:
        device = self.registry.get(device_id)
        if device is None:
            return []
        fresh = False
        last = self.last_message.get(device_id)
        if last is None or ts > last[0]:
            self.last_message[device_id] = (ts, ts if arrival is None else arrival)
            fresh = True
        for name, value in values.items():
            if name not in self.referenced:
                continue
            if isinstance(value, str):
                if value not in self.known_texts:
                    value = OTHER
            elif not math.isfinite(value):
                continue  # not a reading
            series = self.series.setdefault((device_id, name), _Series())
            if not series.readings or ts > series.readings[-1][0]:
                series.add(ts, value)
                fresh = True
        if not fresh:
            return []
        out = []
        now = max(ts, self.last_message[device_id][0]) if device_id in self.last_message else ts  # never backwards
        for rule in self.rules:
            if applies(rule, device):
                step = self._step(rule, device, now)
                if step:
                    out.append(step)
        return out

    def tick(self, now: float) -> list[tuple]:
        out = []
        for device in self.registry.devices:
            last = self.last_message.get(device.id)
            t = max(now - (last[1] - last[0]), last[0]) if last else now  # never before its last report
            for rule in self.rules:
                if not applies(rule, device):
                    continue
                key = (rule.name, device.id)
                pending = key + (key in self.active,) in self.since
                timed = bool(calls_of(rule.when) or calls_of(rule.clear_when))
                if timed or pending:
                    step = self._step(rule, device, t)
                    if step:
                        out.append(step)
        return out


def evaluate(node: expr.Node, metrics: dict[str, float], params: dict[str, float]) -> float:
    """A condition without functions on plain values (for tests of the expression kernel)."""
    engine = ReferenceEngine([], Registry([], []))

    class _Device:
        id = "x"

    device = _Device()
    device.params = params
    for name, value in metrics.items():
        engine.series[("x", name)] = _Series()
        engine.series[("x", name)].readings.append((0.0, value))
    return engine.evaluate(node, device, 0.0)
