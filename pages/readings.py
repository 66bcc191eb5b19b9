"""What the collaborators' pages read from the readings, always through the query service."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from django.utils.html import format_html

from collection.models import RollupState
from collection.services.query import fetch_raw, query_series
from collection.services.rollups import TIERS, fetch_buckets
from instruments.choices import ChannelKind
from instruments.units import display_choices

SPARK_WIDTH, SPARK_HEIGHT, SPARK_POINTS = 120, 28, 60
DAY_US = 86_400 * 1_000_000
EARLIEST_US, LATEST_US = -(2**62), 2**62


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    span = hi - lo or 1.0
    return SPARK_HEIGHT - 2 - (values - lo) / span * (SPARK_HEIGHT - 4)


def sparkline_svg(
    t: np.ndarray, line: np.ndarray, low: np.ndarray | None, high: np.ndarray | None, start: int, end: int
):
    """A small inline SVG: the line, and the min-max band when the answer is downsampled."""
    if len(t) < 2:
        return ""
    lo = float(np.nanmin(low if low is not None else line))
    hi = float(np.nanmax(high if high is not None else line))
    x = (t - start) / max(1, end - start) * SPARK_WIDTH
    points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(x, _scale(line, lo, hi), strict=True))
    band = ""
    if low is not None and high is not None:
        outline = list(zip(x, _scale(high, lo, hi), strict=True)) + list(
            zip(x[::-1], _scale(low, lo, hi)[::-1], strict=True)
        )
        band = format_html('<polygon class="band" points="{}"/>', " ".join(f"{a:.1f},{b:.1f}" for a, b in outline))
    return format_html(
        '<svg class="sparkline" width="{}" height="{}" viewBox="0 0 {} {}" role="img" aria-label="{}">{}'
        '<polyline points="{}"/></svg>',
        SPARK_WIDTH,
        SPARK_HEIGHT,
        SPARK_WIDTH,
        SPARK_HEIGHT,
        "trend over the last day of readings",
        band,
        points,
    )


def first_reading_times(channel_ids: Sequence[int]) -> dict[int, int]:
    """When each channel's readings begin (µs), for the plot's "All" range: one index seek per channel
    through the query service; where retention removed the oldest raw readings, the first day bucket."""
    kept_from = dict(
        RollupState.objects.filter(channel_id__in=channel_ids, raw_kept_from__isnull=False).values_list(
            "channel_id", "raw_kept_from"
        )
    )
    first = {}
    for channel_id in channel_ids:
        kept = kept_from.get(channel_id)  # never None: raw_kept_from__isnull=False
        if kept is not None:
            buckets = fetch_buckets(channel_id, TIERS[-1], EARLIEST_US, kept)
            if len(buckets.bucket):
                first[channel_id] = int(buckets.bucket[0])
                continue
        raw = fetch_raw(channel_id, EARLIEST_US, LATEST_US, include_flagged=True, limit=1)
        if len(raw["ts"]):
            first[channel_id] = int(raw["ts"][0])
    return first


def channel_facts(channel, first_ts: int | None = None) -> dict:
    """What the plot script needs to know about a channel (``instrument`` should be select_related)."""
    return {
        "id": channel.pk,
        "name": channel.name,
        "slug": channel.slug,
        "instrument": channel.instrument.name,
        "instrumentSlug": channel.instrument.slug,
        "units": channel.units,
        "unitChoices": list(display_choices(channel.units)),
        "kind": channel.kind,
        "lastTs": channel.last_ts,
        "firstTs": first_ts,
    }


def sparklines(channels: Sequence) -> dict[int, str]:
    """channel id -> an SVG trend of the day up to the instrument's latest reading (one query service call)."""
    numeric = [c for c in channels if c.kind != ChannelKind.TEXT and c.last_ts is not None]
    if not numeric:
        return {}
    end = max(c.last_ts for c in numeric) + 1
    start = end - DAY_US
    out = {}
    for series in query_series([c.pk for c in numeric], start, end, SPARK_POINTS):
        if series.mean is not None:
            out[series.channel_id] = sparkline_svg(series.t, series.mean, series.min, series.max, start, end)
        else:
            assert series.value is not None  # a raw series (no buckets) has values
            out[series.channel_id] = sparkline_svg(series.t, series.value, None, None, start, end)
    return out
