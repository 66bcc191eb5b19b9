"""Histograms of a channel's readings over a time range, plain or over time (a heatmap), without shipping
the readings: counted from the rollup tiers where a bucket's readings all fall in one bin, from raw
readings where they do not, in bounded work.

For one channel, [start, end) µs, ``bins`` value bins (equal widths between ``lo`` and ``hi``, by default
the readings' own minimum and maximum) and ``time_bins`` equal slices of the range (1 for a plain
histogram):

1. **raw** when the range holds at most ``RAW_WHOLE`` readings (counted from the finest tier): every
   reading is read and counted (numpy). Exact.
2. **tiers** otherwise: the finest tier with at most ``MAX_BUCKETS`` buckets in the range is read (pending
   rollup spans recomputed, as the query service does). A bucket whose readings (its first to last
   timestamp) lie in the range and in one time slice, and whose minimum and maximum fall in the same value
   bin, holds readings of that one cell only: its count is exact there. The other buckets' readings are
   read raw and counted, up to ``RAW_BUDGET`` readings in at most ``MAX_RAW_QUERIES`` index range scans;
   beyond that (long noisy ranges), their counts are spread over the bins between their minimum and
   maximum as a normal distribution of the bucket's mean and standard deviation (cut at min and max),
   and the answer says which share of the readings was counted exactly (``exact``).

Only readings of quality OK are counted (as the plot draws them). Readings outside [lo, hi] (when the
caller gives limits) are counted in ``below`` and ``above``, never lost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from collection.services.query import _contexts, fetch_raw, tier_buckets
from collection.services.rollups import TIER_NAMES, TIERS, WIDTHS, Buckets, fetch_buckets, floor_to

MAX_BINS = 200
MAX_TIME_BINS = 400
RAW_WHOLE = 50_000  # read every reading when the range holds at most this many
MAX_BUCKETS = 20_000  # tier rows read at most
RAW_BUDGET = 50_000  # raw readings read at most to refine buckets that straddle bins
MAX_RAW_QUERIES = 64


@dataclass
class Histogram:
    channel_id: int
    start: int
    end: int
    edges: np.ndarray  # bins + 1 value edges
    time_edges: np.ndarray  # time_bins + 1, µs
    counts: np.ndarray  # (time_bins, bins), int64
    below: int
    above: int
    total: int  # readings counted (in the bins, below and above)
    exact: float  # share of ``total`` counted exactly (1.0: every reading in its own bin)
    source: str  # "raw", or the tier read ("10min" ...)

    def as_dict(self) -> dict:
        return {
            "channel": self.channel_id,
            "start": self.start,
            "end": self.end,
            "edges": self.edges,
            "time_edges": self.time_edges,
            "counts": self.counts if len(self.time_edges) > 2 else self.counts[0],
            "below": self.below,
            "above": self.above,
            "total": self.total,
            "exact": round(self.exact, 6),
            "source": self.source,
        }


class _Binner:
    """Value and time bin indexes for given edges (equal widths)."""

    def __init__(self, start: int, end: int, time_bins: int, lo: float, hi: float, bins: int):
        self.start, self.end, self.time_bins, self.lo, self.hi, self.bins = start, end, time_bins, lo, hi, bins
        self.width = (hi - lo) / bins
        self.edges = np.linspace(lo, hi, bins + 1)
        self.counts = np.zeros((time_bins, bins), dtype=np.float64)
        self.below = self.above = 0.0

    def value_bin(self, v: np.ndarray) -> np.ndarray:
        """-1 below lo, ``bins`` above hi; by the edges themselves, the top edge in the last bin (as
        numpy.histogram counts)."""
        index = np.searchsorted(self.edges, v, side="right") - 1
        index[v == self.hi] = self.bins - 1
        return index

    def time_bin(self, ts: np.ndarray) -> np.ndarray:
        index = (ts - self.start).astype(np.float64) * self.time_bins / (self.end - self.start)
        return np.clip(np.floor(index).astype(np.int64), 0, self.time_bins - 1)

    def add(self, tb: np.ndarray, vb: np.ndarray, weight: np.ndarray | None = None) -> None:
        w = np.ones(len(vb)) if weight is None else weight.astype(np.float64)
        self.below += float(w[vb < 0].sum())
        self.above += float(w[vb >= self.bins].sum())
        inside = (vb >= 0) & (vb < self.bins)
        self._add_cells(self.counts, tb[inside], vb[inside], w[inside])

    @staticmethod
    def _add_cells(grid: np.ndarray, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray) -> None:
        """grid[rows, cols] += weights, repeated cells summed (bincount: far faster than np.add.at)."""
        if len(rows):
            flat = rows * grid.shape[1] + cols
            grid += np.bincount(flat, weights=weights, minlength=grid.size).reshape(grid.shape)

    def add_raw(self, ts: np.ndarray, values: np.ndarray) -> None:
        self.add(self.time_bin(ts), self.value_bin(values))

    def spread(self, tb, count, low, high, mean, std) -> None:
        """Each bucket's ``count`` readings spread over [low, high] as a normal distribution of the bucket's
        mean and standard deviation, cut at its min and max (a one-reading spike in an hour of calm readings
        stays a small tail, not an even smear over the whole range)."""
        std = np.where(np.isfinite(std), std, 0.0)
        point = (high - low <= 0) | (std <= 0)
        if point.any():
            self.add(tb[point], self.value_bin(mean[point]), count[point])
        keep = ~point
        tb, count, low, high, mean, std = tb[keep], count[keep], low[keep], high[keep], mean[keep], std[keep]
        if not len(tb):
            return
        f_low, f_high = _cdf(low, mean, std), _cdf(high, mean, std)
        norm = np.maximum(f_high - f_low, 1e-300)
        below = np.clip((_cdf(np.clip(self.lo, low, high), mean, std) - f_low) / norm, 0, 1)
        above = np.clip((f_high - _cdf(np.clip(self.hi, low, high), mean, std)) / norm, 0, 1)
        self.below += float((count * below).sum())
        self.above += float((count * above).sum())
        a, b = np.maximum(low, self.lo), np.minimum(high, self.hi)
        inside = b > a
        tb, count, a, b, mean, std, norm = (x[inside] for x in (tb, count, a, b, mean, std, norm))
        ia = np.clip(self.value_bin(a), 0, self.bins - 1)
        ib = np.clip(self.value_bin(b), 0, self.bins - 1)
        lengths = ib - ia + 1  # the bins each bucket reaches: at most bins cells per bucket
        rep = np.repeat(np.arange(len(tb)), lengths)
        j = ia[rep] + np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        lower = np.maximum(self.edges[j], a[rep])
        upper = np.minimum(self.edges[j + 1], b[rep])
        mass = (_cdf(upper, mean[rep], std[rep]) - _cdf(lower, mean[rep], std[rep])) / norm[rep] * count[rep]
        self._add_cells(self.counts, tb[rep], j, np.maximum(mass, 0.0))


def _erf(x: np.ndarray) -> np.ndarray:
    """The error function (Abramowitz and Stegun 7.1.26, absolute error under 1.5e-7): numpy has none."""
    sign = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-x * x))


def _cdf(v: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + _erf((v - mean) / (std * np.sqrt(2.0))))


def _value_limits(buckets: Buckets, raw_values: np.ndarray) -> tuple[float, float] | None:
    lows = [buckets.min_value[buckets.count > 0], raw_values]
    highs = [buckets.max_value[buckets.count > 0], raw_values]
    low = np.concatenate(lows)
    if not len(low):
        return None
    return float(np.nanmin(low)), float(np.nanmax(np.concatenate(highs)))


def _readings_in_range(channel_id: int, start: int, end: int, using: str) -> int:
    """Readings in [start, end) as the finest tier counts them, capped: an estimate, read cheaply from the
    coarsest tier with few rows (whole buckets, so a little over the true number at the edges)."""
    for level in range(len(WIDTHS) - 1, -1, -1):
        if (end - start) // WIDTHS[level] <= MAX_BUCKETS or level == 0:
            buckets = fetch_buckets(channel_id, TIERS[level], floor_to(start, WIDTHS[level]), end, using=using)
            return int(buckets.count.sum())
    return 0  # not reached


def channel_histogram(
    channel_id: int,
    start: int,
    end: int,
    *,
    bins: int = 50,
    time_bins: int = 1,
    lo: float | None = None,
    hi: float | None = None,
    using: str = "default",
) -> Histogram:
    """The histogram of a channel's OK readings in [start, end) (see the module docstring)."""
    if not 1 <= bins <= MAX_BINS:
        raise ValueError(f"bins must be between 1 and {MAX_BINS}")
    if not 1 <= time_bins <= MAX_TIME_BINS:
        raise ValueError(f"time_bins must be between 1 and {MAX_TIME_BINS}")
    if end <= start:
        raise ValueError("the end of the range must be after its start")
    if lo is not None and hi is not None and not hi > lo:
        raise ValueError("hi must be above lo")
    ctx = _contexts([channel_id], start, end, using)[channel_id]
    raw_complete = ctx.raw_kept_from is None or start >= ctx.raw_kept_from
    time_edges = np.linspace(start, end, time_bins + 1).round().astype(np.int64)

    if raw_complete and not ctx.holes and _readings_in_range(channel_id, start, end, using) <= RAW_WHOLE:
        raw = fetch_raw(channel_id, start, end, limit=RAW_WHOLE * 4, using=using)
        if len(raw["ts"]) <= RAW_WHOLE * 4:
            return _from_raw(channel_id, start, end, raw, bins, time_bins, lo, hi, time_edges)

    level = next((lv for lv in range(len(WIDTHS)) if (end - start) // WIDTHS[lv] <= MAX_BUCKETS), len(WIDTHS) - 1)
    w = WIDTHS[level]
    buckets, _stale = tier_buckets(channel_id, level, floor_to(start, w), end, ctx, using)
    buckets = buckets.select(buckets.count > 0)
    inside = (buckets.first_ts >= start) & (buckets.last_ts < end)
    edge_raw = {"ts": np.empty(0, np.int64), "value": np.empty(0)}
    if raw_complete:  # the (at most two) buckets reaching over the range's ends: their readings in it, exactly
        parts = [
            fetch_raw(channel_id, max(start, int(first)), min(end, int(last) + 1), using=using)
            for first, last in zip(buckets.first_ts[~inside], buckets.last_ts[~inside], strict=True)
        ]
        if parts:
            edge_raw = {k: np.concatenate([p[k] for p in parts]) for k in ("ts", "value")}
        buckets = buckets.select(inside)
    limits = _value_limits(buckets, edge_raw["value"])
    if limits is None:
        return _empty(channel_id, start, end, bins, lo, hi, time_edges, TIER_NAMES[TIERS[level]])
    low, high = _bin_range(lo, hi, *limits)
    binner = _Binner(start, end, time_bins, low, high, bins)
    binner.add_raw(edge_raw["ts"], edge_raw["value"])
    exact_count = len(edge_raw["ts"])

    tb_first, tb_last = binner.time_bin(buckets.first_ts), binner.time_bin(buckets.last_ts)
    vb_min, vb_max = binner.value_bin(buckets.min_value), binner.value_bin(buckets.max_value)
    one_cell = (tb_first == tb_last) & (vb_min == vb_max)
    binner.add(tb_first[one_cell], vb_min[one_cell], buckets.count[one_cell])
    exact_count += int(buckets.count[one_cell].sum())

    rest = buckets.select(~one_cell)
    runs = _runs(np.flatnonzero(~one_cell))
    if raw_complete and int(rest.count.sum()) <= RAW_BUDGET and len(runs) <= MAX_RAW_QUERIES:
        for a, b in runs:  # contiguous straddling buckets: one index range scan each
            raw = fetch_raw(channel_id, int(buckets.first_ts[a]), int(buckets.last_ts[b - 1]) + 1, using=using)
            binner.add_raw(raw["ts"], raw["value"])
        exact_count += int(rest.count.sum())
    else:
        # Too many to read: a bucket that also spans time slices is put in the slice of its middle.
        middle = binner.time_bin(rest.first_ts // 2 + rest.last_ts // 2)
        counts = rest.count.astype(np.float64)
        mean = rest.sum_value / counts
        std = np.sqrt(np.maximum(rest.m2, 0.0) / counts)
        binner.spread(middle, counts, rest.min_value, rest.max_value, mean, std)
    total = int(buckets.count.sum()) + len(edge_raw["ts"])
    return Histogram(
        channel_id=channel_id,
        start=start,
        end=end,
        edges=np.linspace(low, high, bins + 1),
        time_edges=time_edges,
        counts=_rounded(binner.counts),
        below=round(binner.below),
        above=round(binner.above),
        total=total,
        exact=exact_count / total if total else 1.0,
        source=TIER_NAMES[TIERS[level]],
    )


def _bin_range(lo: float | None, hi: float | None, smallest: float, largest: float) -> tuple[float, float]:
    """The bins' range: the limits given, else the readings' own. One reading value (or every reading beyond
    the one limit given) leaves a unit-wide range beside it, never an empty or upside-down one."""
    low = lo if lo is not None else smallest
    high = hi if hi is not None else largest
    if high > low:
        return low, high
    if lo is not None and hi is None:
        return low, low + 1.0  # every reading is below lo: counted in below
    if hi is not None and lo is None:
        return high - 1.0, high  # every reading is above hi
    return low - 0.5, high + 0.5


def _runs(indexes: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive indexes grouped: [2, 3, 4, 9] -> [(2, 5), (9, 10)] (half-open)."""
    if not len(indexes):
        return []
    breaks = np.flatnonzero(np.diff(indexes) != 1)
    starts = np.r_[indexes[0], indexes[breaks + 1]]
    ends = np.r_[indexes[breaks] + 1, indexes[-1] + 1]
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def _rounded(counts: np.ndarray) -> np.ndarray:
    return np.rint(counts).astype(np.int64)


def _empty(channel_id, start, end, bins, lo, hi, time_edges, source) -> Histogram:
    low = lo if lo is not None else 0.0
    high = hi if hi is not None else low + 1.0
    return Histogram(
        channel_id=channel_id,
        start=start,
        end=end,
        edges=np.linspace(low, high, bins + 1),
        time_edges=time_edges,
        counts=np.zeros((len(time_edges) - 1, bins), dtype=np.int64),
        below=0,
        above=0,
        total=0,
        exact=1.0,
        source=source,
    )


def _from_raw(channel_id, start, end, raw, bins, time_bins, lo, hi, time_edges) -> Histogram:
    values = raw["value"]
    if not len(values):
        return _empty(channel_id, start, end, bins, lo, hi, time_edges, "raw")
    low, high = _bin_range(lo, hi, float(values.min()), float(values.max()))
    binner = _Binner(start, end, time_bins, low, high, bins)
    binner.add_raw(raw["ts"], values)
    return Histogram(
        channel_id=channel_id,
        start=start,
        end=end,
        edges=np.linspace(low, high, bins + 1),
        time_edges=time_edges,
        counts=_rounded(binner.counts),
        below=round(binner.below),
        above=round(binner.above),
        total=len(values),
        exact=1.0,
        source="raw",
    )
