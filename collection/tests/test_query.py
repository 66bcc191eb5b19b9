"""The query service: raw when few, LTTB between tiers, tiers when many; spikes always in the envelope."""

from __future__ import annotations

import numpy as np
import pytest

from collection.choices import Quality
from collection.models import RollupBacklog, RollupState, Sample
from collection.services.query import LTTB, RAW, TIER, query_series
from collection.services.rollups import rebuild_rollups
from collection.tests.readings import SECOND, T0, ingest, refresh_all
from instruments.tests.factories import make_channel

pytestmark = pytest.mark.django_db

DAY = 86400 * SECOND


@pytest.fixture
def two_days(django_capture_on_commit_callbacks):
    """A channel read every 2 s for two days, with one spike; rollups up to date."""
    channel = make_channel(valid_min=-1000, valid_max=1000)
    ts = T0 + np.arange(0, 2 * 86400, 2) * SECOND
    values = np.sin(np.arange(len(ts)) / 300.0)
    values[50_000] = 900.0  # one spike
    ingest(django_capture_on_commit_callbacks, channel.pk, ts, values)
    refresh_all()
    return channel, ts, values


def one(channel, start, end, n, **kwargs):
    (series,) = query_series([channel.pk], start, end, n, **kwargs)
    return series


def test_few_readings_come_back_raw(two_days):
    channel, ts, values = two_days
    series = one(channel, T0 + 10 * SECOND, T0 + 60 * SECOND, 100)
    assert series.source == RAW
    assert series.t.tolist() == ts[5:30].tolist()
    assert series.value.tolist() == values[5:30].tolist()


def test_exactly_max_points_readings_are_still_raw(two_days):
    channel, _, _ = two_days
    assert one(channel, T0, T0 + 200 * SECOND, 100).source == RAW
    assert one(channel, T0, T0 + 201 * SECOND, 100).source != RAW


def test_between_raw_and_the_finest_tier_minmax_lttb_picks_raw_readings(two_days):
    channel, ts, values = two_days
    # 1,200 readings over 40 min: more than 500 points, but 10 s buckets would give only 240 (< 500 / 2).
    series = one(channel, T0, T0 + 2400 * SECOND, 500)
    assert series.source == LTTB
    assert len(series) == 500
    picked = np.searchsorted(ts, series.t)
    assert np.array_equal(ts[picked], series.t) and np.array_equal(values[picked], series.value)


def test_many_readings_come_from_the_coarsest_tier_that_fills_the_points(two_days):
    channel, _, _ = two_days
    series = one(channel, T0, T0 + 2 * DAY, 1000)
    # 2 days / 1,000 points: 10 min buckets would give 288, 1 min buckets 2,880 -> 1 min, 3 per point.
    assert series.source == TIER and series.tier == 60
    assert series.bucket_us == 3 * 60 * SECOND
    assert len(series) <= 1000
    assert int(series.count.sum()) == 86400
    assert np.all(series.t % series.bucket_us == 0)


def test_a_one_reading_spike_survives_every_resolution(two_days):
    channel, ts, _ = two_days
    spike_at = int(ts[50_000])
    for start, end, n in [
        (T0, T0 + 2 * DAY, 50),
        (T0, T0 + 2 * DAY, 1000),
        (spike_at - 3600 * SECOND, spike_at + 3600 * SECOND, 100),
        (spike_at - 600 * SECOND, spike_at + 600 * SECOND, 100),
    ]:
        series = one(channel, start, end, n)
        peak = series.max if series.source == TIER else series.value
        assert peak.max() == 900.0, (series.source, series.tier)


def test_tier_envelope_and_mean_match_the_raw_readings(two_days):
    channel, ts, values = two_days
    series = one(channel, T0, T0 + DAY, 200)
    assert series.source == TIER
    width = series.bucket_us
    for i in [0, 57, len(series) - 1]:
        inside = (ts >= series.t[i]) & (ts < series.t[i] + width)
        assert series.count[i] == inside.sum()
        assert series.min[i] == values[inside].min() and series.max[i] == values[inside].max()
        assert series.mean[i] == pytest.approx(values[inside].mean(), rel=1e-12, abs=1e-12)


def test_flagged_readings_are_left_out_unless_asked_for(django_capture_on_commit_callbacks):
    channel = make_channel(valid_min=0, valid_max=10)
    ingest(django_capture_on_commit_callbacks, channel.pk, [T0, T0 + SECOND, T0 + 2 * SECOND], [1.0, 99.0, 3.0])
    plain = one(channel, T0, T0 + 10 * SECOND, 100)
    assert plain.value.tolist() == [1.0, 3.0] and plain.quality is None
    flagged = one(channel, T0, T0 + 10 * SECOND, 100, include_flagged=True)
    assert flagged.value.tolist() == [1.0, 99.0, 3.0]
    assert flagged.quality.tolist() == [Quality.OK, Quality.OUT_OF_RANGE, Quality.OK]


def test_readings_not_yet_rolled_up_are_in_the_answer(two_days, django_capture_on_commit_callbacks):
    """Right after an ingest, before any worker ran, a tier answer already includes the new readings."""
    channel, _, _ = two_days
    late = T0 + DAY + 1234 * SECOND + 500_000
    ingest(django_capture_on_commit_callbacks, channel.pk, [late], [-500.0])
    assert RollupBacklog.objects.filter(channel=channel).exists()
    series = one(channel, T0, T0 + 2 * DAY, 1000)
    assert series.source == TIER and series.min.min() == -500.0
    assert int(series.count.sum()) == 86400 + 1
    refresh_all()
    assert one(channel, T0, T0 + 2 * DAY, 1000).as_dict().keys() == series.as_dict().keys()
    fresh = one(channel, T0, T0 + 2 * DAY, 1000)
    assert np.array_equal(fresh.min, series.min) and np.array_equal(fresh.count, series.count)


def test_several_channels_each_get_their_own_resolution(two_days, django_capture_on_commit_callbacks):
    channel, _, _ = two_days
    sparse = make_channel(channel.instrument)
    ingest(django_capture_on_commit_callbacks, sparse.pk, [T0 + DAY], [4.0])
    dense, few = query_series([channel.pk, sparse.pk], T0, T0 + 2 * DAY, 300)
    assert (dense.source, few.source) == (TIER, RAW)
    assert few.t.tolist() == [T0 + DAY]


def test_where_retention_removed_raw_readings_the_tiers_answer(two_days):
    channel, _, _ = two_days
    RollupState.objects.filter(channel=channel).update(raw_kept_from=T0 + DAY)
    Sample.objects.filter(channel=channel, ts__lt=T0 + DAY).delete()
    series = one(channel, T0, T0 + 600 * SECOND, 100)
    assert series.source == TIER and series.tier == 10
    assert int(series.count.sum()) == 300


def test_an_empty_range_is_an_empty_raw_answer(two_days):
    channel, _, _ = two_days
    series = one(channel, T0 - DAY, T0, 100)
    assert series.source == RAW and len(series) == 0


def test_the_bulk_rebuild_matches_incremental_maintenance(two_days):
    channel, _, _ = two_days
    before = one(channel, T0, T0 + 2 * DAY, 700)
    rebuild_rollups([channel.pk])
    after = one(channel, T0, T0 + 2 * DAY, 700)
    assert np.array_equal(before.t, after.t) and np.array_equal(before.max, after.max)
    assert np.allclose(before.mean, after.mean)


def test_bad_arguments_are_refused(two_days):
    channel, _, _ = two_days
    with pytest.raises(ValueError):
        one(channel, T0, T0, 100)
    with pytest.raises(ValueError):
        one(channel, T0, T0 + DAY, 1)
