"""Docs that cannot drift: every documented rule example is valid, every function and metric documented."""

from __future__ import annotations

import re

import pytest

from conftest import ROOT
from edge.engine.functions import FUNCTIONS
from edge.engine.rules import load_rules
from edge.kinds import KIND_METRICS

RULES_DOC = (ROOT / "docs" / "rules.md").read_text()
EXAMPLES = re.findall(r"```yaml\n(.*?)```", RULES_DOC, re.DOTALL)


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_documented_rule_examples_pass_the_check(tmp_path, index):
    path = tmp_path / "example.yaml"
    path.write_text(EXAMPLES[index])
    assert load_rules([path])


def test_every_function_and_metric_is_documented():
    assert len(EXAMPLES) >= 4
    for name in FUNCTIONS:
        assert f"`{name}(" in RULES_DOC, f"function {name} is not in docs/rules.md"
    for kind, metrics in KIND_METRICS.items():
        row = next(line for line in RULES_DOC.splitlines() if line.startswith(f"| {kind} |"))
        for metric in metrics:
            assert f"`{metric}`" in row, f"{kind} metric {metric} is not in docs/rules.md"


def test_every_command_is_in_the_readme():
    from click.testing import CliRunner

    from edge.cli import main

    readme = (ROOT / "README.md").read_text()
    for name, command in main.commands.items():
        subcommands = getattr(command, "commands", {None: command})
        for sub in subcommands:
            usage = f"edge {name}" + (f" {sub}" if sub else "")
            assert usage in readme, f"`{usage}` is not documented in README.md"
            args = [name] + ([sub] if sub else []) + ["--help"]
            assert CliRunner().invoke(main, args).exit_code == 0


def test_the_readme_is_short_and_leads_to_every_doc():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) < 10_000, "README.md: keep it under 10 KB (detail goes to docs/)"
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{doc.name})" in readme, f"README.md does not link docs/{doc.name}"
