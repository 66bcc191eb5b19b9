"""Undoing mistakes: re-reading a source, deleting a channel's readings in a range, replacing readings on
purpose, and accepting a quarantined conflict's value. Every surface (admin actions, the API, the pages)
calls these functions; each checks nothing about who acts (the caller has checked the ``change`` level
through the one permission gate) and records what it did with ``accounts.audit.record``.

* **Re-read** (``request_reread``): only for file sources (a serial line or TCP stream cannot be read
  again; an agent reads its files on its own machine). The request is remembered on the source
  (``reread_requested_at``, ``reread_from``, ``reread_replace``); the next collection run starts over from a
  fresh cursor (every file the source follows, live and rotated, from its start) and, with a time, passes
  over each file's lines before its first line stamped at or after it. Readings already stored count as
  duplicates, differing ones as conflicts (or replace the stored ones with ``replace``), so a re-read is safe
  to repeat. Alarm rules do not look at what a re-read stores up to the request's time.
* **Delete** (``delete_channel_readings``): a channel's readings in [start, end), at most
  DAQBROKER_CORRECTION_MAX_READINGS per request (counted first; a larger range is refused with the count,
  to be deleted in parts). Through ``retention.delete_readings``: audited, tiers and derived channels
  recomputed over the span, the channel's last value moved back.
* **Replace** (``replace_readings``, ``accept_conflicts``): through ``ingest_samples(on_conflict="replace")``,
  the one write path, which audits each replaced value (``samples.replaced``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

from accounts import audit
from accounts.choices import AuditAction
from collection.choices import Origin
from collection.models import RejectedSample, Sample, TextSample
from collection.services import blocks, retention
from collection.services.ingest import KEEP, REPLACE, IngestResult, SampleBatch, ingest_samples
from daqbroker_agent.parsing import datetime_to_us, us_to_datetime
from daqbroker_agent.tail import new_cursor
from instruments.choices import ChannelKind, SourceKind
from instruments.models import Channel, DataSource

REREAD_KEY = "reread"  # the cursor's note of a re-read in progress (file sources)


class CorrectionRefused(ValueError):
    """A correction that cannot be done as asked; the message says why (shown as a 400 or form error)."""


def why_not_rereadable(source: DataSource) -> str:
    """'' when ``source`` can be re-read, else why not (in words for the person asking)."""
    if source.kind == SourceKind.FILE:
        return ""
    if source.kind == SourceKind.AGENT:
        return (
            "a remote-agent source is read by its agent on its own machine, which keeps its own cursor: "
            "re-read there (stop the agent, remove its state for this source, start it); the server "
            "stores nothing twice"
        )
    return (
        f"a {source.get_kind_display().lower()} source is a live stream: what was read from it is not there "
        "to be read again (only file sources can be re-read)"
    )


def request_reread(
    source: DataSource,
    *,
    start: datetime | None = None,
    replace: bool = False,
    actor=None,
    address: str | None = None,
) -> DataSource:
    """Ask for ``source`` to be read again by its next run: from the start of its files, or from each
    file's first line stamped at or after ``start``. ``replace``: a value that differs from the stored one
    replaces it (else it is kept in quarantine as a conflict). Audited; a later request supersedes an
    earlier one not yet done. Raises ``CorrectionRefused`` for kinds that cannot be re-read."""
    why = why_not_rereadable(source)
    if why:
        raise CorrectionRefused(f"{source} cannot be re-read: {why}.")
    now = timezone.now()
    from_us = None if start is None else datetime_to_us(start)
    with transaction.atomic():
        DataSource.objects.filter(pk=source.pk).update(
            reread_requested_at=now, reread_from=from_us, reread_replace=replace, next_run_at=now
        )
        audit.record(
            AuditAction.SOURCE_REREAD,
            obj=source,
            changes={
                "instrument": source.instrument.slug,
                "source": source.name,
                "from": "the start" if start is None else start.isoformat(),
                "on_conflict": REPLACE if replace else KEEP,
                "cursor_before": source.cursor,
            },
            actor=actor,
            address=address,
        )
    source.reread_requested_at, source.reread_from, source.reread_replace = now, from_us, replace
    return source


def reread_cursor(source: DataSource) -> dict:
    """The cursor a run starts from when a re-read was asked for: no file read yet, and the note of the
    re-read (its start time, whether it replaces, and when it was asked for)."""
    assert source.reread_requested_at is not None
    return {
        **new_cursor({}),
        REREAD_KEY: {
            "from": source.reread_from,
            "replace": source.reread_replace,
            "requested": datetime_to_us(source.reread_requested_at),
        },
    }


def reread_in_progress(cursor: dict) -> dict | None:
    """The note of the re-read a cursor is in the middle of, or None."""
    note = cursor.get(REREAD_KEY) if isinstance(cursor, dict) else None
    return note if isinstance(note, dict) else None


@dataclass
class Deletion:
    channel: Channel
    start: int  # µs, inclusive
    end: int  # µs, exclusive
    count: int  # readings in the range (at most the limit + 1 when counted for a check)
    deleted: bool = False

    @property
    def too_many(self) -> bool:
        return self.count > settings.DAQBROKER_CORRECTION_MAX_READINGS

    def as_dict(self) -> dict:
        return {
            "channel": f"{self.channel.instrument.slug}/{self.channel.slug}",
            "start": us_to_datetime(self.start).isoformat(),
            "end": us_to_datetime(self.end).isoformat(),
            ("deleted" if self.deleted else "readings"): self.count,
        }


def count_readings(channel: Channel, start: int, end: int, limit: int | None = None) -> int:
    """How many readings ``channel`` holds in [start, end), counting at most ``limit`` + 1 (an index range
    scan that stops there: bounded work, whatever the range holds)."""
    limit = settings.DAQBROKER_CORRECTION_MAX_READINGS if limit is None else limit
    model = TextSample if channel.kind == ChannelKind.TEXT else Sample
    connection = connections["default"]
    table = connection.ops.quote_name(model._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT COUNT(*) FROM (SELECT 1 AS one FROM {table} WHERE channel_id = %s AND ts >= %s AND ts < %s "
            "LIMIT %s) AS bounded",
            [channel.pk, start, end, limit + 1],
        )
        hot = int(cursor.fetchone()[0])
    return min(hot + blocks.count_blocks(channel.pk, start, end), limit + 1)


def _range(start: datetime, end: datetime) -> tuple[int, int]:
    if end <= start:
        raise CorrectionRefused("the end of the range must be after its start")
    return datetime_to_us(start), datetime_to_us(end)


def plan_deletion(channel: Channel, start: datetime, end: datetime) -> Deletion:
    """What deleting ``channel``'s readings in [start, end) would delete (the count shown first)."""
    first, last = _range(start, end)
    return Deletion(channel, first, last, count_readings(channel, first, last))


def delete_channel_readings(
    channel: Channel,
    start: datetime,
    end: datetime,
    *,
    reason: str = "",
    actor=None,
    address: str | None = None,
) -> Deletion:
    """Delete ``channel``'s readings in [start, end): at most DAQBROKER_CORRECTION_MAX_READINGS (a larger
    range is refused, with its size, before anything is deleted). Audited with the count and range; the
    tiers and the derived channels reading it are recomputed over the span; alarms are not evaluated."""
    plan = plan_deletion(channel, start, end)
    if plan.too_many:
        raise CorrectionRefused(
            f"{channel} holds more than {settings.DAQBROKER_CORRECTION_MAX_READINGS:,} readings in this range "
            "(DAQBROKER_CORRECTION_MAX_READINGS): delete it in shorter ranges"
        )
    counts = retention.delete_readings(
        [channel], plan.start, plan.end, actor=actor, address=address, reason=reason or "deleted on request"
    )
    plan.count, plan.deleted = counts.get(channel.pk, 0), True
    return plan


def replace_readings(
    channel: Channel,
    readings: list[tuple[datetime, object]],
    *,
    reason: str = "",
    actor=None,
    address: str | None = None,
) -> IngestResult:
    """Store ``readings`` (time, value) for ``channel``, each replacing the value stored at its time (audited
    with the old values); readings at new times are simply stored. At most DAQBROKER_CORRECTION_MAX_READINGS."""
    if len(readings) > settings.DAQBROKER_CORRECTION_MAX_READINGS:
        raise CorrectionRefused(
            f"at most {settings.DAQBROKER_CORRECTION_MAX_READINGS:,} readings per correction "
            "(DAQBROKER_CORRECTION_MAX_READINGS)"
        )
    if channel.kind == ChannelKind.DERIVED:
        raise CorrectionRefused("a derived channel's readings are computed: correct its inputs instead")
    batch = SampleBatch.from_rows((channel.pk, ts, value) for ts, value in readings)
    return ingest_samples(
        batch,
        origin=Origin.CORRECTION,
        on_conflict=REPLACE,
        audit_origin={"actor": actor, "address": address},
        reason=reason or "replaced on request",
    )


def accept_conflicts(records, *, actor=None, address: str | None = None) -> tuple[int, int]:
    """For each quarantined conflict in ``records`` (``RejectedSample`` rows): its value replaces the one
    stored at its time, and the record leaves the quarantine. Returns (accepted, skipped: not conflicts,
    or their channel is gone). The stored value that goes is in the audit trail (``samples.replaced``)."""
    accepted = skipped = 0
    for record in records:
        if not (record.context or {}).get("conflict") or record.channel_id is None or not record.raw_time:
            skipped += 1
            continue
        channel = Channel.objects.filter(pk=record.channel_id).select_related("instrument").first()
        if channel is None:
            skipped += 1
            continue
        value: object = record.raw_value
        if channel.kind != ChannelKind.TEXT:
            try:
                value = float(record.raw_value)
            except ValueError:
                skipped += 1
                continue
        when = datetime.fromisoformat(record.raw_time)
        with transaction.atomic():
            result = ingest_samples(
                SampleBatch(np.array([channel.pk]), np.array([datetime_to_us(when)]), np.array([value], dtype=object)),
                origin=Origin.CORRECTION,
                on_conflict=REPLACE,
                allow_derived=False,
                audit_origin={"actor": actor, "address": address},
                reason=f"quarantined conflict {record.pk} accepted",
            )
            if result.rejected_count or result.conflicts:
                skipped += 1
                continue
            audit.record(
                AuditAction.CONFLICT_ACCEPTED,
                obj=channel,
                changes={
                    "quarantine_id": record.pk,
                    "time": record.raw_time,
                    "value": record.raw_value,
                    "replaced": (record.context or {}).get("stored_value"),
                },
                actor=actor,
                address=address,
            )
            RejectedSample.objects.filter(pk=record.pk).delete()
        accepted += 1
    return accepted, skipped
