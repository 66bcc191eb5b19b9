"""Each instrument's freshness columns (``last_reading_ts``, ``reading_interval_seconds``) follow its channels
and sources: moved forward by ingest (never back), recomputed when a channel or source is saved, moved or
deleted, and when deleting readings takes the latest away (docs/performance.md#many-things)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from collection.services import SampleBatch, ingest_samples
from collection.services.retention import delete_readings
from instruments.choices import ChannelKind, SourceKind
from instruments.models import Instrument
from instruments.tests.factories import make_channel, make_instrument, make_source

pytestmark = pytest.mark.django_db

T0 = 1_700_000_000_000_000


def freshness(instrument) -> tuple[int | None, int | None]:
    row = Instrument.objects.filter(pk=instrument.pk).values_list("last_reading_ts", "reading_interval_seconds")
    return tuple(row.get())  # type: ignore[return-value]


def test_ingest_moves_the_instruments_latest_reading_forward_never_back():
    instrument, other = make_instrument(), make_instrument()
    a, b = make_channel(instrument), make_channel(instrument, kind=ChannelKind.TEXT)
    c = make_channel(other)
    ingest_samples(SampleBatch.from_rows([(a.pk, T0, 1.0), (b.pk, T0 + 5, "on"), (c.pk, T0 + 2, 2.0)]))
    assert freshness(instrument)[0] == T0 + 5
    assert freshness(other)[0] == T0 + 2
    ingest_samples(SampleBatch.from_rows([(a.pk, T0 - 100, 3.0)]))  # late data: the latest stays
    assert freshness(instrument)[0] == T0 + 5
    with CaptureQueriesContext(connection) as queries:
        ingest_samples(SampleBatch.from_rows([(a.pk, T0 + 10, 4.0), (c.pk, T0 + 20, 5.0)]))
    assert (freshness(instrument)[0], freshness(other)[0]) == (T0 + 10, T0 + 20)
    updates = [q["sql"] for q in queries if Instrument._meta.db_table in q["sql"] and "last_reading_ts" in q["sql"]]
    assert len(updates) == 1  # one statement for every instrument of the batch (PostgreSQL: in the CTE)


def test_the_expected_interval_follows_channels_and_sources():
    instrument = make_instrument()
    assert freshness(instrument) == (None, None)
    source = make_source(instrument, interval_seconds=60)
    channel = make_channel(instrument, source=source, source_field="v")
    assert freshness(instrument)[1] == 60
    source.interval_seconds = 30
    source.save()
    assert freshness(instrument)[1] == 30
    make_channel(instrument, expected_interval_seconds=10)
    assert freshness(instrument)[1] == 10
    agent_fed = make_instrument()
    agent_config = {"collect": {"kind": "serial", "url": "/dev/ttyS0"}}
    make_channel(agent_fed, source=make_source(agent_fed, kind=SourceKind.AGENT, config=agent_config), source_field="v")
    assert freshness(agent_fed)[1] is None  # an agent's interval says nothing of its readings
    # A channel moved to another instrument: both are recomputed.
    moved = Instrument.objects.get(pk=instrument.pk).channels.get(pk=channel.pk)
    moved.instrument, moved.source = agent_fed, None
    moved.expected_interval_seconds = 120
    moved.save()
    assert freshness(agent_fed)[1] == 120
    assert freshness(instrument)[1] == 10
    moved.delete()
    assert freshness(agent_fed)[1] is None


def test_deleting_the_latest_readings_moves_the_instruments_latest_reading_back():
    instrument = make_instrument()
    channel = make_channel(instrument)
    ingest_samples(SampleBatch.from_rows([(channel.pk, T0, 1.0), (channel.pk, T0 + 10, 2.0)]))
    assert freshness(instrument)[0] == T0 + 10
    delete_readings([channel], T0 + 5, T0 + 20)
    assert freshness(instrument)[0] == T0
