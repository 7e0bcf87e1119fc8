"""Streaming anomaly detector behind ``anomaly(metric)``: numba kernels over a per-series state.

One detector, one configuration. Per (device, metric) series it keeps ``STATE_SIZE`` float64
slots (256 bytes) and, at each reading, first judges the reading on the past only, then learns
it ("score before you learn"). The score is in [0, 1]:

- **0.75 to 1: a value outside every value this series has shown** (above its highest or below
  its lowest). How far above 0.75 grows with how far outside the value is, in units of the
  series' own range, and with how long the range had held: a series breaking out after a long
  calm scores near 1; a series that keeps setting new records (a trend) stays near 0.75.
- **0 to 0.75: how rare the value is within that range**, from a histogram of the recent
  values (``BINS`` bins over [lowest, highest], decaying with a memory of ~``1 / (1 - DECAY)``
  readings). A value in a bin holding a share p of the recent readings scores
  ``-ln(p * BINS) / RARITY_SCALE`` (so a value as common as a uniform spread scores 0).
- **An alarm is said once.** A score is reported only when it is higher than every score of
  the last ~``REST_BLOCKS * REST_BLOCK`` readings; otherwise 0. A field engineer gets one high
  score when something new happens, not one per reading while it lasts.
- **Warm-up:** nothing is reported until ``WARMUP`` readings have been learned.
- A NaN or infinite value scores 0 and is not learned.

The detector counts readings, not seconds: timestamps are accepted (the engine passes them)
but neither irregular spacing, repeated stamps nor clocks going backwards change a score.

The state is ``STATE_SIZE`` slots of a plain float64 array from offset ``row``, so the rule
engine's kernels keep one per series inside their own state array and call ``detector_step``
from their own ``@njit`` code. Nothing here allocates: the engine's kernels are compiled
without numba's reference counting (``_nrt=False``). edge/engine/detectors_reference.py is the
same detector in plain Python; tests hold the two together step by step. docs/anomaly.md says
what the score means for a rule and how it was measured (bench/bench_anomaly.py, NAB).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# The one configuration (chosen on the NAB corpus as a whole; see docs/anomaly.md).
BINS = 16  # histogram bins over [lowest, highest]
DECAY = 0.9999  # per reading: the histogram's memory is ~10,000 readings
WARMUP = 50.0  # readings learned before any score
RARITY_SCALE = 8.0  # -ln(p * BINS) / RARITY_SCALE, capped at RARE_CAP
RARE_CAP = 0.75  # the highest score a value within the range can get
OUTSIDE_DISTANCE = 2.0  # per range: 1 - exp(-OUTSIDE_DISTANCE * distance outside)
OUTSIDE_CALM = 200.0  # readings: 1 - exp(-readings since the range last grew / OUTSIDE_CALM)
REST_BLOCK = 25  # readings per block of the "said once" memory
REST_BLOCKS = 8  # blocks remembered: a score must beat the last 200-225 readings' scores

# State layout (float64 slots).
S_COUNT = 0  # readings learned
S_LOW = 1  # lowest value learned (+inf before the first)
S_HIGH = 2  # highest value learned (-inf before the first)
S_WEIGHT = 3  # total (decayed) weight in the histogram
S_LAST_GROWTH = 4  # S_COUNT when the range last grew
S_BLOCK_MAX = 5  # highest score in the current rest block
S_BLOCK_FILL = 6  # readings in the current rest block
S_BLOCK_NEXT = 7  # which of the REST_BLOCKS slots the current block goes to when full
S_BLOCKS = 8  # REST_BLOCKS slots: highest score of each of the last full blocks
S_HIST = S_BLOCKS + REST_BLOCKS  # BINS slots: histogram weights
STATE_SIZE = S_HIST + BINS

assert STATE_SIZE * 8 <= 4096


# The helpers are inlined into the engine's kernels, which are compiled without NRT.
inlined = njit(cache=True, _nrt=False, inline="always")


@inlined
def detector_init(state, row):
    """Reset the series whose STATE_SIZE slots start at ``row``."""
    for k in range(STATE_SIZE):
        state[row + k] = 0.0
    state[row + S_LOW] = np.inf
    state[row + S_HIGH] = -np.inf


@inlined
def _bin(x, low, high):
    span = high - low
    if span <= 0.0:
        return 0
    k = int((x - low) / span * BINS)
    return min(BINS - 1, max(0, k))


@inlined
def _judge(state, row, x):
    """The raw score of x against the past (before the "said once" rule)."""
    if state[row + S_COUNT] < WARMUP:
        return 0.0
    low = state[row + S_LOW]
    high = state[row + S_HIGH]
    span = high - low
    if span <= 0.0:
        span = abs(high) * 0.01 + 1e-9
    u = (x - low) / span
    if u < 0.0 or u > 1.0:
        distance = -u if u < 0.0 else u - 1.0
        calm = state[row + S_COUNT] - state[row + S_LAST_GROWTH]
        return RARE_CAP + (1.0 - RARE_CAP) * (1.0 - math.exp(-calm / OUTSIDE_CALM)) * (
            1.0 - math.exp(-OUTSIDE_DISTANCE * distance)
        )
    share = state[row + S_HIST + _bin(x, low, high)] / state[row + S_WEIGHT]
    if share <= 0.0:
        return RARE_CAP
    return max(0.0, min(RARE_CAP, -math.log(share * BINS) / RARITY_SCALE))


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
def _learn(state, row, x):
    low = state[row + S_LOW]
    high = state[row + S_HIGH]
    if x < low or x > high:
        new_low = min(low, x)
        new_high = max(high, x)
        if state[row + S_COUNT] > 0.0:
            _regrid(state, row, low, high, new_low, new_high)
        state[row + S_LAST_GROWTH] = state[row + S_COUNT]
        state[row + S_LOW] = new_low
        state[row + S_HIGH] = new_high
        low, high = new_low, new_high
    for k in range(BINS):
        state[row + S_HIST + k] *= DECAY
    state[row + S_HIST + _bin(x, low, high)] += 1.0
    state[row + S_WEIGHT] = state[row + S_WEIGHT] * DECAY + 1.0
    state[row + S_COUNT] += 1.0


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
def detector_step(state, row, t, x):
    """Score x (at device time t, seconds) on the past only, in [0, 1]; then learn it.
    The series' state is state[row:row + STATE_SIZE]. A NaN or infinite x scores 0 and
    leaves the state unchanged."""
    if not math.isfinite(x):
        return 0.0
    score = _judge(state, row, x)
    _learn(state, row, x)
    return _say_once(state, row, score)


@njit(cache=True)
def detector_run(ts, xs):
    """Scores of a whole series from a fresh state (what the benchmark runs)."""
    state = np.empty(STATE_SIZE)
    detector_init(state, 0)
    out = np.empty(len(xs))
    for i in range(len(xs)):
        out[i] = detector_step(state, 0, ts[i], xs[i])
    return out
