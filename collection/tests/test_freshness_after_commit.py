"""No ingest transaction holds an instrument's row (the many-things merge was reverted for it, issue 22).

Each instrument's latest reading (``Instrument.last_reading_ts``) is moved forward after the ingest
transaction commits, in a statement of its own. So while one writer's ingest for instrument A is open (a
slow or frozen collector, its readings written, not committed), another writer's readings for another
channel of A commit without waiting, and A's freshness moves only with what is committed. And the
dispatcher's claim locks source rows only: an instrument row held elsewhere never makes it skip the
instrument's due sources (MariaDB has no ``FOR UPDATE OF``).

Real row locks between two connections: PostgreSQL and MariaDB. SQLite has one writer for the whole
database (a second writer waits for the first whatever rows they touch): nothing to show there.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import connection, transaction
from django.utils import timezone

from collection.services import SampleBatch, collect, ingest_samples
from collection.tests.held import DEADLINE, HeldTransaction
from instruments.models import Instrument
from instruments.tests.factories import make_channel, make_instrument, make_source

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.engine_dependent]

SECOND = 1_000_000
T0 = 1_767_323_045_000_000


@pytest.fixture(autouse=True)
def _row_locks():
    if connection.vendor == "sqlite":
        pytest.skip("SQLite has one writer and no row locks: a second writer waits whatever rows it touches")


def freshness(instrument: Instrument) -> int | None:
    return Instrument.objects.filter(pk=instrument.pk).values_list("last_reading_ts", flat=True).get()


def bound_waits(seconds: int) -> None:
    """This connection waits at most ``seconds`` for a row lock, then fails (instead of hanging the test)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET lock_timeout = %s", [f"{seconds}s"])
        else:
            cursor.execute("SET SESSION innodb_lock_wait_timeout = %s", [seconds])


@pytest.fixture
def held() -> Iterator[list[HeldTransaction]]:
    made: list[HeldTransaction] = []
    yield made
    for transaction_held in made:
        transaction_held.release.set()
        transaction_held.thread.join(DEADLINE)


def test_an_open_ingest_holds_no_instrument_row_and_freshness_moves_only_after_commit(held):
    instrument = make_instrument()
    first, second = make_channel(instrument), make_channel(instrument)
    slow = HeldTransaction(lambda: ingest_samples(SampleBatch.from_rows([(first.pk, T0 + 10 * SECOND, 1.0)])))
    held.append(slow)
    # The slow writer's readings are written, not committed: nothing of them shows yet.
    assert freshness(instrument) is None
    # Another channel of the same instrument: its ingest commits without waiting on the slow one (it would
    # fail after 2 s if the instrument's row were held, as it was when ingest moved it in its transaction).
    bound_waits(2)
    result = ingest_samples(SampleBatch.from_rows([(second.pk, T0 + 5 * SECOND, 2.0)]))
    assert result.accepted == 1
    assert freshness(instrument) == T0 + 5 * SECOND
    slow.commit()
    assert freshness(instrument) == T0 + 10 * SECOND  # moved by the slow writer once it committed


def test_a_rolled_back_ingest_leaves_the_freshness_alone():
    instrument = make_instrument()
    channel = make_channel(instrument)
    with pytest.raises(RuntimeError), transaction.atomic():  # a collector failing before its commit
        ingest_samples(SampleBatch.from_rows([(channel.pk, T0, 1.0)]))
        raise RuntimeError("the collector fails before its commit")
    assert freshness(instrument) is None


def test_the_dispatcher_claims_the_due_sources_of_an_instrument_whose_row_another_transaction_holds(tmp_path, held):
    instrument = make_instrument()
    sources = []
    for n in range(2):
        source = make_source(instrument, config={"path": str(tmp_path), "columns": ["time", "value"]}, name=f"s{n}")
        make_channel(instrument, source=source, source_field="value")
        sources.append(source)
    # An admin saving the instrument (or ingest's freshness update after commit): its row held, uncommitted.
    held.append(HeldTransaction(lambda: Instrument.objects.filter(pk=instrument.pk).update(location="Hall B")))
    bound_waits(2)
    assert collect.claim_due_sources(timezone.now()) == sorted(s.pk for s in sources)
