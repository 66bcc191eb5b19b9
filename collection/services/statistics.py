"""Statistics of a channel's readings over a time range: count, min, max, mean, std and percentiles.

Count, min, max, mean and standard deviation come from the rollup tiers wherever whole buckets lie
inside the range: the range is covered by the coarsest whole buckets that fit (a year is ~12 day
buckets at its core, then hours, minutes, 10 s at its edges) and only the few seconds at each end are
read raw. Spans whose buckets are still in the rollup backlog are read raw too, so the answer is exact
right after an ingest. Summaries merge exactly (count, min, max) or up to rounding (mean, and the
variance by Chan et al.'s pairwise update of M2). Percentiles need every value: they are exact (numpy's
and pandas' default "linear" interpolation between the two closest ranks), found by selection over the
raw readings read in chunks, in bounded memory whatever the range holds (``exact_quantiles``).

Like the tiers, statistics describe the quality-OK readings; ``flagged`` counts the others.
``std`` is the sample standard deviation (ddof=1, pandas' default).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from collection.services.query import _ChannelContext, _contexts, fetch_raw, iter_raw
from collection.services.rollups import (
    TIERS,
    WIDTHS,
    Buckets,
    aggregate_raw,
    ceil_to,
    combine,
    fetch_buckets,
    floor_to,
)

PERCENTILE_MAX_ROWS = 50_000_000
PERCENTILE_CHUNK_ROWS = 500_000  # readings held at once while percentiles are computed
SELECT_BINS = 1 << 16  # histogram bins per narrowing pass: each pass divides a rank's key span by this
SELECT_COLLECT = 1 << 17  # a rank's candidates are gathered and sorted once at most this many remain


@dataclass
class RangeStatistics:
    channel_id: int
    count: int = 0
    flagged: int = 0
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    percentiles: dict[str, float | None] = field(default_factory=dict)
    raw_readings_read: int = 0  # how much of the answer came from raw readings rather than tiers
    buckets_read: int = 0
    raw_available_from: int | None = None  # retention removed older raw readings (tiers kept)

    def as_dict(self) -> dict:
        return {
            "channel": self.channel_id,
            "count": self.count,
            "flagged": self.flagged,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "std": self.std,
            "percentiles": self.percentiles,
            "raw_readings_read": self.raw_readings_read,
            "buckets_read": self.buckets_read,
            "raw_available_from": self.raw_available_from,
        }


def cover(lo: int, hi: int) -> list[tuple[int | None, int, int]]:
    """[lo, hi) as pieces (tier level or None for raw, piece start, piece end): the coarsest whole
    buckets that fit, then finer ones towards the edges, raw readings for what no bucket fits."""
    pieces: list[tuple[int | None, int, int]] = []

    def split(a: int, b: int, level: int) -> None:
        if a >= b:
            return
        if level < 0:
            pieces.append((None, a, b))
            return
        w = WIDTHS[level]
        inner_lo, inner_hi = ceil_to(a, w), floor_to(b, w)
        if inner_lo >= inner_hi:
            split(a, b, level - 1)
            return
        split(a, inner_lo, level - 1)
        pieces.append((level, inner_lo, inner_hi))
        split(inner_hi, b, level - 1)

    split(lo, hi, len(WIDTHS) - 1)
    return pieces


def _clean_intervals(start: int, end: int, holes: Sequence[tuple[int, int]]) -> tuple[list, list]:
    """[start, end) split into (clean intervals, pending intervals) by the pending spans (inclusive)."""
    clean, pending = [], []
    cursor = start
    for a, b in holes:
        a, b = max(a, start), min(b + 1, end)
        if a >= b:
            continue
        if a > cursor:
            clean.append((cursor, a))
        pending.append((max(a, cursor), b))
        cursor = max(cursor, b)
    if cursor < end:
        clean.append((cursor, end))
    return clean, pending


def total(parts: Buckets) -> Buckets:
    """All summaries merged into one bucket (count 0 when there are none)."""
    if len(parts) == 0:
        zero = np.zeros(1, dtype=np.int64)
        return Buckets(zero, zero, zero, np.full(1, np.nan), np.full(1, np.nan), np.zeros(1), np.zeros(1), zero, zero)
    return combine(Buckets(**{**vars(parts), "bucket": np.zeros(len(parts), dtype=np.int64)}), 1)


def range_statistics(
    channel_ids: Sequence[int],
    start: int,
    end: int,
    *,
    percentiles: Sequence[float] = (),
    using: str = "default",
) -> list[RangeStatistics]:
    if end <= start:
        raise ValueError("the end of the range must be after its start")
    for p in percentiles:
        if not 0 <= p <= 100:
            raise ValueError("percentiles are between 0 and 100")
    contexts = _contexts(channel_ids, start, end, using)
    return [_statistics_one(cid, start, end, percentiles, contexts[cid], using) for cid in channel_ids]


def _statistics_one(
    channel_id: int, start: int, end: int, percentiles: Sequence[float], ctx: _ChannelContext, using: str
) -> RangeStatistics:
    result = RangeStatistics(channel_id=channel_id, raw_available_from=ctx.raw_kept_from)
    parts: list[Buckets] = []
    clean, pending = _clean_intervals(start, end, ctx.holes)
    raw_pieces = list(pending)
    for a, b in clean:
        for level, lo, hi in cover(a, b):
            if level is None:
                raw_pieces.append((lo, hi))
                continue
            buckets = fetch_buckets(channel_id, TIERS[level], lo, hi, using=using)
            result.buckets_read += len(buckets)
            parts.append(buckets)
    kept = ctx.raw_kept_from
    for lo, hi in raw_pieces:
        if kept is not None and lo < kept:
            # Raw readings are gone here: the finest buckets overlapping the piece stand in for them.
            w = WIDTHS[0]
            buckets = fetch_buckets(channel_id, TIERS[0], floor_to(lo, w), min(hi, kept), using=using)
            result.buckets_read += len(buckets)
            parts.append(buckets)
            lo = max(lo, kept)
        if lo >= hi:
            continue
        raw = fetch_raw(channel_id, lo, hi, include_flagged=True, using=using)
        result.raw_readings_read += len(raw["ts"])
        parts.append(aggregate_raw(raw["ts"], raw["value"], raw["quality"], WIDTHS[-1]))
    summary = total(Buckets.concat(parts))
    count = int(summary.count[0])
    result.count = count
    result.flagged = int(summary.flagged[0])
    if count:
        result.min = float(summary.min_value[0])
        result.max = float(summary.max_value[0])
        result.mean = float(summary.sum_value[0] / count)
        result.std = float(np.sqrt(max(summary.m2[0], 0.0) / (count - 1))) if count > 1 else None
    if percentiles:
        lo = max(start, kept) if kept is not None else start
        quantiles, n = exact_quantiles(
            lambda: _raw_value_chunks(channel_id, lo, end, using),
            [p / 100 for p in percentiles],
            bounds=None if result.min is None or result.max is None else (result.min, result.max),
        )
        result.raw_readings_read += n
        result.percentiles = {_percentile_name(p): quantiles[i] for i, p in enumerate(percentiles)}
    return result


def _percentile_name(p: float) -> str:
    return f"p{p:g}"


def _raw_value_chunks(channel_id: int, start: int, end: int, using: str) -> Iterator[np.ndarray]:
    n = 0
    chunks = iter_raw(channel_id, start, end, include_flagged=False, chunk_rows=PERCENTILE_CHUNK_ROWS, using=using)
    for chunk in chunks:
        n += len(chunk["value"])
        if n > PERCENTILE_MAX_ROWS:
            raise ValueError(
                f"percentiles are computed over at most {PERCENTILE_MAX_ROWS:,} readings; shorten the range"
            )
        yield chunk["value"]


# --- exact quantiles in bounded memory -------------------------------------------------------------

_LOW_BITS = np.int64(0x7FFF_FFFF_FFFF_FFFF)


def _keys(values: np.ndarray) -> np.ndarray:
    """float64 -> int64 keys in the same order (negative floats have their magnitude bits flipped)."""
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.int64)
    return np.where(bits < 0, bits ^ _LOW_BITS, bits)


def _value_of(key: int) -> float:
    bits = key if key >= 0 else key ^ int(_LOW_BITS)
    return float(np.array([bits], dtype=np.int64).view(np.float64)[0])


@dataclass
class _Span:
    """Where the sorted key of some ranks lies: keys in [lo, hi], ``below`` keys smaller than lo."""

    lo: int
    hi: int
    below: int
    count: int  # keys in [lo, hi]
    ranks: list[int]
    gathered: list[np.ndarray] = field(default_factory=list)
    histogram: np.ndarray | None = None

    @property
    def width(self) -> int:
        return -(-(self.hi - self.lo + 1) // SELECT_BINS)

    def take(self, keys: np.ndarray) -> None:
        inside = keys[(keys >= self.lo) & (keys <= self.hi)]
        if self.count <= SELECT_COLLECT:
            self.gathered.append(inside)
            return
        offset = inside.view(np.uint64) - np.uint64(self.lo % 2**64)  # exact in uint64 arithmetic
        bins = (offset // np.uint64(self.width)).astype(np.int64)
        counts = np.bincount(bins, minlength=SELECT_BINS)
        self.histogram = counts if self.histogram is None else self.histogram + counts


def exact_quantiles(
    read_chunks: Callable[[], Iterable[np.ndarray]],
    probabilities: Sequence[float],
    *,
    bounds: tuple[float, float] | None = None,
) -> tuple[list[float | None], int]:
    """Exact quantiles (numpy's "linear" method) of the values ``read_chunks()`` yields, and their count.

    Memory is bounded by one chunk plus a 64 Ki-bin histogram or 128 Ki gathered keys per sought rank,
    whatever the number of values: the data is read again for each narrowing pass instead (floats map to
    ordered 64-bit keys; the first pass histograms the whole key space, each further pass divides a rank's
    key span by 65,536 or gathers its few candidates: at most five passes, usually two).

    ``bounds``: the values' min and max when known (from the rollup tiers): the first pass then
    histograms only that span, which leaves few candidates per bin. A value outside them (the tiers
    were behind) costs one more pass over the whole key space, never a wrong answer.
    """
    # The first pass counts, keeps the keys while they are few, and histograms the key space.
    lo, hi = -(2**63), 2**63 - 1
    if bounds is not None and bounds[0] <= bounds[1]:
        lo, hi = (int(k) for k in _keys(np.array(bounds, dtype=np.float64)))
    whole = _Span(lo, hi, 0, SELECT_COLLECT + 1, [])
    n = outside = 0
    first: list[np.ndarray] = []
    for chunk in read_chunks():
        keys = _keys(chunk)
        n += len(keys)
        outside += int(np.count_nonzero((keys < lo) | (keys > hi)))
        if n <= SELECT_COLLECT:
            first.append(keys)
        whole.take(keys)
    if outside:
        return exact_quantiles(read_chunks, probabilities)
    if n == 0:
        return [None] * len(probabilities), 0
    points = [(n - 1) * p for p in probabilities]
    whole.ranks = sorted({r for h in points for r in (int(np.floor(h)), min(int(np.floor(h)) + 1, n - 1))})
    if n <= SELECT_COLLECT:  # small: every key is at hand
        whole.count, whole.gathered = n, first
    found: dict[int, int] = {}
    spans = _narrow([whole], found)
    while spans:
        for chunk in read_chunks():
            keys = _keys(chunk)
            for span in spans:
                span.take(keys)
        spans = _narrow(spans, found)
    values = {rank: _value_of(key) for rank, key in found.items()}
    return [_interpolate(values, h) for h in points], n


def _narrow(spans: list[_Span], found: dict[int, int]) -> list[_Span]:
    """After a pass: ranks whose keys are known go to ``found``; the others get a narrower span each."""
    narrower: dict[tuple[int, int], _Span] = {}
    for span in spans:
        if span.count <= SELECT_COLLECT:
            ordered = np.sort(np.concatenate(span.gathered)) if span.gathered else np.empty(0, np.int64)
            for rank in span.ranks:
                found[rank] = int(ordered[rank - span.below])
            continue
        assert span.histogram is not None
        cumulative = np.cumsum(span.histogram)
        for rank in span.ranks:
            b = int(np.searchsorted(cumulative, rank - span.below, side="right"))
            before = span.below + (int(cumulative[b - 1]) if b else 0)
            lo = span.lo + b * span.width
            hi = min(span.hi, lo + span.width - 1)
            if lo == hi:
                found[rank] = lo
                continue
            key = (lo, hi)
            if key not in narrower:
                narrower[key] = _Span(lo, hi, before, int(span.histogram[b]), [])
            narrower[key].ranks.append(rank)
    return list(narrower.values())


def _interpolate(values: dict[int, float], h: float) -> float:
    """numpy's linear interpolation between ranks floor(h) and floor(h) + 1, written as numpy writes it."""
    k = int(np.floor(h))
    a = values[k]
    b = values.get(k + 1, a)
    t = h - k
    diff = b - a
    return float(b - diff * (1 - t)) if t >= 0.5 else float(a + diff * t)
