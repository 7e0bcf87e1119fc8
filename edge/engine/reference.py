"""A plain-Python reference of the engine's semantics, for tests of the numba kernels.

Slow and obvious on purpose: it walks the condition trees directly and keeps per-device
state in dicts. Property tests feed the same readings to both and compare transitions.
"""

from __future__ import annotations

import math

from edge.engine import expr
from edge.engine.program import MESSAGE_METRIC
from edge.engine.rules import Rule
from edge.registry import Registry


def truthy(x: float) -> bool:
    return not math.isnan(x) and x != 0.0


def evaluate(node: expr.Node, metrics: dict[str, float], params: dict[str, float]) -> float:
    if isinstance(node, expr.Number):
        return node.value
    if isinstance(node, expr.Metric):
        return metrics.get(node.name, math.nan)
    if isinstance(node, expr.Param):
        return params.get(node.name, math.nan)
    if isinstance(node, expr.Unary):
        value = evaluate(node.operand, metrics, params)
        if node.op == "-":
            return -value
        return 0.0 if truthy(value) else 1.0
    if isinstance(node, expr.Binary):
        a = evaluate(node.left, metrics, params)
        b = evaluate(node.right, metrics, params)
        op = node.op
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            return a / b if b != 0.0 else math.nan
        if op == "and":
            return float(truthy(a) and truthy(b))
        if op == "or":
            return float(truthy(a) or truthy(b))
        if math.isnan(a) or math.isnan(b):
            return 0.0
        return float({"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "==": a == b, "!=": a != b}[op])
    raise ValueError(f"the reference cannot evaluate {node!r}")


def applies(rule: Rule, device) -> bool:
    target = rule.spec.applies_to
    return (
        device.kind in target.kind
        and (target.grid is None or device.grid in target.grid)
        and (target.zone is None or device.zone in target.zone)
        and (target.model is None or device.model in target.model)
        and (target.devices is None or device.id in target.devices)
    )


class ReferenceEngine:
    """Messages in, (kind, rule name, device id, ts) transitions out."""

    def __init__(self, rules: list[Rule], registry: Registry):
        self.rules = rules
        self.registry = registry
        self.latest: dict[str, dict[str, tuple[float, float]]] = {}  # device -> metric -> (ts, value)
        self.active: set[tuple[str, str]] = set()
        self.since: dict[tuple[str, str], float] = {}
        self.referenced = {name for rule in rules for name in rule.metrics}

    def message(self, device_id: str, ts: float, values: dict[str, float]) -> list[tuple[str, str, str, float]]:
        device = self.registry.get(device_id)
        if device is None:
            return []
        known = self.latest.setdefault(device_id, {})
        values = {MESSAGE_METRIC: ts, **{k: v for k, v in values.items() if k in self.referenced}}
        fresh = False
        for name, value in values.items():
            if name not in known or ts > known[name][0]:
                known[name] = (ts, value)
                fresh = True
        if not fresh:
            return []
        metrics = {name: value for name, (_, value) in known.items()}
        out = []
        for rule in self.rules:
            if not applies(rule, device):
                continue
            key = (rule.name, device_id)
            active = key in self.active
            node = rule.clear_when if active else rule.when
            hold = rule.spec.clear_for if active else rule.spec.for_
            if not truthy(evaluate(node, metrics, device.params)):
                self.since.pop(key, None)
                continue
            start = self.since.setdefault(key, ts)
            if ts - start >= hold:
                out.append(("clear" if active else "open", rule.name, device_id, ts))
                self.since.pop(key, None)
                if active:
                    self.active.discard(key)
                else:
                    self.active.add(key)
        return out
