"""The condition language: parsing, errors with their column, and evaluation by the kernel."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.engine import expr
from edge.engine.kernels import evaluate as kernel_evaluate
from edge.engine.program import TextCodes, _Compiler, stack_depth
from edge.engine.reference import evaluate as reference_evaluate


def test_precedence_and_units():
    assert expr.parse("a > 1 or b > 2 and not c") == expr.Binary(
        "or",
        expr.Binary(">", expr.Metric("a"), expr.Number(1.0)),
        expr.Binary("and", expr.Binary(">", expr.Metric("b"), expr.Number(2.0)), expr.Unary("not", expr.Metric("c"))),
    )
    assert expr.parse("1 + 2 * 3") == expr.Binary("+", expr.Number(1.0), expr.Binary("*", expr.Number(2.0), expr.Number(3.0)))
    assert expr.parse("10m") == expr.Number(600.0)
    assert expr.parse("2h") == expr.Number(7200.0)
    assert expr.parse("-5") == expr.Number(-5.0)
    assert expr.parse("fill_pct >= device.alarm_pct") == expr.Binary(">=", expr.Metric("fill_pct"), expr.Param("alarm_pct"))


@pytest.mark.parametrize(
    "text, column, fragment",
    [
        ("tilt_deg > ", 12, "expected a value"),
        ("tilt_deg = 15", 10, "use '=='"),
        ("tilt_deg > 15 && open", 15, "use 'and'"),
        ("(tilt_deg > 15", 15, "expected ')'"),
        ("1 < a < 2", 7, "cannot be chained"),
        ("", 1, "empty condition"),
        ("a > 1 b", 7, "unexpected 'b'"),
        ("foo.bar > 1", 1, "device.NAME"),
    ],
)
def test_errors_name_the_column(text, column, fragment):
    with pytest.raises(expr.ExpressionError) as caught:
        expr.parse(text)
    assert caught.value.column == column
    assert fragment in caught.value.message


def test_durations():
    assert expr.parse_duration("30s") == 30
    assert expr.parse_duration("10m") == 600
    assert expr.parse_duration(12) == 12
    with pytest.raises(ValueError, match="not a duration"):
        expr.parse_duration("ten minutes")


METRICS = ["a", "b", "c"]
_values = st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.just(math.nan), st.sampled_from([0.0, 1.0, 15.0]))


def _leaf():
    return st.one_of(
        st.sampled_from(METRICS).map(expr.Metric),
        st.sampled_from([0.0, 1.0, 2.5, 15.0, -3.0]).map(expr.Number),
        st.just(expr.Param("depth_cm")),
    )


_nodes = st.recursive(
    _leaf(),
    lambda children: st.one_of(
        st.tuples(st.sampled_from(list("+-*/") + ["<", "<=", ">", ">=", "==", "!=", "and", "or"]), children, children)
        .map(lambda t: expr.Binary(*t)),
        st.tuples(st.sampled_from(["-", "not"]), children).map(lambda t: expr.Unary(*t)),
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(node=_nodes, values=st.lists(_values, min_size=3, max_size=3), depth=st.one_of(st.just(math.nan), st.floats(1, 300)))
def test_kernel_evaluates_like_the_reference(node, values, depth):
    program = _Compiler({name: i for i, name in enumerate(METRICS)}, {"depth_cm": 0}, TextCodes([])).compile(node)
    code = np.array([[[op for op, _, _ in program]]], dtype=np.int32)
    args = np.array([[[arg for _, arg, _ in program]]], dtype=np.float64)
    aux = np.array([[[extra for _, _, extra in program]]], dtype=np.float64)
    stack = np.zeros(stack_depth(program) + 1)
    i32, f64 = np.zeros(0, np.int32), np.zeros(0, np.float64)
    got = kernel_evaluate(
        code, args, aux, 0, 0, len(program), 0, 0.0, np.array([values]), np.zeros((1, 3)), np.array([[depth]]), stack,
        f64, i32, i32, f64, np.zeros((1, 0), np.int64), 0.0,
    )
    metrics = {name: value for name, value in zip(METRICS, values) if not math.isnan(value)}
    params = {} if math.isnan(depth) else {"depth_cm": depth}
    want = reference_evaluate(node, metrics, params)
    assert got == (not math.isnan(want) and want != 0.0)
