"""The channels' pending spans: after-ingest work noted on the channel row, taken up by the workers.

A small request must cost few statements (docs/performance.md, "Small senders"). On SQLite and MariaDB a
statement writes one table, so instead of appending rows to ``RollupBacklog`` and ``FollowUpBacklog``,
``ingest_samples`` widens each channel's ``pending_from``/``pending_to`` in the statement that moves its
last values: the changed span of a channel is noted for free. Only spans near the channel's latest reading
go there (``PENDING_REACH_US``): a late reading far in the past gets backlog rows of its own, as before, so a
pending span never stretches over days of readings that did not change. Readings whose alarm span differs
from their span (old data corrected or re-read) and derived readings (their follow-up work differs) also
keep backlog rows. PostgreSQL writes its backlog rows in the same statement as the readings (data-modifying
CTEs) and leaves the pending span alone.

``take_pending`` moves pending spans into the backlogs, in one transaction that also clears them: the
rollup refresh and the follow-up replay each call it first, so whichever runs first hands the other its
work (and wakes it). The channel rows are locked while they are read and cleared (``FOR UPDATE SKIP
LOCKED``; SQLite serialises writers), so an ingest widening a span meanwhile either commits before (and its
span is taken) or waits and widens a cleared span (taken next time): no span is lost, none is taken twice.
Until it is taken, the query service treats a pending span as a hole in the tiers, like a backlog span.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction
from django.utils import timezone

from collection.models import FollowUpBacklog, RollupBacklog
from instruments.choices import ChannelKind
from instruments.models import Channel

# A batch's span goes to the channel's pending span when it starts at most this long before the channel's
# latest reading (as looked up), else to backlog rows of its own: what a taken-up span makes the rollup
# refresh read again beyond the new readings is bounded by this much time per channel.
PENDING_REACH_US = 60 * 1_000_000
# The follow-up origin of spans taken from the channels: readings of any origin but derived ones, which
# the follow-up work treats alike (``collection.alarms.tasks.process``).
INGESTED = "ingested"
TAKE_AT_MOST = 5000  # channels taken up per transaction; the rest on the next call

REPLAY_FOLLOW_UPS_TASK = "collection.alarms.tasks.replay_follow_ups_task"
REFRESH_ROLLUPS_TASK = "collection.tasks.refresh_rollups_task"


def take_pending(*, channel_ids: Iterable[int] | None = None, using: str = "default") -> tuple[int, int]:
    """Move the channels' pending spans (of ``channel_ids``, or of every channel) into ``RollupBacklog`` (the
    channels with rollups) and one ``FollowUpBacklog`` row, and clear them, in one transaction. Channels an
    ingest is writing right now are skipped (taken next time). Returns (rollup backlog rows, channels)."""
    with transaction.atomic(using=using):
        channels = Channel.objects.using(using).select_for_update(skip_locked=True).filter(pending_from__isnull=False)
        if channel_ids is not None:
            channels = channels.filter(pk__in=list(channel_ids))
        rows: list[tuple[int, str, int, int]] = list(
            channels.order_by("pk").values_list("pk", "kind", "pending_from", "pending_to")[:TAKE_AT_MOST]  # type: ignore[arg-type]  # not NULL: filtered
        )
        if not rows:
            return 0, 0
        Channel.objects.using(using).filter(pk__in=[pk for pk, _, _, _ in rows]).update(
            pending_from=None, pending_to=None
        )
        now = timezone.now()
        backlog = [
            RollupBacklog(channel_id=pk, start_ts=first, end_ts=last, created=now)
            for pk, kind, first, last in rows
            if kind != ChannelKind.TEXT
        ]
        RollupBacklog.objects.using(using).bulk_create(backlog)
        FollowUpBacklog.objects.using(using).create(
            spans={str(pk): [first, last] for pk, _, first, last in rows}, origin=INGESTED
        )
    return len(backlog), len(rows)


def pending_spans(channel_ids: Iterable[int], *, using: str = "default") -> dict[int, tuple[int, int]]:
    """The pending span of each of these channels that has one."""
    rows = Channel.objects.using(using).filter(pk__in=list(channel_ids), pending_from__isnull=False)
    return {
        pk: (first, last)
        for pk, first, last in rows.values_list("pk", "pending_from", "pending_to")
        if first is not None and last is not None
    }
