"""The fast reads into numpy (collection.services.fetch): the same readings as the ORM gives, to the bit."""

from __future__ import annotations

import numpy as np
import pytest

from collection import storage
from collection.models import Sample
from collection.services.fetch import fetch_readings
from collection.tests.readings import SECOND, T0
from instruments.tests.factories import make_channel, make_instrument

pytestmark = pytest.mark.django_db

SQL = 'SELECT ts, value, quality FROM "collection_sample" WHERE channel_id = %s AND ts >= %s AND ts < %s ORDER BY ts'


def orm_readings(channel_id: int) -> dict[str, list]:
    rows = list(Sample.objects.filter(channel_id=channel_id).order_by("ts").values_list("ts", "value", "quality"))
    return {
        "ts": [r[0] for r in rows],
        "value": np.array([r[1] for r in rows], dtype=np.float64).view(np.uint64).tolist(),
        "quality": [r[2] for r in rows],
    }


def test_fetch_readings_gives_every_reading_with_its_flag_and_exact_bits():
    channel = make_channel(make_instrument(), slug="fetched")
    ts = T0 + np.arange(1000, dtype=np.int64) * SECOND
    values = np.round(np.random.default_rng(3).normal(20, 5, len(ts)), 3)
    values[[3, 4, 5]] = [-0.0, 5e-324, -1.7976931348623157e308]  # negative zero, subnormal, the least float
    quality = np.zeros(len(ts), np.int16)
    quality[[0, 17, 999]] = [1, 2, 32767]  # flags at both ends and inside
    storage.insert_numeric(np.full(len(ts), channel.pk, np.int64), ts, values, quality)

    got = fetch_readings(SQL.replace('"', ""), [channel.pk, T0, T0 + 10**12])
    assert got["ts"].dtype == np.int64 and got["value"].dtype == np.float64 and got["quality"].dtype == np.int64
    assert {
        "ts": got["ts"].tolist(),
        "value": got["value"].view(np.uint64).tolist(),
        "quality": got["quality"].tolist(),
    } == orm_readings(channel.pk)


def test_fetch_readings_of_an_empty_range_is_empty():
    channel = make_channel(make_instrument(), slug="empty")
    got = fetch_readings(SQL.replace('"', ""), [channel.pk, T0, T0 + 10**12])
    assert [len(column) for column in got.values()] == [0, 0, 0]
