"""Benchmark of the anomaly detector behind ``anomaly(metric)`` on NAB (the Numenta Anomaly Benchmark).

Runs edge/engine/detectors.py over every NAB file with its one configuration (no per-file
setting; labels are read only by the scorer, after detection), scores the three NAB profiles
with bench/nab_scorer.py (one threshold per profile for the whole corpus), and measures:
- speed: points per second on one core, the whole corpus run through ``detector_run`` (numba
  compilation excluded: one warm-up run first; best of ``REPEATS`` runs);
- memory per series: ``STATE_SIZE * 8`` bytes.

    .venv/bin/python bench/bench_anomaly.py           # prints, and writes bench/results/anomaly.json
    NAB_DIR=/path/to/nab .venv/bin/python bench/bench_anomaly.py
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.nab_scorer import PROFILES, load_corpus, load_profiles, nab_dir, score_corpus  # noqa: E402
from edge.engine import detectors  # noqa: E402

REPEATS = 5
RESULTS = ROOT / "bench" / "results" / "anomaly.json"


def main() -> None:
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    except (AttributeError, OSError):
        pass
    corpus = load_corpus()
    assert load_profiles(corpus.root) == PROFILES, "profiles.json differs from the scorer's profiles"
    files = list(corpus.files.values())
    print(f"NAB at {nab_dir()}: {len(files)} files, {corpus.rows} rows")

    detectors.detector_run(files[0].timestamps[:10], files[0].values[:10])  # compile / load cache
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        scores = {f.name: detectors.detector_run(f.timestamps, f.values) for f in files}
        best = min(best, time.perf_counter() - start)
    points_per_s = corpus.rows / best
    for name, s in scores.items():
        assert np.all((s >= 0.0) & (s <= 1.0)), f"{name}: score outside [0, 1]"

    profiles = {}
    for key, profile in PROFILES.items():
        r = score_corpus(corpus, scores, profile)
        profiles[key] = {
            "normalised": round(r.normalised, 2),
            "threshold": r.threshold,
            "raw": round(r.raw, 4),
            "windows_found": r.windows_found,
            "windows": r.windows,
            "false_positives": r.false_positives,
        }
        print(f"{key:20s} score {r.normalised:6.2f}   threshold {r.threshold:.4f}   "
              f"windows found {r.windows_found}/{r.windows}   false positives {r.false_positives}")

    result = {
        "detector": "edge.engine.detectors (range + histogram rarity, said once)",
        "config": {
            "bins": detectors.BINS, "decay": detectors.DECAY, "warmup": detectors.WARMUP,
            "rarity_scale": detectors.RARITY_SCALE, "rare_cap": detectors.RARE_CAP,
            "outside_distance": detectors.OUTSIDE_DISTANCE, "outside_calm": detectors.OUTSIDE_CALM,
            "rest_block": detectors.REST_BLOCK, "rest_blocks": detectors.REST_BLOCKS,
        },
        "corpus": {"files": len(files), "rows": corpus.rows, "windows": profiles["standard"]["windows"]},
        "standard": profiles["standard"]["normalised"],
        "reward_low_FP_rate": profiles["reward_low_FP_rate"]["normalised"],
        "reward_low_FN_rate": profiles["reward_low_FN_rate"]["normalised"],
        "profiles": profiles,
        "points_per_s_one_core": int(points_per_s),
        "bytes_per_series": detectors.STATE_SIZE * 8,
        "python": platform.python_version(),
    }
    print(f"speed {points_per_s:,.0f} points/s on one core (best of {REPEATS}, warm)")
    print(f"memory {detectors.STATE_SIZE * 8} bytes per series ({detectors.STATE_SIZE} float64)")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
