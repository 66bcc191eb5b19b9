"""Helpers shared by the rollup, query, statistics, export and retention tests."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from collection.models import Rollup, Sample
from collection.services import SampleBatch, ingest_samples
from collection.services.rollups import refresh_rollups
from daqbroker_agent.parsing import datetime_to_us

SECOND = 1_000_000
T0 = datetime_to_us(datetime(2024, 5, 6, 0, 0, 0, tzinfo=UTC))


def ingest(capture, channel_id: int, ts, values) -> None:
    """Ingest through the one write path, running its on-commit hooks (the rollup backlog receiver)."""
    ts = np.asarray(ts, dtype=np.int64)
    with capture(execute=True):
        ingest_samples(SampleBatch(np.full(len(ts), channel_id, dtype=np.int64), ts, np.asarray(values, dtype=float)))


def refresh_all(**kwargs) -> None:
    """Run the refresh until the backlog is empty, as the worker's self-requeueing task does."""
    for _ in range(1000):
        if not refresh_rollups(**kwargs).remaining:
            return
    raise AssertionError("the rollup backlog did not drain")


def stored_raw(channel_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = list(Sample.objects.filter(channel_id=channel_id).order_by("ts").values_list("ts", "value", "quality"))
    if not rows:
        return np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64)
    ts, value, quality = zip(*rows, strict=True)
    return np.array(ts, np.int64), np.array(value, float), np.array(quality, np.int64)


def stored_tiers(channel_id: int) -> dict[tuple[int, int], tuple]:
    fields = ("count", "flagged", "min_value", "max_value", "sum_value", "m2", "first_ts", "last_ts")
    return {
        (row[0], row[1]): row[2:]
        for row in Rollup.objects.filter(channel_id=channel_id).values_list("tier", "bucket", *fields)
    }
