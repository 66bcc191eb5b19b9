"""Compaction of hot rows into compressed blocks, and the merged read of both (collection.services.blocks)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from collection import storage
from collection.choices import RejectionKind
from collection.models import ReadingBlock, RejectedSample, Rollup, RollupBlock, Sample, TextSample
from collection.services import SampleBatch, blocks, ingest_samples
from collection.services.blocks import BLOCK_WIDTH_US, MIN_AGE_US, compact, compact_window, read_readings, window_of
from collection.services.rollups import PACKED_TIERS
from collection.tasks import compact_blocks_task
from collection.tests.readings import SECOND, T0, ingest, refresh_all
from instruments.choices import ChannelKind
from instruments.tests.factories import make_channel, make_instrument

pytestmark = pytest.mark.django_db

HOUR = 3600 * SECOND


def hot_insert(channel_id: int, ts, values, quality=None) -> None:
    """Rows straight into the narrow table, as a reading committed during or after compaction lands."""
    ts = np.asarray(ts, dtype=np.int64)
    q = np.zeros(len(ts), np.int16) if quality is None else np.asarray(quality, np.int16)
    storage.insert_numeric(np.full(len(ts), channel_id, np.int64), ts, np.asarray(values, float), q)


def same(a: dict, b: dict) -> None:
    assert a["ts"].tolist() == b["ts"].tolist()
    assert a["value"].tobytes() == b["value"].tobytes()
    assert a["quality"].tolist() == b["quality"].tolist()


@pytest.fixture
def channel():
    return make_channel(make_instrument(), slug="temp")


@pytest.fixture
def three_hours(channel, django_capture_on_commit_callbacks):
    ts = T0 + np.arange(0, 3 * 3600, 1) * SECOND
    values = np.round(20 + np.random.default_rng(0).normal(0, 0.5, len(ts)), 3)
    values[100] = -9999.0  # a sentinel: stored, flagged below
    ingest(django_capture_on_commit_callbacks, channel.pk, ts, values)
    Sample.objects.filter(channel=channel, ts=ts[100]).update(quality=2)
    return ts


def test_compaction_moves_closed_windows_into_blocks_and_reads_back_the_same(channel, three_hours):
    before = read_readings(channel.pk, T0, T0 + 3 * HOUR)
    done = compact(T0 + 2 * HOUR + 30 * 60 * SECOND)  # the third hour is still open
    assert (done.windows, done.readings) == (2, 7200)
    assert list(ReadingBlock.objects.filter(channel=channel).values_list("window_start", "count")) == [
        (T0, 3600),
        (T0 + HOUR, 3600),
    ]
    assert Sample.objects.filter(channel=channel).count() == 3600
    same(read_readings(channel.pk, T0, T0 + 3 * HOUR), before)
    assert read_readings(channel.pk, T0, T0 + 3 * HOUR)["quality"][100] == 2


def test_a_read_inside_and_across_blocks_gives_the_range_exactly(channel, three_hours):
    before = {r: read_readings(channel.pk, *r) for r in [(T0 + 17, T0 + HOUR + 5 * SECOND), (T0 + 5, T0 + 6)]}
    compact(T0 + 3 * HOUR)
    for r, expected in before.items():
        same(read_readings(channel.pk, *r), expected)
    assert len(read_readings(channel.pk, T0 + HOUR + 500 * SECOND, T0 + HOUR + 510 * SECOND)["ts"]) == 10


def test_compaction_without_flagged_keeps_them_out_on_request(channel, three_hours):
    compact(T0 + 3 * HOUR)
    assert len(read_readings(channel.pk, T0, T0 + HOUR, include_flagged=False)["ts"]) == 3599


def test_compaction_is_safe_to_run_twice(channel, three_hours):
    compact(T0 + 3 * HOUR)
    blocks = list(ReadingBlock.objects.values_list("window_start", "count", "ts_data", "value_data"))
    assert compact(T0 + 3 * HOUR).windows == 0
    assert compact_window(channel.pk, T0).windows == 0
    assert list(ReadingBlock.objects.values_list("window_start", "count", "ts_data", "value_data")) == blocks


def test_compaction_is_bounded_per_step(channel, three_hours):
    assert compact(T0 + 3 * HOUR, max_windows=1).windows == 1
    assert compact(T0 + 3 * HOUR, max_windows=1).windows == 1
    assert compact(T0 + 3 * HOUR, max_windows=1).windows == 1
    assert compact(T0 + 3 * HOUR, max_windows=1).windows == 0
    assert not Sample.objects.filter(channel=channel).exists()


def test_late_data_in_a_compacted_window_is_merged_into_its_block_exactly_once(channel, three_hours):
    compact(T0 + 3 * HOUR)
    late = T0 + HOUR + np.array([250_000, 1_500_000, 3_599_999_999])  # between the stored seconds
    hot_insert(channel.pk, late, [1.5, 2.5, 3.5])
    expected = read_readings(channel.pk, T0, T0 + 3 * HOUR)
    assert len(expected["ts"]) == 3 * 3600 + 3
    done = compact(T0 + 3 * HOUR)
    assert (done.windows, done.readings) == (1, 3)
    assert ReadingBlock.objects.get(channel=channel, window_start=T0 + HOUR).count == 3603
    assert not Sample.objects.filter(channel=channel).exists()
    same(read_readings(channel.pk, T0, T0 + 3 * HOUR), expected)
    assert compact(T0 + 3 * HOUR).windows == 0


def test_a_hot_row_repeating_a_compacted_reading_is_kept_once(channel, three_hours):
    compact(T0 + HOUR)
    expected = read_readings(channel.pk, T0, T0 + HOUR)
    value = float(expected["value"][10])
    hot_insert(channel.pk, [three_hours[10]], [value])
    same(read_readings(channel.pk, T0, T0 + HOUR), expected)  # given once before the next pass too
    done = compact(T0 + HOUR)
    assert (done.duplicates, done.conflicts, done.readings) == (1, 0, 0)
    same(read_readings(channel.pk, T0, T0 + HOUR), expected)
    assert not RejectedSample.objects.exists()


def test_a_hot_row_with_another_value_at_a_compacted_time_is_quarantined_as_a_conflict(channel, three_hours):
    compact(T0 + HOUR)
    expected = read_readings(channel.pk, T0, T0 + HOUR)
    hot_insert(channel.pk, [three_hours[10]], [12345.0])
    same(read_readings(channel.pk, T0, T0 + HOUR), expected)  # the first stored value wins
    assert compact(T0 + HOUR).conflicts == 1
    same(read_readings(channel.pk, T0, T0 + HOUR), expected)
    record = RejectedSample.objects.get()
    assert (record.kind, record.channel_id, record.raw_value) == (RejectionKind.CONFLICT, channel.pk, "12345.0")


def test_text_channels_compact_and_read_back(django_capture_on_commit_callbacks):
    channel = make_channel(make_instrument(), slug="status", kind=ChannelKind.TEXT)
    ts = T0 + np.arange(0, 7200, 7) * SECOND
    texts = np.array([["OK", "ALARM", "déjà vu", ""][i % 4] for i in range(len(ts))], dtype=object)
    with django_capture_on_commit_callbacks(execute=True):
        ingest_samples(SampleBatch(np.full(len(ts), channel.pk), ts, texts))
    before = read_readings(channel.pk, T0, T0 + 2 * HOUR)
    assert compact(T0 + 2 * HOUR).windows == 2
    assert not TextSample.objects.filter(channel=channel).exists()
    after = read_readings(channel.pk, T0, T0 + 2 * HOUR)
    assert after["ts"].tolist() == before["ts"].tolist() == ts.tolist()
    assert after["value"].tolist() == before["value"].tolist() == texts.tolist()


def test_a_block_is_much_smaller_than_its_readings(channel, three_hours):
    compact(T0 + HOUR)
    block = ReadingBlock.objects.get(channel=channel, window_start=T0)
    size = len(block.ts_data) + len(block.value_data) + len(block.quality_data)
    assert size / block.count < 2.5  # noisy 3-decimal values at 1 Hz; 8 + 8 + 2 bytes raw


def test_random_ingests_late_data_and_compactions_match_a_plain_model(channel):
    """Random batches (new, late into compacted windows, repeated) and compactions, against a dict."""
    rng = np.random.default_rng(7)
    model: dict[int, float] = {}
    for _ in range(25):
        action = rng.integers(0, 3)
        if action < 2:
            ts = np.unique(T0 + rng.integers(0, 5 * 3600, rng.integers(1, 200)) * SECOND + rng.integers(0, 3))
            values = np.round(rng.normal(0, 10, len(ts)), 2)
            fresh = np.array([t not in model for t in ts.tolist()], dtype=bool)
            # Only keys new to the model go in hot (ingest's check against blocks is not built yet).
            hot_insert(channel.pk, ts[fresh], values[fresh])
            model.update(zip(ts[fresh].tolist(), values[fresh].tolist(), strict=True))
        else:
            compact(T0 + int(rng.integers(0, 6)) * HOUR, max_windows=int(rng.integers(1, 4)))
        for lo, hi in [(T0, T0 + 6 * HOUR), (T0 + int(rng.integers(0, 5 * HOUR)), T0 + int(rng.integers(0, 6 * HOUR)))]:
            got = read_readings(channel.pk, lo, hi)
            keys = sorted(t for t in model if lo <= t < hi)
            assert got["ts"].tolist() == keys
            assert got["value"].tolist() == [model[t] for t in keys]


def test_window_of_floors_to_the_block_width():
    assert window_of(T0 + BLOCK_WIDTH_US - 1) == T0
    assert window_of(T0 + BLOCK_WIDTH_US) == T0 + BLOCK_WIDTH_US


def test_a_window_start_off_the_grid_is_refused(channel):
    with pytest.raises(ValueError, match="multiple"):
        compact_window(channel.pk, T0 + 1)


def test_the_periodic_task_does_nothing_while_compaction_is_off(channel, three_hours, settings):
    settings.DAQBROKER_COMPACT_AFTER = 0
    assert compact_blocks_task() == 0
    assert not ReadingBlock.objects.exists()


def test_the_periodic_task_compacts_windows_older_than_the_setting(channel, three_hours, settings):
    settings.DAQBROKER_COMPACT_AFTER = 3600
    refresh_all()
    assert compact_blocks_task() == 3 * 3600  # T0 is long past
    assert ReadingBlock.objects.filter(channel=channel).count() == 3
    # and the fine tiers of those hours are packed: 10 s and 1 min, a block each per hour
    assert RollupBlock.objects.filter(channel=channel).count() == 6
    assert not Rollup.objects.filter(channel=channel, tier__in=PACKED_TIERS).exists()
    assert compact_blocks_task() == 0


def test_readings_younger_than_ten_minutes_are_never_compacted(channel, django_capture_on_commit_callbacks):
    now = time.time_ns() // 1000
    ingest(django_capture_on_commit_callbacks, channel.pk, [now - MIN_AGE_US // 2], [1.0])
    assert compact(now + 2 * BLOCK_WIDTH_US).windows == 0  # asked for the future: held to ten minutes ago
    assert Sample.objects.filter(channel=channel).count() == 1


def test_deleting_a_channel_deletes_its_blocks(channel, three_hours):
    compact(T0 + 3 * HOUR)
    assert ReadingBlock.objects.filter(channel=channel).count() == 3
    channel.delete()
    assert not ReadingBlock.objects.exists()


def test_a_channel_whose_kind_changed_keeps_its_compacted_readings_aside(channel, three_hours):
    compact(T0 + HOUR)
    before = read_readings(channel.pk, T0, T0 + HOUR)
    channel.kind = ChannelKind.TEXT
    channel.save()
    assert len(read_readings(channel.pk, T0, T0 + HOUR)["ts"]) == 0  # as rows of the other table would be
    assert compact(T0 + 3 * HOUR).windows == 0  # a text channel's hot rows are text: none
    assert Sample.objects.filter(channel=channel).count() == 2 * 3600  # the numeric rows stay...
    channel.kind = ChannelKind.NUMERIC
    channel.save()
    same(read_readings(channel.pk, T0, T0 + HOUR), before)  # ...and the numeric block is intact


def test_a_row_the_compactor_did_not_read_is_never_deleted_with_the_window(channel, three_hours, monkeypatch):
    """The window's hot rows go by one range delete, checked against the rows read: should a row have come
    in between (a writer not holding the channel's block lock), the transaction is undone and the window
    done again deleting exactly the keys read. The read is made to miss the window's last row, as if it
    had been committed just after it."""
    real = blocks._hot_rows
    calls = []

    def late_row_unseen(*args, **kwargs):
        rows = real(*args, **kwargs)
        calls.append(len(rows["ts"]))
        return {name: column[:-1] for name, column in rows.items()} if len(calls) == 1 else rows

    monkeypatch.setattr(blocks, "_hot_rows", late_row_unseen)
    step = compact_window(channel.pk, T0)
    assert calls == [3600, 3600]  # read, undone, read again
    assert (step.windows, step.readings) == (1, 3600)
    assert not Sample.objects.filter(channel=channel, ts__lt=T0 + HOUR).exists()
    assert read_readings(channel.pk, T0, T0 + HOUR)["ts"].tolist() == three_hours[:3600].tolist()


def test_adjacent_windows_are_compacted_together_up_to_a_bound(channel, three_hours, monkeypatch):
    """Adjacent hours of a channel go in one transaction (one insert of their blocks, one delete of their
    rows), as many as fit in RUN_ROWS hot rows; a window holding more than that goes alone, whole."""
    with CaptureQueriesContext(connection) as queries:
        assert compact(T0 + 3 * HOUR).windows == 3
    statements = [q["sql"].replace("`", '"') for q in queries.captured_queries]
    assert len([s for s in statements if s.startswith('INSERT INTO "collection_readingblock"')]) == 1
    assert len([s for s in statements if s.startswith('DELETE FROM "collection_sample"')]) == 1
    assert read_readings(channel.pk, T0, T0 + 3 * HOUR)["ts"].tolist() == three_hours.tolist()

    blocks.ReadingBlock.objects.all().delete()
    hot_insert(channel.pk, three_hours, np.ones(len(three_hours)))
    monkeypatch.setattr(blocks, "RUN_ROWS", 5000)  # an hour and a part: the run stops after the first hour
    step, stopped = blocks.compact_run(channel.pk, T0, T0 + 3 * HOUR)
    assert (step.windows, stopped) == (1, T0 + HOUR)
    monkeypatch.setattr(blocks, "RUN_ROWS", 1000)  # less than an hour: the hour goes alone, whole
    step, stopped = blocks.compact_run(channel.pk, T0 + HOUR, T0 + 3 * HOUR)
    assert (step.windows, step.readings, stopped) == (1, 3600, T0 + 2 * HOUR)
    assert compact(T0 + 3 * HOUR).windows == 1
    assert not Sample.objects.filter(channel=channel).exists()
    assert read_readings(channel.pk, T0, T0 + 3 * HOUR)["ts"].tolist() == three_hours.tolist()


def test_channels_with_blocks_answers_as_has_blocks_for_each_channel_across_statements(monkeypatch):
    """The rollup refresh asks, for many channels at once, which hold a block that may cover their span: the
    same answer as ``has_blocks`` per channel, at every edge (a block ending where the span starts, one
    starting where it ends), also when the channels need several statements."""
    monkeypatch.setattr(blocks, "SPANS_PER_STATEMENT", 7)  # 30 channels: five statements
    instrument = make_instrument()
    channels = [make_channel(instrument, slug=f"c{i}") for i in range(30)]
    windows = [T0 - T0 % BLOCK_WIDTH_US + k * BLOCK_WIDTH_US for k in range(4)]
    ReadingBlock.objects.bulk_create(
        ReadingBlock(
            channel=channel,
            window_start=windows[i % 3],
            count=1,
            first_ts=windows[i % 3],
            last_ts=windows[i % 3],
            ts_data=b"",
            value_data=b"",
            quality_data=b"",
        )
        for i, channel in enumerate(channels)
        if i % 5  # every fifth channel holds no block
    )
    rng = np.random.default_rng(1)
    edges = [windows[0] - 1, *windows, windows[1] + 1, windows[2] + BLOCK_WIDTH_US, windows[3] + BLOCK_WIDTH_US]
    spans = {}
    for channel in channels:
        lo, hi = sorted(rng.choice(edges, 2, replace=False).tolist())
        spans[channel.pk] = (int(lo), int(hi))
    expected = {pk for pk, (lo, hi) in spans.items() if blocks.has_blocks(pk, lo, hi)}
    assert 0 < len(expected) < len(channels)
    with CaptureQueriesContext(connection) as queries:
        assert blocks.channels_with_blocks(spans) == expected
    assert len(queries) == 5
    assert blocks.channels_with_blocks({}) == set()
