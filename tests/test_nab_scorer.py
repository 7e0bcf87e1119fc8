"""The NAB scorer (bench/nab_scorer.py): null 0, perfect 100, a case worked out by hand, and the
fast corpus sweep held against the plain row-by-row total."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.nab_scorer import (  # noqa: E402
    PROBATIONARY,
    PROFILES,
    Corpus,
    DataFile,
    file_total,
    load_corpus,
    load_profiles,
    nab_dir,
    probationary_length,
    scaled_sigmoid,
    score_corpus,
    scored_rows,
    threshold_sweep,
)

STANDARD = PROFILES["standard"]
LOW_FP = PROFILES["reward_low_FP_rate"]
LOW_FN = PROFILES["reward_low_FN_rate"]


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    if not (nab_dir() / "combined_windows.json").exists():
        pytest.skip(f"NAB data not found at {nab_dir()} (set NAB_DIR)")
    return load_corpus()


def small_file() -> DataFile:
    """20 rows a minute apart, one window over rows 8..11 (w = 4)."""
    ts = 1_400_000_000.0 + 60.0 * np.arange(20)
    return DataFile("small.csv", ts, np.zeros(20), [(8, 11)])


def small_corpus() -> Corpus:
    c = Corpus(root=Path("."))
    c.files["small.csv"] = small_file()
    return c


def test_profiles_match_profiles_json(corpus):
    assert load_profiles(corpus.root) == PROFILES


def test_scaled_sigmoid():
    assert float(scaled_sigmoid(0.0)) == 0.0
    assert math.isclose(float(scaled_sigmoid(-1.0)), 2 / (1 + math.exp(-5)) - 1)
    assert float(scaled_sigmoid(3.0)) == -1.0
    assert float(scaled_sigmoid(2.999)) > -1.0


def test_probationary_length():
    assert probationary_length(20) == 3
    assert probationary_length(4032) == 604
    assert probationary_length(22695) == 750


@pytest.mark.parametrize("profile", list(PROFILES.values()), ids=list(PROFILES))
def test_null_detector_scores_0(corpus, profile):
    scores = {name: np.zeros(f.n) for name, f in corpus.files.items()}
    result = score_corpus(corpus, scores, profile)
    assert result.normalised == 0.0
    # Never firing is always a candidate: a constant score cannot do better or worse.
    ones = {name: np.ones(f.n) for name, f in corpus.files.items()}
    assert score_corpus(corpus, ones, profile).normalised >= 0.0


@pytest.mark.parametrize("profile", list(PROFILES.values()), ids=list(PROFILES))
def test_perfect_detector_scores_100(corpus, profile):
    scores = {}
    for name, f in corpus.files.items():
        a = np.zeros(f.n)
        for start, _ in f.windows:
            a[start] = 1.0
        scores[name] = a
    result = score_corpus(corpus, scores, profile)
    assert math.isclose(result.normalised, 100.0, abs_tol=1e-9)
    assert result.windows == sum(len(f.windows) for f in corpus.files.values()) == 55
    assert result.windows_found == result.windows and result.false_positives == 0
    assert result.threshold == 1.0


def test_hand_computed_small_case():
    # 20 rows; probationary length min(floor(0.15 * 20), 750) = 3, so rows 0..2 count for nothing.
    # One window, rows 8..11, width w = 4. S(x) = 2 / (1 + e^(5x)) - 1.
    # S(-1) = 2 / (1 + e^-5) - 1 = 2 / 1.0067379 - 1 = 0.9866143
    #
    # Scores: row 1 = 1.0 (probationary: ignored), row 5 = 1.0, row 9 = 1.0, row 10 = 1.0,
    # row 14 = 0.5, every other row 0.
    # Standard profile (tp 1, fp 0.11, fn 1):
    #   row 5: outside, no window has ended yet           -> -1 * 0.11           = -0.11
    #   row 9: in the window, x = -(11 - 9 + 1) / 4 = -0.75
    #          S(-0.75) = 2 / (1 + e^-3.75) - 1 = 2 / 1.0235177 - 1 = 0.9540453
    #          score 0.9540453 * 1 / 0.9866143                          = +0.9669891
    #   row 10: later in the same window: only the best (row 9) counts  =  0
    #   row 14: outside, after the window that ended at row 11:
    #          x = |11 - 14| / (4 - 1) = 1, S(1) = 2 / (1 + e^5) - 1 = -0.9866143
    #          score -0.9866143 * 0.11                                  = -0.1085276
    # At threshold 1.0 (rows 5, 9, 10): -0.11 + 0.9669891             =  0.8569891
    # At threshold 0.5 (rows 5, 9, 10, 14): 0.8569891 - 0.1085276      =  0.7484615
    # At a threshold above 1 (nothing): the window is missed             = -1 (null)
    # Best threshold 1.0; null -1, perfect +1: normalised 100 * (0.8569891 + 1) / 2 = 92.849454
    # Reward low FN (fn 2): null -2, perfect 1: 100 * (0.8569891 + 2) / 3            = 95.232970
    # Reward low FP (fp 0.22): at 1.0, -0.22 + 0.9669891 = 0.7469891;
    #   100 * (0.7469891 + 1) / 2                                                      = 87.349454
    f = small_file()
    a = np.zeros(20)
    a[[1, 5, 9, 10]] = 1.0
    a[14] = 0.5
    scores = {"small.csv": a}
    c = small_corpus()

    assert math.isclose(file_total(f, a, STANDARD, 1.0), 0.8569891, abs_tol=1e-7)
    assert math.isclose(file_total(f, a, STANDARD, 0.5), 0.7484615, abs_tol=1e-7)
    assert file_total(f, a, STANDARD, 1.5) == -1.0

    thresholds, totals, null = threshold_sweep(c, scores, STANDARD)
    assert null == -1.0
    assert list(thresholds) == [1.0, 0.5, 0.0]
    assert np.allclose(totals[:2], [0.8569891, 0.7484615], atol=1e-7)

    std = score_corpus(c, scores, STANDARD)
    assert std.threshold == 1.0
    assert math.isclose(std.raw, 0.8569891, abs_tol=1e-7)
    assert (std.null, std.perfect) == (-1.0, 1.0)
    assert math.isclose(std.normalised, 92.849454, abs_tol=1e-5)
    assert (std.windows_found, std.false_positives, std.detections) == (1, 1, 3)

    assert math.isclose(score_corpus(c, scores, LOW_FN).normalised, 95.232970, abs_tol=1e-5)
    assert math.isclose(score_corpus(c, scores, LOW_FP).normalised, 87.349454, abs_tol=1e-5)


def test_scored_rows_marks_probation_and_windows():
    rows = scored_rows(20, [(8, 11)], STANDARD)
    assert list(rows.window[:3]) == [PROBATIONARY] * 3
    assert list(rows.window[8:12]) == [0] * 4
    assert rows.window[3] == rows.window[12] == -1
    # Inside a window, earlier is better; the first row scores exactly tp.
    assert math.isclose(rows.sweep[8], 1.0)
    assert np.all(np.diff(rows.sweep[8:12]) < 0)


def test_window_in_probation_counts_for_nothing():
    # A window wholly within the first 3 rows is not counted: null = perfect = 0 windows.
    f = DataFile("p.csv", np.arange(20.0), np.zeros(20), [(0, 2), (10, 12)])
    c = Corpus(root=Path("."))
    c.files["p.csv"] = f
    a = np.zeros(20)
    a[0] = a[10] = 1.0
    result = score_corpus(c, {"p.csv": a}, STANDARD)
    assert result.windows == 1 and result.null == -1.0
    assert math.isclose(result.normalised, 100.0)


def test_sweep_matches_row_by_row_totals(corpus):
    rng = np.random.default_rng(7)
    scores = {name: rng.random(f.n) ** 4 for name, f in corpus.files.items()}
    for profile in PROFILES.values():
        thresholds, totals, _ = threshold_sweep(corpus, scores, profile)
        for k in (0, 3, 40, 700):
            plain = sum(file_total(f, scores[n], profile, thresholds[k]) for n, f in corpus.files.items())
            assert math.isclose(plain, totals[k], rel_tol=1e-9, abs_tol=1e-9)


def test_corpus_loads_quirks(corpus):
    assert len(corpus.files) == 35
    # Repeated and backward timestamps are kept in file order.
    disk = corpus.files["realAWSCloudwatch/ec2_disk_write_bytes_1ef3de.csv"]
    assert np.any(np.diff(disk.timestamps) == 0)
    machine = corpus.files["realKnownCause/machine_temperature_system_failure.csv"]
    assert np.any(np.diff(machine.timestamps) < 0)
