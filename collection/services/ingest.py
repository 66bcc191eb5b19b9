"""``ingest_samples``: the one write path for readings.

The REST API, every collector, the agent uploads, the demo, tests and benchmarks all call it. It checks
every reading (the channel exists and the caller may write it, the value suits the channel, the time is
plausible), flags quality (out of range, missing-value sentinel), writes in bulk and idempotently through
``collection.storage``, tells exact duplicates (the same value already stored at that time: counted, not
stored again) from conflicts (another value already stored, or two values for one time in the batch: the
stored or first value stays, the other is quarantined with both values), keeps every rejected reading
in ``RejectedSample`` with its reason, and moves each channel's last value forward. All of it happens in
one transaction: a caller that wraps the call in its own ``transaction.atomic()`` (a collector saving its
cursor) commits the cursor with the readings. Each instrument's latest reading (``last_reading_ts``) is
moved forward after that transaction commits, in a short statement of its own (``advance_instruments``):
no ingest transaction holds an instrument's row.

With ``on_conflict="replace"`` (a correction made on purpose, by someone with the change level) a reading
whose time already holds another value overwrites it instead of going to quarantine; each replacement is
in the audit trail (``samples.replaced``) with the value it replaced. Two values for one time inside the
batch stay a conflict either way.

After commit, ``samples_ingested`` is sent with the affected channels and time spans, and the spans alarm
rules should look at: old data being corrected or re-read (replaced readings, readings stamped up to
``old_until``) is left out of those, so a correction never raises an alarm for the past.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import orjson
import pandas as pd
from django.conf import settings
from django.db import connections, transaction
from django.db.models import Q, QuerySet
from django.db.models.expressions import RawSQL
from django.dispatch import Signal
from django.utils import timezone

from accounts import audit
from accounts.choices import AuditAction
from accounts.principals import AgentPrincipal
from collection import storage
from collection.choices import Origin, Quality, RejectionKind
from collection.models import FollowUpBacklog, RejectedSample, RollupBacklog, SourceConfigSnapshot
from collection.reasons import classify_reason
from collection.services import blocks, pending
from daqbroker_agent.parsing import datetime_to_us, us_to_datetime
from instruments.choices import ChannelKind
from instruments.models import Channel, DataSource, Instrument

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

# Sent after the ingest transaction commits: kwargs ``spans`` {channel_id: (first_ts, last_ts)} covering
# the batch's valid readings (new or already stored: duplicates cannot be told apart cheaply on every
# engine, and recomputing an unchanged span is harmless), ``origin``, and ``alarm_spans``: the part of
# ``spans`` alarm rules evaluate (old data being corrected or re-read left out). Rollups and alarms listen.
samples_ingested = Signal()

KEEP, REPLACE = "keep", "replace"  # on_conflict: quarantine a different value at a stored time, or replace
ON_CONFLICT = (KEEP, REPLACE)
# Old values listed per ``samples.replaced`` audit event (a larger replacement writes several events).
REPLACED_PER_EVENT = 5000
REPLACED_TEXTS_PER_EVENT = 100

MIN_TS_US = datetime_to_us(datetime(1900, 1, 1, tzinfo=UTC))
MAX_TEXT_LENGTH = 10_000
UNKNOWN_CHANNEL = "unknown channel, or not one the sender may write to"
# An aggregate quarantine record lists this many of the readings it counts (references and indexes).
AGGREGATE_EXAMPLES = 10
AGGREGATE_VALUE_CHARS = 200

# Rejection reasons, by code (0 means the reading is fine).
_OK, _UNKNOWN, _DERIVED, _TIME, _NOT_NUMBER, _NOT_FINITE, _NOT_TEXT, _TOO_LONG, _EMPTY, _NUL = range(10)
_REASONS = {
    _UNKNOWN: UNKNOWN_CHANNEL,
    _DERIVED: "derived channels are computed by the server and cannot be written",
    _TIME: "timestamp outside the accepted window (after 1900 and at most {future} in the future)",
    _NOT_NUMBER: "value is not a number, and the channel is numeric",
    _NOT_FINITE: "value is not a finite number (NaN or infinity)",
    _NOT_TEXT: "value is not text, and the channel is a text channel",
    _TOO_LONG: f"text value longer than {MAX_TEXT_LENGTH} characters",
    _EMPTY: "value is empty",
    # PostgreSQL cannot store it, and on a serial line it is noise: refused on every engine alike.
    _NUL: "text value contains a NUL character (shown as \\x00)",
}
_KINDS = {
    _UNKNOWN: RejectionKind.UNKNOWN_CHANNEL,
    _DERIVED: RejectionKind.DERIVED,
    _TIME: RejectionKind.OUT_OF_WINDOW,
    _NOT_NUMBER: RejectionKind.NOT_NUMBER,
    _NOT_FINITE: RejectionKind.NOT_FINITE,
    _NOT_TEXT: RejectionKind.BAD_TEXT,
    _TOO_LONG: RejectionKind.BAD_TEXT,
    _EMPTY: RejectionKind.EMPTY,
    _NUL: RejectionKind.BAD_TEXT,
}


@dataclass(frozen=True)
class Rejection:
    """A reading that was not stored. ``index`` is its position in the sender's batch, when it has one."""

    reason: str
    index: int | None = None
    channel_id: int | None = None
    channel_ref: str = ""
    raw_time: str = ""
    raw_value: str = ""
    context: dict = field(default_factory=dict)
    # For a channel that does not exist or that the sender may not write: quarantined in one aggregate
    # record per request when the sender is an API user or agent (nothing to fix on our side, and a
    # stranger must not fill the quarantine by naming channels at random).
    unwritable: bool = False
    # Its ``RejectionKind``; empty: classified from the reason when it is kept (``collection.reasons``).
    kind: str = ""


def raw_text(value: object, limit: int = MAX_TEXT_LENGTH) -> str:
    """A sender's raw value (or channel reference, or time) as bounded text for quarantine and reports.

    Never ``str()`` of a structure: a JSON value nested 1,000 deep would exceed Python's recursion limit.
    """
    if isinstance(value, str):
        return value[:limit]
    if value is None or isinstance(value, bool | float):
        return str(value)[:limit]
    if isinstance(value, int):
        try:
            return str(value)[:limit]
        except ValueError:  # more digits than Python converts to text
            return f"<an integer of about {value.bit_length() * 3 // 10:,} digits>"
    try:
        return orjson.dumps(value).decode()[:limit]
    except (orjson.JSONEncodeError, TypeError):
        return f"<a {type(value).__name__} nested too deeply (or holding values) JSON cannot show>"[:limit]


@dataclass
class SampleBatch:
    """Readings in columns: channel ids, timestamps (µs since the epoch, UTC) and values.

    ``value`` is float64 for an all-numeric batch (the fast path), or an object array holding numbers
    and strings when text channels or unparsed raw values are mixed in.
    """

    channel: np.ndarray
    ts: np.ndarray
    value: np.ndarray
    # Each reading's position in the sender's payload, reported with its rejection (default: 0..n-1).
    position: np.ndarray | None = None
    # For collectors: where reading i came from (its file and line, say), kept with its rejection.
    where: Callable[[int], dict] | None = field(default=None, repr=False, compare=False)
    # A quality the sender already knows for each reading (an OPC UA server's Uncertain status: SUSPECT);
    # ingest's own flags (out of range, missing) take precedence. None: every reading starts OK.
    quality: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.channel = np.asarray(self.channel, dtype=np.int64)
        self.ts = np.asarray(self.ts, dtype=np.int64)
        value = np.asarray(self.value)
        if value.dtype.kind not in "fO":
            value = value.astype(np.float64) if value.dtype.kind in "iub" else value.astype(object)
        self.value = value
        if not (len(self.channel) == len(self.ts) == len(self.value)):
            raise ValueError("channel, ts and value must have the same length")
        if self.position is not None and len(self.position) != len(self.channel):
            raise ValueError("position must have one entry per reading")
        if self.quality is not None and len(self.quality) != len(self.channel):
            raise ValueError("quality must have one entry per reading")

    def __len__(self) -> int:
        return len(self.channel)

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[int, int | datetime, object]]) -> SampleBatch:
        channels, stamps, values = [], [], []
        for channel_id, ts, value in rows:
            channels.append(channel_id)
            stamps.append(datetime_to_us(ts) if isinstance(ts, datetime) else ts)
            values.append(value)
        numeric = all(isinstance(v, float | int) and not isinstance(v, bool) for v in values)
        return cls(
            np.array(channels, dtype=np.int64),
            np.array(stamps, dtype=np.int64),
            np.array(values, dtype=np.float64 if numeric else object),
        )


@dataclass
class IngestResult:
    received: int = 0
    accepted: int = 0
    duplicates: int = 0  # the same value already stored at that time (or repeated in the batch)
    # Readings whose time already holds another value (stored before, or earlier in the batch): quarantined.
    conflicted: list[Rejection] = field(default_factory=list)
    flagged: int = 0  # valid readings given a quality flag other than OK (stored now or before)
    rejected: list[Rejection] = field(default_factory=list)
    spans: dict[int, tuple[int, int]] = field(default_factory=dict)
    # Rejected readings counted in an aggregate quarantine record rather than kept one by one.
    aggregated: int = 0
    # on_conflict="replace": stored readings overwritten, as (channel id, ts, old value, new value).
    replaced: list[tuple[int, int, object, object]] = field(default_factory=list)
    replacing: bool = False  # on_conflict was "replace": the answer says how many were replaced

    @property
    def rejected_count(self) -> int:
        return len(self.rejected)

    @property
    def conflicts(self) -> int:
        return len(self.conflicted)

    def as_dict(self) -> dict:
        answer = {
            "received": self.received,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "flagged": self.flagged,
            "rejected": self.rejected_count,
        }
        if self.replacing:
            answer["replaced"] = len(self.replaced)
        return answer


# What the writable instruments are given as: ids, or a lazy queryset of them (a subquery, no query of its
# own: a queryset, or accounts.permissions.collectable_instruments's compiled one), or None for trusted
# server-side callers.
Writable = set[int] | QuerySet | RawSQL | None
# A channel's columns ingest needs, in this order (``known_channels``), then whether it has compressed blocks.
CHANNEL_COLUMNS = ("id", "kind", "valid_min", "valid_max", "missing_values", "instrument_id", "last_ts")


@dataclass
class _ChannelTable:
    """The batch's channels as arrays aligned with the sorted unique ids, for vectorised look-ups."""

    ids: np.ndarray
    kind: np.ndarray  # 0 numeric, 1 text, 2 derived
    vmin: np.ndarray
    vmax: np.ndarray
    sentinels: dict[int, np.ndarray]
    instrument_of: dict[int, int]  # channel id -> instrument id (the instruments' freshness, after commit)
    compacted: set[int]  # the channels holding compressed blocks (blocks.expand_for_ingest)
    last_ts: dict[int, int | None]  # each channel's latest reading when looked up (``_pending``)

    @classmethod
    def load(
        cls,
        channel_ids: np.ndarray,
        writable_instruments: Writable,
        using: str,
        known: Mapping[int, tuple] | None = None,
    ) -> _ChannelTable:
        wanted = np.unique(channel_ids).tolist()
        if known is not None and all(pk in known for pk in wanted):
            rows = sorted(known[pk] for pk in wanted)
        else:
            queryset = Channel.objects.using(using).filter(pk__in=wanted)
            if writable_instruments is not None:
                queryset = queryset.filter(instrument_id__in=writable_instruments)
            queryset = queryset.annotate(compacted=blocks.has_any_block())
            rows = sorted(queryset.values_list(*CHANNEL_COLUMNS, "compacted"))
        kinds: dict[str, int] = {ChannelKind.NUMERIC: 0, ChannelKind.TEXT: 1, ChannelKind.DERIVED: 2}
        return cls(
            ids=np.array([r[0] for r in rows], dtype=np.int64),
            kind=np.array([kinds[r[1]] for r in rows], dtype=np.int8),
            vmin=np.array([np.nan if r[2] is None else r[2] for r in rows], dtype=np.float64),
            vmax=np.array([np.nan if r[3] is None else r[3] for r in rows], dtype=np.float64),
            sentinels={r[0]: np.array(r[4], dtype=np.float64) for r in rows if r[4]},
            instrument_of={r[0]: r[5] for r in rows},
            compacted={r[0] for r in rows if r[7]},
            last_ts={r[0]: r[6] for r in rows},
        )

    def locate(self, channel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in this table, found?) for each channel id."""
        if len(self.ids) == 0:
            return np.zeros(len(channel), dtype=np.int64), np.zeros(len(channel), dtype=bool)
        position = np.searchsorted(self.ids, channel)
        clipped = np.minimum(position, len(self.ids) - 1)
        return clipped, self.ids[clipped] == channel


def ingest_samples(
    batch: SampleBatch,
    *,
    origin: str = Origin.INTERNAL,
    source_id: int | None = None,
    writable_instruments: Writable = None,
    rejections: Sequence[Rejection] = (),
    batch_id: str = "",
    allow_derived: bool = False,
    sender: User | AgentPrincipal | AnonymousUser | None = None,
    on_conflict: str = KEEP,
    old_until: int | None = None,
    audit_origin: dict | None = None,
    reason: str = "",
    using: str = "default",
    known_channels: Mapping[int, tuple] | None = None,
) -> IngestResult:
    """Validate, flag and store a batch of readings; see the module docstring.

    ``writable_instruments``: the instruments the sender may write to, or None for trusted server-side
    callers (collectors). ``rejections``: readings the caller already could not parse, stored alongside.
    ``sender``: the user or agent who sent the batch (API uploads): named on every quarantine record,
    whose quarantine is then bounded (``_keep_rejected``). ``on_conflict``: ``"keep"`` (the stored value
    stays, the new one is quarantined as a conflict) or ``"replace"`` (the new value replaces it, audited
    with ``audit_origin`` {actor, address} and ``reason``; the caller checks the sender may change the
    instruments). ``old_until``: readings stamped up to this µs are old data (a re-read): alarm rules do not
    evaluate them. ``known_channels``: {id: CHANNEL_COLUMNS row + has blocks} the
    caller already read under the same ``writable_instruments`` (the ingest endpoint, resolving slugs); when
    they cover every channel of the batch, the channels are not looked up again.
    """
    if on_conflict not in ON_CONFLICT:
        raise ValueError(f"on_conflict must be one of {', '.join(ON_CONFLICT)}, not {on_conflict!r}")
    replace = on_conflict == REPLACE
    result = IngestResult(received=len(batch) + len(rejections), replacing=replace)
    result.rejected.extend(rejections)
    channel = batch.channel
    table = _ChannelTable.load(channel, writable_instruments, using, known_channels) if len(batch) else None
    numeric_value, text_value, code = _validate(batch, table, allow_derived) if table else (None, None, None)

    with transaction.atomic(using=using):
        after = _AfterWrite()
        numeric = None
        if table is not None:
            assert code is not None  # _validate ran: there is a table
            result.rejected.extend(_rejections_for(batch, code))
            keep = np.nonzero(code == _OK)[0]
            # Readings into compacted windows: their blocks become hot rows first, so that the key below
            # tells duplicates and conflicts apart as for any reading (docs/storage.md).
            blocks.expand_for_ingest(channel[keep], batch.ts[keep], compacted=table.compacted, using=using)
            is_text = table.kind[table.locate(channel[keep])[0]] == 1
            numeric = _NumericRows.of(result, batch, keep[~is_text], numeric_value, table, after)
            # A small batch of numbers on PostgreSQL (a small sender's request) is inserted by the statement
            # that moves the last values and writes the backlogs: one round trip, not two.
            fused = (
                numeric is not None
                and not replace
                and not is_text.any()
                and len(numeric.rows) < storage.PG_COPY_FROM
                and connections[using].vendor == "postgresql"
            )
            if numeric is not None and not fused:
                written = storage.insert_numeric(*numeric.columns, using=using)
                numeric.written(result, batch, numeric_value, written, replace, using)
                numeric = None
            _store_text(result, batch, keep[is_text], text_value, using, after, replace)
        if numeric is not None:  # the fused write (no replacing there: nothing to audit, no replaced spans)
            spans = dict(result.spans)
            alarm_spans = _alarm_spans(spans, [], old_until)
            inserted = after.write(spans, alarm_spans, origin, using, samples=numeric.columns)
            ch, t, v, _ = numeric.columns
            written = storage.small_insert_written(connections[using], inserted, ch, t, v)
            numeric.written(result, batch, numeric_value, written, False, using)
        _keep_rejected(result, origin, source_id, batch_id, sender, using)
        if result.replaced:
            _audit_replaced(result.replaced, audit_origin or {}, reason, origin, using)
        spans = dict(result.spans)
        alarm_spans = _alarm_spans(spans, result.replaced, old_until)
        if spans:
            if numeric is None:
                assert table is not None  # spans come from stored readings, which had a table
                after.write(spans, alarm_spans, origin, using, noted=_pending(spans, alarm_spans, table, origin, using))
            rollups = bool(after.rollup_spans)
            transaction.on_commit(
                lambda: samples_ingested.send(
                    sender=ingest_samples, spans=spans, origin=origin, alarm_spans=alarm_spans, rollups=rollups
                ),
                using=using,
            )
            assert table is not None  # spans come from stored readings, which had a table
            latest = _latest_per_instrument([*after.last_numeric, *after.last_text], table.instrument_of, using)
            if latest:
                # After commit, in its own statement (robust: a failure is logged, the readings stay
                # committed): no ingest transaction ever holds an instrument's row.
                transaction.on_commit(lambda: advance_instruments(latest, using), using=using, robust=True)
    return result


def _pending(
    spans: dict[int, tuple[int, int]],
    alarm_spans: dict[int, tuple[int, int]],
    table: _ChannelTable,
    origin: str,
    using: str,
) -> set[int]:
    """The channels of ``spans`` whose follow-up work is noted on the channel row (its pending span, moved
    with its last values) rather than in backlog rows (``collection.services.pending``): on SQLite and
    MariaDB, for readings near the channel's latest (a late reading far in the past gets rows of its own,
    so that a pending span never stretches over days), whose alarm span is the whole span, not derived."""
    if origin == Origin.DERIVED or connections[using].vendor == "postgresql":
        return set()
    reach = pending.PENDING_REACH_US
    chosen = set()
    for channel_id, (first, last) in spans.items():
        latest = table.last_ts.get(channel_id)
        if alarm_spans.get(channel_id) == (first, last) and (latest is None or first >= latest - reach):
            chosen.add(channel_id)
    return chosen


def _alarm_spans(
    spans: dict[int, tuple[int, int]], replaced: list[tuple[int, int, object, object]], old_until: int | None
) -> dict[int, tuple[int, int]]:
    """``spans`` without old data: readings up to ``old_until``, and up to each channel's last replaced one."""
    cut: dict[int, int] = {}
    for channel_id, ts, _old, _new in replaced:
        cut[channel_id] = max(ts, cut.get(channel_id, ts))
    alarm_spans = {}
    for channel_id, (first, last) in spans.items():
        until = max([c for c in (old_until, cut.get(channel_id)) if c is not None], default=None)
        if until is None:
            alarm_spans[channel_id] = (first, last)
        elif last > until:
            alarm_spans[channel_id] = (max(first, until + 1), last)
    return alarm_spans


def _audit_replaced(
    replaced: list[tuple[int, int, object, object]], audit_origin: dict, reason: str, origin: str, using: str
) -> None:
    """One ``samples.replaced`` event per channel (and per REPLACED_PER_EVENT readings): how many, the
    range, and every replaced reading's time with its old and new value."""
    by_channel: dict[int, list[tuple[int, object, object]]] = {}
    for channel_id, ts, old, new in sorted(replaced, key=lambda r: (r[0], r[1])):
        by_channel.setdefault(channel_id, []).append((ts, old, new))
    channels = Channel.objects.using(using).select_related("instrument").in_bulk(list(by_channel))
    for channel_id, rows in by_channel.items():
        channel = channels.get(channel_id)
        if channel is None:
            continue
        # Text values may be long (up to MAX_TEXT_LENGTH): fewer of them per event keeps each event small.
        per_event = REPLACED_PER_EVENT if channel.kind != ChannelKind.TEXT else REPLACED_TEXTS_PER_EVENT
        for start in range(0, len(rows), per_event):
            part = rows[start : start + per_event]
            audit.record(
                AuditAction.SAMPLES_REPLACED,
                obj=channel,
                changes={
                    "reason": reason or ("recomputed" if origin == Origin.DERIVED else "replaced on request"),
                    "origin": origin,
                    "instrument": channel.instrument.slug,
                    "channel": channel.slug,
                    "range": [us_to_datetime(part[0][0]).isoformat(), us_to_datetime(part[-1][0]).isoformat()],
                    "replaced": len(part),
                    **({"of": len(rows), "part": start // per_event + 1} if len(rows) > len(part) else {}),
                    "readings": [[us_to_datetime(ts).isoformat(), old, new] for ts, old, new in part],
                },
                **audit_origin,
            )


def _validate(batch: SampleBatch, table: _ChannelTable, allow_derived: bool):
    """Per-reading reason codes (0 = fine), plus float values for numeric rows and str for text rows."""
    n = len(batch)
    code = np.zeros(n, dtype=np.int8)
    position, found = table.locate(batch.channel)
    kind = np.full(n, -1, dtype=np.int8)  # -1: unknown; indexing only found rows works when none is known
    kind[found] = table.kind[position[found]]
    code[~found] = _UNKNOWN
    if not allow_derived:
        code[(kind == 2) & (code == _OK)] = _DERIVED

    future_us = settings.DAQBROKER_MAX_FUTURE_SECONDS * 1_000_000
    latest = time.time_ns() // 1000 + future_us
    code[((batch.ts < MIN_TS_US) | (batch.ts > latest)) & (code == _OK)] = _TIME

    text_value = np.empty(n, dtype=object)
    text_rows = np.nonzero((kind == 1) & (code == _OK))[0]
    if batch.value.dtype == np.float64:
        numeric_value = batch.value
        for i in text_rows:
            code[i], text_value[i] = _as_text(float(batch.value[i]))
    else:
        numeric_value = np.full(n, np.nan)
        code[text_rows], text_value[text_rows] = _as_texts(batch.value[text_rows])
        number_rows = np.nonzero((kind != 1) & (code == _OK))[0]
        code[number_rows], numeric_value[number_rows] = _as_numbers(batch.value[number_rows])
    numeric_rows = (kind != 1) & (code == _OK)
    code[numeric_rows & ~np.isfinite(numeric_value)] = _NOT_FINITE
    return numeric_value, text_value, code


def _as_texts(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``_as_text`` of each value: in bulk when all are short strings without NUL (the usual case)."""
    codes = np.zeros(len(raw), dtype=np.int8)
    if len(raw) == 0:
        return codes, raw
    values = raw.tolist()
    if (
        pd.api.types.infer_dtype(raw, skipna=False) == "string"
        and max(map(len, values)) <= MAX_TEXT_LENGTH
        and "\x00" not in "".join(values)
    ):
        return codes, raw
    texts = np.empty(len(raw), dtype=object)
    for i, value in enumerate(values):
        codes[i], texts[i] = _as_text(value)
    return codes, texts


def _as_numbers(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``_as_number`` of each value: in bulk for real numbers and for strings that read as numbers."""
    codes = np.zeros(len(raw), dtype=np.int8)
    if len(raw) == 0:
        return codes, np.empty(0)
    kind = pd.api.types.infer_dtype(raw, skipna=False)
    if kind in ("floating", "integer", "mixed-integer-float"):
        try:
            return codes, raw.astype(np.float64)  # NaN and infinities are refused by the caller
        except (OverflowError, TypeError, ValueError):
            pass  # an integer too large for a float: one by one below
    numbers = np.full(len(raw), np.nan)
    if kind == "string":
        numbers = pd.to_numeric(pd.Series(raw, dtype=object), errors="coerce").to_numpy(dtype=np.float64, copy=True)
    # What did not come out as a number (and "nan" text) is looked at one by one, for its reason.
    for i in np.flatnonzero(np.isnan(numbers)).tolist():
        codes[i], numbers[i] = _as_number(raw[i])
    return codes, numbers


def _as_number(raw) -> tuple[int, float]:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return _EMPTY, math.nan
    if isinstance(raw, bool):
        return _NOT_NUMBER, math.nan
    try:
        return _OK, float(raw)
    except (TypeError, ValueError, OverflowError):
        return _NOT_NUMBER, math.nan


def _as_text(raw) -> tuple[int, str | None]:
    if raw is None:
        return _EMPTY, None
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        return _NOT_TEXT, None
    if isinstance(raw, float) and not math.isfinite(raw):
        return _NOT_FINITE, None
    text = raw if isinstance(raw, str) else repr(raw)
    if len(text) > MAX_TEXT_LENGTH:
        return _TOO_LONG, None
    if "\x00" in text:
        return _NUL, None
    return _OK, text


@dataclass(frozen=True)
class ValueVerdict:
    """What ``ingest_samples`` would do with one reading: stored (with its quality) or rejected, and why."""

    stored: bool
    value: float | str | None
    quality: int | None
    reason: str


def judge_value(
    *,
    text: bool,
    raw: object,
    ts_us: int,
    valid_min: float | None = None,
    valid_max: float | None = None,
    missing_values: list[float] | tuple[float, ...] = (),
) -> ValueVerdict:
    """One reading through ingest's own rules (the source-setup preview shows it; nothing is written)."""
    future = settings.DAQBROKER_MAX_FUTURE_SECONDS
    if ts_us < MIN_TS_US or ts_us > time.time_ns() // 1000 + future * 1_000_000:
        return ValueVerdict(False, None, None, _REASONS[_TIME].format(future=f"{future} s"))
    if text:
        code, value = _as_text(raw)
        if code:
            return ValueVerdict(False, None, None, _REASONS[code])
        return ValueVerdict(True, value, Quality.OK, "")
    code, number = _as_number(raw)
    if not code and not math.isfinite(number):
        code = _NOT_FINITE
    if code:
        return ValueVerdict(False, None, None, _REASONS[code])
    if number in missing_values:
        return ValueVerdict(True, number, Quality.MISSING, "a missing-value sentinel: stored, marked missing")
    if (valid_min is not None and number < valid_min) or (valid_max is not None and number > valid_max):
        return ValueVerdict(True, number, Quality.OUT_OF_RANGE, "outside the valid range: stored, flagged")
    return ValueVerdict(True, number, Quality.OK, "")


def _rejections_for(batch: SampleBatch, code: np.ndarray) -> list[Rejection]:
    future = f"{settings.DAQBROKER_MAX_FUTURE_SECONDS} s"
    return [
        _rejection(
            batch, i, _REASONS[int(code[i])].format(future=future), known=code[i] != _UNKNOWN, kind=_KINDS[int(code[i])]
        )
        for i in np.nonzero(code != _OK)[0].tolist()
    ]


def _rejection(
    batch: SampleBatch, i: int, reason: str, *, known: bool = True, context: dict | None = None, kind: str = ""
):
    """Reading ``i`` of the batch as a ``Rejection`` with ``reason``."""
    ts = int(batch.ts[i])
    try:
        raw_time = us_to_datetime(ts).isoformat()
    except OverflowError:
        raw_time = str(ts)
    return Rejection(
        reason=reason,
        # A sender's batch: the reading's index in it. A collector's: where it came from instead.
        index=None if batch.where is not None else i if batch.position is None else int(batch.position[i]),
        context={**(batch.where(i) if batch.where is not None else {}), **(context or {})},
        channel_id=int(batch.channel[i]) if known else None,
        channel_ref=str(int(batch.channel[i])),
        raw_time=raw_time,
        raw_value=raw_text(batch.value[i]),
        unwritable=not known,
        kind=kind,
    )


def _shown(value) -> str:
    """A value as a conflict's reason shows it: numbers as Python writes them, text quoted and cut short."""
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    return repr(float(value))


def _conflicts(
    result: IngestResult, batch: SampleBatch, rows: np.ndarray, values: np.ndarray, stored: np.ndarray
) -> None:
    """Quarantines readings ``rows`` of the batch (their values ``values``), each in conflict with the
    value ``stored`` at its time."""
    for i, new, old in zip(rows.tolist(), values.tolist(), stored.tolist(), strict=True):
        when = us_to_datetime(int(batch.ts[i])).isoformat()
        result.conflicted.append(
            _rejection(
                batch,
                i,
                f"conflict: {_shown(new)} differs from the stored {_shown(old)} at {when}",
                context={"conflict": True, "stored_value": old},
                kind=RejectionKind.CONFLICT,
            )
        )


def _sorted_unique(rows: np.ndarray, channel: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows ordered by (channel, ts) with repeats of a (channel, ts) inside the batch set apart: (the first
    row of each time, the repeats, and for each repeat the position of its first row in the former)."""
    order = rows[np.lexsort((ts[rows], channel[rows]))]  # stable: the first sent of a time comes first
    if len(order) < 2:
        return order, order[:0], order[:0]
    first = np.r_[True, (channel[order][1:] != channel[order][:-1]) | (ts[order][1:] != ts[order][:-1])]
    if first.all():
        return order, order[:0], order[:0]
    return order[first], order[~first], (np.cumsum(first) - 1)[~first]


def _sort_out(
    result: IngestResult,
    batch: SampleBatch,
    rows: np.ndarray,
    repeats: np.ndarray,
    first_of: np.ndarray,
    values: np.ndarray,
    written: storage.Written,
    replace: bool = False,
) -> np.ndarray:
    """Counts what ``written`` did with ``rows`` (duplicates, conflicts) and sorts the batch's repeats of a
    time against the value stored at it. Returns a mask of ``rows`` that conflict (when ``replace``: that
    are to replace the stored value, which ``result.replaced`` lists)."""
    result.accepted += written.inserted
    result.duplicates += written.duplicates
    conflict = np.zeros(len(rows), dtype=bool)
    stored = values[rows]
    if written.conflict_rows:
        at = np.array(written.conflict_rows, dtype=np.int64)
        conflict[at] = True
        if replace:  # the batch's value goes in: repeats in the batch are judged against it
            for i, old in zip(rows[at].tolist(), written.stored, strict=True):
                new = values[i]
                result.replaced.append((int(batch.channel[i]), int(batch.ts[i]), _plain(old), _plain(new)))
        else:
            stored = stored.copy()
            stored[at] = np.array(written.stored, dtype=stored.dtype)
            _conflicts(result, batch, rows[at], values[rows[at]], stored[at])
    if len(repeats):
        differs = values[repeats] != stored[first_of]
        result.duplicates += int(np.count_nonzero(~differs))
        _conflicts(result, batch, repeats[differs], values[repeats[differs]], stored[first_of[differs]])
    return conflict


def _plain(value):
    """A numpy scalar as the Python value the audit trail can hold."""
    return value.item() if isinstance(value, np.generic) else value


def _last_rows(channel_sorted: np.ndarray) -> np.ndarray:
    """Index of the last row of each channel's run in an array sorted by channel."""
    return np.r_[np.nonzero(np.diff(channel_sorted))[0], len(channel_sorted) - 1]


@dataclass
class _NumericRows:
    """A batch's valid numeric readings ordered by (channel, ts), flagged, ready to be written; what is
    known before the write (last values, changed spans) is already handed to ``after``."""

    rows: np.ndarray  # positions in the batch, the first of each (channel, ts)
    repeats: np.ndarray  # later readings of a (channel, ts) in the batch ...
    first_of: np.ndarray  # ... and the position in ``rows`` of their first
    columns: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # channel, ts, value, quality of ``rows``

    @classmethod
    def of(cls, result, batch: SampleBatch, rows, values, table: _ChannelTable, after) -> _NumericRows | None:
        if len(rows) == 0:
            return None
        channel, ts = batch.channel, batch.ts
        rows, repeats, first_of = _sorted_unique(rows, channel, ts)
        ch, t, v = channel[rows], ts[rows], values[rows]
        position, _ = table.locate(ch)
        quality = np.zeros(len(rows), dtype=np.int16) if batch.quality is None else batch.quality[rows].astype(np.int16)
        with np.errstate(invalid="ignore"):
            quality[(v < table.vmin[position]) | (v > table.vmax[position])] = Quality.OUT_OF_RANGE
        for channel_id, sentinels in table.sentinels.items():
            quality[(ch == channel_id) & np.isin(v, sentinels)] = Quality.MISSING
        last = _last_rows(ch)
        after.rollup_spans.update(_record_spans(result, ch, t, last))
        after.last_numeric = [(int(t[i]), float(v[i]), int(quality[i]), int(ch[i]), int(t[i])) for i in last]
        return cls(rows, repeats, first_of, (ch, t, v, quality))

    def written(self, result, batch: SampleBatch, values, written: storage.Written, replace: bool, using: str) -> None:
        """Count what the write did: accepted, duplicates, conflicts (quarantined, or replaced), flagged."""
        ch, t, v, quality = self.columns
        conflict = _sort_out(result, batch, self.rows, self.repeats, self.first_of, values, written, replace)
        if replace and written.conflict_rows:
            at = np.array(written.conflict_rows, dtype=np.int64)
            _replace(False, [(float(v[i]), int(quality[i]), int(ch[i]), int(t[i])) for i in at.tolist()], using)
            result.flagged += int(np.count_nonzero(quality))
        else:
            result.flagged += int(np.count_nonzero(quality[~conflict]))


def _store_text(result, batch: SampleBatch, rows, values, using: str, after, replace: bool = False) -> None:
    if len(rows) == 0:
        return
    channel, ts = batch.channel, batch.ts
    rows, repeats, first_of = _sorted_unique(rows, channel, ts)
    ch, t = channel[rows], ts[rows]
    text = values[rows].tolist()
    quality = [int(Quality.OK)] * len(rows) if batch.quality is None else batch.quality[rows].astype(int).tolist()
    written = storage.insert_text(storage.row_tuples(ch.tolist(), t.tolist(), text, quality), using=using)
    _sort_out(result, batch, rows, repeats, first_of, values, written, replace)
    if replace and written.conflict_rows:
        _replace(True, [(text[i], quality[i], int(ch[i]), int(t[i])) for i in written.conflict_rows], using)
    last = _last_rows(ch)
    _record_spans(result, ch, t, last)
    after.last_text = [(int(t[i]), text[i], quality[i], int(ch[i]), int(t[i])) for i in last]


def _record_spans(result: IngestResult, ch: np.ndarray, t: np.ndarray, last: np.ndarray) -> dict[int, tuple[int, int]]:
    first = np.r_[0, last[:-1] + 1]
    spans = {}
    for start, end in zip(first.tolist(), last.tolist(), strict=True):
        spans[int(ch[start])] = (int(t[start]), int(t[end]))
    result.spans.update(spans)
    return spans


def follow_up_payload(spans: dict[int, tuple[int, int]], alarm_spans: dict | None) -> dict[str, list]:
    """The follow-up work of a batch as kept in ``FollowUpBacklog``: ``{"channel id": [first, last]}``, with a
    third item where alarm rules look at less than the span (old data corrected or re-read): the first µs
    they evaluate, or None for none of it. Read back by ``collection.alarms.tasks``."""
    payload: dict[str, list] = {}
    for channel_id, (first, last) in spans.items():
        payload[str(channel_id)] = [int(first), int(last)]
        if alarm_spans is not None and alarm_spans.get(channel_id) != (first, last):
            found = alarm_spans.get(channel_id)
            payload[str(channel_id)].append(None if found is None else int(found[0]))
    return payload


@dataclass
class _AfterWrite:
    """What the batch leaves to do in its transaction once its readings are written: move the channels'
    last values forward, note the numeric channels' changed spans for the rollups (``RollupBacklog``), and
    keep the spans for the follow-up work (spike checks, derived channels, alarm rules: ``FollowUpBacklog``,
    done by a worker woken after commit, at most about once a second per web process). All of it in the
    ingest transaction: committed with the readings, or not at all. On PostgreSQL in one statement; on
    SQLite and MariaDB the spans of the ``noted`` channels are noted on their rows by the statement that
    moves their last values (``collection.services.pending``), the others in backlog rows."""

    last_numeric: list[tuple] = field(default_factory=list)  # (ts, value, quality, channel id, ts)
    last_text: list[tuple] = field(default_factory=list)
    rollup_spans: dict[int, tuple[int, int]] = field(default_factory=dict)

    def write(
        self,
        spans: dict[int, tuple[int, int]],
        alarm_spans: dict[int, tuple[int, int]],
        origin: str,
        using: str,
        samples: tuple | None = None,
        noted: Collection[int] = (),
    ) -> int:
        """``spans`` and ``alarm_spans``: the batch's, as ``ingest_samples`` has them. ``samples`` (PostgreSQL,
        a small batch of numbers: channel, ts, value and quality arrays) are inserted by the same statement;
        returns how many of them it inserted. ``noted``: the channels whose spans go to their rows."""
        connection = connections[using]
        if connection.vendor == "postgresql":
            assert not noted
            return self._write_postgresql(connection, follow_up_payload(spans, alarm_spans), origin, samples)
        assert samples is None
        on_rows = {channel_id: spans[channel_id] for channel_id in noted}
        if self.last_numeric:
            _advance_last_values("last_value", self.last_numeric, using, on_rows)
        if self.last_text:
            _advance_last_values("last_text", self.last_text, using, on_rows)
        # Written out, not through the ORM: as rollups.mark_changed and FollowUpBacklog.objects.create would
        # write them, at a fraction of the cost for one small request.
        quote = connection.ops.quote_name
        now = connection.ops.adapt_datetimefield_value(timezone.now())
        rollup = [(pk, first, last, now) for pk, (first, last) in self.rollup_spans.items() if pk not in on_rows]
        follow_up = {pk: span for pk, span in spans.items() if pk not in on_rows}
        with connection.cursor() as cursor:
            if rollup:
                cursor.executemany(
                    f"INSERT INTO {quote(RollupBacklog._meta.db_table)} (channel_id, start_ts, end_ts, created) "
                    "VALUES (%s, %s, %s, %s)",
                    rollup,
                )
            if follow_up:
                cursor.execute(
                    f"INSERT INTO {quote(FollowUpBacklog._meta.db_table)} (spans, origin, created) VALUES (%s, %s, %s)",
                    [orjson.dumps(follow_up_payload(follow_up, alarm_spans)).decode(), origin, now],
                )
        return 0

    def _write_postgresql(self, connection, follow_up: dict, origin: str, samples: tuple | None) -> int:
        """The same, as one statement of data-modifying CTEs (numeric and text channels are distinct rows),
        prepared once per connection (its text does not vary with the batch). The last values move forward
        whether the readings are new, duplicates or conflicts: a stored time is never after the channel's
        last one, so the forward-only ``WHERE`` leaves duplicates and conflicts alone, as when the insert ran
        on its own before."""
        quote = connection.ops.quote_name
        channel = quote(Channel._meta.db_table)
        advance = "WHERE c.id = v.id AND (c.last_ts IS NULL OR c.last_ts < v.ts) RETURNING 1"
        insert = "" if samples is None else f"inserted AS ({storage.pg_small_insert_sql(connection)} RETURNING 1), "
        sql = (
            f"WITH {insert}numeric_last AS (UPDATE {channel} c SET last_ts = v.ts, last_value = v.value, "
            "last_quality = v.quality FROM unnest(%s::bigint[], %s::bigint[], %s::float8[], %s::smallint[]) "
            f"AS v(id, ts, value, quality) {advance}), "
            f"text_last AS (UPDATE {channel} c SET last_ts = v.ts, last_text = v.value, last_quality = v.quality "
            f"FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::smallint[]) AS v(id, ts, value, quality) "
            f"{advance}), "
            f"rollup AS (INSERT INTO {quote(RollupBacklog._meta.db_table)} (channel_id, start_ts, end_ts, created) "
            "SELECT id, first_ts, last_ts, %s FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) "
            "AS s(id, first_ts, last_ts) RETURNING 1), "
            f"follow_up AS (INSERT INTO {quote(FollowUpBacklog._meta.db_table)} (spans, origin, created) "
            "VALUES (%s::jsonb, %s, %s) RETURNING 1) "
            + ("SELECT 0" if samples is None else "SELECT count(*) FROM inserted")
        )
        now = timezone.now()
        rollup = list(self.rollup_spans.items())
        numeric_last = _last_columns(self.last_numeric)
        params = [
            *(storage.pg_small_insert_params(*samples) if samples is not None else ()),
            *(storage.pg_array(column) for column in numeric_last),
            *(storage.pg_array(column) for column in _last_columns(self.last_text)[:2]),
            [r[1] for r in self.last_text],
            storage.pg_array([r[2] for r in self.last_text]),
            now,
            storage.pg_array([channel_id for channel_id, _ in rollup]),
            storage.pg_array([first for _, (first, _) in rollup]),
            storage.pg_array([last for _, (_, last) in rollup]),
            orjson.dumps(follow_up).decode(),
            origin,
            now,
        ]
        with storage.prepared_cursor(connection) as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()[0]


def _last_columns(rows: list[tuple]) -> list[list]:
    """(ts, value, quality, id, ts) rows as the columns id, ts, value, quality."""
    return [[r[3] for r in rows], [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]]


def _replace(text: bool, rows: list[tuple], using: str) -> None:
    """Overwrite the stored readings ``rows`` (value, quality, channel, ts), and the channels' last value
    where the replaced reading is their latest."""
    storage.replace_values(text, rows, using=using)
    connection = connections[using]
    table = connection.ops.quote_name(Channel._meta.db_table)
    column = "last_text" if text else "last_value"
    with connection.cursor() as cursor:
        cursor.executemany(f"UPDATE {table} SET {column} = %s, last_quality = %s WHERE id = %s AND last_ts = %s", rows)


def _advance_last_values(
    value_column: str, rows: list[tuple], using: str, pending: Mapping[int, tuple[int, int]] | None = None
) -> None:
    """Move each channel's last reading forward, never backward (late data and concurrent writers), and widen
    the pending span of the channels of ``pending`` {channel id: (first, last)} to cover it, in one statement
    (SQLite and MariaDB; ``collection.services.pending``)."""
    connection = connections[using]
    table = connection.ops.quote_name(Channel._meta.db_table)
    pending = pending or {}
    spans = [pending.get(pk, (None, None)) for _, _, _, pk, _ in rows]
    if connection.vendor == "mysql":
        # mysqlclient sends an executemany of UPDATEs one statement at a time: one join instead. Numbers are
        # made doubles in every row (``+ 0e0``): a union of literals would otherwise be typed DECIMAL.
        # MariaDB assigns from left to right, each expression seeing the columns assigned before it: last_ts
        # is assigned last, so the tests on it see the stored one.
        value = "%s + 0e0" if value_column == "last_value" else "%s"
        newer = "c.last_ts IS NULL OR c.last_ts < v.ts"
        with connection.cursor() as cursor:
            for start in range(0, len(rows), 1000):
                part = rows[start : start + 1000]
                row = (
                    f"SELECT %s AS id, %s AS ts, {value} AS val, %s AS q, "
                    "CAST(%s AS SIGNED) AS pf, CAST(%s AS SIGNED) AS pt"
                )
                values = " UNION ALL ".join([row] * len(part))
                cursor.execute(
                    f"UPDATE {table} c JOIN ({values}) v ON c.id = v.id SET "
                    "c.pending_from = COALESCE(LEAST(COALESCE(c.pending_from, v.pf), v.pf), c.pending_from), "
                    "c.pending_to = COALESCE(GREATEST(COALESCE(c.pending_to, v.pt), v.pt), c.pending_to), "
                    f"c.{value_column} = IF({newer}, v.val, c.{value_column}), "
                    f"c.last_quality = IF({newer}, v.q, c.last_quality), c.last_ts = IF({newer}, v.ts, c.last_ts) "
                    f"WHERE {newer} OR v.pf IS NOT NULL",
                    [
                        x
                        for (ts, value, quality, pk, _), (first, last) in zip(part, spans[start:], strict=False)
                        for x in (pk, ts, value, quality, first, last)
                    ],
                )
        return
    # SQLite: every expression sees the row as it was.
    newer = "last_ts IS NULL OR last_ts < %s"
    sql = (
        f"UPDATE {table} SET {value_column} = CASE WHEN {newer} THEN %s ELSE {value_column} END, "
        f"last_quality = CASE WHEN {newer} THEN %s ELSE last_quality END, "
        f"last_ts = CASE WHEN {newer} THEN %s ELSE last_ts END, "
        "pending_from = COALESCE(MIN(COALESCE(pending_from, %s), %s), pending_from), "
        "pending_to = COALESCE(MAX(COALESCE(pending_to, %s), %s), pending_to) "
        f"WHERE id = %s AND ({newer} OR %s IS NOT NULL)"
    )
    with connection.cursor() as cursor:
        cursor.executemany(
            sql,
            [
                (ts, value, ts, quality, ts, ts, first, first, last, last, pk, ts, first)
                for (ts, value, quality, pk, _), (first, last) in zip(rows, spans, strict=True)
            ],
        )


# The latest reading time this process wrote to each instrument's ``last_reading_ts`` ({(using, id): µs}):
# a reading newer by less than FRESHNESS_STEP_US is not written again (``_latest_per_instrument``).
_written_freshness: dict[tuple[str, int], int] = {}
# The step, in reading time, below which an instrument's freshness is not written again by this process:
# one second, the shortest expected interval a channel or source can have, so the stored latest reading
# lags the true one by under a second (the status filters compare it with 2 and 5 intervals).
FRESHNESS_STEP_US = 1_000_000
_FRESHNESS_MEMORY = 10_000  # instruments remembered per process; forgotten all at once beyond


def forget_written_freshness() -> None:
    """Forget what this process wrote to the instruments' freshness (tests; a database restored)."""
    _written_freshness.clear()


def _latest_per_instrument(rows: list[tuple], instrument_of: Mapping[int, int], using: str) -> dict[int, int]:
    """The latest reading time per instrument of ``rows`` (ts, value, quality, channel id, ts), less those
    this process already wrote at most FRESHNESS_STEP_US earlier: many small requests for one instrument
    write its freshness about once a second of readings, not once each. Late readings (older than what was
    written) are not skipped: the database's forward-only ``WHERE`` decides."""
    latest: dict[int, int] = {}
    for ts, _, _, channel_id, _ in rows:
        instrument_id = instrument_of[channel_id]
        latest[instrument_id] = max(ts, latest.get(instrument_id, ts))
    for instrument_id, ts in list(latest.items()):
        written = _written_freshness.get((using, instrument_id))
        if written is not None and written <= ts < written + FRESHNESS_STEP_US:
            del latest[instrument_id]
    return latest


def advance_instruments(latest: Mapping[int, int], using: str = "default") -> None:
    """Move each instrument's ``last_reading_ts`` forward to ``latest`` {instrument id: µs}, never backward:
    one short statement of its own, run after the ingest transaction commits (``ingest_samples``), so that no
    ingest transaction holds an instrument's row while it writes readings (a frozen or slow collector would
    otherwise block every other source of its instrument). A process killed between the commit and this
    statement leaves the instrument's freshness behind until its next reading, or until
    ``instruments.models.catch_up_instrument_freshness`` (a periodic task) corrects it."""
    if not latest:
        return
    connection = connections[using]
    instrument = connection.ops.quote_name(Instrument._meta.db_table)
    items = sorted(latest.items())  # one order for every writer: no deadlock between two of them
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"UPDATE {instrument} i SET last_reading_ts = v.ts FROM unnest(%s::bigint[], %s::bigint[]) "
                "AS v(id, ts) WHERE i.id = v.id AND (i.last_reading_ts IS NULL OR i.last_reading_ts < v.ts)",
                [[pk for pk, _ in items], [ts for _, ts in items]],
            )
        elif connection.vendor == "mysql":
            # mysqlclient sends an executemany of UPDATEs one statement at a time: one join instead.
            for start in range(0, len(items), 1000):
                part = items[start : start + 1000]
                values = " UNION ALL ".join(["SELECT %s AS id, %s AS ts"] * len(part))
                cursor.execute(
                    f"UPDATE {instrument} i JOIN ({values}) v ON i.id = v.id SET i.last_reading_ts = v.ts "
                    "WHERE i.last_reading_ts IS NULL OR i.last_reading_ts < v.ts",
                    [x for pk, ts in part for x in (pk, ts)],
                )
        else:  # SQLite: in-process, one prepared statement run per instrument
            cursor.executemany(
                f"UPDATE {instrument} SET last_reading_ts = %s WHERE id = %s "
                "AND (last_reading_ts IS NULL OR last_reading_ts < %s)",
                [(ts, pk, ts) for pk, ts in items],
            )
    if len(_written_freshness) + len(items) > _FRESHNESS_MEMORY:
        _written_freshness.clear()
    for pk, ts in items:
        key = (using, pk)
        _written_freshness[key] = max(ts, _written_freshness.get(key, ts))


def _storable(value):
    """Strings as every engine can keep them: a NUL character (PostgreSQL refuses it) written as ``\\x00``."""
    if isinstance(value, str):
        return value.replace("\x00", "\\x00")
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    return value


@dataclass(frozen=True)
class _Sender:
    user_id: int | None
    agent_id: int | None

    @classmethod
    def of(cls, principal: User | AgentPrincipal | AnonymousUser | None) -> _Sender | None:
        if principal is None:
            return None
        if isinstance(principal, AgentPrincipal):
            return cls(user_id=None, agent_id=principal.agent.pk)
        return cls(user_id=principal.pk, agent_id=None)  # an anonymous sender (pk None) is capped alike

    def recent_records(self, using: str) -> int:
        since = timezone.now() - timedelta(hours=1)
        who = Q(sender_agent_id=self.agent_id) if self.agent_id is not None else Q(sender_user_id=self.user_id)
        return RejectedSample.objects.using(using).filter(who, received_at__gte=since).count()


def _keep_rejected(
    result: IngestResult,
    origin: str,
    source_id: int | None,
    batch_id: str,
    principal: User | AgentPrincipal | AnonymousUser | None,
    using: str,
) -> None:
    """Quarantine the rejected readings: one ``RejectedSample`` each, within bounds for API senders.

    For a named sender (an API user or agent), readings for channels it may not write (or that do not
    exist) are counted in ONE aggregate record per request, and the others are kept one by one up to
    DAQBROKER_QUARANTINE_PER_REQUEST per request and DAQBROKER_QUARANTINE_PER_SENDER_HOUR per sender
    and hour; the rest are counted in one more aggregate record. Nothing is dropped unseen: aggregate
    records carry their count and first references, and the response says how many were aggregated.
    Server-side callers (collectors, no sender) keep every rejected reading.
    """
    rejected = [*result.rejected, *result.conflicted]  # a conflict is kept with both values, like a rejection
    if not rejected:
        return
    sender = _Sender.of(principal)
    rows: list[RejectedSample]
    if sender is None:
        rows = [_record(r) for r in rejected]
    else:
        unwritable = [r for r in rejected if r.unwritable]
        others = [r for r in rejected if not r.unwritable]
        allowance = min(settings.DAQBROKER_QUARANTINE_PER_REQUEST, len(others))
        if allowance:
            left = settings.DAQBROKER_QUARANTINE_PER_SENDER_HOUR - sender.recent_records(using)
            allowance = max(0, min(allowance, left))
        rows = [_record(r) for r in others[:allowance]]
        if unwritable:
            rows.append(_aggregate(unwritable, UNKNOWN_CHANNEL, RejectionKind.UNKNOWN_CHANNEL))
        overflow = others[allowance:]
        if overflow:
            rows.append(
                _aggregate(
                    overflow,
                    f"{len(overflow):,} rejected readings past the quarantine limits (per request "
                    f"{settings.DAQBROKER_QUARANTINE_PER_REQUEST:,}, per sender and hour "
                    f"{settings.DAQBROKER_QUARANTINE_PER_SENDER_HOUR:,}): counted here, not kept one by one",
                    RejectionKind.OVER_LIMIT,
                )
            )
        result.aggregated = len(unwritable) + len(overflow)
    snapshot_id = _config_snapshot_id(source_id, using) if source_id is not None else None
    for row in rows:
        row.origin, row.source_id, row.batch_id = origin, source_id, _storable(batch_id)[:100]
        row.config_snapshot_id = snapshot_id
        if sender is not None:
            row.sender_user_id, row.sender_agent_id = sender.user_id, sender.agent_id
    RejectedSample.objects.using(using).bulk_create(rows, batch_size=1000)


def _config_snapshot_id(source_id: int, using: str) -> int | None:
    """The snapshot of the source's configuration now (made the first time it is needed): what the quarantine
    records of this batch were refused under. Two queries, only for batches with rejections."""
    config = DataSource.objects.using(using).filter(pk=source_id).values_list("config", flat=True).first()
    if config is None:
        return None
    digest = hashlib.sha256(orjson.dumps(config, option=orjson.OPT_SORT_KEYS)).hexdigest()
    snapshot, _ = SourceConfigSnapshot.objects.using(using).get_or_create(
        source_id=source_id, digest=digest, defaults={"config": config}
    )
    return snapshot.pk


def _record(r: Rejection) -> RejectedSample:
    return RejectedSample(
        channel_id=r.channel_id,
        channel_ref=_storable(r.channel_ref)[:300],
        raw_time=_storable(r.raw_time)[:100],
        raw_value=_storable(r.raw_value),
        reason=_storable(r.reason)[:300],
        kind=r.kind or classify_reason(r.reason, whole_line=not r.raw_time),
        context=_storable({**r.context, **({"index": r.index} if r.index is not None else {})}),
    )


def _aggregate(rejections: list[Rejection], reason: str, kind: str) -> RejectedSample:
    """One record standing for ``rejections``: the first one's fields, the count and a few references."""
    first = rejections[0]
    references = list(dict.fromkeys(r.channel_ref for r in rejections[: AGGREGATE_EXAMPLES * 10]))
    record = _record(first)
    record.channel_id = first.channel_id if all(r.channel_id == first.channel_id for r in rejections) else None
    record.raw_value = record.raw_value[:AGGREGATE_VALUE_CHARS]
    record.reason = _storable(reason)[:300]
    record.kind = kind
    record.count = len(rejections)
    record.context = _storable(
        {
            "aggregate": True,
            "count": len(rejections),
            "references": references[:AGGREGATE_EXAMPLES],
            "indexes": [r.index for r in rejections[:AGGREGATE_EXAMPLES] if r.index is not None],
            "reasons": sorted({r.reason for r in rejections[: AGGREGATE_EXAMPLES * 10]})[:AGGREGATE_EXAMPLES],
        }
    )
    return record
