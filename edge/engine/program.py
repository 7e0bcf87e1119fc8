"""Rules compiled to plain arrays: a tiny stack machine the numba kernels interpret.

Each condition becomes a postfix program of (opcode, argument) pairs. Each function call in
a rule becomes an *instance* with its own state per device the rule applies to, kept in one
flat float64 array. Because the kernels interpret these arrays, loading new rules never
needs a new numba compile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.engine import expr
from edge.engine.functions import FUNCTIONS
from edge.engine.rules import Rule
from edge.engine.typecheck import calls_of, strings_of
from edge.kinds import KIND_METRICS
from edge.registry import Device, Registry

# Opcodes. Values are float64; true is 1.0, false 0.0; an unknown metric is NaN, which
# propagates through arithmetic and makes every comparison false.
OP_CONST, OP_METRIC, OP_PARAM = 1, 2, 3
OP_NEG, OP_NOT = 4, 5
OP_ADD, OP_SUB, OP_MUL, OP_DIV = 6, 7, 8, 9
OP_LT, OP_LE, OP_GT, OP_GE, OP_EQ, OP_NE = 10, 11, 12, 13, 14, 15
OP_AND, OP_OR = 16, 17
OP_CALL = 18  # argument: the function instance
OP_JF, OP_JT, OP_BOOL = 19, 20, 21  # short-circuit and/or: jump to the argument, keeping 0 / 1
# Fused "metric <cmp> constant", the commonest shape: argument = metric, aux = constant.
OP_MLT, OP_MLE, OP_MGT, OP_MGE, OP_MEQ, OP_MNE = 22, 23, 24, 25, 26, 27
# Shapes of a whole program the kernels run without the interpreter's loop (same results):
# What the kernels report and keep per device and rule.
OPEN, CLEAR, UPDATE = 1, 2, 3  # transitions; UPDATE: an open order's problem got worse
# quiet[d, SETTLED], quiet[d, LEARNT] and quiet[d, PENDING]: bit p for the device's p-th rule
# (see kernels.step_rule)
SETTLED, LEARNT, PENDING = 0, 1, 2
QUIET_RULES = 63  # rules past the 63rd of a device have no bit: they are stepped at every message

SHAPE_GENERAL = 0
SHAPE_FUSED = 1  # metric <cmp> constant: one fused opcode
SHAPE_CALL = 2  # f(...): one OP_CALL, true when its value is
SHAPE_CALL_CMP = 3  # f(...) <cmp> constant: OP_CALL, OP_CONST, a comparison
FUSED = {"<": OP_MLT, "<=": OP_MLE, ">": OP_MGT, ">=": OP_MGE, "==": OP_MEQ, "!=": OP_MNE}

BINARY_OPCODES = {
    "+": OP_ADD, "-": OP_SUB, "*": OP_MUL, "/": OP_DIV,
    "<": OP_LT, "<=": OP_LE, ">": OP_GT, ">=": OP_GE, "==": OP_EQ, "!=": OP_NE,
    "and": OP_AND, "or": OP_OR,
}

MESSAGE_METRIC = "__message__"  # metric 0: value = arrival time, ts = device time of a message


class TextCodes:
    """Text values (camera labels, zones) as numbers: codes for the texts rules mention.

    Any other text a device sends becomes -1, which equals no text a rule mentions.
    """

    UNKNOWN = -1.0

    def __init__(self, texts: list[str]):
        self.codes = {text: float(i + 1) for i, text in enumerate(dict.fromkeys(texts))}
        self.texts = {code: text for text, code in self.codes.items()}

    def code(self, text: str) -> float:
        return self.codes.get(text, self.UNKNOWN)

    def text(self, code: float) -> str:
        return self.texts.get(code, "(other)")


@dataclass(frozen=True)
class Instance:
    rule: int
    function: str
    metric: int  # -1 for absent()
    param: float  # window or half-life, seconds


@dataclass
class Program:
    """All rules as arrays, rule r in row r."""

    metric_names: list[str]
    text_metrics: set[str]
    texts: TextCodes
    code: np.ndarray  # int32 [rules, 2, length]: row 0 opens, row 1 clears
    args: np.ndarray  # float64 [rules, 2, length]
    aux: np.ndarray  # float64 [rules, 2, length]: the constant of a fused comparison
    length: np.ndarray  # int32 [rules, 2]
    shapes: np.ndarray  # int32 [rules, 2]: SHAPE_* of each program
    hold: np.ndarray  # float64 [rules, 2]: `for` and `clear_for`, seconds
    applies: np.ndarray  # bool [devices, rules]
    rule_metrics: np.ndarray  # int32 [rules, k]: metrics each rule reads, -1 padded
    metric_learns: np.ndarray  # bool [metrics]: a zscore or anomaly learns from the metric's readings
    timed: np.ndarray  # bool [rules]: the condition can change with time alone (functions)
    worse_metric: np.ndarray  # int32 [rules]: the metric whose getting worse revises an open order, or -1
    worse_dir: np.ndarray  # float64 [rules]: +1 higher is worse, -1 lower is worse
    worse_step: np.ndarray  # float64 [rules]: by how much, since the value last reported
    params: np.ndarray  # float64 [devices, params]
    instances: list[Instance]
    inst_func: np.ndarray  # int32 [instances]: function code
    inst_metric: np.ndarray  # int32 [instances]
    inst_param: np.ndarray  # float64 [instances]
    inst_rule: np.ndarray  # int32 [instances]
    inst_off: np.ndarray  # int64 [devices, instances]: where the device's state of the instance starts, or -1
    # Devices to which the same rules apply share a layout: its rules, and where each
    # instance's state lies from the device's first state slot (the kernels use these).
    dev_layout: np.ndarray  # int32 [devices]
    layout_ptr: np.ndarray  # int32 [layouts + 1]: the layout's rules are
    layout_rules: np.ndarray  # int32: layout_rules[layout_ptr[l]:layout_ptr[l + 1]], ascending
    layout_inst: np.ndarray  # int64 [layouts, instances]: offset from the device's first slot, or -1
    # bit p (p < QUIET_RULES) for each p-th rule of the layout that reads metric m
    layout_readers: np.ndarray  # uint64 [layouts, metrics]
    state_base: np.ndarray  # int64 [devices]: the device's first state slot
    state_width: np.ndarray  # int64 [devices]: its number of state slots
    inst_width: np.ndarray  # int32 [instances]: floats per device
    metric_inst_ptr: np.ndarray  # int32 [metrics + 1]: instances reading metric m are
    metric_inst: np.ndarray  # int32: metric_inst[metric_inst_ptr[m]:metric_inst_ptr[m + 1]]
    state_size: int
    stack_size: int

    def position(self, d: int, r: int) -> int:
        """Rule ``r``'s place among the rules of device ``d`` (its bit in the kernels' ``quiet``), or -1."""
        layout = self.dev_layout[d]
        mine = self.layout_rules[self.layout_ptr[layout]:self.layout_ptr[layout + 1]]
        p = int(np.searchsorted(mine, r))
        return p if p < len(mine) and mine[p] == r else -1


def applies(rule: Rule, device: Device) -> bool:
    target = rule.spec.applies_to
    return (
        device.kind in target.kind
        and (target.grid is None or device.grid in target.grid)
        and (target.zone is None or device.zone in target.zone)
        and (target.model is None or device.model in target.model)
        and (target.tags is None or bool(set(target.tags) & set(device.tags)))
        and (target.devices is None or device.id in target.devices)
    )


class _Compiler:
    def __init__(self, metric_index: dict[str, int], param_index: dict[str, int], texts: TextCodes):
        self.metric_index = metric_index
        self.param_index = param_index
        self.texts = texts
        self.instances: list[Instance] = []
        self._instance_index: dict[Instance, int] = {}
        self.rule = 0

    def compile(self, node: expr.Node) -> list[tuple[int, float, float]]:
        out: list[tuple[int, float, float]] = []
        self._emit(node, out)
        return out

    def _emit(self, node: expr.Node, out: list[tuple[int, float, float]]) -> None:
        if isinstance(node, expr.Number):
            out.append((OP_CONST, node.value, 0.0))
        elif isinstance(node, expr.String):
            out.append((OP_CONST, self.texts.code(node.value), 0.0))
        elif isinstance(node, expr.Metric):
            out.append((OP_METRIC, float(self.metric_index[node.name]), 0.0))
        elif isinstance(node, expr.Param):
            if node.name not in self.param_index:
                out.append((OP_CONST, float("nan"), 0.0))
            else:
                out.append((OP_PARAM, float(self.param_index[node.name]), 0.0))
        elif isinstance(node, expr.Unary):
            self._emit(node.operand, out)
            out.append((OP_NEG if node.op == "-" else OP_NOT, 0.0, 0.0))
        elif isinstance(node, expr.Binary) and node.op in ("and", "or"):
            if calls_of(node.left) and not calls_of(node.right):
                # The same value either way round (no side effects, the result is 0 or 1), and the
                # cheap side first often decides it without computing the function.
                node = expr.Binary(node.op, node.right, node.left)
            self._emit(node.left, out)
            jump = len(out)
            out.append((OP_JF if node.op == "and" else OP_JT, 0.0, 0.0))
            self._emit(node.right, out)
            out.append((OP_BOOL, 0.0, 0.0))
            out[jump] = (out[jump][0], float(len(out)), 0.0)
        elif isinstance(node, expr.Binary) and node.op in FUSED and isinstance(node.left, expr.Metric) \
                and isinstance(node.right, (expr.Number, expr.String)):
            constant = node.right.value if isinstance(node.right, expr.Number) else self.texts.code(node.right.value)
            out.append((FUSED[node.op], float(self.metric_index[node.left.name]), constant))
        elif isinstance(node, expr.Binary):
            self._emit(node.left, out)
            self._emit(node.right, out)
            out.append((BINARY_OPCODES[node.op], 0.0, 0.0))
        elif isinstance(node, expr.Call):
            function = FUNCTIONS[node.name]
            metric, param = -1, 0.0
            for arg, kind in zip(node.args, function.args):
                if kind == "metric":
                    metric = self.metric_index[arg.name]
                else:
                    param = arg.value
            # One instance per (rule, function, metric, parameter): `when` and the `clear_when`
            # made from it (or a function written twice) share one state, learnt once per reading.
            instance = Instance(self.rule, node.name, metric, param)
            k = self._instance_index.setdefault(instance, len(self.instances))
            if k == len(self.instances):
                self.instances.append(instance)
            out.append((OP_CALL, float(k), 0.0))
        else:
            raise ValueError(f"cannot compile {node!r}")


def shape_of(program: list[tuple[int, float, float]]) -> int:
    ops = [opcode for opcode, _, _ in program]
    if len(ops) == 1 and ops[0] in FUSED.values():
        return SHAPE_FUSED
    if ops == [OP_CALL]:
        return SHAPE_CALL
    if len(ops) == 3 and ops[:2] == [OP_CALL, OP_CONST] and ops[2] in (OP_LT, OP_LE, OP_GT, OP_GE, OP_EQ, OP_NE):
        return SHAPE_CALL_CMP
    return SHAPE_GENERAL


def stack_depth(program: list[tuple[int, float, float]]) -> int:
    """Deepest stack the program needs (a jump leaves the depth it would have had at its target)."""
    depth = deepest = 0
    for opcode, _, _ in program:
        if opcode in (OP_CONST, OP_METRIC, OP_PARAM, OP_CALL) or opcode in FUSED.values():
            depth += 1
        elif opcode not in (OP_NEG, OP_NOT, OP_BOOL):
            depth -= 1
        deepest = max(deepest, depth)
    return deepest


def compile_rules(rules: list[Rule], registry: Registry) -> Program:
    metric_names: list[str] = [MESSAGE_METRIC]
    for rule in rules:
        for name in rule.metrics:
            if name not in metric_names:
                metric_names.append(name)
    metric_index = {name: i for i, name in enumerate(metric_names)}
    param_index = {name: i for i, name in enumerate(registry.param_names)}
    texts = TextCodes([s for rule in rules for s in strings_of(rule.when) + strings_of(rule.clear_when)])
    text_metrics = {
        name for catalogue in KIND_METRICS.values() for name, info in catalogue.items() if info.type == "text"
    }

    compiler = _Compiler(metric_index, param_index, texts)
    programs = []
    for r, rule in enumerate(rules):
        compiler.rule = r
        programs.append((compiler.compile(rule.when), compiler.compile(rule.clear_when)))
    instances = compiler.instances

    n, n_dev = len(rules), len(registry)
    length = max([1] + [max(len(a), len(b)) for a, b in programs])
    code = np.zeros((n, 2, length), dtype=np.int32)
    args = np.zeros((n, 2, length), dtype=np.float64)
    aux = np.zeros((n, 2, length), dtype=np.float64)
    lengths = np.zeros((n, 2), dtype=np.int32)
    shapes = np.zeros((n, 2), dtype=np.int32)
    stack = 1
    for r, pair in enumerate(programs):
        for which, program in enumerate(pair):
            lengths[r, which] = len(program)
            shapes[r, which] = shape_of(program)
            stack = max(stack, stack_depth(program))
            for i, (opcode, arg, extra) in enumerate(program):
                code[r, which, i] = opcode
                args[r, which, i] = arg
                aux[r, which, i] = extra
    hold = np.array([[rule.spec.for_, rule.spec.clear_for] for rule in rules], dtype=np.float64).reshape(n, 2)

    width = max([1] + [len(rule.metrics) for rule in rules])
    rule_metrics = np.full((n, width), -1, dtype=np.int32)
    for r, rule in enumerate(rules):
        for k, name in enumerate(rule.metrics):
            rule_metrics[r, k] = metric_index[name]

    applies_to = np.zeros((n_dev, n), dtype=np.bool_)
    for r, rule in enumerate(rules):
        for device in registry.devices:
            applies_to[device.index, r] = applies(rule, device)

    inst_func = np.array([FUNCTIONS[i.function].code for i in instances], dtype=np.int32)
    inst_metric = np.array([i.metric for i in instances], dtype=np.int32)
    inst_param = np.array([i.param for i in instances], dtype=np.float64)
    inst_rule = np.array([i.rule for i in instances], dtype=np.int32)
    inst_width = np.array([FUNCTIONS[i.function].width for i in instances], dtype=np.int32)
    # Each device's function states lie together, so one device's message touches one region.
    layouts: dict[bytes, int] = {}
    dev_layout = np.zeros(n_dev, dtype=np.int32)
    for d in range(n_dev):
        dev_layout[d] = layouts.setdefault(applies_to[d].tobytes(), len(layouts))
    layout_rows = [np.frombuffer(row, dtype=np.bool_) for row in layouts]
    layout_ptr = np.zeros(len(layout_rows) + 1, dtype=np.int32)
    for l, row in enumerate(layout_rows):
        layout_ptr[l + 1] = layout_ptr[l] + int(row.sum())
    layout_rules = np.array([r for row in layout_rows for r in np.flatnonzero(row)], dtype=np.int32)
    layout_inst = np.full((max(1, len(layout_rows)), len(instances)), -1, dtype=np.int64)
    layout_width = np.zeros(max(1, len(layout_rows)), dtype=np.int64)
    for l, row in enumerate(layout_rows):
        for k, instance in enumerate(instances):
            if row[instance.rule]:
                layout_inst[l, k] = layout_width[l]
                layout_width[l] += int(inst_width[k])
    state_width = layout_width[dev_layout] if n_dev else np.zeros(0, dtype=np.int64)
    state_base = np.zeros(n_dev, dtype=np.int64)
    if n_dev:
        state_base[1:] = np.cumsum(state_width)[:-1]
    offset = int(state_width.sum())
    inst_off = np.where(layout_inst[dev_layout] >= 0, state_base[:, None] + layout_inst[dev_layout], -1)
    inst_off = inst_off.reshape(n_dev, len(instances)).astype(np.int64)
    by_metric: list[list[int]] = [[] for _ in metric_names]
    for k, instance in enumerate(instances):
        if instance.metric >= 0:
            by_metric[instance.metric].append(k)
    metric_inst_ptr = np.zeros(len(metric_names) + 1, dtype=np.int32)
    for m, found in enumerate(by_metric):
        metric_inst_ptr[m + 1] = metric_inst_ptr[m] + len(found)
    metric_inst = np.array([k for found in by_metric for k in found], dtype=np.int32)

    timed = np.array([any(i.rule == r for i in instances) for r in range(n)], dtype=np.bool_)
    worse_metric = np.full(n, -1, dtype=np.int32)
    worse_dir = np.zeros(n, dtype=np.float64)
    worse_step = np.zeros(n, dtype=np.float64)
    for r, rule in enumerate(rules):
        worse = rule.worsening
        if worse is not None:
            worse_metric[r], worse_dir[r], worse_step[r] = metric_index[worse.metric], worse.direction, worse.step
    metric_learns = np.zeros(len(metric_names), dtype=np.bool_)
    for instance in instances:
        if instance.function in ("zscore", "anomaly"):
            metric_learns[instance.metric] = True
    layout_readers = np.zeros((max(1, len(layout_rows)), len(metric_names)), dtype=np.uint64)
    for l, row in enumerate(layout_rows):
        for position, r in enumerate(np.flatnonzero(row)[:QUIET_RULES]):
            for name in rules[r].metrics:
                layout_readers[l, metric_index[name]] |= np.uint64(1) << np.uint64(position)
    params = np.full((n_dev, max(1, len(registry.param_names))), np.nan)
    for device in registry.devices:
        for name, value in device.params.items():
            params[device.index, param_index[name]] = value
    return Program(
        metric_names, text_metrics, texts, code, args, aux, lengths, shapes, hold, applies_to, rule_metrics,
        metric_learns, timed, worse_metric, worse_dir, worse_step, params, instances, inst_func, inst_metric, inst_param, inst_rule, inst_off,
        dev_layout, layout_ptr, layout_rules, layout_inst, layout_readers, state_base, state_width, inst_width,
        metric_inst_ptr, metric_inst, offset, stack,
    )

