"""Rollup tiers: per-channel summaries of readings in fixed time buckets, kept exact as data changes.

Tiers (``collection.choices.RollupTier``) are 10 s, 1 min, 10 min, 1 h and 1 day buckets aligned on the
Unix epoch (UTC). Each bucket holds the count, minimum, maximum, sum and M2 (sum of squared deviations
from the bucket mean, for the standard deviation) of its readings, and its first and last timestamp.
Readings flagged with any quality other than OK are not summarised, only counted (``flagged``): a
sentinel -9999 or an out-of-range spike would otherwise own every min/max/mean above it. Plots of raw
readings can still show them (``collection.services.query``).

Maintenance: ``ingest_samples`` appends the changed spans to ``RollupBacklog`` in its own transaction (on
SQLite and MariaDB it notes most of them on the channel rows, which ``refresh_rollups`` first moves into the
backlog: ``collection.services.pending``) and sends ``samples_ingested`` on commit; the receiver
(``on_samples_ingested``) asks a Celery worker to run ``refresh_rollups`` (at most about once a second per
web process: ``enqueue.enqueue_soon``). A refresh locks a channel's ``RollupState`` row (``SELECT ... FOR
UPDATE SKIP LOCKED``; SQLite's IMMEDIATE transactions serialise writers), recomputes exactly the buckets its
backlog spans touch, and deletes the backlog rows in the same transaction; channels whose backlog is one
short span are recomputed together, many per transaction, in statements that do not grow with their number
(``recompute_many``). The finest tier is computed from raw readings, every other tier from the whole buckets
of the tier below it (widths divide each other), so a late reading costs one 10 s bucket of raw rows plus a
few dozen buckets per tier, whatever the tier. Recomputing is idempotent; work per transaction is bounded
(``max_rows``) and the rest of a span goes back to the backlog. A periodic sweep picks up spans whose task
was lost.

Retention (``collection.services.retention``) removes old raw readings and sets ``raw_kept_from``:
buckets before it are never recomputed from the (now missing) raw rows, so the tiers keep the history.

Packed tiers (docs/storage.md): with compressed storage on, compaction also packs each closed hour's
buckets of the 10 s and 1 min tiers (``PACKED_TIERS``) into one ``RollupBlock`` per channel and tier
(``pack_window``). A packed hour's buckets of a tier are in its block and not in ``Rollup``, never both:
``fetch_buckets`` reads both, and every writer turns the packed hours it is about to change back into rows
first (``_delete_buckets`` → ``_unpack``), under the channel's lock like any refresh. Ranges younger than
``blocks.FRESH_US`` cannot reach a packed hour and skip both look-ups.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

import numpy as np
from django.db import connections, transaction
from django.utils import timezone

from collection import codec
from collection.choices import Quality, RollupTier
from collection.models import Rollup, RollupBacklog, RollupBlock, RollupState, Sample
from collection.services import blocks, pending
from collection.services.enqueue import enqueue_soon, try_enqueue
from collection.services.fetch import F8, I8, fetch_columns, iter_chunks

logger = logging.getLogger(__name__)
# Queued by name: collection.tasks imports this module, so importing the task here would be a cycle.
REFRESH_ROLLUPS_TASK = "collection.tasks.refresh_rollups_task"

SECOND = 1_000_000
TIERS: tuple[int, ...] = tuple(sorted(RollupTier.values))  # bucket widths in seconds, finest first
WIDTHS: tuple[int, ...] = tuple(t * SECOND for t in TIERS)  # in µs
TIER_NAMES: dict[int, str] = {t.value: t.label for t in RollupTier}
FINEST = TIERS[0]
# Tiers whose buckets of a closed hour are packed into one RollupBlock: those with at least 60 buckets an
# hour (10 s, 1 min). A plot reads up to ~2,000 buckets of one tier: 6 or 34 blocks of these, but 334
# blocks of six 10-min buckets each, whose decoding would cost more than the rows (0.24 B a reading) save.
PACKED_TIERS: tuple[int, ...] = tuple(t for t in TIERS if blocks.BLOCK_WIDTH_US // (t * SECOND) >= 60)

RAW_CHUNK_ROWS = 200_000
MAX_ROWS_PER_TRANSACTION = 1_000_000
_I64_MAX = np.iinfo(np.int64).max
_I64_MIN = np.iinfo(np.int64).min

RAW_COLUMNS = (("ts", I8), ("value", F8), ("quality", I8))
BUCKET_COLUMNS = (
    ("bucket", I8),
    ("count", I8),
    ("flagged", I8),
    ("min_value", F8),
    ("max_value", F8),
    ("sum_value", F8),
    ("m2", F8),
    ("first_ts", I8),
    ("last_ts", I8),
)


def floor_to(ts: int, width: int) -> int:
    return ts - ts % width  # Python's % floors, so this is right before 1970 too


def ceil_to(ts: int, width: int) -> int:
    return -floor_to(-ts, width)


@dataclass
class Buckets:
    """Columns of bucket summaries, ordered by ``bucket``. Where ``count`` is 0 (every reading flagged)
    min/max/mean are NaN and first/last are meaningless (stored as NULL)."""

    bucket: np.ndarray
    count: np.ndarray
    flagged: np.ndarray
    min_value: np.ndarray
    max_value: np.ndarray
    sum_value: np.ndarray
    m2: np.ndarray
    first_ts: np.ndarray
    last_ts: np.ndarray

    def __len__(self) -> int:
        return len(self.bucket)

    @classmethod
    def empty(cls) -> Buckets:
        return cls(**{f.name: np.empty(0, dtype=dict(BUCKET_COLUMNS)[f.name]) for f in fields(cls)})

    @classmethod
    def from_columns(cls, columns: dict[str, np.ndarray]) -> Buckets:
        return cls(**{f.name: columns[f.name] for f in fields(cls)})

    @classmethod
    def concat(cls, parts: Sequence[Buckets]) -> Buckets:
        if not parts:
            return cls.empty()
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    def select(self, mask: np.ndarray | slice) -> Buckets:
        return Buckets(**{f.name: getattr(self, f.name)[mask] for f in fields(self)})

    @property
    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.sum_value / np.maximum(self.count, 1), np.nan)


def _group_starts(keys: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.empty(0, dtype=np.int64)


def aggregate_raw(ts: np.ndarray, value: np.ndarray, quality: np.ndarray, width: int) -> Buckets:
    """Buckets of ``width`` µs from raw readings ordered by ``ts``."""
    if len(ts) == 0:
        return Buckets.empty()
    keys = ts - ts % width
    starts = _group_starts(keys)
    buckets = keys[starts]
    total = np.diff(np.r_[starts, len(keys)])
    n = len(buckets)
    out = Buckets(
        bucket=buckets,
        count=np.zeros(n, dtype=np.int64),
        flagged=total.astype(np.int64),
        min_value=np.full(n, np.nan),
        max_value=np.full(n, np.nan),
        sum_value=np.zeros(n),
        m2=np.zeros(n),
        first_ts=np.zeros(n, dtype=np.int64),
        last_ts=np.zeros(n, dtype=np.int64),
    )
    ok = quality == Quality.OK
    if not ok.any():
        return out
    okeys, ots, ovalues = keys[ok], ts[ok], value[ok]
    s = _group_starts(okeys)
    e = np.r_[s[1:], len(okeys)]
    count = e - s
    total_sum = np.add.reduceat(ovalues, s)
    deviation = ovalues - np.repeat(total_sum / count, count)
    at = np.searchsorted(buckets, okeys[s])
    out.count[at] = count
    out.flagged[at] -= count
    out.min_value[at] = np.minimum.reduceat(ovalues, s)
    out.max_value[at] = np.maximum.reduceat(ovalues, s)
    out.sum_value[at] = total_sum
    out.m2[at] = np.add.reduceat(deviation * deviation, s)
    out.first_ts[at] = ots[s]
    out.last_ts[at] = ots[e - 1]
    return out


def combine(children: Buckets, width: int) -> Buckets:
    """Merge summaries into buckets of ``width`` µs: partial summaries of the same bucket (chunk edges)
    or whole buckets of a finer tier. Exact for count/min/max/first/last; sum and M2 up to rounding
    (M2 by Chan et al.'s pairwise formula). ``children`` must be ordered by ``bucket``."""
    if len(children) == 0:
        return Buckets.empty()
    keys = children.bucket - children.bucket % width
    s = _group_starts(keys)
    has = children.count > 0
    count = np.add.reduceat(children.count, s)
    total_sum = np.add.reduceat(children.sum_value, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        parent_mean = np.where(count > 0, total_sum / np.maximum(count, 1), 0.0)
        child_mean = np.where(has, children.sum_value / np.maximum(children.count, 1), 0.0)
    sizes = np.diff(np.r_[s, len(keys)])
    spread = child_mean - np.repeat(parent_mean, sizes)
    m2 = np.add.reduceat(children.m2 + np.where(has, children.count * spread * spread, 0.0), s)
    first = np.minimum.reduceat(np.where(has, children.first_ts, _I64_MAX), s)
    last = np.maximum.reduceat(np.where(has, children.last_ts, _I64_MIN), s)
    empty = count == 0
    return Buckets(
        bucket=keys[s],
        count=count,
        flagged=np.add.reduceat(children.flagged, s),
        min_value=np.fmin.reduceat(children.min_value, s),
        max_value=np.fmax.reduceat(children.max_value, s),
        sum_value=total_sum,
        m2=m2,
        first_ts=np.where(empty, 0, first),
        last_ts=np.where(empty, 0, last),
    )


# --- reading and writing buckets ------------------------------------------------------------------


def _table(model, using: str) -> str:
    return connections[using].ops.quote_name(model._meta.db_table)


def fetch_buckets(
    channel_id: int, tier: int, lo: int, hi: int, *, using: str = "default", only_counted: bool = False
) -> Buckets:
    """A channel's stored buckets of ``tier`` (seconds) starting in [lo, hi) µs, packed or not."""
    sql = (
        "SELECT bucket, count, flagged, min_value, max_value, sum_value, m2, "
        "COALESCE(first_ts, 0) AS first_ts, COALESCE(last_ts, 0) AS last_ts "
        f"FROM {_table(Rollup, using)} WHERE channel_id = %s AND tier = %s AND bucket >= %s AND bucket < %s"
        + (" AND count > 0" if only_counted else "")
        + " ORDER BY bucket"
    )
    rows = Buckets.from_columns(fetch_columns(sql, [channel_id, tier, lo, hi], BUCKET_COLUMNS, using=using))
    ranges = {channel_id: (lo, hi)}
    if not _may_be_packed(tier, ranges):
        return rows
    packed = [buckets for _, buckets in _packed(tier, ranges, using)]
    if not packed:
        return rows
    merged = Buckets.concat([rows, *packed])
    keep = (merged.bucket >= lo) & (merged.bucket < hi)
    if only_counted:
        keep &= merged.count > 0
    merged = merged.select(keep)
    return merged.select(np.argsort(merged.bucket, kind="stable"))


# --- packed tiers -----------------------------------------------------------------------------------


def _may_be_packed(tier: int, ranges: dict[int, tuple[int, int]]) -> bool:
    """Whether any range of ``tier`` could reach a packed hour: only hours closed at least
    ``blocks.MIN_AGE_US`` ago are packed, so a range starting less than ``FRESH_US`` ago cannot."""
    if tier not in PACKED_TIERS or not ranges:
        return False
    return min(lo for lo, _ in ranges.values()) < time.time_ns() // 1000 - blocks.FRESH_US


def _decode_packed(channel_id: int, tier: int, window_start: int, count: int, data: bytes | memoryview) -> Buckets:
    columns = codec.decode_table(bytes(data))
    if len(columns) != len(BUCKET_COLUMNS) or any(len(c) != count for c in columns):
        raise codec.CodecError(f"packed buckets of channel {channel_id}, tier {tier}, at {window_start} are corrupt")
    return Buckets.from_columns({name: column for (name, _), column in zip(BUCKET_COLUMNS, columns, strict=True)})


def _packed(tier: int, ranges: dict[int, tuple[int, int]], using: str) -> list[tuple[int, Buckets]]:
    """(channel, buckets) of each packed hour of ``tier`` overlapping ``ranges`` (whole hours), in order."""
    return _decoded(tier, _packed_rows(tier, ranges, using))


def _decoded(tier: int, rows: list[tuple]) -> list[tuple[int, Buckets]]:
    """(channel, buckets) of ``_packed_rows``' rows."""
    return [
        (channel_id, _decode_packed(channel_id, tier, window_start, count, data))
        for channel_id, window_start, count, data in rows
    ]


def _packed_rows(tier: int, ranges: dict[int, tuple[int, int]], using: str) -> list[tuple]:
    """(channel, window start, count, data) of each packed hour of ``tier`` overlapping ``ranges``, ordered by
    channel and hour: the ranges as a table joined to the packed hours' key (``blocks.spans_table``)."""
    connection = connections[using]
    quote = connection.ops.quote_name
    width = blocks.BLOCK_WIDTH_US
    rows: list[tuple] = []
    for head, params in blocks.spans_table({pk: (lo - width, hi) for pk, (lo, hi) in ranges.items()}):
        with connection.cursor() as cursor:
            cursor.execute(
                f"{head}SELECT r.{quote('channel_id')}, r.{quote('window_start')}, r.{quote('count')}, "
                f"r.{quote('data')} FROM {_table(RollupBlock, using)} r JOIN spans s "
                f"ON r.{quote('channel_id')} = s.channel_id AND r.{quote('window_start')} > s.lo "
                f"AND r.{quote('window_start')} < s.hi WHERE r.{quote('tier')} = %s "
                f"ORDER BY r.{quote('channel_id')}, r.{quote('window_start')}",
                [*params, tier],
            )
            rows.extend(cursor.fetchall())
    return rows


def _unpack(tier: int, ranges: dict[int, tuple[int, int]], using: str) -> None:
    """Turn the packed hours of ``tier`` overlapping ``ranges`` back into ``Rollup`` rows (whole hours),
    before a writer changes buckets there; compaction packs them again. The caller holds the channels'
    locks inside a transaction."""
    if not _may_be_packed(tier, ranges):
        return
    rows = _packed_rows(tier, ranges, using)
    if not rows:
        return
    # Each channel's packed hours found lie between its first and last found: those are the rows to go (an OR
    # of a condition per channel found, written out: this runs only where packed hours are there to unpack).
    hours: dict[int, tuple[int, int]] = {}
    for channel_id, window_start, _, _ in rows:
        first, last = hours.get(channel_id, (window_start, window_start))
        hours[channel_id] = (min(first, window_start), max(last, window_start))
    quote = connections[using].ops.quote_name
    one = f"({quote('channel_id')} = %s AND {quote('window_start')} BETWEEN %s AND %s)"
    spans = sorted(hours.items())
    with connections[using].cursor() as cursor:
        for start in range(0, len(spans), blocks.SPANS_PER_STATEMENT):
            part = spans[start : start + blocks.SPANS_PER_STATEMENT]
            cursor.execute(
                f"DELETE FROM {_table(RollupBlock, using)} WHERE {quote('tier')} = %s "
                f"AND ({' OR '.join([one] * len(part))})",
                [tier, *(x for channel_id, (first, last) in part for x in (channel_id, first, last))],
            )
    found = _decoded(tier, rows)
    ids = np.concatenate([np.full(len(b), c, dtype=np.int64) for c, b in found])
    _insert_buckets(tier, ids, Buckets.concat([b for _, b in found]), using)


# Bucket rows one packing transaction reads at most: adjacent hours of a channel go together up to it.
PACK_ROWS = 100_000


def pack_window(channel_id: int, window_start: int, *, using: str = "default") -> int:
    """Pack the channel's buckets of every ``PACKED_TIERS`` tier in the hour starting at ``window_start``
    into one ``RollupBlock`` per tier, in one transaction under the channel's lock, and delete their rows.
    Returns how many buckets were packed (0: nothing to pack, or another worker holds the channel)."""
    width = blocks.BLOCK_WIDTH_US
    if window_start % width:
        raise ValueError("window_start must be a multiple of BLOCK_WIDTH_US")
    return pack_run(channel_id, window_start, window_start + width, using=using)[0]


def pack_run(channel_id: int, start: int, end: int, *, using: str = "default") -> tuple[int, int, int]:
    """``pack_window`` for every hour in [start, end) (window edges) holding bucket rows of a packed tier,
    in one transaction reading at most about ``PACK_ROWS`` rows. Returns (buckets packed, hours packed,
    where it stopped: the hours from there on are left for the next call)."""
    width = blocks.BLOCK_WIDTH_US
    if start % width or end % width:
        raise ValueError("a run must start and end on window edges")
    ensure_state(channel_id, using)
    with transaction.atomic(using=using):
        if _locked_state(channel_id, using) is None:
            return 0, 0, start
        return pack_locked(channel_id, start, end, using=using)


def pack_locked(channel_id: int, start: int, end: int, *, using: str = "default") -> tuple[int, int, int]:
    """``pack_run``'s work, in the caller's transaction, which holds the channel's lock (``pack_run``, or
    ``blocks.compact`` packing the hours it has just compacted: ``compact_and_pack``)."""
    width = blocks.BLOCK_WIDTH_US
    tiers = ", ".join(["%s"] * len(PACKED_TIERS))
    where = f"channel_id = %s AND tier IN ({tiers}) AND bucket >= %s AND bucket < %s"
    columns = (("tier", I8), *BUCKET_COLUMNS)
    select = (
        "SELECT tier, bucket, count, flagged, min_value, max_value, sum_value, m2, "
        "COALESCE(first_ts, 0) AS first_ts, COALESCE(last_ts, 0) AS last_ts "
        f"FROM {_table(Rollup, using)} WHERE {where} ORDER BY bucket, tier"
    )
    rows = fetch_columns(
        select + f" LIMIT {PACK_ROWS + 1}", [channel_id, *PACKED_TIERS, start, end], columns, using=using
    )
    if not len(rows["tier"]):
        return 0, 0, end
    if len(rows["tier"]) > PACK_ROWS:  # stop before the hour the bound fell in (it may be incomplete)
        cut = blocks.window_of(int(rows["bucket"][PACK_ROWS]))
        if cut == blocks.window_of(int(rows["bucket"][0])):  # one hour alone holds more: that hour, whole
            start, end = cut, cut + width
            rows = fetch_columns(select, [channel_id, *PACKED_TIERS, start, end], columns, using=using)
        else:
            end = cut
            rows = {name: column[rows["bucket"] < cut] for name, column in rows.items()}
    hours = rows["bucket"] - rows["bucket"] % width
    packed_hours = np.unique(hours).tolist()
    here = RollupBlock.objects.using(using).filter(
        channel_id=channel_id, tier__in=PACKED_TIERS, window_start__in=packed_hours
    )
    # Never both rows and a block of one tier's hour (writers unpack first); should there be, the rows
    # are the newer: they win, and the block's other buckets are kept.
    held = {
        (tier, window): _decode_packed(channel_id, tier, window, count, data)
        for tier, window, count, data in here.values_list("tier", "window_start", "count", "data")
    }
    had_blocks, packed = bool(held), []
    for tier in PACKED_TIERS:
        mine = rows["tier"] == tier
        of_tier = Buckets.from_columns({name: rows[name][mine] for name, _ in BUCKET_COLUMNS})
        # Ordered by bucket: each hour's buckets are one slice.
        edges = np.searchsorted(hours[mine], [*packed_hours, end]).tolist()
        for i, hour in enumerate(packed_hours):
            buckets = of_tier.select(slice(edges[i], edges[i + 1]))
            older = held.pop((tier, hour), None)
            if older is not None:
                buckets = Buckets.concat([older.select(~np.isin(older.bucket, buckets.bucket)), buckets])
                buckets = buckets.select(np.argsort(buckets.bucket, kind="stable"))
            if len(buckets):
                packed.append((tier, hour, buckets))
    tables = codec.encode_tables([[getattr(b, name) for name, _ in BUCKET_COLUMNS] for _, _, b in packed])
    made = [
        RollupBlock(channel_id=channel_id, tier=tier, window_start=hour, count=len(buckets), data=data)
        for (tier, hour, buckets), data in zip(packed, tables, strict=True)
    ]
    if had_blocks:
        here.delete()
    RollupBlock.objects.using(using).bulk_create(made)
    with connections[using].cursor() as cursor:
        cursor.execute(f"DELETE FROM {_table(Rollup, using)} WHERE {where}", [channel_id, *PACKED_TIERS, start, end])
    return len(rows["tier"]), len(packed_hours), end


def compact_and_pack(before: int, *, max_windows: int = 100, using: str = "default") -> blocks.Compacted:
    """``blocks.compact``, each run's fine tiers packed in its own transaction (``pack_locked``, under the
    lock it holds already): one lock, one commit and no look-up of its own for the packing of hours just
    compacted. Hours whose tiers are rows again without hot rows (rebuilt, or compacted before) are left
    to ``pack``."""

    def pack_hours(channel_id: int, start: int, end: int) -> int:
        return pack_locked(channel_id, start, end, using=using)[1]

    return blocks.compact(before, max_windows=max_windows, then=pack_hours, using=using)


def pack(before: int, *, max_windows: int = 100, using: str = "default") -> int:
    """One bounded step: pack at most ``max_windows`` (channel, hour)s that end at or before ``before`` (µs)
    and still hold buckets of a packed tier as rows, oldest first per channel, adjacent hours together
    (``blocks.compact``'s companion; call again until it returns 0). Returns how many hours were packed."""
    before = blocks.window_of(min(before, time.time_ns() // 1000 - blocks.MIN_AGE_US))
    table = _table(Rollup, using)
    # Each tier's oldest row of the channel in range, one index range each ((channel, tier, bucket) is the
    # key), in one statement.
    oldest_sql = "SELECT " + ", ".join(
        f"(SELECT bucket FROM {table} WHERE channel_id = %s AND tier = {int(tier)} AND bucket >= %s "
        "AND bucket < %s ORDER BY bucket LIMIT 1)"
        for tier in PACKED_TIERS
    )
    done = 0
    connection = connections[using]
    for channel_id in RollupState.objects.using(using).order_by("channel_id").values_list("channel_id", flat=True):
        lower = -(2**63)  # from the hours just packed on, as blocks.compact does
        while done < max_windows:
            with connection.cursor() as cursor:
                cursor.execute(oldest_sql, [p for _ in PACKED_TIERS for p in (channel_id, lower, before)])
                oldest = [int(b) for b in cursor.fetchone() if b is not None]
            if not oldest:
                break
            window = blocks.window_of(min(oldest))
            last = min(window + (max_windows - done) * blocks.BLOCK_WIDTH_US, before)
            _, hours, lower = pack_run(channel_id, window, last, using=using)
            if not hours:
                break  # another worker holds the channel
            done += hours
        if done >= max_windows:
            break
    return done


def _replace_buckets(channel_id: int, tier: int, lo: int, hi: int, buckets: Buckets, using: str) -> None:
    """Make the stored buckets of ``tier`` in [lo, hi) exactly ``buckets`` (caller holds the channel lock)."""
    _delete_buckets(tier, {channel_id: (lo, hi)}, using)
    _insert_buckets(tier, np.full(len(buckets), channel_id, dtype=np.int64), buckets, using)


def _ranges_sql(column: str, ranges: dict[int, tuple[int, int]]) -> tuple[str, list[int]]:
    """A WHERE condition for ``column`` in [lo, hi) of each channel of ``ranges``, with its parameters."""
    params: list[int] = []
    for channel_id, (lo, hi) in ranges.items():
        params += [channel_id, lo, hi]
    condition = " OR ".join([f"(channel_id = %s AND {column} >= %s AND {column} < %s)"] * len(ranges))
    return f"({condition})", params


def _delete_buckets(tier: int, ranges: dict[int, tuple[int, int]], using: str) -> None:
    """Delete the stored buckets of ``tier`` in [lo, hi) of each channel of ``ranges`` (packed hours there
    are turned back into rows first, so the buckets of those hours outside the ranges stay)."""
    if not ranges:
        return
    _unpack(tier, ranges, using)
    where, params = _ranges_sql("bucket", ranges)
    with connections[using].cursor() as cursor:
        cursor.execute(f"DELETE FROM {_table(Rollup, using)} WHERE tier = %s AND {where}", [tier, *params])


def _insert_buckets(tier: int, channel_ids: np.ndarray, buckets: Buckets, using: str) -> None:
    """Store ``buckets`` of ``tier``, the i-th of channel ``channel_ids[i]`` (binary COPY on PostgreSQL)."""
    if len(buckets) == 0:
        return
    connection = connections[using]
    table = _table(Rollup, using)
    if connection.vendor == "postgresql":
        _pg_copy_buckets(connection, table, channel_ids, tier, buckets)
        return
    counted = buckets.count > 0
    rows = list(
        zip(
            channel_ids.tolist(),
            [tier] * len(buckets),
            buckets.bucket.tolist(),
            buckets.count.tolist(),
            buckets.flagged.tolist(),
            np.where(counted, buckets.min_value, np.nan).tolist(),
            np.where(counted, buckets.max_value, np.nan).tolist(),
            buckets.sum_value.tolist(),
            buckets.m2.tolist(),
            buckets.first_ts.tolist(),
            buckets.last_ts.tolist(),
            counted.tolist(),
            strict=True,
        )
    )
    rows = [r[:11] if r[11] else (*r[:5], None, None, r[7], r[8], None, None) for r in rows]
    columns = "channel_id, tier, bucket, count, flagged, min_value, max_value, sum_value, m2, first_ts, last_ts"
    with connection.cursor() as cursor:
        for start in range(0, len(rows), 10_000):
            cursor.executemany(
                f"INSERT INTO {table} ({columns}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                rows[start : start + 10_000],
            )


_PG_BUCKET_FULL = np.dtype(
    [("n", ">i2")]
    + [
        item
        for name, code in (
            ("channel_id", ">i8"),
            ("tier", ">i4"),
            ("bucket", ">i8"),
            ("count", ">i8"),
            ("flagged", ">i8"),
            ("min_value", ">f8"),
            ("max_value", ">f8"),
            ("sum_value", ">f8"),
            ("m2", ">f8"),
            ("first_ts", ">i8"),
            ("last_ts", ">i8"),
        )
        for item in ((f"{name}_len", ">i4"), (name, code))
    ]
)
# A bucket with only flagged readings: min, max, first and last are NULL (length -1, no data).
_PG_BUCKET_FLAGGED = np.dtype(
    [("n", ">i2")]
    + [
        item
        for name, code in (
            ("channel_id", ">i8"),
            ("tier", ">i4"),
            ("bucket", ">i8"),
            ("count", ">i8"),
            ("flagged", ">i8"),
            ("min_value", None),
            ("max_value", None),
            ("sum_value", ">f8"),
            ("m2", ">f8"),
            ("first_ts", None),
            ("last_ts", None),
        )
        for item in (((f"{name}_len", ">i4"), (name, code)) if code else ((f"{name}_len", ">i4"),))
    ]
)


def _pg_copy_buckets(connection, table: str, channel_ids: np.ndarray, tier: int, buckets: Buckets) -> None:
    parts = []
    for dtype, mask in ((_PG_BUCKET_FULL, buckets.count > 0), (_PG_BUCKET_FLAGGED, buckets.count == 0)):
        selected = buckets.select(mask)
        if len(selected) == 0:
            continue
        rows = np.empty(len(selected), dtype=dtype)
        rows["n"] = 11
        assert dtype.names is not None  # a structured dtype
        for name in dtype.names:
            if name.endswith("_len"):
                column = name[:-4]
                rows[name] = dtype[column].itemsize if column in dtype.names else -1
        rows["channel_id"] = channel_ids[mask]
        rows["tier"] = tier
        for f in fields(Buckets):
            if f.name in dtype.names:
                rows[f.name] = getattr(selected, f.name)
        parts.append(rows.tobytes())
    payload = b"PGCOPY\n\xff\r\n\x00" + bytes(8) + b"".join(parts) + b"\xff\xff"
    columns = "(channel_id, tier, bucket, count, flagged, min_value, max_value, sum_value, m2, first_ts, last_ts)"
    with connection.cursor() as cursor, cursor.cursor.copy(f"COPY {table} {columns} FROM STDIN (FORMAT BINARY)") as cp:
        cp.write(payload)


# --- recomputing a span ---------------------------------------------------------------------------


def recompute_span(
    channel_id: int,
    first_ts: int,
    last_ts: int,
    *,
    max_rows: int | None = None,
    raw_kept_from: int | None = None,
    using: str = "default",
) -> tuple[int, int]:
    """Recompute every tier's buckets that contain [first_ts, last_ts] (inclusive) from the stored readings.

    Returns (done_until, raw rows read): the buckets before ``done_until`` are done; when ``max_rows``
    stopped the work early, ``done_until <= last_ts`` and the caller keeps [done_until, last_ts] for later.
    The caller holds the channel's lock (``_locked_state``) inside a transaction.
    """
    width = WIDTHS[0]
    lo = floor_to(first_ts, width)
    hi = floor_to(last_ts, width) + width
    if raw_kept_from is not None:
        lo = max(lo, ceil_to(raw_kept_from, width))
    if lo >= hi:
        return last_ts + 1, 0
    parts: list[Buckets] = []
    rows_read = 0
    done_until = hi
    merged = blocks.has_blocks(channel_id, lo, hi, using=using)
    chunks = (
        blocks.iter_readings(channel_id, lo, hi, text=False, chunk_rows=RAW_CHUNK_ROWS, using=using)
        if merged
        else iter_chunks(
            Sample._meta.db_table,
            RAW_COLUMNS,
            channel_id=channel_id,
            start=lo,
            end=hi,
            chunk_rows=RAW_CHUNK_ROWS,
            using=using,
        )
    )
    for chunk in chunks:
        ts, value, quality = chunk["ts"], chunk["value"], chunk["quality"]
        rows_read += len(ts)
        # A full chunk, or a block window (the merged read's chunks end at windows): more may follow.
        if max_rows is not None and rows_read >= max_rows and (len(ts) == RAW_CHUNK_ROWS or merged):
            cut = floor_to(int(ts[-1]), width)
            if cut > lo:  # stop at the start of the last (possibly incomplete) bucket
                keep = ts < cut
                parts.append(aggregate_raw(ts[keep], value[keep], quality[keep], width))
                done_until = cut
                break
        parts.append(aggregate_raw(ts, value, quality, width))
    finest = combine(Buckets.concat(parts), width) if len(parts) > 1 else (parts[0] if parts else Buckets.empty())
    _replace_buckets(channel_id, TIERS[0], lo, done_until, finest, using)
    _recompute_upper_tiers({channel_id: (lo, done_until)}, using)
    return (done_until if done_until < hi else last_ts + 1), rows_read


def _per_channel(channel_id: np.ndarray) -> dict[int, slice]:
    """Where each channel's rows are in columns ordered by channel."""
    if len(channel_id) == 0:
        return {}
    starts = _group_starts(channel_id)
    ends = np.r_[starts[1:], len(channel_id)]
    return {int(channel_id[a]): slice(int(a), int(b)) for a, b in zip(starts, ends, strict=True)}


def recompute_many(
    ranges: dict[int, tuple[int, int]], *, max_rows: int = MAX_ROWS_PER_TRANSACTION, using: str = "default"
) -> tuple[set[int], int]:
    """``recompute_span`` for many channels at once: every tier's buckets over [lo, hi) of each channel of
    ``ranges`` (``lo``, ``hi`` on finest-bucket edges; no block in them: ``blocks.channels_with_blocks``) in
    a fixed number of statements whatever the number of channels: one read of their raw readings, then per
    tier one read of the tier below, one delete and one insert. The caller holds the channels' locks.

    Returns (the channels done, raw rows read). At most ``max_rows`` raw readings are read: the channels whose
    readings did not all fit are left out, untouched, for ``recompute_span`` with its own bound."""
    if not ranges:
        return set(), 0
    where, params = _ranges_sql("ts", ranges)
    sql = (
        f"SELECT channel_id, ts, value, quality FROM {_table(Sample, using)} WHERE {where} "
        f"ORDER BY channel_id, ts LIMIT {int(max_rows) + 1}"
    )
    raw = fetch_columns(sql, params, (("channel_id", I8), *RAW_COLUMNS), using=using)
    done = set(ranges)
    if len(raw["ts"]) > max_rows:  # the last channel read, and those after it, may be cut short
        cut = int(raw["channel_id"][max_rows])
        done = {c for c in done if c < cut}
        if not done:
            return done, 0
    where_raw = _per_channel(raw["channel_id"])
    empty = slice(0, 0)
    parts = []
    for channel_id in sorted(done):
        rows = where_raw.get(channel_id, empty)
        parts.append((channel_id, aggregate_raw(raw["ts"][rows], raw["value"][rows], raw["quality"][rows], WIDTHS[0])))
    below = {c: ranges[c] for c in sorted(done)}
    _write_tier(TIERS[0], below, parts, using)
    _recompute_upper_tiers(below, using)
    return done, sum(where_raw[c].stop - where_raw[c].start for c in done if c in where_raw)


def _recompute_upper_tiers(below: dict[int, tuple[int, int]], using: str) -> None:
    """Every tier above the finest over what its changed finest buckets ``below`` ({channel: [lo, hi)} µs)
    fall in, from the whole buckets of the tier below: per tier one read, one delete and one insert, for
    one channel (``recompute_span``) or many (``recompute_many``)."""
    for level in range(1, len(TIERS)):
        w = WIDTHS[level]
        spans = {c: (floor_to(lo, w), ceil_to(hi, w)) for c, (lo, hi) in below.items()}
        where, params = _ranges_sql("bucket", spans)
        children = fetch_columns(
            "SELECT channel_id, bucket, count, flagged, min_value, max_value, sum_value, m2, "
            "COALESCE(first_ts, 0) AS first_ts, COALESCE(last_ts, 0) AS last_ts "
            f"FROM {_table(Rollup, using)} WHERE tier = %s AND {where} ORDER BY channel_id, bucket",
            [TIERS[level - 1], *params],
            (("channel_id", I8), *BUCKET_COLUMNS),
            using=using,
        )
        found = _per_channel(children["channel_id"])
        parts = [
            (c, combine(Buckets.from_columns({k: v[found[c]] for k, v in children.items()}), w))
            for c in spans
            if c in found
        ]
        _write_tier(TIERS[level], spans, parts, using)
        below = spans


def _write_tier(tier: int, ranges: dict[int, tuple[int, int]], parts: list[tuple[int, Buckets]], using: str) -> None:
    """Make the stored buckets of ``tier`` in each channel's range exactly its part (none: no bucket)."""
    _delete_buckets(tier, ranges, using)
    if parts:
        ids = np.concatenate([np.full(len(b), c, dtype=np.int64) for c, b in parts])
        _insert_buckets(tier, ids, Buckets.concat([b for _, b in parts]), using)


def merge_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Spans (inclusive) merged where they share or touch a finest-tier bucket."""
    width = WIDTHS[0]
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and floor_to(start, width) <= floor_to(merged[-1][1], width) + width:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


# --- the backlog and its refresh ------------------------------------------------------------------


def mark_changed(spans: dict[int, tuple[int, int]], *, using: str = "default") -> int:
    """Record that readings of these channels changed in these spans (inclusive, µs): their buckets will
    be recomputed by ``refresh_rollups``. Returns how many backlog rows were written."""
    rows = [RollupBacklog(channel_id=cid, start_ts=int(a), end_ts=int(b)) for cid, (a, b) in spans.items()]
    RollupBacklog.objects.using(using).bulk_create(rows)
    return len(rows)


def ensure_states(channel_ids: list[int], using: str = "default") -> None:
    """``ensure_state`` for many channels: one query, and one insert of the missing rows if any."""
    states = RollupState.objects.using(using)
    missing = set(channel_ids) - set(states.filter(channel_id__in=channel_ids).values_list("channel_id", flat=True))
    if missing:
        states.bulk_create([RollupState(channel_id=c) for c in sorted(missing)], ignore_conflicts=True)


def ensure_state(channel_id: int, using: str = "default") -> None:
    """Create the channel's state row if missing. Looked up first: on MariaDB an INSERT IGNORE of an
    existing row waits for the lock a refreshing worker holds on it."""
    states = RollupState.objects.using(using)
    if not states.filter(channel_id=channel_id).exists():
        states.bulk_create([RollupState(channel_id=channel_id)], ignore_conflicts=True)


def _locked_state(channel_id: int, using: str, *, wait: bool = False) -> RollupState | None:
    """The channel's state row, locked for this transaction; None when another worker holds it (unless
    ``wait``: then wait for it)."""
    states = RollupState.objects.using(using).select_for_update(skip_locked=not wait)
    return states.filter(channel_id=channel_id).first()


@dataclass
class RefreshResult:
    channels: int = 0
    spans: int = 0
    raw_rows: int = 0
    remaining: bool = False


def refresh_channel(
    channel_id: int,
    *,
    max_rows: int = MAX_ROWS_PER_TRANSACTION,
    max_spans: int = 1000,
    wait: bool = False,
    take: bool = True,
    using: str = "default",
) -> RefreshResult | None:
    """Recompute the buckets of one channel's backlog, in one transaction, reading at most about ``max_rows``
    raw readings. Returns None when another worker is refreshing the channel right now (unless ``wait``).
    ``take``: take up the channel's pending span first (``collection.services.pending``)."""
    if take:
        pending.take_pending(channel_ids=[channel_id], using=using)
    ensure_state(channel_id, using)
    result = RefreshResult(channels=1)
    with transaction.atomic(using=using):
        state = _locked_state(channel_id, using, wait=wait)
        if state is None:
            return None
        backlog = list(
            RollupBacklog.objects.using(using)
            .filter(channel_id=channel_id)
            .order_by("id")
            .values_list("id", "start_ts", "end_ts")[:max_spans]
        )
        if not backlog:
            return result
        leftovers: list[tuple[int, int]] = []
        budget = max_rows
        for start, end in merge_spans((a, b) for _, a, b in backlog):
            if budget <= 0:
                leftovers.append((start, end))
                continue
            done_until, rows = recompute_span(
                channel_id, start, end, max_rows=budget, raw_kept_from=state.raw_kept_from, using=using
            )
            budget -= rows
            result.raw_rows += rows
            result.spans += 1
            if done_until <= end:
                leftovers.append((done_until, end))
        RollupBacklog.objects.using(using).filter(id__in=[row[0] for row in backlog]).delete()
        if leftovers:
            RollupBacklog.objects.using(using).bulk_create(
                [RollupBacklog(channel_id=channel_id, start_ts=a, end_ts=b) for a, b in leftovers]
            )
        state.refreshed_at = timezone.now()
        state.save(update_fields=["refreshed_at"])
    result.remaining = bool(leftovers) or len(backlog) == max_spans
    return result


def refresh_rollups(
    *, max_channels: int = 200, max_rows: int = MAX_ROWS_PER_TRANSACTION, using: str = "default"
) -> RefreshResult:
    """Work through the backlog: the channels with pending spans, at most ``max_channels`` of them.

    Channels whose backlog is one short span (within ``BATCH_SPAN``: the steady state of channels read every
    few seconds) are recomputed together in one transaction of a fixed number of statements
    (``recompute_many``); the others (late data over a long span, readings in compressed blocks, more than
    ``max_rows``) each in a bounded transaction of their own (``refresh_channel``). ``remaining`` says whether
    work is left (spans cut short, channels locked elsewhere or beyond the limit)."""
    total = RefreshResult()
    _, taken = pending.take_pending(using=using)
    if taken:  # their follow-up work too is in its backlog now
        enqueue_soon(pending.REPLAY_FOLLOW_UPS_TASK, what="spike checks, derived channels and alarms", expires=300)
    channel_ids = list(
        RollupBacklog.objects.using(using)
        .order_by("channel_id")
        .values_list("channel_id", flat=True)
        .distinct()[: max_channels + 1]
    )
    if len(channel_ids) > max_channels:
        total.remaining = True
        channel_ids = channel_ids[:max_channels]
    ensure_states(channel_ids, using)
    alone = _refresh_together(channel_ids, max_rows, total, using)
    for channel_id in alone:
        result = refresh_channel(channel_id, max_rows=max_rows, take=False, using=using)  # taken above
        if result is None:
            total.remaining = True
            continue
        total.channels += 1
        total.spans += result.spans
        total.raw_rows += result.raw_rows
        total.remaining |= result.remaining
    return total


BATCH_SPAN = 60 * SECOND  # a channel whose backlog spans at most this is recomputed with others at once
BATCH_BACKLOG_ROWS = 50_000  # backlog rows read by one batch (the rest stays for the next)


def _refresh_together(channel_ids: list[int], max_rows: int, total: RefreshResult, using: str) -> list[int]:
    """Refresh, in one transaction, the channels whose backlog is one short span; return the others (to be
    refreshed one by one). Channels another worker holds are skipped (``total.remaining``)."""
    width = WIDTHS[0]
    with transaction.atomic(using=using):
        states = {
            state.channel_id: state
            for state in RollupState.objects.using(using)
            .select_for_update(skip_locked=True)
            .filter(channel_id__in=channel_ids)
        }
        if len(states) < len(channel_ids):
            total.remaining = True  # being refreshed elsewhere right now
        backlog = list(
            RollupBacklog.objects.using(using)
            .filter(channel_id__in=list(states))
            .order_by("id")
            .values_list("id", "channel_id", "start_ts", "end_ts")[:BATCH_BACKLOG_ROWS]
        )
        total.remaining |= len(backlog) == BATCH_BACKLOG_ROWS
        spans: dict[int, list[tuple[int, int]]] = {}
        for _, channel_id, start, end in backlog:
            spans.setdefault(channel_id, []).append((start, end))
        ranges: dict[int, tuple[int, int]] = {}
        nothing_to_do: set[int] = set()
        alone: set[int] = set()
        for channel_id, its in spans.items():
            merged = merge_spans(its)
            lo, hi = floor_to(merged[0][0], width), floor_to(merged[-1][1], width) + width
            kept_from = states[channel_id].raw_kept_from
            if kept_from is not None:
                lo = max(lo, ceil_to(kept_from, width))
            if lo >= hi:
                nothing_to_do.add(channel_id)  # all before the retention watermark: kept as they are
            elif len(merged) > 1 or hi - lo > BATCH_SPAN:
                alone.add(channel_id)
            else:
                ranges[channel_id] = (lo, hi)
        for channel_id in blocks.channels_with_blocks(ranges, using=using):
            alone.add(channel_id)  # the merged read of blocks and rows is per channel
            del ranges[channel_id]
        done, rows = recompute_many(ranges, max_rows=max_rows, using=using)
        alone |= set(ranges) - done
        finished = done | nothing_to_do
        RollupBacklog.objects.using(using).filter(
            id__in=[row_id for row_id, channel_id, _, _ in backlog if channel_id in finished]
        ).delete()
        RollupState.objects.using(using).filter(channel_id__in=list(finished)).update(refreshed_at=timezone.now())
    total.channels += len(finished)
    total.spans += len(done)
    total.raw_rows += rows
    return sorted(alone)


def rebuild_rollups(channel_ids: Iterable[int], *, using: str = "default") -> int:
    """Recompute every bucket of these channels from scratch (after a bulk load, or to check the tiers).
    Returns how many raw readings were read."""
    rows = 0
    for channel_id in channel_ids:
        ensure_state(channel_id, using)
        first, last = blocks.bounds(channel_id, using=using)
        with transaction.atomic(using=using):
            RollupState.objects.using(using).select_for_update().get(channel_id=channel_id)
            Rollup.objects.using(using).filter(channel_id=channel_id).delete()
            RollupBlock.objects.using(using).filter(channel_id=channel_id).delete()
        if first is None or last is None:
            continue
        done_until = first
        while done_until <= last:
            with transaction.atomic(using=using):
                state = RollupState.objects.using(using).select_for_update().get(channel_id=channel_id)
                done_until, read = recompute_span(
                    channel_id,
                    done_until,
                    last,
                    max_rows=MAX_ROWS_PER_TRANSACTION,
                    raw_kept_from=state.raw_kept_from,
                    using=using,
                )
                rows += read
    return rows


def on_samples_ingested(sender, spans: dict[int, tuple[int, int]], rollups: bool = True, **kwargs) -> None:
    """``samples_ingested`` receiver: ``ingest_samples`` noted the numeric channels' changed spans in the
    backlog in its transaction (``rollups``: it noted some); wake a worker, at most about once a second."""
    if rollups:
        request_refresh(soon=True)


def request_refresh(*, soon: bool = False) -> None:
    """Ask a worker to refresh the rollups (``soon``: coalesced with other wake-ups of this process, see
    ``enqueue_soon``). The backlog is durable, so a broker failure only delays the work until the periodic
    sweep: it must not fail the ingest that committed already."""
    if soon:
        enqueue_soon(REFRESH_ROLLUPS_TASK, what="rollup refreshes", expires=300)
    else:
        try_enqueue(REFRESH_ROLLUPS_TASK, what="rollup refreshes", expires=300)
