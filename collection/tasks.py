"""Celery tasks. They take ids, return quietly when the row is gone, and are safe to run twice."""

from __future__ import annotations

from celery import current_app, shared_task
from django.conf import settings

from collection.choices import RunStatus
from collection.services import collect
from collection.services.retention import enforce_retention
from collection.services.rollups import refresh_rollups


@shared_task(ignore_result=True)
def dispatch_due_sources() -> int:
    """Enqueue one collection per due source (claimed by compare-and-set: never twice)."""
    claimed = collect.claim_due_sources()
    # A collection that waited longer than a few dispatch periods is stale: the next claim supersedes it.
    expires = max(30, settings.DISPATCH_INTERVAL_SECONDS * 6)
    # In bulk: one broker connection and channel for every message of the pass, not one checkout per message.
    with current_app.producer_or_acquire() as producer:
        for source_id in claimed:
            collect_source.apply_async(args=(source_id,), expires=expires, producer=producer)
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


@shared_task(ignore_result=True, soft_time_limit=540, time_limit=600)
def enforce_retention_task() -> int:
    """Delete raw readings older than each instrument's retention, in bounded batches; queues itself again
    while more is due."""
    result = enforce_retention()
    if result.remaining:
        enforce_retention_task.apply_async(expires=3000)
    return result.deleted
