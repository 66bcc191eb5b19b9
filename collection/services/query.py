"""THE query service: readings of a channel over a time range at screen resolution, fast, whatever is stored.

The API, pages, exports and statistics read readings back through here (or through ``fetch`` for
whole ranges). For one channel, a range [start, end) and ``max_points``:

1. **raw** when the range holds at most ``max_points`` readings (one index range scan, LIMIT max_points+1);
2. **lttb** when it holds more, but the range is too short for the finest tier to give half of
   ``max_points`` buckets (under ``max_points`` x 5 s) and holds at most ``LTTB_MAX_ROWS`` readings:
   MinMax-LTTB (``tsdownsample``) picks ``max_points`` of the raw readings, keeping each stretch's extremes;
3. **tier** otherwise: the coarsest tier that still has at least ``max_points / 2`` buckets in the range
   (the finest one when none has), its buckets merged, when more than ``max_points``, into at most
   ``max_points`` groups of a whole number of buckets, aligned on the epoch so panning does not reshuffle
   them. Each point carries the exact min/max envelope, mean and count of its readings, so a one-reading
   spike always shows.

The cost depends on the points returned, not the readings stored: a tier answer reads fewer than
``max_points`` x 12 bucket rows (6 x between the 10-fold tiers), in one binary round trip. Buckets whose
readings changed and are still in the rollup backlog are recomputed from raw readings on the fly, so an
answer is never stale. Buckets overlapping the range's edges are included whole. Readings flagged with a
quality other than OK are left out at every resolution (tiers do not summarise them), unless
``include_flagged`` asks raw and LTTB answers for them too (with their quality). Where retention removed
the raw readings (``RollupState.raw_kept_from``) only tiers answer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from django.db import connections
from django.db.models import BigIntegerField, Value
from tsdownsample import MinMaxLTTBDownsampler

from collection.choices import Quality
from collection.models import RollupBacklog, RollupState, Sample
from collection.services import blocks
from collection.services.fetch import F8, I8, fetch_columns, iter_chunks
from collection.services.rollups import (
    TIER_NAMES,
    TIERS,
    WIDTHS,
    Buckets,
    aggregate_raw,
    ceil_to,
    combine,
    fetch_buckets,
    floor_to,
    merge_spans,
)
from instruments.choices import ChannelKind
from instruments.models import Channel

LTTB_MAX_ROWS = 200_000
MAX_POINTS_LIMIT = 100_000
HOLE_MAX_ROWS = 2_000_000  # beyond this a pending span is answered from its (stale) stored buckets
RAW, LTTB, TIER = "raw", "lttb", "tier"


@dataclass
class Series:
    """One channel's answer. ``t`` is µs since the epoch (a bucket's start for tier answers)."""

    channel_id: int
    source: str
    t: np.ndarray
    value: np.ndarray | None = None  # raw and lttb
    quality: np.ndarray | None = None  # raw and lttb with include_flagged
    mean: np.ndarray | None = None  # tier
    min: np.ndarray | None = None
    max: np.ndarray | None = None
    count: np.ndarray | None = None
    tier: int | None = None  # tier width in seconds
    bucket_us: int | None = None  # width of each returned bucket (a whole number of tier buckets)
    stale: bool = False  # a pending span was too large to recompute on the fly

    def __len__(self) -> int:
        return len(self.t)

    def as_dict(self) -> dict:
        out: dict = {"channel": self.channel_id, "source": self.source}
        if self.source == TIER:
            assert self.tier is not None  # a tier series names its tier
            out.update(
                tier=TIER_NAMES[self.tier],
                bucket_us=self.bucket_us,
                t=self.t,
                mean=self.mean,
                min=self.min,
                max=self.max,
                count=self.count,
            )
            if self.stale:
                out["stale"] = True
        else:
            out.update(t=self.t, value=self.value)
            if self.quality is not None:
                out["quality"] = self.quality
        return out


@dataclass
class _ChannelContext:
    raw_kept_from: int | None
    holes: list[tuple[int, int]]  # pending backlog spans (inclusive), merged


def _contexts(channel_ids: Sequence[int], start: int, end: int, using: str) -> dict[int, _ChannelContext]:
    """Retention watermark and pending rollup spans of each channel: one query for all channels."""
    # Pending spans near the range: a pending span can spoil a coarse bucket reaching a day beyond it.
    margin = WIDTHS[-1]
    pending_spans = (
        RollupBacklog.objects.using(using)
        .filter(channel_id__in=channel_ids, start_ts__lt=end + margin, end_ts__gte=start - margin)
        .annotate(is_watermark=Value(0))
        .values_list("channel_id", "start_ts", "end_ts", "is_watermark")
    )
    # Spans noted on the channel rows that no worker has taken up yet (collection.services.pending).
    noted_spans = (
        Channel.objects.using(using)
        .filter(pk__in=channel_ids, pending_from__lt=end + margin, pending_to__gte=start - margin)
        .order_by()
        .annotate(is_watermark=Value(0))
        .values_list("pk", "pending_from", "pending_to", "is_watermark")
    )
    watermarks = (
        RollupState.objects.using(using)
        .filter(channel_id__in=channel_ids, raw_kept_from__isnull=False)
        .annotate(unused=Value(0, output_field=BigIntegerField()), is_watermark=Value(1))
        .values_list("channel_id", "raw_kept_from", "unused", "is_watermark")
    )
    kept: dict[int, int] = {}
    pending: dict[int, list[tuple[int, int]]] = {}
    for channel_id, a, b, is_watermark in pending_spans.union(noted_spans, watermarks, all=True):
        if is_watermark:
            kept[channel_id] = a
        else:
            pending.setdefault(channel_id, []).append((a, b))
    return {
        cid: _ChannelContext(raw_kept_from=kept.get(cid), holes=merge_spans(pending.get(cid, ())))
        for cid in channel_ids
    }


def query_series(
    channel_ids: Sequence[int],
    start: int,
    end: int,
    max_points: int,
    *,
    include_flagged: bool = False,
    using: str = "default",
) -> list[Series]:
    """Each channel's readings in [start, end) µs at no more than ``max_points`` points (see module doc)."""
    if not 2 <= max_points <= MAX_POINTS_LIMIT:
        raise ValueError(f"max_points must be between 2 and {MAX_POINTS_LIMIT}")
    if end <= start:
        raise ValueError("the end of the range must be after its start")
    contexts = _contexts(channel_ids, start, end, using)
    return [_query_one(cid, start, end, max_points, include_flagged, contexts[cid], using) for cid in channel_ids]


def _query_one(
    channel_id: int, start: int, end: int, n: int, include_flagged: bool, ctx: _ChannelContext, using: str
) -> Series:
    span = end - start
    # Tiers with at least n/2 buckets in the range; the coarsest of them reads the fewest rows (fewer than
    # n/2 x the ratio to the next tier: 12 n at most, between 1 h and 1 day).
    fitting = [level for level, w in enumerate(WIDTHS) if span // w >= max(1, n // 2)]
    raw_complete = ctx.raw_kept_from is None or start >= ctx.raw_kept_from
    if raw_complete:
        probe = fetch_raw(channel_id, start, end, include_flagged=include_flagged, limit=n + 1, using=using)
        if len(probe["ts"]) <= n:
            return _raw_series(channel_id, RAW, probe, include_flagged)
        if not fitting:
            estimate = _estimated_readings(channel_id, start, end, include_flagged, ctx, using)
            if estimate <= LTTB_MAX_ROWS:
                raw = fetch_raw(channel_id, start, end, include_flagged=include_flagged, using=using)
                if len(raw["ts"]) > n:
                    keep = MinMaxLTTBDownsampler().downsample(raw["ts"], raw["value"], n_out=n).astype(np.int64)
                    raw = {name: column[keep] for name, column in raw.items()}
                return _raw_series(channel_id, LTTB, raw, include_flagged)
    level = fitting[-1] if fitting else 0
    return _tier_series(channel_id, start, end, n, level, ctx, using)


def _raw_series(channel_id: int, source: str, raw: dict[str, np.ndarray], include_flagged: bool) -> Series:
    return Series(
        channel_id=channel_id,
        source=source,
        t=raw["ts"],
        value=raw["value"],
        quality=raw["quality"] if include_flagged else None,
    )


def _estimated_readings(
    channel_id: int, start: int, end: int, include_flagged: bool, ctx: _ChannelContext, using: str
) -> int:
    """Readings in the range as counted by the finest tier (whole buckets; pending spans counted whole)."""
    w = WIDTHS[0]
    buckets = fetch_buckets(channel_id, TIERS[0], floor_to(start, w), end, using=using)
    counted = int(buckets.count.sum() + (buckets.flagged.sum() if include_flagged else 0))
    return counted + sum(_raw_count(channel_id, a, b + 1, using) for a, b in ctx.holes if a < end and b >= start)


def _raw_count(channel_id: int, lo: int, hi: int, using: str) -> int:
    if blocks.has_blocks(channel_id, lo, hi, using=using):
        return sum(len(c["ts"]) for c in blocks.iter_readings(channel_id, lo, hi, text=False, using=using))
    return Sample.objects.using(using).filter(channel_id=channel_id, ts__gte=lo, ts__lt=hi).count()


def _tier_series(channel_id: int, start: int, end: int, n: int, level: int, ctx: _ChannelContext, using: str) -> Series:
    w = WIDTHS[level]
    # Groups of m buckets: at most n of them intersect [start, end).
    m = max(1, ceil_to(end - start, w * max(1, n - 1)) // (w * max(1, n - 1)))
    group = m * w
    lo = floor_to(start, group)
    buckets, stale = tier_buckets(channel_id, level, lo, end, ctx, using)
    grouped = combine(buckets, group) if m > 1 else buckets
    grouped = grouped.select(grouped.count > 0)
    return Series(
        channel_id=channel_id,
        source=TIER,
        t=grouped.bucket,
        mean=grouped.mean,
        min=grouped.min_value,
        max=grouped.max_value,
        count=grouped.count,
        tier=TIERS[level],
        bucket_us=group,
        stale=stale,
    )


def tier_buckets(
    channel_id: int, level: int, lo: int, hi: int, ctx: _ChannelContext, using: str = "default"
) -> tuple[Buckets, bool]:
    """The channel's buckets of tier ``level`` starting in [lo, hi), with the ones a pending backlog span
    touches recomputed from raw readings (unless the span is huge: then ``stale`` is True)."""
    w = WIDTHS[level]
    stored = fetch_buckets(channel_id, TIERS[level], lo, hi, using=using)
    fresh: list[Buckets] = []
    replaced = np.zeros(len(stored), dtype=bool)
    stale = False
    budget = HOLE_MAX_ROWS
    for a, b in ctx.holes:
        h_lo, h_hi = max(floor_to(a, w), lo), min(floor_to(b, w) + w, hi)
        if ctx.raw_kept_from is not None:
            h_lo = max(h_lo, ceil_to(ctx.raw_kept_from, w))
        if h_lo >= h_hi:
            continue
        raw = fetch_raw(channel_id, h_lo, h_hi, include_flagged=True, limit=budget + 1, using=using)
        if len(raw["ts"]) > budget:
            stale = True
            continue
        budget -= len(raw["ts"])
        fresh.append(aggregate_raw(raw["ts"], raw["value"], raw["quality"], w))
        replaced |= (stored.bucket >= h_lo) & (stored.bucket < h_hi)
    if not fresh:
        return stored, stale
    merged = Buckets.concat([stored.select(~replaced), *fresh])
    order = np.argsort(merged.bucket, kind="stable")
    return merged.select(order), stale


# --- raw readings ---------------------------------------------------------------------------------

_RAW_COLUMNS = (("ts", I8), ("value", F8), ("quality", I8))


def fetch_raw(
    channel_id: int,
    start: int,
    end: int,
    *,
    include_flagged: bool = False,
    limit: int | None = None,
    using: str = "default",
) -> dict[str, np.ndarray]:
    """One channel's readings in [start, end) µs ordered by time: {"ts", "value", "quality"} arrays, from
    the hot rows and (where there are any) the compressed blocks."""
    if blocks.has_blocks(channel_id, start, end, using=using):
        return blocks.read_readings(
            channel_id, start, end, include_flagged=include_flagged, limit=limit, text=False, using=using
        )
    table = connections[using].ops.quote_name(Sample._meta.db_table)
    sql = (
        f"SELECT ts, value, quality FROM {table} WHERE channel_id = %s AND ts >= %s AND ts < %s"
        + ("" if include_flagged else f" AND quality = {int(Quality.OK)}")
        + " ORDER BY ts"
        + (f" LIMIT {int(limit)}" if limit is not None else "")
    )
    return fetch_columns(sql, [channel_id, start, end], _RAW_COLUMNS, using=using)


def iter_raw(
    channel_id: int,
    start: int,
    end: int,
    *,
    include_flagged: bool = True,
    chunk_rows: int = 100_000,
    using: str = "default",
) -> Iterator[dict[str, np.ndarray]]:
    """A channel's readings in [start, end) in chunks of ``chunk_rows``, in constant memory (exports)."""
    if blocks.has_blocks(channel_id, start, end, using=using):
        return blocks.iter_readings(
            channel_id, start, end, text=False, include_flagged=include_flagged, chunk_rows=chunk_rows, using=using
        )
    return iter_chunks(
        Sample._meta.db_table,
        _RAW_COLUMNS,
        channel_id=channel_id,
        start=start,
        end=end,
        chunk_rows=chunk_rows,
        extra_where="" if include_flagged else f"quality = {int(Quality.OK)}",
        using=using,
    )


def latest_values(instrument_id: int, *, using: str = "default") -> list[dict]:
    """The latest reading of each of an instrument's channels, in one query: ``ingest_samples`` keeps it
    on the channel row (moved forward only; moved back by ``delete_readings``)."""
    rows = (
        Channel.objects.using(using)
        .filter(instrument_id=instrument_id)
        .order_by("slug")
        .values_list("id", "slug", "name", "kind", "units", "last_ts", "last_value", "last_text", "last_quality")
    )
    return [
        {
            "id": pk,
            "slug": slug,
            "name": name,
            "kind": kind,
            "units": units,
            "ts": last_ts,
            "value": (text if kind == ChannelKind.TEXT else value) if last_ts is not None else None,
            "quality": quality,
        }
        for pk, slug, name, kind, units, last_ts, value, text, quality in rows
    ]
