"""The rule engine: readings in, rule transitions (open / clear) out.

Readings are turned into numpy arrays once per batch; the kernels in ``kernels.py`` keep
every device's state in arrays owned by this class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge.engine import kernels
from edge.engine.program import compile_rules
from edge.engine.rules import Rule
from edge.registry import Device, Registry


@dataclass(frozen=True)
class Evidence:
    metric: str
    value: float


@dataclass(frozen=True)
class Transition:
    kind: str  # "open" or "clear"
    rule: Rule
    device: Device
    ts: float  # the device's timestamp of the reading that completed the transition
    evidence: tuple[Evidence, ...]


class ReadingBatch:
    """Readings as parallel arrays: device index, metric index, device time, value."""

    def __init__(self, dev: np.ndarray, met: np.ndarray, ts: np.ndarray, val: np.ndarray):
        self.dev, self.met, self.ts, self.val = dev, met, ts, val

    def __len__(self) -> int:
        return int(self.dev.shape[0])


class BatchBuilder:
    """Collects decoded messages into a ReadingBatch, keeping only metrics the rules read."""

    def __init__(self, metric_index: dict[str, int]):
        self.metric_index = metric_index
        self.dev: list[int] = []
        self.met: list[int] = []
        self.ts: list[float] = []
        self.val: list[float] = []

    def add(self, device_index: int, ts: float, values: dict[str, float]) -> None:
        index = self.metric_index
        # Every message marks the device's time, so `for` advances on any report of the device.
        self.dev.append(device_index)
        self.met.append(0)
        self.ts.append(ts)
        self.val.append(ts)
        for name, value in values.items():
            m = index.get(name)
            if m is not None:
                self.dev.append(device_index)
                self.met.append(m)
                self.ts.append(ts)
                self.val.append(value)

    def build(self) -> ReadingBatch:
        return ReadingBatch(
            np.array(self.dev, dtype=np.int32),
            np.array(self.met, dtype=np.int32),
            np.array(self.ts, dtype=np.float64),
            np.array(self.val, dtype=np.float64),
        )


class Engine:
    def __init__(self, rules: list[Rule], registry: Registry):
        self.rules = rules
        self.registry = registry
        self.program = compile_rules(rules, registry)
        self.metric_index = {name: i for i, name in enumerate(self.program.metric_names)}
        n_dev, n_met, n_rules = len(registry), max(1, len(self.program.metric_names)), len(rules)
        self.latest = np.full((n_dev, n_met), np.nan)
        self.latest_ts = np.full((n_dev, n_met), -np.inf)
        self.since = np.full((n_rules, n_dev, 2), np.nan)
        self.active = np.zeros((n_rules, n_dev), dtype=np.bool_)
        capacity = max(1024, 4 * n_rules)
        self._out_rule = np.zeros(capacity, dtype=np.int32)
        self._out_dev = np.zeros(capacity, dtype=np.int32)
        self._out_kind = np.zeros(capacity, dtype=np.int32)
        self._out_ts = np.zeros(capacity, dtype=np.float64)
        self._out_vals = np.zeros((capacity, self.program.rule_metrics.shape[1]), dtype=np.float64)
        self._stack = np.zeros(self.program.stack_size + 1, dtype=np.float64)
        self.late_readings = 0
        self._rule_index = {rule.name: r for r, rule in enumerate(rules)}

    def builder(self) -> BatchBuilder:
        return BatchBuilder(self.metric_index)

    def mark_active(self, rule_name: str, device_id: str) -> None:
        """Resume after a restart: an order that is open makes its rule active for the device."""
        r = self._rule_index.get(rule_name)
        device = self.registry.get(device_id)
        if r is not None and device is not None:
            self.active[r, device.index] = True

    def process(self, batch: ReadingBatch) -> list[Transition]:
        transitions: list[Transition] = []
        p = self.program
        start = 0
        while start < len(batch):
            n_out, start, late = kernels.run_batch(
                batch.dev, batch.met, batch.ts, batch.val, start,
                self.latest, self.latest_ts, p.params,
                p.code, p.args, p.length, p.hold, p.applies, p.rule_metrics,
                self.since, self.active,
                self._out_rule, self._out_dev, self._out_kind, self._out_ts, self._out_vals,
                self._stack,
            )
            self.late_readings += late
            for o in range(n_out):
                rule = self.rules[self._out_rule[o]]
                evidence = tuple(
                    Evidence(name, float(self._out_vals[o, k]))
                    for k, name in enumerate(rule.metrics)
                    if not math.isnan(self._out_vals[o, k])
                )
                transitions.append(
                    Transition(
                        "open" if self._out_kind[o] == kernels.OPEN else "clear",
                        rule,
                        self.registry.devices[self._out_dev[o]],
                        float(self._out_ts[o]),
                        evidence,
                    )
                )
        return transitions
