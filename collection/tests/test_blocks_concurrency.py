"""Two compaction workers and an ingesting sender at once, on real connections (PostgreSQL, MariaDB)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from django.db import connection, connections

from collection.models import ReadingBlock, RejectedSample, Sample
from collection.services import SampleBatch, ingest_samples
from collection.services.blocks import compact, read_readings
from collection.tests.readings import SECOND, T0
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
