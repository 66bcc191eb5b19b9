"""Derived channels: computed after readings arrive, aligned on timestamps, in dependency order."""

from __future__ import annotations

import numpy as np
import pytest

from collection.alarms import tasks
from collection.choices import Origin, Quality
from collection.models import Sample
from collection.services import SampleBatch, ingest_samples
from collection.services.derived import compute_derived, formulas_of
from instruments.choices import ChannelKind
from instruments.models import Channel
from instruments.tests.factories import make_channel, make_instrument

pytestmark = pytest.mark.django_db

S = 1_000_000
T0 = 1_714_978_800 * S


@pytest.fixture
def station():
    instrument = make_instrument()
    t1 = make_channel(instrument, slug="t1", missing_values=[-9999])
    t2 = make_channel(instrument, slug="t2")
    mean = make_channel(instrument, slug="mean", kind=ChannelKind.DERIVED, expression="(t1 + t2) / 2")
    doubled = make_channel(instrument, slug="doubled", kind=ChannelKind.DERIVED, expression="mean * 2")
    norm = make_channel(instrument, slug="norm", kind=ChannelKind.DERIVED, expression="sqrt(t1*t1 + t2*t2)")
    return instrument, t1, t2, mean, doubled, norm


def ingest(channel, seconds, values) -> dict[int, tuple[int, int]]:
    ts = T0 + np.asarray(seconds, dtype=np.int64) * S
    result = ingest_samples(SampleBatch(np.full(len(ts), channel.pk), ts, np.asarray(values, dtype=float)))
    return result.spans


def series(channel) -> list[tuple[int, float]]:
    return [
        ((ts - T0) // S, value)
        for ts, value in Sample.objects.filter(channel=channel).order_by("ts").values_list("ts", "value")
    ]


def test_derived_readings_exist_where_every_input_has_a_reading(station):
    _, t1, t2, mean, doubled, norm = station
    spans = {**ingest(t1, [0, 1, 2, 3, 4], [10, 20, -9999, 40, 3]), **ingest(t2, [0, 1, 2, 4], [20, 30, 40, 4])}
    stored = compute_derived(spans)
    # t = 2: t1 is a missing-value sentinel; t = 3: t2 has no reading.
    assert series(mean) == [(0, 15.0), (1, 25.0), (4, 3.5)]
    assert series(doubled) == [(0, 30.0), (1, 50.0), (4, 7.0)]  # computed after `mean`, in the same pass
    assert series(norm)[-1] == (4, 5.0)
    assert stored == 9


def test_a_late_input_completes_the_derived_reading_and_nothing_is_stored_twice(station):
    _, t1, t2, mean, doubled, _ = station
    compute_derived({**ingest(t1, [0, 1], [10, 20]), **ingest(t2, [0], [20])})
    assert series(mean) == [(0, 15.0)]
    assert compute_derived(ingest(t2, [1], [40])) == 3  # mean, doubled and norm at t = 1
    assert series(mean) == [(0, 15.0), (1, 30.0)]
    assert series(doubled) == [(0, 30.0), (1, 60.0)]


def test_values_that_are_not_finite_are_not_stored():
    instrument = make_instrument()
    x = make_channel(instrument, slug="x")
    logx = make_channel(instrument, slug="logx", kind=ChannelKind.DERIVED, expression="log(x)")
    compute_derived(ingest(x, [0, 1, 2], [1, 0, -1]))
    assert series(logx) == [(0, 0.0)]


def test_derived_readings_are_flagged_by_their_own_range(station):
    _, t1, t2, mean, _, _ = station
    mean.valid_max = 20
    mean.save()
    compute_derived({**ingest(t1, [0, 1], [10, 20]), **ingest(t2, [0, 1], [20, 30])})
    assert list(Sample.objects.filter(channel=mean).order_by("ts").values_list("quality", flat=True)) == [
        Quality.OK,
        Quality.OUT_OF_RANGE,
    ]


def test_a_cycle_is_skipped_and_the_rest_computed(station, caplog):
    instrument, t1, t2, mean, _, _ = station
    # The registry refuses these when saved through forms; written directly, the evaluator must still cope.
    a = Channel.objects.create(instrument=instrument, name="a", slug="a", kind=ChannelKind.DERIVED, expression="b + 1")
    Channel.objects.create(instrument=instrument, name="b", slug="b", kind=ChannelKind.DERIVED, expression="a + 1")
    ordered = [f.channel.slug for f in formulas_of([instrument.pk])]
    assert ordered.index("mean") < ordered.index("doubled")
    assert "a" not in ordered and "b" not in ordered
    assert "refer to each other in a cycle" in caplog.text
    compute_derived({**ingest(t1, [0], [10]), **ingest(t2, [0], [20])})
    assert series(mean) == [(0, 15.0)]
    assert not Sample.objects.filter(channel=a).exists()


def test_after_ingest_processing_computes_derived_channels_but_not_from_derived_readings(station):
    _, t1, t2, mean, doubled, _ = station
    spans = {**ingest(t1, [0], [10]), **ingest(t2, [0], [20])}
    assert tasks.process(spans, Origin.FILE)["derived"] == 3
    Sample.objects.filter(channel=doubled).delete()
    # Readings of derived channels do not start another derivation: each pass computes the whole chain.
    assert tasks.process({mean.pk: spans[t1.pk]}, Origin.DERIVED)["derived"] == 0
    assert series(doubled) == []
