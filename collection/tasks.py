"""Celery tasks. They take ids, return quietly when the row is gone, and are safe to run twice."""

from __future__ import annotations

import time
from dataclasses import asdict

from celery import current_app, shared_task
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Max

from accounts import permissions
from collection.choices import RunStatus
from collection.services import collect, quarantine
from collection.services.planner import refresh_planner_statistics
from collection.services.raw_files import clean_archive
from collection.services.retention import enforce_retention
from collection.services.rollups import compact_and_pack, pack, refresh_rollups
from instruments.models import catch_up_instrument_freshness


@shared_task(ignore_result=True)
def dispatch_due_sources() -> int:
    """Enqueue one collection per due source (claimed by compare-and-set: never twice), at most
    ``DISPATCH_BATCH`` per pass; a full batch queues the next pass at once, so a backlog (every source due
    after an outage, say) drains pass after bounded pass instead of in one long one."""
    claimed = collect.claim_due_sources(limit=settings.DISPATCH_BATCH)
    # A collection that waited longer than a few dispatch periods is stale: the next claim supersedes it.
    expires = max(30, settings.DISPATCH_INTERVAL_SECONDS * 6)
    # In bulk: one broker connection and channel for every message of the pass, not one checkout per message.
    with current_app.producer_or_acquire() as producer:
        for source_id in claimed:
            collect_source.apply_async(args=(source_id,), expires=expires, producer=producer)
        if len(claimed) >= settings.DISPATCH_BATCH:
            dispatch_due_sources.apply_async(expires=expires, producer=producer)
    return len(claimed)


# Stopped (softly, then for good) well before its lease on the source runs out: see collect.collect_source.
@shared_task(
    ignore_result=True,
    soft_time_limit=int(settings.DAQBROKER_COLLECT_LEASE_SECONDS * 0.8),
    time_limit=int(settings.DAQBROKER_COLLECT_LEASE_SECONDS * 0.9),
)
def collect_source(source_id: int) -> str:
    """Collect one source once. Returns what happened in words (Celery logs it at DEBUG): a failed run is
    not a failed task, since its failure is recorded on the run and the source."""
    run = collect.collect_source(source_id)
    if run is None:
        return f"source {source_id}: not collected (busy or gone)"
    if run.status != RunStatus.SUCCESS:
        return f"source {source_id}: run {run.pk} {run.status}: {run.error}"
    return f"source {source_id}: run {run.pk} {run.status}: {run.accepted} stored, {run.rejected} quarantined"


@shared_task(ignore_result=True)
def prune_run_history() -> int:
    return collect.prune_run_history()


@shared_task(ignore_result=True, soft_time_limit=240, time_limit=300)
def refresh_rollups_task() -> int:
    """Bring the rollup tiers up to date with the backlog (woken after each ingest, and swept periodically).
    Bounded work per run; when work is left it queues itself again."""
    result = refresh_rollups()
    if result.remaining:
        refresh_rollups_task.apply_async(expires=300)
    return result.spans


@shared_task(ignore_result=True, soft_time_limit=240, time_limit=300)
def catch_up_freshness() -> int:
    """Move forward the instruments' latest reading where ingest's update after commit was lost (a process
    killed between its commit and that update): one statement (docs/data-sources.md)."""
    return catch_up_instrument_freshness()


@shared_task(ignore_result=True, soft_time_limit=240, time_limit=300)
def refresh_planner_statistics_task() -> bool:
    """SQLite's planner statistics, sampled (PostgreSQL and MariaDB keep theirs): collection.services.planner."""
    return refresh_planner_statistics()


@shared_task(ignore_result=True, soft_time_limit=540, time_limit=600)
def enforce_retention_task() -> int:
    """Delete raw readings older than each instrument's retention, in bounded batches; queues itself again
    while more is due."""
    result = enforce_retention()
    if result.remaining:
        enforce_retention_task.apply_async(expires=3000)
    return result.deleted


@shared_task(ignore_result=True, soft_time_limit=3000, time_limit=3300)
def clean_raw_file_archive_task() -> dict:
    """The raw-file archive's daily clean-up (``collection.services.raw_files.clean_archive``)."""
    return asdict(clean_archive())


COMPACT_WINDOWS_PER_TASK = 500


@shared_task(ignore_result=True, soft_time_limit=240, time_limit=300)
def compact_blocks_task() -> int:
    """Compact closed windows older than ``DAQBROKER_COMPACT_AFTER`` into blocks and pack their fine
    rollup tiers, a bounded number of each per run; queues itself again while more is due (a first run
    over existing readings, say). Off when 0."""
    after = settings.DAQBROKER_COMPACT_AFTER
    if after <= 0:
        return 0
    before = time.time_ns() // 1000 - after * 1_000_000
    result = compact_and_pack(before, max_windows=COMPACT_WINDOWS_PER_TASK)
    packed = 0
    if result.windows < COMPACT_WINDOWS_PER_TASK:  # hours compacted before whose tiers are rows (rebuilt, say)
        packed = pack(before, max_windows=COMPACT_WINDOWS_PER_TASK)
    if result.windows >= COMPACT_WINDOWS_PER_TASK or packed >= COMPACT_WINDOWS_PER_TASK:
        compact_blocks_task.apply_async(expires=240)
    return result.readings


REPLAY_BATCHES_PER_TASK = 20


def replay_selection(actor, filters: dict, *, dry_run: bool = False, address: str | None = None):
    """Replay the records ``actor`` may change among ``filters`` (``quarantine.selection``): the first
    batch now, the rest (fixed at the records there are now) by ``replay_quarantine_task``. A dry run
    looks at the first batch only. Returns the first batch's ``ReplayOutcome`` (``queued``: the rest)."""
    records = quarantine.selection(actor, filters, permissions.CHANGE)
    up_to = records.aggregate(last=Max("pk"))["last"]
    outcome = quarantine.replay(records, actor=actor, dry_run=dry_run, address=address)
    if up_to is None or not outcome.last_pk:
        return outcome
    rest = records.filter(pk__gt=outcome.last_pk, pk__lte=up_to).count()
    if dry_run:
        outcome.queued = 0
        outcome.skipped["not looked at by the dry run (it looks at the first batch)"] += rest
    elif rest:
        outcome.queued = rest
        args = (getattr(actor, "pk", None), filters, outcome.last_pk, up_to, address)
        transaction.on_commit(lambda: replay_quarantine_task.apply_async(args=args))
    return outcome


@shared_task(ignore_result=True, soft_time_limit=540, time_limit=600)
def replay_quarantine_task(
    actor_id: int | None, filters: dict, after: int, up_to: int, address: str | None = None
) -> int:
    """Replay, batch by batch, the records after ``after`` up to ``up_to`` among ``filters`` that the actor
    may (still) change; queues itself again after a few batches. Safe to run twice: a record is consumed
    once, under a row lock."""
    actor = get_user_model().objects.filter(pk=actor_id, is_active=True).first() if actor_id is not None else None
    if actor_id is not None and actor is None:
        return 0  # the person is gone or disabled: nothing is done on their behalf
    records = quarantine.selection(actor, filters, permissions.CHANGE).filter(pk__lte=up_to)
    replayed = 0
    for _ in range(REPLAY_BATCHES_PER_TASK):
        outcome = quarantine.replay(records.filter(pk__gt=after), actor=actor, address=address)
        if not outcome.last_pk:
            return replayed
        replayed += outcome.records
        after = outcome.last_pk
    if records.filter(pk__gt=after).exists():
        replay_quarantine_task.apply_async(args=(actor_id, filters, after, up_to, address))
    return replayed


@shared_task(ignore_result=True, soft_time_limit=540, time_limit=600)
def expire_quarantine_task() -> int:
    """Delete quarantine records past ``DAQBROKER_QUARANTINE_DAYS``, in bounded batches; queues itself
    again while more is due."""
    deleted, more = quarantine.delete_expired()
    if more:
        expire_quarantine_task.apply_async(expires=3000)
    return deleted
