"""numba kernels of the rule engine: they see only numpy arrays and integers.

``run_batch`` walks a batch of readings sorted as they arrived. Readings of one message
(same device, same timestamp, adjacent) update the device's latest values together; then
every rule that applies to the device is evaluated once on those values, at that time.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from edge.engine.program import (
    OP_ADD, OP_AND, OP_CONST, OP_DIV, OP_EQ, OP_GE, OP_GT, OP_LE, OP_LT, OP_METRIC,
    OP_MUL, OP_NE, OP_NEG, OP_NOT, OP_OR, OP_PARAM, OP_SUB,
)

OPEN, CLEAR = 1, 2


@njit(cache=True)
def _truthy(x):
    return x == x and x != 0.0


@njit(cache=True)
def evaluate(code, args, length, latest_row, params_row, stack):
    """Run one postfix program on one device's latest values; returns True or False."""
    top = -1
    for i in range(length):
        op = code[i]
        if op == OP_CONST:
            top += 1
            stack[top] = args[i]
        elif op == OP_METRIC:
            top += 1
            stack[top] = latest_row[int(args[i])]
        elif op == OP_PARAM:
            top += 1
            stack[top] = params_row[int(args[i])]
        elif op == OP_NEG:
            stack[top] = -stack[top]
        elif op == OP_NOT:
            stack[top] = 0.0 if _truthy(stack[top]) else 1.0
        else:
            b = stack[top]
            top -= 1
            a = stack[top]
            if op == OP_ADD:
                r = a + b
            elif op == OP_SUB:
                r = a - b
            elif op == OP_MUL:
                r = a * b
            elif op == OP_DIV:
                r = a / b if b != 0.0 else math.nan
            elif op == OP_LT:
                r = 1.0 if a < b else 0.0
            elif op == OP_LE:
                r = 1.0 if a <= b else 0.0
            elif op == OP_GT:
                r = 1.0 if a > b else 0.0
            elif op == OP_GE:
                r = 1.0 if a >= b else 0.0
            elif op == OP_EQ:
                r = 1.0 if a == b else 0.0
            elif op == OP_NE:
                r = 1.0 if (a == a and b == b and a != b) else 0.0
            elif op == OP_AND:
                r = 1.0 if (_truthy(a) and _truthy(b)) else 0.0
            else:  # OP_OR
                r = 1.0 if (_truthy(a) or _truthy(b)) else 0.0
            stack[top] = r
    return top >= 0 and _truthy(stack[0])


@njit(cache=True)
def run_batch(
    dev, met, ts, val, start,
    latest, latest_ts, params,
    code, args, length, hold, applies, rule_metrics,
    since, active,
    out_rule, out_dev, out_kind, out_ts, out_vals,
    stack,
):
    """Process readings from ``start``; returns (transitions written, next reading, late readings).

    Stops early, at a message boundary, when the output arrays could overflow; the caller
    then empties them and calls again from the returned index.
    """
    n = dev.shape[0]
    n_rules = code.shape[0]
    capacity = out_rule.shape[0]
    n_out = 0
    late = 0
    fresh = False
    i = start
    while i < n:
        d = dev[i]
        m = met[i]
        t = ts[i]
        if t > latest_ts[d, m]:
            latest[d, m] = val[i]
            latest_ts[d, m] = t
            fresh = True
        else:
            late += 1
        same_message = i + 1 < n and dev[i + 1] == d and ts[i + 1] == t
        i += 1
        if same_message:
            continue
        if not fresh:
            continue
        fresh = False
        for r in range(n_rules):
            if not applies[r, d]:
                continue
            which = 1 if active[r, d] else 0
            holds = evaluate(code[r, which], args[r, which], length[r, which], latest[d], params[d], stack)
            if not holds:
                since[r, d, which] = math.nan
                continue
            if math.isnan(since[r, d, which]):
                since[r, d, which] = t
            if t - since[r, d, which] >= hold[r, which]:
                out_rule[n_out] = r
                out_dev[n_out] = d
                out_kind[n_out] = CLEAR if which == 1 else OPEN
                out_ts[n_out] = t
                for k in range(rule_metrics.shape[1]):
                    mk = rule_metrics[r, k]
                    out_vals[n_out, k] = latest[d, mk] if mk >= 0 else math.nan
                n_out += 1
                active[r, d] = which == 0
                since[r, d, 0] = math.nan
                since[r, d, 1] = math.nan
        if n_out + n_rules > capacity:
            break
    return n_out, i, late


def warm_up() -> None:
    """Compile (or load from the on-disk cache) before the first real batch arrives."""
    i32, f64 = np.int32, np.float64
    run_batch(
        np.zeros(1, i32), np.zeros(1, i32), np.ones(1, f64), np.ones(1, f64), 0,
        np.zeros((1, 1), f64), np.full((1, 1), -np.inf), np.zeros((1, 1), f64),
        np.array([[[OP_CONST], [OP_CONST]]], i32), np.ones((1, 2, 1), f64), np.ones((1, 2), i32),
        np.zeros((1, 2), f64), np.ones((1, 1), np.bool_), np.zeros((1, 1), i32),
        np.full((1, 1, 2), np.nan), np.zeros((1, 1), np.bool_),
        np.zeros(4, i32), np.zeros(4, i32), np.zeros(4, i32), np.zeros(4, f64), np.zeros((4, 1), f64),
        np.zeros(4, f64),
    )
