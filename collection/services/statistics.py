"""Statistics of a channel's readings over a time range: count, min, max, mean, std and percentiles.

Count, min, max, mean and standard deviation come from the rollup tiers wherever whole buckets lie
inside the range: the range is covered by the coarsest whole buckets that fit (a year is ~12 day
buckets at its core, then hours, minutes, 10 s at its edges) and only the few seconds at each end are
read raw. Spans whose buckets are still in the rollup backlog are read raw too, so the answer is exact
right after an ingest. Summaries merge exactly (count, min, max) or up to rounding (mean, and the
variance by Chan et al.'s pairwise update of M2). Percentiles need every value: they are computed with
pandas over the raw readings of the range (fetched in binary on PostgreSQL).

Like the tiers, statistics describe the quality-OK readings; ``flagged`` counts the others.
``std`` is the sample standard deviation (ddof=1, pandas' default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

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
        values = _raw_values(channel_id, max(start, kept) if kept is not None else start, end, using)
        result.raw_readings_read += len(values)
        series = pd.Series(values)
        quantiles = series.quantile([p / 100 for p in percentiles]) if len(series) else None
        result.percentiles = {
            _percentile_name(p): (None if quantiles is None else float(quantiles.iloc[i]))
            for i, p in enumerate(percentiles)
        }
    return result


def _percentile_name(p: float) -> str:
    return f"p{p:g}"


def _raw_values(channel_id: int, start: int, end: int, using: str) -> np.ndarray:
    chunks, n = [], 0
    for chunk in iter_raw(channel_id, start, end, include_flagged=False, chunk_rows=1_000_000, using=using):
        n += len(chunk["value"])
        if n > PERCENTILE_MAX_ROWS:
            raise ValueError(
                f"percentiles are computed over at most {PERCENTILE_MAX_ROWS:,} readings; shorten the range"
            )
        chunks.append(chunk["value"])
    return np.concatenate(chunks) if chunks else np.empty(0)
