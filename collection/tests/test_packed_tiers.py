"""Packed rollup tiers (docs/storage.md): a compacted hour's 10 s and 1 min buckets in one block per tier,
read and changed as if they were rows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from django.db import connection, transaction

from collection.models import Rollup, RollupBlock, RollupState
from collection.services.blocks import compact
from collection.services.query import query_series
from collection.services.retention import delete_readings
from collection.services.rollups import PACKED_TIERS, TIERS, fetch_buckets, pack, pack_window, rebuild_rollups
from collection.services.statistics import range_statistics
from collection.tests.held import HeldTransaction
from collection.tests.readings import SECOND, T0, ingest, refresh_all
from instruments.tests.factories import make_channel, make_instrument

pytestmark = pytest.mark.django_db

HOUR = 3600 * SECOND
END = T0 + 3 * HOUR


@pytest.fixture
def channel(django_capture_on_commit_callbacks):
    """Three hours at 1 Hz of a noisy 3-decimal channel, tiers up to date."""
    channel = make_channel(make_instrument(), slug="temp")
    ts = T0 + np.arange(0, 3 * 3600) * SECOND
    values = np.round(20 + np.random.default_rng(7).normal(0, 0.5, len(ts)), 3)
    ingest(django_capture_on_commit_callbacks, channel.pk, ts, values)
    refresh_all()
    return channel


def tiers(channel_id: int) -> dict[int, dict[str, list]]:
    """Every tier's buckets over the whole day, through the one bucket reader, as lists (NaN-safe)."""
    out = {}
    for tier in TIERS:
        buckets = fetch_buckets(channel_id, tier, T0 - 24 * HOUR, T0 + 48 * HOUR)
        out[tier] = {f.name: getattr(buckets, f.name).view(np.int64).tolist() for f in dataclasses.fields(buckets)}
    return out


def answers(channel_id: int) -> dict:
    """Answers that read the tiers: plots at tier resolutions, statistics over ranges with partial buckets."""
    out: dict = {}
    for points in (20, 200, 1000):  # 10 min, 1 min and 10 s buckets over three hours
        series = query_series([channel_id], T0, END, points)[0]
        out[points] = {
            k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in dataclasses.asdict(series).items()
        }
    out["statistics"] = dataclasses.asdict(range_statistics([channel_id], T0 + 17, END - 170 * SECOND)[0])
    return out


def rows_of(channel_id: int, tier: int) -> int:
    return Rollup.objects.filter(channel_id=channel_id, tier=tier).count()


def test_packing_moves_the_fine_tiers_of_closed_hours_into_blocks_and_reads_the_same(channel):
    before, said = tiers(channel.pk), answers(channel.pk)
    assert compact(END).windows == 3
    assert pack(END) == 3
    assert set(RollupBlock.objects.filter(channel=channel).values_list("tier", "window_start")) == {
        (tier, T0 + h * HOUR) for tier in PACKED_TIERS for h in range(3)
    }
    assert sum(rows_of(channel.pk, tier) for tier in PACKED_TIERS) == 0
    assert PACKED_TIERS == (10, 60)
    assert rows_of(channel.pk, 600) == 18  # coarser tiers stay rows
    assert tiers(channel.pk) == before
    assert answers(channel.pk) == said
    assert pack(END) == 0  # nothing left to pack


def test_an_hour_still_open_is_not_packed(channel):
    assert pack(T0 + 2 * HOUR + 30 * 60 * SECOND) == 2
    assert rows_of(channel.pk, 10) == 360  # the third hour's 10 s buckets


def test_late_data_unpacks_its_hour_only_and_the_tiers_stay_exact(channel, django_capture_on_commit_callbacks):
    compact(END)
    pack(END)
    late = T0 + HOUR + 1234 * SECOND + 500_000  # between two readings of the second hour
    ingest(django_capture_on_commit_callbacks, channel.pk, [late], [99.125])
    refresh_all()
    # The second hour is rows again, every tier of it; the other hours stay packed.
    assert {w for (w,) in RollupBlock.objects.filter(channel=channel).values_list("window_start")} == {
        T0,
        T0 + 2 * HOUR,
    }
    assert rows_of(channel.pk, 10) == 360
    refreshed = tiers(channel.pk)
    assert max(refreshed[10]["max_value"]) == np.float64(99.125).view(np.int64)
    rebuild_rollups([channel.pk])  # from scratch, from the readings: the same buckets
    assert tiers(channel.pk) == refreshed
    assert not RollupBlock.objects.filter(channel=channel).exists()  # a rebuild leaves rows
    assert pack(END) == 3
    assert tiers(channel.pk) == refreshed


def test_unpacking_several_channels_at_once_takes_each_one_s_hours_only(
    channel, django_capture_on_commit_callbacks, monkeypatch
):
    """``_unpack`` over several channels' ranges (a writer changing many channels' buckets at once) turns
    exactly the packed hours each range reaches back into rows, also when the channels take several
    statements (``blocks.SPANS_PER_STATEMENT``), and every answer stays the same."""
    from collection.services import blocks, rollups

    monkeypatch.setattr(blocks, "SPANS_PER_STATEMENT", 1)  # a statement per channel, each way
    others = [make_channel(channel.instrument, slug=f"other-{i}") for i in range(3)]
    ts = T0 + np.arange(0, 3 * 3600) * SECOND
    for i, other in enumerate(others):
        ingest(django_capture_on_commit_callbacks, other.pk, ts, np.round(10 + i + np.sin(ts / 1e9), 3))
    refresh_all()
    everyone = [channel, *others]
    compact(END)
    pack(END)
    before = {c.pk: tiers(c.pk) for c in everyone}
    ranges = {
        channel.pk: (T0 + HOUR + 600 * SECOND, T0 + HOUR + 700 * SECOND),  # inside the second hour
        others[0].pk: (T0 + 10 * SECOND, T0 + 2 * HOUR + 10 * SECOND),  # the first hour to the third
        others[2].pk: (T0 + 2 * HOUR, T0 + 3 * HOUR),  # the third hour, whole
    }  # others[1]: not named, nothing of it unpacked
    with transaction.atomic():
        for tier in PACKED_TIERS:
            rollups._unpack(tier, ranges, "default")

    def packed(c):
        return {(w, t) for w, t in RollupBlock.objects.filter(channel=c).values_list("window_start", "tier")}

    hours = {T0, T0 + HOUR, T0 + 2 * HOUR}
    assert {c.pk: {w for w, _ in packed(c)} for c in everyone} == {
        channel.pk: hours - {T0 + HOUR},
        others[0].pk: set(),
        others[1].pk: hours,
        others[2].pk: hours - {T0 + 2 * HOUR},
    }
    assert all(len(packed(c)) == len({w for w, _ in packed(c)}) * len(PACKED_TIERS) for c in everyone)
    assert {c.pk: tiers(c.pk) for c in everyone} == before  # rows or packed, the same buckets
    assert rows_of(others[0].pk, 10) == 3 * 360


def test_deleting_readings_of_a_packed_hour_updates_its_buckets(channel):
    compact(END)
    pack(END)
    deleted = delete_readings([channel], T0 + HOUR, T0 + HOUR + 600 * SECOND)[channel.pk]
    assert deleted == 600
    refresh_all()
    buckets = fetch_buckets(channel.pk, 600, T0, END)
    assert T0 + HOUR not in buckets.bucket.tolist()
    assert buckets.count.tolist() == [600] * 17
    assert fetch_buckets(channel.pk, 3600, T0, END).count.tolist() == [3600, 3000, 3600]
    assert fetch_buckets(channel.pk, 10, T0 + HOUR, T0 + HOUR + 600 * SECOND).count.tolist() == []


@pytest.mark.skipif(connection.vendor == "sqlite", reason="SQLite serialises writers: there is no row lock to skip")
@pytest.mark.django_db(transaction=True)
def test_a_channel_held_by_another_worker_is_skipped_and_packed_later(django_capture_on_commit_callbacks):
    channel = make_channel(make_instrument(), slug="held")
    ingest(django_capture_on_commit_callbacks, channel.pk, T0 + np.arange(0, 3600, 5) * SECOND, np.ones(720))
    refresh_all()
    holder = HeldTransaction(lambda: list(RollupState.objects.select_for_update().filter(channel=channel)))
    try:
        assert pack_window(channel.pk, T0) == 0
        assert pack(END) == 0
    finally:
        holder.commit()
    assert rows_of(channel.pk, 10) == 360
    assert pack(END) == 1
    assert rows_of(channel.pk, 10) == 0


def test_adjacent_hours_are_packed_together_up_to_a_bound(channel, monkeypatch):
    from django.test.utils import CaptureQueriesContext

    from collection.services import rollups

    before = tiers(channel.pk)
    with CaptureQueriesContext(connection) as queries:
        assert pack(END) == 3
    statements = [q["sql"].replace("`", '"') for q in queries.captured_queries]
    assert len([s for s in statements if s.startswith('INSERT INTO "collection_rollupblock"')]) == 1
    assert len([s for s in statements if s.startswith('DELETE FROM "collection_rollup"')]) == 1
    assert tiers(channel.pk) == before

    rebuild_rollups([channel.pk])  # rows again
    monkeypatch.setattr(rollups, "PACK_ROWS", 500)  # an hour is 420 rows (360 + 60): one hour a run
    assert rollups.pack_run(channel.pk, T0, END) == (420, 1, T0 + HOUR)
    assert pack(END) == 2
    assert rows_of(channel.pk, 10) == 0
    assert tiers(channel.pk) == before


def test_the_compaction_task_packs_each_run_s_hours_in_the_run_s_own_transaction(channel):
    """``compact_and_pack`` (the task's step): the hours a compaction run moves into blocks have their fine
    tiers packed in the same transaction, under the one lock it takes; nothing is left for ``pack``."""
    from django.test.utils import CaptureQueriesContext

    from collection.services.rollups import compact_and_pack

    before, said = tiers(channel.pk), answers(channel.pk)
    with CaptureQueriesContext(connection) as queries:
        step = compact_and_pack(END)
    assert (step.windows, step.readings, step.packed_hours) == (3, 3 * 3600, 3)
    statements = [q["sql"].replace("`", '"') for q in queries.captured_queries]
    assert len([s for s in statements if s.startswith('INSERT INTO "collection_readingblock"')]) == 1
    assert len([s for s in statements if s.startswith('INSERT INTO "collection_rollupblock"')]) == 1
    assert len([s for s in statements if s.startswith('DELETE FROM "collection_rollup"')]) == 1
    if connection.features.has_select_for_update:  # the channel's lock, taken once for both
        locks = [s for s in statements if "FOR UPDATE" in s and '"collection_rollupstate"' in s]
        assert len(locks) == 1
    assert sum(rows_of(channel.pk, tier) for tier in PACKED_TIERS) == 0
    assert pack(END) == 0
    assert tiers(channel.pk) == before
    assert answers(channel.pk) == said
