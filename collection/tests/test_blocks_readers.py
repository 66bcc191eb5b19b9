"""Every reader on the one fetch path answers the same before and after compaction (docs/storage.md)."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pyarrow.parquet as pq
import pytest

from collection.models import Rollup, Sample
from collection.services import SampleBatch, ingest_samples
from collection.services.blocks import compact
from collection.services.export import ExportRequest, export
from collection.services.query import fetch_raw, iter_raw, query_series
from collection.services.rollups import pack, rebuild_rollups
from collection.services.series import read_series
from collection.services.statistics import range_statistics
from collection.tests.readings import SECOND, T0, ingest, refresh_all, stored_tiers
from instruments.choices import ChannelKind
from instruments.tests.factories import make_channel, make_instrument

pytestmark = pytest.mark.django_db

HOUR = 3600 * SECOND
END = T0 + 3 * HOUR


@pytest.fixture
def station(django_capture_on_commit_callbacks):
    """Three hours at 1 Hz of a noisy 3-decimal channel with a flagged sentinel, and a text channel."""
    instrument = make_instrument()
    numeric = make_channel(instrument, slug="temp")
    text = make_channel(instrument, slug="status", kind=ChannelKind.TEXT)
    ts = T0 + np.arange(0, 3 * 3600) * SECOND
    values = np.round(20 + np.random.default_rng(3).normal(0, 0.5, len(ts)), 3)
    ingest(django_capture_on_commit_callbacks, numeric.pk, ts, values)
    Sample.objects.filter(channel=numeric, ts__in=[int(ts[100]), int(ts[5000])]).update(quality=2)
    stamps = T0 + np.arange(0, 3 * 3600, 60) * SECOND
    with django_capture_on_commit_callbacks(execute=True):
        ingest_samples(SampleBatch(np.full(len(stamps), text.pk), stamps, np.array(["run", "idle"] * 90, dtype=object)))
    rebuild_rollups([numeric.pk])
    return instrument, numeric, text


def answers(numeric, text) -> dict:
    """What the readers answer, in comparable form."""
    out: dict = {}
    for lo, hi, points in [
        (T0, END, 2000),
        (T0, END, 200),
        (T0 + 10 * SECOND, T0 + 40 * SECOND, 100),
        (T0, END, 20000),
    ]:
        for flagged in (False, True):
            series = query_series([numeric.pk], lo, hi, points, include_flagged=flagged)[0]
            out[("series", lo, hi, points, flagged)] = {
                k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in dataclasses.asdict(series).items()
            }
    for limit in (None, 1, 5000):
        raw = fetch_raw(numeric.pk, T0 + 7, END - 3, include_flagged=True, limit=limit)
        out[("fetch_raw", limit)] = [raw[k].tolist() for k in ("ts", "value", "quality")]
    out["iter_raw"] = [t for c in iter_raw(numeric.pk, T0, END, include_flagged=False) for t in c["ts"].tolist()]
    for kwargs in (
        {"start": T0 + HOUR - 5 * SECOND, "end": T0 + HOUR + 5 * SECOND},
        {"after": T0 + 100 * SECOND, "limit": 3},
        {"before": T0 + 2 * HOUR + 1, "limit": 2, "last": True},
        {"before": T0 + 1, "limit": 2, "last": True},
    ):
        out[("read_series", tuple(sorted(kwargs.items())))] = [a.tolist() for a in read_series(numeric.pk, **kwargs)]
    stats = range_statistics([numeric.pk], T0 + 17, END - 170 * SECOND, percentiles=(5, 50, 95))[0]
    out["statistics"] = dataclasses.asdict(stats)
    for layout in ("long", "wide"):
        for quality in (False, True):
            request = ExportRequest(
                channels=[numeric, text], layout=layout, quality=quality, include_flagged=quality, time_format="iso"
            )
            out[("export", layout, quality)] = b"".join(export(request))
    for layout in ("long", "wide"):  # the same table (its row groups follow the chunks read)
        data = b"".join(export(ExportRequest(channels=[numeric, text], format="parquet", layout=layout)))
        out[("parquet", layout)] = pq.read_table(io.BytesIO(data)).to_pydict()
    return out


def test_every_reader_answers_the_same_from_blocks(station):
    _, numeric, text = station
    before = answers(numeric, text)
    tiers = stored_tiers(numeric.pk)
    assert compact(END).windows == 6  # three windows of each channel
    assert not Sample.objects.filter(channel=numeric).exists()
    assert pack(END) == 3  # and the numeric channel's fine tiers of those hours
    assert not Rollup.objects.filter(channel=numeric, tier=10).exists()
    after = answers(numeric, text)
    assert after.keys() == before.keys()
    for key in before:
        assert after[key] == before[key], key
    rebuild_rollups([numeric.pk])  # the tiers recomputed from the blocks are the same
    assert stored_tiers(numeric.pk) == tiers


def test_readers_merge_blocks_with_hot_rows_of_the_open_window(station):
    _, numeric, text = station
    before = answers(numeric, text)
    assert compact(T0 + 2 * HOUR + 30 * 60 * SECOND).windows == 4  # the third hour stays hot
    assert Sample.objects.filter(channel=numeric).count() == 3600
    after = answers(numeric, text)
    for key in before:
        assert after[key] == before[key], key


def test_rollup_refresh_reads_late_data_beside_blocks(station, django_capture_on_commit_callbacks):
    _, numeric, _ = station
    compact(END)
    Rollup.objects.all().delete()
    rebuild_rollups([numeric.pk])
    refresh_all()
    tiers = stored_tiers(numeric.pk)
    assert sum(count for (tier, _), (count, *_rest) in tiers.items() if tier == 10) == 3 * 3600 - 2
