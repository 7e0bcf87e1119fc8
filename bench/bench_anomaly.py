"""Benchmark of the anomaly detector behind ``anomaly(metric)`` on NAB (the Numenta Anomaly Benchmark).

Runs edge/engine/detectors.py over every NAB file with its one configuration (no per-file
setting; labels are read only by the scorer, after detection), scores the three NAB profiles
with bench/nab_scorer.py (one threshold per profile for the whole corpus), and measures:
- speed: points per second on one core, the whole corpus run through ``detector_run`` (numba
  compilation excluded: one warm-up run first; best of ``REPEATS`` runs);
- memory per series: ``STATE_SIZE * 8`` bytes;
- generality (bench/anomaly_search.py): the plateau (each constant moved one step either way,
  the others kept) and a leave-one-group-out check (constants and threshold chosen on three of
  NAB's four groups, the fourth scored with them). About half a minute; ``--quick`` skips it.

    .venv/bin/python bench/bench_anomaly.py           # prints, and writes bench/results/anomaly.json
    .venv/bin/python bench/bench_anomaly.py --quick   # without the generality check (not written)
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

from bench import anomaly_search  # noqa: E402
from bench.nab_scorer import (  # noqa: E402
    PROFILES,
    count_at_threshold,
    load_corpus,
    load_profiles,
    nab_dir,
    score_corpus,
)
from edge.engine import detectors  # noqa: E402

REPEATS = 5
FIXED_THRESHOLDS = (0.5, 0.6, 0.7, 0.725, 0.74, 0.75, 0.8, 0.85, 0.9, 0.95)  # what a rule's "> t" would have done
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

    fixed = []
    print("at fixed thresholds (a rule's anomaly(x) >= t):")
    for t in FIXED_THRESHOLDS:
        row = {"threshold": t}
        for key, profile in PROFILES.items():
            row[key] = round(anomaly_search.at(corpus, scores, profile, t).normalised, 2)
        row.update(count_at_threshold(corpus, scores, PROFILES["standard"], t))
        fixed.append(row)
        print(f"  >= {t:5.3f}: standard {row['standard']:6.2f}  low FP {row['reward_low_FP_rate']:6.2f}  "
              f"low FN {row['reward_low_FN_rate']:6.2f}  windows found {row['windows_found']}  "
              f"false positives {row['false_positives']}")

    result = {
        "detector": "edge.engine.detectors (break-out of the value and of its smoothed level, "
                    "stuck-sensor run, histogram rarity, said once)",
        "command": ".venv/bin/python bench/bench_anomaly.py",
        "config": dict(zip(detectors.CONFIG_NAMES, detectors.CONFIG),
                       BINS=detectors.BINS, REST_BLOCK=detectors.REST_BLOCK, REST_BLOCKS=detectors.REST_BLOCKS),
        "corpus": {"files": len(files), "rows": corpus.rows, "windows": profiles["standard"]["windows"]},
        "standard": profiles["standard"]["normalised"],
        "reward_low_FP_rate": profiles["reward_low_FP_rate"]["normalised"],
        "reward_low_FN_rate": profiles["reward_low_FN_rate"]["normalised"],
        "profiles": profiles,
        "fixed_thresholds": fixed,
        "points_per_s_one_core": int(points_per_s),
        "bytes_per_series": detectors.STATE_SIZE * 8,
        "python": platform.python_version(),
    }
    print(f"speed {points_per_s:,.0f} points/s on one core (best of {REPEATS}, warm)")
    print(f"memory {detectors.STATE_SIZE * 8} bytes per series ({detectors.STATE_SIZE} float64)")
    if "--quick" in sys.argv[1:]:
        return
    result["generality"] = generality(corpus)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {RESULTS.relative_to(ROOT)}")


def generality(corpus) -> dict:
    print("plateau, standard profile (each constant one step down / up, the others as shipped):")
    rows = anomaly_search.plateau(corpus)
    shipped = rows[0]["normalised"]
    print(f"  shipped {shipped:.2f}")
    for name in anomaly_search.STEPS:
        moved = [r for r in rows if r["constant"] == name]
        print(f"  {name:17s} " + "   ".join(f"{r['value']:g}: {r['normalised']:.2f}" for r in moved)
              + f"   (shipped {anomaly_search.SHIPPED[name]:g})")
    print(f"leave one group out, standard profile ({len(anomaly_search.grid())} settings of "
          f"{', '.join(anomaly_search.GRID_AXES)}; constants and threshold chosen on the other three groups):")
    logo = anomaly_search.leave_one_group_out(corpus)
    for r in logo:
        held = "n/a (no windows)" if r["held_out_normalised"] is None else f"{r['held_out_normalised']:.2f}"
        shipped_g = "n/a" if r["shipped_on_group_normalised"] is None else f"{r['shipped_on_group_normalised']:.2f}"
        print(f"  {r['held_out']:22s} held out: {held:>16s} (raw {r['held_out_raw']:+.2f})   shipped: {shipped_g:>6s} "
              f"(raw {r['shipped_on_group_raw']:+.2f})   chosen on the others: {r['chosen_on_other_three']}")
    scored = [r for r in logo if r["held_out_normalised"] is not None]
    held_mean = round(sum(r["held_out_normalised"] for r in scored) / len(scored), 2)
    in_sample_mean = round(sum(r["shipped_on_group_normalised"] for r in scored) / len(scored), 2)
    print(f"  mean over the {len(scored)} groups with windows: held out {held_mean:.2f}, shipped in-sample "
          f"{in_sample_mean:.2f}, gap {in_sample_mean - held_mean:.2f} points")
    only = [r for r in anomaly_search.threshold_only(corpus) if r["held_out_normalised"] is not None]
    only_mean = round(sum(r["held_out_normalised"] for r in only) / len(only), 2)
    print("leave one group out, the threshold only (shipped constants): "
          + ", ".join(f"{r['held_out']} {r['held_out_normalised']:.2f} (threshold {r['threshold_from_other_three']:.4f})"
                      for r in only) + f"; mean {only_mean:.2f}")
    return {"plateau_standard": rows, "leave_one_group_out_standard": logo,
            "leave_one_group_out_mean_standard": held_mean, "in_sample_same_groups_mean_standard": in_sample_mean,
            "gap_points": round(in_sample_mean - held_mean, 2),
            "threshold_only_leave_one_group_out_standard": only,
            "threshold_only_leave_one_group_out_mean_standard": only_mean}

if __name__ == "__main__":
    main()
