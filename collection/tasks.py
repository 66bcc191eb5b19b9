"""Celery tasks. They take ids, return quietly when the row is gone, and are safe to run twice."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from collection.services import collect


@shared_task(ignore_result=True)
def dispatch_due_sources() -> int:
    """Enqueue one collection per due source (claimed by compare-and-set: never twice)."""
    claimed = collect.claim_due_sources()
    for source_id in claimed:
        # A collection that waited longer than a few dispatch periods is stale: the next claim supersedes it.
        collect_source.apply_async(args=[source_id], expires=max(30, settings.DISPATCH_INTERVAL_SECONDS * 6))
    return len(claimed)


@shared_task(ignore_result=True)
def collect_source(source_id: int) -> None:
    collect.collect_source(source_id)


@shared_task(ignore_result=True)
def prune_run_history() -> int:
    return collect.prune_run_history()
