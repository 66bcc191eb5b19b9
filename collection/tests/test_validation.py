"""Quality flags after arrival: spike checks, and "validate now" re-flagging stored readings."""

from __future__ import annotations

import numpy as np
import pytest

from collection.alarms.models import SpikeCheck
from collection.alarms.tasks import validate_channels
from collection.choices import Quality
from collection.models import Sample
from collection.services import SampleBatch, ingest_samples
from collection.services.validation import flag_spikes, revalidate, spike_mask
from daqbroker_agent.parsing import now_us
from instruments.tests.factories import make_channel, make_instrument

pytestmark = pytest.mark.django_db

S = 1_000_000


def ingest(channel, start, values):
    ts = start + np.arange(len(values), dtype=np.int64) * S
    return ingest_samples(SampleBatch(np.full(len(ts), channel.pk), ts, np.asarray(values, dtype=float))).spans


def qualities(channel) -> list[int]:
    return list(Sample.objects.filter(channel=channel).order_by("ts").values_list("quality", flat=True))


def test_spike_test_values():
    values = np.array([10.0, 10.2, 25.0, 10.1, 10.3, 11.0, 12.0])
    assert spike_mask(values, 5).tolist() == [False, False, True, False, False, False, False]
    # A steady ramp is not a spike however steep.
    assert not spike_mask(np.arange(0, 100, 10.0), 5).any()


def test_spikes_are_flagged_suspect_once_both_neighbours_exist():
    instrument = make_instrument()
    temp = make_channel(instrument, slug="temp", units="degC", missing_values=[-9999])
    other = make_channel(instrument, slug="rh", units="%")
    SpikeCheck.objects.create(name="temperature spikes", units="degC", threshold=5)
    t0 = now_us() - 100 * S
    spans = ingest(temp, t0, [10, 10.2, 25, 10.1, -9999, 10.3, 30])
    spans.update(ingest(other, t0, [10, 10.2, 25, 10.1]))
    assert flag_spikes(spans) == 1
    # 25 is a spike; the sentinel is neither judged nor a neighbour; the last reading awaits its successor.
    assert qualities(temp) == [0, 0, Quality.SUSPECT, 0, Quality.MISSING, 0, 0]
    assert qualities(other) == [0, 0, 0, 0]  # not selected by the check (units)
    spans = ingest(temp, t0 + 7 * S, [10.4])
    assert flag_spikes(spans) == 1
    assert qualities(temp)[-2:] == [Quality.SUSPECT, 0]


def test_validate_now_reflags_readings_after_the_range_or_sentinels_change():
    instrument = make_instrument()
    temp = make_channel(instrument, slug="temp")
    t0 = now_us() - 100 * S
    ingest(temp, t0, [10, 55, -7999, 20])
    assert qualities(temp) == [0, 0, 0, 0]
    temp.valid_max = 50
    temp.missing_values = [-7999]
    temp.save()
    result = revalidate([temp.pk], since_us=t0 + S)  # from the second reading on
    assert (result.channels, result.readings, result.flagged) == (1, 3, 2)
    assert qualities(temp) == [0, Quality.OUT_OF_RANGE, Quality.MISSING, 0]
    temp.valid_max = None
    temp.save()
    validate_channels([temp.pk])
    assert qualities(temp) == [0, 0, Quality.MISSING, 0]
