"""The condition language of rule files: a tokenizer and a recursive-descent parser.

Conditions are tiny expressions such as ``tilt_deg > 15 and open == 1`` or
``fill_pct >= device.alarm_pct``. They are parsed into a small tree of frozen dataclasses;
nothing a user writes is ever handed to Python's ``eval``.

Grammar, loosest binding first::

    expr    := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | compare
    compare := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)?
    sum     := product (("+" | "-") product)*
    product := unary (("*" | "/") unary)*
    unary   := "-" unary | atom
    atom    := NUMBER [UNIT] | "true" | "false" | STRING | NAME ["(" args ")"] | "(" expr ")"

A number may carry a duration unit (``s``, ``m``, ``h``, ``d``); durations are seconds.
A ``NAME`` is a metric of the device (``tilt_deg``) or, written ``device.NAME``, a
parameter of the device from the registry (``device.depth_cm``).

Limits, so that no condition (from an engineer or pushed by the platform) can exhaust the
parser or the code that walks its tree: at most ``MAX_NESTING`` parentheses, calls, ``not``
or ``-`` inside one another, and a tree at most ``MAX_DEPTH`` levels deep (a chain
``a or b or c ...`` is one level per operator). Beyond either, ``ExpressionError``
"expression nested too deeply".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Union

DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
COMPARISONS = ("<=", ">=", "==", "!=", "<", ">")
KEYWORDS = {"and", "or", "not", "true", "false"}
MAX_NESTING = 32  # parentheses, calls, not and unary minus inside one another
MAX_DEPTH = 100  # levels of the parsed tree; the tree's walkers recurse once per level


class ExpressionError(ValueError):
    """A condition that cannot be parsed; ``column`` is 1-based within the condition text."""

    def __init__(self, message: str, column: int):
        super().__init__(message)
        self.message = message
        self.column = column

    def __str__(self) -> str:
        return f"column {self.column}: {self.message}"


@dataclass(frozen=True)
class Number:
    value: float


@dataclass(frozen=True)
class String:
    value: str


@dataclass(frozen=True)
class Metric:
    name: str


@dataclass(frozen=True)
class Param:
    """A per-device parameter from the registry, written ``device.NAME``."""

    name: str


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple["Node", ...]
    column: int


@dataclass(frozen=True)
class Unary:
    op: str  # "-" or "not"
    operand: "Node"


@dataclass(frozen=True)
class Binary:
    op: str  # arithmetic, comparison, "and", "or"
    left: "Node"
    right: "Node"


Node = Union[Number, String, Metric, Param, Call, Unary, Binary]


@dataclass(frozen=True)
class Token:
    kind: str  # NUMBER, STRING, NAME, OP, END
    text: str
    column: int
    value: float | str | None = None


_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?P<unit>[smhd](?![A-Za-z0-9_]))?
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)
  | (?P<string>"[^"]*"|'[^']*')
  | (?P<op><=|>=|==|!=|[<>+\-*/(),])
    """,
    re.VERBOSE,
)


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            char = text[pos]
            hint = " (use 'and', 'or', 'not')" if char in "&|!" else ""
            if char == "=":
                hint = " (use '==' to compare)"
            raise ExpressionError(f"unexpected character {char!r}{hint}", pos + 1)
        column = pos + 1
        if match.group("number") is not None:
            value = float(match.group("number"))
            unit = match.group("unit")
            if unit:
                value *= DURATION_UNITS[unit]
            tokens.append(Token("NUMBER", match.group(0), column, value))
        elif match.group("name") is not None:
            tokens.append(Token("NAME", match.group("name"), column, match.group("name")))
        elif match.group("string") is not None:
            tokens.append(Token("STRING", match.group("string"), column, match.group("string")[1:-1]))
        elif match.group("op") is not None:
            tokens.append(Token("OP", match.group("op"), column))
        pos = match.end()
    tokens.append(Token("END", "", len(text) + 1))
    return tokens


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.index = 0
        self.nesting = 0

    def nest(self, column: int) -> None:
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise ExpressionError(
                f"expression nested too deeply (more than {MAX_NESTING} levels of parentheses, calls, "
                "'not' or '-' inside one another)", column)

    @property
    def current(self) -> Token:
        return self.tokens[self.index]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def at(self, kind: str, text: str | None = None) -> bool:
        token = self.current
        return token.kind == kind and (text is None or token.text == text)

    def expect(self, kind: str, text: str) -> Token:
        if not self.at(kind, text):
            raise ExpressionError(f"expected {text!r}, found {self._describe(self.current)}", self.current.column)
        return self.advance()

    @staticmethod
    def _describe(token: Token) -> str:
        return "end of condition" if token.kind == "END" else repr(token.text)

    def parse(self) -> Node:
        if self.at("END"):
            raise ExpressionError("empty condition", 1)
        node = self.parse_or()
        if not self.at("END"):
            raise ExpressionError(f"unexpected {self._describe(self.current)}", self.current.column)
        return node

    def parse_or(self) -> Node:
        self.nest(self.current.column)
        node = self.parse_and()
        while self.at("NAME", "or"):
            self.advance()
            node = Binary("or", node, self.parse_and())
        self.nesting -= 1
        return node

    def parse_and(self) -> Node:
        node = self.parse_not()
        while self.at("NAME", "and"):
            self.advance()
            node = Binary("and", node, self.parse_not())
        return node

    def parse_not(self) -> Node:
        if self.at("NAME", "not"):
            self.nest(self.advance().column)
            node = Unary("not", self.parse_not())
            self.nesting -= 1
            return node
        return self.parse_compare()

    def parse_compare(self) -> Node:
        node = self.parse_sum()
        if self.current.kind == "OP" and self.current.text in COMPARISONS:
            op = self.advance().text
            node = Binary(op, node, self.parse_sum())
            if self.current.kind == "OP" and self.current.text in COMPARISONS:
                raise ExpressionError(
                    "comparisons cannot be chained; join them with 'and'", self.current.column
                )
        return node

    def parse_sum(self) -> Node:
        node = self.parse_product()
        while self.current.kind == "OP" and self.current.text in "+-":
            op = self.advance().text
            node = Binary(op, node, self.parse_product())
        return node

    def parse_product(self) -> Node:
        node = self.parse_unary()
        while self.current.kind == "OP" and self.current.text in "*/":
            op = self.advance().text
            node = Binary(op, node, self.parse_unary())
        return node

    def parse_unary(self) -> Node:
        if self.at("OP", "-"):
            self.nest(self.advance().column)
            operand = self.parse_unary()
            self.nesting -= 1
            if isinstance(operand, Number):
                return Number(-operand.value)
            return Unary("-", operand)
        return self.parse_atom()

    def parse_atom(self) -> Node:
        token = self.current
        if token.kind == "NUMBER":
            self.advance()
            return Number(float(token.value))  # type: ignore[arg-type]
        if token.kind == "STRING":
            self.advance()
            return String(str(token.value))
        if token.kind == "OP" and token.text == "(":
            self.advance()
            node = self.parse_or()
            self.expect("OP", ")")
            return node
        if token.kind == "NAME":
            name = token.text
            if name in ("true", "false"):
                self.advance()
                return Number(1.0 if name == "true" else 0.0)
            if name in KEYWORDS:
                raise ExpressionError(f"expected a value, found {name!r}", token.column)
            self.advance()
            if self.at("OP", "("):
                return self.parse_call(token)
            if name.startswith("device."):
                return Param(name[len("device."):])
            if "." in name:
                raise ExpressionError(
                    f"unknown name {name!r}: only device parameters are written with a dot (device.NAME)",
                    token.column,
                )
            return Metric(name)
        raise ExpressionError(f"expected a value, found {self._describe(token)}", token.column)

    def parse_call(self, name_token: Token) -> Node:
        self.expect("OP", "(")
        args: list[Node] = []
        if not self.at("OP", ")"):
            args.append(self.parse_or())
            while self.at("OP", ","):
                self.advance()
                args.append(self.parse_or())
        self.expect("OP", ")")
        return Call(name_token.text, tuple(args), name_token.column)


def parse(text: str) -> Node:
    """Parse one condition; raises ExpressionError with the column of the problem."""
    node = _Parser(text).parse()
    if depth(node) > MAX_DEPTH:
        raise ExpressionError(
            f"expression nested too deeply (more than {MAX_DEPTH} levels; each 'and', 'or' or operator in a chain "
            "is one: split the condition over several rules)", 1)
    return node


def depth(node: Node) -> int:
    """Levels of the tree (a leaf is 1); walked without recursion, so any tree can be measured."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        n, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(n, Unary):
            stack.append((n.operand, level + 1))
        elif isinstance(n, Binary):
            stack.extend(((n.left, level + 1), (n.right, level + 1)))
        elif isinstance(n, Call):
            stack.extend((arg, level + 1) for arg in n.args)
    return deepest


def parse_duration(value: str | int | float) -> float:
    """``30s``, ``10m``, ``2h``, ``1d`` or a plain number of seconds, as seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError(f"not a duration: {value!r} is too large") from None
    else:
        match = re.fullmatch(r"\s*(\d+\.?\d*|\.\d+)\s*([smhd]?)\s*", value)
        if match is None:
            raise ValueError(f"not a duration: {value!r} (write e.g. 30s, 10m, 2h)")
        seconds = float(match.group(1)) * DURATION_UNITS.get(match.group(2) or "s", 1.0)
    if not math.isfinite(seconds):
        raise ValueError(f"not a duration: {value!r} (write e.g. 30s, 10m, 2h)")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {value!r}")
    return seconds


def metrics_of(node: Node) -> list[str]:
    """Metric names a condition reads, in order of first appearance."""
    found: list[str] = []

    def walk(n: Node) -> None:
        if isinstance(n, Metric):
            if n.name not in found:
                found.append(n.name)
        elif isinstance(n, Unary):
            walk(n.operand)
        elif isinstance(n, Binary):
            walk(n.left)
            walk(n.right)
        elif isinstance(n, Call):
            for arg in n.args:
                walk(arg)

    walk(node)
    return found
