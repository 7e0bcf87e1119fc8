"""Streaming anomaly detector behind ``anomaly(metric)``: numba kernels over a per-series state.

One detector, one configuration. Per (device, metric) series it keeps ``STATE_SIZE`` float64
slots (928 bytes) and, at each reading, first judges the reading on the past only, then learns
it ("score before you learn"). The reading is judged in five ways and the highest score wins:

- **the value outside every value this series has shown** (above its highest or below its
  lowest) by at least ``OUTSIDE_MARGIN`` of the range, and while the series is young by at least
  ``MARGIN_READINGS`` / readings learned of it: ``RARE_CAP`` to 1. How far above ``RARE_CAP``
  grows with how far outside the value is (in units of the series' own range) and with how long
  the range had held: a series breaking out after a long calm scores near 1. A record by less
  than the margin (a trend creeping upwards, noise touching its old extreme, a range still being
  learned) is learned, not reported; a record by less than ``NOISE_SIGMAS`` standard deviations
  of the reading-to-reading noise scores at most ``NOISE_CAP``.
- **the recent level outside every level shown**: the same rule applied to a smoothed copy of
  the series (an exponential moving average over ~``1 / SMOOTH`` readings). It catches what no
  single reading shows: a level that stays low or high for too long, spikes growing denser.
- **the recent level outside every level this hour of the day has shown** (``DAY_BINS`` slots of
  the day by the reading's timestamp), by at least ``DAY_MARGIN`` of the values' range, once the
  series has ``DAY_HISTORY`` seconds of history (forward steps of the clock, each counted for at
  most ``GAP_CAP``): the same break-out score. A day whose usual afternoon rise does not come.
- **a stuck sensor**: a run of identical readings that reaches ``RUN_MIN`` and is longer than
  every run before it, judged once (the same break-out score, against the longest earlier run).
- **a value within the range but in a rarely visited part of it**: 0 to ``RARE_CAP``, from a
  histogram of recent values (``BINS`` bins over [lowest, highest], fading with a memory of
  ~``1 / (1 - DECAY)`` readings). A bin holding a share p of the recent readings (with a small
  prior ``PRIOR`` per bin, so no share is 0) gives a surprise ``s = -ln(p * BINS)`` (0 for a
  value as common as a uniform spread) and the score ``RARE_CAP * (1 - exp(-s / RARITY_SCALE))``.
  A value in a bin holding less than ``EMPTY_BELOW`` of a reading (not visited within the
  histogram's memory), once the histogram holds ``MATURE`` of its memory, scores ``EMPTY_SCORE``
  instead: one level between that scale's top and ``RARE_CAP``.

Then **an alarm is said once**: a score is reported only when it is higher than every score of
the last ~``REST_BLOCKS * REST_BLOCK`` readings; otherwise 0. Nothing is reported until
``WARMUP`` readings have been learned (the smoothed view: ``WARMUP + SMOOTH_WARMUP``). A NaN or
infinite value scores 0 and is not learned.

The detector counts readings, not seconds, except in the hour-of-day view: there a timestamp
names the hour of the day and its forward steps make the history; irregular spacing, repeated
stamps and clocks going backwards change nothing else.

The state is ``STATE_SIZE`` slots of a plain float64 array from offset ``row``, so the rule
engine's kernels keep one per series inside their own state array and call ``detector_step``
from their own ``@njit`` code. Nothing here allocates: the engine's kernels are compiled
without numba's reference counting (``_nrt=False``). The tunable constants reach the core as
arguments (``_step``), so bench/anomaly_search.py can score other settings with this very code;
``detector_step`` passes the module's constants. edge/engine/detectors_reference.py is the same
detector in plain Python; tests hold the two together step by step. docs/anomaly.md says what
the score means for a rule and how it was measured (bench/bench_anomaly.py, NAB).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from edge.engine.detector_state import (  # noqa: F401 (the settings and layout, re-exported)
    WARMUP, RARE_CAP, OUTSIDE_MARGIN, OUTSIDE_DISTANCE, OUTSIDE_CALM, RARITY_SCALE, DECAY, PRIOR, SMOOTH,
    SMOOTH_WARMUP, RUN_MIN, EMPTY_SCORE, EMPTY_BELOW, MATURE, BINS, REST_BLOCK, REST_BLOCKS, S_COUNT, S_LOW, S_HIGH, S_WEIGHT, S_LAST_GROWTH,
    S_SMOOTH, S_SMOOTH_LOW, S_SMOOTH_HIGH, S_SMOOTH_GROWTH, S_PREVIOUS, S_RUN, S_RUN_LONGEST, S_RUN_GROWTH,
    S_BLOCK_MAX, S_BLOCK_FILL, S_BLOCK_NEXT, S_BLOCKS, S_HIST, STATE_SIZE, CONFIG_NAMES, CONFIG,
    DAY_MARGIN, DAY_HISTORY, MARGIN_READINGS, NOISE_SIGMAS, NOISE_CAP, S_STEP, S_STEP_WEIGHT, DAY_BINS, DAY_SECONDS, GAP_CAP, S_CLOCK, S_ELAPSED, S_DAY_LOW, S_DAY_HIGH, S_DAY_GROWTH,
)

SIGMA_PER_STEP = math.sqrt(math.pi) / 2.0  # Gaussian noise: E|x - previous x| = 2 sigma / sqrt(pi)

# The helpers are inlined into the engine's kernels, which are compiled without NRT.
inlined = njit(cache=True, _nrt=False, inline="always")


@inlined
def detector_init(state, row):
    """Reset the series whose STATE_SIZE slots start at ``row``."""
    for k in range(STATE_SIZE):
        state[row + k] = 0.0
    state[row + S_LOW] = np.inf
    state[row + S_HIGH] = -np.inf
    state[row + S_SMOOTH_LOW] = np.inf
    state[row + S_SMOOTH_HIGH] = -np.inf
    state[row + S_CLOCK] = np.nan
    for k in range(DAY_BINS):
        state[row + S_DAY_LOW + k] = np.inf
        state[row + S_DAY_HIGH + k] = -np.inf


@inlined
def _hour(t):
    """The slot of the day of timestamp t (seconds since the epoch, UTC), or -1 for a timestamp
    with no usable time of day (NaN, infinite, before 1970 or after 5138)."""
    if not (t >= 0.0 and t < 1e11):
        return -1
    return int(t % DAY_SECONDS) * DAY_BINS // int(DAY_SECONDS)


@inlined
def _bin(x, low, high):
    span = high - low
    if not span > 0.0:
        return 0
    u = (x - low) / span * BINS
    if not u > 0.0:  # also NaN (an overflowing range)
        return 0
    if u >= BINS:
        return BINS - 1
    return int(u)


@inlined
def _breakout_score(calm, distance, rare_cap, outside_distance, outside_calm):
    """rare_cap to 1: higher the longer the calm (readings since the range last grew) and the
    farther outside (in ranges)."""
    return rare_cap + (1.0 - rare_cap) * (1.0 - math.exp(-calm / outside_calm)) * (
        1.0 - math.exp(-outside_distance * distance)
    )


@inlined
def _outside(v, low, high, calm, rare_cap, outside_margin, outside_distance, outside_calm):
    """0 if v lies within [low, high] or less than outside_margin (in ranges) outside it, else the
    break-out score in [rare_cap, 1]."""
    span = high - low
    if span <= 0.0:
        span = abs(high) * 0.01 + 1e-9
    u = (v - low) / span
    if u >= 0.0 and u <= 1.0:
        return 0.0
    distance = -u if u < 0.0 else u - 1.0
    if not distance >= 0.0:  # NaN: an overflowing range; count it as far outside
        distance = math.inf
    if distance < outside_margin:
        return 0.0
    return _breakout_score(calm, distance, rare_cap, outside_distance, outside_calm)


@inlined
def _regrid(state, row, low, high, new_low, new_high):
    """The range grew to [new_low, new_high]: move each bin's weight to where its centre falls
    in the new range, in place. Bins only move towards the side that did not grow, so the
    walk goes from that side; each target gets the sum of its sources in ascending order."""
    hist = row + S_HIST
    step = 1 if new_high > high else -1  # grew upwards: bins move down (target <= source)
    k = 0 if step == 1 else BINS - 1
    while 0 <= k < BINS:
        target = _bin(low + (k + 0.5) * (high - low) / BINS, new_low, new_high)
        end = k
        while 0 <= end + step < BINS and _bin(low + (end + step + 0.5) * (high - low) / BINS, new_low,
                                              new_high) == target:
            end += step
        first, last = min(k, end), max(k, end)
        total = 0.0
        for j in range(first, last + 1):
            total += state[hist + j]
            state[hist + j] = 0.0
        state[hist + target] = total
        k = end + step


@inlined
def _judge(state, row, x, hour, warmup, rare_cap, outside_margin, outside_distance, outside_calm, rarity_scale, decay,
           prior, smooth_warmup, run_min, empty_score, empty_below, mature, day_margin, day_history, margin_readings,
           noise_sigmas):
    """The raw score of x (and of the smoothed value, already including x) against the past."""
    count = state[row + S_COUNT]
    if count < warmup:
        return 0.0
    low = state[row + S_LOW]
    high = state[row + S_HIGH]
    margin = max(outside_margin, margin_readings / count)  # the value's and the level's
    score = _outside(x, low, high, count - state[row + S_LAST_GROWTH], rare_cap, margin, outside_distance,
                     outside_calm)
    if score > NOISE_CAP and state[row + S_STEP_WEIGHT] > 0.0:
        # A record within NOISE_SIGMAS standard deviations of the reading-to-reading noise beyond
        # the old extreme is what a noisy sensor's tail does now and then: never above NOISE_CAP.
        beyond = x - high if x > high else low - x
        if beyond < noise_sigmas * SIGMA_PER_STEP * state[row + S_STEP] / state[row + S_STEP_WEIGHT]:
            score = NOISE_CAP
    if score == 0.0:
        here = state[row + S_HIST + _bin(x, low, high)]
        share = (here + prior) / (state[row + S_WEIGHT] + prior * BINS)
        surprise = -math.log(share * BINS)
        if surprise > 0.0:
            score = rare_cap * (1.0 - math.exp(-surprise / rarity_scale))
        if here < empty_below and state[row + S_WEIGHT] >= mature / (1.0 - decay) and score < empty_score:
            score = empty_score
    if count >= warmup + smooth_warmup:
        level = _outside(state[row + S_SMOOTH], state[row + S_SMOOTH_LOW], state[row + S_SMOOTH_HIGH],
                         count - state[row + S_SMOOTH_GROWTH], rare_cap, margin, outside_distance,
                         outside_calm)
        score = max(score, level)
        if hour >= 0 and state[row + S_ELAPSED] >= day_history:
            score = max(score, _off_the_hour(state, row, hour, rare_cap, outside_distance, outside_calm, day_margin))
    # A run of identical readings is judged once: when it first gets longer than every run before.
    run = state[row + S_RUN] + 1.0 if x == state[row + S_PREVIOUS] else 0.0
    if run == max(run_min, state[row + S_RUN_LONGEST] + 1.0):
        stuck = _outside(run, 0.0, state[row + S_RUN_LONGEST], count - state[row + S_RUN_GROWTH], rare_cap,
                         0.0, outside_distance, outside_calm)
        score = max(score, stuck)
    return score


@inlined
def _off_the_hour(state, row, hour, rare_cap, outside_distance, outside_calm, day_margin):
    """The break-out score of the smoothed level against the levels this hour of the day has
    shown, with the distance in ranges of the values (not of the hour's own range)."""
    low = state[row + S_DAY_LOW + hour]
    high = state[row + S_DAY_HIGH + hour]
    if not low <= high:  # this hour has no level yet
        return 0.0
    level = state[row + S_SMOOTH]
    span = state[row + S_HIGH] - state[row + S_LOW]
    if not span > 0.0:
        return 0.0
    if level > high:
        distance = (level - high) / span
    elif level < low:
        distance = (low - level) / span
    else:
        return 0.0
    if not distance >= day_margin:  # also NaN (an overflowing range)
        return 0.0
    calm = state[row + S_COUNT] - state[row + S_DAY_GROWTH + hour]
    return _breakout_score(calm, distance, rare_cap, outside_distance, outside_calm)


@inlined
def _learn_clock(state, row, t):
    """Count the forward step of the clock to t into the history (at most GAP_CAP)."""
    if not math.isfinite(t):
        return
    gap = t - state[row + S_CLOCK]  # NaN before the first usable timestamp
    if gap > 0.0:
        state[row + S_ELAPSED] += min(gap, GAP_CAP)
    state[row + S_CLOCK] = t


@inlined
def _learn(state, row, x, hour, decay, smooth_warmup):
    count = state[row + S_COUNT]
    low = state[row + S_LOW]
    high = state[row + S_HIGH]
    if x < low or x > high:
        new_low = min(low, x)
        new_high = max(high, x)
        if count > 0.0:
            _regrid(state, row, low, high, new_low, new_high)
        state[row + S_LAST_GROWTH] = count
        state[row + S_LOW] = new_low
        state[row + S_HIGH] = new_high
        low, high = new_low, new_high
    for k in range(BINS):
        state[row + S_HIST + k] *= decay
    state[row + S_HIST + _bin(x, low, high)] += 1.0
    state[row + S_WEIGHT] = state[row + S_WEIGHT] * decay + 1.0
    if count >= smooth_warmup:
        level = state[row + S_SMOOTH]
        if level < state[row + S_SMOOTH_LOW] or level > state[row + S_SMOOTH_HIGH]:
            state[row + S_SMOOTH_GROWTH] = count
            state[row + S_SMOOTH_LOW] = min(state[row + S_SMOOTH_LOW], level)
            state[row + S_SMOOTH_HIGH] = max(state[row + S_SMOOTH_HIGH], level)
        if hour >= 0:
            day = row + hour
            if level < state[day + S_DAY_LOW] or level > state[day + S_DAY_HIGH]:
                state[day + S_DAY_GROWTH] = count
                state[day + S_DAY_LOW] = min(state[day + S_DAY_LOW], level)
                state[day + S_DAY_HIGH] = max(state[day + S_DAY_HIGH], level)
    if count > 0.0:
        step = abs(x - state[row + S_PREVIOUS])
        if math.isfinite(step):
            state[row + S_STEP] = state[row + S_STEP] * decay + step
            state[row + S_STEP_WEIGHT] = state[row + S_STEP_WEIGHT] * decay + 1.0
    if count > 0.0 and x == state[row + S_PREVIOUS]:
        state[row + S_RUN] += 1.0
    else:  # the run ended: remember it if it was the longest
        if state[row + S_RUN] > state[row + S_RUN_LONGEST]:
            state[row + S_RUN_LONGEST] = state[row + S_RUN]
            state[row + S_RUN_GROWTH] = count
        state[row + S_RUN] = 0.0
    state[row + S_PREVIOUS] = x
    state[row + S_COUNT] = count + 1.0


@inlined
def _say_once(state, row, score):
    """score if it beats every score of the last REST_BLOCKS full blocks and the current one,
    else 0; then remember it."""
    recent = state[row + S_BLOCK_MAX]
    for k in range(REST_BLOCKS):
        if state[row + S_BLOCKS + k] > recent:
            recent = state[row + S_BLOCKS + k]
    out = score if score > recent else 0.0
    if score > state[row + S_BLOCK_MAX]:
        state[row + S_BLOCK_MAX] = score
    state[row + S_BLOCK_FILL] += 1.0
    if state[row + S_BLOCK_FILL] >= REST_BLOCK:
        slot = int(state[row + S_BLOCK_NEXT])
        state[row + S_BLOCKS + slot] = state[row + S_BLOCK_MAX]
        state[row + S_BLOCK_NEXT] = (slot + 1) % REST_BLOCKS
        state[row + S_BLOCK_MAX] = 0.0
        state[row + S_BLOCK_FILL] = 0.0
    return out


@inlined
def _step(state, row, t, x, warmup, rare_cap, outside_margin, outside_distance, outside_calm, rarity_scale, decay,
          prior, smooth, smooth_warmup, run_min, empty_score, empty_below, mature, day_margin, day_history,
          margin_readings, noise_sigmas):
    """detector_step with the tunable constants as arguments."""
    if not math.isfinite(x):
        return 0.0
    if state[row + S_COUNT] == 0.0:
        state[row + S_SMOOTH] = x
    else:
        level = state[row + S_SMOOTH] + smooth * (x - state[row + S_SMOOTH])
        state[row + S_SMOOTH] = level if math.isfinite(level) else x  # overflow: restart from x
    hour = _hour(t)
    score = _judge(state, row, x, hour, warmup, rare_cap, outside_margin, outside_distance, outside_calm, rarity_scale,
                   decay, prior, smooth_warmup, run_min, empty_score, empty_below, mature, day_margin, day_history,
                   margin_readings, noise_sigmas)
    _learn(state, row, x, hour, decay, smooth_warmup)
    _learn_clock(state, row, t)
    return _say_once(state, row, score)


@njit(cache=True, _nrt=False)  # called, not inlined: the engine's kernels compile in seconds, not a minute
def detector_step(state, row, t, x):
    """Score x (at device time t, seconds) on the past only, in [0, 1]; then learn it.
    The series' state is state[row:row + STATE_SIZE]. A NaN or infinite x scores 0 and
    leaves the state unchanged."""
    return _step(state, row, t, x, WARMUP, RARE_CAP, OUTSIDE_MARGIN, OUTSIDE_DISTANCE, OUTSIDE_CALM, RARITY_SCALE, DECAY,
                 PRIOR, SMOOTH, SMOOTH_WARMUP, RUN_MIN, EMPTY_SCORE, EMPTY_BELOW, MATURE, DAY_MARGIN, DAY_HISTORY,
                 MARGIN_READINGS, NOISE_SIGMAS)


@njit(cache=True)
def detector_run(ts, xs):
    """Scores of a whole series from a fresh state (what the benchmark runs)."""
    state = np.empty(STATE_SIZE)
    detector_init(state, 0)
    out = np.empty(len(xs))
    for i in range(len(xs)):
        out[i] = detector_step(state, 0, ts[i], xs[i])
    return out


@njit(cache=True)
def detector_run_config(ts, xs, config):
    """Scores of a whole series with other values of the tunable constants (``config`` in the
    order of CONFIG_NAMES): for the benchmark's search and generality check, not for rules."""
    state = np.empty(STATE_SIZE)
    detector_init(state, 0)
    out = np.empty(len(xs))
    for i in range(len(xs)):
        out[i] = _step(state, 0, ts[i], xs[i], config[0], config[1], config[2], config[3], config[4], config[5],
                       config[6], config[7], config[8], config[9], config[10], config[11], config[12], config[13],
                       config[14], config[15], config[16], config[17])
    return out
