"""Rule files compiled to arrays and evaluated over batches of readings by numba kernels."""

from edge.engine.engine import Engine, Evidence, ReadingBatch, Transition
from edge.engine.rules import Rule, RuleFileError, load_rules

__all__ = ["Engine", "Evidence", "ReadingBatch", "Rule", "RuleFileError", "Transition", "load_rules"]
