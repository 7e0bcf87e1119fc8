"""The anomaly detector (edge/engine/detectors.py): the numba kernel against the plain-Python
reference at every reading, scores in [0, 1], strictly online, constant state."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.engine import detectors as det
from edge.engine.detectors_reference import ReferenceDetector, reference_run


def series(seed: int, n: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    """A noisy daily-ish pattern with a level shift, spikes, a flat stretch, NaNs, repeated and
    backward timestamps."""
    rng = np.random.default_rng(seed)
    ts = 1.4e9 + np.cumsum(rng.choice([0.0, 60.0, 300.0, 3600.0], size=n, p=[0.05, 0.6, 0.3, 0.05]))
    ts[n // 3] = ts[n // 3 - 1] - 3300.0  # a clock stepping back
    i = np.arange(n)
    xs = 50 + 10 * np.sin(i / 40.0) + rng.normal(0, 1 + seed % 3, n)
    xs[n // 2:] += 25.0 * (seed % 2)
    xs[rng.integers(0, n, 10)] += rng.normal(0, 60, 10)
    xs[2 * n // 5:2 * n // 5 + 50] = xs[2 * n // 5]
    xs[rng.integers(0, n, 20)] = np.nan
    if seed % 4 == 3:
        xs = np.round(xs / 10.0) * 10.0  # few distinct values
    return ts, xs


@pytest.mark.parametrize("seed", range(6))
def test_kernel_matches_reference_at_every_reading(seed):
    ts, xs = series(seed)
    fast = det.detector_run(ts, xs)
    slow = reference_run(ts, xs)
    for i, (a, b) in enumerate(zip(fast, slow)):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (i, a, b)
    assert np.count_nonzero(fast) > 0  # the series do raise something


def test_step_by_step_state_matches_reference():
    ts, xs = series(1, 400)
    state = np.empty(det.STATE_SIZE)
    det.detector_init(state, 0)
    ref = ReferenceDetector()
    for t, x in zip(ts, xs):
        assert math.isclose(det.detector_step(state, 0, t, x), ref.step(t, x), rel_tol=1e-9, abs_tol=1e-12)
        if math.isfinite(state[det.S_LOW]):
            assert state[det.S_LOW] == ref.low and state[det.S_HIGH] == ref.high
        assert state[det.S_COUNT] == ref.count
        assert np.allclose(state[det.S_HIST:det.S_HIST + det.BINS], ref.hist, rtol=1e-12, atol=0)


values = st.lists(
    st.one_of(
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
        st.sampled_from([0.0, 1.0, 1.0, 1.0, float("nan"), float("inf")]),
    ),
    min_size=1,
    max_size=300,
)


@settings(max_examples=60, deadline=None)
@given(values)
def test_hypothesis_kernel_equals_reference_and_in_unit_interval(xs):
    xs = np.array(xs, dtype=np.float64)
    ts = np.arange(len(xs), dtype=np.float64)
    fast = det.detector_run(ts, xs)
    slow = np.array(reference_run(ts, xs))
    assert np.all((fast >= 0.0) & (fast <= 1.0))
    assert np.allclose(fast, slow, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_scores_in_unit_interval(seed):
    ts, xs = series(seed, 3000)
    s = det.detector_run(ts, xs)
    assert np.all((s >= 0.0) & (s <= 1.0))
    # Extremes: huge and tiny values, a constant series.
    big = np.r_[np.ones(100), 1e300, -1e300, 1e-300, np.ones(50)]
    s = det.detector_run(np.arange(len(big), dtype=np.float64), big)
    assert np.all((s >= 0.0) & (s <= 1.0))
    flat = np.full(500, 7.0)
    assert np.all(det.detector_run(np.arange(500.0), flat) == 0.0)


@pytest.mark.parametrize("seed", range(3))
def test_online_future_never_changes_the_past(seed):
    ts, xs = series(seed)
    base = det.detector_run(ts, xs)
    rng = np.random.default_rng(100 + seed)
    for cut in (1, 60, 700, 1200):
        changed = xs.copy()
        changed[cut:] = rng.normal(0, 1000, len(xs) - cut)
        s = det.detector_run(ts, changed)
        assert np.array_equal(s[:cut], base[:cut])


def test_score_before_learn_a_reading_never_judges_itself():
    # After a long calm series, a breakout is judged against the past only: it scores at least
    # 0.75 (outside the range) even though learning it widens the range.
    xs = np.r_[10 + np.sin(np.arange(1000) / 10.0), 40.0]
    s = det.detector_run(np.arange(len(xs), dtype=np.float64), xs)
    assert s[-1] >= det.RARE_CAP
    assert s[-1] > 0.95  # long calm (the sine sets its last record ~600 readings before) and far outside


def test_nan_scores_zero_and_is_not_learned():
    ts, xs = series(2, 300)
    xs = xs[np.isfinite(xs)]
    ts = ts[: len(xs)]
    state = np.empty(det.STATE_SIZE)
    det.detector_init(state, 0)
    for t, x in zip(ts[:200], xs[:200]):
        det.detector_step(state, 0, t, x)
    before = state.copy()
    assert det.detector_step(state, 0, ts[200], np.nan) == 0.0
    assert det.detector_step(state, 0, ts[200], np.inf) == 0.0
    assert det.detector_step(state, 0, ts[200], -np.inf) == 0.0
    assert np.array_equal(state, before)
    # The same series with NaNs inserted gives the same scores at its real readings.
    with_nans = np.insert(xs, [50, 120, 120, 250], np.nan)
    s1 = det.detector_run(np.arange(len(xs), dtype=np.float64), xs)
    s2 = det.detector_run(np.arange(len(with_nans), dtype=np.float64), with_nans)
    assert np.array_equal(s2[np.isfinite(with_nans)], s1)
    assert np.all(s2[~np.isfinite(with_nans)] == 0.0)


def test_timestamps_do_not_change_scores():
    ts, xs = series(3)
    s1 = det.detector_run(ts, xs)
    s2 = det.detector_run(np.zeros(len(xs)), xs)  # every stamp repeated
    s3 = det.detector_run(ts[::-1].copy(), xs)  # clock running backwards
    assert np.array_equal(s1, s2) and np.array_equal(s1, s3)


def test_constant_state_size():
    assert det.STATE_SIZE * 8 <= 4096
    state = np.empty(det.STATE_SIZE)
    det.detector_init(state, 0)
    for n in (10, 10_000):
        xs = np.random.default_rng(n).normal(0, 1, n)
        for i, x in enumerate(xs):
            det.detector_step(state, 0, float(i), x)
        assert state.shape == (det.STATE_SIZE,)
        assert np.all(np.isfinite(state[det.S_HIST:]))


def test_alarm_said_once_then_quiet():
    # A level shift: one high score at the jump, not one per reading after it.
    rng = np.random.default_rng(5)
    xs = np.r_[rng.normal(0, 1, 1000), rng.normal(20, 1, 100)]
    s = det.detector_run(np.arange(len(xs), dtype=np.float64), xs)
    assert s[1000] > 0.9
    assert np.count_nonzero(s[1001:] >= det.RARE_CAP) <= 3


def test_warmup_is_silent():
    xs = np.random.default_rng(1).normal(0, 100, int(det.WARMUP))
    assert np.all(det.detector_run(np.arange(len(xs), dtype=np.float64), xs) == 0.0)
