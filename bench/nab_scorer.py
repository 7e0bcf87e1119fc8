"""The NAB scorer (Numenta Anomaly Benchmark), as ../shared/data/nab/SCORING.md describes it.

A library: load the corpus, turn one file's anomaly scores into scored rows, and sweep one
threshold over the whole corpus per profile. bench/bench_anomaly.py and the tests use it.

    corpus = load_corpus()                                 # ../shared/data/nab, or $NAB_DIR
    scores = {name: my_detector(f.timestamps, f.values) for name, f in corpus.files.items()}
    result = score_corpus(corpus, scores, PROFILES["standard"])
    result.normalised, result.threshold

How a file is scored (SCORING.md, the same rules as NAB's own sweeper):
- rows before the probationary length ``min(floor(0.15 n), 0.15 * 5000)`` count for nothing,
  and a window with no row after it counts for nothing;
- a detection (score >= threshold) at row i in a window of w rows ending at row e scores
  ``S(-(e - i + 1) / w) * tp / S(-1)``; only the best (earliest) detection of a window counts;
- a window with no detection scores ``-fn``;
- a detection outside every window scores ``S(|e - i| / (w - 1)) * fp`` where e and w are
  those of the last window that ended before it, or ``-fp`` when none did; every one counts;
- ``S(x) = 2 / (1 + exp(5 x)) - 1`` for x < 3, else -1.

The threshold is one for the corpus, the one maximising the corpus total, found exactly by
sweeping every distinct score (a detector that never fires is one of the candidates). The
normalised score is ``100 (raw - null) / (perfect - null)``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# The benchmark data is used in place: shared/data/nab beside the checkout or beside any folder
# above it (a clone in a subfolder of the workplace finds it too); NAB_DIR overrides.
DEFAULT_NAB_DIR = next(
    (folder / "shared" / "data" / "nab" for folder in ROOT.parents
     if (folder / "shared" / "data" / "nab" / "combined_windows.json").exists()),
    ROOT.parent / "shared" / "data" / "nab",
)

PROBATION_PERCENT = 0.15
OUTSIDE = -1  # window id of a counted row outside every window
PROBATIONARY = -2  # window id of a row in the probationary period (never counted)


@dataclass(frozen=True)
class Profile:
    name: str
    tp: float
    fp: float
    fn: float


# The cost matrices of profiles.json (checked against the file by load_profiles()).
PROFILES = {
    "standard": Profile("standard", tp=1.0, fp=0.11, fn=1.0),
    "reward_low_FP_rate": Profile("reward_low_FP_rate", tp=1.0, fp=0.22, fn=1.0),
    "reward_low_FN_rate": Profile("reward_low_FN_rate", tp=1.0, fp=0.11, fn=2.0),
}


def scaled_sigmoid(x: float | np.ndarray) -> np.ndarray:
    """NAB's S(x): 2 / (1 + exp(5x)) - 1, and -1 from x = 3 on."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        s = 2.0 / (1.0 + np.exp(5.0 * x)) - 1.0
    return np.where(x >= 3.0, -1.0, s)


def probationary_length(n: int) -> float:
    return min(math.floor(PROBATION_PERCENT * n), PROBATION_PERCENT * 5000)


@dataclass
class DataFile:
    name: str  # "realKnownCause/nyc_taxi.csv"
    timestamps: np.ndarray  # float64 seconds since the epoch (UTC), one per row, file order
    values: np.ndarray  # float64
    windows: list[tuple[int, int]]  # (first row, last row) of each labelled window

    @property
    def n(self) -> int:
        return len(self.values)


@dataclass
class Corpus:
    root: Path
    files: dict[str, DataFile] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(f.n for f in self.files.values())


def nab_dir() -> Path:
    return Path(os.environ.get("NAB_DIR", DEFAULT_NAB_DIR))


def _seconds(stamps: list[str]) -> np.ndarray:
    # "2014-04-10 07:15:00" and "2014-04-10 07:15:00.000000" both parse as ISO 8601.
    return np.array([s.strip().replace(" ", "T") for s in stamps], dtype="datetime64[us]").astype(
        np.int64
    ) / 1e6


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        if [h.strip() for h in header[:2]] != ["timestamp", "value"]:
            raise ValueError(f"{path}: expected a 'timestamp,value' header, got {header}")
        rows = [r for r in reader if r]
    return _seconds([r[0] for r in rows]), np.array([float(r[1]) for r in rows], dtype=np.float64)


def window_rows(timestamps: np.ndarray, windows: list[list[str]], name: str) -> list[tuple[int, int]]:
    """Each window's [start, end] timestamps as row indices: the first row with that timestamp,
    as NAB's list.index. Timestamps are not always increasing in the corpus: some repeat
    (ec2_disk_write_bytes_1ef3de) and one file steps back 55 minutes
    (machine_temperature_system_failure), so neither order nor uniqueness is assumed."""
    out = []
    for start, end in windows:
        idx = []
        for stamp, t in zip((start, end), _seconds([start, end])):
            hits = np.flatnonzero(timestamps == t)
            if len(hits) == 0:
                raise ValueError(f"{name}: window timestamp {stamp} is not a row of the file")
            idx.append(int(hits[0]))
        out.append((idx[0], idx[1]))
    return out


def load_profiles(root: Path | None = None) -> dict[str, Profile]:
    """profiles.json as Profile objects."""
    root = nab_dir() if root is None else Path(root)
    raw = json.loads((root / "profiles.json").read_text())
    return {
        name: Profile(name, tp=c["CostMatrix"]["tpWeight"], fp=c["CostMatrix"]["fpWeight"],
                      fn=c["CostMatrix"]["fnWeight"])
        for name, c in raw.items()
    }


def load_corpus(root: Path | str | None = None) -> Corpus:
    """Every file named in combined_windows.json, with its windows as row indices."""
    root = nab_dir() if root is None else Path(root)
    windows = json.loads((root / "combined_windows.json").read_text())
    corpus = Corpus(root=root)
    for name in sorted(windows):
        ts, xs = read_csv(root / "data" / name)
        corpus.files[name] = DataFile(name, ts, xs, window_rows(ts, windows[name], name))
    return corpus


@dataclass
class ScoredRows:
    """One file's rows as the sweep sees them: per row, its window id (OUTSIDE, PROBATIONARY,
    or the window's number) and the score a detection there would get."""

    window: np.ndarray  # int64
    sweep: np.ndarray  # float64


def scored_rows(n: int, windows: list[tuple[int, int]], profile: Profile) -> ScoredRows:
    """NAB's calcSweepScore for a file of n rows: what a detection at each row would score."""
    window = np.full(n, OUTSIDE, dtype=np.int64)
    sweep = np.empty(n, dtype=np.float64)
    i = np.arange(n)
    max_tp = float(scaled_sigmoid(-1.0))
    prev_end, prev_width = None, None
    cursor = 0
    for k, (start, end) in enumerate(sorted(windows)):
        # Rows before this window: false positives, judged by the last window that ended.
        before = slice(cursor, start)
        sweep[before] = _fp_score(i[before], prev_end, prev_width, profile)
        width = end - start + 1
        inside = slice(start, end + 1)
        window[inside] = k
        sweep[inside] = scaled_sigmoid(-(end - i[inside] + 1) / width) * profile.tp / max_tp
        prev_end, prev_width, cursor = end, width, end + 1
    sweep[cursor:] = _fp_score(i[cursor:], prev_end, prev_width, profile)
    window[: int(math.ceil(probationary_length(n)))] = PROBATIONARY
    return ScoredRows(window, sweep)


def _fp_score(i: np.ndarray, prev_end: int | None, prev_width: int | None, profile: Profile) -> np.ndarray:
    if prev_end is None:
        return np.full(len(i), -1.0 * profile.fp)
    # A window of one row has w - 1 = 0: NAB divides by zero there; every row after it is
    # then "infinitely far" (score -fp), the limit of the formula.
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.abs(prev_end - i) / float(prev_width - 1)
    return scaled_sigmoid(np.nan_to_num(x, nan=3.0, posinf=3.0)) * profile.fp


@dataclass
class CorpusScore:
    profile: str
    threshold: float  # rows with score >= threshold are detections (inf: none)
    raw: float
    null: float
    perfect: float
    normalised: float
    detections: int  # counted detections at the threshold (in windows and outside)
    windows: int  # counted windows
    windows_found: int
    false_positives: int


def _flatten(corpus: Corpus, scores: dict[str, np.ndarray], profile: Profile):
    """All counted rows of the corpus: anomaly score, window key (-1 outside, else a corpus-wide
    window number) and sweep score."""
    s_parts, w_parts, v_parts = [], [], []
    next_key = 0
    for name, f in corpus.files.items():
        a = np.asarray(scores[name], dtype=np.float64)
        if a.shape != (f.n,):
            raise ValueError(f"{name}: {a.shape[0] if a.ndim else 0} scores for {f.n} rows")
        if np.any(np.isnan(a)):
            raise ValueError(f"{name}: NaN anomaly score")
        rows = scored_rows(f.n, f.windows, profile)
        keep = rows.window != PROBATIONARY
        w = rows.window[keep]
        inside = w >= 0
        w = np.where(inside, w + next_key, OUTSIDE)
        next_key += len(f.windows)
        s_parts.append(a[keep])
        w_parts.append(w)
        v_parts.append(rows.sweep[keep])
    return np.concatenate(s_parts), np.concatenate(w_parts), np.concatenate(v_parts)


def threshold_sweep(corpus: Corpus, scores: dict[str, np.ndarray], profile: Profile):
    """NAB's calcScoreByThreshold over the whole corpus: (thresholds, totals, null), where
    totals[k] is the corpus total when detections are rows with score >= thresholds[k]
    (thresholds descending, each a distinct score), and null the total with no detection."""
    a, w, v = _flatten(corpus, scores, profile)
    counted_windows = np.unique(w[w >= 0])
    null = -profile.fn * len(counted_windows)
    if len(a) == 0:
        return np.empty(0), np.empty(0), null
    order = np.argsort(-a, kind="stable")
    a, w, v = a[order], w[order], v[order]
    # What each row adds to the total as the threshold falls past it: a false positive adds
    # its own score; a row in a window raises that window's best score (from -fn) if it is
    # better than every row of the window above it.
    gain = np.where(w < 0, v, 0.0)
    inw = np.flatnonzero(w >= 0)
    if len(inw):
        # Group the window rows by window, keeping the descending-score order inside each,
        # and take a running maximum per group (an offset per group keeps groups apart).
        g = inw[np.argsort(w[inw], kind="stable")]
        keys = w[g]
        _, first = np.unique(keys, return_index=True)
        group = np.cumsum(np.r_[0, (np.diff(keys) != 0).astype(np.int64)])
        span = 4.0 * (abs(profile.tp) + abs(profile.fn) + 1.0)
        best = np.maximum.accumulate(np.maximum(v[g], -profile.fn) + group * span) - group * span
        before = np.r_[-profile.fn, best[:-1]]
        before[first] = -profile.fn
        gain[g] = best - before
    totals = null + np.cumsum(gain)
    # A threshold is a distinct score: the total counts every row down to the last of its ties.
    last_of_tie = np.r_[a[1:] != a[:-1], True]
    return a[last_of_tie], totals[last_of_tie], null


def score_corpus(corpus: Corpus, scores: dict[str, np.ndarray], profile: Profile) -> CorpusScore:
    """The corpus total at the best threshold for this profile, normalised (null 0, perfect 100)."""
    thresholds, totals, null = threshold_sweep(corpus, scores, profile)
    windows = int(round(-null / profile.fn)) if profile.fn else 0
    perfect = profile.tp * windows
    if len(totals) and totals.max() > null:
        k = int(np.argmax(totals))  # the first (highest) threshold reaching the best total
        threshold, raw = float(thresholds[k]), float(totals[k])
    else:
        threshold, raw = math.inf, float(null)
    counts = count_at_threshold(corpus, scores, profile, threshold)
    return CorpusScore(
        profile=profile.name,
        threshold=threshold,
        raw=raw,
        null=float(null),
        perfect=float(perfect),
        normalised=100.0 * (raw - null) / (perfect - null),
        windows=windows,
        **counts,
    )


def count_at_threshold(corpus: Corpus, scores: dict[str, np.ndarray], profile: Profile,
                       threshold: float) -> dict[str, int]:
    a, w, _ = _flatten(corpus, scores, profile)
    hit = a >= threshold
    return {
        "detections": int(hit.sum()),
        "windows_found": int(len(np.unique(w[hit & (w >= 0)]))),
        "false_positives": int((hit & (w < 0)).sum()),
    }


def file_total(data: DataFile, scores: np.ndarray, profile: Profile, threshold: float) -> float:
    """One file's total at a given threshold, row by row as SCORING.md says (slow and plain:
    a second implementation the tests hold the sweep against)."""
    rows = scored_rows(data.n, data.windows, profile)
    best: dict[int, float] = {}
    total = 0.0
    for i in range(data.n):
        k = int(rows.window[i])
        if k == PROBATIONARY:
            continue
        if k >= 0:
            best.setdefault(k, -profile.fn)
            if scores[i] >= threshold:
                best[k] = max(best[k], float(rows.sweep[i]))
        elif scores[i] >= threshold:
            total += float(rows.sweep[i])
    return total + sum(best.values())
