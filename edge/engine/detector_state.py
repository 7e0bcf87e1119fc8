"""The anomaly detector's configuration and state layout (edge/engine/detectors.py has the
detector itself). Apart so that code which only needs the layout (the function table, the
engine compiled ahead of time, the plain-Python reference) does not import numba."""

# The one configuration (chosen on the NAB corpus as a whole, checked by leaving each NAB group
# out; see docs/anomaly.md and bench/results/anomaly.json).
WARMUP = 100.0  # readings learned before any score
RARE_CAP = 0.75  # the highest score a value within the range can get; breakouts score above it
OUTSIDE_MARGIN = 0.01  # per range: a new record by less than this is learned, not reported
# ... and, while the series is young, by MARGIN_READINGS / readings learned: a range learned from n
# readings is expected to stretch by about 1/n of itself at its next record, so a record by less
# than that many readings' worth is the range still being learned, not news.
MARGIN_READINGS = 50.0
# A value's record by less than NOISE_SIGMAS standard deviations of the reading-to-reading noise
# (estimated from the mean absolute step between readings, with the histogram's memory) scores at
# most NOISE_CAP: a noisy sensor's tail sets small records for ever, which is "never shown" (0.75
# and up) but not news; 0.8 and up is kept for records beyond three sigma.
NOISE_SIGMAS = 3.0
NOISE_CAP = 0.79
OUTSIDE_DISTANCE = 2.0  # per range: 1 - exp(-OUTSIDE_DISTANCE * distance outside)
OUTSIDE_CALM = 200.0  # readings: 1 - exp(-readings since the range last grew / OUTSIDE_CALM)
RARITY_SCALE = 2.0  # RARE_CAP * (1 - exp(-surprise / RARITY_SCALE))
DECAY = 0.9995  # per reading: the histogram's memory is ~2,000 readings
PRIOR = 0.1  # weight every bin starts with when a share is taken (no share is ever 0)
SMOOTH = 0.05  # the smoothed view: x_s += SMOOTH * (x - x_s), ~20 readings
SMOOTH_WARMUP = 60.0  # readings before the smoothed view's range is learned (3 / SMOOTH)
RUN_MIN = 10.0  # a run of identical readings scores only from this length on
# A value in a part of the range the histogram holds next to nothing of (less than EMPTY_BELOW of a
# reading's weight: not visited within its memory), once the histogram holds at least MATURE of its
# memory (1 / (1 - DECAY) readings), scores EMPTY_SCORE: one level between the rarity scale's top
# (~0.73) and RARE_CAP, so that a threshold between them means "unvisited or never shown".
EMPTY_SCORE = 0.74
EMPTY_BELOW = 0.5  # of one reading's weight
MATURE = 0.5  # of the histogram's memory
# The hour-of-day view: the smoothed level outside every level this hour of the day has shown, by
# more than DAY_MARGIN of the series' range, once the series has DAY_HISTORY seconds of readings.
DAY_MARGIN = 0.3  # of the range of values
DAY_HISTORY = 7 * 86400.0  # seconds of readings (a week) before the view judges
# Structure (not tuned): the histogram and the "said once" memory.
BINS = 16  # histogram bins over [lowest, highest]
REST_BLOCK = 25  # readings per block of the "said once" memory
REST_BLOCKS = 8  # blocks remembered: a score must beat the last 200-225 readings' scores
DAY_BINS = 24  # slots of the day (hours, by the reading's timestamp, UTC)
DAY_SECONDS = 86400.0
GAP_CAP = DAY_SECONDS  # one step of the clock counts for at most a day of history

# State layout (float64 slots).
S_COUNT = 0  # readings learned
S_LOW = 1  # lowest value learned (+inf before the first)
S_HIGH = 2  # highest value learned (-inf before the first)
S_WEIGHT = 3  # total (decayed) weight in the histogram
S_LAST_GROWTH = 4  # S_COUNT when the range last grew
S_SMOOTH = 5  # the smoothed value (exponential moving average)
S_SMOOTH_LOW = 6  # lowest smoothed value learned (+inf before the first)
S_SMOOTH_HIGH = 7  # highest smoothed value learned (-inf before the first)
S_SMOOTH_GROWTH = 8  # S_COUNT when the smoothed range last grew
S_PREVIOUS = 9  # the last value learned
S_RUN = 10  # readings equal to the one before them, in a row, up to the last one learned
S_RUN_LONGEST = 11  # the longest such run that has ended
S_RUN_GROWTH = 12  # S_COUNT when that run ended
S_BLOCK_MAX = 13  # highest score in the current rest block
S_BLOCK_FILL = 14  # readings in the current rest block
S_BLOCK_NEXT = 15  # which of the REST_BLOCKS slots the current block goes to when full
S_BLOCKS = 16  # REST_BLOCKS slots: highest score of each of the last full blocks
S_HIST = S_BLOCKS + REST_BLOCKS  # BINS slots: histogram weights
S_CLOCK = S_HIST + BINS  # timestamp of the last reading learned (NaN before a usable one)
S_ELAPSED = S_CLOCK + 1  # seconds of history: forward steps of the clock, each at most GAP_CAP
S_DAY_LOW = S_ELAPSED + 1  # DAY_BINS slots: lowest smoothed level learned in each hour (+inf before)
S_DAY_HIGH = S_DAY_LOW + DAY_BINS  # DAY_BINS slots: highest (-inf before)
S_DAY_GROWTH = S_DAY_HIGH + DAY_BINS  # DAY_BINS slots: S_COUNT when that hour's range last grew
S_STEP = S_DAY_GROWTH + DAY_BINS  # decayed sum of |x - previous x| (the noise estimate) ...
S_STEP_WEIGHT = S_STEP + 1  # ... and its decayed count
STATE_SIZE = S_STEP_WEIGHT + 1

assert STATE_SIZE * 8 <= 4096

# The tunable constants in the order _step takes them (bench/anomaly_search.py uses this).
CONFIG_NAMES = ("WARMUP", "RARE_CAP", "OUTSIDE_MARGIN", "OUTSIDE_DISTANCE", "OUTSIDE_CALM", "RARITY_SCALE", "DECAY",
                "PRIOR", "SMOOTH", "SMOOTH_WARMUP", "RUN_MIN", "EMPTY_SCORE", "EMPTY_BELOW", "MATURE", "DAY_MARGIN",
                "DAY_HISTORY", "MARGIN_READINGS", "NOISE_SIGMAS")
CONFIG = (WARMUP, RARE_CAP, OUTSIDE_MARGIN, OUTSIDE_DISTANCE, OUTSIDE_CALM, RARITY_SCALE, DECAY, PRIOR, SMOOTH,
          SMOOTH_WARMUP, RUN_MIN, EMPTY_SCORE, EMPTY_BELOW, MATURE, DAY_MARGIN, DAY_HISTORY, MARGIN_READINGS,
          NOISE_SIGMAS)
