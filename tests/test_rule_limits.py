"""Loading a rule file is bounded, whatever it holds: size, YAML nesting, YAML aliases,
condition nesting, format widths. `edge rules check` refuses each bad file with file:line and
exit 1, in a process whose memory is capped (an alias bomb used to reach 5.8 GB, 5,000
nested parentheses used to raise RecursionError)."""

from __future__ import annotations

import resource
import subprocess
from pathlib import Path

import pytest

from conftest import RULES, edge_command
from edge.engine import expr
from edge.engine.rules import MAX_FILE_BYTES, RuleFileError, load_rules

MEMORY_CAP = 1024**3  # address space of the checking process; the bad files below used to need far more

BINS = (RULES / "bins.yaml").read_text()
WHEN_LINE = 1 + BINS.splitlines().index("    when: fill_pct >= 85")
TITLE_LINE = 1 + next(i for i, line in enumerate(BINS.splitlines()) if "{value:.0f}% full" in line)


def bins(old: str, new: str) -> str:
    assert old in BINS
    return BINS.replace(old, new, 1)


ALIAS_BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{b}: &{b} [{','.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")) + "rules: [*i]\n"

# (case, file content, line, message the problem must hold)
BAD_FILES = [
    ("nested_parentheses", bins("fill_pct >= 85", "(" * 5000 + "fill_pct >= 85" + ")" * 5000), WHEN_LINE,
     "expression nested too deeply"),
    ("nested_calls", bins("fill_pct >= 85", "avg(" * 3000 + "fill_pct" + ", 1m)" * 3000 + " >= 85"), WHEN_LINE,
     "expression nested too deeply"),
    ("nested_not", bins("fill_pct >= 85", "not " * 5000 + "fill_pct >= 85"), WHEN_LINE, "expression nested too deeply"),
    ("nested_minus", bins("fill_pct >= 85", "-" * 5000 + "fill_pct >= 85"), WHEN_LINE, "expression nested too deeply"),
    ("long_chain", bins("fill_pct >= 85", " or ".join(["fill_pct >= 85"] * 5000)), WHEN_LINE,
     "expression nested too deeply"),
    ("long_sum", bins("fill_pct >= 85", " + ".join(["fill_pct"] * 5000) + " >= 85"), WHEN_LINE,
     "expression nested too deeply"),
    ("alias_bomb", ALIAS_BOMB, 1, "not valid YAML: YAML anchors and aliases (&name, *name) are not allowed"),
    ("anchor_in_a_rule", bins("      kind: bin", "      kind: &k bin"), 9, "YAML anchors and aliases"),
    ("yaml_nested_5000", "rules: " + "[" * 5000 + "]" * 5000 + "\n", 1, "nested more than 20 levels deep"),
    ("yaml_block_nested", "rules:\n" + "".join("  " * i + "- \n" for i in range(1, 200)), 21,
     "nested more than 20 levels deep"),
    ("300_kb", BINS + "#" + "x" * 300_000 + "\n", 1, "file is larger than 256 KiB"),
    ("title_width", bins("{value:.0f}", "{value:999999999}"), TITLE_LINE, "widths and precisions above 64"),
    ("title_precision", bins("{value:.0f}", "{value:.999999999f}"), TITLE_LINE, "widths and precisions above 64"),
    ("integer_of_5000_digits", bins("worse_by: 10 ", "worse_by: " + "9" * 5000 + " "), 1, "not valid YAML"),
    ("duration_too_large", bins("    clear_when: fill_pct < 30", "    for: " + "9" * 400 + "\n    clear_when: fill_pct < 30"),
     WHEN_LINE + 1, "too large"),
    ("duration_infinite", bins("    clear_when: fill_pct < 30", "    for: .inf\n    clear_when: fill_pct < 30"),
     WHEN_LINE + 1, "not a duration"),
    ("unhashable_key", "? [a, b]\n: 1\nrules: []\n", 1, "not valid YAML"),
    ("unknown_category", bins("category: bin_overflow", "category: bin_overflowing"), WHEN_LINE - 4,
     "category 'bin_overflowing' is not in the category table (did you mean 'bin_overflow'?)"),
]


def run_capped(*args: str) -> subprocess.CompletedProcess:
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    return subprocess.run(edge_command() + list(args), capture_output=True, text=True, timeout=120, preexec_fn=cap)


@pytest.mark.parametrize("case,content,line,message", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_edge_rules_check_refuses_a_hostile_file_with_its_line(tmp_path, case, content, line, message):
    path = tmp_path / f"{case}.yaml"
    path.write_text(content)
    result = run_capped("rules", "check", str(path))
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"{path}:{line}: "), first[:300]
    assert message in first, first[:500]
    assert "Traceback" not in result.stderr and "Error:" not in first.split(": ", 2)[1]


def test_a_file_that_is_not_utf8_is_refused_with_its_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(BINS.encode().replace(b"Smart bins", b"Smart bins \xe9t\xe9", 1))
    result = run_capped("rules", "check", str(path))
    assert result.returncode == 1 and result.stderr.startswith(f"{path}:1: not UTF-8 text"), result.stderr


def test_the_shipped_rules_pass_under_the_same_cap():
    result = run_capped("rules", "check", str(RULES))
    assert result.returncode == 0 and result.stdout.startswith("ok: "), result.stderr


def test_conditions_within_the_limits_still_parse():
    within = "(" * (expr.MAX_NESTING - 1) + "fill_pct >= 85" + ")" * (expr.MAX_NESTING - 1)
    assert expr.parse(within) == expr.parse("fill_pct >= 85")
    chain = " or ".join(f"m{i} > {i}" for i in range(40))
    assert expr.depth(expr.parse(chain)) <= expr.MAX_DEPTH
    with pytest.raises(expr.ExpressionError, match="nested too deeply"):
        expr.parse("(" * expr.MAX_NESTING + "x" + ")" * expr.MAX_NESTING)


def test_a_file_given_as_text_is_checked_with_the_files_beside_it(tmp_path):
    folder = tmp_path / "rules"
    folder.mkdir()
    for name in ("bins.yaml", "manhole_covers.yaml"):
        (folder / name).write_text((RULES / name).read_text())
    changed = bins("fill_pct >= 85", "fill_pct >= 90")
    rules = load_rules([folder], given={folder / "bins.yaml": ("bins.yaml", changed)})
    assert {r.name for r in rules} >= {"bin_full", "cover_tilted"}
    assert next(r for r in rules if r.name == "bin_full").spec.when == "fill_pct >= 90"
    with pytest.raises(RuleFileError) as raised:  # a new file whose rule names are taken
        load_rules([folder], given={folder / "more.yaml": ("more.yaml", BINS)})
    assert str(raised.value.problems[0]).startswith("more.yaml:")
    with pytest.raises(RuleFileError) as raised:
        load_rules([folder], given={folder / "big.yaml": ("big.yaml", "#" * (MAX_FILE_BYTES + 1))})
    assert str(raised.value) == "big.yaml:1: file is larger than 256 KiB, the most a rule file may hold; split it into several files"
    assert sorted(p.name for p in Path(folder).iterdir()) == ["bins.yaml", "manhole_covers.yaml"]  # nothing written
