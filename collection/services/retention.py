"""Deleting readings: on request (``delete_readings``) and by retention (``enforce_retention``).

Both are recorded in the audit trail (``samples.deleted``). They differ in what happens to the tiers:

* ``delete_readings`` removes readings that should never have been (a bad calibration, a test run): the
  rollup buckets over the deleted span are recomputed, so plots and statistics forget them too.
* ``enforce_retention`` removes raw readings older than the instrument's ``raw_retention_days`` and
  **keeps** the tiers: it first brings the channel's tiers up to date, then moves the channel's
  ``RollupState.raw_kept_from`` watermark to the cutoff (whole UTC days) so no later refresh recomputes
  buckets before it from the missing readings, then deletes in bounded batches, one transaction each.
  A reading older than the cutoff that arrives late is stored raw but not summarised, and goes at the
  next pass. Text readings follow the same retention (they have no tiers).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from django.db import connections, transaction

from accounts import audit
from accounts.choices import AuditAction
from collection.models import FollowUpBacklog, ReadingBlock, RollupState, Sample, TextSample
from collection.services import blocks, rollups
from collection.services.enqueue import try_enqueue
from collection.services.rollups import floor_to
from daqbroker_agent.parsing import us_to_datetime
from instruments.choices import ChannelKind
from instruments.models import Channel, Instrument, refresh_instrument_freshness

DAY = 86_400 * 1_000_000
# After a deletion, the derived channels reading the deleted readings are recomputed by the follow-up task
# (queued by name: collection.alarms.tasks imports this module), or by the periodic replay of the backlog.
FOLLOW_UP_TASK = "collection.alarms.tasks.process_new_readings"
AFTER_DELETION = "deleted"  # the follow-up's origin: recompute derived channels only, never alarms
RETENTION_BATCH_ROWS = 50_000
RETENTION_MAX_BATCHES = 40


def _iso(ts: int | None) -> str | None:
    return None if ts is None else us_to_datetime(ts).isoformat()


def delete_readings(
    channels: Sequence[Channel],
    start: int,
    end: int,
    *,
    actor=None,
    address: str | None = None,
    reason: str = "",
    using: str = "default",
) -> dict[int, int]:
    """Delete the readings of ``channels`` in [start, end) µs, in one transaction: audited per channel,
    the rollup buckets over the deleted span recomputed (queued), each channel's last value moved back
    when its latest reading went. Returns {channel id: readings deleted}."""
    if end <= start:
        raise ValueError("the end of the range must be after its start")
    deleted: dict[int, int] = {}
    changed: dict[int, tuple[int, int]] = {}
    with transaction.atomic(using=using):
        # In key order: expand_blocks takes each channel's block lock, which ingest takes in key order too.
        for channel in sorted(channels, key=lambda c: c.pk):
            model = TextSample if channel.kind == ChannelKind.TEXT else Sample
            blocks.expand_blocks(channel.pk, start, end, using=using)  # compacted readings become rows again
            rows = model.objects.using(using).filter(channel_id=channel.pk, ts__gte=start, ts__lt=end)
            first = rows.order_by("ts").values_list("ts", flat=True).first()
            if first is None:
                deleted[channel.pk] = 0
                continue
            last = rows.order_by("-ts").values_list("ts", flat=True).first()
            assert last is not None  # the rows have a first reading, so a last one
            count = _delete_where(model, "channel_id = %s AND ts >= %s AND ts < %s", [channel.pk, start, end], using)
            deleted[channel.pk] = count
            if model is Sample:
                changed[channel.pk] = (first, last)
            last_ts = Channel.objects.using(using).filter(pk=channel.pk).values_list("last_ts", flat=True).first()
            if last_ts is not None and start <= last_ts < end:
                _move_last_value_back(channel, model, using)
            audit.record(
                AuditAction.SAMPLES_DELETED,
                obj=channel,
                changes={
                    "reason": reason or "deleted on request",
                    "instrument": channel.instrument.slug,
                    "channel": channel.slug,
                    "range": [_iso(start), _iso(end)],
                    "deleted": count,
                },
                actor=actor,
                address=address,
            )
        if changed:
            rollups.mark_changed(changed, using=using)
            transaction.on_commit(rollups.request_refresh, using=using)
            transaction.on_commit(lambda: _recompute_derived(changed, using), using=using)
    return deleted


def _recompute_derived(changed: dict[int, tuple[int, int]], using: str) -> None:
    """Queue the recomputation of the derived channels reading these channels over the deleted spans (kept
    in ``FollowUpBacklog`` when the broker cannot take it)."""
    derived = Channel.objects.using(using).filter(kind=ChannelKind.DERIVED, instrument__channels__in=list(changed))
    if not derived.exists():
        return
    payload = {str(cid): [int(a), int(b), None] for cid, (a, b) in changed.items()}
    if not try_enqueue(FOLLOW_UP_TASK, args=[payload, AFTER_DELETION], what="derived channels after a deletion"):
        FollowUpBacklog.objects.using(using).create(spans=payload, origin=AFTER_DELETION)


def _delete_where(model, where: str, params: list, using: str) -> int:
    connection = connections[using]
    table = connection.ops.quote_name(model._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table} WHERE {where}", params)
        return max(cursor.rowcount, 0)


def _move_last_value_back(channel: Channel, model, using: str) -> None:
    latest = blocks.read_last(channel.pk, 2**63 - 1, 1, text=model is TextSample, using=using)  # hot or compacted
    update: dict[str, object] = {"last_ts": None, "last_value": None, "last_quality": None, "last_text": ""}
    if len(latest["ts"]):
        update.update(last_ts=int(latest["ts"][0]), last_quality=int(latest["quality"][0]))
        if model is TextSample:
            update["last_text"] = latest["value"][0]
        else:
            update["last_value"] = float(latest["value"][0])
    Channel.objects.using(using).filter(pk=channel.pk).update(**update)
    refresh_instrument_freshness([channel.instrument_id], using=using)  # its latest reading may be gone too


@dataclass
class RetentionResult:
    deleted: int = 0
    channels: int = 0
    batches: int = 0
    remaining: bool = False


def retention_cutoff(days: int, now_us: int) -> int:
    """Raw readings before this instant (µs) are due: ``days`` before now, down to a whole UTC day."""
    return floor_to(now_us - days * DAY, DAY)


def enforce_retention(
    *,
    now_us: int | None = None,
    batch_rows: int = RETENTION_BATCH_ROWS,
    max_batches: int = RETENTION_MAX_BATCHES,
    using: str = "default",
) -> RetentionResult:
    """Delete raw readings past each instrument's retention, at most ``max_batches`` batches of
    ``batch_rows`` readings (one transaction each) per call; ``remaining`` says more is due."""
    now_us = time.time_ns() // 1000 if now_us is None else now_us
    result = RetentionResult()
    instruments = Instrument.objects.using(using).filter(raw_retention_days__isnull=False).order_by("pk")
    for instrument in instruments:
        assert instrument.raw_retention_days is not None  # filtered above
        cutoff = retention_cutoff(instrument.raw_retention_days, now_us)
        for channel in instrument.channels.using(using).order_by("pk"):
            if result.batches >= max_batches:
                result.remaining = True
                return result
            deleted, finished = _expire_channel(
                channel, cutoff, batch_rows, max_batches - result.batches, result, using
            )
            if deleted:
                result.channels += 1
                result.deleted += deleted
                audit.record(
                    AuditAction.SAMPLES_DELETED,
                    obj=channel,
                    changes={
                        "reason": "retention",
                        "instrument": instrument.slug,
                        "channel": channel.slug,
                        "retention_days": instrument.raw_retention_days,
                        "before": _iso(cutoff),
                        "deleted": deleted,
                    },
                )
            if not finished:
                result.remaining = True
                return result
    return result


def _expire_channel(
    channel: Channel, cutoff: int, batch_rows: int, batches_left: int, result: RetentionResult, using: str
) -> tuple[int, bool]:
    """Delete one channel's readings before ``cutoff``; returns (deleted, finished)."""
    model = TextSample if channel.kind == ChannelKind.TEXT else Sample
    compacted = ReadingBlock.objects.using(using).filter(channel_id=channel.pk, first_ts__lt=cutoff).exists()
    if not compacted and not model.objects.using(using).filter(channel_id=channel.pk, ts__lt=cutoff).exists():
        return 0, True
    if model is Sample:
        _move_watermark(channel.pk, cutoff, using)
    connection = connections[using]
    table = connection.ops.quote_name(model._meta.db_table)
    # Whole blocks go at once; the one straddling the cutoff becomes hot rows, deleted below with the rest.
    deleted = blocks.drop_blocks_before(channel.pk, cutoff, using=using) if compacted else 0
    for _ in range(batches_left):
        with transaction.atomic(using=using), connection.cursor() as cursor:
            # The ts of the batch's last reading: an index range scan of at most batch_rows keys.
            cursor.execute(
                f"SELECT ts FROM {table} WHERE channel_id = %s AND ts < %s ORDER BY ts LIMIT 1 OFFSET %s",
                [channel.pk, cutoff, batch_rows - 1],
            )
            row = cursor.fetchone()
            upper = cutoff if row is None else row[0] + 1
            cursor.execute(f"DELETE FROM {table} WHERE channel_id = %s AND ts < %s", [channel.pk, upper])
            deleted += max(cursor.rowcount, 0)
        result.batches += 1
        if row is None:
            return deleted, True
    finished = not model.objects.using(using).filter(channel_id=channel.pk, ts__lt=cutoff).exists()
    return deleted, finished


def _move_watermark(channel_id: int, cutoff: int, using: str) -> None:
    """Bring the tiers up to date, then stop recomputing buckets before ``cutoff`` from raw readings."""
    while rollups.refresh_channel(channel_id, wait=True, using=using).remaining:  # type: ignore[union-attr]  # never None with wait=True
        pass
    with transaction.atomic(using=using):
        state = RollupState.objects.using(using).select_for_update().get(channel_id=channel_id)
        if state.raw_kept_from is None or state.raw_kept_from < cutoff:
            state.raw_kept_from = cutoff
            state.save(update_fields=["raw_kept_from"])
