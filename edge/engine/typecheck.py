"""Checks of a parsed condition: function calls, types, and metrics the device kinds have.

Types are ``number``, ``text`` and ``bool``. Text (a camera's label or zone, or a quoted
constant) can only be compared with ``==`` or ``!=`` to other text. ``and``/``or``/``not``
take anything (a number is true when it is not 0). Every problem is a readable sentence.
"""

from __future__ import annotations

import difflib

from edge.engine import expr
from edge.engine.functions import FUNCTIONS
from edge.kinds import KIND_METRICS

ARITHMETIC = ("+", "-", "*", "/")
ORDERING = ("<", "<=", ">", ">=")
EQUALITY = ("==", "!=")


class CheckError(ValueError):
    pass


def check_calls(node: expr.Node) -> None:
    """Function names and arguments, independent of device kinds."""
    if isinstance(node, expr.Call):
        function = FUNCTIONS.get(node.name)
        if function is None:
            close = difflib.get_close_matches(node.name, list(FUNCTIONS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise CheckError(f"unknown function {node.name!r}{hint}; functions: {', '.join(sorted(FUNCTIONS))}")
        usage = f"{node.name}({', '.join(function.args)})"
        if len(node.args) != len(function.args):
            raise CheckError(f"{node.name} takes {len(function.args)} argument(s): {usage}")
        for arg, kind in zip(node.args, function.args):
            if kind == "metric" and not isinstance(arg, expr.Metric):
                raise CheckError(f"the first argument of {node.name} must be a metric name: {usage}")
            if kind == "duration" and not (isinstance(arg, expr.Number) and arg.value > 0):
                raise CheckError(f"{node.name} needs a positive duration such as 10m: {usage}")
        return
    if isinstance(node, expr.Unary):
        check_calls(node.operand)
    elif isinstance(node, expr.Binary):
        check_calls(node.left)
        check_calls(node.right)


def metric_type(name: str, kinds: list[str]) -> str:
    """The metric's type for every kind a rule applies to; CheckError if a kind lacks it."""
    types = set()
    for kind in kinds:
        catalogue = KIND_METRICS.get(kind)
        if catalogue is None:
            raise CheckError(f"unknown device kind {kind!r}; kinds: {', '.join(KIND_METRICS)}")
        info = catalogue.get(name)
        if info is None:
            close = difflib.get_close_matches(name, list(catalogue), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise CheckError(
                f"unknown metric {name!r} for {kind}{hint}; its metrics: {', '.join(catalogue)}"
            )
        types.add(info.type)
    if len(types) > 1:
        raise CheckError(f"metric {name!r} is text for some of {', '.join(kinds)} and a number for others")
    return types.pop() if types else "number"


def type_of(node: expr.Node, kinds: list[str]) -> str:
    """Type-check a condition for devices of ``kinds``; returns number, text or bool."""
    if isinstance(node, expr.Number):
        return "number"
    if isinstance(node, expr.String):
        return "text"
    if isinstance(node, expr.Param):
        return "number"
    if isinstance(node, expr.Metric):
        return metric_type(node.name, kinds)
    if isinstance(node, expr.Call):
        function = FUNCTIONS[node.name]
        for arg, kind in zip(node.args, function.args):
            if kind == "metric" and metric_type(arg.name, kinds) == "text" and not function.reads_text:
                raise CheckError(f"{node.name} needs a numeric metric; {arg.name!r} is text")
        return "number"
    if isinstance(node, expr.Unary):
        inner = type_of(node.operand, kinds)
        if node.op == "-" and inner == "text":
            raise CheckError("cannot negate text")
        return "bool" if node.op == "not" else "number"
    if isinstance(node, expr.Binary):
        left, right = type_of(node.left, kinds), type_of(node.right, kinds)
        if node.op in ("and", "or"):
            return "bool"
        if node.op in EQUALITY:
            if (left == "text") != (right == "text"):
                raise CheckError(f"cannot compare text with a number using {node.op!r}")
            return "bool"
        if "text" in (left, right):
            what = "compare" if node.op in ORDERING else "do arithmetic on"
            raise CheckError(f"cannot {what} text with {node.op!r}; text only takes == and !=")
        return "bool" if node.op in ORDERING else "number"
    raise CheckError(f"cannot check {node!r}")


def strings_of(node: expr.Node) -> list[str]:
    if isinstance(node, expr.String):
        return [node.value]
    if isinstance(node, expr.Unary):
        return strings_of(node.operand)
    if isinstance(node, expr.Binary):
        return strings_of(node.left) + strings_of(node.right)
    if isinstance(node, expr.Call):
        return [s for arg in node.args for s in strings_of(arg)]
    return []


def calls_of(node: expr.Node) -> list[expr.Call]:
    if isinstance(node, expr.Call):
        return [node]
    if isinstance(node, expr.Unary):
        return calls_of(node.operand)
    if isinstance(node, expr.Binary):
        return calls_of(node.left) + calls_of(node.right)
    return []
