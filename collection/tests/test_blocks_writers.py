"""Every guarantee holds across blocks: duplicates, conflicts, late data, deletions, retention, flags."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from collection.choices import Quality, RejectionKind
from collection.models import ReadingBlock, RejectedSample, Sample
from collection.services import SampleBatch, ingest_samples
from collection.services.blocks import compact, read_readings
from collection.services.corrections import count_readings
from collection.services.retention import delete_readings, enforce_retention
from collection.services.uploads import ingest_upload
from collection.services.validation import _set_quality
from collection.tests.readings import SECOND, T0, ingest
from daqbroker_agent.parsing import us_to_datetime
from instruments.tests.factories import make_channel, make_instrument

pytestmark = pytest.mark.django_db

HOUR = 3600 * SECOND
DAY = 24 * HOUR


@pytest.fixture
def compacted(django_capture_on_commit_callbacks):
    """Three hours at 1 Hz, the whole of it compacted."""
    channel = make_channel(make_instrument(), slug="temp")
    ts = T0 + np.arange(0, 3 * 3600) * SECOND
    values = np.round(20 + np.random.default_rng(5).normal(0, 0.5, len(ts)), 3)
    ingest(django_capture_on_commit_callbacks, channel.pk, ts, values)
    assert compact(T0 + 3 * HOUR).windows == 3
    assert not Sample.objects.filter(channel=channel).exists()
    return channel, ts, values


def send(capture, channel_id, ts, values):
    with capture(execute=True):
        return ingest_samples(SampleBatch(np.full(len(ts), channel_id), np.asarray(ts), np.asarray(values, float)))


def test_a_resent_compacted_reading_is_a_duplicate(compacted, django_capture_on_commit_callbacks):
    channel, ts, values = compacted
    result = send(django_capture_on_commit_callbacks, channel.pk, ts[10:20], values[10:20])
    assert (result.accepted, result.duplicates, result.conflicts) == (0, 10, 0)
    assert read_readings(channel.pk, T0, T0 + 3 * HOUR)["value"].tolist() == values.tolist()


def test_another_value_at_a_compacted_time_is_a_quarantined_conflict(compacted, django_capture_on_commit_callbacks):
    channel, ts, values = compacted
    result = send(django_capture_on_commit_callbacks, channel.pk, ts[[5, 4000]], [99.5, values[4000]])
    assert (result.accepted, result.duplicates, result.conflicts) == (0, 1, 1)
    assert RejectedSample.objects.get().kind == RejectionKind.CONFLICT
    assert read_readings(channel.pk, T0, T0 + 3 * HOUR)["value"].tolist() == values.tolist()


def test_late_data_into_a_compacted_window_is_stored_once_and_compacted_again(
    compacted, django_capture_on_commit_callbacks
):
    channel, _, _ = compacted
    late = T0 + HOUR + 500_000 + np.arange(3) * SECOND
    assert send(django_capture_on_commit_callbacks, channel.pk, late, [1.0, 2.0, 3.0]).accepted == 3
    assert send(django_capture_on_commit_callbacks, channel.pk, late, [1.0, 2.0, 3.0]).duplicates == 3
    expected = read_readings(channel.pk, T0, T0 + 3 * HOUR)
    assert len(expected["ts"]) == 3 * 3600 + 3
    assert compact(T0 + 3 * HOUR).windows == 1  # the window whose block became rows again
    assert ReadingBlock.objects.get(channel=channel, window_start=T0 + HOUR).count == 3603
    got = read_readings(channel.pk, T0, T0 + 3 * HOUR)
    assert got["ts"].tolist() == expected["ts"].tolist()
    assert got["value"].tolist() == expected["value"].tolist()


def test_deleting_compacted_readings_deletes_them(compacted):
    channel, ts, _ = compacted
    assert count_readings(channel, T0 + 30 * 60 * SECOND, T0 + 90 * 60 * SECOND, limit=10**6) == 3600
    deleted = delete_readings([channel], T0 + 30 * 60 * SECOND, T0 + 90 * 60 * SECOND)
    assert deleted == {channel.pk: 3600}
    left = read_readings(channel.pk, T0, T0 + 3 * HOUR)["ts"]
    assert len(left) == 3 * 3600 - 3600
    assert not ((left >= T0 + 30 * 60 * SECOND) & (left < T0 + 90 * 60 * SECOND)).any()
    channel.refresh_from_db()
    assert channel.last_ts == int(ts[-1])  # the latest reading, still compacted, stays the last value


def test_deleting_the_latest_compacted_reading_moves_the_last_value_back(compacted):
    channel, ts, values = compacted
    delete_readings([channel], int(ts[-1]), int(ts[-1]) + 1)
    channel.refresh_from_db()
    assert (channel.last_ts, channel.last_value) == (int(ts[-2]), float(values[-2]))


def test_retention_drops_whole_blocks_and_trims_the_straddling_one(django_capture_on_commit_callbacks):
    instrument = make_instrument(raw_retention_days=1)
    channel = make_channel(instrument, slug="temp")
    ts = T0 + np.arange(0, 3 * 86400, 60) * SECOND  # three days, one reading a minute
    ingest(django_capture_on_commit_callbacks, channel.pk, ts, np.arange(len(ts), dtype=float))
    compact(T0 + 3 * DAY, max_windows=1000)
    assert ReadingBlock.objects.filter(channel=channel).count() == 72
    result = enforce_retention(now_us=T0 + 2 * DAY + 12 * HOUR)  # cutoff: the start of day two
    assert result.deleted == 1440
    left = read_readings(channel.pk, T0, T0 + 3 * DAY)["ts"]
    assert left.tolist() == ts[ts >= T0 + DAY].tolist()
    assert not ReadingBlock.objects.filter(channel=channel, window_start__lt=T0 + DAY).exists()


def test_quality_flags_change_on_compacted_readings(compacted):
    channel, ts, _ = compacted
    assert _set_quality(channel.pk, ts[[7, 3700]], Quality.SUSPECT, only_from=Quality.OK) == 2
    got = read_readings(channel.pk, T0, T0 + 3 * HOUR)
    assert np.flatnonzero(got["quality"] == Quality.SUSPECT).tolist() == [7, 3700]


def test_an_upload_of_compacted_readings_with_compaction_off_is_counted_as_duplicates(compacted, settings):
    """Compaction turned off after it made blocks: the upload path (readings named by slug) still finds them,
    through the flag its channel look-up reads, so a re-sent reading is a duplicate, another value a conflict."""
    settings.DAQBROKER_COMPACT_AFTER = 0
    channel, ts, values = compacted
    ref = f"{channel.instrument.slug}/{channel.slug}"
    sent = [
        {"channel": ref, "t": us_to_datetime(int(t)).isoformat(), "v": float(v)}
        for t, v in zip(ts[:5], values[:5], strict=True)
    ]
    sent.append({"channel": ref, "t": us_to_datetime(int(ts[7])).isoformat(), "v": 99.5})
    answer = ingest_upload(orjson.dumps(sent), "application/json", sender="test", writable_instruments=None,
                           max_readings=100).body  # fmt: skip
    assert (answer["accepted"], answer["duplicates"], answer["conflicts"]) == (0, 5, 1), answer
    assert read_readings(channel.pk, T0, T0 + 3 * HOUR)["value"].tolist() == values.tolist()
