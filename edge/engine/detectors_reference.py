"""The anomaly detector of edge/engine/detectors.py in plain Python, for tests (STYLE.md item 8).

Written to read as the description in detectors.py, not as the kernel: named fields, a list for
the histogram, a deque-free block memory. Same configuration constants (imported, so the two
cannot drift apart on a setting); tests compare the two scores at every reading.
"""

from __future__ import annotations

import math

from edge.engine.detectors import (
    BINS,
    DECAY,
    OUTSIDE_CALM,
    OUTSIDE_DISTANCE,
    RARE_CAP,
    RARITY_SCALE,
    REST_BLOCK,
    REST_BLOCKS,
    WARMUP,
)


class ReferenceDetector:
    """One series: ``step(t, x)`` returns the score of x judged on the past, then learns x."""

    def __init__(self) -> None:
        self.count = 0  # readings learned
        self.low = math.inf
        self.high = -math.inf
        self.weight = 0.0  # decayed total of the histogram
        self.last_growth = 0  # self.count when the range last grew
        self.hist = [0.0] * BINS
        self.block_max = 0.0  # "said once" memory: the current block ...
        self.block_fill = 0
        self.blocks = [0.0] * REST_BLOCKS  # ... and the last full blocks' highest scores
        self.block_next = 0

    def _bin(self, x: float, low: float, high: float) -> int:
        if high - low <= 0:
            return 0
        return min(BINS - 1, max(0, int((x - low) / (high - low) * BINS)))

    def judge(self, x: float) -> float:
        if self.count < WARMUP:
            return 0.0
        span = self.high - self.low
        if span <= 0:
            span = abs(self.high) * 0.01 + 1e-9
        u = (x - self.low) / span
        if u < 0 or u > 1:
            distance = -u if u < 0 else u - 1
            calm = self.count - self.last_growth
            return RARE_CAP + (1 - RARE_CAP) * (1 - math.exp(-calm / OUTSIDE_CALM)) * (
                1 - math.exp(-OUTSIDE_DISTANCE * distance)
            )
        share = self.hist[self._bin(x, self.low, self.high)] / self.weight
        if share <= 0:
            return RARE_CAP
        return max(0.0, min(RARE_CAP, -math.log(share * BINS) / RARITY_SCALE))

    def learn(self, x: float) -> None:
        if x < self.low or x > self.high:
            new_low, new_high = min(self.low, x), max(self.high, x)
            if self.count > 0:
                moved = [0.0] * BINS
                for k, w in enumerate(self.hist):
                    centre = self.low + (k + 0.5) * (self.high - self.low) / BINS
                    moved[self._bin(centre, new_low, new_high)] += w
                self.hist = moved
            self.last_growth = self.count
            self.low, self.high = new_low, new_high
        self.hist = [w * DECAY for w in self.hist]
        self.hist[self._bin(x, self.low, self.high)] += 1.0
        self.weight = self.weight * DECAY + 1.0
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
        score = self.judge(x)
        self.learn(x)
        return self.say_once(score)


def reference_run(ts, xs) -> list[float]:
    d = ReferenceDetector()
    return [d.step(float(t), float(x)) for t, x in zip(ts, xs)]
