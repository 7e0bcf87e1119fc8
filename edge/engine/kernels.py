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

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic

from edge.engine.detectors import STATE_SIZE as ANOMALY_STATE
from edge.engine.detectors import detector_init, detector_step
from edge.engine.aot import SOURCES
from edge.engine.numba_cache import flush_if_changed
from edge.engine.functions import (
    BUCKETS, F_ABSENT, F_ANOMALY, F_AVG, F_CHANGED, F_COUNT, F_DELTA, F_MAX, F_MIN, F_RATE,
    F_STUCK, F_ZSCORE, STUCK_MIN_READINGS, ZSCORE_WARMUP,
)
from edge.engine.program import (
    CLEAR, LEARNT, OPEN, PENDING, QUIET_RULES, SETTLED, UPDATE,
    OP_ADD, OP_AND, OP_BOOL, OP_CALL, OP_CONST, OP_DIV, OP_EQ, OP_GE, OP_GT, OP_JF, OP_JT, OP_LE, OP_LT,
    OP_METRIC, OP_MLE, OP_MLT, OP_MGE, OP_MGT, OP_MEQ, OP_MUL, OP_NE, OP_NEG, OP_NOT, OP_PARAM, OP_SUB,
    SHAPE_CALL, SHAPE_FUSED, SHAPE_GENERAL,
)


# No NRT: these kernels never allocate, and with it every call that passes arrays pays
# atomic reference counting on each of them, which measured 30x slower on small rules.
kernel = njit(cache=True, _nrt=False)
inlined = njit(cache=True, _nrt=False, inline="always")  # helpers of the hot loop
helper = njit(cache=True, _nrt=False)  # a larger helper, called (few arguments: cheap)


@intrinsic
def prefetch(typingctx, array, index):
    """Hint the CPU to bring ``array``'s element at flat ``index`` into cache (no effect on results)."""
    if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        pointer = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        hint = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [pointer.type, i32, i32, i32]), "llvm.prefetch.p0")
        builder.call(hint, [pointer, i32(0), i32(3), i32(1)])  # read, keep in all levels, data
        return context.get_dummy_value()

    return types.void(array, index), codegen


@intrinsic
def load(typingctx, array, index):
    """``array``'s element at flat ``index``, which must be >= 0.

    ``array[index]`` with a signed index costs a compare and a select: numba turns a negative
    index into one from the end. The window functions' slot loops (``update_instance``,
    ``instance_value``) index the state only from a device's row, never from the end, and
    read it through ``load`` and ``store``."""
    if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return context.unpack_value(builder, signature.args[0].dtype, builder.gep(data, [args[1]]))

    return array.dtype(array, index), codegen


@intrinsic
def store(typingctx, array, index, value):
    """Set ``array``'s element at flat ``index`` (>= 0) to ``value`` (see ``load``)."""
    if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        dtype = signature.args[0].dtype
        value = context.cast(builder, args[2], signature.args[2], dtype)
        context.pack_value(builder, dtype, value, builder.gep(data, [args[1]]))
        return context.get_dummy_value()

    return types.void(array, index, value), codegen


MOVES, LEARNS = 1, 2  # what a condition's function calls did (see run_program)
FAR = 1e300  # added to a slot's value outside the window: no reading comes near it


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
        fresh = load(state, at) != float(number)
        if fresh:
            store(state, at, float(number))
        if func == F_AVG:
            if fresh:
                store(state, at + 1, 0.0)
                store(state, at + 2, 0.0)
            store(state, at + 1, load(state, at + 1) + 1.0)
            store(state, at + 2, load(state, at + 2) + x)
        elif func == F_MIN:
            if fresh or x < load(state, at + 1):
                store(state, at + 1, x)
        elif func == F_MAX:
            if fresh or x > load(state, at + 1):
                store(state, at + 1, x)
        elif func == F_COUNT:
            if fresh:
                store(state, at + 1, 0.0)
            store(state, at + 1, load(state, at + 1) + 1.0)
        elif func == F_DELTA or func == F_RATE:
            if fresh:
                store(state, at + 1, ts)
                store(state, at + 2, x)
        else:  # F_STUCK
            if fresh:
                store(state, at + 1, 0.0)
                store(state, at + 2, x)
                store(state, at + 3, x)
                store(state, at + 4, ts)
            store(state, at + 1, load(state, at + 1) + 1.0)
            if x < load(state, at + 2):
                store(state, at + 2, x)
            if x > load(state, at + 3):
                store(state, at + 3, x)
    elif func == F_ZSCORE:  # n, mean, var, last_ts, z of the latest reading
        n = load(state, row)
        mean = load(state, row + 1)
        var = load(state, row + 2)
        if n >= ZSCORE_WARMUP:
            if var > 0.0:
                store(state, row + 4, (x - mean) / math.sqrt(var))
            elif x == mean:
                store(state, row + 4, 0.0)
            else:
                store(state, row + 4, math.copysign(math.inf, x - mean))
        else:
            store(state, row + 4, math.nan)
        if n == 0.0:
            store(state, row + 1, x)
            store(state, row + 2, 0.0)
        else:
            alpha = max(1.0 - 2.0 ** (-(ts - load(state, row + 3)) / param), 1.0 / (n + 1.0))
            diff = x - mean
            increment = alpha * diff
            store(state, row + 1, mean + increment)
            store(state, row + 2, (1.0 - alpha) * (var + diff * increment))
        store(state, row, n + 1.0)
        store(state, row + 3, ts)
    elif func == F_CHANGED:  # last value, time of the last change
        last = load(state, row)
        if last == last and x != last:
            store(state, row + 1, ts)
        store(state, row, x)
    elif func == F_ANOMALY:  # the detector's state, then the score of the latest reading
        store(state, row + ANOMALY_STATE, detector_step(state, row, ts, x))


@inlined
def init_instance(func, state, row):
    """The state of an instance before its first reading.

    A window's slots start with no number (NaN: in no window) and zero in every field, so a
    scan can multiply a field by 0 for a slot outside the window (see ``instance_value``)."""
    if func <= F_STUCK:
        size = slot_size(func)
        for b in range(BUCKETS):
            store(state, row + b * size, math.nan)
            for f in range(1, size):
                store(state, row + b * size + f, 0.0)
    elif func == F_ZSCORE:
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
def in_window(number, low_k, top):
    """1.0 for a slot whose ``number`` lies in (low_k, top], else 0.0 (also for NaN: no number)."""
    return np.float64((number > low_k) & (number <= top))


@helper
def instance_value(func, state, row, param, t, latest_value, latest_time, last_message):
    """An instance's value at time ``t``. (Compiled once and called, not inlined: the kernels
    reach it from several places, and copies of its loops made the cold compile slow.)"""
    if func == F_ABSENT:
        return 1.0 if t - last_message >= param else 0.0
    if func == F_ZSCORE:
        return load(state, row + 4)
    if func == F_CHANGED:
        return 1.0 if load(state, row + 1) == t else 0.0
    if func == F_ANOMALY:
        return load(state, row + ANOMALY_STATE)
    # Windowed: the slots whose number lies in (top - BUCKETS, top]. Each scan weighs every slot
    # by ``inside``, 1.0 in the window and 0.0 outside, instead of branching on it: which slots
    # are in the window depends on the data, and a branch per slot was often mispredicted. A
    # field is always finite (zero until written; readings are finite numbers, see
    # engine.BatchBuilder), so a weight of 0.0 leaves a sum as it was, and a value moved FAR off
    # loses every min and max.
    top = math.floor(t * BUCKETS / param)
    low_k = top - BUCKETS
    count = 0.0
    if func == F_AVG:
        total = 0.0
        for b in range(BUCKETS):
            at = row + b * 3
            inside = in_window(load(state, at), low_k, top)
            count += load(state, at + 1) * inside
            total += load(state, at + 2) * inside
        return total / count if count != 0.0 else math.nan
    if func == F_MIN or func == F_MAX:
        sign = 1.0 if func == F_MIN else -1.0  # the max is minus the min of minus the values
        low = math.inf
        for b in range(BUCKETS):
            at = row + b * 2
            inside = in_window(load(state, at), low_k, top)
            count += inside
            low = min(low, sign * load(state, at + 1) + (1.0 - inside) * FAR)
        return sign * low if count != 0.0 else math.nan
    if func == F_COUNT:
        for b in range(BUCKETS):
            at = row + b * 2
            count += load(state, at + 1) * in_window(load(state, at), low_k, top)
        return count
    if func == F_DELTA or func == F_RATE:
        first_ts = math.inf
        for b in range(BUCKETS):
            at = row + b * 3
            inside = in_window(load(state, at), low_k, top)
            count += inside
            first_ts = min(first_ts, load(state, at + 1) + (1.0 - inside) * FAR)
        if count == 0.0:
            return math.nan
        first_value = 0.0  # the value of the one slot in the window holding the earliest reading
        for b in range(BUCKETS):
            at = row + b * 3
            first_value += load(state, at + 2) * np.float64(load(state, at + 1) == first_ts)
        if func == F_DELTA:
            return latest_value - first_value
        span = latest_time - first_ts
        return (latest_value - first_value) / span * 60.0 if span > 0.0 else math.nan
    if func == F_STUCK:
        low = math.inf
        high = -math.inf
        first_ts = math.inf
        for b in range(BUCKETS):
            at = row + b * 5
            inside = in_window(load(state, at), low_k, top)
            away = (1.0 - inside) * FAR
            count += load(state, at + 1) * inside
            low = min(low, load(state, at + 2) + away)
            high = max(high, load(state, at + 3) - away)
            first_ts = min(first_ts, load(state, at + 4) + away)
        ok = (count >= STUCK_MIN_READINGS) & (high == low) & (latest_time - first_ts >= param / 2)
        return 1.0 if ok else 0.0
    return math.nan


# --- conditions -------------------------------------------------------------------------

@inlined
def call(k, d, t, at_message, latest, latest_ts, state, inst_func, inst_metric, inst_param, layout_inst, layout,
         base, origin):
    """Function instance ``k``'s value for device ``d`` at time ``t``, and its effect (see run_program)."""
    m = inst_metric[k]
    func = inst_func[k]
    learns = (func == F_ZSCORE) | (func == F_ANOMALY)
    moving = not (at_message & (learns | ((func == F_ABSENT) & (inst_param[k] > 0.0))))
    effect = (MOVES if moving else 0) | (LEARNS if learns else 0)
    last_message = latest_ts[d, 0] if latest_ts[d, 0] > -math.inf else origin
    value_now = latest[d, m] if m >= 0 else math.nan
    time_now = latest_ts[d, m] if m >= 0 else math.nan
    value = instance_value(func, state, base + layout_inst[layout, k], inst_param[k], t, value_now, time_now,
                           last_message)
    return value, effect


@inlined
def compare(op, a, b):
    """A comparison opcode (OP_LT ... OP_NE) on two values, as the interpreter computes it."""
    if op == OP_LT:
        return a < b
    if op == OP_LE:
        return a <= b
    if op == OP_GT:
        return a > b
    if op == OP_GE:
        return a >= b
    if op == OP_EQ:
        return a == b
    return (a == a) & (b == b) & (a != b)


@inlined
def fused_compare(op, a, b):
    """A fused opcode (OP_MLT ... OP_MNE): metric value ``a`` against constant ``b``."""
    if op == OP_MLT:
        return a < b
    if op == OP_MLE:
        return a <= b
    if op == OP_MGT:
        return a > b
    if op == OP_MGE:
        return a >= b
    if op == OP_MEQ:
        return a == b
    return (a == a) & (a != b)


@inlined
def run_shape(shape, code, args, aux, r, w, d, t, at_message, latest, latest_ts, state, inst_func, inst_metric,
              inst_param, layout_inst, layout, base, origin):
    """The commonest programs without the interpreter's loop (see program.SHAPE_*); same results."""
    if shape == SHAPE_FUSED:
        return fused_compare(code[r, w, 0], latest[d, int(args[r, w, 0])], aux[r, w, 0]), 0
    value, effect = call(int(args[r, w, 0]), d, t, at_message, latest, latest_ts, state, inst_func, inst_metric,
                         inst_param, layout_inst, layout, base, origin)
    if shape == SHAPE_CALL:
        return _truthy(value), effect
    return compare(code[r, w, 2], value, args[r, w, 1]), effect  # SHAPE_CALL_CMP


@inlined
def run_program(code, args, aux, r, w, length, d, t, at_message, latest, latest_ts, params, stack,
                state, inst_func, inst_metric, inst_param, layout_inst, layout, base, origin):
    """Run program ``w`` (0 opens, 1 clears) of rule ``r`` for device ``d`` at time ``t``.

    Returns (True or False, effect). ``effect`` has MOVES when the program called a function
    whose value may change with no change of a metric, and LEARNS when it called one that
    changes with every fresh reading of its metric, even of the same value (``zscore``,
    ``anomaly``). At a message (``at_message``: a message with its marker, so the device's last
    message is at ``t`` or later) ``absent`` with a positive duration is 0, and ``zscore`` and
    ``anomaly`` change only with a fresh reading: those do not move. Anything else called does.

    The device's function states start at ``base`` in ``state``; ``layout_inst[layout, k]``
    is where instance ``k`` lies from there."""
    effect = 0
    top = -1
    i = 0
    while i < length:
        op = code[r, w, i]
        if op >= OP_MLT:  # fused: metric <cmp> constant
            hit = fused_compare(op, latest[d, int(args[r, w, i])], aux[r, w, i])
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
            value, called = call(int(args[r, w, i]), d, t, at_message, latest, latest_ts, state, inst_func,
                                 inst_metric, inst_param, layout_inst, layout, base, origin)
            effect |= called
            top += 1
            stack[top] = value
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
        return False, effect
    return _truthy(stack[0]), effect


@inlined
def condition(shape, code, args, aux, r, w, length, d, t, at_message, latest, latest_ts, params, stack,
              state, inst_func, inst_metric, inst_param, layout_inst, layout, base, origin):
    """Program ``w`` of rule ``r``: by its shape when it has one, else by the interpreter."""
    if shape != SHAPE_GENERAL:
        return run_shape(shape, code, args, aux, r, w, d, t, at_message, latest, latest_ts, state, inst_func,
                         inst_metric, inst_param, layout_inst, layout, base, origin)
    return run_program(code, args, aux, r, w, length, d, t, at_message, latest, latest_ts, params, stack,
                       state, inst_func, inst_metric, inst_param, layout_inst, layout, base, origin)


@inlined
def evaluate(code, args, aux, r, w, length, d, t, latest, latest_ts, params, stack,
             state, inst_func, inst_metric, inst_param, inst_off, origin):
    """Run program ``w`` of rule ``r`` for device ``d`` at time ``t``, with the state of instance
    ``k`` at ``inst_off[d, k]``; True or False (the condition alone, for tests)."""
    holds, _ = run_program(code, args, aux, r, w, length, d, t, False, latest, latest_ts, params, stack,
                           state, inst_func, inst_metric, inst_param, inst_off, d, 0, origin)
    return holds


@inlined
def step_rule(r, bit, d, t, at_message, code, args, aux, length, shapes, hold, since, active, quiet, latest, latest_ts,
              params, stack, state, inst_func, inst_metric, inst_param, layout_inst, layout, base, origin,
              worse_metric, worse_dir, worse_step, reported):
    """Advance rule ``r`` for device ``d`` at time ``t``; returns OPEN, CLEAR, UPDATE or 0.

    ``since[d, r]`` is the device time from which the condition in force (``when`` while
    not active, ``clear_when`` while active) has held, NaN when it does not.
    ``bit`` is the rule's bit in the device's ``quiet`` words (0 for a rule without one).
    Bit set in ``quiet[d, SETTLED]``: this step returned 0, changed nothing, and would again
    as long as the rule's metrics keep their values: its conditions were decided by metric
    values and functions that cannot move between messages (see ``run_program``). In
    ``quiet[d, LEARNT]``: and it called a function that learns, so a fresh reading of one of
    the rule's metrics unsettles it even when the value is the same. Clear in
    ``quiet[d, PENDING]``: ``since[d, r]`` is NaN, and need not be read (most steps find their
    condition false, and no other step of a message reads the device's ``since`` row).
    """
    which = 1 if active[d, r] else 0
    holds, effect = condition(shapes[r, which], code, args, aux, r, which, length[r, which], d, t, at_message, latest,
                              latest_ts, params, stack, state, inst_func, inst_metric, inst_param, layout_inst, layout,
                              base, origin)
    if holds:
        unsettle(quiet, d, bit)
        started = since[d, r] if pending(quiet, d, bit) else math.nan
        if math.isnan(started):
            started = t
            since[d, r] = t
            quiet[d, PENDING] |= bit
        if t - started >= hold[r, which]:
            active[d, r] = which == 0
            since[d, r] = math.nan
            quiet[d, PENDING] &= ~bit
            if which == 1:
                return CLEAR
            m = worse_metric[r]
            reported[d, r] = latest[d, m] if m >= 0 else math.nan
            return OPEN
        return 0
    # (written only when they change: a line that stays clean need not go back to memory)
    if pending(quiet, d, bit):
        if not math.isnan(since[d, r]):
            since[d, r] = math.nan
        quiet[d, PENDING] &= ~bit
    if (effect & MOVES) != 0:
        unsettle(quiet, d, bit)
    else:
        settle(quiet, d, bit, (effect & LEARNS) != 0)
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
    if worse > 0.0 and worse >= worse_step[r]:
        holds, effect = condition(shapes[r, 0], code, args, aux, r, 0, length[r, 0], d, t, at_message, latest,
                                  latest_ts, params, stack, state, inst_func, inst_metric, inst_param, layout_inst,
                                  layout, base, origin)
        if holds or (effect & MOVES) != 0:
            unsettle(quiet, d, bit)
        elif (effect & LEARNS) != 0 and (quiet[d, SETTLED] & bit) != 0:
            quiet[d, LEARNT] |= bit
        if holds:
            reported[d, r] = value
            return UPDATE
    return 0


@inlined
def settle(quiet, d, bit, learnt):
    """Mark a rule settled (see step_rule), writing the words only when they change."""
    if (quiet[d, SETTLED] & bit) != bit:
        quiet[d, SETTLED] |= bit
    if learnt:
        if (quiet[d, LEARNT] & bit) != bit:
            quiet[d, LEARNT] |= bit
    elif (quiet[d, LEARNT] & bit) != 0:
        quiet[d, LEARNT] &= ~bit


@inlined
def quiet_bit(p):
    """The bit of a device's ``p``-th rule in its ``quiet`` words; 0 past the first QUIET_RULES."""
    return np.uint64(1) << np.uint64(p) if p < QUIET_RULES else np.uint64(0)


@inlined
def pending(quiet, d, bit):
    """Whether ``since[d, r]`` of the rule with ``bit`` may hold a time (see step_rule)."""
    return bit == 0 or (quiet[d, PENDING] & bit) != 0


@inlined
def unsettle(quiet, d, bit):
    if (quiet[d, SETTLED] & bit) != 0:
        quiet[d, SETTLED] &= ~bit


@inlined
def _emit(n_out, r, d, kind, t, latest, rule_metrics, out_rule, out_dev, out_kind, out_ts, out_vals):
    out_rule[n_out] = r
    out_dev[n_out] = d
    out_kind[n_out] = kind
    out_ts[n_out] = t
    for k in range(rule_metrics.shape[1]):
        mk = rule_metrics[r, k]
        out_vals[n_out, k] = latest[d, mk] if mk >= 0 else math.nan


@inlined
def _prefetch_device(d, latest, latest_ts, active, quiet, state, state_base, state_width):
    """Ask the cache for device ``d``'s state, which a message a little later in the batch will need."""
    n_met = latest.shape[1]
    for at in range(0, n_met, 8):
        prefetch(latest, d * n_met + at)
        prefetch(latest_ts, d * n_met + at)
    # (not ``since``: only the few rules stepped read it, and fetching all of it cost more)
    n_rules = active.shape[1]
    for at in range(0, n_rules, 64):
        prefetch(active, d * n_rules + at)
    prefetch(quiet, quiet.shape[1] * d)
    base = state_base[d]
    for at in range(0, state_width[d], 8):
        prefetch(state, base + at)


PREFETCH_AHEAD = 48  # readings (about 8 messages) between asking for a device's state and using it


@kernel
def run_batch(
    dev, met, ts, val, start,
    latest, latest_ts, params,
    code, args, aux, length, shapes, hold, rule_metrics, metric_learns,
    dev_layout, layout_ptr, layout_rules, layout_inst, layout_readers, state_base, state_width,
    since, active, quiet,
    state, inst_func, inst_metric, inst_param, metric_inst_ptr, metric_inst,
    origin,
    worse_metric, worse_dir, worse_step, reported,
    out_rule, out_dev, out_kind, out_ts, out_vals,
    stack,
):
    """Process readings from ``start``; returns (transitions written, next reading, late readings,
    rules x messages: the rules that apply to the device of each message, counted per message).

    A message is a run of readings of one device at one time, the first usually its marker
    (metric 0). Its fresh readings update the device's latest values and function states;
    then the rules that apply to the device are stepped once, at the message's time, except
    those that cannot have changed: settled at their last step (see ``step_rule``) and none
    of their metrics changed value in this message (nor, when their last step called a
    zscore or an anomaly, had a fresh reading).

    Stops early, at a message boundary, when the output arrays could overflow; the caller
    then empties them and calls again from the returned index.
    """
    n = dev.shape[0]
    n_rules = code.shape[0]
    capacity = out_rule.shape[0]
    n_out = 0
    late = 0
    considered = 0
    i = start
    ahead = start
    while i < n:
        d = dev[i]
        t = ts[i]
        while ahead < n and ahead <= i + PREFETCH_AHEAD:
            if ahead == 0 or dev[ahead] != dev[ahead - 1]:
                _prefetch_device(dev[ahead], latest, latest_ts, active, quiet, state, state_base, state_width)
            ahead += 1
        layout = dev_layout[d]
        base = state_base[d]
        first = layout_ptr[layout]
        count = layout_ptr[layout + 1] - first
        marked = met[i] == 0
        if marked:
            considered += count
        fresh = False
        changed = np.uint64(0)  # the device's rules that read a metric whose value changed
        learning = np.uint64(0)  # ... that read a metric with a fresh reading a function learns from
        while True:
            m = met[i]
            if t > latest_ts[d, m]:
                x = val[i]
                if not (latest[d, m] == x):
                    changed |= layout_readers[layout, m]
                if metric_learns[m]:
                    learning |= layout_readers[layout, m]
                latest[d, m] = x
                latest_ts[d, m] = t
                fresh = True
                for j in range(metric_inst_ptr[m], metric_inst_ptr[m + 1]):
                    k = metric_inst[j]
                    at = layout_inst[layout, k]
                    if at >= 0:
                        update_instance(inst_func[k], state, base + at, inst_param[k], t, x)
            else:
                late += 1
            i += 1
            if not ((i < n) and (dev[i] == d) and (ts[i] == t) and (met[i] != 0)):
                break
        if not fresh:
            continue
        # A late message (older than the device's newest) is evaluated at the device's newest
        # time: a device's clock never runs backwards (and the window slots hold nothing older
        # than their newest readings allow).
        if latest_ts[d, 0] > t:
            t = latest_ts[d, 0]
        # The rules to step, as bits of their places among the device's rules: those not
        # settled, and those whose inputs changed; then every rule without a bit.
        todo = ~quiet[d, SETTLED] | changed | (learning & quiet[d, LEARNT])
        todo &= (np.uint64(1) << np.uint64(min(count, QUIET_RULES))) - np.uint64(1)
        p = 0
        while True:
            if todo != 0:
                p = np.int64(trailing_zeros(todo))
                todo &= todo - np.uint64(1)
            else:
                p = max(p + 1, QUIET_RULES)
                if p >= count:
                    break
            r = layout_rules[first + p]
            kind = step_rule(r, quiet_bit(p), d, t, marked, code, args, aux, length, shapes, hold, since, active,
                             quiet, latest, latest_ts, params, stack, state, inst_func, inst_metric, inst_param,
                             layout_inst, layout, base, origin, worse_metric, worse_dir, worse_step, reported)
            if kind != 0:
                _emit(n_out, r, d, kind, t, latest, rule_metrics, out_rule, out_dev, out_kind, out_ts, out_vals)
                n_out += 1
        if n_out + n_rules > capacity:
            break
    return n_out, i, late, considered


@kernel
def tick(
    now, start_device,
    latest, latest_ts, params,
    code, args, aux, length, shapes, hold, rule_metrics, timed,
    dev_layout, layout_ptr, layout_rules, layout_inst, state_base,
    since, active, quiet,
    state, inst_func, inst_metric, inst_param,
    origin,
    worse_metric, worse_dir, worse_step, reported,
    out_rule, out_dev, out_kind, out_ts, out_vals,
    stack,
):
    """Evaluate time-dependent and waiting rules at gateway time ``now``; returns (written, next device)."""
    n_rules = code.shape[0]
    n_dev = dev_layout.shape[0]
    capacity = out_rule.shape[0]
    n_out = 0
    d = start_device
    while d < n_dev:
        if latest_ts[d, 0] > -math.inf:
            # the device's clock, run on from its last report, and never back before that report
            t = max(now - (latest[d, 0] - latest_ts[d, 0]), latest_ts[d, 0])
        else:
            t = now
        layout = dev_layout[d]
        base = state_base[d]
        first = layout_ptr[layout]
        for p in range(layout_ptr[layout + 1] - first):
            r = layout_rules[first + p]
            bit = quiet_bit(p)
            if not timed[r] and (not pending(quiet, d, bit) or math.isnan(since[d, r])):
                continue  # no function, no wait: time alone cannot change it
            kind = step_rule(r, bit, d, t, False, code, args, aux, length, shapes, hold, since, active, quiet, latest,
                             latest_ts, params, stack, state, inst_func, inst_metric, inst_param, layout_inst, layout,
                             base, origin, worse_metric, worse_dir, worse_step, reported)
            if kind != 0:
                _emit(n_out, r, d, kind, t, latest, rule_metrics, out_rule, out_dev, out_kind, out_ts, out_vals)
                n_out += 1
        d += 1
        if n_out + n_rules > capacity:
            break
    return n_out, d


# The kernels compile in code from these files too: a change in any of them flushes their cache.
flush_if_changed(globals(), SOURCES)
