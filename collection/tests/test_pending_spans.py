"""The channels' pending spans (``collection.services.pending``): on SQLite and MariaDB a small ingest notes
its follow-up work on the channel rows it already updates, the workers take it up into the backlogs once,
late readings far in the past keep backlog rows of their own, and readers treat pending spans as holes in
the tiers. PostgreSQL writes backlog rows in its fused statement: the tests that hold on every engine run
there too."""

from __future__ import annotations

import numpy as np
import pytest
from django.db import connection

from collection.alarms.choices import RuleKind
from collection.alarms.models import AlarmEvent, AlarmRule
from collection.alarms.tasks import replay_follow_ups
from collection.models import FollowUpBacklog, RollupBacklog
from collection.services import SampleBatch, ingest_samples
from collection.services.pending import INGESTED, PENDING_REACH_US, pending_spans, take_pending
from collection.services.query import TIER, query_series
from collection.tests.held import HeldTransaction
from collection.tests.readings import SECOND, T0, ingest, refresh_all
from daqbroker_agent.parsing import now_us
from instruments.choices import ChannelKind
from instruments.models import Channel
from instruments.tests.factories import make_channel, make_instrument

pytestmark = pytest.mark.django_db
POSTGRESQL = connection.vendor == "postgresql"
noted_on_rows = pytest.mark.skipif(POSTGRESQL, reason="PostgreSQL writes backlog rows in its fused statement")


def backlog() -> list[tuple[int, int, int]]:
    rows = RollupBacklog.objects.order_by("channel_id", "start_ts")
    return list(rows.values_list("channel_id", "start_ts", "end_ts"))


def follow_ups() -> list[tuple[dict, str]]:
    return list(FollowUpBacklog.objects.order_by("id").values_list("spans", "origin"))


def text_batch(channel, ts: int, value: str) -> SampleBatch:
    return SampleBatch(np.array([channel.pk]), np.array([ts]), np.array([value], dtype=object))


@noted_on_rows
def test_readings_near_the_latest_widen_the_pending_span_and_write_no_backlog_row(django_capture_on_commit_callbacks):
    instrument = make_instrument()
    numeric, text = make_channel(instrument), make_channel(instrument, kind=ChannelKind.TEXT)
    ingest(django_capture_on_commit_callbacks, numeric.pk, [T0, T0 + 5 * SECOND], [1.0, 2.0])
    ingest_samples(text_batch(text, T0 + SECOND, "on"))
    ingest(django_capture_on_commit_callbacks, numeric.pk, [T0 + 10 * SECOND], [3.0])
    ingest(django_capture_on_commit_callbacks, numeric.pk, [T0 + 7 * SECOND], [4.0])  # late, but near
    assert pending_spans([numeric.pk, text.pk]) == {numeric.pk: (T0, T0 + 10 * SECOND), text.pk: (T0 + SECOND,) * 2}
    assert backlog() == [] and follow_ups() == []


def test_a_late_reading_far_in_the_past_keeps_backlog_rows_of_its_own(django_capture_on_commit_callbacks):
    channel = make_channel()
    latest = T0 + 86_400 * SECOND
    ingest(django_capture_on_commit_callbacks, channel.pk, [latest], [1.0])
    take_pending()
    RollupBacklog.objects.all().delete()
    FollowUpBacklog.objects.all().delete()
    near, beyond = latest - PENDING_REACH_US, latest - PENDING_REACH_US - 1
    ingest(django_capture_on_commit_callbacks, channel.pk, [near], [2.0])  # as far back as a pending span reaches
    ingest(django_capture_on_commit_callbacks, channel.pk, [beyond], [2.5])  # one µs further back
    ingest(django_capture_on_commit_callbacks, channel.pk, [T0], [3.0])  # a day late
    if POSTGRESQL:
        assert backlog() == [(channel.pk, T0, T0), (channel.pk, beyond, beyond), (channel.pk, near, near)]
    else:
        assert backlog() == [(channel.pk, T0, T0), (channel.pk, beyond, beyond)]  # no span stretched over the day
        assert pending_spans([channel.pk]) == {channel.pk: (near, near)}
    assert follow_ups()[-1] == ({str(channel.pk): [T0, T0]}, "internal")


@noted_on_rows
def test_taking_up_moves_each_span_into_both_backlogs_once(django_capture_on_commit_callbacks):
    instrument = make_instrument()
    numeric, text = make_channel(instrument), make_channel(instrument, kind=ChannelKind.TEXT)
    ingest(django_capture_on_commit_callbacks, numeric.pk, [T0, T0 + 5 * SECOND], [1.0, 2.0])
    ingest_samples(text_batch(text, T0 + SECOND, "on"))
    assert take_pending() == (1, 2)  # rollups for the numeric channel only; follow-ups for both
    assert pending_spans([numeric.pk, text.pk]) == {}
    assert backlog() == [(numeric.pk, T0, T0 + 5 * SECOND)]
    assert follow_ups() == [({str(numeric.pk): [T0, T0 + 5 * SECOND], str(text.pk): [T0 + SECOND] * 2}, INGESTED)]
    assert take_pending() == (0, 0)
    ingest(django_capture_on_commit_callbacks, numeric.pk, [T0 + 20 * SECOND], [3.0])
    assert take_pending(channel_ids=[text.pk]) == (0, 0)  # another channel's span stays
    assert take_pending(channel_ids=[numeric.pk]) == (1, 1)
    assert backlog() == [(numeric.pk, T0, T0 + 5 * SECOND), (numeric.pk, T0 + 20 * SECOND, T0 + 20 * SECOND)]


def test_the_follow_up_work_is_done_once(django_capture_on_commit_callbacks):
    channel = make_channel(slug="temp")
    AlarmRule.objects.create(name="hot", instrument=channel.instrument, kind=RuleKind.ABOVE, threshold=30)
    t0 = (now_us() // SECOND - 3600) * SECOND
    ingest(django_capture_on_commit_callbacks, channel.pk, [t0, t0 + SECOND], [20.0, 35.0])
    assert replay_follow_ups() == 1
    assert AlarmEvent.objects.filter(channel=channel).count() == 1
    assert replay_follow_ups() == 0  # nothing left, on the rows or in the backlog
    assert pending_spans([channel.pk]) == {} and follow_ups() == []


def test_a_query_reads_raw_readings_where_a_span_is_pending(django_capture_on_commit_callbacks):
    channel = make_channel(valid_min=-1000, valid_max=1000)
    ts = T0 + np.arange(0, 3600, 2) * SECOND
    ingest(django_capture_on_commit_callbacks, channel.pk, ts, np.zeros(len(ts)))
    refresh_all()
    newer = ts[-1] + 2 * SECOND
    ingest(django_capture_on_commit_callbacks, channel.pk, [newer], [-500.0])  # no worker runs
    (series,) = query_series([channel.pk], T0, newer + SECOND, 100)
    assert series.source == TIER and series.min.min() == -500.0 and int(series.count.sum()) == len(ts) + 1
    refresh_all()
    (fresh,) = query_series([channel.pk], T0, newer + SECOND, 100)
    assert np.array_equal(fresh.min, series.min) and np.array_equal(fresh.count, series.count)


def test_saving_a_channel_read_earlier_keeps_the_pending_span_written_since():
    channel = make_channel()
    read_earlier = Channel.objects.get(pk=channel.pk)
    Channel.objects.filter(pk=channel.pk).update(pending_from=T0, pending_to=T0 + SECOND)  # an ingest, meanwhile
    read_earlier.name = "renamed"
    read_earlier.save()
    assert Channel.objects.filter(pk=channel.pk).values_list("name", "pending_from", "pending_to").get() == (
        "renamed",
        T0,
        T0 + SECOND,
    )


def test_a_conflict_at_the_latest_time_leaves_the_last_value(django_capture_on_commit_callbacks):
    channel = make_channel()
    ingest(django_capture_on_commit_callbacks, channel.pk, [T0], [1.0])
    ingest(django_capture_on_commit_callbacks, channel.pk, [T0], [2.0])  # another value at the latest time
    ingest(django_capture_on_commit_callbacks, channel.pk, [T0 - SECOND], [3.0])  # late, near
    assert Channel.objects.filter(pk=channel.pk).values_list("last_ts", "last_value").get() == (T0, 1.0)


@pytest.mark.skipif(connection.vendor != "mysql", reason="row locks: MariaDB's (SQLite serialises writers)")
@pytest.mark.django_db(transaction=True)
def test_an_ingest_holding_a_channel_is_skipped_and_its_span_taken_next_time():
    channel = make_channel()
    writer = HeldTransaction(lambda: ingest_samples(SampleBatch.from_rows([(channel.pk, T0, 1.0)])))
    try:
        assert take_pending() == (0, 0)  # not waited for: the row is locked by the ingest
    finally:
        writer.commit()
    assert take_pending() == (1, 1)
    assert backlog() == [(channel.pk, T0, T0)]
