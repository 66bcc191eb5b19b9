"""Scheduling: which sources are due, claiming them once, leases, backoff, and runs left by dead workers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from collection.choices import RunStatus
from collection.models import CollectionRun
from collection.services import collect
from instruments.choices import SourceKind
from instruments.models import DataSource
from instruments.tests.factories import make_channel, make_instrument, make_source, make_user
from instruments.tests.many_things import build_things

pytestmark = pytest.mark.django_db


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "logger"
    path.mkdir()
    return path


def collected(folder, **extra) -> DataSource:
    """A file source with a channel taking its second column (a source without channels waits)."""
    source = make_source(config={"path": str(folder), "columns": ["time", "value"], **extra.pop("config", {})}, **extra)
    make_channel(source.instrument, source=source, source_field="value")
    return source


def test_a_due_source_is_claimed_once(folder):
    source = collected(folder)
    now = timezone.now()
    assert collect.claim_due_sources(now) == [source.pk]
    assert collect.claim_due_sources(now) == []  # its next run is now an interval away
    source.refresh_from_db()
    assert source.next_run_at == now + timedelta(seconds=source.interval_seconds)


def test_two_dispatchers_that_saw_the_same_due_source_claim_it_once(folder):
    source = collected(folder)
    now = timezone.now()
    seen_by_second = list(collect.due_sources(now).values_list("id", "next_run_at"))  # read before the first claims
    assert collect.claim_due_sources(now) == [source.pk]
    ((source_id, previous),) = seen_by_second
    # The second dispatcher's compare-and-set finds next_run_at changed: it claims nothing.
    assert DataSource.objects.filter(pk=source_id, next_run_at=previous).update(next_run_at=now) == 0


def test_disabled_inactive_and_agent_sources_are_never_due(folder):
    make_source(config={"path": str(folder)}, enabled=False)
    make_source(make_instrument(active=False), config={"path": str(folder)})
    make_source(kind=SourceKind.AGENT, config={"collect": {"kind": "serial", "url": "/dev/ttyS0"}})
    assert collect.claim_due_sources() == []


def test_a_source_leased_by_another_worker_is_not_collected(folder):
    source = collected(folder)
    DataSource.objects.filter(pk=source.pk).update(
        lease_owner="another-worker", lease_expires=timezone.now() + timedelta(seconds=60)
    )
    assert collect.collect_source(source.pk) is None
    assert not CollectionRun.objects.exists()


def test_an_expired_lease_is_taken_over_and_the_dead_run_is_recorded_as_lost(folder, settings):
    source = collected(folder)
    long_ago = timezone.now() - timedelta(seconds=settings.DAQBROKER_COLLECT_LEASE_SECONDS + 5)
    lost = CollectionRun.objects.create(source=source, started_at=long_ago, worker="deadhost:123")
    DataSource.objects.filter(pk=source.pk).update(lease_owner="deadhost", lease_expires=timezone.now())
    run = collect.collect_source(source.pk)
    assert run.status == RunStatus.SUCCESS
    lost.refresh_from_db()
    assert lost.status == RunStatus.FAILED
    assert lost.error.startswith("the worker stopped during this run")
    source.refresh_from_db()
    assert source.lease_owner == "" and source.lease_expires is None


def test_a_run_is_recorded_with_its_counts_and_worker(folder):
    day = datetime.now(UTC).date() - timedelta(days=2)  # recent: near the file's modification time
    (folder / "a.csv").write_text(f"{day}T07:08:09Z,1\n")
    source = collected(folder)
    run = collect.collect_source(source.pk)
    assert run.status == RunStatus.SUCCESS
    assert run.finished_at >= run.started_at
    assert ":" in run.worker
    assert (run.accepted, run.duplicates, run.rejected) == (1, 0, 0)
    source.refresh_from_db()
    assert source.last_success_at == run.finished_at
    assert source.consecutive_failures == 0


def test_failures_back_off_exponentially_up_to_an_hour_and_success_resets_them(folder):
    source = collected(folder, config={"path": str(folder / "missing")}, interval_seconds=60)
    delays = []
    for _ in range(8):
        run = collect.collect_source(source.pk)
        source.refresh_from_db()
        delays.append((source.next_run_at - run.finished_at).total_seconds())
    assert source.consecutive_failures == 8
    assert delays[0] == pytest.approx(120, abs=2)
    assert delays[1] == pytest.approx(240, abs=2)
    assert delays[-1] == pytest.approx(3600, abs=2)
    assert source.last_error.startswith("FileNotFoundError")
    (folder / "missing").mkdir()
    collect.collect_source(source.pk)
    source.refresh_from_db()
    assert (source.consecutive_failures, source.last_error) == (0, "")


def test_old_runs_are_pruned(folder):
    source = make_source(config={"path": str(folder)})
    CollectionRun.objects.create(source=source, started_at=timezone.now() - timedelta(days=8))
    recent = CollectionRun.objects.create(source=source, started_at=timezone.now())
    assert collect.prune_run_history() == 1
    assert list(CollectionRun.objects.all()) == [recent]


# --- a pass at scale ---------------------------------------------------------------------------------


def _dispatch_queries(now) -> tuple[list[int], int]:
    with CaptureQueriesContext(connection) as queries:
        claimed = collect.claim_due_sources(now)
    return claimed, len(queries)


def test_a_dispatch_pass_costs_the_same_few_queries_for_5_or_60_due_sources(folder):
    owner = make_user()
    small = build_things(5, owner, channels=2, prefix="small", path=str(folder))
    now = timezone.now()
    claimed, few = _dispatch_queries(now)
    assert len(claimed) == len(small)
    large = build_things(60, owner, channels=2, prefix="large", path=str(folder))
    claimed, many = _dispatch_queries(now)
    assert sorted(claimed) == sorted(DataSource.objects.filter(instrument_id__in=large).values_list("pk", flat=True))
    assert few == many
    # One UPDATE … RETURNING on SQLite and PostgreSQL; on MariaDB the bounded waits (SET, SET back), the batch
    # read without locks, the SELECT … FOR UPDATE SKIP LOCKED of those source rows alone (MariaDB has no FOR
    # UPDATE OF: locking the joined query would lock instruments' rows too) and one UPDATE, plus the test
    # transaction's savepoint and release.
    assert many <= (7 if connection.vendor == "mysql" else 1)


def test_each_claimed_source_moves_on_by_its_own_interval(folder):
    sources = [collected(folder, interval_seconds=seconds) for seconds in (5, 60, 3600)]
    now = timezone.now()
    assert collect.claim_due_sources(now) == sorted(s.pk for s in sources)
    for source in sources:
        source.refresh_from_db()
        assert source.next_run_at == now + timedelta(seconds=source.interval_seconds)
    assert collect.claim_due_sources(now + timedelta(seconds=4)) == []
    assert collect.claim_due_sources(now + timedelta(seconds=5)) == [sources[0].pk]
    assert collect.claim_due_sources(now + timedelta(seconds=60)) == [sources[0].pk, sources[1].pk]


@pytest.mark.django_db(transaction=True)
def test_a_dispatch_pass_outside_any_transaction_claims_and_commits(folder):
    """As beat's task runs it: in autocommit, not inside a test's transaction (the locking statement must
    open its own)."""
    source = collected(folder)
    now = timezone.now()
    assert connection.get_autocommit()
    assert collect.claim_due_sources(now) == [source.pk]
    assert connection.get_autocommit()
    assert DataSource.objects.get(pk=source.pk).next_run_at == now + timedelta(seconds=source.interval_seconds)
    assert collect.claim_due_sources(now) == []


def test_a_pass_claims_at_most_its_batch_the_longest_due_first_and_the_next_pass_the_rest(folder):
    now = timezone.now()
    sources = [collected(folder) for _ in range(5)]
    for minutes, source in zip((1, 5, 3, 4, 2), sources, strict=True):
        DataSource.objects.filter(pk=source.pk).update(next_run_at=now - timedelta(minutes=minutes))
    with CaptureQueriesContext(connection) as first_pass:
        first = collect.claim_due_sources(now, limit=3)
    assert first == sorted([sources[1].pk, sources[3].pk, sources[2].pk])  # due 5, 4 and 3 minutes ago
    with CaptureQueriesContext(connection) as second_pass:
        second = collect.claim_due_sources(now, limit=3)
    assert second == sorted([sources[0].pk, sources[4].pk])
    assert collect.claim_due_sources(now, limit=3) == []
    assert len(first_pass) == len(second_pass) <= (7 if connection.vendor == "mysql" else 1)  # as above
