"""Rule files: YAML a field engineer edits, validated into typed rules with line numbers.

A rule file holds a list of rules under ``rules:``. Every problem found is reported as
``file:line: message`` so that a field engineer can go straight to the line. Loading a
directory either succeeds as a whole or raises ``RuleFileError`` listing every problem.

A rule file may come from the platform, so loading one is bounded whatever it holds: at most
``MAX_FILE_BYTES``, YAML nested at most ``MAX_YAML_DEPTH`` levels, no YAML anchors or
aliases (an "alias bomb" of a few hundred bytes would otherwise expand to gigabytes), and
conditions within the limits of ``edge.engine.expr``. Whatever else goes wrong while
checking a file is a problem of that file, never an exception of another kind.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge.engine import expr, typecheck

MAX_FILE_BYTES = 256 * 1024
MAX_YAML_DEPTH = 20  # a rule file needs 6 (rules, list, rule, applies_to, kind, list)
MAX_FORMAT_NUMBER = 64  # the largest width or precision in a title placeholder such as {value:.1f}
SEVERITIES = ("info", "minor", "major", "critical")
TITLE_FIELDS = ("device", "kind", "rule", "address", "grid", "zone", "team", "value", "metric", "category")


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class RuleFileError(Exception):
    """One or more rule files are invalid; ``problems`` has each with its file and line.

    ``rules``: the rules of the file that could be read all the same, so that the checks across
    files (names, categories) still see them and every problem is reported in one pass."""

    def __init__(self, problems: list[Problem], rules: list | None = None):
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems
        self.rules = rules or []


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class OrderSpec(_Model):
    category: str = Field(description="Category code of the work order, e.g. 0101 (manhole cover).")
    severity: Literal["info", "minor", "major", "critical"] = Field(description="Initial severity.")
    title: str = Field(description="Title template; placeholders: " + ", ".join("{%s}" % f for f in TITLE_FIELDS))

    @field_validator("category", mode="before")
    @classmethod
    def _category_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @field_validator("title")
    @classmethod
    def _title_placeholders(cls, value: str) -> str:
        try:
            parts = list(string.Formatter().parse(value))
        except ValueError as error:
            raise ValueError(f"title template is malformed: {error}") from None
        for _, name, spec, conversion in parts:
            if name is None:
                continue
            if name not in TITLE_FIELDS:
                raise ValueError(
                    f"unknown placeholder {{{name}}} in title; use one of "
                    + ", ".join("{%s}" % f for f in TITLE_FIELDS)
                )
            if conversion:
                raise ValueError(f"placeholder {{{name}}} cannot have a conversion")
            if spec and any(int(n) > MAX_FORMAT_NUMBER for n in re.findall(r"\d+", spec)):
                raise ValueError(f"placeholder {{{name}:{spec}}}: widths and precisions above {MAX_FORMAT_NUMBER} "
                                 "are not allowed")
            if spec and not _is_number_format(spec):
                raise ValueError(f"placeholder {{{name}:{spec}}} has an unsupported format")
        return value


def _is_number_format(spec: str) -> bool:
    try:
        format(1.5, spec)
    except ValueError:
        return False
    return True


class AppliesTo(_Model):
    kind: list[str] = Field(description="Device kinds the rule applies to, e.g. manhole_cover.")
    grid: list[str] | None = Field(None, description="Only devices in these grids.")
    zone: list[str] | None = Field(None, description="Only devices in these zones.")
    model: list[str] | None = Field(None, description="Only devices of these models.")
    tags: list[str] | None = Field(None, description="Only devices with at least one of these tags.")
    devices: list[str] | None = Field(None, description="Only these device ids.")

    @field_validator("kind", "grid", "zone", "model", "tags", "devices", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if isinstance(value, (str, int)):
            return [str(value)]
        return value


class RuleSpec(_Model):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Unique name, lower case with underscores.")
    description: str = ""
    applies_to: AppliesTo
    when: str = Field(description="Condition that opens the order.")
    for_: float = Field(0.0, alias="for", description="How long `when` must hold before the order opens.")
    clear_when: str | None = Field(None, description="Condition that clears it; default: `when` is false.")
    clear_for: float = Field(0.0, description="How long `clear_when` must hold before the order clears.")
    worse_by: float | str = Field(
        "never",
        description="While the order is open, a reading this much worse than the one last reported gives the "
        "order a new revision: a number in the metric's unit, or a percentage of the threshold such as 10%; "
        "default never. Worse means further past the threshold of the condition's first "
        "`metric <, <=, >, >= number`.",
    )
    order: OrderSpec

    @field_validator("worse_by", mode="before")
    @classmethod
    def _worse_by(cls, value: Any) -> float | str:
        if isinstance(value, bool):
            raise ValueError("worse_by must be a number, a percentage such as 10%, or never")
        if isinstance(value, (int, float)):
            if not value >= 0:
                raise ValueError("worse_by cannot be negative")
            try:
                return float(value)
            except OverflowError:
                raise ValueError(f"worse_by {value!r} is too large") from None
        text = str(value).strip()
        if text == "never":
            return text
        if text.endswith("%"):
            try:
                percent = float(text[:-1])
            except ValueError:
                percent = -1.0
            if percent > 0:
                return text
        raise ValueError(f"worse_by {value!r}: use a number (metric units), a percentage such as 10%, or never")

    @field_validator("for_", "clear_for", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        if value is None:
            return 0.0
        return expr.parse_duration(value)

    @field_validator("when", "clear_when")
    @classmethod
    def _condition(cls, value: str | None) -> str | None:
        if value is None:
            return None
        check_condition(value)
        return value


def check_condition(text: str) -> expr.Node:
    """Parse a condition and check its function calls; raises ValueError with a readable message."""
    try:
        node = expr.parse(str(text))
    except expr.ExpressionError as error:
        shown = text if len(str(text)) <= 120 else str(text)[:60] + "..."
        raise ValueError(f"in condition {shown!r}: {error}") from None
    try:
        typecheck.check_calls(node)
    except typecheck.CheckError as error:
        raise ValueError(str(error)) from None
    for name in expr.metrics_of(node):
        if name.startswith("__"):
            raise ValueError(f"metric names cannot start with '__': {name!r}")
    return node


@dataclass(frozen=True)
class Worsening:
    """What "worse" means for an open order of a rule: ``metric`` moving in ``direction``
    (+1: higher is worse, -1: lower is worse) by at least ``step`` since the last report."""

    metric: str
    direction: int
    step: float


def worsening(when: expr.Node, worse_by: float | str) -> Worsening | None:
    """From the first ``metric <op> number`` (or ``number <op> metric``) ordering comparison in
    ``when``, read left to right; None when there is none, or worse_by is never."""
    if worse_by == "never":
        return None
    found = _first_threshold(when)
    if found is None:
        return None
    metric, direction, threshold = found
    if isinstance(worse_by, str):  # a percentage of the threshold
        step = abs(threshold) * float(worse_by[:-1]) / 100.0
        if step == 0.0:
            return None
    else:
        step = worse_by
    return Worsening(metric, direction, step)


def _first_threshold(node: expr.Node) -> tuple[str, int, float] | None:
    if isinstance(node, expr.Unary):
        return None if node.op == "not" else _first_threshold(node.operand)
    if not isinstance(node, expr.Binary):
        return None
    if node.op in ("<", "<=", ">", ">="):
        up = 1 if node.op in (">", ">=") else -1
        if isinstance(node.left, expr.Metric) and isinstance(node.right, expr.Number):
            return node.left.name, up, node.right.value
        if isinstance(node.right, expr.Metric) and isinstance(node.left, expr.Number):
            return node.right.name, -up, node.left.value
        return None
    if node.op in ("and", "or"):
        return _first_threshold(node.left) or _first_threshold(node.right)
    return None


@dataclass(frozen=True)
class Rule:
    """A validated rule, with its parsed conditions and where it came from."""

    spec: RuleSpec
    when: expr.Node
    clear_when: expr.Node
    source: str
    line: int
    metrics: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def clear_text(self) -> str:
        """The condition that clears it, as written: ``clear_when``, by default ``not (when)``."""
        return self.spec.clear_when or f"not ({self.spec.when})"

    @property
    def worsening(self) -> Worsening | None:
        return worsening(self.when, self.spec.worse_by)


class _RuleYamlLoader(yaml.SafeLoader):
    """YAML as a rule file may hold it: no anchors or aliases, nested at most MAX_YAML_DEPTH levels.

    Both are refused while composing, before anything is built from them, so an alias bomb
    or a deeply nested document costs no more than reading it up to that point."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._nesting = 0

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, "YAML anchors and aliases (&name, *name) are not allowed in rule files; "
                "write each value out", event.start_mark)
        self._nesting += 1
        if self._nesting > MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_YAML_DEPTH} levels deep", event.start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            self._nesting -= 1


def _load_yaml_with_lines(text: str) -> tuple[Any, dict[tuple, int]]:
    """Parse YAML and remember the line (1-based) of every mapping key and list item."""
    loader = _RuleYamlLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[tuple, int] = {}
        if node is None:
            return None, lines
        stack: list[tuple[yaml.Node, tuple]] = [(node, ())]
        while stack:
            n, path = stack.pop()
            lines.setdefault(path, n.start_mark.line + 1)
            if isinstance(n, yaml.MappingNode):
                for key_node, value_node in n.value:
                    if not isinstance(key_node, yaml.ScalarNode):
                        continue  # the constructor refuses a key that is a list or a mapping
                    lines[path + (key_node.value,)] = key_node.start_mark.line + 1
                    stack.append((value_node, path + (key_node.value,)))
            elif isinstance(n, yaml.SequenceNode):
                stack.extend((item, path + (index,)) for index, item in enumerate(n.value))
        return loader.construct_document(node), lines
    finally:
        loader.dispose()


def _line_for(lines: dict[tuple, int], loc: tuple) -> int:
    path = tuple("for" if part == "for_" else part for part in loc)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get((), 1)


def _describe_pydantic_error(error: dict, data: Any) -> str:
    parts = tuple(error["loc"])
    prefix = ""
    if len(parts) >= 2 and parts[0] == "rules" and isinstance(parts[1], int):
        rule = data["rules"][parts[1]] if parts[1] < len(data["rules"]) else None
        if isinstance(rule, dict) and isinstance(rule.get("name"), str) and parts[2:] != ("name",):
            prefix = f"rule {rule['name']!r}: "
        parts = parts[2:]
    loc = ".".join("for" if p == "for_" else str(p) for p in parts)
    return prefix + _describe_in_rule(error, loc)


def _describe_in_rule(error: dict, loc: str) -> str:
    kind = error["type"]
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    if kind == "extra_forbidden":
        key = str(error["loc"][-1])
        return f"unknown key {key!r}" + _did_you_mean(key, RuleSpec, OrderSpec, AppliesTo)
    if kind == "missing":
        return f"missing required key {loc!r}"
    return f"{loc}: {message}" if loc else message


def _did_you_mean(key: str, *models: type[BaseModel]) -> str:
    names = []
    for model in models:
        for name, info in model.model_fields.items():
            names.append(info.alias or name)
    close = difflib.get_close_matches(key, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_rule_file(path: Path) -> list[Rule]:
    """Load one rule file; raises RuleFileError with every problem found in it."""
    shown = str(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise RuleFileError([Problem(shown, 0, f"cannot read: {error.strerror}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise RuleFileError([Problem(shown, 1, f"file is larger than {MAX_FILE_BYTES // 1024} KiB, the most a rule "
                                               "file may hold; split it into several files")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise RuleFileError([Problem(shown, line, "not UTF-8 text; save the file as UTF-8")]) from None
    return load_rule_text(text, shown)


def load_rule_text(text: str, shown: str) -> list[Rule]:
    """Load one rule file's text, named ``shown`` in its problems; raises RuleFileError."""
    if len(text) > MAX_FILE_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise RuleFileError([Problem(shown, 1, f"file is larger than {MAX_FILE_BYTES // 1024} KiB, the most a rule "
                                               "file may hold; split it into several files")])
    try:
        return _load_rule_text(text, shown)
    except RuleFileError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever a file holds, it is a problem of that file
        raise RuleFileError([Problem(shown, 1, f"cannot be checked: {type(error).__name__}: {error}"[:500])]) from None


def _load_rule_text(text: str, shown: str) -> list[Rule]:
    try:
        data, lines = _load_yaml_with_lines(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(error, "problem", None) or str(error)
        raise RuleFileError([Problem(shown, line, f"not valid YAML: {problem}")]) from None
    except (ValueError, OverflowError) as error:  # e.g. an integer of more digits than Python converts
        raise RuleFileError([Problem(shown, 1, f"not valid YAML: {error}"[:500])]) from None
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise RuleFileError([Problem(shown, 1, "a rule file must have a top-level 'rules:' list")])
    extra = [key for key in data if key != "rules"]
    problems = [Problem(shown, lines.get((key,), 1), f"unknown top-level key {key!r}") for key in extra]
    rules = []
    for index, item in enumerate(data["rules"]):
        try:
            spec = RuleSpec.model_validate(item)
        except ValidationError as error:
            for e in error.errors():
                loc = ("rules", index) + tuple(e["loc"])
                e = dict(e, loc=loc)
                problems.append(Problem(shown, _line_for(lines, loc), _describe_pydantic_error(e, data)))
            continue
        when = expr.parse(spec.when)
        clear = expr.parse(spec.clear_when) if spec.clear_when else expr.Unary("not", when)
        for key, node in (("when", when), ("clear_when", clear if spec.clear_when else None)):
            if node is None:
                continue
            try:
                typecheck.type_of(node, spec.applies_to.kind)
            except typecheck.CheckError as error:
                line = lines.get(("rules", index, key), lines.get(("rules", index), 1))
                problems.append(Problem(shown, line, f"rule {spec.name!r}: {key}: {error}"))
        if spec.worse_by != "never" and _first_threshold(when) is None:
            problems.append(Problem(shown, lines.get(("rules", index, "worse_by"), 1),
                                    f"rule {spec.name!r}: worse_by needs a comparison of a metric with a number "
                                    "in `when` (such as water_cm < 30) to know which way is worse"))
        metrics = tuple(dict.fromkeys(expr.metrics_of(when) + expr.metrics_of(clear)))
        rules.append(Rule(spec, when, clear, shown, lines.get(("rules", index), 1), metrics))
    if problems:
        raise RuleFileError(problems, rules)
    return rules


def rule_files(paths: list[Path]) -> list[Path]:
    """The rule files named by ``paths``: files as given, directories as their *.yaml / *.yml."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")))
        else:
            found.append(path)
    return found


def load_rules(paths: list[Path], categories: set[str] | None = None,
               given: dict[Path, tuple[str, str]] | None = None) -> list[Rule]:
    """Load every rule file under ``paths``; raises RuleFileError listing all problems.

    With ``categories`` (the category table's keys), an order category not in it is a problem.
    ``given`` holds files whose text is given instead of read, as path -> (name shown in
    problems, text); a given path that does not exist yet is loaded too. So a file pushed by the
    platform is checked with the files beside it exactly as ``edge run`` would load them,
    before it is written anywhere.
    """
    given = {path.resolve(): value for path, value in (given or {}).items()}
    problems: list[Problem] = []
    rules: list[Rule] = []
    files = rule_files([p for p in paths if p.exists()])
    present = {path.resolve() for path in files}
    files += [path for path in given if path not in present]
    for path in paths:
        if not path.exists():
            problems.append(Problem(str(path), 0, "no such file or directory"))
    if not files and not problems:
        problems.append(Problem(", ".join(str(p) for p in paths), 0, "no rule files (*.yaml) found"))
    for path in files:
        try:
            text = given.get(path.resolve())
            rules.extend(load_rule_file(path) if text is None else load_rule_text(text[1], text[0]))
        except RuleFileError as error:
            problems.extend(error.problems)
            rules.extend(error.rules)  # their names and categories are checked too, in the same pass
    return _together(rules, problems, categories)


def _together(rules: list[Rule], problems: list[Problem], categories: set[str] | None) -> list[Rule]:
    """The checks across files (unique names, categories in the table); raises RuleFileError."""
    seen: dict[str, Rule] = {}
    for rule in rules:
        if categories is not None and rule.spec.order.category not in categories:
            close = difflib.get_close_matches(rule.spec.order.category, sorted(categories), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(Problem(rule.source, rule.line,
                                    f"rule {rule.name!r}: category {rule.spec.order.category!r} is not in the "
                                    f"category table{hint}"))
        if rule.name in seen:
            first = seen[rule.name]
            problems.append(
                Problem(rule.source, rule.line, f"rule name {rule.name!r} is already used at {first.source}:{first.line}")
            )
        else:
            seen[rule.name] = rule
    if problems:
        raise RuleFileError(problems)
    return rules


def fingerprint(paths: list[Path]) -> tuple:
    """Changes when a rule file under ``paths`` is added, removed or modified."""
    entries = []
    for path in rule_files([p for p in paths if p.exists()]):
        try:
            stat = path.stat()
        except OSError:
            continue
        entries.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(entries)


def version(paths: list[Path]) -> tuple[str, list[str]]:
    """The rule files under ``paths`` as the platform sees them: a version and their names, sorted.

    The version is the first 12 hex digits of a SHA-256 over every file, in order of name: its
    name (UTF-8), a NUL byte, its size in bytes (decimal), a NUL byte, its bytes. So the same
    files give the same version on any gateway, and a platform can compute it for the files it
    pushed (docs/uplink.md, "Health summary"). A file that cannot be read is left out.
    """
    files = []
    for path in rule_files([p for p in paths if p.exists()]):
        try:
            files.append((path.name, path.read_bytes()))
        except OSError:
            continue
    files.sort()
    digest = hashlib.sha256()
    for name, data in files:
        digest.update(b"%s\0%d\0%s" % (name.encode("utf-8", "surrogateescape"), len(data), data))
    return digest.hexdigest()[:12], [name for name, _ in files]
