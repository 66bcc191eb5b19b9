"""ingest_samples, the one write path for readings: what it stores, flags, rejects, and tells others."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from collection import storage
from collection.choices import Origin, Quality
from collection.models import RejectedSample, Sample, TextSample
from collection.services import Rejection, SampleBatch, ingest_samples, samples_ingested
from daqbroker_agent.parsing import datetime_to_us, us_to_datetime
from instruments.choices import ChannelKind
from instruments.models import Channel
from instruments.tests.factories import make_channel, make_instrument, make_source

pytestmark = pytest.mark.django_db

T0 = datetime_to_us(datetime(2024, 5, 6, 7, 0, 0, tzinfo=UTC))
SECOND = 1_000_000

REASON_UNKNOWN = "unknown channel, or not one the sender may write to"
REASON_DERIVED = "derived channels are computed by the server and cannot be written"
REASON_TIME = "timestamp outside the accepted window (after 1900 and at most 86400 s in the future)"
REASON_NOT_NUMBER = "value is not a number, and the channel is numeric"
REASON_NOT_FINITE = "value is not a finite number (NaN or infinity)"
REASON_EMPTY = "value is empty"


@pytest.fixture(autouse=True)
def fixed_settings(settings):
    settings.DAQBROKER_MAX_FUTURE_SECONDS = 86400


@pytest.fixture
def instrument():
    return make_instrument()


@pytest.fixture
def temp(instrument):
    return make_channel(instrument, slug="temp")


@pytest.fixture
def status(instrument):
    return make_channel(instrument, slug="status", kind=ChannelKind.TEXT)


def stored(channel) -> list[tuple[int, float, int]]:
    return list(Sample.objects.filter(channel=channel).order_by("ts").values_list("ts", "value", "quality"))


def stored_text(channel) -> list[tuple[int, str]]:
    return list(TextSample.objects.filter(channel=channel).order_by("ts").values_list("ts", "value"))


def rejected_rows() -> list[tuple]:
    return list(
        RejectedSample.objects.order_by("id").values_list("channel_id", "channel_ref", "raw_value", "reason", "context")
    )


# --- accepting and de-duplicating ------------------------------------------------------------------


def test_accepted_readings_are_stored(temp):
    batch = SampleBatch.from_rows([(temp.pk, T0, 20.5), (temp.pk, T0 + SECOND, 21), (temp.pk, T0 + 2 * SECOND, -3.25)])
    result = ingest_samples(batch)
    assert result.as_dict() == {
        "received": 3,
        "accepted": 3,
        "duplicates": 0,
        "conflicts": 0,
        "flagged": 0,
        "rejected": 0,
    }
    assert stored(temp) == [(T0, 20.5, Quality.OK), (T0 + SECOND, 21.0, Quality.OK), (T0 + 2 * SECOND, -3.25, 0)]
    assert RejectedSample.objects.count() == 0


def test_reingesting_the_same_batch_stores_nothing_twice(temp, status):
    rows = [(temp.pk, T0 + i * SECOND, float(i)) for i in range(50)] + [(status.pk, T0, "door open")]
    first = ingest_samples(SampleBatch.from_rows(rows))
    second = ingest_samples(SampleBatch.from_rows(rows))
    assert (first.accepted, first.duplicates) == (51, 0)
    assert (second.accepted, second.duplicates) == (0, 51)
    assert Sample.objects.filter(channel=temp).count() == 50
    assert TextSample.objects.filter(channel=status).count() == 1


def test_partly_new_batch_stores_only_the_new_readings(temp):
    ingest_samples(SampleBatch.from_rows([(temp.pk, T0 + i * SECOND, float(i)) for i in range(10)]))
    result = ingest_samples(SampleBatch.from_rows([(temp.pk, T0 + i * SECOND, 100.0 + i) for i in range(5, 15)]))
    # Times 5..9 hold other values already: conflicts (quarantined), not duplicates.
    assert (result.accepted, result.duplicates, result.conflicts) == (5, 0, 5)
    values = stored(temp)
    assert len(values) == 15
    # The first reading stored at a time wins; a different one sent later does not overwrite it.
    assert values[5] == (T0 + 5 * SECOND, 5.0, Quality.OK)
    assert values[14] == (T0 + 14 * SECOND, 114.0, Quality.OK)


def test_repeats_inside_one_batch_are_duplicates_or_conflicts(temp, status):
    batch = SampleBatch.from_rows(
        [
            (temp.pk, T0, 1.0),
            (temp.pk, T0, 2.0),
            (temp.pk, T0 + SECOND, 3.0),
            (temp.pk, T0, 4.0),
            (status.pk, T0, "a"),
            (status.pk, T0, "b"),
            (status.pk, T0, "a"),
        ]
    )
    result = ingest_samples(batch)
    # The first value of a time is stored; a later different one conflicts, the same one is a duplicate.
    assert (result.accepted, result.duplicates, result.conflicts, result.rejected_count) == (3, 1, 3, 0)
    assert len(stored(temp)) == 2
    assert len(stored_text(status)) == 1


def test_same_time_on_different_channels_is_not_a_duplicate(instrument, temp):
    other = make_channel(instrument)
    result = ingest_samples(SampleBatch.from_rows([(temp.pk, T0, 1.0), (other.pk, T0, 1.0)]))
    assert (result.accepted, result.duplicates) == (2, 0)


def test_numpy_columns_in_any_order(instrument, temp):
    other = make_channel(instrument)
    ts = np.array([T0 + 3 * SECOND, T0, T0 + SECOND, T0 + 2 * SECOND])
    batch = SampleBatch(np.array([temp.pk, other.pk, temp.pk, other.pk]), ts, np.array([4, 1, 2, 3]))
    result = ingest_samples(batch)
    assert result.accepted == 4
    assert stored(temp) == [(T0 + SECOND, 2.0, 0), (T0 + 3 * SECOND, 4.0, 0)]
    assert stored(other) == [(T0, 1.0, 0), (T0 + 2 * SECOND, 3.0, 0)]


# --- rejections ------------------------------------------------------------------------------------


def test_each_bad_reading_is_rejected_with_its_reason_and_the_good_ones_are_stored(instrument, temp, status):
    derived = make_channel(instrument, slug="avg", kind=ChannelKind.DERIVED, expression="temp * 2")
    foreign = make_channel(slug="elsewhere")  # another instrument: not writable by this sender
    now = time.time_ns() // 1000
    before_1900 = datetime_to_us(datetime(1899, 12, 31, 23, 59, 59, tzinfo=UTC))
    two_days_ahead = now + 2 * 86400 * SECOND
    unknown_id = Channel.objects.order_by("-pk").values_list("pk", flat=True)[0] + 1000
    rows = [
        (temp.pk, T0, 20.0),  # 0 good
        (temp.pk, T0 + 1 * SECOND, float("nan")),  # 1
        (temp.pk, T0 + 2 * SECOND, float("inf")),  # 2
        (temp.pk, T0 + 3 * SECOND, float("-inf")),  # 3
        (temp.pk, before_1900, 20.0),  # 4
        (temp.pk, two_days_ahead, 20.0),  # 5
        (unknown_id, T0, 20.0),  # 6
        (foreign.pk, T0, 20.0),  # 7
        (derived.pk, T0, 40.0),  # 8
        (temp.pk, T0 + 9 * SECOND, "abc"),  # 9
        (temp.pk, T0 + 10 * SECOND, "12.5"),  # 10 good: a number written as text
        (status.pk, T0 + 11 * SECOND, 7.25),  # 11 good: a number into a text channel is kept as text
        (temp.pk, T0 + 12 * SECOND, None),  # 12
        (status.pk, T0 + 13 * SECOND, None),  # 13
        (temp.pk, T0 + 14 * SECOND, ""),  # 14
        (status.pk, T0 + 15 * SECOND, "door open"),  # 15 good
        (temp.pk, now + 3600 * SECOND, 22.0),  # 16 good: an hour ahead is inside the window
    ]
    result = ingest_samples(SampleBatch.from_rows(rows), writable_instruments={instrument.pk}, origin=Origin.API)

    expected = {
        1: (temp.pk, REASON_NOT_FINITE),
        2: (temp.pk, REASON_NOT_FINITE),
        3: (temp.pk, REASON_NOT_FINITE),
        4: (temp.pk, REASON_TIME),
        5: (temp.pk, REASON_TIME),
        6: (None, REASON_UNKNOWN),
        7: (None, REASON_UNKNOWN),
        8: (derived.pk, REASON_DERIVED),
        9: (temp.pk, REASON_NOT_NUMBER),
        12: (temp.pk, REASON_EMPTY),
        13: (status.pk, REASON_EMPTY),
        14: (temp.pk, REASON_EMPTY),
    }
    assert {r.index: (r.channel_id, r.reason) for r in result.rejected} == expected
    assert (result.received, result.accepted, result.rejected_count) == (17, 5, 12)

    assert stored(temp) == [(T0, 20.0, 0), (T0 + 10 * SECOND, 12.5, 0), (now + 3600 * SECOND, 22.0, 0)]
    assert stored_text(status) == [(T0 + 11 * SECOND, "7.25"), (T0 + 15 * SECOND, "door open")]
    assert not Sample.objects.filter(channel__in=[derived, foreign]).exists()

    kept = RejectedSample.objects.order_by("id")
    assert [(r.context["index"], r.channel_id, r.reason) for r in kept] == [
        (i, channel_id, reason) for i, (channel_id, reason) in sorted(expected.items())
    ]
    assert {r.origin for r in kept} == {Origin.API}
    abc = kept.get(context__index=9)
    assert (abc.channel_ref, abc.raw_value, abc.raw_time) == (str(temp.pk), "abc", "2024-05-06T07:00:09+00:00")
    assert kept.get(context__index=6).channel_ref == str(unknown_id)


def test_a_number_into_a_text_channel_is_stored_as_text(status):
    result = ingest_samples(SampleBatch.from_rows([(status.pk, T0, 21.5), (status.pk, T0 + SECOND, -3)]))
    assert result.accepted == 2
    assert stored_text(status) == [(T0, "21.5"), (T0 + SECOND, "-3.0")]
    assert not Sample.objects.filter(channel=status).exists()


def test_text_longer_than_the_limit_is_rejected(status):
    result = ingest_samples(SampleBatch.from_rows([(status.pk, T0, "x" * 10_001), (status.pk, T0 + SECOND, "ok")]))
    assert [(r.index, r.reason) for r in result.rejected] == [(0, "text value longer than 10000 characters")]
    assert stored_text(status) == [(T0 + SECOND, "ok")]


def test_a_batch_of_only_unknown_channels_is_rejected():
    result = ingest_samples(SampleBatch.from_rows([(987_654_321, T0, 1.0), (987_654_322, T0, 2.0)]))
    assert [(r.index, r.reason) for r in result.rejected] == [(0, REASON_UNKNOWN), (1, REASON_UNKNOWN)]
    assert result.accepted == 0
    assert RejectedSample.objects.count() == 2


def test_a_batch_for_an_instrument_the_sender_may_not_write_is_rejected(temp):
    result = ingest_samples(SampleBatch.from_rows([(temp.pk, T0, 1.0)]), writable_instruments=set())
    assert [(r.index, r.reason) for r in result.rejected] == [(0, REASON_UNKNOWN)]
    assert stored(temp) == []


def test_derived_channel_accepts_readings_from_the_server(instrument, temp):
    derived = make_channel(instrument, slug="double", kind=ChannelKind.DERIVED, expression="temp * 2")
    result = ingest_samples(SampleBatch.from_rows([(derived.pk, T0, 40.0)]), allow_derived=True, origin=Origin.DERIVED)
    assert result.accepted == 1
    assert stored(derived) == [(T0, 40.0, Quality.OK)]


def test_nan_into_an_all_numeric_batch_is_rejected(temp):
    batch = SampleBatch(np.array([temp.pk, temp.pk]), np.array([T0, T0 + SECOND]), np.array([np.nan, 1.0]))
    result = ingest_samples(batch)
    assert [(r.index, r.reason) for r in result.rejected] == [(0, REASON_NOT_FINITE)]
    assert stored(temp) == [(T0 + SECOND, 1.0, 0)]


def test_rejections_passed_by_the_caller_are_stored(temp, instrument):
    source = make_source(instrument)
    parse_failures = [
        Rejection(
            reason="timestamp 'yesterday' is not an ISO 8601 time",
            raw_value="yesterday,21.5",
            context={"file": "log.csv", "line": 7},
        ),
        Rejection(reason="empty line", channel_ref="temp", context={"file": "log.csv", "line": 8}),
    ]
    result = ingest_samples(
        SampleBatch.from_rows([(temp.pk, T0, 1.0)]),
        rejections=parse_failures,
        origin=Origin.FILE,
        source_id=source.pk,
        batch_id="run-42",
    )
    assert (result.received, result.accepted, result.rejected_count) == (3, 1, 2)
    rows = list(RejectedSample.objects.order_by("id"))
    assert [(r.reason, r.raw_value, r.channel_ref, r.context) for r in rows] == [
        ("timestamp 'yesterday' is not an ISO 8601 time", "yesterday,21.5", "", {"file": "log.csv", "line": 7}),
        ("empty line", "", "temp", {"file": "log.csv", "line": 8}),
    ]
    assert {(r.origin, r.source_id, r.batch_id) for r in rows} == {(Origin.FILE, source.pk, "run-42")}


def test_rejections_alone_without_readings_are_stored():
    result = ingest_samples(SampleBatch.from_rows([]), rejections=[Rejection(reason="empty line", index=3)])
    assert (result.received, result.accepted, result.rejected_count) == (1, 0, 1)
    assert rejected_rows() == [(None, "", "", "empty line", {"index": 3})]


# --- quality flags ---------------------------------------------------------------------------------


def test_out_of_range_and_sentinel_readings_are_stored_flagged(instrument):
    channel = make_channel(instrument, valid_min=-40, valid_max=60, missing_values=[-9999, 9999.5])
    batch = SampleBatch.from_rows(
        [
            (channel.pk, T0, 20.0),
            (channel.pk, T0 + 1 * SECOND, 60.0),  # the limits themselves are in range
            (channel.pk, T0 + 2 * SECOND, -40.0),
            (channel.pk, T0 + 3 * SECOND, 60.5),
            (channel.pk, T0 + 4 * SECOND, -41.0),
            (channel.pk, T0 + 5 * SECOND, -9999.0),  # a sentinel is missing, not out of range
            (channel.pk, T0 + 6 * SECOND, 9999.5),
        ]
    )
    result = ingest_samples(batch)
    assert (result.accepted, result.flagged, result.rejected_count) == (7, 4, 0)
    assert [q for _, _, q in stored(channel)] == [
        Quality.OK,
        Quality.OK,
        Quality.OK,
        Quality.OUT_OF_RANGE,
        Quality.OUT_OF_RANGE,
        Quality.MISSING,
        Quality.MISSING,
    ]


def test_sentinels_of_one_channel_do_not_flag_another(instrument):
    with_sentinel = make_channel(instrument, missing_values=[-9999])
    plain = make_channel(instrument)
    ingest_samples(SampleBatch.from_rows([(with_sentinel.pk, T0, -9999), (plain.pk, T0, -9999)]))
    assert stored(with_sentinel) == [(T0, -9999.0, Quality.MISSING)]
    assert stored(plain) == [(T0, -9999.0, Quality.OK)]


def test_open_ended_range(instrument):
    channel = make_channel(instrument, valid_min=0)
    ingest_samples(SampleBatch.from_rows([(channel.pk, T0, -0.5), (channel.pk, T0 + SECOND, 1e12)]))
    assert [q for _, _, q in stored(channel)] == [Quality.OUT_OF_RANGE, Quality.OK]


# --- last value ------------------------------------------------------------------------------------


def test_last_value_moves_forward_and_never_backward(instrument):
    channel = make_channel(instrument, valid_max=100)
    ingest_samples(SampleBatch.from_rows([(channel.pk, T0 + 5 * SECOND, 150.0), (channel.pk, T0 + 4 * SECOND, 1.0)]))
    channel.refresh_from_db()
    assert (channel.last_ts, channel.last_value, channel.last_quality) == (T0 + 5 * SECOND, 150.0, Quality.OUT_OF_RANGE)

    # Late data, older than what is already known, is stored but does not move the last value back.
    ingest_samples(SampleBatch.from_rows([(channel.pk, T0, 2.0), (channel.pk, T0 + 1 * SECOND, 3.0)]))
    channel.refresh_from_db()
    assert (channel.last_ts, channel.last_value, channel.last_quality) == (T0 + 5 * SECOND, 150.0, Quality.OUT_OF_RANGE)
    assert len(stored(channel)) == 4

    ingest_samples(SampleBatch.from_rows([(channel.pk, T0 + 9 * SECOND, 7.5)]))
    channel.refresh_from_db()
    assert (channel.last_ts, channel.last_value, channel.last_quality) == (T0 + 9 * SECOND, 7.5, Quality.OK)
    assert channel.last_time == us_to_datetime(T0 + 9 * SECOND)


def test_last_text_moves_forward_and_never_backward(status):
    ingest_samples(SampleBatch.from_rows([(status.pk, T0 + SECOND, "running")]))
    ingest_samples(SampleBatch.from_rows([(status.pk, T0, "starting")]))
    status.refresh_from_db()
    assert (status.last_ts, status.last_text, status.last_quality) == (T0 + SECOND, "running", Quality.OK)
    assert status.last_value is None


def test_rejected_readings_do_not_move_the_last_value(temp):
    ingest_samples(SampleBatch.from_rows([(temp.pk, T0, 1.0), (temp.pk, T0 + SECOND, float("nan"))]))
    temp.refresh_from_db()
    assert (temp.last_ts, temp.last_value) == (T0, 1.0)


# --- signal ----------------------------------------------------------------------------------------


def test_samples_ingested_is_sent_after_commit_with_spans(django_capture_on_commit_callbacks, instrument, temp, status):
    other = make_channel(instrument)
    received = []

    def receiver(sender, spans, origin, **kwargs):
        received.append((spans, origin))

    samples_ingested.connect(receiver)
    try:
        batch = SampleBatch.from_rows(
            [
                (temp.pk, T0 + 3 * SECOND, 1.0),
                (temp.pk, T0, 1.0),
                (temp.pk, T0 + 7 * SECOND, 1.0),
                (other.pk, T0 + SECOND, 1.0),
                (status.pk, T0 + 2 * SECOND, "x"),
                (status.pk, T0 + 4 * SECOND, "y"),
                (987_654_321, T0 - SECOND, 1.0),  # rejected: not part of any span
            ]
        )
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            ingest_samples(batch, origin=Origin.AGENT)
            assert received == []  # not before the transaction commits
        assert len(callbacks) == 2  # the signal, then the instrument's latest reading (moved after commit too)
    finally:
        samples_ingested.disconnect(receiver)
    instrument.refresh_from_db()
    assert instrument.last_reading_ts == T0 + 7 * SECOND
    assert received == [
        (
            {
                temp.pk: (T0, T0 + 7 * SECOND),
                other.pk: (T0 + SECOND, T0 + SECOND),
                status.pk: (T0 + 2 * SECOND, T0 + 4 * SECOND),
            },
            Origin.AGENT,
        )
    ]


def test_samples_ingested_is_not_sent_when_nothing_was_accepted(django_capture_on_commit_callbacks, temp):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        ingest_samples(SampleBatch.from_rows([(temp.pk, T0, float("nan"))]))
    assert callbacks == []


# --- bulk ------------------------------------------------------------------------------------------


def test_a_large_batch_is_written_with_a_bounded_number_of_queries(instrument):
    channels = [make_channel(instrument, valid_max=1000) for _ in range(10)]
    n = 100_000
    ids = np.array([c.pk for c in channels], dtype=np.int64)
    channel = np.tile(ids, n // len(ids))
    ts = T0 + np.repeat(np.arange(n // len(ids), dtype=np.int64), len(ids)) * SECOND
    value = np.arange(n, dtype=np.float64) / 10.0  # readings 10,001 onwards are above valid_max
    batch = SampleBatch(channel, ts, value)

    with CaptureQueriesContext(connection) as queries:
        result = ingest_samples(batch)

    # One channel look-up, savepoints, the bulk insert, one batched last-value update and the rollup and
    # follow-up backlogs (one statement with the last values on PostgreSQL), whatever the size.
    # INSERT OR IGNORE / INSERT IGNORE go in chunks of CHUNK rows; PostgreSQL's COPY is not a captured query.
    chunks = -(-n // storage.CHUNK) if connection.vendor != "postgresql" else 1
    # Readings this old could be in compressed blocks (on by default): the channels' block locks (their
    # state rows made the first time) and one look-up for blocks (docs/storage.md).
    block_aware = 4 if settings.DAQBROKER_COMPACT_AFTER else 0
    assert len(queries) <= 7 + chunks + block_aware, "\n".join(q["sql"][:120] for q in queries.captured_queries)
    assert (result.accepted, result.duplicates, result.rejected_count) == (n, 0, 0)
    assert result.flagged == n - 10_001
    assert Sample.objects.filter(channel__in=channels).count() == n
    assert Sample.objects.filter(channel__in=channels, quality=Quality.OUT_OF_RANGE).count() == n - 10_001
    first = channels[0]
    first.refresh_from_db()
    assert first.last_ts == T0 + (n // len(ids) - 1) * SECOND
    assert first.last_value == (n - len(ids)) / 10.0
    assert result.spans[first.pk] == (T0, T0 + (n // len(ids) - 1) * SECOND)

    # Sent again, nothing new is stored.
    again = ingest_samples(batch)
    assert (again.accepted, again.duplicates) == (0, n)
    assert Sample.objects.filter(channel__in=channels).count() == n


# --- storage details -------------------------------------------------------------------------------


def test_deleting_a_channel_deletes_its_readings(instrument, temp, status):
    keep = make_channel(instrument)
    ingest_samples(
        SampleBatch.from_rows(
            [(temp.pk, T0 + i * SECOND, 1.0) for i in range(5)]
            + [(keep.pk, T0, 1.0)]
            + [(status.pk, T0, "on"), (status.pk, T0 + SECOND, "off")]
        )
    )
    temp.delete()
    status.delete()
    assert Sample.objects.filter(channel_id=temp.pk).count() == 0
    assert TextSample.objects.filter(channel_id=status.pk).count() == 0
    assert stored(keep) == [(T0, 1.0, 0)]


def test_microsecond_timestamps_round_trip_exactly(temp, status):
    moment = datetime(2024, 5, 6, 7, 8, 9, 123457, tzinfo=UTC)
    result = ingest_samples(
        SampleBatch.from_rows([(temp.pk, moment, 0.1), (temp.pk, moment + timedelta(microseconds=1), 0.2)])
    )
    assert result.accepted == 2
    (first, second) = Sample.objects.filter(channel=temp).order_by("ts")
    assert first.ts == datetime_to_us(moment) == 1_714_979_289_123_457
    assert us_to_datetime(first.ts) == moment
    assert second.ts - first.ts == 1
    assert first.value == 0.1
    temp.refresh_from_db()
    assert temp.last_time == moment + timedelta(microseconds=1)


def test_long_and_unicode_text_round_trips(status):
    text = "température élevée ✓ " * 400
    ingest_samples(SampleBatch.from_rows([(status.pk, T0, text)]))
    assert stored_text(status) == [(T0, text)]


def test_nul_characters_never_break_a_batch(temp, status):
    """PostgreSQL refuses NUL in text: a text value with one is rejected, and quarantine escapes it."""
    batch = SampleBatch.from_rows([(status.pk, T0, "a\x00b"), (status.pk, T0 + SECOND, "ok"), (temp.pk, T0, 1.0)])
    line = Rejection(reason="line not parsed: noise", raw_value="\x00\x00garbled", context={"file": "x\x00.csv"})
    result = ingest_samples(batch, rejections=[line])
    assert (result.accepted, result.rejected_count) == (2, 2)
    assert stored_text(status) == [(T0 + SECOND, "ok")]
    assert [(r.reason, r.raw_value, r.context) for r in RejectedSample.objects.order_by("id")] == [
        ("line not parsed: noise", "\\x00\\x00garbled", {"file": "x\\x00.csv"}),
        ("text value contains a NUL character (shown as \\x00)", "a\\x00b", {"index": 0}),
    ]


def test_values_checked_in_bulk_get_the_same_reasons_as_one_by_one(temp, status):
    """The bulk paths (all strings, all numbers) and the one-by-one path agree on every odd value."""
    odd = [True, 10**400, "1_000", " 12.5 ", "", "  ", "nan", "inf", "0x10", "7", 3, 2.5, None]
    rows = [(temp.pk, T0 + i * SECOND, v) for i, v in enumerate(odd)]
    rows += [(status.pk, T0 + i * SECOND, v) for i, v in enumerate(["ok", "a" * 10_001, "x\x00y", 5, 1.5])]
    result = ingest_samples(SampleBatch.from_rows(rows))
    reasons = {(r.channel_id, r.index): r.reason for r in result.rejected}
    assert reasons == {
        (temp.pk, 0): REASON_NOT_NUMBER,  # a boolean is not a number
        (temp.pk, 1): REASON_NOT_NUMBER,  # too large for a float
        (temp.pk, 4): REASON_EMPTY,
        (temp.pk, 5): REASON_EMPTY,
        (temp.pk, 6): REASON_NOT_FINITE,
        (temp.pk, 7): REASON_NOT_FINITE,
        (temp.pk, 8): REASON_NOT_NUMBER,
        (temp.pk, 12): REASON_EMPTY,
        (status.pk, 14): "text value longer than 10000 characters",
        (status.pk, 15): "text value contains a NUL character (shown as \\x00)",
    }
    assert [v for _, v, _ in stored(temp)] == [1000.0, 12.5, 7.0, 3.0, 2.5]
    assert [v for _, v in stored_text(status)] == ["ok", "5", "1.5"]
    # All strings (the bulk path for numbers read from text), one of them not a number.
    more = SampleBatch.from_rows([(temp.pk, T0 + (100 + i) * SECOND, v) for i, v in enumerate(["1", "2.5", "x"])])
    assert [r.reason for r in ingest_samples(more).rejected] == [REASON_NOT_NUMBER]
