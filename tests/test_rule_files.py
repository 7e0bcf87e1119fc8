"""Rule files: the shipped ones are valid; bad ones are refused with file:line and a reason."""

from __future__ import annotations

import re
import subprocess
import textwrap

import pytest

from conftest import RULES, edge_command
from edge.engine.rules import RuleFileError, load_rules

GOOD = """\
rules:
  - name: cover_tilted
    applies_to:
      kind: manhole_cover
    when: tilt_deg > 15
    for: 10s
    order:
      category: manhole_cover_displaced
      severity: critical
      title: "Cover {device} tilted {value:.0f} at {address}"
"""


def write(tmp_path, text, name="rules.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_shipped_rules_are_valid():
    rules = load_rules([RULES])
    assert {r.name for r in rules} >= {"cover_tilted", "bin_full"}


def test_good_file_loads_with_its_line(tmp_path):
    (rule,) = load_rules([write(tmp_path, GOOD)])
    assert rule.spec.for_ == 10.0 and rule.line == 2 and rule.metrics == ("tilt_deg",)


@pytest.mark.parametrize(
    "old, new, line, message",
    [
        ("    when: tilt_deg > 15", "    when: tilt_deg >> 15", 5, "expected a value"),
        ("    for: 10s", "    for: ten seconds", 6, "not a duration"),
        ("    for: 10s", "    fro: 10s", 6, "unknown key 'fro' (did you mean 'for'?)"),
        ("      severity: critical", "      severity: urgent", 9, "severity"),
        ("{value:.0f}", "{valeu}", 10, "unknown placeholder {valeu}"),
        ("    when: tilt_deg > 15", "    when: avgg(tilt_deg, 5m) > 15", 5, "unknown function 'avgg'"),
        ("  - name: cover_tilted", "  - name: Cover Tilted", 2, "name"),
        ("    applies_to:\n      kind: manhole_cover\n", "", 2, "missing required key 'applies_to'"),
        ("    when: tilt_deg > 15", "    when: tilt_dg > 15", 5,
         "unknown metric 'tilt_dg' for manhole_cover (did you mean 'tilt_deg'?)"),
        ("    when: tilt_deg > 15", "    when: fill_pct > 15", 5, "unknown metric 'fill_pct' for manhole_cover"),
        ("    when: tilt_deg > 15", '    when: tilt_deg > "high"', 5, "cannot compare text with '>'"),
        ("    when: tilt_deg > 15", "    when: rate(10m, tilt_deg) > 1", 5, "must be a metric name"),
        ("    when: tilt_deg > 15", "    when: avg(tilt_deg) > 1", 5, "avg takes 2 argument(s)"),
        ("    when: tilt_deg > 15", "    when: absent(-5)", 5, "positive duration"),
        ("      kind: manhole_cover", "      kind: lamp_post", 5, "unknown device kind 'lamp_post'"),
        ("    for: 10s", "    for: 10s\n    worse_by: lots", 7, "worse_by 'lots'"),
        ("    for: 10s", "    for: 10s\n    worse_by: -2", 7, "worse_by cannot be negative"),
        ("    when: tilt_deg > 15\n    for: 10s", "    when: open == 1\n    for: 10s\n    worse_by: 5", 7,
         "worse_by needs a comparison of a metric with a number"),
    ],
)
def test_bad_rule_is_refused_with_its_line(tmp_path, old, new, line, message):
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(RuleFileError) as caught:
        load_rules([path])
    (problem,) = caught.value.problems
    assert (problem.path, problem.line) == (str(path), line)
    assert message in problem.message


def test_broken_yaml_and_duplicate_names(tmp_path):
    broken = write(tmp_path, "rules:\n  - name: x\n    when: [unclosed\n", "a.yaml")
    with pytest.raises(RuleFileError) as caught:
        load_rules([broken])
    assert "not valid YAML" in str(caught.value)
    write(tmp_path, GOOD, "b.yaml")
    write(tmp_path, GOOD, "c.yaml")
    broken.unlink()
    with pytest.raises(RuleFileError, match=r"c\.yaml:2: rule name 'cover_tilted' is already used at .*b\.yaml:2"):
        load_rules([tmp_path])


def test_rules_check_command(tmp_path):
    good = write(tmp_path, GOOD, "good.yaml")
    ok = subprocess.run(edge_command() + ["rules", "check", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and "ok: 1 rules in 1 file" in ok.stdout
    bad = write(tmp_path, GOOD.replace("tilt_deg > 15", "tilt_deg > > 15"), "bad.yaml")
    failed = subprocess.run(edge_command() + ["rules", "check", str(good), str(bad)], capture_output=True, text=True)
    assert failed.returncode == 1
    assert failed.stderr.startswith(f"{bad}:5: ")
    missing = subprocess.run(edge_command() + ["rules", "check", str(tmp_path / "nope.yaml")], capture_output=True, text=True)
    assert missing.returncode == 1 and "no such file" in missing.stderr


def test_every_error_is_reported_not_only_the_first(tmp_path):
    text = GOOD + GOOD.replace("rules:\n", "").replace("cover_tilted", "second").replace("tilt_deg > 15", "tilt > 15")
    text = text.replace("    for: 10s", "    for: 10 parsecs", 1)
    path = write(tmp_path, text)
    with pytest.raises(RuleFileError) as caught:
        load_rules([path])
    assert [(p.line, p.message.split(":")[0]) for p in caught.value.problems] == [(6, "rule 'cover_tilted'"), (14, "rule 'second'")]


@pytest.mark.parametrize(
    "when, worse_by, expected",
    [
        ("tilt_deg > 15", None, None),  # default: never
        ("tilt_deg > 15", "10%", ("tilt_deg", 1, 1.5)),  # 10% of the threshold
        ("water_cm < 30 or (water_cm < 80 and rate(water_cm, 15m) < -3)", "10%", ("water_cm", -1, 3.0)),
        ("open == 1 or 60 <= tilt_deg", "2", ("tilt_deg", 1, 2.0)),  # 60 <= x is x >= 60: higher is worse
        ("tilt_deg > 15", "25%", ("tilt_deg", 1, 3.75)),
        ("tilt_deg > 15", "never", None),
        ("open == 1", None, None),  # no ordering comparison: no worsening
        ("not (tilt_deg < 15)", None, None),
        ("tilt_deg > 0", "10%", None),  # 10% of a zero threshold is no step at all
    ],
)
def test_which_way_is_worse(tmp_path, when, worse_by, expected):
    text = GOOD.replace("    when: tilt_deg > 15", f"    when: {when}")
    if worse_by is not None:
        text = text.replace("    for: 10s", f"    for: 10s\n    worse_by: {worse_by}")
    (rule,) = load_rules([write(tmp_path, text)])
    worse = rule.worsening
    assert (worse.metric, worse.direction, worse.step) == expected if expected else worse is None


def test_names_and_categories_are_checked_in_the_same_pass_as_each_rule(tmp_path):
    """A rule with a problem does not hide the others' unknown category or repeated name."""
    second = GOOD.replace("rules:\n", "").replace("tilt_deg > 15", "tilt > 15").replace("cover_tilted", "other")
    unknown_category = GOOD.replace("rules:\n", "")
    category = re.search(r"category: (\w+)", GOOD).group(1)
    unknown_category = unknown_category.replace(f"category: {category}", "category: no_such_category")
    path = write(tmp_path, GOOD + second + unknown_category)
    with pytest.raises(RuleFileError) as caught:
        load_rules([path], categories={category})
    messages = [p.message for p in caught.value.problems]
    assert any("rule 'other': when: unknown metric 'tilt'" in m for m in messages), messages
    assert any("category 'no_such_category' is not in the category table" in m for m in messages), messages
    assert any("rule name 'cover_tilted' is already used" in m for m in messages), messages
