"""Search and generality check for the anomaly detector's constants, on NAB.

Uses the detector's own core (edge.engine.detectors.detector_run_config: the same numba code
as ``anomaly(metric)`` with the tunable constants as arguments), so what is searched is what
ships.

- ``grid()``: the settings compared: every combination of a few values per constant around the
  shipped configuration.
- ``plateau()``: the shipped configuration and each constant moved one step down and up, the
  others kept: is the choice a plateau or a peak?
- ``leave_one_group_out()``: for each of NAB's four groups, choose the constants AND the
  threshold on the other three groups only, then score the held-out group with them; compare
  with what the shipped configuration scores on that group at its own all-corpus threshold.

    .venv/bin/python bench/anomaly_search.py            # prints plateau and leave-one-group-out
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.nab_scorer import PROFILES, Corpus, Profile, load_corpus, threshold_sweep  # noqa: E402
from edge.engine import detectors  # noqa: E402

SHIPPED = dict(zip(detectors.CONFIG_NAMES, detectors.CONFIG))

# A few values per constant, the shipped one among them (neighbours one step either side; the
# margin, the most sensitive constant, in finer steps).
STEPS = {
    "WARMUP": (50.0, 100.0, 200.0),
    "OUTSIDE_MARGIN": (0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02),
    "RARE_CAP": (0.6, 0.75, 0.9),
    "OUTSIDE_DISTANCE": (1.0, 2.0, 4.0),
    "OUTSIDE_CALM": (100.0, 200.0, 400.0),
    "RARITY_SCALE": (1.0, 2.0, 4.0),
    "DECAY": (0.999, 0.9995, 0.9999),
    "PRIOR": (0.03, 0.1, 0.3),
    "SMOOTH": (0.025, 0.05, 0.1),
    "RUN_MIN": (5.0, 10.0, 20.0),
    "EMPTY_SCORE": (0.73, 0.74, 0.745),
    "EMPTY_BELOW": (0.25, 0.5, 1.0),
    "MATURE": (0.25, 0.5, 0.75),
    "DAY_MARGIN": (0.2, 0.3, 0.5),
    "DAY_HISTORY": (3 * 86400.0, 7 * 86400.0, 14 * 86400.0),
    "MARGIN_READINGS": (25.0, 50.0, 100.0),
    "NOISE_SIGMAS": (0.0, 1.5, 3.0, 6.0),
}
# The grid of the generality check: the constants that matter most (see plateau()); the others
# stay at their shipped values.
GRID_AXES = ("OUTSIDE_MARGIN", "MARGIN_READINGS", "OUTSIDE_CALM", "DECAY", "SMOOTH", "RUN_MIN")


def config_array(cfg: dict[str, float]) -> np.ndarray:
    c = dict(cfg)
    c["SMOOTH_WARMUP"] = 3.0 / c["SMOOTH"]  # tied to SMOOTH, as in the shipped configuration
    return np.array([c[k] for k in detectors.CONFIG_NAMES], dtype=np.float64)


def run(corpus: Corpus, cfg: dict[str, float]) -> dict[str, np.ndarray]:
    c = config_array(cfg)
    return {name: detectors.detector_run_config(f.timestamps, f.values, c) for name, f in corpus.files.items()}


def subset(corpus: Corpus, groups: set[str]) -> Corpus:
    return Corpus(root=corpus.root, files={k: f for k, f in corpus.files.items() if k.split("/")[0] in groups})


def groups_of(corpus: Corpus) -> list[str]:
    return sorted({k.split("/")[0] for k in corpus.files})


@dataclass
class Scored:
    normalised: float  # nan when the part has no counted window (artificialNoAnomaly)
    raw: float
    threshold: float


def best(corpus: Corpus, scores, profile: Profile) -> Scored:
    thresholds, totals, null = threshold_sweep(corpus, scores, profile)
    if len(totals) and totals.max() > null:
        k = int(np.argmax(totals))
        return Scored(_norm(totals[k], null, profile), float(totals[k]), float(thresholds[k]))
    return Scored(_norm(null, null, profile), float(null), math.inf)


def at(corpus: Corpus, scores, profile: Profile, threshold: float) -> Scored:
    """The total with detections at score >= threshold (a threshold chosen elsewhere)."""
    thresholds, totals, null = threshold_sweep(corpus, scores, profile)
    k = np.flatnonzero(thresholds >= threshold)
    raw = float(totals[k[-1]]) if len(k) else float(null)
    return Scored(_norm(raw, null, profile), raw, threshold)


def _norm(raw: float, null: float, profile: Profile) -> float:
    windows = -null / profile.fn
    perfect = profile.tp * windows
    return 100.0 * (raw - null) / (perfect - null) if perfect > null else math.nan


def grid() -> list[dict[str, float]]:
    out = []
    for values in itertools.product(*(STEPS[a] for a in GRID_AXES)):
        cfg = dict(SHIPPED)
        cfg.update(zip(GRID_AXES, values))
        out.append(cfg)
    return out


def plateau(corpus: Corpus, profile: Profile = PROFILES["standard"]) -> list[dict]:
    rows = [{"constant": "(shipped)", "value": None,
             "normalised": round(best(corpus, run(corpus, SHIPPED), profile).normalised, 2)}]
    for name, values in STEPS.items():
        for v in values:
            if v == SHIPPED[name]:
                continue
            cfg = dict(SHIPPED, **{name: v})
            rows.append({"constant": name, "value": v,
                         "normalised": round(best(corpus, run(corpus, cfg), profile).normalised, 2)})
    return rows


def leave_one_group_out(corpus: Corpus, profile: Profile = PROFILES["standard"]) -> list[dict]:
    configs = grid()
    groups = groups_of(corpus)
    parts = {g: subset(corpus, {g}) for g in groups}
    rests = {g: subset(corpus, set(groups) - {g}) for g in groups}
    runs = [run(corpus, cfg) for cfg in configs]  # every file once per setting
    shipped_scores = run(corpus, SHIPPED)
    shipped_threshold = best(corpus, shipped_scores, profile).threshold
    out = []
    for g in groups:
        train = [best(rests[g], s, profile) for s in runs]
        k = int(np.argmax([t.raw for t in train]))
        held = at(parts[g], runs[k], profile, train[k].threshold)
        shipped = at(parts[g], shipped_scores, profile, shipped_threshold)
        out.append({
            "held_out": g,
            "files": len(parts[g].files),
            "chosen_on_other_three": {a: configs[k][a] for a in GRID_AXES},
            "threshold_from_other_three": train[k].threshold,
            "other_three_normalised": round(train[k].normalised, 2),
            "held_out_normalised": None if math.isnan(held.normalised) else round(held.normalised, 2),
            "held_out_raw": round(held.raw, 3),
            "shipped_on_group_normalised": None if math.isnan(shipped.normalised) else round(shipped.normalised, 2),
            "shipped_on_group_raw": round(shipped.raw, 3),
        })
    return out


def threshold_only(corpus: Corpus, profile: Profile = PROFILES["standard"]) -> list[dict]:
    """Leave one group out with the shipped constants: only the threshold is chosen on the other
    three groups. What a district does with the shipped detector: one threshold, from elsewhere."""
    groups = groups_of(corpus)
    scores = run(corpus, SHIPPED)
    whole = best(corpus, scores, profile)
    out = []
    for g in groups:
        part, rest = subset(corpus, {g}), subset(corpus, set(groups) - {g})
        threshold = best(rest, scores, profile).threshold
        held, shipped = at(part, scores, profile, threshold), at(part, scores, profile, whole.threshold)
        out.append({"held_out": g, "threshold_from_other_three": threshold,
                    "held_out_normalised": None if math.isnan(held.normalised) else round(held.normalised, 2),
                    "shipped_on_group_normalised": None if math.isnan(shipped.normalised) else round(shipped.normalised, 2)})
    return out


def main() -> None:
    corpus = load_corpus()
    start = time.perf_counter()
    print("plateau (standard profile): the shipped setting, then one constant moved at a time")
    for r in plateau(corpus):
        print(f"  {r['constant']:18s} {'' if r['value'] is None else r['value']:>8}  {r['normalised']:6.2f}")
    print(f"leave one group out over {len(grid())} settings (standard profile)")
    for r in leave_one_group_out(corpus):
        print(f"  {r['held_out']:22s} held-out {r['held_out_normalised']} (raw {r['held_out_raw']})  "
              f"shipped {r['shipped_on_group_normalised']} (raw {r['shipped_on_group_raw']})  "
              f"chosen {r['chosen_on_other_three']}")
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
