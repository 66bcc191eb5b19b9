"""Scheduling and running collection: which sources are due, and one safe run of one source.

Safe with any number of workers on any number of hosts: the dispatcher claims each due source by a
compare-and-set on ``next_run_at`` (so it is enqueued once), and a run holds a lease taken by
compare-and-set on ``lease_owner``/``lease_expires`` (so a source is never collected twice at once).
The readings and the source's new cursor are committed in one transaction, guarded by the lease: a
worker killed mid-run commits nothing, and the next run starts again from the old cursor.

The lease lasts ``DAQBROKER_COLLECT_LEASE_SECONDS``; the collection task's hard time limit is shorter, so a
run ends (or is killed) before its lease can pass to another worker, and a lease left by a killed worker
frees the source within that time. A run found still "running" after its lease ran out is recorded as
lost.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts import targets
from collection.choices import RunStatus
from collection.collectors import COLLECTORS
from collection.models import CollectionRun
from collection.services.ingest import IngestResult, SampleBatch, ingest_samples
from instruments.choices import ChannelKind, SourceKind
from instruments.models import DataSource

logger = logging.getLogger(__name__)

MAX_BACKOFF = timedelta(hours=1)
RUN_HISTORY = timedelta(days=7)


def due_sources(now=None):
    now = now or timezone.now()
    return (
        DataSource.objects.filter(enabled=True, instrument__active=True)
        .exclude(kind=SourceKind.AGENT)  # agents push; the server does not poll them
        .filter(Q(next_run_at__isnull=True) | Q(next_run_at__lte=now))
    )


def claim_due_sources(now=None) -> list[int]:
    """Ids of the due sources this caller claimed; each is claimed by exactly one concurrent caller."""
    now = now or timezone.now()
    claimed = []
    for source_id, interval, previous in due_sources(now).values_list("id", "interval_seconds", "next_run_at"):
        won = DataSource.objects.filter(pk=source_id, next_run_at=previous).update(
            next_run_at=now + timedelta(seconds=interval)
        )
        if won:
            claimed.append(source_id)
    return claimed


def _take_lease(source_id: int, owner: str, now) -> bool:
    expires = now + timedelta(seconds=settings.DAQBROKER_COLLECT_LEASE_SECONDS)
    return bool(
        DataSource.objects.filter(pk=source_id)
        .filter(Q(lease_expires__isnull=True) | Q(lease_expires__lt=now))
        .update(lease_owner=owner, lease_expires=expires)
    )


def _release_lease(source_id: int, owner: str) -> None:
    DataSource.objects.filter(pk=source_id, lease_owner=owner).update(lease_owner="", lease_expires=None)


def collect_source(source_id: int) -> CollectionRun | None:
    """Collect one source once. Returns the recorded run, or None when the source is gone or busy."""
    now = timezone.now()
    owner = uuid.uuid4().hex
    if not _take_lease(source_id, owner, now):
        logger.info("source %s is gone, or being collected by another worker", source_id)
        return None
    try:
        source = DataSource.objects.select_related("instrument", "target_set_by").get(pk=source_id)
    except DataSource.DoesNotExist:
        return None
    _record_lost_runs(source_id, now)
    run = CollectionRun.objects.create(source=source, started_at=now, worker=f"{socket.gethostname()}:{os.getpid()}")
    try:
        collector = COLLECTORS.get(source.kind)
        if collector is None:
            raise NotImplementedError(f"no collector for {source.get_kind_display()} sources yet")
        # The rules may have changed since the source was saved: the one target check again, at run time.
        config = targets.check_at_run(source, source.validated_config())
        channels = list(source.channels.exclude(kind=ChannelKind.DERIVED))
        collected = collector.collect(source, config, channels)
        with transaction.atomic():
            result = IngestResult()
            # Rejected lines go with the first batch; a run that read nothing still records them.
            for i, batch in enumerate(collected.batches or [SampleBatch([], [], [])]):
                part = ingest_samples(
                    batch, origin=source.kind, source_id=source.id, rejections=collected.rejections if i == 0 else ()
                )
                result.accepted += part.accepted
                result.duplicates += part.duplicates
                result.rejected.extend(part.rejected)
            finished = timezone.now()
            still_ours = DataSource.objects.filter(pk=source.id, lease_owner=owner).update(
                cursor=collected.cursor,
                last_run_at=now,
                last_success_at=finished,
                last_error="",
                consecutive_failures=0,
                lease_owner="",
                lease_expires=None,
                **({"next_run_at": finished} if collected.more else {}),
            )
            if not still_ours:
                raise LeaseLost(f"the lease on source {source.id} expired during the run; nothing was committed")
            run.status = RunStatus.SUCCESS
            run.accepted, run.duplicates, run.rejected = result.accepted, result.duplicates, result.rejected_count
            run.finished_at = finished
            run.save()
        return run
    except Exception as exc:
        logger.warning(
            "collection of source %s failed: %s",
            source_id,
            exc,
            exc_info=not isinstance(exc, OSError | targets.TargetRefused),
        )
        _record_failure(source, run, owner, now, exc)
        return run


class LeaseLost(RuntimeError):
    pass


def _record_lost_runs(source_id: int, now) -> None:
    """Runs of this source still "running" after their lease ran out: their worker died (killed, lost its
    host). Nothing of them was committed; say so beside the source."""
    CollectionRun.objects.filter(
        source_id=source_id,
        status=RunStatus.RUNNING,
        started_at__lt=now - timedelta(seconds=settings.DAQBROKER_COLLECT_LEASE_SECONDS),
    ).update(
        status=RunStatus.FAILED,
        finished_at=now,
        error="the worker stopped during this run (killed, or its host lost); nothing of it was committed, "
        "and the next run read the same input again",
    )


def _record_failure(source: DataSource, run: CollectionRun, owner: str, now, exc: Exception) -> None:
    failures = source.consecutive_failures + 1
    backoff = min(timedelta(seconds=source.interval_seconds * 2 ** min(failures, 12)), MAX_BACKOFF)
    if isinstance(exc, ValidationError):
        message = "configuration: " + "; ".join(exc.messages)
    elif isinstance(exc, targets.TargetRefused):
        message = f"refused by the target rules ({exc.field}): {exc.reason}"[:2000]
    else:
        message = f"{type(exc).__name__}: {exc}"[:2000]
    DataSource.objects.filter(pk=source.id).update(
        last_run_at=now, last_error=message, consecutive_failures=failures, next_run_at=timezone.now() + backoff
    )
    _release_lease(source.id, owner)
    run.status, run.error, run.finished_at = RunStatus.FAILED, message, timezone.now()
    run.save()


def prune_run_history(keep: timedelta = RUN_HISTORY, batch: int = 5000) -> int:
    """Delete collection runs older than ``keep``, in bounded batches."""
    cutoff = timezone.now() - keep
    ids = list(CollectionRun.objects.filter(started_at__lt=cutoff).values_list("id", flat=True)[:batch])
    return CollectionRun.objects.filter(id__in=ids).delete()[0] if ids else 0
