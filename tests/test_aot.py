"""The engine's kernels built ahead of time (edge/engine/aot.py): the same results as numba's,
never loaded when built from other sources, and a gateway that runs them imports no numba."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge.cli import main
from edge.engine import Engine, aot, load_rules
from edge.registry import Device, Registry
from tests.test_engine import FUNCTION_RULES, RULES

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Path:
    """The folder of a module built for the current sources: scripts/setup's, else one built here."""
    if aot.find() is not None:
        return aot.kernels_dir()
    directory = tmp_path_factory.mktemp("kernels")
    aot.build(directory)
    return directory


def street(n: int = 60) -> Registry:
    kinds = ["manhole_cover", "manhole_cover", "bin", "camera"]
    devices = [Device(f"d{i}", kinds[i % 4], "m", "a", 0, 0, f"G{1 + i % 2}", "Z1", "t", i,
                      {"depth_cm": 100.0} if kinds[i % 4] == "bin" else {}) for i in range(n)]
    return Registry(devices, ["depth_cm"])


def stream(registry: Registry, count: int, seed: int):
    """Messages of every kind, irregular in time, with alarms, repeats, late and text readings."""
    rng = np.random.default_rng(seed)
    t = 1000.0
    for _ in range(count):
        t += float(rng.exponential(0.4))
        device = registry.devices[int(rng.integers(len(registry)))]
        ts = t - (float(rng.uniform(0, 30)) if rng.random() < 0.05 else 0.0)  # some late
        alarm = rng.random() < 0.2
        if device.kind == "manhole_cover":
            values = {"tilt_deg": float(rng.choice([1.0, 2.0, 30.0 if alarm else 3.0])),
                      "open": float(alarm and rng.random() < 0.5), "water_cm": float(rng.integers(10, 60)),
                      "h2s_ppm": 0.5}
        elif device.kind == "bin":
            values = {"distance_cm": float(rng.integers(5, 90)), "temp_c": 20.0 + 50.0 * alarm}
        else:
            values = {"label": str(rng.choice(["car", "person"])), "zone": "no_parking",
                      "score": float(rng.uniform(0.5, 1)), "active": float(rng.random() < 0.8)}
        yield device.index, ts, values, t


def run(engine: Engine, registry: Registry, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed + 1)
    out, builder = [], engine.builder()
    for index, ts, values, now in stream(registry, 3000, seed):
        builder.add(index, ts, values, now)
        if rng.random() < 0.05:
            out += engine.process(builder.build())
            out += engine.tick(now)
            builder = engine.builder()
    out += engine.process(builder.build())
    return [(t.kind, t.rule.name, t.device.id, t.ts, t.evidence) for t in out]


@pytest.mark.parametrize("seed", [1, 2])
def test_built_kernels_give_what_numba_gives_transition_for_transition_and_state_for_state(tmp_path, built, seed):
    shipped = load_rules([ROOT / "rules"])
    (tmp_path / "more.yaml").write_text(FUNCTION_RULES)
    (tmp_path / "base.yaml").write_text(RULES.replace("c1", "manhole_cover_displaced")
                                        .replace("c2", "bin_overflow").replace("c3", "sewer_overflow"))
    rules = shipped + load_rules([tmp_path / "more.yaml", tmp_path / "base.yaml"])
    registry = street()
    built_kernels = aot.ahead_of_time(built)
    assert built_kernels is not None and built_kernels.kind == "ahead-of-time"
    engines = {kind: Engine(rules, registry, origin=1000.0, kernels=k)
               for kind, k in (("aot", built_kernels), ("jit", aot.jit()))}
    results = {kind: run(engine, registry, seed) for kind, engine in engines.items()}
    assert len(results["aot"]) > 50
    assert {kind for kind, *_ in results["aot"]} == {"open", "clear", "update"}
    assert results["aot"] == results["jit"]
    for name in ("latest", "latest_ts", "since", "active", "quiet", "reported", "state"):
        np.testing.assert_array_equal(getattr(engines["aot"], name), getattr(engines["jit"], name), err_msg=name)


def test_a_module_built_from_other_sources_is_never_loaded(tmp_path, built, monkeypatch):
    module = aot.find(built)
    assert module is not None
    (tmp_path / module.name).write_bytes(module.read_bytes())
    assert aot.find(tmp_path) == tmp_path / module.name
    changed = tmp_path / "kernels.py"
    changed.write_text(aot.SOURCES[0].read_text() + "\n# a change\n")
    monkeypatch.setattr(aot, "SOURCES", [changed] + aot.SOURCES[1:])
    assert aot.find(tmp_path) is None and aot.load(tmp_path) is None
    monkeypatch.setattr(aot, "_chosen", None)
    monkeypatch.setenv("EDGE_KERNELS_DIR", str(tmp_path))
    chosen = aot.implementation()
    assert chosen.kind == "jit" and "edge engine build" in chosen.where


def test_a_damaged_module_is_refused_and_numba_runs_the_gateway(tmp_path, built, monkeypatch, caplog):
    module = aot.find(built)
    (tmp_path / module.name).write_bytes(b"\0" * 4096)  # zeroed, as a file system may leave it after a power cut
    monkeypatch.setenv("EDGE_KERNELS_DIR", str(tmp_path))
    monkeypatch.delenv("EDGE_KERNELS", raising=False)
    monkeypatch.setattr(aot, "_chosen", None)
    monkeypatch.delitem(sys.modules, aot.module_name(), raising=False)  # import from the file, not the cache
    with caplog.at_level("WARNING", logger="edge.engine.aot"):
        chosen = aot.implementation()
    assert chosen.kind == "jit"
    assert "does not load" in caplog.text


GATEWAY_START = """
import sys
from pathlib import Path
from edge.agent import Agent
from edge.config import load_config
agent = Agent(load_config(Path(sys.argv[1])))
agent.engine.warm_up()
print(agent.engine.kernels.kind, 'numba' in sys.modules, 'llvmlite' in sys.modules)
"""


def test_a_gateway_with_the_built_kernels_imports_no_numba(built):
    env = dict(os.environ, EDGE_KERNELS_DIR=str(built))
    env.pop("EDGE_KERNELS", None)
    run = [sys.executable, "-c", GATEWAY_START, str(ROOT / "config" / "gateway.toml")]
    out = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.stdout.split() == ["ahead-of-time", "False", "False"], out.stderr[-2000:]
    out = subprocess.run(run, env=dict(env, EDGE_KERNELS="jit"), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.stdout.split() == ["jit", "True", "True"], out.stderr[-2000:]


def test_engine_which_and_build_if_missing_say_what_they_found(built, monkeypatch):
    monkeypatch.setenv("EDGE_KERNELS_DIR", str(built))
    monkeypatch.delenv("EDGE_KERNELS", raising=False)
    monkeypatch.setattr(aot, "_chosen", None)
    result = CliRunner().invoke(main, ["engine", "which"])
    assert result.exit_code == 0 and result.output.startswith("ahead-of-time: ") and str(built) in result.output
    result = CliRunner().invoke(main, ["engine", "build", "--if-missing"])
    assert result.exit_code == 0 and result.output.startswith("up to date: ")
