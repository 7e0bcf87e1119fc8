"""Rules compiled to plain arrays: a tiny stack machine the numba kernels interpret.

Each condition becomes a postfix program of (opcode, argument) pairs. Because the kernels
interpret these arrays, loading new rules never needs a new numba compile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.engine import expr
from edge.engine.rules import Rule
from edge.registry import Registry

# Opcodes. Values are float64; true is 1.0, false 0.0; an unknown metric is NaN, which
# propagates through arithmetic and makes every comparison false.
OP_CONST, OP_METRIC, OP_PARAM = 1, 2, 3
OP_NEG, OP_NOT = 4, 5
OP_ADD, OP_SUB, OP_MUL, OP_DIV = 6, 7, 8, 9
OP_LT, OP_LE, OP_GT, OP_GE, OP_EQ, OP_NE = 10, 11, 12, 13, 14, 15
OP_AND, OP_OR = 16, 17

BINARY_OPCODES = {
    "+": OP_ADD, "-": OP_SUB, "*": OP_MUL, "/": OP_DIV,
    "<": OP_LT, "<=": OP_LE, ">": OP_GT, ">=": OP_GE, "==": OP_EQ, "!=": OP_NE,
    "and": OP_AND, "or": OP_OR,
}


def _emit(node: expr.Node, metric_index: dict[str, int], param_index: dict[str, int], out: list[tuple[int, float]]) -> None:
    if isinstance(node, expr.Number):
        out.append((OP_CONST, node.value))
    elif isinstance(node, expr.Metric):
        out.append((OP_METRIC, float(metric_index[node.name])))
    elif isinstance(node, expr.Param):
        if node.name not in param_index:
            out.append((OP_CONST, float("nan")))
        else:
            out.append((OP_PARAM, float(param_index[node.name])))
    elif isinstance(node, expr.Unary):
        _emit(node.operand, metric_index, param_index, out)
        out.append((OP_NEG if node.op == "-" else OP_NOT, 0.0))
    elif isinstance(node, expr.Binary):
        _emit(node.left, metric_index, param_index, out)
        _emit(node.right, metric_index, param_index, out)
        out.append((BINARY_OPCODES[node.op], 0.0))
    else:  # Calls and strings are refused when the rule file is loaded.
        raise ValueError(f"cannot compile {node!r}")


def _stack_depth(program: list[tuple[int, float]]) -> int:
    depth = deepest = 0
    for opcode, _ in program:
        if opcode in (OP_CONST, OP_METRIC, OP_PARAM):
            depth += 1
        elif opcode not in (OP_NEG, OP_NOT):
            depth -= 1
        deepest = max(deepest, depth)
    return deepest


@dataclass
class Program:
    """All rules as arrays, rule r in row r."""

    metric_names: list[str]
    code: np.ndarray  # int32 [rules, 2, length]: row 0 opens, row 1 clears
    args: np.ndarray  # float64 [rules, 2, length]
    length: np.ndarray  # int32 [rules, 2]
    hold: np.ndarray  # float64 [rules, 2]: `for` and `clear_for`, seconds
    applies: np.ndarray  # bool [rules, devices]
    rule_metrics: np.ndarray  # int32 [rules, k]: metrics each rule reads, -1 padded
    params: np.ndarray  # float64 [devices, params]
    stack_size: int


def _applies(rule: Rule, registry: Registry) -> np.ndarray:
    target = rule.spec.applies_to
    mask = np.zeros(len(registry), dtype=np.bool_)
    for device in registry.devices:
        mask[device.index] = (
            device.kind in target.kind
            and (target.grid is None or device.grid in target.grid)
            and (target.zone is None or device.zone in target.zone)
            and (target.model is None or device.model in target.model)
            and (target.devices is None or device.id in target.devices)
        )
    return mask


MESSAGE_METRIC = "__message__"  # metric 0: the time of the device's latest message


def compile_rules(rules: list[Rule], registry: Registry) -> Program:
    metric_names: list[str] = [MESSAGE_METRIC]
    for rule in rules:
        for name in rule.metrics:
            if name not in metric_names:
                metric_names.append(name)
    metric_index = {name: i for i, name in enumerate(metric_names)}
    param_index = {name: i for i, name in enumerate(registry.param_names)}

    programs = [
        (_compile(rule.when, metric_index, param_index), _compile(rule.clear_when, metric_index, param_index))
        for rule in rules
    ]
    length = max([1] + [max(len(a), len(b)) for a, b in programs])
    n = len(rules)
    code = np.zeros((n, 2, length), dtype=np.int32)
    args = np.zeros((n, 2, length), dtype=np.float64)
    lengths = np.zeros((n, 2), dtype=np.int32)
    stack = 1
    for r, pair in enumerate(programs):
        for which, program in enumerate(pair):
            lengths[r, which] = len(program)
            stack = max(stack, _stack_depth(program))
            for i, (opcode, arg) in enumerate(program):
                code[r, which, i] = opcode
                args[r, which, i] = arg
    hold = np.array([[rule.spec.for_, rule.spec.clear_for] for rule in rules], dtype=np.float64).reshape(n, 2)
    width = max([1] + [len(rule.metrics) for rule in rules])
    rule_metrics = np.full((n, width), -1, dtype=np.int32)
    for r, rule in enumerate(rules):
        for k, name in enumerate(rule.metrics):
            rule_metrics[r, k] = metric_index[name]
    applies = np.zeros((n, len(registry)), dtype=np.bool_)
    for r, rule in enumerate(rules):
        applies[r] = _applies(rule, registry)
    params = np.full((len(registry), max(1, len(registry.param_names))), np.nan)
    for device in registry.devices:
        for name, value in device.params.items():
            params[device.index, param_index[name]] = value
    return Program(metric_names, code, args, lengths, hold, applies, rule_metrics, params, stack)


def _compile(node: expr.Node, metric_index: dict[str, int], param_index: dict[str, int]) -> list[tuple[int, float]]:
    out: list[tuple[int, float]] = []
    _emit(node, metric_index, param_index, out)
    return out
