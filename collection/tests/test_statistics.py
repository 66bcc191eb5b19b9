"""Range statistics from tiers (and raw edges) equal numpy computed over the raw readings."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collection.models import RollupState, Sample
from collection.services.rollups import WIDTHS
from collection.services.statistics import cover, range_statistics
from collection.tests.readings import SECOND, T0, ingest, refresh_all, stored_raw
from instruments.tests.factories import make_channel

pytestmark = pytest.mark.django_db

DAY = 86400 * SECOND


@pytest.fixture
def channel(django_capture_on_commit_callbacks):
    """Three days of irregular readings around a large offset (where a naive variance would cancel out)."""
    channel = make_channel(valid_min=-1e9, valid_max=1e9, missing_values=[-9999])
    rng = np.random.default_rng(8)
    ts = np.unique(T0 + rng.integers(0, 3 * DAY, size=30_000))
    values = 1e6 + rng.normal(0, 2, size=len(ts))
    values[rng.integers(0, len(ts), size=50)] = -9999  # flagged: not in the statistics
    ingest(django_capture_on_commit_callbacks, channel.pk, ts, values)
    refresh_all()
    return channel


def expected(channel_id: int, start: int, end: int) -> dict:
    ts, value, quality = stored_raw(channel_id)
    inside = (ts >= start) & (ts < end)
    ok = value[inside & (quality == 0)]
    return {
        "count": len(ok),
        "flagged": int((inside & (quality != 0)).sum()),
        "values": ok,
    }


def check(stats, want, percentiles=()) -> None:
    values = want["values"]
    assert (stats.count, stats.flagged) == (want["count"], want["flagged"])
    if not len(values):
        assert stats.min is None and stats.mean is None
        return
    assert (stats.min, stats.max) == (values.min(), values.max())
    assert stats.mean == pytest.approx(values.mean(), rel=1e-12)
    if len(values) > 1:
        assert stats.std == pytest.approx(values.std(ddof=1), rel=1e-6)
    for p in percentiles:
        assert stats.percentiles[f"p{p:g}"] == pytest.approx(np.percentile(values, p), rel=1e-12)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=st.integers(min_value=-DAY, max_value=4 * DAY), length=st.integers(min_value=1, max_value=4 * DAY))
def test_statistics_over_any_range_equal_numpy_on_the_raw_readings(channel, a, length):
    start, end = T0 + a, T0 + a + length
    (stats,) = range_statistics([channel.pk], start, end, percentiles=[5, 50, 99.5])
    check(stats, expected(channel.pk, start, end), percentiles=[5, 50, 99.5])


def test_long_ranges_are_answered_from_tiers_reading_only_the_edges_raw(channel):
    start, end = T0 + 1234567, T0 + 3 * DAY - 7654321
    (stats,) = range_statistics([channel.pk], start, end)
    want = expected(channel.pk, start, end)
    check(stats, want)
    assert stats.buckets_read < 100
    assert stats.raw_readings_read < 0.01 * want["count"]


def test_percentiles_read_the_raw_readings(channel):
    (stats,) = range_statistics([channel.pk], T0, T0 + DAY, percentiles=[50])
    assert stats.raw_readings_read >= stats.count > 0


def test_readings_still_in_the_backlog_are_counted(channel, django_capture_on_commit_callbacks):
    ingest(django_capture_on_commit_callbacks, channel.pk, [T0 + DAY + 17], [2e6])
    (stats,) = range_statistics([channel.pk], T0, T0 + 3 * DAY)
    check(stats, expected(channel.pk, T0, T0 + 3 * DAY))
    assert stats.max == 2e6


def test_after_retention_the_tiers_still_describe_the_past(channel):
    before = range_statistics([channel.pk], T0, T0 + 2 * DAY)[0]
    RollupState.objects.filter(channel=channel).update(raw_kept_from=T0 + DAY)
    Sample.objects.filter(channel=channel, ts__lt=T0 + DAY).delete()
    after = range_statistics([channel.pk], T0, T0 + 2 * DAY)[0]
    assert (after.count, after.min, after.max) == (before.count, before.min, before.max)
    assert after.std == pytest.approx(before.std, rel=1e-9)
    assert after.raw_available_from == T0 + DAY


def test_an_empty_range_has_a_count_of_zero(channel):
    (stats,) = range_statistics([channel.pk], T0 - 2 * DAY, T0 - DAY, percentiles=[50])
    assert stats.as_dict()["count"] == 0 and stats.percentiles == {"p50": None}


def test_the_cover_tiles_the_range_with_whole_buckets():
    start, end = T0 + 3_333_333, T0 + 2 * DAY + 45 * 60 * SECOND + 7
    pieces = cover(start, end)
    assert pieces[0][1] == start and pieces[-1][2] == end
    assert all(a[2] == b[1] for a, b in itertools.pairwise(pieces))
    for level, lo, hi in pieces:
        if level is not None:
            assert lo % WIDTHS[level] == 0 and hi % WIDTHS[level] == 0
        else:
            assert hi - lo < WIDTHS[0]
