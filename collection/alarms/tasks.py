"""Celery tasks for what follows an ingest (spike checks, derived channels, alarms), the periodic alarm
check, "validate now", and notification delivery. They take ids, return quietly when rows are gone, and
are safe to run twice (see ``evaluate`` and ``notify``)."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings
from django.db import transaction

from collection.alarms import evaluate, notify
from collection.choices import Origin
from collection.models import FollowUpBacklog
from collection.services import derived, pending, validation
from collection.services.enqueue import enqueue_soon, try_enqueue
from collection.services.retention import AFTER_DELETION
from daqbroker_agent.parsing import now_us
from instruments.choices import ChannelKind
from instruments.models import Channel, DataSource

logger = logging.getLogger(__name__)


def on_samples_ingested(sender, spans: dict, origin: str, **kwargs) -> None:
    """``samples_ingested`` receiver: ``ingest_samples`` kept the batch's spans (and its alarm spans) in
    ``FollowUpBacklog`` in its transaction; wake a worker to do them (``replay_follow_ups``), at most about
    once a second per process (``enqueue_soon``), never once per request. When the broker cannot be reached
    the periodic task does it."""
    enqueue_soon(replay_follow_ups_task, what="spike checks, derived channels and alarms", expires=300)


def _parse_payload(payload: dict) -> tuple[dict[int, tuple[int, int]], dict[int, tuple[int, int]]]:
    spans, alarm_spans = {}, {}
    for key, value in payload.items():
        spans[int(key)] = (int(value[0]), int(value[1]))
        if len(value) < 3:
            alarm_spans[int(key)] = spans[int(key)]
        elif value[2] is not None:
            alarm_spans[int(key)] = (int(value[2]), int(value[1]))
    return spans, alarm_spans


def process(
    spans: dict[int, tuple[int, int]], origin: str, alarm_spans: dict[int, tuple[int, int]] | None = None
) -> dict:
    """Spike checks, then derived channels (unless these readings are derived ones: derived channels are
    computed in dependency order in one go), then alarm rules, for readings just stored; alarm rules only
    over ``alarm_spans`` (default: all of ``spans``), never over old data being corrected or re-read.
    After a deletion (origin ``AFTER_DELETION``): only the derived channels reading the deleted readings,
    recomputed over the deleted spans (their readings that can no longer be computed go too)."""
    if origin == AFTER_DELETION:
        return {"spikes": 0, "derived": derived.recompute_after_deletion(spans), "raised": 0, "cleared": 0}
    spikes = validation.flag_spikes(spans)
    computed = derived.compute_derived(spans) if origin != Origin.DERIVED else 0
    outcome = evaluate.evaluate_after_ingest(spans if alarm_spans is None else alarm_spans)
    return {"spikes": spikes, "derived": computed, "raised": outcome.raised, "cleared": outcome.cleared}


# No longer queued by ingest (which keeps its spans in FollowUpBacklog); kept for messages queued before.
@shared_task(ignore_result=True, soft_time_limit=240, time_limit=300)
def process_new_readings(spans: dict, origin: str) -> dict:
    parsed, alarm_spans = _parse_payload(spans)
    return process(parsed, origin, alarm_spans)


def replay_follow_ups(limit: int = 500) -> int:
    """Do the after-ingest work kept by ``ingest_samples`` (``FollowUpBacklog``), oldest first, spans
    merged per channel; the rows go in the transaction that did their work (a worker killed meanwhile leaves
    them for the next pass; rows another worker is doing are skipped). The channels' pending spans are
    taken up first (``collection.services.pending``). Returns how many rows were done."""
    rollup_rows, _ = pending.take_pending()
    if rollup_rows:  # the rollup refresh's share of them is in its backlog now
        enqueue_soon(pending.REFRESH_ROLLUPS_TASK, what="rollup refreshes", expires=300)
    with transaction.atomic():
        rows = list(
            FollowUpBacklog.objects.select_for_update(skip_locked=True)
            .order_by("id")
            .values_list("id", "spans", "origin")[:limit]
        )
        merged: dict[str, dict[int, tuple[int, int]]] = {}
        alarms: dict[str, dict[int, tuple[int, int]]] = {}
        for _, payload, origin in rows:
            into, alarms_into = merged.setdefault(origin, {}), alarms.setdefault(origin, {})
            spans, alarm_spans = _parse_payload(payload)
            for target, source in ((into, spans), (alarms_into, alarm_spans)):
                for key, (first, last) in source.items():
                    seen = target.get(key)
                    target[key] = (min(first, seen[0]), max(last, seen[1])) if seen else (first, last)
        for origin, spans in merged.items():
            process(spans, origin, alarms[origin])
        FollowUpBacklog.objects.filter(id__in=[row[0] for row in rows]).delete()
    if rows:
        logger.debug("did the follow-up work of %d ingest(s)", len(rows))
    return len(rows)


@shared_task(ignore_result=True, soft_time_limit=240, time_limit=300)
def replay_follow_ups_task() -> int:
    done = replay_follow_ups()
    if done == 500:  # more may be waiting
        try_enqueue(replay_follow_ups_task, what="the rest of the pending follow-ups", expires=300)
    return done


@shared_task(ignore_result=True, soft_time_limit=240, time_limit=300)
def check_alarms() -> dict:
    outcome = evaluate.check_periodic()
    return {"raised": outcome.raised, "cleared": outcome.cleared}


def validate_channels(channel_ids: list[int]) -> dict:
    """ "Validate now": flag the last DAQBROKER_REVALIDATE_DAYS of readings again, recompute the derived
    channels that read them over that time, and evaluate the alarm rules."""
    since = now_us() - settings.DAQBROKER_REVALIDATE_DAYS * 86_400_000_000
    checked = validation.revalidate(channel_ids, since)
    channels = Channel.objects.filter(pk__in=channel_ids)
    spans = {c.pk: (since, c.last_ts) for c in channels if c.last_ts is not None and c.kind != ChannelKind.TEXT}
    computed = derived.compute_derived(spans)
    derived_ids = Channel.objects.filter(
        instrument__in={c.instrument_id for c in channels}, kind=ChannelKind.DERIVED
    ).values_list("pk", flat=True)
    outcome = evaluate.evaluate_channels([*channel_ids, *derived_ids])
    return {
        "readings": checked.readings,
        "flagged": checked.flagged,
        "spikes": checked.spikes,
        "derived": computed,
        "raised": outcome.raised,
        "cleared": outcome.cleared,
    }


@shared_task(ignore_result=True, soft_time_limit=540, time_limit=600)
def validate_source(source_id: int) -> dict | None:
    channel_ids = list(DataSource.objects.filter(pk=source_id).values_list("channels__pk", flat=True))
    channel_ids = [pk for pk in channel_ids if pk is not None]
    if not channel_ids:
        return None
    return validate_channels(channel_ids)


@shared_task(ignore_result=True, soft_time_limit=540, time_limit=600)
def validate_channels_task(channel_ids: list[int]) -> dict:
    return validate_channels([int(pk) for pk in channel_ids])


@shared_task(bind=True, ignore_result=True, max_retries=None, soft_time_limit=60, time_limit=90)
def deliver_notification(self, notification_id: int) -> None:
    outcome = notify.deliver(notification_id)
    if isinstance(outcome, notify.RetryLater):
        raise self.retry(countdown=outcome.delay)


@shared_task(ignore_result=True)
def sweep_notifications() -> dict:
    return notify.sweep()
