"""Each instrument's freshness columns (``last_reading_ts``, ``reading_interval_seconds``) follow its channels
and sources: moved forward by ingest after its commit (never back; caught up periodically when that was
lost), recomputed when a channel or source is saved, moved or deleted, and when deleting readings takes
the latest away (docs/pages.md#freshness)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from collection.services import SampleBatch, ingest_samples
from collection.services.ingest import forget_written_freshness
from collection.services.retention import delete_readings
from instruments.choices import ChannelKind, SourceKind
from instruments.models import Instrument, catch_up_instrument_freshness
from instruments.tests.factories import make_channel, make_instrument, make_source

pytestmark = pytest.mark.django_db

T0 = 1_700_000_000_000_000
S = 1_000_000  # one second, in µs


def freshness(instrument) -> tuple[int | None, int | None]:
    row = Instrument.objects.filter(pk=instrument.pk).values_list("last_reading_ts", "reading_interval_seconds")
    return tuple(row.get())  # type: ignore[return-value]


def ingest(callbacks, rows) -> None:
    """Ingest and commit (the test's transaction stands in for the commit: its on-commit work runs)."""
    with callbacks(execute=True):
        ingest_samples(SampleBatch.from_rows(rows))


def test_ingest_moves_the_instruments_latest_reading_forward_never_back(django_capture_on_commit_callbacks):
    instrument, other = make_instrument(), make_instrument()
    a, b = make_channel(instrument), make_channel(instrument, kind=ChannelKind.TEXT)
    c = make_channel(other)
    ingest(django_capture_on_commit_callbacks, [(a.pk, T0, 1.0), (b.pk, T0 + 5 * S, "on"), (c.pk, T0 + 2 * S, 2.0)])
    assert freshness(instrument)[0] == T0 + 5 * S
    assert freshness(other)[0] == T0 + 2 * S
    ingest(django_capture_on_commit_callbacks, [(a.pk, T0 - 100 * S, 3.0)])  # late data: the latest stays
    assert freshness(instrument)[0] == T0 + 5 * S
    with CaptureQueriesContext(connection) as queries:
        ingest(django_capture_on_commit_callbacks, [(a.pk, T0 + 10 * S, 4.0), (c.pk, T0 + 20 * S, 5.0)])
    assert (freshness(instrument)[0], freshness(other)[0]) == (T0 + 10 * S, T0 + 20 * S)
    updates = [q["sql"] for q in queries if Instrument._meta.db_table in q["sql"] and "last_reading_ts" in q["sql"]]
    assert len(updates) == 1  # one statement for every instrument of the batch, after commit


def test_the_freshness_moves_only_when_the_ingest_commits(django_capture_on_commit_callbacks):
    instrument = make_instrument()
    channel = make_channel(instrument)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        ingest_samples(SampleBatch.from_rows([(channel.pk, T0, 1.0)]))
        assert freshness(instrument)[0] is None  # written, not committed: the instrument's row untouched
    for callback in callbacks:  # the commit's follow-up work, the freshness among it
        callback()
    assert freshness(instrument)[0] == T0


def test_a_reading_less_than_a_second_newer_than_what_this_process_wrote_is_not_written_again(
    django_capture_on_commit_callbacks,
):
    instrument = make_instrument()
    channel = make_channel(instrument)
    ingest(django_capture_on_commit_callbacks, [(channel.pk, T0, 1.0)])
    with CaptureQueriesContext(connection) as queries:
        ingest(django_capture_on_commit_callbacks, [(channel.pk, T0 + S - 1, 2.0)])
    assert freshness(instrument)[0] == T0  # behind by under a second (FRESHNESS_STEP_US)
    assert not [q for q in queries if "last_reading_ts" in q["sql"]]
    ingest(django_capture_on_commit_callbacks, [(channel.pk, T0 + S, 3.0)])
    assert freshness(instrument)[0] == T0 + S
    # Another process (or a restart) knows nothing of what this one wrote: it writes.
    forget_written_freshness()
    ingest(django_capture_on_commit_callbacks, [(channel.pk, T0 + S + 1, 4.0)])
    assert freshness(instrument)[0] == T0 + S + 1


def test_the_periodic_catch_up_moves_forward_a_freshness_left_behind(django_capture_on_commit_callbacks):
    instrument, other = make_instrument(), make_instrument()
    channel, up_to_date = make_channel(instrument), make_channel(other)
    ingest(django_capture_on_commit_callbacks, [(up_to_date.pk, T0, 1.0)])
    with django_capture_on_commit_callbacks(execute=False):  # killed between its commit and the update
        ingest_samples(SampleBatch.from_rows([(channel.pk, T0 + 7 * S, 1.0)]))
    assert freshness(instrument)[0] is None
    assert catch_up_instrument_freshness() == 1
    assert (freshness(instrument)[0], freshness(other)[0]) == (T0 + 7 * S, T0)
    assert catch_up_instrument_freshness() == 0


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


def test_deleting_the_latest_readings_moves_the_instruments_latest_reading_back(django_capture_on_commit_callbacks):
    instrument = make_instrument()
    channel = make_channel(instrument)
    ingest(django_capture_on_commit_callbacks, [(channel.pk, T0, 1.0), (channel.pk, T0 + 10, 2.0)])
    assert freshness(instrument)[0] == T0 + 10
    delete_readings([channel], T0 + 5, T0 + 20)
    assert freshness(instrument)[0] == T0
