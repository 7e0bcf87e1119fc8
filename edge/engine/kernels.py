"""numba kernels of the rule engine: they see only numpy arrays and numbers.

``run_batch`` walks a batch of readings in arrival order. Readings of one message (same
device, same timestamp, adjacent; the first is the message marker, metric 0) update the
device's latest values and function states together; then every rule that applies to the
device is evaluated once, at the message's device time.

``tick`` evaluates, at the gateway's clock, the rules whose value can change with time
alone: rules with functions (windows slide, a device goes silent) and rules waiting out a
``for``. Between reports a device's last values hold, and its clock runs on from its last
report, so a sparse reporter's ``for`` ends on time.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from numba import njit

from edge.engine import detectors, functions, program
from edge.engine.detectors import STATE_SIZE as ANOMALY_STATE
from edge.engine.detectors import detector_init, detector_step
from edge.engine.numba_cache import flush_if_changed
from edge.engine.functions import (
    BUCKETS, F_ABSENT, F_ANOMALY, F_AVG, F_CHANGED, F_COUNT, F_DELTA, F_MAX, F_MIN, F_RATE,
    F_STUCK, F_ZSCORE, STUCK_MIN_READINGS, ZSCORE_WARMUP,
)
from edge.engine.program import (
    OP_ADD, OP_AND, OP_BOOL, OP_CALL, OP_CONST, OP_DIV, OP_EQ, OP_GE, OP_GT, OP_JF, OP_JT, OP_LE, OP_LT,
    OP_METRIC, OP_MUL, OP_NE, OP_NEG, OP_NOT, OP_PARAM, OP_SUB,
)

OPEN, CLEAR, UPDATE = 1, 2, 3  # UPDATE: an open order's problem got worse

# No NRT: these kernels never allocate, and with it every call that passes arrays pays
# atomic reference counting on each of them, which measured 30x slower on small rules.
kernel = njit(cache=True, _nrt=False)
inlined = njit(cache=True, _nrt=False, inline="always")  # helpers of the hot loop


@inlined
def _truthy(x):
    # (numba compiles a value-producing `and` slowly; `&` on booleans is a plain instruction)
    return (x == x) & (x != 0.0)


# --- function state ---------------------------------------------------------------------

@inlined
def slot_size(func):
    """Floats per window slot of a windowed function (see functions.SLOT_SIZE)."""
    if func == F_AVG or func == F_DELTA or func == F_RATE:
        return 3
    if func == F_STUCK:
        return 5
    return 2


@inlined
def update_instance(func, state, row, param, ts, x):
    """Learn one fresh reading ``x`` at device time ``ts`` into an instance's state row."""
    if func <= F_STUCK:  # windowed: one slot per 1/BUCKETS of the window
        number = int(math.floor(ts * BUCKETS / param))
        size = slot_size(func)
        at = row + (number % BUCKETS) * size
        fresh = state[at] != float(number)
        if fresh:
            state[at] = float(number)
        if func == F_AVG:
            if fresh:
                state[at + 1] = 0.0
                state[at + 2] = 0.0
            state[at + 1] += 1.0
            state[at + 2] += x
        elif func == F_MIN:
            if fresh or x < state[at + 1]:
                state[at + 1] = x
        elif func == F_MAX:
            if fresh or x > state[at + 1]:
                state[at + 1] = x
        elif func == F_COUNT:
            if fresh:
                state[at + 1] = 0.0
            state[at + 1] += 1.0
        elif func == F_DELTA or func == F_RATE:
            if fresh:
                state[at + 1] = ts
                state[at + 2] = x
        else:  # F_STUCK
            if fresh:
                state[at + 1] = 0.0
                state[at + 2] = x
                state[at + 3] = x
                state[at + 4] = ts
            state[at + 1] += 1.0
            if x < state[at + 2]:
                state[at + 2] = x
            if x > state[at + 3]:
                state[at + 3] = x
    elif func == F_ZSCORE:  # n, mean, var, last_ts, z of the latest reading
        n = state[row]
        mean = state[row + 1]
        var = state[row + 2]
        if n >= ZSCORE_WARMUP:
            if var > 0.0:
                state[row + 4] = (x - mean) / math.sqrt(var)
            elif x == mean:
                state[row + 4] = 0.0
            else:
                state[row + 4] = math.copysign(math.inf, x - mean)
        else:
            state[row + 4] = math.nan
        if n == 0.0:
            state[row + 1] = x
            state[row + 2] = 0.0
        else:
            alpha = max(1.0 - 2.0 ** (-(ts - state[row + 3]) / param), 1.0 / (n + 1.0))
            diff = x - mean
            increment = alpha * diff
            state[row + 1] = mean + increment
            state[row + 2] = (1.0 - alpha) * (var + diff * increment)
        state[row] = n + 1.0
        state[row + 3] = ts
    elif func == F_CHANGED:  # last value, time of the last change
        last = state[row]
        if last == last and x != last:
            state[row + 1] = ts
        state[row] = x
    elif func == F_ANOMALY:  # the detector's state, then the score of the latest reading
        state[row + ANOMALY_STATE] = detector_step(state, row, ts, x)


@inlined
def init_instance(func, state, row):
    """The state of an instance before its first reading."""
    if func == F_ZSCORE:
        state[row] = 0.0  # n
    elif func == F_ANOMALY:
        detector_init(state, row)
        state[row + ANOMALY_STATE] = 0.0


@kernel
def init_state(state, inst_func, inst_off):
    """Every instance of every device to its initial state (NaN elsewhere: empty window slots)."""
    for d in range(inst_off.shape[0]):
        for k in range(inst_off.shape[1]):
            if inst_off[d, k] >= 0:
                init_instance(inst_func[k], state, inst_off[d, k])


@inlined
def instance_value(func, state, row, param, t, latest_value, latest_time, last_message):
    """An instance's value at time ``t``."""
    if func == F_ABSENT:
        return 1.0 if t - last_message >= param else 0.0
    if func == F_ZSCORE:
        return state[row + 4]
    if func == F_CHANGED:
        return 1.0 if state[row + 1] == t else 0.0
    if func == F_ANOMALY:
        return state[row + ANOMALY_STATE]
    top = math.floor(t * BUCKETS / param)
    size = slot_size(func)
    count = 0.0
    total = 0.0
    low = math.inf
    high = -math.inf
    first_ts = math.inf
    first_value = math.nan
    for b in range(BUCKETS):
        at = row + b * size
        k = state[at]
        if not (k == k):
            continue
        if k <= top - BUCKETS or k > top:
            continue
        if func == F_AVG:
            count += state[at + 1]
            total += state[at + 2]
        elif func == F_MIN:
            count += 1.0
            low = min(low, state[at + 1])
        elif func == F_MAX:
            count += 1.0
            high = max(high, state[at + 1])
        elif func == F_COUNT:
            count += state[at + 1]
        elif func == F_DELTA or func == F_RATE:
            count += 1.0
            if state[at + 1] < first_ts:
                first_ts = state[at + 1]
                first_value = state[at + 2]
        else:  # F_STUCK
            count += state[at + 1]
            low = min(low, state[at + 2])
            high = max(high, state[at + 3])
            first_ts = min(first_ts, state[at + 4])
    if func == F_COUNT:
        return count
    if func == F_STUCK:
        ok = (count >= STUCK_MIN_READINGS) & (high == low) & (latest_time - first_ts >= param / 2)
        return 1.0 if ok else 0.0
    if count == 0.0:
        return math.nan
    if func == F_AVG:
        return total / count
    if func == F_MIN:
        return low
    if func == F_MAX:
        return high
    if func == F_DELTA:
        return latest_value - first_value
    if func == F_RATE:
        span = latest_time - first_ts
        return (latest_value - first_value) / span * 60.0 if span > 0.0 else math.nan
    return math.nan


# --- conditions -------------------------------------------------------------------------

@inlined
def evaluate(code, args, aux, r, w, length, d, t, latest, latest_ts, params, stack,
             state, inst_func, inst_metric, inst_param, inst_off, origin):
    """Run program ``w`` (0 opens, 1 clears) of rule ``r`` for device ``d`` at time ``t``; True or False."""
    top = -1
    i = 0
    while i < length:
        op = code[r, w, i]
        if op >= 22:  # fused: metric <cmp> constant
            a = latest[d, int(args[r, w, i])]
            b = aux[r, w, i]
            if op == 22:
                hit = a < b
            elif op == 23:
                hit = a <= b
            elif op == 24:
                hit = a > b
            elif op == 25:
                hit = a >= b
            elif op == 26:
                hit = a == b
            else:
                hit = (a == a) & (a != b)
            top += 1
            stack[top] = 1.0 if hit else 0.0
        elif op == OP_JF:
            if not _truthy(stack[top]):
                stack[top] = 0.0
                i = int(args[r, w, i])
                continue
            top -= 1
        elif op == OP_JT:
            if _truthy(stack[top]):
                stack[top] = 1.0
                i = int(args[r, w, i])
                continue
            top -= 1
        elif op == OP_BOOL:
            stack[top] = 1.0 if _truthy(stack[top]) else 0.0
        elif op == OP_CONST:
            top += 1
            stack[top] = args[r, w, i]
        elif op == OP_METRIC:
            top += 1
            stack[top] = latest[d, int(args[r, w, i])]
        elif op == OP_PARAM:
            top += 1
            stack[top] = params[d, int(args[r, w, i])]
        elif op == OP_CALL:
            k = int(args[r, w, i])
            m = inst_metric[k]
            last_message = latest_ts[d, 0] if latest_ts[d, 0] > -math.inf else origin
            value_now = latest[d, m] if m >= 0 else math.nan
            time_now = latest_ts[d, m] if m >= 0 else math.nan
            top += 1
            stack[top] = instance_value(inst_func[k], state, inst_off[d, k], inst_param[k], t, value_now, time_now,
                                        last_message)
        elif op == OP_NEG:
            stack[top] = -stack[top]
        elif op == OP_NOT:
            stack[top] = 0.0 if _truthy(stack[top]) else 1.0
        else:
            b = stack[top]
            top -= 1
            a = stack[top]
            if op == OP_ADD:
                v = a + b
            elif op == OP_SUB:
                v = a - b
            elif op == OP_MUL:
                v = a * b
            elif op == OP_DIV:
                v = a / b if b != 0.0 else math.nan
            elif op == OP_LT:
                v = 1.0 if a < b else 0.0
            elif op == OP_LE:
                v = 1.0 if a <= b else 0.0
            elif op == OP_GT:
                v = 1.0 if a > b else 0.0
            elif op == OP_GE:
                v = 1.0 if a >= b else 0.0
            elif op == OP_EQ:
                v = 1.0 if a == b else 0.0
            elif op == OP_NE:
                v = 1.0 if ((a == a) & (b == b) & (a != b)) else 0.0
            elif op == OP_AND:
                v = 1.0 if (_truthy(a) & _truthy(b)) else 0.0
            else:  # OP_OR
                v = 1.0 if (_truthy(a) | _truthy(b)) else 0.0
            stack[top] = v
        i += 1
    if top < 0:
        return False
    return _truthy(stack[0])


@inlined
def step_rule(r, d, t, code, args, aux, length, hold, since, active, latest, latest_ts, params, stack,
              state, inst_func, inst_metric, inst_param, inst_off, origin,
              worse_metric, worse_dir, worse_step, reported):
    """Advance rule ``r`` for device ``d`` at time ``t``; returns OPEN, CLEAR, UPDATE or 0."""
    which = 1 if active[d, r] else 0
    holds = evaluate(code, args, aux, r, which, length[r, which], d, t, latest, latest_ts,
                     params, stack, state, inst_func, inst_metric, inst_param, inst_off, origin)
    if holds:
        if math.isnan(since[d, r, which]):
            since[d, r, which] = t
        if t - since[d, r, which] >= hold[r, which]:
            active[d, r] = which == 0
            since[d, r, 0] = math.nan
            since[d, r, 1] = math.nan
            if which == 1:
                return CLEAR
            m = worse_metric[r]
            reported[d, r] = latest[d, m] if m >= 0 else math.nan
            return OPEN
        return 0
    since[d, r, which] = math.nan
    if which == 0:
        return 0
    # Open and not clearing: has the problem got worse since it was last reported?
    m = worse_metric[r]
    if m < 0:
        return 0
    value = latest[d, m]
    if not (value == value):
        return 0
    last = reported[d, r]
    if not (last == last):  # nothing reported since a restart: this value is the new baseline
        reported[d, r] = value
        return 0
    worse = (value - last) * worse_dir[r]
    if worse > 0.0 and worse >= worse_step[r] and evaluate(
            code, args, aux, r, 0, length[r, 0], d, t, latest, latest_ts,
            params, stack, state, inst_func, inst_metric, inst_param, inst_off, origin):
        reported[d, r] = value
        return UPDATE
    return 0


@inlined
def _emit(n_out, r, d, kind, t, latest, rule_metrics, out_rule, out_dev, out_kind, out_ts, out_vals):
    out_rule[n_out] = r
    out_dev[n_out] = d
    out_kind[n_out] = kind
    out_ts[n_out] = t
    for k in range(rule_metrics.shape[1]):
        mk = rule_metrics[r, k]
        out_vals[n_out, k] = latest[d, mk] if mk >= 0 else math.nan


@kernel
def run_batch(
    dev, met, ts, val, start,
    latest, latest_ts, params,
    code, args, aux, length, hold, applies, rule_metrics,
    since, active,
    state, inst_func, inst_metric, inst_param, inst_off, metric_inst_ptr, metric_inst,
    origin,
    worse_metric, worse_dir, worse_step, reported,
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
            for j in range(metric_inst_ptr[m], metric_inst_ptr[m + 1]):
                k = metric_inst[j]
                row = inst_off[d, k]
                if row >= 0:
                    update_instance(inst_func[k], state, row, inst_param[k], t, val[i])
        else:
            late += 1
        same_message = False
        if i + 1 < n:
            same_message = (dev[i + 1] == d) & (ts[i + 1] == t) & (met[i + 1] != 0)
        i += 1
        if same_message:
            continue
        if not fresh:
            continue
        fresh = False
        for r in range(n_rules):
            if not applies[d, r]:
                continue
            kind = step_rule(r, d, t, code, args, aux, length, hold, since, active, latest, latest_ts, params,
                             stack, state, inst_func, inst_metric, inst_param, inst_off, origin,
                             worse_metric, worse_dir, worse_step, reported)
            if kind != 0:
                _emit(n_out, r, d, kind, t, latest, rule_metrics, out_rule, out_dev, out_kind, out_ts, out_vals)
                n_out += 1
        if n_out + n_rules > capacity:
            break
    return n_out, i, late


@kernel
def tick(
    now, start_device,
    latest, latest_ts, params,
    code, args, aux, length, hold, applies, rule_metrics, timed,
    since, active,
    state, inst_func, inst_metric, inst_param, inst_off,
    origin,
    worse_metric, worse_dir, worse_step, reported,
    out_rule, out_dev, out_kind, out_ts, out_vals,
    stack,
):
    """Evaluate time-dependent and waiting rules at gateway time ``now``; returns (written, next device)."""
    n_rules = code.shape[0]
    n_dev = applies.shape[0]
    capacity = out_rule.shape[0]
    n_out = 0
    d = start_device
    while d < n_dev:
        if latest_ts[d, 0] > -math.inf:
            t = now - (latest[d, 0] - latest_ts[d, 0])  # the device's clock, run on from its last report
        else:
            t = now
        for r in range(n_rules):
            if not applies[d, r]:
                continue
            which = 1 if active[d, r] else 0
            if not timed[r] and math.isnan(since[d, r, which]):
                continue
            kind = step_rule(r, d, t, code, args, aux, length, hold, since, active, latest, latest_ts, params,
                             stack, state, inst_func, inst_metric, inst_param, inst_off, origin,
                             worse_metric, worse_dir, worse_step, reported)
            if kind != 0:
                _emit(n_out, r, d, kind, t, latest, rule_metrics, out_rule, out_dev, out_kind, out_ts, out_vals)
                n_out += 1
        d += 1
        if n_out + n_rules > capacity:
            break
    return n_out, d


# The kernels compile in code from these files too: a change in any of them flushes their cache.
flush_if_changed(globals(), [Path(__file__)] + [Path(m.__file__) for m in (detectors, functions, program)])
