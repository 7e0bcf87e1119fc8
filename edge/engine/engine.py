"""The rule engine: readings in, rule transitions (open / clear) out.

Readings are turned into numpy arrays once per batch; the kernels in ``kernels.py`` keep
every device's state in arrays owned by this class. They run built ahead of time when a
module for their current source is built (aot.py, ``edge engine build``), else under numba.
``process`` handles a batch of messages; ``tick`` advances time for rules that can change
without a new message.
"""

from __future__ import annotations

import math
import time
from typing import Callable
from dataclasses import dataclass

import numpy as np

from edge.engine import aot
from edge.engine.program import CLEAR, OPEN, PENDING, QUIET_RULES, SETTLED, UPDATE, Program, compile_rules
from edge.engine.rules import Rule
from edge.registry import Device, Registry


KIND_NAMES = {OPEN: "open", CLEAR: "clear", UPDATE: "update"}


@dataclass(frozen=True)
class Evidence:
    metric: str
    value: float | str


@dataclass(frozen=True)
class Transition:
    kind: str  # "open", "clear", or "update" (an open problem got worse; see Rule.worsening)
    rule: Rule
    device: Device
    ts: float  # the device time at which the transition completed
    evidence: tuple[Evidence, ...]


class ReadingBatch:
    """Readings as parallel arrays: device index, metric index, device time, value.

    Each message starts with a marker reading (metric 0) whose value is its arrival time.
    Values are finite numbers (the kernels' window scans rely on it); BatchBuilder, which
    makes every batch the engine processes, drops any other value.
    """

    def __init__(self, dev: np.ndarray, met: np.ndarray, ts: np.ndarray, val: np.ndarray):
        # the kernels take exactly these types, contiguous (no copy when they already are)
        self.dev = np.ascontiguousarray(dev, dtype=np.int32)
        self.met = np.ascontiguousarray(met, dtype=np.int32)
        self.ts = np.ascontiguousarray(ts, dtype=np.float64)
        self.val = np.ascontiguousarray(val, dtype=np.float64)

    def __len__(self) -> int:
        return int(self.dev.shape[0])


class BatchBuilder:
    """Collects decoded messages into a ReadingBatch, keeping only metrics the rules read."""

    def __init__(self, program: Program):
        self.metric_index = {name: i for i, name in enumerate(program.metric_names)}
        self.texts = program.texts
        self.dev: list[int] = []
        self.met: list[int] = []
        self.ts: list[float] = []
        self.val: list[float] = []

    def add(self, device_index: int, ts: float, values: dict[str, float | str], arrival: float | None = None) -> None:
        index = self.metric_index
        dev, met, tss, val = self.dev, self.met, self.ts, self.val
        dev.append(device_index)
        met.append(0)
        tss.append(ts)
        val.append(ts if arrival is None else arrival)
        for name, value in values.items():
            m = index.get(name)
            if m is None:
                continue
            if isinstance(value, str):
                value = self.texts.code(value)
            elif not math.isfinite(value):  # not a reading (the window scans need finite values)
                continue
            dev.append(device_index)
            met.append(m)
            tss.append(ts)
            val.append(value)

    def __len__(self) -> int:
        return len(self.dev)

    def build(self) -> ReadingBatch:
        return ReadingBatch(
            np.array(self.dev, dtype=np.int32),
            np.array(self.met, dtype=np.int32),
            np.array(self.ts, dtype=np.float64),
            np.array(self.val, dtype=np.float64),
        )


class Engine:
    def __init__(self, rules: list[Rule], registry: Registry, origin: float | None = None,
                 kernels: aot.Kernels | None = None):
        self.kernels = aot.implementation() if kernels is None else kernels
        self.rules = rules
        self.registry = registry
        self.program = p = compile_rules(rules, registry)
        self.origin = float(time.time() if origin is None else origin)  # absent() counts from here for unseen devices
        n_dev, n_met, n_rules = len(registry), len(p.metric_names), len(rules)
        self.latest = np.full((n_dev, n_met), np.nan)
        self.latest_ts = np.full((n_dev, n_met), -np.inf)
        # device-major: one device's state lies together (see kernels.step_rule)
        self.since = np.full((n_dev, n_rules), np.nan)  # since when the condition in force has held
        self.active = np.zeros((n_dev, n_rules), dtype=np.bool_)  # the rule's order is open for the device
        # bit words of the device's rules: settled, learnt, pending (see kernels.step_rule)
        self.quiet = np.zeros((n_dev, PENDING + 1), dtype=np.uint64)
        self.reported = np.full((n_dev, n_rules), np.nan)  # value of the worsening metric last reported
        self.state = np.full(p.state_size, np.nan)
        capacity = max(1024, 4 * n_rules)
        self._out_rule = np.zeros(capacity, dtype=np.int32)
        self._out_dev = np.zeros(capacity, dtype=np.int32)
        self._out_kind = np.zeros(capacity, dtype=np.int32)
        self._out_ts = np.zeros(capacity, dtype=np.float64)
        self._out_vals = np.zeros((capacity, p.rule_metrics.shape[1]), dtype=np.float64)
        self._stack = np.zeros(p.stack_size + 1, dtype=np.float64)
        self.late_readings = 0
        self.evaluations = 0
        self._rule_index = {rule.name: r for r, rule in enumerate(rules)}
        self.kernels.init_state(*self.init_args())

    def init_args(self) -> tuple:
        p = self.program
        return self.state, p.inst_func, p.inst_off

    def batch_args(self, batch: ReadingBatch, start: int) -> tuple:
        """The arguments of kernels.run_batch for ``batch`` from reading ``start``."""
        p = self.program
        return (
            batch.dev, batch.met, batch.ts, batch.val, int(start),
            self.latest, self.latest_ts, p.params,
            p.code, p.args, p.aux, p.length, p.shapes, p.hold, p.rule_metrics, p.metric_learns,
            p.dev_layout, p.layout_ptr, p.layout_rules, p.layout_inst, p.layout_readers, p.state_base, p.state_width,
            self.since, self.active, self.quiet,
            self.state, p.inst_func, p.inst_metric, p.inst_param, p.metric_inst_ptr, p.metric_inst,
            self.origin,
            p.worse_metric, p.worse_dir, p.worse_step, self.reported,
            self._out_rule, self._out_dev, self._out_kind, self._out_ts, self._out_vals,
            self._stack,
        )

    def tick_args(self, now: float, start: int) -> tuple:
        """The arguments of kernels.tick at gateway time ``now`` from device ``start``."""
        p = self.program
        return (
            float(now), int(start),
            self.latest, self.latest_ts, p.params,
            p.code, p.args, p.aux, p.length, p.shapes, p.hold, p.rule_metrics, p.timed,
            p.dev_layout, p.layout_ptr, p.layout_rules, p.layout_inst, p.state_base,
            self.since, self.active, self.quiet,
            self.state, p.inst_func, p.inst_metric, p.inst_param,
            self.origin,
            p.worse_metric, p.worse_dir, p.worse_step, self.reported,
            self._out_rule, self._out_dev, self._out_kind, self._out_ts, self._out_vals,
            self._stack,
        )

    def _state_index(self, k: int) -> np.ndarray:
        """Indexes into the state array of instance ``k``: one row per device (-1 rows where it does not apply)."""
        p = self.program
        offsets = p.inst_off[:, k]
        return np.where(offsets[:, None] >= 0, offsets[:, None] + np.arange(p.inst_width[k]), -1)

    def builder(self) -> BatchBuilder:
        return BatchBuilder(self.program)

    def warm_up(self) -> None:
        """Compile (or load from numba's on-disk cache) before the first real batch arrives."""
        empty_i, empty_f = np.zeros(0, np.int32), np.zeros(0, np.float64)
        self.process(ReadingBatch(empty_i, empty_i, empty_f, empty_f), force=True)
        self.tick(self.origin, start=len(self.registry))

    def mark_active(self, rule_name: str, device_id: str) -> None:
        """Resume after a restart: an order that is open makes its rule active for the device.

        Its worsening starts again from the device's next reading (see Rule.worsening)."""
        r = self._rule_index.get(rule_name)
        device = self.registry.get(device_id)
        if r is not None and device is not None and self.program.applies[device.index, r] \
                and not self.active[device.index, r]:
            self.active[device.index, r] = True
            position = self.program.position(device.index, r)
            if position < QUIET_RULES:
                self.quiet[device.index, SETTLED] &= ~np.uint64(1 << position)
            self.since[device.index, r] = np.nan  # clearing starts afresh
            self.reported[device.index, r] = np.nan

    def process(self, batch: ReadingBatch, force: bool = False) -> list[Transition]:
        transitions: list[Transition] = []
        run_batch = self.kernels.run_batch
        start = 0
        while start < len(batch) or force:
            force = False
            n_out, start, late, considered = run_batch(*self.batch_args(batch, start))
            self.late_readings += late
            self.evaluations += considered  # rules x messages
            transitions.extend(self._collect(n_out))
        return transitions

    def tick(self, now: float, start: int = 0) -> list[Transition]:
        """Evaluate the rules that can change with time alone, at gateway time ``now``."""
        transitions: list[Transition] = []
        tick = self.kernels.tick
        n_dev = len(self.registry)
        first = True
        while start < n_dev or first:
            first = False
            n_out, start = tick(*self.tick_args(now, start))
            transitions.extend(self._collect(n_out))
        return transitions

    def _collect(self, n_out: int) -> list[Transition]:
        p = self.program
        out = []
        for o in range(n_out):
            rule = self.rules[self._out_rule[o]]
            evidence = []
            for k, name in enumerate(rule.metrics):
                value = float(self._out_vals[o, k])
                if math.isnan(value):
                    continue
                evidence.append(Evidence(name, p.texts.text(value) if name in p.text_metrics else value))
            out.append(
                Transition(
                    KIND_NAMES[self._out_kind[o]],
                    rule,
                    self.registry.devices[self._out_dev[o]],
                    float(self._out_ts[o]),
                    tuple(evidence),
                )
            )
        return out

    def carry_over(self, old: "Engine") -> list[str]:
        """Take the state of every rule unchanged since ``old`` (same registry); returns their names.

        Latest values move by metric name; a rule keeps its pending times, active flags and
        function state only when its definition is identical.
        """
        if [d.id for d in old.registry.devices] != [d.id for d in self.registry.devices]:
            return []
        old_metrics = {name: i for i, name in enumerate(old.program.metric_names)}
        for m, name in enumerate(self.program.metric_names):
            if name in old_metrics:
                self.latest[:, m] = old.latest[:, old_metrics[name]]
                self.latest_ts[:, m] = old.latest_ts[:, old_metrics[name]]
        self.origin = old.origin
        self.evaluations = old.evaluations
        kept = []
        old_rules = {rule.name: r for r, rule in enumerate(old.rules)}
        for r, rule in enumerate(self.rules):
            o = old_rules.get(rule.name)
            if o is None or old.rules[o].spec != rule.spec:
                continue
            self.since[:, r] = old.since[:, o]
            self.active[:, r] = old.active[:, o]
            self.reported[:, r] = old.reported[:, o]
            mine = [k for k, i in enumerate(self.program.instances) if i.rule == r]
            theirs = [k for k, i in enumerate(old.program.instances) if i.rule == o]
            for k_new, k_old in zip(mine, theirs):
                if self.program.inst_width[k_new] == 0:
                    continue
                new_index, old_index = self._state_index(k_new), old._state_index(k_old)
                rows = new_index[:, 0] >= 0
                self.state[new_index[rows]] = old.state[old_index[rows]]
            kept.append(rule.name)
        self.quiet[:, PENDING] = ~np.uint64(0)  # times carried over: each rule's is looked at once
        return kept

    def reset_rules(self, rules: list[int]) -> None:
        """Forget the state of ``rules`` on every device: they start fresh, as a changed rule does on
        a reload (``carry_over``). Every rule's skip bits are cleared, as after a reload."""
        if not rules:
            return
        self.since[:, rules] = np.nan
        self.active[:, rules] = False
        self.reported[:, rules] = np.nan
        fresh = np.full(self.program.state_size, np.nan)
        self.kernels.init_state(fresh, self.program.inst_func, self.program.inst_off)
        for k, instance in enumerate(self.program.instances):
            if instance.rule in rules and self.program.inst_width[k]:
                index = self._state_index(k)
                rows = index[:, 0] >= 0
                self.state[index[rows]] = fresh[index[rows]]
        self.quiet[:, :] = 0
        self.quiet[:, PENDING] = ~np.uint64(0)

    def reset_device(self, d: int) -> None:
        """Forget everything about device ``d``, as if it had never reported (its clock was wrong).

        Its latest values and times, waits, active flags, baselines, settle bits and every
        window and detector state go back to their initial values."""
        self.latest[d, :] = np.nan
        self.latest_ts[d, :] = -np.inf
        self.since[d, :] = np.nan
        self.active[d, :] = False
        self.reported[d, :] = np.nan
        self.quiet[d, :] = 0
        base, width = int(self.program.state_base[d]), int(self.program.state_width[d])
        if width:
            fresh = np.full(self.program.state_size, np.nan)
            offsets = np.where(np.arange(len(self.registry))[:, None] == d, self.program.inst_off, -1)
            self.kernels.init_state(fresh, self.program.inst_func, np.ascontiguousarray(offsets))
            self.state[base:base + width] = fresh[base:base + width]

    def clock(self, now: float) -> Callable[[str], float]:
        """Each device's clock at gateway time ``now``, by device id (``device_time``; the gateway's own
        clock for an id not in the registry): what escalation, the re-check of fixes and the backtest count in."""
        index = self.registry.by_id

        def clock(device_id: str) -> float:
            device = index.get(device_id)
            return self.device_time(device.index, now) if device is not None else now

        return clock

    def device_time(self, d: int, now: float) -> float:
        """Device ``d``'s clock at gateway time ``now``: its newest report's time, run on by the
        gateway time since that report arrived (never back before it), as ``tick`` reckons it.
        A device not heard from yet has the gateway's clock."""
        if not self.latest_ts[d, 0] > -math.inf:
            return float(now)
        return float(max(now - (self.latest[d, 0] - self.latest_ts[d, 0]), self.latest_ts[d, 0]))

    def state_bytes(self) -> int:
        arrays = (self.latest, self.latest_ts, self.since, self.active, self.quiet, self.reported, self.state)
        return int(sum(a.nbytes for a in arrays))

