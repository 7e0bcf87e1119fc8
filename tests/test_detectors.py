"""The anomaly detector (edge/engine/detectors.py): the numba kernel against the plain-Python
reference at every reading, scores in [0, 1], strictly online, constant state, and each of the
views it judges (value break-out with its margin, smoothed level, rarity, stuck sensor, said once)."""

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
    for seed in (1, 3):
        ts, xs = series(seed, 600)
        state = np.empty(det.STATE_SIZE)
        det.detector_init(state, 0)
        ref = ReferenceDetector()
        for t, x in zip(ts, xs):
            assert math.isclose(det.detector_step(state, 0, t, x), ref.step(t, x), rel_tol=1e-9, abs_tol=1e-12)
            assert state[det.S_LOW] == ref.range.low and state[det.S_HIGH] == ref.range.high
            assert state[det.S_LAST_GROWTH] == ref.range.last_growth
            assert state[det.S_COUNT] == ref.count
            assert np.allclose(state[det.S_HIST:det.S_HIST + det.BINS], ref.hist, rtol=1e-12, atol=0)
            assert math.isclose(state[det.S_SMOOTH], ref.level, rel_tol=1e-12)
            assert state[det.S_SMOOTH_LOW] == ref.level_range.low
            assert state[det.S_SMOOTH_HIGH] == ref.level_range.high
            assert state[det.S_RUN] == ref.run and state[det.S_RUN_LONGEST] == ref.longest_run
            assert state[det.S_RUN_GROWTH] == ref.run_growth


def test_config_core_is_the_shipped_detector():
    # bench/anomaly_search.py scores settings through detector_run_config: at the shipped
    # constants it must be detector_run exactly.
    ts, xs = series(2, 2000)
    assert det.CONFIG == tuple(getattr(det, name) for name in det.CONFIG_NAMES)
    assert np.array_equal(det.detector_run(ts, xs), det.detector_run_config(ts, xs, np.array(det.CONFIG)))


values = st.lists(
    st.one_of(
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
        st.sampled_from([0.0, 1.0, 1.0, 1.0, float("nan"), float("inf")]),
        st.floats(allow_nan=True, allow_infinity=True),  # up to +-1.8e308: ranges that overflow
    ),
    min_size=1,
    max_size=300,
)


@settings(max_examples=100, deadline=None)
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
    # RARE_CAP (outside the range) even though learning it widens the range.
    xs = np.r_[10 + np.sin(np.arange(1000) / 10.0), 40.0]
    s = det.detector_run(np.arange(len(xs), dtype=np.float64), xs)
    assert s[-1] >= det.RARE_CAP
    # Far outside (30 ranges) after a calm of hundreds of readings: the upper half of the band.
    assert s[-1] > det.RARE_CAP + 0.5 * (1 - det.RARE_CAP)


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


def daily(days: int, seed: int = 0, every: float = 300.0) -> tuple[np.ndarray, np.ndarray]:
    """A level that rises to a plateau every afternoon (12:00-18:00 UTC), with noise."""
    rng = np.random.default_rng(seed)
    ts = 1.4e9 - 1.4e9 % 86400 + np.arange(0.0, days * 86400.0, every)
    hour = (ts % 86400) // 3600
    xs = np.where((hour >= 12) & (hour < 18), 80.0, 20.0) + rng.normal(0, 3, len(ts))
    return ts, xs


def test_timestamps_count_only_as_a_week_of_history_and_an_hour_of_the_day():
    ts, xs = series(3)  # under three days of readings: the hour-of-day view is not yet on
    s1 = det.detector_run(ts, xs)
    assert np.array_equal(s1, det.detector_run(np.zeros(len(xs)), xs))  # every stamp repeated
    assert np.array_equal(s1, det.detector_run(ts[::-1].copy(), xs))  # clock running backwards
    # Three weeks of a daily rhythm whose afternoon rise fails on the last day: only the
    # hour-of-day view sees it (every value and level is one seen before) ...
    ts, xs = daily(22)
    last_day = ts >= ts[-1] - 86400 + 300
    xs[last_day] = 20.0 + np.random.default_rng(1).normal(0, 3, last_day.sum())
    s = det.detector_run(ts, xs)
    assert s[last_day].max() >= det.RARE_CAP
    assert s[~last_day][ts[~last_day] >= ts[0] + 8 * 86400].max() < det.RARE_CAP  # the ordinary weeks are quiet
    # ... and a stuck or backward clock never gives it the week of history it needs; a clock
    # jumping a year ahead counts for one day, not a year.
    assert det.detector_run(np.full(len(xs), ts[0]), xs)[last_day].max() < det.RARE_CAP
    assert det.detector_run(ts[::-1].copy(), xs)[last_day].max() < det.RARE_CAP
    jumped = ts[:3000].copy()
    jumped[1000:] += 365 * 86400.0
    state = np.empty(det.STATE_SIZE)
    det.detector_init(state, 0)
    for t, x in zip(jumped, xs[:3000]):
        det.detector_step(state, 0, t, x)
    assert state[det.S_ELAPSED] == pytest.approx((3000 - 2) * 300.0 + 86400.0)


@pytest.mark.parametrize("seed", range(3))
def test_kernel_matches_reference_with_the_hour_of_day_view_on(seed):
    ts, xs = daily(10, seed, every=600.0)
    rng = np.random.default_rng(seed)
    xs[-300:] += rng.normal(40, 5, 300) * (seed - 1)  # afternoons that fail, days too high, or neither
    ts[len(ts) // 2] = ts[len(ts) // 2 - 1] - 7200.0  # a clock stepping back
    ts[len(ts) // 3] = np.nan  # and a reading with no usable time
    xs[rng.integers(0, len(xs), 10)] = np.nan
    fast = det.detector_run(ts, xs)
    slow = reference_run(ts, xs)
    assert np.allclose(fast, slow, rtol=1e-9, atol=1e-12)
    state = np.empty(det.STATE_SIZE)
    det.detector_init(state, 0)
    ref = ReferenceDetector()
    for t, x in zip(ts, xs):
        det.detector_step(state, 0, t, x)
        ref.step(t, x)
    assert state[det.S_ELAPSED] == ref.elapsed >= det.DAY_HISTORY
    assert list(state[det.S_DAY_LOW:det.S_DAY_LOW + det.DAY_BINS]) == [h.low for h in ref.hours]
    assert list(state[det.S_DAY_HIGH:det.S_DAY_HIGH + det.DAY_BINS]) == [h.high for h in ref.hours]
    assert list(state[det.S_DAY_GROWTH:det.S_DAY_GROWTH + det.DAY_BINS]) == [h.last_growth for h in ref.hours]
    assert math.isclose(state[det.S_STEP], ref.step_sum, rel_tol=1e-12)
    assert math.isclose(state[det.S_STEP_WEIGHT], ref.step_weight, rel_tol=1e-12)
    if seed != 1:
        assert fast[-300:].max() >= det.RARE_CAP


def test_constant_state_size():
    assert det.STATE_SIZE * 8 <= 4096
    state = np.empty(det.STATE_SIZE)
    det.detector_init(state, 0)
    for n in (10, 10_000):
        xs = np.random.default_rng(n).normal(0, 1, n)
        for i, x in enumerate(xs):
            det.detector_step(state, 0, float(i), x)
        assert state.shape == (det.STATE_SIZE,)
        assert np.all(np.isfinite(state[det.S_HIST:det.S_HIST + det.BINS]))


def test_alarm_said_once_then_quiet():
    # A level shift: one high score at the jump, not one per reading after it.
    rng = np.random.default_rng(5)
    xs = np.r_[rng.normal(0, 1, 1000), rng.normal(20, 1, 100)]
    s = det.detector_run(np.arange(len(xs), dtype=np.float64), xs)
    assert s[1000] > det.RARE_CAP + 0.5 * (1 - det.RARE_CAP)
    assert np.count_nonzero(s[1001:] >= det.RARE_CAP) <= 3


def test_warmup_is_silent():
    xs = np.random.default_rng(1).normal(0, 100, int(det.WARMUP))
    assert np.all(det.detector_run(np.arange(len(xs), dtype=np.float64), xs) == 0.0)


def run(xs):
    xs = np.asarray(xs, dtype=np.float64)
    return det.detector_run(np.arange(len(xs), dtype=np.float64), xs)


def test_new_record_by_less_than_the_margin_is_learned_not_reported():
    # A steady ramp sets a new record at every reading, each by 1/count of the range: once that
    # is below OUTSIDE_MARGIN nothing is reported (a trend is not a surprise) ...
    s = run(np.arange(3000.0))
    quiet_from = int(det.WARMUP + det.SMOOTH_WARMUP + 1 / det.OUTSIDE_MARGIN) + 10
    assert np.all(s[quiet_from:] == 0.0)
    # ... while a step of a few per cent beyond the range after a calm is, once the series is old
    # enough that MARGIN_READINGS / readings is below that (a young range is still being learned).
    rng = np.random.default_rng(3)
    i = np.arange(10_000)
    old = np.r_[50 + 50 * np.sin(i / 100.0) + rng.normal(0, 0.5, len(i)), 0.0]
    top, span = old[:-1].max(), np.ptp(old[:-1])
    assert det.MARGIN_READINGS / 10_000 < det.OUTSIDE_MARGIN
    old[-1] = top + 0.08 * span
    assert run(old)[-1] > det.RARE_CAP
    old[-1] = top + span * det.OUTSIDE_MARGIN / 2  # half a margin: learned, and not a break-out
    assert run(old)[-1] < det.RARE_CAP
    young = old[-1001:].copy()  # 1,000 readings: the margin is MARGIN_READINGS / 1,000 of the range
    top, span = young[:-1].max(), np.ptp(young[:-1])
    young[-1] = top + span * det.MARGIN_READINGS / 1000 / 2
    assert run(young)[-1] < det.RARE_CAP
    young[-1] = top + span * det.MARGIN_READINGS / 1000 * 2
    assert run(young)[-1] > det.RARE_CAP


def test_a_noisy_series_record_within_three_sigma_stays_below_0_8():
    # Gaussian noise sets small records for ever (about ln n of them in n readings): a record by
    # one sigma is "never shown" but the tail, NOISE_CAP at most; well beyond NOISE_SIGMAS sigma
    # it scores above 0.8 like any break-out after a calm.
    rng = np.random.default_rng(8)
    xs = np.r_[rng.normal(50, 10, 10_000), 0.0]
    top = xs[:-1].max()
    xs[-1] = top + 10.0
    assert det.RARE_CAP <= run(xs)[-1] <= det.NOISE_CAP < 0.8
    xs[-1] = top + 2 * det.NOISE_SIGMAS * 10.0
    assert run(xs)[-1] > 0.8
    # Without the cap the one-sigma record would have scored above 0.8.
    config = np.array(det.CONFIG)
    config[det.CONFIG_NAMES.index("NOISE_SIGMAS")] = 0.0
    xs[-1] = top + 10.0
    assert det.detector_run_config(np.arange(len(xs), dtype=np.float64), xs, config)[-1] > 0.8


def test_smoothed_level_outside_its_range_with_every_value_inside():
    # A noisy square wave (0 / 10, ten readings each) that stays low for 100 readings: no value
    # leaves the range and none is rare, but the smoothed level falls below any level seen.
    rng = np.random.default_rng(0)
    i = np.arange(2000)
    xs = np.where((i // 10) % 2 == 0, 10.0, 0.0) + rng.normal(0, 1, 2000)
    xs[1500:1600] = rng.normal(0, 1, 100)
    assert xs[:1500].min() < xs[1500:1600].min() and xs[1500:1600].max() < xs[:1500].max()
    s = run(xs)
    assert s[1500:1600].max() >= det.RARE_CAP
    assert s[1400:1500].max() < det.RARE_CAP  # the ordinary rhythm before it is quiet
    state = np.empty(det.STATE_SIZE)
    det.detector_init(state, 0)
    for k in range(1560):
        det.detector_step(state, 0, float(k), xs[k])
    assert state[det.S_SMOOTH] < state[det.S_SMOOTH_LOW] + 1.0  # the level it reached is a new low


def test_stuck_sensor_scores_once_high_after_a_calm():
    rng = np.random.default_rng(0)
    xs = np.r_[rng.normal(0, 1, 1000), np.full(40, 0.123), rng.normal(0, 1, 200)]
    s = run(xs)
    first = 1000 + int(det.RUN_MIN)  # the RUN_MIN-th reading equal to the one before it
    assert s[first] > 0.9
    assert np.all(s[1000:first] < det.RARE_CAP) and np.all(s[first + 1:1040] == 0.0)
    # The same stuck stretch again is no longer news: the longest run is now 39.
    again = np.r_[xs, np.full(30, 0.5)]
    assert run(again)[-30:].max() < det.RARE_CAP


def test_rarity_within_the_range_stays_below_rare_cap():
    # Two clusters; a value between them (never seen there) is rare but inside the range: its
    # raw score (before "said once"; the reference's judge, which the kernel equals) is below
    # RARE_CAP and well above the score of a value in a cluster.
    rng = np.random.default_rng(4)
    xs = np.where(rng.random(1500) < 0.5, rng.normal(0, 0.5, 1500), rng.normal(100, 0.5, 1500))
    ref = ReferenceDetector()
    for k, x in enumerate(xs):
        ref.step(float(k), x)
    between, common = ref.judge(50.0), ref.judge(float(xs[-1]))
    assert 0.8 * det.RARE_CAP < between < det.RARE_CAP
    assert common < 0.2 * det.RARE_CAP


def test_a_value_in_a_part_of_the_range_unvisited_within_the_memory_scores_the_empty_level():
    # Two clusters, 0-10 and 90-100, for 3,000 readings: the middle of the range holds nothing.
    # Before the histogram holds MATURE of its memory a value there is only "rare"; after, it
    # scores EMPTY_SCORE, between the rarity scale's top and RARE_CAP, and kernel and reference agree.
    rng = np.random.default_rng(5)
    xs = np.where(rng.random(3000) < 0.5, rng.uniform(0, 10, 3000), rng.uniform(90, 100, 3000))
    memory = 1 / (1 - det.DECAY)
    young = ReferenceDetector()
    for t, x in enumerate(xs[:int(det.MATURE * memory * 0.6)]):  # its weight still below MATURE of the memory
        young.step(float(t), x)
    assert 0 < young.judge(50.0) < det.EMPTY_SCORE
    late = run(np.r_[xs, 50.0])
    assert late[-1] == det.EMPTY_SCORE < det.RARE_CAP
    assert reference_run(np.arange(3001.0), np.r_[xs, 50.0])[-1] == det.EMPTY_SCORE
    assert run(np.r_[xs, 5.0])[-1] < det.EMPTY_SCORE  # a visited part is not
