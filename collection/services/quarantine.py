"""The quarantine, for people: what was set aside, grouped by kind and source; replay; retention; export.

**Replay** takes quarantine records and sends them through the *current* configuration of their source
and the one write path again: a whole line (it did not parse, or lacked a field) is parsed anew by the
shared parser (``daqbroker_agent.parsing.LineParser`` through ``lines_to_readings``, as the collectors
do); a single reading (a value or time ``ingest_samples`` refused) is offered again at its time. Either
way ``ingest_samples`` decides: what now passes is stored (a reading already stored with the same value
is counted as a duplicate; another value is a conflict, quarantined again with both values), what still
fails is quarantined again with its new reason, and the replayed record is deleted, all in one
transaction. So a replay is safe to repeat (a record is consumed once, under a row lock; a second replay
of the same selection finds nothing) and loses nothing. Lines reported by agents replay alike: they are
kept raw on the server, and parsed with the agent source's ``collect`` settings.

A replay is bounded per call (``DAQBROKER_QUARANTINE_REPLAY_BATCH`` records); a larger selection ("all
of this kind and source") is replayed by a Celery task in batches, fixed at the ids it had when asked
(what a replay quarantines again is not replayed again by the same request). A dry run goes through
the same code and the same write path inside a transaction that is rolled back: its counts are exact.
Each replay is recorded in the audit trail (``quarantine.replayed``), per source.

**Retention** (``DAQBROKER_QUARANTINE_DAYS``) deletes records older than that many days in bounded
batches, audited as ``quarantine.deleted``. **Export** streams a selection as CSV.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from accounts import audit, permissions
from accounts.choices import AuditAction
from collection.choices import RejectionKind
from collection.collectors.base import RawLine, lines_to_readings, parse_deadline
from collection.collectors.mqtt import message_from, mqtt_config, to_batch
from collection.models import RejectedSample
from collection.reasons import classify_reason, visible_text
from collection.services.ingest import IngestResult, Rejection, SampleBatch, ingest_samples
from daqbroker_agent.mqtt import MessageMapper
from daqbroker_agent.parsing import LineError, LineParser, datetime_to_us
from instruments.choices import ChannelKind, SourceKind
from instruments.csv_cells import safe_row
from instruments.models import DataSource

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

RETENTION_BATCH_ROWS = 5_000
RETENTION_MAX_BATCHES = 200


def config_when_set_aside(record: RejectedSample) -> dict | None:
    """The data source's configuration when ``record`` was set aside (kept by ``ingest_samples`` for records
    of a data source), or None when it was not kept (records made before configurations were kept)."""
    snapshot = record.config_snapshot
    return snapshot.config if snapshot is not None else None


def visible_to(who, level: str = permissions.VIEW) -> QuerySet[RejectedSample]:
    """The records ``who`` has ``level`` on (through their channel's or source's instrument; the gate)."""
    return permissions.restrict(RejectedSample.objects.all(), who, level)


# --- grouping -------------------------------------------------------------------------------------


def kind_counts(records: QuerySet[RejectedSample]) -> list[dict]:
    """[{kind, label, records, readings}] largest first (``readings``: what the records stand for,
    more than the records when some are aggregate records)."""
    labels = dict(RejectionKind.choices)
    rows = records.order_by().values("kind").annotate(records=Count("id"), readings=Sum("count"))
    out = [
        {
            "kind": r["kind"],
            "label": labels.get(r["kind"], r["kind"]),
            "records": r["records"],
            "readings": r["readings"],
        }
        for r in rows
    ]
    return sorted(out, key=lambda r: (-r["records"], r["kind"]))


def source_counts(records: QuerySet[RejectedSample]) -> list[dict]:
    """[{source id, source name, instrument name, kind, records}] per source and kind, largest first."""
    rows = (
        records.order_by()
        .values("source_id", "source__name", "source__instrument__name", "kind")
        .annotate(records=Count("id"))
    )
    labels = dict(RejectionKind.choices)
    out = [
        {
            "source": r["source_id"],
            "source_name": r["source__name"] or "(no data source)",
            "instrument_name": r["source__instrument__name"] or "",
            "kind": r["kind"],
            "label": labels.get(r["kind"], r["kind"]),
            "records": r["records"],
        }
        for r in rows
    ]
    return sorted(out, key=lambda r: (-r["records"], r["source_name"], r["kind"]))


def daily_counts(records: QuerySet[RejectedSample], days: int = 30) -> list[dict]:
    """Records per UTC day over the last ``days`` days, oldest first, days without any included."""
    today = timezone.now().astimezone(UTC).date()
    first = today - timedelta(days=days - 1)
    since = datetime(first.year, first.month, first.day, tzinfo=UTC)
    rows = (
        records.filter(received_at__gte=since)
        .order_by()
        .annotate(day=TruncDate("received_at", tzinfo=UTC))
        .values("day")
        .annotate(records=Count("id"))
    )
    found = {r["day"]: r["records"] for r in rows}
    peak = max(found.values(), default=0)
    out = []
    for n in range(days):
        day = first + timedelta(days=n)
        count = found.get(day, 0)
        out.append({"day": day, "records": count, "height": round(100 * count / peak) if peak else 0})
    return out


# --- replay ---------------------------------------------------------------------------------------


@dataclass
class ReplayOutcome:
    """What a replay did (or, for a dry run, would do)."""

    dry_run: bool = False
    records: int = 0  # records replayed (consumed)
    stored: int = 0  # readings newly stored
    duplicates: int = 0  # readings already stored with the same value
    conflicts: int = 0  # readings whose time holds another value: quarantined again
    still_rejected: int = 0  # readings or lines quarantined again (with their new reason)
    skipped: Counter = field(default_factory=Counter)  # why not replayed -> records
    new_kinds: Counter = field(default_factory=Counter)  # kinds of what was quarantined again
    # Per replayed record: its new reason(s), or "" when what it held was stored or was a duplicate.
    per_record: dict[int, list[str]] = field(default_factory=dict)
    queued: int = 0  # records left to a background task
    last_pk: int = 0  # the last record looked at (a background replay goes on after it)

    def as_dict(self) -> dict:
        return {
            "dry_run": self.dry_run,
            "records": self.records,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "still_rejected": self.still_rejected,
            "skipped": dict(self.skipped),
            "new_kinds": dict(self.new_kinds),
            "queued": self.queued,
        }

    def add(self, other: ReplayOutcome) -> None:
        self.records += other.records
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.conflicts += other.conflicts
        self.still_rejected += other.still_rejected
        self.skipped.update(other.skipped)
        self.new_kinds.update(other.new_kinds)
        self.per_record.update(other.per_record)

    def summary(self) -> str:
        verb = "would store" if self.dry_run else "stored"
        parts = [
            f"{self.records:,} record{'s' if self.records != 1 else ''} replayed{' (dry run)' if self.dry_run else ''}",
            f"{verb} {self.stored:,} reading{'s' if self.stored != 1 else ''}",
        ]
        if self.duplicates:
            parts.append(f"{self.duplicates:,} already stored")
        if self.conflicts:
            parts.append(f"{self.conflicts:,} in conflict with a stored value")
        if self.still_rejected:
            kinds = ", ".join(
                f"{dict(RejectionKind.choices).get(k, k).lower()} {n:,}" for k, n in self.new_kinds.items()
            )
            parts.append(f"{self.still_rejected:,} still rejected ({kinds})")
        for why, n in self.skipped.items():
            parts.append(f"{n:,} not replayable: {why}")
        if self.queued:
            parts.append(f"{self.queued:,} more are being replayed in the background")
        return "; ".join(parts) + "."


class _DryRun(Exception):
    """Raised inside a dry run's transaction to roll it back."""


NOT_REPLAYABLE_AGGREGATE = "an aggregate record counts readings it did not keep"
NOT_REPLAYABLE_NO_SOURCE = "no data source of this server: its parser configuration is unknown"
NOT_REPLAYABLE_CUT = "the line was longer than the quarantine keeps, and was kept cut short"
NOT_REPLAYABLE_NO_CHANNEL = "its channel is unknown"
NOT_REPLAYABLE_TIME = "its time is not an ISO 8601 time"
NOT_REPLAYABLE_OPCUA = "an OPC UA data change refused for its status or its type: there is nothing to parse again"


def _reads_opcua(source: DataSource | None) -> bool:
    """Whether ``source`` reads an OPC UA server (the server's own source, or an agent's)."""
    if source is None:
        return False
    if source.kind == SourceKind.OPCUA:
        return True
    collect = (source.config or {}).get("collect") if source.kind == SourceKind.AGENT else None
    return isinstance(collect, dict) and collect.get("kind") == "opcua"


def why_not_replayable(record: RejectedSample) -> str:
    """'' when ``record`` can be replayed, else why not (in words)."""
    if record.count != 1:
        return NOT_REPLAYABLE_AGGREGATE
    context = record.context if isinstance(record.context, dict) else {}
    if record.is_line:
        if record.source_id is None:
            return NOT_REPLAYABLE_NO_SOURCE
        if _reads_opcua(record.source):
            return NOT_REPLAYABLE_OPCUA
        if int(context.get("line_length") or 0) > len(record.raw_value):
            return NOT_REPLAYABLE_CUT
        return ""
    if record.channel_id is None:
        return NOT_REPLAYABLE_NO_CHANNEL
    if _reading_time(record.raw_time) is None:
        return NOT_REPLAYABLE_TIME
    return ""


def parser_config(source: DataSource) -> dict:
    """The source's current parser configuration: an agent source's ``collect`` settings, else its own.
    Raises ValidationError when it no longer validates."""
    config = source.validated_config()
    return config["collect"] if source.kind == SourceKind.AGENT else config


def _reading_time(raw: str) -> int | None:
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return datetime_to_us(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def _received_us(record: RejectedSample) -> int:
    """When the line was read (for sources stamping lines with their receipt time)."""
    received = (record.context or {}).get("received") if isinstance(record.context, dict) else None
    if isinstance(received, int):
        return received
    if isinstance(received, str):
        at = _reading_time(received)
        if at is not None:
            return at
    return datetime_to_us(record.received_at)


def _context(record: RejectedSample) -> dict:
    context = dict(record.context) if isinstance(record.context, dict) else {}
    context.pop("index", None)
    context["replay_of"] = record.pk
    context.setdefault("first_received", record.received_at.isoformat())
    if record.batch_id and not record.batch_id.startswith("replay-"):
        context.setdefault("batch_id", record.batch_id)
    return context


def parse_preview(record: RejectedSample) -> dict[str, Any]:
    """How the source's current configuration reads this line now: {"fields", "time"} or {"error"}.
    Nothing is written. Empty for a record that is not a line or has no source."""
    if not record.is_line or record.source is None:
        return {}
    if _reads_opcua(record.source):
        return {"error": NOT_REPLAYABLE_OPCUA}
    try:
        mqtt = mqtt_config(record.source, record.source.validated_config())
        if mqtt is not None:
            return _mqtt_preview(record, mqtt)
        parser = LineParser(parser_config(record.source))
    except (ValidationError, ValueError) as exc:
        return {"error": f"the source's configuration is not valid now: {exc}"}
    try:
        parsed = parser.parse(record.raw_value, _received_us(record))
    except LineError as exc:
        return {"error": f"line not parsed: {exc}"}
    moment = datetime.fromtimestamp(parsed.ts_us / 1_000_000, tz=UTC)
    return {"fields": {k: visible_text(str(v), 200) for k, v in parsed.fields.items()}, "time": moment.isoformat()}


def _mqtt_preview(record: RejectedSample, config: dict) -> dict[str, Any]:
    """How an MQTT source's current fields read a quarantined message now."""
    context = record.context if isinstance(record.context, dict) else {}
    readings, problems = MessageMapper(config).map(message_from(record.raw_value, context, _received_us(record)))
    if problems or not readings:
        return {"error": "; ".join(p.reason for p in problems) or "no field of the source takes this topic"}
    moment = datetime.fromtimestamp(readings[0][1] / 1_000_000, tz=UTC)
    return {"fields": {name: visible_text(str(value), 200) for name, _, value in readings}, "time": moment.isoformat()}


SELECTION_KEYS = {"kind", "source", "instrument", "ids", "origin"}


def selection(who, filters: dict, level: str = permissions.VIEW) -> QuerySet[RejectedSample]:
    """The records ``who`` has ``level`` on, narrowed by ``filters``: kind, source (id), instrument (id),
    origin, ids (a list). The one place that turns a page's or task's filters into a queryset."""
    records = visible_to(who, level)
    unknown = set(filters) - SELECTION_KEYS
    if unknown:
        raise ValueError(f"unknown quarantine filters {sorted(unknown)}")
    if filters.get("kind"):
        records = records.filter(kind=filters["kind"])
    if filters.get("origin"):
        records = records.filter(origin=filters["origin"])
    if filters.get("source"):
        records = records.filter(source_id=filters["source"])
    if filters.get("instrument"):
        instrument = filters["instrument"]
        records = records.filter(Q(source__instrument_id=instrument) | Q(channel__instrument_id=instrument))
    if filters.get("ids") is not None:
        records = records.filter(pk__in=filters["ids"])
    return records


def writable_for(actor) -> set[int] | None:
    """The instruments whose channels a replay by ``actor`` may write (None: all, for administrators)."""
    if actor is None or permissions.is_administrator(actor):
        return None
    return set(permissions.instruments_for(actor, permissions.CHANGE).values_list("pk", flat=True))


def replay(
    records: QuerySet[RejectedSample],
    *,
    actor: AbstractBaseUser | AnonymousUser | None,
    dry_run: bool = False,
    address: str | None = None,
) -> ReplayOutcome:
    """Replay (at most ``DAQBROKER_QUARANTINE_REPLAY_BATCH`` of) ``records``, oldest first.

    The caller narrows ``records`` to what ``actor`` may change (``visible_to(actor, CHANGE)``); the
    readings go only to channels of instruments the actor may change.
    """
    limit = settings.DAQBROKER_QUARANTINE_REPLAY_BATCH
    ids = list(records.order_by("pk").values_list("pk", flat=True)[:limit])
    outcome = ReplayOutcome(dry_run=dry_run)
    if not ids:
        return outcome
    outcome.last_pk = ids[-1]
    writable = writable_for(actor)
    try:
        with transaction.atomic():
            # Locked first, so two replays of the same records never both consume them: the second waits,
            # then finds them gone. (Locked without joins: PostgreSQL locks no outer join's nullable side.)
            ids = list(RejectedSample.objects.select_for_update().filter(pk__in=ids).values_list("pk", flat=True))
            locked = RejectedSample.objects.filter(pk__in=ids).select_related("source", "source__instrument")
            groups: dict[tuple, list[RejectedSample]] = defaultdict(list)
            for record in locked.order_by("pk"):
                why = why_not_replayable(record)
                if why:
                    outcome.skipped[why] += 1
                    continue
                groups[(record.source_id, record.origin, record.sender_user_id, record.sender_agent_id)].append(record)
            for (_, origin, user_id, agent_id), group in groups.items():
                part = _replay_group(group, origin, writable, user_id, agent_id)
                outcome.add(part)
                if not dry_run:
                    source = group[0].source
                    audit.record(
                        AuditAction.QUARANTINE_REPLAYED,
                        actor=actor,
                        address=address,
                        obj=source,
                        object_type="" if source else "collection.rejectedsample",
                        object_repr="" if source else "quarantine without a data source",
                        changes=part.as_dict(),
                    )
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    return outcome


def _mqtt_settings(source: DataSource) -> dict | None:
    try:
        return mqtt_config(source, source.validated_config())
    except ValidationError:
        return None  # the line path says why the configuration is not valid


def _replay_messages(
    records: list[RejectedSample], source: DataSource, config: dict
) -> tuple[list[SampleBatch], list[Rejection]]:
    """Quarantined MQTT messages mapped again with the source's current fields (a record about one
    channel's field is replayed for that channel alone)."""
    mapper = MessageMapper(config)
    channels = list(source.channels.exclude(kind=ChannelKind.DERIVED).order_by("pk"))
    batches: list[SampleBatch] = []
    rejections: list[Rejection] = []
    by_channel: dict[int | None, list[RejectedSample]] = defaultdict(list)
    for r in records:
        by_channel[r.channel_id if any(c.pk == r.channel_id for c in channels) else None].append(r)
    for channel_id, group in by_channel.items():
        by_field: dict[str, list[int]] = defaultdict(list)
        for c in channels:
            if channel_id is None or c.pk == channel_id:
                by_field[c.source_field or c.slug].append(c.pk)
        contexts = [_context(r) for r in group]
        messages = [message_from(r.raw_value, c, _received_us(r)) for r, c in zip(group, contexts, strict=True)]
        batch, failed = to_batch(mapper, by_field, messages, contexts)
        batches.append(batch)
        rejections += failed
    return batches, rejections


def _replay_group(
    group: list[RejectedSample], origin: str, writable: set[int] | None, user_id: int | None, agent_id: int | None
) -> ReplayOutcome:
    """One source's (and sender's) records through the parser and ``ingest_samples``; the records deleted."""
    source = group[0].source
    batches: list[SampleBatch] = []
    rejections: list[Rejection] = []
    lines = [r for r in group if r.is_line]
    mqtt = _mqtt_settings(source) if lines and source is not None else None
    if mqtt is not None and source is not None:
        batches_, rejections_ = _replay_messages(lines, source, mqtt)
        batches.extend(batches_)
        rejections.extend(rejections_)
        lines = []
    if lines and source is not None:
        try:
            parser: LineParser | None = LineParser(parser_config(source))
        except (ValidationError, ValueError) as exc:
            parser = None
            reason = f"line not parsed: the source's configuration is not valid: {exc}"[:300]
            rejections += [Rejection(reason=reason, raw_value=r.raw_value, context=_context(r)) for r in lines]
        if parser is not None:
            channels = list(source.channels.exclude(kind=ChannelKind.DERIVED).order_by("pk"))
            # A record about one channel's missing field is replayed for that channel; a line for all.
            by_channel: dict[int | None, list[RejectedSample]] = defaultdict(list)
            for r in lines:
                by_channel[r.channel_id if any(c.pk == r.channel_id for c in channels) else None].append(r)
            deadline = parse_deadline()
            for channel_id, records in by_channel.items():
                wanted = [c for c in channels if channel_id is None or c.pk == channel_id]
                raw = [RawLine(r.raw_value, _context(r), _received_us(r)) for r in records]
                batch, failed = lines_to_readings(raw, parser, wanted, deadline)
                batches.append(batch)
                rejections += failed
    readings = [r for r in group if not r.is_line]
    if readings:
        contexts = [_context(r) for r in readings]
        batches.append(
            SampleBatch(
                np.array([r.channel_id for r in readings], dtype=np.int64),
                np.array([_reading_time(r.raw_time) for r in readings], dtype=np.int64),
                np.array([r.raw_value for r in readings], dtype=object),
                where=lambda i: contexts[i],
            )
        )
    replay_id = f"replay-{uuid.uuid4().hex[:16]}"
    result = IngestResult()
    for i, batch in enumerate(batches or [SampleBatch.from_rows([])]):
        part = ingest_samples(
            batch,
            origin=origin,
            source_id=source.pk if source is not None else None,
            writable_instruments=writable,
            rejections=rejections if i == 0 else (),
            batch_id=replay_id,
        )
        result.accepted += part.accepted
        result.duplicates += part.duplicates
        result.conflicted += part.conflicted
        result.rejected += part.rejected
    # What is quarantined again keeps its sender (ingest_samples was called as a trusted server caller,
    # so a sender's hourly quarantine bound never turns a replay into an aggregate record).
    if user_id is not None or agent_id is not None:
        RejectedSample.objects.filter(batch_id=replay_id).update(sender_user_id=user_id, sender_agent_id=agent_id)
    consumed = RejectedSample.objects.filter(pk__in=[r.pk for r in group]).delete()[0]
    if consumed != len(group):  # cannot happen under the row lock; never let a record be replayed twice
        raise RuntimeError("quarantine records changed during their replay")
    outcome = ReplayOutcome(
        records=len(group),
        stored=result.accepted,
        duplicates=result.duplicates,
        conflicts=result.conflicts,
        still_rejected=result.rejected_count + result.conflicts,
    )
    outcome.per_record = {r.pk: [] for r in group}
    for again in [*result.rejected, *result.conflicted]:
        replay_of = again.context.get("replay_of")
        if replay_of in outcome.per_record:
            outcome.per_record[replay_of].append(again.reason)
        outcome.new_kinds[again.kind or classify_reason(again.reason, whole_line=not again.raw_time)] += 1
    return outcome


# --- retention and export -------------------------------------------------------------------------


def delete_expired(now: datetime | None = None) -> tuple[int, bool]:
    """Delete records older than ``DAQBROKER_QUARANTINE_DAYS`` days (0: keep them all), in bounded
    batches of one transaction each; audited once per pass. Returns (deleted, more left)."""
    days = settings.DAQBROKER_QUARANTINE_DAYS
    if days <= 0:
        return 0, False
    cutoff = (now or timezone.now()) - timedelta(days=days)
    deleted, more = 0, False
    for n in range(RETENTION_MAX_BATCHES + 1):
        ids = list(
            RejectedSample.objects.filter(received_at__lt=cutoff)
            .order_by("pk")
            .values_list("pk", flat=True)[:RETENTION_BATCH_ROWS]
        )
        if not ids:
            break
        if n == RETENTION_MAX_BATCHES:
            more = True
            break
        with transaction.atomic():
            deleted += RejectedSample.objects.filter(pk__in=ids).delete()[0]
    if deleted:
        audit.record(
            AuditAction.QUARANTINE_DELETED,
            object_type="collection.rejectedsample",
            object_repr="quarantine",
            changes={"deleted": deleted, "older_than": cutoff.isoformat(), "days": days},
        )
    return deleted, more


EXPORT_COLUMNS = (
    "id",
    "received_at",
    "kind",
    "reason",
    "origin",
    "instrument",
    "source",
    "channel",
    "channel_ref",
    "file",
    "line",
    "connection",
    "sender",
    "raw_time",
    "raw_value",
    "count",
)


def export_csv(records: QuerySet[RejectedSample]) -> Iterator[str]:
    """``records`` as CSV text chunks, newest first, read in chunks (bounded memory)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    rows = records.select_related(
        "source", "source__instrument", "channel", "channel__instrument", "sender_user", "sender_agent"
    ).order_by("-received_at", "-pk")
    for n, r in enumerate(rows.iterator(chunk_size=2000)):
        context = r.context if isinstance(r.context, dict) else {}
        instrument = r.source.instrument if r.source else (r.channel.instrument if r.channel else None)
        sender = f"agent {r.sender_agent}" if r.sender_agent else (str(r.sender_user) if r.sender_user else "")
        writer.writerow(
            safe_row(
                (
                    r.pk,
                    r.received_at.isoformat(),
                    r.kind,
                    r.reason,
                    r.origin,
                    instrument.slug if instrument else "",
                    r.source.name if r.source else "",
                    r.channel.slug if r.channel else "",
                    r.channel_ref,
                    context.get("file", ""),
                    context.get("line", ""),
                    context.get("connection", ""),
                    sender,
                    r.raw_time,
                    r.raw_value,
                    r.count,
                )
            )
        )
        if n % 500 == 499:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
