"""Firmware simulator: a whole street of covers, bins and cameras, their faults, and the ground truth.

Library: ``load_scenario`` -> ``run_scenario`` (or ``Simulation``) -> ground truth and
recorded readings; ``score`` compares the truth with the orders a receiver got.
Command line: ``python -m firmware_sim`` (see docs/simulator.md).
"""

from firmware_sim.runner import RunResult, run_scenario
from firmware_sim.scenario import Scenario, ScenarioError, load_scenario
from firmware_sim.score import score
from firmware_sim.simulation import Simulation

__all__ = ["RunResult", "Scenario", "ScenarioError", "Simulation", "load_scenario", "run_scenario", "score"]
