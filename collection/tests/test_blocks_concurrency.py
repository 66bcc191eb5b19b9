"""Two compaction workers and an ingesting sender at once, on real connections (PostgreSQL, MariaDB)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from django.db import connection, connections

from collection.choices import Quality
from collection.models import ReadingBlock, RejectedSample, Sample
from collection.services import SampleBatch, ingest_samples
from collection.services.blocks import compact, compact_window, read_readings
from collection.services.retention import delete_readings
from collection.services.validation import _set_quality
from collection.tests.held import HeldTransaction, someone_waits_on_a_lock
from collection.tests.readings import SECOND, T0
from conftest import wait_for
from instruments.tests.factories import make_channel, make_instrument

pytestmark = pytest.mark.django_db(transaction=True)

HOUR = 3600 * SECOND


def test_two_compactors_and_late_data_at_once_keep_every_reading_once(settings):
    if connection.vendor == "sqlite":
        pytest.skip("SQLite has one writer at a time: there is no concurrency to test")
    settings.DAQBROKER_COMPACT_AFTER = 3600  # on: ingest of old readings takes the channel's block lock
    channel = make_channel(make_instrument(), slug="temp")
    ts = T0 + np.arange(0, 6 * 3600) * SECOND
    values = np.round(np.random.default_rng(1).normal(20, 1, len(ts)), 3)
    ingest_samples(SampleBatch(np.full(len(ts), channel.pk), ts, values))
    rng = np.random.default_rng(2)
    late = np.sort(rng.choice(len(ts), 300, replace=False))
    late_ts, late_values = ts[late] + 500_000, np.round(rng.normal(0, 1, 300), 3)
    resent = np.sort(rng.choice(len(ts), 300, replace=False))
    errors: list[BaseException] = []
    totals = {"accepted": 0, "duplicates": 0, "conflicts": 0}
    sender_done = threading.Event()

    def worker(body):
        try:
            body()
        except BaseException as error:  # reported by the test below
            errors.append(error)
        finally:
            connections.close_all()

    def compactor():
        idle = 0
        while idle < 3 or not sender_done.is_set():
            idle = idle + 1 if not compact(T0 + 6 * HOUR, max_windows=1).windows else 0

    def sender():
        try:
            for i in range(0, 300, 20):
                for stamps, vals in (
                    (late_ts[i : i + 20], late_values[i : i + 20]),
                    (ts[resent[i : i + 20]], values[resent[i : i + 20]]),
                ):
                    result = ingest_samples(SampleBatch(np.full(len(stamps), channel.pk), stamps, vals))
                    totals["accepted"] += result.accepted
                    totals["duplicates"] += result.duplicates
                    totals["conflicts"] += result.conflicts
        finally:
            sender_done.set()

    threads = [threading.Thread(target=worker, args=(body,)) for body in (compactor, compactor, sender)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors
    while compact(T0 + 6 * HOUR).windows:
        pass

    expected_ts = np.concatenate([ts, late_ts])
    order = np.argsort(expected_ts)
    got = read_readings(channel.pk, T0, T0 + 6 * HOUR)
    assert got["ts"].tolist() == expected_ts[order].tolist()
    assert got["value"].tolist() == np.concatenate([values, late_values])[order].tolist()
    assert not Sample.objects.filter(channel=channel).exists()
    assert sum(ReadingBlock.objects.filter(channel=channel).values_list("count", flat=True)) == len(ts) + 300
    # Every offered reading was counted as what it is: the late ones stored, the re-sent ones duplicates.
    assert (totals["accepted"], totals["duplicates"]) == (300, 300)
    assert totals["conflicts"] == 0
    assert not RejectedSample.objects.exists()


@pytest.mark.parametrize("change", ["delete", "flag"])
def test_a_change_to_readings_a_compactor_is_moving_waits_for_it_and_is_kept(settings, change):
    """A compactor has copied an hour's hot rows into its block and deleted them, not yet committed; a
    deletion (or a quality flag) of some of those readings must wait for it and then act on the block, not
    on the hot rows it can no longer see: else the readings come back from the block."""
    if connection.vendor == "sqlite":
        pytest.skip("SQLite has one writer at a time: there is no concurrency to test")
    settings.DAQBROKER_COMPACT_AFTER = 3600
    channel = make_channel(make_instrument(), slug="temp")
    ts = T0 + np.arange(0, 3600) * SECOND
    ingest_samples(SampleBatch(np.full(len(ts), channel.pk), ts, np.arange(3600.0)))
    compactor = HeldTransaction(lambda: compact_window(channel.pk, T0))
    outcome: list = []

    def act():
        try:
            if change == "delete":
                outcome.append(delete_readings([channel], T0 + 100 * SECOND, T0 + 200 * SECOND)[channel.pk])
            else:
                outcome.append(_set_quality(channel.pk, ts[100:200], Quality.SUSPECT, only_from=Quality.OK))
        except BaseException as error:  # reported below
            outcome.append(error)
        finally:
            connections.close_all()

    actor = threading.Thread(target=act)
    actor.start()
    try:
        wait_for(someone_waits_on_a_lock, timeout=30, message="the change to wait for the compactor's lock")
    finally:
        compactor.commit()
    actor.join(timeout=60)
    assert not actor.is_alive()
    assert outcome == [100], outcome
    got = read_readings(channel.pk, T0, T0 + HOUR)
    if change == "delete":
        assert got["ts"].tolist() == [t for t in ts.tolist() if not T0 + 100 * SECOND <= t < T0 + 200 * SECOND]
    else:
        assert got["quality"].tolist() == [Quality.SUSPECT if 100 <= i < 200 else Quality.OK for i in range(3600)]
