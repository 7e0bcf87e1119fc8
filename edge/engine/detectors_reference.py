"""The anomaly detector of edge/engine/detectors.py in plain Python, for tests (STYLE.md item 8).

Written to read as the description in detectors.py, not as the kernel: named fields, lists for
the histogram and the block memory, one small class per "view" that breaks out. Same
configuration constants (imported, so the two cannot drift apart on a setting); tests compare
the two scores at every reading.
"""

from __future__ import annotations

import math

from edge.engine.detector_state import (
    BINS,
    DAY_BINS,
    DAY_HISTORY,
    DAY_MARGIN,
    DAY_SECONDS,
    GAP_CAP,
    DECAY,
    EMPTY_BELOW,
    EMPTY_SCORE,
    MARGIN_READINGS,
    MATURE,
    NOISE_CAP,
    NOISE_SIGMAS,
    OUTSIDE_CALM,
    OUTSIDE_DISTANCE,
    OUTSIDE_MARGIN,
    PRIOR,
    RARE_CAP,
    RARITY_SCALE,
    REST_BLOCK,
    REST_BLOCKS,
    RUN_MIN,
    SMOOTH,
    SMOOTH_WARMUP,
    WARMUP,
)


def breakout_score(calm: float, distance: float) -> float:
    """RARE_CAP to 1: higher the longer the calm (readings since the range last grew) and the
    farther outside (in ranges)."""
    return RARE_CAP + (1 - RARE_CAP) * (1 - math.exp(-calm / OUTSIDE_CALM)) * (
        1 - math.exp(-OUTSIDE_DISTANCE * distance)
    )


def breakout(value: float, low: float, high: float, calm: float, margin: float = OUTSIDE_MARGIN) -> float:
    """0 inside [low, high] or less than ``margin`` ranges outside it; else RARE_CAP and up, growing
    with the distance outside and with the calm (readings since the range last grew)."""
    span = high - low
    if span <= 0:
        span = abs(high) * 0.01 + 1e-9
    u = (value - low) / span
    if 0 <= u <= 1:
        return 0.0
    distance = -u if u < 0 else u - 1
    if math.isnan(distance):  # an overflowing range
        distance = math.inf
    if distance < margin:
        return 0.0
    return breakout_score(calm, distance)


class Range:
    """Lowest and highest value learned, and when the range last grew."""

    def __init__(self) -> None:
        self.low = math.inf
        self.high = -math.inf
        self.last_growth = 0

    def learn(self, value: float, count: int) -> bool:
        """Widen to include value; True if it grew."""
        if self.low <= value <= self.high:
            return False
        self.low, self.high = min(self.low, value), max(self.high, value)
        self.last_growth = count
        return True


def bin_of(x: float, low: float, high: float) -> int:
    if not high - low > 0:
        return 0
    u = (x - low) / (high - low) * BINS
    if not u > 0:  # also NaN (an overflowing range)
        return 0
    return BINS - 1 if u >= BINS else int(u)


def hour_of(t: float) -> int | None:
    """The slot of the day of t (seconds since the epoch, UTC); None when t has no usable time of day."""
    if not 0 <= t < 1e11:
        return None
    return int(t % DAY_SECONDS) * DAY_BINS // int(DAY_SECONDS)


def off_the_hour(level: float, hour_range: Range, values: Range, calm: float) -> float:
    """The break-out score of the smoothed level against this hour's levels, by more than DAY_MARGIN
    ranges of the values (the distance is in ranges of the values, not of the hour's range)."""
    if not hour_range.low <= hour_range.high:  # this hour has no level yet
        return 0.0
    span = values.high - values.low
    if not span > 0:
        return 0.0
    if level > hour_range.high:
        distance = (level - hour_range.high) / span
    elif level < hour_range.low:
        distance = (hour_range.low - level) / span
    else:
        return 0.0
    if not distance >= DAY_MARGIN:
        return 0.0
    return breakout_score(calm, distance)


class ReferenceDetector:
    """One series: ``step(t, x)`` returns the score of x judged on the past, then learns x."""

    def __init__(self) -> None:
        self.count = 0  # readings learned
        self.range = Range()  # of the values
        self.hist = [0.0] * BINS  # decayed weights of recent values per bin of self.range
        self.weight = 0.0  # their total
        self.level = 0.0  # the smoothed value
        self.level_range = Range()  # of the smoothed values, learned from SMOOTH_WARMUP readings on
        self.previous = 0.0
        self.run = 0  # readings equal to the one before them, in a row
        self.longest_run = 0  # the longest run that has ended ...
        self.run_growth = 0  # ... and self.count when it ended
        self.block_max = 0.0  # "said once" memory: the current block ...
        self.block_fill = 0
        self.blocks = [0.0] * REST_BLOCKS  # ... and the last full blocks' highest scores
        self.block_next = 0
        self.clock = math.nan  # the last usable timestamp
        self.elapsed = 0.0  # seconds of history: forward steps of the clock, each at most GAP_CAP
        self.hours = [Range() for _ in range(DAY_BINS)]  # of the smoothed values, per hour of the day
        self.step_sum = 0.0  # decayed sum of |x - previous x| (the noise) ...
        self.step_weight = 0.0  # ... and its decayed count

    def judge(self, x: float, hour: int | None = None) -> float:
        if self.count < WARMUP:
            return 0.0
        r = self.range
        margin = max(OUTSIDE_MARGIN, MARGIN_READINGS / self.count)  # the value's and the level's
        score = breakout(x, r.low, r.high, self.count - r.last_growth, margin)
        if score > NOISE_CAP and self.step_weight > 0:  # a record within the noise: at most NOISE_CAP
            beyond = x - r.high if x > r.high else r.low - x
            # Gaussian noise: E|step| = 2 sigma / sqrt(pi)
            if beyond < NOISE_SIGMAS * (math.sqrt(math.pi) / 2.0) * self.step_sum / self.step_weight:
                score = NOISE_CAP
        if score == 0:
            here = self.hist[bin_of(x, r.low, r.high)]
            share = (here + PRIOR) / (self.weight + PRIOR * BINS)
            surprise = -math.log(share * BINS)
            if surprise > 0:
                score = RARE_CAP * (1 - math.exp(-surprise / RARITY_SCALE))
            if here < EMPTY_BELOW and self.weight >= MATURE / (1 - DECAY):  # not visited within the memory
                score = max(score, EMPTY_SCORE)
        if self.count >= WARMUP + SMOOTH_WARMUP:
            lr = self.level_range
            score = max(score, breakout(self.level, lr.low, lr.high, self.count - lr.last_growth, margin))
            if hour is not None and self.elapsed >= DAY_HISTORY:
                h = self.hours[hour]
                score = max(score, off_the_hour(self.level, h, self.range, self.count - h.last_growth))
        run = self.run + 1 if x == self.previous else 0
        if run == max(RUN_MIN, self.longest_run + 1):  # judged once: when it first beats every run before
            score = max(score, breakout(run, 0.0, self.longest_run, self.count - self.run_growth, margin=0.0))
        return score

    def learn(self, x: float, hour: int | None = None) -> None:
        r = self.range
        low, high = r.low, r.high
        if r.learn(x, self.count) and self.count > 0:
            moved = [0.0] * BINS  # each old bin's weight goes where its centre falls now
            for k, w in enumerate(self.hist):
                moved[bin_of(low + (k + 0.5) * (high - low) / BINS, r.low, r.high)] += w
            self.hist = moved
        self.hist = [w * DECAY for w in self.hist]
        self.hist[bin_of(x, r.low, r.high)] += 1.0
        self.weight = self.weight * DECAY + 1.0
        if self.count >= SMOOTH_WARMUP:
            self.level_range.learn(self.level, self.count)
            if hour is not None:
                self.hours[hour].learn(self.level, self.count)
        if self.count > 0 and math.isfinite(abs(x - self.previous)):
            self.step_sum = self.step_sum * DECAY + abs(x - self.previous)
            self.step_weight = self.step_weight * DECAY + 1.0
        if self.count > 0 and x == self.previous:
            self.run += 1
        else:  # the run ended
            if self.run > self.longest_run:
                self.longest_run, self.run_growth = self.run, self.count
            self.run = 0
        self.previous = x
        self.count += 1

    def say_once(self, score: float) -> float:
        recent = max([self.block_max, *self.blocks])
        out = score if score > recent else 0.0
        self.block_max = max(self.block_max, score)
        self.block_fill += 1
        if self.block_fill >= REST_BLOCK:
            self.blocks[self.block_next] = self.block_max
            self.block_next = (self.block_next + 1) % REST_BLOCKS
            self.block_max, self.block_fill = 0.0, 0
        return out

    def step(self, t: float, x: float) -> float:
        if not math.isfinite(x):
            return 0.0
        if self.count == 0:
            self.level = x
        else:
            level = self.level + SMOOTH * (x - self.level)
            self.level = level if math.isfinite(level) else x
        hour = hour_of(t)
        score = self.judge(x, hour)
        self.learn(x, hour)
        if math.isfinite(t):
            if t - self.clock > 0:  # False before the first usable timestamp (NaN)
                self.elapsed += min(t - self.clock, GAP_CAP)
            self.clock = t
        return self.say_once(score)


def reference_run(ts, xs) -> list[float]:
    d = ReferenceDetector()
    return [d.step(float(t), float(x)) for t, x in zip(ts, xs)]
