"""The functions of the condition language: what each takes, means, and keeps per device.

This table is the single source for validation (``edge rules check``), compilation, the
kernels' dispatch and the field engineers' documentation (docs/rules.md).

Windowed functions keep ``BUCKETS`` time slots per device: a window of ``W`` is cut into
slots of ``W / BUCKETS`` aligned on the clock, and the window at time ``t`` is the slot
holding ``t`` and the ``BUCKETS - 1`` before it. So ``avg(x, 10m)`` covers between 8m45s
and 10m of history: coarse at the edges, constant memory however often a device reports.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.engine.detector_state import STATE_SIZE as ANOMALY_STATE

BUCKETS = 8

# Function codes, as the kernels see them.
F_AVG, F_MIN, F_MAX, F_DELTA, F_RATE, F_COUNT, F_STUCK = 1, 2, 3, 4, 5, 6, 7
F_ZSCORE, F_CHANGED, F_ABSENT, F_ANOMALY = 8, 9, 10, 11

# A windowed function keeps, per slot, the slot's number and only the fields it needs
# (the engine is memory-bound with many devices, so every float counts):
#   avg: count, sum · min: min · max: max · count: count · delta, rate: first time, first value
#   stuck: count, min, max, first time
SLOT_SIZE = {F_AVG: 3, F_MIN: 2, F_MAX: 2, F_DELTA: 3, F_RATE: 3, F_COUNT: 2, F_STUCK: 5}

ZSCORE_WARMUP = 5  # readings before zscore gives a value
STUCK_MIN_READINGS = 3


@dataclass(frozen=True)
class Function:
    name: str
    code: int
    args: tuple[str, ...]  # "metric" (a metric name) or "duration" (a constant like 10m)
    width: int  # float64 slots of state per device
    summary: str
    example: str
    reads_text: bool = False  # may be applied to a text metric


FUNCTIONS: dict[str, Function] = {
    f.name: f
    for f in (
        Function("avg", F_AVG, ("metric", "duration"), BUCKETS * SLOT_SIZE[F_AVG],
                 "average of the metric's readings in the window", "avg(water_cm, 10m) < 40"),
        Function("min", F_MIN, ("metric", "duration"), BUCKETS * SLOT_SIZE[F_MIN],
                 "lowest reading in the window", "min(battery_v, 1h) < 3.3"),
        Function("max", F_MAX, ("metric", "duration"), BUCKETS * SLOT_SIZE[F_MAX],
                 "highest reading in the window", "max(tilt_deg, 5m) > 15"),
        Function("delta", F_DELTA, ("metric", "duration"), BUCKETS * SLOT_SIZE[F_DELTA],
                 "latest reading minus the earliest one in the window", "delta(water_cm, 30m) < -50"),
        Function("rate", F_RATE, ("metric", "duration"), BUCKETS * SLOT_SIZE[F_RATE],
                 "change per minute between the earliest and the latest reading in the window",
                 "rate(temp_c, 10m) > 1"),
        Function("count", F_COUNT, ("metric", "duration"), BUCKETS * SLOT_SIZE[F_COUNT],
                 "how many readings of the metric came in the window", "count(tilt_deg, 1h) > 30"),
        Function("stuck", F_STUCK, ("metric", "duration"), BUCKETS * SLOT_SIZE[F_STUCK],
                 f"1 when every reading in the window is the same, with at least {STUCK_MIN_READINGS} "
                 "readings spanning at least half the window (a flat-lined sensor)", "stuck(water_cm, 6h)"),
        Function("zscore", F_ZSCORE, ("metric", "duration"), 5,
                 "how unusual the latest reading is: its distance from the exponentially weighted mean, "
                 "in standard deviations; the duration is the half-life of the memory "
                 f"(no value for the first {ZSCORE_WARMUP} readings)", "zscore(h2s_ppm, 1d) > 4"),
        Function("changed", F_CHANGED, ("metric",), 2,
                 "1 at a message whose reading of the metric differs from the previous one",
                 "changed(open) and open == 1", reads_text=True),
        Function("anomaly", F_ANOMALY, ("metric",), ANOMALY_STATE + 1,
                 "how unlike this device's own past the latest reading is, from 0 (ordinary) to 1 "
                 "(far outside anything it has sent before); learns each device separately, "
                 "0 while learning (docs/anomaly.md)", "anomaly(water_cm) > 0.9"),
        Function("absent", F_ABSENT, ("duration",), 0,
                 "1 when the device has sent nothing for the duration (it went silent)", "absent(2h)"),
    )
}


def function_names() -> list[str]:
    return sorted(FUNCTIONS)
