"""Uploads through the API: decode the body, recognise a retried batch, call ``ingest_samples``.

Two kinds: readings (``ingest_upload``, the ingest endpoint) and the lines an agent read but could not
parse (``quarantine_lines``), which are kept in quarantine like the server's own collectors keep theirs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import IntegrityError, connections, transaction
from django.db.models.expressions import RawSQL

from accounts import permissions
from collection import storage
from collection.choices import Origin
from collection.ingest_formats import decode_ingest_body, iter_slug_pairs
from collection.models import IngestBatch
from collection.services import blocks
from collection.services.ingest import (
    CHANNEL_COLUMNS,
    KEEP,
    Rejection,
    SampleBatch,
    Writable,
    ingest_samples,
    raw_text,
)
from instruments.models import Channel, Instrument

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

    from accounts.principals import AgentPrincipal

MAX_LISTED_REJECTIONS = 1000
MAX_LINE_CHARS = 2000  # as the server's collectors keep an unparsed line


@dataclass
class UploadResult:
    body: dict
    replayed: bool


class ChannelResolver:
    """Maps ``instrument-slug/channel-slug`` references to ids, among the instruments the sender may write.

    The same query reads what ``ingest_samples`` needs of each channel (``rows``, handed to it as
    ``known_channels``): a body naming channels by slug costs one channel look-up, not two."""

    def __init__(self, writable_instruments: Writable):
        self.writable_instruments = writable_instruments
        self.rows: dict[int, tuple] = {}

    def __call__(self, refs: set[str]) -> dict[str, int]:
        instruments, channels = (list(names) for names in iter_slug_pairs(refs))
        if not instruments:
            return {}
        # Written out rather than built by the ORM: building this query cost more than the rest of a small
        # request. The permission check is the same subquery (accounts.permissions.collectable_instruments).
        connection = connections["default"]
        quote = connection.ops.quote_name
        sql = _lookup_head(connection)
        # On PostgreSQL the text must not vary with the body (it is prepared once per connection): arrays.
        postgresql = connection.vendor == "postgresql"
        if postgresql:
            sql += f"WHERE i.{quote('slug')} = ANY(%s::text[]) AND c.{quote('slug')} = ANY(%s::text[])"
            params: list = [instruments, channels]
        else:
            sql += (
                f"WHERE i.{quote('slug')} IN ({', '.join(['%s'] * len(instruments))}) "
                f"AND c.{quote('slug')} IN ({', '.join(['%s'] * len(channels))})"
            )
            params = [*instruments, *channels]
        writable = self.writable_instruments
        if isinstance(writable, RawSQL):
            sql += f" AND c.{quote('instrument_id')} IN ({writable.sql})"
            params += list(writable.params)
        elif writable is not None:
            ids = list(writable) or [None]  # IN (NULL) matches nothing
            if postgresql:
                sql += f" AND c.{quote('instrument_id')} = ANY(%s::bigint[])"
                params.append(ids)
            else:
                sql += f" AND c.{quote('instrument_id')} IN ({', '.join(['%s'] * len(ids))})"
                params += ids
        missing_values = Channel._meta.get_field("missing_values")
        found = {}
        with storage.prepared_cursor(connection) as cursor:
            cursor.execute(sql, params)
            for inst, chan, pk, kind, vmin, vmax, sentinels, instrument_id, last_ts, compacted in cursor.fetchall():
                found[f"{inst}/{chan}"] = pk
                sentinel_list = missing_values.from_db_value(sentinels, None, connection)  # type: ignore[arg-type]  # the expression is unused
                self.rows[pk] = (pk, kind, vmin, vmax, sentinel_list, instrument_id, last_ts, bool(compacted))
        return {ref: found[ref] for ref in refs if ref in found}


_lookup_heads: dict[str, str] = {}


def _lookup_head(connection) -> str:
    """The channel look-up's SELECT ... FROM ... JOIN, the same for every request (per engine)."""
    head = _lookup_heads.get(connection.vendor)
    if head is None:
        quote = connection.ops.quote_name
        columns = ", ".join(f"c.{quote(column)}" for column in CHANNEL_COLUMNS)
        columns += f", {blocks.has_any_block_sql('c', connection)}"
        head = _lookup_heads[connection.vendor] = (
            f"SELECT i.{quote('slug')}, c.{quote('slug')}, {columns} FROM {quote(Channel._meta.db_table)} c "
            f"JOIN {quote(Instrument._meta.db_table)} i ON i.{quote('id')} = c.{quote('instrument_id')} "
        )
    return head


def ingest_upload(
    body: bytes,
    content_type: str,
    *,
    sender: str,
    writable_instruments: Writable,
    max_readings: int,
    origin: str = Origin.API,
    batch_id: str = "",
    time_unit: str = "",
    sender_principal: User | AgentPrincipal | AnonymousUser | None = None,
    on_conflict: str = KEEP,
    address: str | None = None,
) -> UploadResult:
    """Store an uploaded batch; raises ``PayloadError`` for a body that cannot be read at all.

    ``sender_principal`` (the user or agent) is named on its quarantine records, which it bounds.
    ``on_conflict="replace"``: differing values replace the stored ones (the caller passes the instruments
    the sender may *change* as ``writable_instruments``), audited as done by the sender from ``address``.
    """
    resolver = ChannelResolver(writable_instruments)
    payload = decode_ingest_body(
        body,
        content_type,
        max_readings=max_readings,
        resolve=resolver,
        batch_id=batch_id,
        time_unit=time_unit,
        csv_max_header_bytes=settings.DAQBROKER_INGEST_CSV_MAX_HEADER_BYTES,
        csv_max_columns=settings.DAQBROKER_INGEST_CSV_MAX_COLUMNS,
    )

    def store() -> dict:
        result = ingest_samples(
            payload.batch,
            origin=origin,
            writable_instruments=writable_instruments,
            rejections=payload.rejections,
            batch_id=payload.batch_id,
            sender=sender_principal,
            on_conflict=on_conflict,
            audit_origin={
                "actor": sender_principal if permissions.is_authenticated(sender_principal) else None,
                "address": address,
            },
            reason="replaced by an upload with on_conflict=replace",
            known_channels=resolver.rows,
        )
        return {
            "batch_id": payload.batch_id or None,
            **result.as_dict(),
            "rejections": [
                {"index": r.index, "channel": _as_sent(payload.refs, r), "reason": r.reason}
                for r in sorted(result.rejected, key=lambda r: -1 if r.index is None else r.index)[
                    :MAX_LISTED_REJECTIONS
                ]
            ],
            "rejections_truncated": result.rejected_count > MAX_LISTED_REJECTIONS,
            # Rejected readings counted in an aggregate quarantine record, not kept one by one.
            "rejections_aggregated": result.aggregated,
        }

    return _once(sender, payload.batch_id, store)


def _once(sender: str, batch_id: str, store: Callable[[], dict]) -> UploadResult:
    """``store()`` in a transaction, unless ``sender`` sent ``batch_id`` before: then its first answer."""
    if not batch_id:
        # Nothing to record beside the readings: ingest_samples's own transaction is the whole of it (no
        # savepoint inside an outer one: two statements fewer per request).
        return UploadResult(store(), replayed=False)
    previous = IngestBatch.objects.filter(sender=sender, batch_id=batch_id).first()
    if previous is not None:
        return UploadResult(previous.result, replayed=True)
    try:
        with transaction.atomic():
            response = store()
            IngestBatch.objects.create(sender=sender, batch_id=batch_id, result=response)
    except IntegrityError:
        # The same batch arrived concurrently and the other request stored it first.
        previous = IngestBatch.objects.filter(sender=sender, batch_id=batch_id).first()
        if previous is None:
            raise
        return UploadResult(previous.result, replayed=True)
    return UploadResult(response, replayed=False)


@dataclass(frozen=True)
class UnparsedLine:
    """A line an agent read from one of its sources and could not turn into readings."""

    text: str
    reason: str
    source_id: int | None = None  # the server's data source, for sources configured centrally
    source_name: str = ""  # as the agent names it (also for sources in its own configuration file)
    context: dict = field(default_factory=dict)  # where: {"file": ..., "line": ...}, receipt time


def quarantine_lines(
    lines: Sequence[UnparsedLine],
    *,
    sender: str,
    batch_id: str,
    sources: set[int],
    origin: str = Origin.AGENT,
    sender_principal: User | AgentPrincipal | AnonymousUser | None = None,
) -> UploadResult:
    """Keep ``lines`` in quarantine (``RejectedSample``) through ``ingest_samples``, once per ``batch_id``.

    A line is tied to its data source when ``source_id`` is one of ``sources`` (the sender's); otherwise
    it is kept all the same, without the link, with the id and name the agent gave in its context.
    """

    def store() -> dict:
        by_source: dict[int | None, list[Rejection]] = defaultdict(list)
        for line in lines:
            known = line.source_id if line.source_id in sources else None
            context = {**line.context, "agent_source": line.source_name}
            if line.source_id is not None and known is None:
                context["unknown_source_id"] = line.source_id
            if len(line.text) > MAX_LINE_CHARS:
                context["line_length"] = len(line.text)
            by_source[known].append(
                Rejection(reason=line.reason, raw_value=line.text[:MAX_LINE_CHARS], context=context)
            )
        aggregated = 0
        for source_id, rejections in by_source.items():
            aggregated += ingest_samples(
                SampleBatch.from_rows([]),
                origin=origin,
                source_id=source_id,
                rejections=rejections,
                batch_id=batch_id,
                sender=sender_principal,
            ).aggregated
        unlinked = len(by_source.get(None, ()))
        return {"batch_id": batch_id, "stored": len(lines), "without_source": unlinked, "aggregated": aggregated}

    return _once(sender, batch_id, store)


def _as_sent(refs: list, rejection) -> object:
    if rejection.index is not None and 0 <= rejection.index < len(refs):
        ref = refs[rejection.index]
        return ref if isinstance(ref, str | int) else raw_text(ref, 300)
    return rejection.channel_ref
