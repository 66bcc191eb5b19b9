"""Rollup tiers: always equal to a from-scratch summary of the stored readings, however they arrived."""

from __future__ import annotations

import math
import random
import sys

import numpy as np
import pytest
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collection.choices import Quality, RollupTier
from collection.models import Rollup, RollupBacklog, RollupState
from collection.services import pending
from collection.services.retention import delete_readings
from collection.services.rollups import (
    aggregate_raw,
    combine,
    mark_changed,
    rebuild_rollups,
    refresh_channel,
    refresh_rollups,
)
from collection.tests.held import HeldTransaction
from collection.tests.readings import SECOND, T0, ingest, refresh_all, stored_raw, stored_tiers
from conftest import celery_argv, wait_for
from instruments.choices import ChannelKind
from instruments.tests.factories import make_channel, make_instrument

pytestmark = pytest.mark.django_db

SENTINEL = -9999.0


def reference_tiers(ts: np.ndarray, value: np.ndarray, quality: np.ndarray) -> dict[tuple[int, int], tuple]:
    """The tiers computed the obvious way, reading by reading, with floor division: the oracle."""
    out = {}
    for tier in RollupTier.values:
        width = tier * SECOND
        groups: dict[int, list[tuple[int, float, int]]] = {}
        for t, v, q in zip(ts.tolist(), value.tolist(), quality.tolist(), strict=True):
            groups.setdefault((t // width) * width, []).append((t, v, q))
        for bucket, rows in groups.items():
            ok = [(t, v) for t, v, q in rows if q == Quality.OK]
            n = len(ok)
            values = [v for _, v in ok]
            mean = math.fsum(values) / n if n else 0.0
            out[(tier, bucket)] = (
                n,
                len(rows) - n,
                min(values) if n else None,
                max(values) if n else None,
                math.fsum(values),
                math.fsum((v - mean) ** 2 for v in values),
                min(t for t, _ in ok) if n else None,
                max(t for t, _ in ok) if n else None,
            )
    return out


def assert_tiers_equal(stored: dict, expected: dict) -> None:
    assert stored.keys() == expected.keys()
    for key, want in expected.items():
        got = stored[key]
        count, flagged, vmin, vmax, total, m2, first, last = got
        assert (count, flagged, vmin, vmax, first, last) == (want[0], want[1], want[2], want[3], want[6], want[7]), key
        assert total == pytest.approx(want[4], rel=1e-9, abs=1e-6), key
        assert m2 == pytest.approx(want[5], rel=1e-7, abs=1e-6), key


# --- the property ---------------------------------------------------------------------------------

# Readings on a few days' grid, with repeats (duplicates), values sometimes out of range or a sentinel.
offsets = st.one_of(
    st.integers(min_value=0, max_value=3 * 86400 * SECOND),
    st.sampled_from([0, 1, 9 * SECOND + 999_999, 10 * SECOND, 59 * SECOND, 3600 * SECOND, 86400 * SECOND - 1]),
)
values = st.one_of(
    st.floats(min_value=-50, max_value=150, allow_nan=False),
    st.just(SENTINEL),
    st.integers(min_value=-3, max_value=3).map(float),
)
batches = st.lists(st.tuples(offsets, values), min_size=1, max_size=40)
operation = st.one_of(
    st.tuples(st.just("ingest"), batches),
    st.tuples(st.just("delete"), offsets, st.integers(min_value=1, max_value=86400 * SECOND)),
    st.tuples(st.just("refresh"), st.sampled_from([None, 1, 7])),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    base=st.sampled_from([T0, -86400 * SECOND - 123_456]),  # the second one starts before 1970
    operations=st.lists(operation, min_size=1, max_size=8),
)
def test_tiers_equal_a_from_scratch_summary_after_any_history(django_capture_on_commit_callbacks, base, operations):
    channel = make_channel(valid_min=-10, valid_max=100, missing_values=[SENTINEL])
    for op in operations:
        if op[0] == "ingest":
            ts = [base + offset for offset, _ in op[1]]
            ingest(django_capture_on_commit_callbacks, channel.pk, ts, [v for _, v in op[1]])
        elif op[0] == "delete":
            start = base + op[1]
            with django_capture_on_commit_callbacks(execute=True):
                delete_readings([channel], start, start + op[2], reason="test")
            channel.refresh_from_db()
        else:
            # A refresh may run between any two changes, and may be cut short by its row budget.
            refresh_rollups(max_rows=op[1]) if op[1] else refresh_rollups()
    refresh_all()
    assert not RollupBacklog.objects.filter(channel=channel).exists()
    ts, value, quality = stored_raw(channel.pk)
    expected = reference_tiers(ts, value, quality)
    assert_tiers_equal(stored_tiers(channel.pk), expected)
    # And a rebuild from scratch gives the same buckets.
    rebuild_rollups([channel.pk])
    assert_tiers_equal(stored_tiers(channel.pk), expected)


# Many channels refreshed together (``recompute_many``): readings close together (one short span per
# channel, the batch) and far apart (a channel refreshed alone), in any order, with any row budget.
near = st.integers(min_value=0, max_value=70 * SECOND)
many_operation = st.one_of(
    st.tuples(st.just("ingest"), st.integers(0, 3), st.lists(st.tuples(near, values), min_size=1, max_size=20)),
    st.tuples(st.just("ingest"), st.integers(0, 3), batches),
    st.tuples(st.just("delete"), st.integers(0, 3), near, st.integers(min_value=1, max_value=30 * SECOND)),
    st.tuples(st.just("refresh"), st.sampled_from([None, 1, 7, 30])),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(many_operation, min_size=1, max_size=10))
def test_channels_refreshed_together_equal_a_from_scratch_summary(django_capture_on_commit_callbacks, operations):
    instrument = make_instrument()
    channels = [make_channel(instrument, valid_min=-10, valid_max=100, missing_values=[SENTINEL]) for _ in range(4)]
    for op in operations:
        if op[0] == "ingest":
            ts = [T0 + offset for offset, _ in op[2]]
            ingest(django_capture_on_commit_callbacks, channels[op[1]].pk, ts, [v for _, v in op[2]])
        elif op[0] == "delete":
            with django_capture_on_commit_callbacks(execute=True):
                delete_readings([channels[op[1]]], T0 + op[2], T0 + op[2] + op[3], reason="test")
        else:
            refresh_rollups(max_rows=op[1]) if op[1] else refresh_rollups()
    refresh_all()
    assert not RollupBacklog.objects.exists()
    for channel in channels:
        ts, value, quality = stored_raw(channel.pk)
        assert_tiers_equal(stored_tiers(channel.pk), reference_tiers(ts, value, quality))


def test_channels_whose_short_spans_lost_every_reading_are_refreshed_together(django_capture_on_commit_callbacks):
    """Every reading of the batch's spans deleted: no bucket left in any tier (an empty read of the tier
    below, which once failed the whole refresh and so left the backlog stuck)."""
    instrument = make_instrument()
    channels = [make_channel(instrument) for _ in range(3)]
    for channel in channels:
        ingest(django_capture_on_commit_callbacks, channel.pk, [T0, T0 + 5 * SECOND], [1.0, 2.0])
    refresh_all()
    with django_capture_on_commit_callbacks(execute=True):
        delete_readings(channels, T0, T0 + 10 * SECOND, reason="test")
    result = refresh_rollups()
    assert (result.channels, result.spans, result.remaining) == (3, 3, False)
    assert not Rollup.objects.filter(channel__in=channels).exists()
    assert not RollupBacklog.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_refreshing_many_channels_costs_the_statements_of_a_few(django_capture_on_commit_callbacks):
    """A worker behind a thousand agents refreshes thousands of channels read every second: their short
    spans are recomputed together, in statements that do not grow with the number of channels."""
    from django.test.utils import CaptureQueriesContext

    instrument = make_instrument()
    statements = {}
    for n in (5, 40):
        channels = [make_channel(instrument) for _ in range(n)]
        for step in range(3):  # three requests' worth of backlog per channel, a second apart
            for channel in channels:
                ingest(django_capture_on_commit_callbacks, channel.pk, [T0 + step * SECOND], [float(step)])
        with CaptureQueriesContext(connection) as queries:
            result = refresh_rollups()
        assert (result.channels, result.spans, result.remaining) == (n, n, False)
        statements[n] = len(queries.captured_queries)
        for channel in channels:
            ts, value, quality = stored_raw(channel.pk)
            assert_tiers_equal(stored_tiers(channel.pk), reference_tiers(ts, value, quality))
    # At most 30 for the refresh, and 6 for taking up the channels' pending spans first (SQLite, MariaDB:
    # BEGIN, their read, their clearing, the two backlogs' inserts, COMMIT).
    assert statements[40] == statements[5] <= 36, statements


# --- pieces ---------------------------------------------------------------------------------------


def test_flagged_readings_are_counted_but_not_summarised(django_capture_on_commit_callbacks):
    channel = make_channel(valid_min=0, valid_max=100, missing_values=[SENTINEL])
    ingest(django_capture_on_commit_callbacks, channel.pk, [T0, T0 + SECOND, T0 + 2 * SECOND], [5.0, 500.0, SENTINEL])
    refresh_all()
    bucket = Rollup.objects.get(channel=channel, tier=RollupTier.S10, bucket=T0)
    assert (bucket.count, bucket.flagged, bucket.min_value, bucket.max_value) == (1, 2, 5.0, 5.0)
    assert (bucket.first_ts, bucket.last_ts, bucket.mean) == (T0, T0, 5.0)


def test_a_bucket_of_only_flagged_readings_has_no_envelope(django_capture_on_commit_callbacks):
    channel = make_channel(valid_min=0, valid_max=1)
    ingest(django_capture_on_commit_callbacks, channel.pk, [T0], [50.0])
    refresh_all()
    bucket = Rollup.objects.get(channel=channel, tier=RollupTier.D1)
    assert (bucket.count, bucket.flagged, bucket.min_value, bucket.max_value, bucket.first_ts) == (
        0,
        1,
        None,
        None,
        None,
    )


def test_ingest_queues_numeric_channels_only(django_capture_on_commit_callbacks):
    instrument = make_instrument()
    numeric = make_channel(instrument)
    text = make_channel(instrument, kind=ChannelKind.TEXT)
    from collection.services import SampleBatch, ingest_samples

    with django_capture_on_commit_callbacks(execute=True):
        ingest_samples(SampleBatch.from_rows([(numeric.pk, T0, 1.0), (numeric.pk, T0 + 5, 2.0), (text.pk, T0, "on")]))
    pending.take_pending()  # on SQLite and MariaDB the spans wait on the channel rows until then
    assert list(RollupBacklog.objects.values_list("channel_id", "start_ts", "end_ts")) == [(numeric.pk, T0, T0 + 5)]


def test_a_late_reading_recomputes_only_the_buckets_it_falls_in(django_capture_on_commit_callbacks):
    channel = make_channel()
    ts = T0 + np.arange(0, 2 * 86400, 60) * SECOND
    ingest(django_capture_on_commit_callbacks, channel.pk, ts, np.ones(len(ts)))
    refresh_all()
    before = stored_tiers(channel.pk)
    late = T0 + 86400 * SECOND + 30 * SECOND  # between two stored readings, on the second day
    ingest(django_capture_on_commit_callbacks, channel.pk, [late], [7.0])
    result = refresh_rollups()
    assert result.raw_rows == 1  # the 10 s bucket it falls in held nothing else
    after = stored_tiers(channel.pk)
    changed = {key for key in after if after[key] != before.get(key)}
    assert changed == {(tier, late - late % (tier * SECOND)) for tier in RollupTier.values}


def test_refresh_is_bounded_and_leaves_the_rest_in_the_backlog(django_capture_on_commit_callbacks):
    channel = make_channel()
    ts = T0 + np.arange(5000) * SECOND
    ingest(django_capture_on_commit_callbacks, channel.pk, ts, np.arange(5000.0))
    from collection.services import rollups

    chunk = rollups.RAW_CHUNK_ROWS
    rollups.RAW_CHUNK_ROWS = 1000  # smaller chunks so that a budget of 1,500 rows stops inside the span
    try:
        first = refresh_channel(channel.pk, max_rows=1500)
    finally:
        rollups.RAW_CHUNK_ROWS = chunk
    assert first.remaining and first.raw_rows == 2000
    (start, end) = RollupBacklog.objects.filter(channel=channel).values_list("start_ts", "end_ts").get()
    assert (start, end) == (T0 + 1990 * SECOND, ts[-1])  # from the last, possibly incomplete, 10 s bucket
    refresh_all()
    ts_, value, quality = stored_raw(channel.pk)
    assert_tiers_equal(stored_tiers(channel.pk), reference_tiers(ts_, value, quality))


def test_spans_before_the_retention_watermark_are_not_recomputed(django_capture_on_commit_callbacks):
    channel = make_channel()
    ingest(django_capture_on_commit_callbacks, channel.pk, [T0, T0 + 86400 * SECOND], [1.0, 2.0])
    refresh_all()
    RollupState.objects.filter(channel=channel).update(raw_kept_from=T0 + 86400 * SECOND)
    # Raw readings before the watermark are gone; a span there must not wipe the tiers kept for it.
    mark_changed({channel.pk: (T0, T0 + 86400 * SECOND)})
    from collection.models import Sample

    Sample.objects.filter(channel=channel, ts__lt=T0 + 86400 * SECOND).delete()
    refresh_all()
    assert Rollup.objects.get(channel=channel, tier=RollupTier.D1, bucket=T0).count == 1


def test_combining_partial_summaries_equals_summarising_at_once():
    rng = np.random.default_rng(3)
    ts = np.sort(rng.choice(10**9, size=2000, replace=False)).astype(np.int64)
    value = rng.normal(1e4, 1, size=2000)
    quality = (rng.random(2000) < 0.1).astype(np.int64)
    width = 10**8
    whole = aggregate_raw(ts, value, quality, width)
    cut = 777
    parts = combine(
        aggregate_raw(ts[:cut], value[:cut], quality[:cut], width).__class__.concat(
            [
                aggregate_raw(ts[:cut], value[:cut], quality[:cut], width),
                aggregate_raw(ts[cut:], value[cut:], quality[cut:], width),
            ]
        ),
        width,
    )
    assert np.array_equal(parts.count, whole.count) and np.array_equal(parts.flagged, whole.flagged)
    assert np.array_equal(parts.min_value, whole.min_value) and np.array_equal(parts.max_value, whole.max_value)
    assert np.allclose(parts.m2, whole.m2, rtol=1e-9)


@pytest.mark.skipif(connection.vendor == "sqlite", reason="SQLite serialises writers: there is no row lock to skip")
@pytest.mark.django_db(transaction=True)
def test_a_channel_being_refreshed_elsewhere_is_skipped_not_waited_for():
    channel = make_channel()
    mark_changed({channel.pk: (T0, T0)})
    RollupState.objects.create(channel=channel)
    holder = HeldTransaction(lambda: list(RollupState.objects.select_for_update().filter(channel=channel)))
    try:
        assert refresh_channel(channel.pk) is None
        assert refresh_rollups().remaining
    finally:
        holder.commit()
    assert refresh_channel(channel.pk).spans == 1


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_brings_the_tiers_up_to_date(service_env, start_process):
    """Real processes end to end: a client process ingests (its on-commit receiver queues the refresh on
    Redis), a Celery worker recomputes the tiers; this test only watches the database."""
    channel = make_channel()
    worker = start_process("worker", celery_argv("worker", "--concurrency", "1", "--loglevel", "INFO"), service_env)
    rng = random.Random(5)
    ts = sorted({T0 + rng.randrange(0, 86400) * SECOND for _ in range(500)})
    script = (
        "import numpy as np; from collection.services import SampleBatch, ingest_samples; "
        f"ts = np.array({ts!r}); "
        f"ingest_samples(SampleBatch(np.full(len(ts), {channel.pk}), ts, np.arange(len(ts), dtype=float)))"
    )
    client = start_process("client", [sys.executable, "manage.py", "shell", "-c", script], service_env)
    wait_for(lambda: client.process.poll() is not None, timeout=60, message="the ingesting client to finish")
    assert client.process.returncode == 0, client.log()
    wait_for(
        lambda: (
            not RollupBacklog.objects.filter(channel=channel).exists()
            and Rollup.objects.filter(channel=channel, tier=RollupTier.D1).exists()
        ),
        timeout=60,
        message="the worker to drain the rollup backlog",
    )
    assert worker.process.poll() is None, worker.log()
    assert RollupState.objects.get(channel=channel).refreshed_at is not None
    t, value, quality = stored_raw(channel.pk)
    assert len(t) == len(ts)
    assert_tiers_equal(stored_tiers(channel.pk), reference_tiers(t, value, quality))


def test_the_rollups_command_refreshes_and_rebuilds(django_capture_on_commit_callbacks):
    from io import StringIO

    from django.core.management import call_command

    channel = make_channel()
    ingest(django_capture_on_commit_callbacks, channel.pk, [T0, T0 + 11 * SECOND], [1.0, 2.0])
    out = StringIO()
    call_command("rollups", "refresh", stdout=out)
    assert "Refreshed 1 span(s)" in out.getvalue() and not RollupBacklog.objects.exists()
    before = stored_tiers(channel.pk)
    Rollup.objects.filter(channel=channel, tier=RollupTier.D1).delete()
    call_command("rollups", "rebuild", "--instrument", channel.instrument.slug, stdout=out)
    assert stored_tiers(channel.pk) == before
    assert "Rebuilt the tiers of 1 channel(s) from 2 raw readings." in out.getvalue()


def test_readings_flagged_after_they_arrived_leave_the_tiers(django_capture_on_commit_callbacks):
    """Spike checks and "validate now" change quality flags after ingest: the tiers follow."""
    from collection.alarms.models import SpikeCheck
    from collection.services.validation import flag_spikes, revalidate

    channel = make_channel(units="degC")
    ts = [T0 + i * SECOND for i in range(6)]
    ingest(django_capture_on_commit_callbacks, channel.pk, ts, [10, 10.2, 25, 10.1, 10.3, 80])
    refresh_all()
    assert Rollup.objects.get(channel=channel, tier=RollupTier.S10, bucket=T0).max_value == 80
    SpikeCheck.objects.create(name="temperature spikes", units="degC", threshold=5)
    with django_capture_on_commit_callbacks(execute=True):
        assert flag_spikes({channel.pk: (ts[0], ts[-1])}) == 1  # 25 (80 awaits a successor)
    channel.valid_max = 50
    channel.save()
    with django_capture_on_commit_callbacks(execute=True):
        revalidate([channel.pk], since_us=T0)
    refresh_all()
    t, value, quality = stored_raw(channel.pk)
    assert quality.tolist() == [0, 0, Quality.SUSPECT, 0, 0, Quality.OUT_OF_RANGE]
    assert_tiers_equal(stored_tiers(channel.pk), reference_tiers(t, value, quality))
    bucket = Rollup.objects.get(channel=channel, tier=RollupTier.S10, bucket=T0)
    assert (bucket.count, bucket.flagged, bucket.max_value) == (4, 2, 10.3)
