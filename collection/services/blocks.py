"""Compressed reading blocks (docs/storage.md): compaction of hot rows into blocks, and reading both back.

A channel's readings of one closed window of ``BLOCK_WIDTH_US`` move from the narrow table (``Sample`` or
``TextSample``: the "hot rows") into one ``ReadingBlock`` row, compressed by ``collection.codec``.

Compaction is off unless ``DAQBROKER_COMPACT_AFTER`` is set (``collection.tasks.compact_blocks_task``).
Every raw reader goes through ``iter_readings`` / ``read_readings`` / ``read_last`` whenever a range holds
a block (``has_blocks``), and every writer that changes stored readings first turns the blocks it
touches back into hot rows (``expand_blocks``, ``expand_for_ingest``, ``drop_blocks_before``).

Safety of ``compact_window``:

* One transaction per run of a channel's adjacent windows (``compact_run``, at most ``RUN_ROWS`` hot rows):
  the merged blocks are written and exactly the hot rows they took are deleted, or nothing happens.
* Two compactors: each holds the channel's ``RollupState`` row lock (``SELECT … FOR UPDATE``, ``SKIP
  LOCKED`` where the engine has it, so a second worker moves on to other channels; SQLite serialises
  writers anyway). Not the ``Channel`` row: see ``_lock_channels``.
* Concurrent ingest: only the rows read are deleted (one range delete whose count must equal the rows
  read, else the run is undone and done again by their keys), so a reading committed into the window
  meanwhile stays a hot row and is merged by the next pass (``read_readings`` reads both meanwhile).
* Late data: a hot row in an already compacted window is merged into its block (decode, merge, encode);
  a key present in both is kept once, the block's value winning (the first stored, as at ingest) and a
  differing hot value quarantined as a conflict.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.db import connections, transaction
from django.db.models import Exists, Max, Min, OuterRef

from collection import codec, storage
from collection.choices import Origin, RejectionKind
from collection.models import ReadingBlock, RejectedSample, RollupState, Sample, TextSample
from collection.services.fetch import fetch_readings
from instruments.choices import ChannelKind
from instruments.models import Channel

SECOND = 1_000_000
# Fixed: blocks are keyed by their window's start, so changing it would re-key every stored block.
BLOCK_WIDTH_US = 3600 * SECOND
# Only hours that closed at least MIN_AGE_US ago are compacted (DAQBROKER_COMPACT_AFTER is at least that),
# so a batch whose readings are all younger than FRESH_US (half of it: room for clocks apart) cannot touch
# a block, and ingest skips looking for one.
MIN_AGE_US = 600 * SECOND
FRESH_US = MIN_AGE_US // 2
_IN_LIST = 1000  # keys per DELETE ... IN (...)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # a range open at either end may be asked with bounds beyond these


@dataclass
class Compacted:
    """What one compaction step did."""

    windows: int = 0
    readings: int = 0  # hot rows moved into blocks
    duplicates: int = 0  # hot rows whose key and value the block already held
    conflicts: int = 0  # hot rows whose key the block held with another value: quarantined
    packed_hours: int = 0  # hours whose fine tiers were packed in the same transactions (``then``)


# Called in a compaction run's transaction, under the channel's lock, once its hot rows are gone: (channel,
# run start, run end) -> the hours it packed (``rollups.compact_and_pack``: the run's fine tiers).
AfterRun = Callable[[int, int, int], int]


def window_of(ts: int) -> int:
    return ts - ts % BLOCK_WIDTH_US


def _is_text(channel_id: int, using: str) -> bool | None:
    kind = Channel.objects.using(using).filter(pk=channel_id).values_list("kind", flat=True).first()
    return None if kind is None else kind == ChannelKind.TEXT


def _hot_rows(
    channel_id: int,
    start: int,
    end: int,
    text: bool,
    using: str,
    *,
    limit: int | None = None,
    only_ok: bool = False,
) -> dict[str, np.ndarray]:
    connection = connections[using]
    model = TextSample if text else Sample
    table = connection.ops.quote_name(model._meta.db_table)
    sql = (
        f"SELECT ts, value, quality FROM {table} WHERE channel_id = %s AND ts >= %s AND ts < %s"
        + (" AND quality = 0" if only_ok else "")
        + " ORDER BY ts"
        + (f" LIMIT {int(limit)}" if limit is not None else "")
    )
    return _select(sql, [channel_id, start, end], text, using)


def _select(sql: str, params: list, text: bool, using: str) -> dict[str, np.ndarray]:
    """(ts, value, quality) rows into columns: numeric ones through ``fetch_readings``, text as objects."""
    if not text:
        return fetch_readings(sql, params, using=using)
    with connections[using].cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return {
        "ts": np.array([r[0] for r in rows], dtype=np.int64),
        "value": np.array([r[1] for r in rows] or [], dtype=object),
        "quality": np.array([r[2] for r in rows], dtype=np.int64),
    }


def block_is_text(block: ReadingBlock) -> bool:
    """Whether the block holds text readings (by its value column's method, not the channel's kind now)."""
    return bytes(block.value_data[:1]) == bytes([codec.TEXT_DICT])


def decode_block(block: ReadingBlock, text: bool) -> dict[str, np.ndarray]:
    """The block's columns; none if it holds the other kind of readings (the channel's kind was changed
    after it was compacted: like rows in the other narrow table, they are not this kind's readings)."""
    if block_is_text(block) != text:
        return _empty(text)
    ts = codec.decode_timestamps(bytes(block.ts_data))
    value = (
        np.array(codec.decode_text(bytes(block.value_data)) or [], dtype=object)
        if text
        else codec.decode_values(bytes(block.value_data))
    )
    quality = codec.decode_quality(bytes(block.quality_data)).astype(np.int64)
    if not len(ts) == len(value) == len(quality) == block.count:
        raise codec.CodecError(f"block {block} holds columns of different lengths")
    return {"ts": ts, "value": value, "quality": quality}


def _encode(columns: dict[str, np.ndarray], text: bool) -> dict[str, bytes]:
    return {
        "ts_data": codec.encode_timestamps(columns["ts"]),
        "value_data": codec.encode_text(columns["value"].tolist()) if text else codec.encode_values(columns["value"]),
        "quality_data": codec.encode_quality(columns["quality"]),
    }


# Hot rows one compaction transaction reads at most: adjacent windows of a channel go together up to it (a
# window holding more goes alone, whole).
RUN_ROWS = 200_000


class _Moved(Exception):
    """The window's hot rows changed between the compactor's read and its delete: start again."""


def compact_window(channel_id: int, window_start: int, *, using: str = "default") -> Compacted:
    """Move the channel's hot rows of the window starting at ``window_start`` into its block (merging
    with the block if there is one), in one transaction. Returns quietly (nothing done) when the channel
    is gone or another worker holds it. Safe to run twice: a second run finds no hot rows."""
    if window_start % BLOCK_WIDTH_US:
        raise ValueError("window_start must be a multiple of BLOCK_WIDTH_US")
    return compact_run(channel_id, window_start, window_start + BLOCK_WIDTH_US, using=using)[0]


def compact_run(
    channel_id: int, start: int, end: int, *, then: AfterRun | None = None, using: str = "default"
) -> tuple[Compacted, int]:
    """``compact_window`` for every window in [start, end) (window edges) holding hot rows, in one
    transaction reading at most about ``RUN_ROWS`` hot rows. Returns what it did and where it stopped (the
    windows from there on are left for the next call). ``then``: more work on the run's windows in the same
    transaction, for numeric channels (``AfterRun``)."""
    if start % BLOCK_WIDTH_US or end % BLOCK_WIDTH_US:
        raise ValueError("a run must start and end on window edges")
    try:
        return _compact_run(channel_id, start, end, by_key=False, then=then, using=using)
    except _Moved:  # rolled back; deleting exactly the keys read is safe whatever happens meanwhile
        return _compact_run(channel_id, start, end, by_key=True, then=then, using=using)


def _compact_run(
    channel_id: int, start: int, end: int, *, by_key: bool, then: AfterRun | None, using: str
) -> tuple[Compacted, int]:
    done = Compacted()
    connection = connections[using]
    text = _is_text(channel_id, using)
    if text is None:
        return done, start
    ensure_state(channel_id, using)
    with transaction.atomic(using=using):
        skip = connection.features.has_select_for_update_skip_locked
        locked = RollupState.objects.using(using).select_for_update(skip_locked=skip).filter(channel_id=channel_id)
        if not locked.values_list("channel_id", flat=True):
            return done, start
        hot = _hot_rows(channel_id, start, end, text, using, limit=RUN_ROWS + 1)
        if not len(hot["ts"]):
            return done, end
        if len(hot["ts"]) > RUN_ROWS:  # stop before the window the bound fell in (it may be incomplete)
            cut = window_of(int(hot["ts"][RUN_ROWS]))
            if cut == window_of(int(hot["ts"][0])):  # one window alone holds more: that window, whole
                end = cut + BLOCK_WIDTH_US
                hot = _hot_rows(channel_id, cut, end, text, using)
            else:
                end = cut
                hot = {name: column[hot["ts"] < cut] for name, column in hot.items()}
        windows = hot["ts"] - hot["ts"] % BLOCK_WIDTH_US
        firsts = np.flatnonzero(np.r_[True, windows[1:] != windows[:-1]])
        lasts = np.r_[firsts[1:], len(windows)]
        found = {
            block.window_start: block
            for block in ReadingBlock.objects.using(using)
            .select_for_update()
            .filter(channel_id=channel_id, window_start__gte=start, window_start__lt=end)
        }
        made, moved = [], []
        for a, b in zip(firsts.tolist(), lasts.tolist(), strict=True):
            window = int(windows[a])
            part = {name: column[a:b] for name, column in hot.items()}
            block = found.get(window)
            if block is not None and block_is_text(block) != text:
                continue  # the channel's kind changed since: leave these rows where they are
            merged, duplicates, conflicts = _merge_into(channel_id, block, part, text, using)
            fields = {
                "count": len(merged["ts"]),
                "first_ts": int(merged["ts"][0]),
                "last_ts": int(merged["ts"][-1]),
                **_encode(merged, text),
            }
            if block is None:
                made.append(ReadingBlock(channel_id=channel_id, window_start=window, **fields))
            else:
                ReadingBlock.objects.using(using).filter(channel_id=channel_id, window_start=window).update(**fields)
            moved.append(part["ts"])
            done.windows += 1
            done.duplicates += duplicates
            done.conflicts += conflicts
            done.readings += len(part["ts"]) - duplicates - conflicts
        ReadingBlock.objects.using(using).bulk_create(made)
        keys = np.concatenate(moved) if moved else np.empty(0, np.int64)
        if by_key or len(keys) < len(hot["ts"]):  # some rows stay (their window was skipped): by their keys
            if len(keys):
                _delete_keys(channel_id, keys, text, using)
        elif _delete_range(channel_id, start, end, text, using) != len(hot["ts"]):
            # A row came or went since the read (another writer not holding the channel's block lock):
            # this transaction is undone, and the run done again deleting exactly the keys it reads.
            raise _Moved
        if then is not None and not text:
            done.packed_hours = then(channel_id, start, end)
    return done, end


def _merge_into(
    channel_id: int, block: ReadingBlock | None, hot: dict[str, np.ndarray], text: bool, using: str
) -> tuple[dict[str, np.ndarray], int, int]:
    """A window's hot rows merged into its block's readings (if any): (the merged columns, duplicates,
    conflicts). A key in both is kept once, the block's value winning; a differing hot value is quarantined."""
    if block is None:
        return hot, 0, 0
    old = decode_block(block, text)
    in_block = np.isin(hot["ts"], old["ts"])
    duplicates = conflicts = 0
    if in_block.any():
        where = np.searchsorted(old["ts"], hot["ts"][in_block])
        hot_values, old_values = hot["value"][in_block], old["value"][where]
        if text:
            same = np.array([a == b for a, b in zip(hot_values, old_values, strict=True)], dtype=bool)
        else:  # the same value: equal, or both NaN with the same bits
            same = hot_values.view(np.uint64) == old_values.view(np.uint64)
        duplicates = int(same.sum())
        _quarantine_conflicts(channel_id, hot["ts"][in_block][~same], hot_values[~same], old_values[~same], using)
        conflicts = int((~same).sum())
    fresh = {name: column[~in_block] for name, column in hot.items()}
    merged = {name: np.concatenate([old[name], fresh[name]]) for name in old}
    order = np.argsort(merged["ts"], kind="stable")
    return {name: column[order] for name, column in merged.items()}, duplicates, conflicts


def _quarantine_conflicts(channel_id: int, ts: np.ndarray, values: np.ndarray, stored: np.ndarray, using: str) -> None:
    RejectedSample.objects.using(using).bulk_create(
        RejectedSample(
            origin=Origin.INTERNAL,
            channel_id=channel_id,
            channel_ref=str(channel_id),
            raw_time=str(int(t)),
            raw_value=str(v),
            reason=f"another value ({s!r}) is stored at this time (found when compacting)",
            kind=RejectionKind.CONFLICT,
            context={"stored": str(s)},
        )
        for t, v, s in zip(ts.tolist(), values.tolist(), stored.tolist(), strict=True)
    )


def _delete_range(channel_id: int, start: int, end: int, text: bool, using: str) -> int:
    """Delete the channel's hot rows in [start, end), one index range scan (far cheaper than their keys one
    by one); the rows deleted, for the caller to check against the rows it read."""
    connection = connections[using]
    table = connection.ops.quote_name((TextSample if text else Sample)._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table} WHERE channel_id = %s AND ts >= %s AND ts < %s", [channel_id, start, end])
        return cursor.rowcount


def _delete_keys(channel_id: int, ts: np.ndarray, text: bool, using: str) -> None:
    """Delete exactly these hot rows (not the window's range: a row committed meanwhile stays)."""
    connection = connections[using]
    table = connection.ops.quote_name((TextSample if text else Sample)._meta.db_table)
    where = f"DELETE FROM {table} WHERE channel_id = %s AND ts >= %s AND ts <= %s AND ts "
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":  # one statement, the keys as one array parameter
            cursor.execute(where + "= ANY(%s::bigint[])", [channel_id, int(ts[0]), int(ts[-1]), ts.tolist()])
            return
        for i in range(0, len(ts), _IN_LIST):
            part = ts[i : i + _IN_LIST].tolist()
            marks = ", ".join(["%s"] * len(part))
            cursor.execute(where + f"IN ({marks})", [channel_id, part[0], part[-1], *part])


def compact(before: int, *, max_windows: int = 100, then: AfterRun | None = None, using: str = "default") -> Compacted:
    """One bounded step: compact at most ``max_windows`` windows that end at or before ``before`` (µs),
    oldest first per channel. Call again until it returns ``windows == 0`` (existing readings are
    compacted the same way, step by step). ``then``: see ``compact_run``."""
    total = Compacted()
    before = min(before, time.time_ns() // 1000 - MIN_AGE_US)  # see FRESH_US
    connection = connections[using]
    for channel_id, kind in Channel.objects.using(using).order_by("pk").values_list("pk", "kind"):
        model = TextSample if kind == ChannelKind.TEXT else Sample
        table = connection.ops.quote_name(model._meta.db_table)
        # From the end of the window just compacted on: the rows it deleted stay in the index until a
        # vacuum, and looking from the channel's start again would step over all of them every time
        # (late rows before it are the next run's).
        lower = -(2**63)
        while total.windows < max_windows:
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT ts FROM {table} WHERE channel_id = %s AND ts >= %s AND ts < %s ORDER BY ts LIMIT 1",
                    [channel_id, lower, window_of(before)],
                )
                row = cursor.fetchone()
            if row is None:
                break
            window = window_of(int(row[0]))
            # Adjacent windows together, as many as are left to do (compact_run stops at RUN_ROWS rows).
            last = min(window + (max_windows - total.windows) * BLOCK_WIDTH_US, window_of(before))
            step, lower = compact_run(channel_id, window, last, then=then, using=using)
            if not step.windows:
                break  # another worker holds the channel
            total.windows += step.windows
            total.readings += step.readings
            total.duplicates += step.duplicates
            total.conflicts += step.conflicts
            total.packed_hours += step.packed_hours
        if total.windows >= max_windows:
            break
    return total


def has_blocks(channel_id: int, start: int, end: int, *, using: str = "default") -> bool:
    """Whether any block of the channel may hold readings in [start, end) µs (one primary-key probe).

    Asked before every read of a channel's readings (plots, sparklines, exports, the worker's refreshes): its
    SQL is written here rather than built by the ORM each time, which cost ten times the probe itself."""
    connection = connections[using]
    quote = connection.ops.quote_name
    sql = (
        f"SELECT 1 FROM {quote(ReadingBlock._meta.db_table)} WHERE {quote('channel_id')} = %s "
        f"AND {quote('window_start')} > %s AND {quote('window_start')} < %s LIMIT 1"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [channel_id, max(start - BLOCK_WIDTH_US, INT64_MIN), min(end, INT64_MAX)])
        return cursor.fetchone() is not None


def channels_with_blocks(spans: dict[int, tuple[int, int]], *, using: str = "default") -> set[int]:
    """Of the channels of ``spans`` ({channel: (start, end)} µs, end excluded), those with a block that may
    hold readings in their span: ``has_blocks`` for many channels, one query per ``SPANS_PER_STATEMENT``."""
    found: set[int] = set()
    connection = connections[using]
    quote = connection.ops.quote_name
    table = quote(ReadingBlock._meta.db_table)
    for head, params in spans_table({pk: (lo - BLOCK_WIDTH_US, hi) for pk, (lo, hi) in spans.items()}):
        with connection.cursor() as cursor:
            cursor.execute(
                f"{head}SELECT DISTINCT b.{quote('channel_id')} FROM {table} b JOIN spans s "
                f"ON b.{quote('channel_id')} = s.channel_id AND b.{quote('window_start')} > s.lo "
                f"AND b.{quote('window_start')} < s.hi",
                params,
            )
            found.update(channel_id for (channel_id,) in cursor.fetchall())
    return found


def spans_table(spans: dict[int, tuple[int, int]]) -> Iterator[tuple[str, list]]:
    """``spans`` {channel: (lo, hi)} as a table ``spans (channel_id, lo, hi)`` to join in a statement: the
    statement's head (``WITH spans … AS (VALUES …)``) and its parameters, in parts of at most
    ``SPANS_PER_STATEMENT`` channels, in channel order (a part's rows come after the previous part's).

    Not one OR of a condition per channel: Django builds that in time growing with the channels (266 ms
    for 2,000, a fifth of a busy worker's rollup refresh with 300 agents) and the planners then read it as
    that many index scans."""
    items = sorted(spans.items())
    for start in range(0, len(items), SPANS_PER_STATEMENT):
        part = items[start : start + SPANS_PER_STATEMENT]
        rows = ", ".join(["(%s, %s, %s)"] * len(part))
        yield (
            f"WITH spans (channel_id, lo, hi) AS (VALUES {rows}) ",
            [x for channel_id, (lo, hi) in part for x in (channel_id, lo, hi)],
        )


SPANS_PER_STATEMENT = 500


def _only_ok(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    ok = columns["quality"] == 0
    return {name: column[ok] for name, column in columns.items()}


def _merge(hot: dict[str, np.ndarray], found, lo: int, hi: int, text: bool) -> dict[str, np.ndarray]:
    """Hot rows of [lo, hi) merged with the readings of ``found`` blocks in [lo, hi), ordered by time; a
    key in both is given once, the block's."""
    parts = [decode_block(block, text) for block in found]
    if not parts:
        return hot
    columns = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    a, b = np.searchsorted(columns["ts"], [lo, hi])  # blocks come in window order, each sorted
    columns = {name: column[a:b] for name, column in columns.items()}
    if not len(hot["ts"]):
        return columns
    keep = ~np.isin(hot["ts"], columns["ts"])
    merged = {name: np.concatenate([columns[name], hot[name][keep]]) for name in columns}
    order = np.argsort(merged["ts"], kind="stable")
    return {name: column[order] for name, column in merged.items()}


def _blocks_in(channel_id: int, lo: int, hi: int, using: str):
    return (
        ReadingBlock.objects.using(using)
        .filter(channel_id=channel_id, window_start__gt=lo - BLOCK_WIDTH_US, window_start__lt=hi)
        .order_by("window_start")
    )


def _hot_chunks(
    channel_id: int, start: int, end: int, text: bool, include_flagged: bool, chunk_rows: int, using: str
) -> Iterator[dict[str, np.ndarray]]:
    """Readings of [start, end), where no block was when the read began, in keyset-paginated chunks of
    hot rows (constant memory). Each chunk's span is then looked up in the blocks too: a compaction that
    committed meanwhile has moved rows there, and reading hot rows first, blocks second, sees every moved
    row one way or the other (one snapshot per statement on PostgreSQL)."""
    lower = start
    while lower < end:
        hot = _hot_rows(channel_id, lower, end, text, using, limit=chunk_rows)
        full = len(hot["ts"]) == chunk_rows
        upper = int(hot["ts"][-1]) + 1 if full else end
        chunk = _merge(hot, _blocks_in(channel_id, lower, upper, using), lower, upper, text)
        if not include_flagged:
            chunk = _only_ok(chunk)
        if len(chunk["ts"]):
            yield chunk
        if not full:
            return
        lower = upper


def _run_readings(
    channel_id: int, windows: list[int], lo: int, hi: int, text: bool, using: str
) -> dict[str, np.ndarray]:
    """The blocks of a run of adjacent ``windows`` merged with the hot rows of [lo, hi) (inside them),
    ordered: two queries for the whole run (hot rows inside compacted windows are only late data). Hot
    rows first, blocks second: rows a compaction moved meanwhile are found in the block; rows an
    expansion moved back meanwhile are read again."""
    hot = _hot_rows(channel_id, lo, hi, text, using)
    found = list(
        ReadingBlock.objects.using(using)
        .filter(channel_id=channel_id, window_start__gte=windows[0], window_start__lte=windows[-1])
        .order_by("window_start")
    )
    if len(found) < len(windows):
        # A block listed a moment ago is gone: expanded back into hot rows (late data, a deletion) after
        # the hot rows were read. Read them again: that expansion has committed by now.
        again = _hot_rows(channel_id, lo, hi, text, using)
        keep = ~np.isin(again["ts"], hot["ts"])
        hot = {name: np.concatenate([hot[name], again[name][keep]]) for name in hot}
        order = np.argsort(hot["ts"], kind="stable")
        hot = {name: column[order] for name, column in hot.items()}
    return _merge(hot, found, lo, hi, text)


def _runs(windows: list[tuple[int, int]], max_readings: int) -> Iterator[list[int]]:
    """Adjacent (window, count)s in runs holding at most ``max_readings`` (or a single block)."""
    run: list[int] = []
    held = 0
    for window, count in windows:
        if run and (window != run[-1] + BLOCK_WIDTH_US or held + count > max_readings):
            yield run
            run, held = [], 0
        run.append(window)
        held += count
    if run:
        yield run


def iter_readings(
    channel_id: int,
    start: int,
    end: int,
    *,
    text: bool | None = None,
    include_flagged: bool = True,
    chunk_rows: int = 100_000,
    using: str = "default",
) -> Iterator[dict[str, np.ndarray]]:
    """A channel's readings in [start, end) µs, blocks and hot rows merged, ordered by time, in chunks
    (at most ``chunk_rows`` hot rows, or a run of adjacent blocks holding at most ``chunk_rows`` readings
    unless one block alone holds more): {"ts", "value", "quality"}, values
    float64 or (text channels) objects. A key held by both a block and a hot row (a reading stored while
    its window was being compacted) is given once, the block's: the first stored value."""
    if text is None:
        text = _is_text(channel_id, using)
        if text is None:
            return
    windows = list(
        ReadingBlock.objects.using(using)
        .filter(channel_id=channel_id, window_start__gt=start - BLOCK_WIDTH_US, window_start__lt=end)
        .order_by("window_start")
        .values_list("window_start", "count")
    )
    lower = start
    for run in _runs(windows, chunk_rows):
        if lower < run[0]:
            yield from _hot_chunks(channel_id, lower, run[0], text, include_flagged, chunk_rows, using)
        lo, hi = max(start, run[0]), min(end, run[-1] + BLOCK_WIDTH_US)
        columns = _run_readings(channel_id, run, lo, hi, text, using)
        if not include_flagged:
            columns = _only_ok(columns)
        if len(columns["ts"]):
            yield columns
        lower = hi
    if lower < end:
        yield from _hot_chunks(channel_id, lower, end, text, include_flagged, chunk_rows, using)


def _empty(text: bool) -> dict[str, np.ndarray]:
    return {
        "ts": np.empty(0, np.int64),
        "value": np.empty(0, dtype=object if text else np.float64),
        "quality": np.empty(0, np.int64),
    }


def read_readings(
    channel_id: int,
    start: int,
    end: int,
    *,
    include_flagged: bool = True,
    limit: int | None = None,
    text: bool | None = None,
    using: str = "default",
) -> dict[str, np.ndarray]:
    """Like ``iter_readings``, in one piece: the first ``limit`` readings of [start, end), or all."""
    if text is None:
        text = _is_text(channel_id, using)
        if text is None:
            return _empty(False)
    parts, count = [], 0
    for chunk in iter_readings(channel_id, start, end, text=text, include_flagged=include_flagged, using=using):
        parts.append(chunk)
        count += len(chunk["ts"])
        if limit is not None and count >= limit:
            break
    if not parts:
        return _empty(text)
    merged = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    if limit is not None:
        merged = {name: column[:limit] for name, column in merged.items()}
    return merged


def read_last(
    channel_id: int, before: int, limit: int, *, text: bool = False, using: str = "default"
) -> dict[str, np.ndarray]:
    """The channel's last ``limit`` readings before ``before`` µs (blocks and hot rows), oldest first: the
    answer is among the last ``limit`` hot rows and the last ``limit`` block readings, so no more is read."""
    model = TextSample if text else Sample
    table = connections[using].ops.quote_name(model._meta.db_table)
    sql = (
        f"SELECT ts, value, quality FROM (SELECT ts, value, quality FROM {table} WHERE channel_id = %s AND ts < %s "
        f"ORDER BY ts DESC LIMIT {int(limit)}) AS latest ORDER BY ts"
    )
    hot = _select(sql, [channel_id, before], text, using)
    parts: list[dict[str, np.ndarray]] = []
    found = 0
    blocks = (
        ReadingBlock.objects.using(using)
        .filter(channel_id=channel_id, window_start__lt=before)
        .order_by("-window_start")
        .iterator(chunk_size=8)
    )
    for block in blocks:
        columns = decode_block(block, text)
        inside = columns["ts"] < before
        parts.insert(0, {name: column[inside] for name, column in columns.items()})
        found += int(inside.sum())
        if found >= limit:
            break
    if not parts:
        return hot
    compacted = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    keep = ~np.isin(hot["ts"], compacted["ts"])
    merged = {name: np.concatenate([compacted[name], hot[name][keep]]) for name in hot}
    order = np.argsort(merged["ts"], kind="stable")[-limit:]
    return {name: column[order] for name, column in merged.items()}


def bounds(channel_id: int, *, text: bool = False, using: str = "default") -> tuple[int | None, int | None]:
    """The channel's first and last reading time, over blocks and hot rows."""

    model = TextSample if text else Sample
    hot = model.objects.using(using).filter(channel_id=channel_id).aggregate(first=Min("ts"), last=Max("ts"))
    cold = (
        ReadingBlock.objects.using(using)
        .filter(channel_id=channel_id)
        .aggregate(first=Min("first_ts"), last=Max("last_ts"))
    )
    firsts = [v for v in (hot["first"], cold["first"]) if v is not None]
    lasts = [v for v in (hot["last"], cold["last"]) if v is not None]
    return (min(firsts) if firsts else None, max(lasts) if lasts else None)


# --- writers: a change to compacted readings first turns their blocks back into hot rows ---------------


def ensure_state(channel_id: int, using: str) -> None:
    """The channel's ``RollupState`` row, created if missing (as ``rollups.ensure_state``, which imports
    this module): looked up first, since on MariaDB an INSERT IGNORE of an existing row waits for its lock."""
    states = RollupState.objects.using(using)
    if not states.filter(channel_id=channel_id).exists():
        states.bulk_create([RollupState(channel_id=channel_id)], ignore_conflicts=True)


def _lock_channels(channel_ids, using: str) -> set[int]:
    """The channels' block locks, in key order (as every locker takes them: no deadlock); the ids locked.

    The lock is the channel's ``RollupState`` row, not its ``Channel`` row: ingest updates the channel row
    at the end of its transaction, after writing hot rows, and a compactor holding that row while deleting
    hot rows would deadlock with it (MariaDB's gap locks make that likely). Ingest takes this lock only to
    expand blocks, before it writes anything, and the rollup refresh reads hot rows without locking them."""
    ids = sorted(set(channel_ids))
    states = RollupState.objects.using(using)

    def lock(keys: list[int]) -> set[int]:
        rows = states.select_for_update().filter(channel_id__in=keys).order_by("channel_id")
        return set(rows.values_list("channel_id", flat=True))

    locked = lock(ids)
    if missing := [pk for pk in ids if pk not in locked]:  # a channel's first block: its state row
        present = set(Channel.objects.using(using).filter(pk__in=missing).values_list("pk", flat=True))
        states.bulk_create([RollupState(channel_id=pk) for pk in missing if pk in present], ignore_conflicts=True)
        locked |= lock(missing)
    return locked


def _expand(block: ReadingBlock, using: str) -> int:
    """The block's readings back into the narrow table they came from, and the block deleted."""
    text = block_is_text(block)
    columns = decode_block(block, text)
    n = len(columns["ts"])
    channel = np.full(n, block.channel_id, dtype=np.int64)
    if text:
        rows = storage.row_tuples(
            channel.tolist(), columns["ts"].tolist(), columns["value"].tolist(), columns["quality"].tolist()
        )
        written = storage.insert_text(rows, using=using)
    else:
        written = storage.insert_numeric(
            channel, columns["ts"], columns["value"], columns["quality"].astype(np.int16), using=using
        )
    if written.conflict_rows:  # a hot row left by a race holds another value: the block's (first) one wins
        idx = np.array(written.conflict_rows)
        storage.replace_values(
            text,
            list(
                zip(
                    columns["value"][idx].tolist(),
                    columns["quality"][idx].tolist(),
                    channel[idx].tolist(),
                    columns["ts"][idx].tolist(),
                    strict=True,
                )
            ),
            using=using,
        )
    ReadingBlock.objects.using(using).filter(channel_id=block.channel_id, window_start=block.window_start).delete()
    return n


def expand_blocks(channel_id: int, start: int, end: int, *, using: str = "default") -> int:
    """Turn the channel's blocks that may hold readings in [start, end) back into hot rows, in the
    caller's transaction, so that a change (deletion, quality flags, replacement) works on hot rows as
    always; compaction packs them again later. Returns the readings expanded.

    While compaction is on, a range older than ``FRESH_US`` takes the channel's block lock first, whether
    or not a block is there yet, and the caller's transaction keeps it until its change commits: a
    compactor moving these hot rows into a block right now (its block not yet visible here) is waited
    for, and none can move them before the change is done. Without it a deletion or a quality flag could
    act on rows a compactor had just copied, and the block would bring the old readings back."""
    with transaction.atomic(using=using):
        locked_first = _compactor_may_hold(start)
        if locked_first and channel_id not in _lock_channels([channel_id], using):
            return 0
        if not has_blocks(channel_id, start, end, using=using):
            return 0
        if not locked_first and channel_id not in _lock_channels([channel_id], using):
            return 0
        found = (
            ReadingBlock.objects.using(using)
            .select_for_update()
            .filter(channel_id=channel_id, window_start__gt=start - BLOCK_WIDTH_US, window_start__lt=end)
            .order_by("window_start")
        )
        return sum(_expand(block, using) for block in found)


def _compactor_may_hold(start: int) -> bool:
    """Whether a compactor may be moving hot rows at or after ``start`` µs into a block right now."""
    return bool(settings.DAQBROKER_COMPACT_AFTER) and start < time.time_ns() // 1000 - FRESH_US


def has_any_block() -> Exists:
    """Annotation: the channel holds at least one block (read with the channel by ingest's look-up)."""
    return Exists(ReadingBlock.objects.filter(channel_id=OuterRef("pk")))


def has_any_block_sql(channel_alias: str, connection) -> str:
    """The same, written into a raw SQL look-up of channels aliased ``channel_alias``."""
    quote = connection.ops.quote_name
    return (
        f"EXISTS (SELECT 1 FROM {quote(ReadingBlock._meta.db_table)} b "
        f"WHERE b.{quote('channel_id')} = {channel_alias}.{quote('id')})"
    )


def expand_for_ingest(
    channel: np.ndarray, ts: np.ndarray, *, compacted: set[int] | None = None, using: str = "default"
) -> int:
    """Before a batch is stored: expand the blocks of the (channel, window)s it writes into, so that the
    narrow table's key decides duplicates and conflicts as for any reading. One query when the batch
    touches no compacted window (the usual case: fresh readings).

    ``compacted``: the batch's channels that held blocks when they were looked up. With compaction off no
    block is made, so the others cannot hold one, and a batch of theirs costs no query at all (blocks made
    before compaction was turned off are still found: their channels are in ``compacted``)."""
    if not len(ts) or int(ts.min()) >= time.time_ns() // 1000 - FRESH_US:
        return 0  # no block can hold a reading this recent: not even the one query
    if compacted is not None and not settings.DAQBROKER_COMPACT_AFTER:
        mask = np.isin(channel, list(compacted))
        if not mask.any():
            return 0
        channel, ts = channel[mask], ts[mask]
    windows = ts - ts % BLOCK_WIDTH_US
    candidates = ReadingBlock.objects.using(using).filter(
        channel_id__in=np.unique(channel).tolist(),
        window_start__gte=int(windows.min()),
        window_start__lte=int(windows.max()),
    )
    locked = None
    if settings.DAQBROKER_COMPACT_AFTER:
        # A compactor may be packing one of these hours right now: take the channels' block locks first
        # (it holds one while it works), then look with a locking read, which sees the latest committed
        # blocks even under MariaDB's repeatable read. Without it, a reading re-sent while its hour is
        # being compacted could be stored beside its block instead of being counted as a duplicate.
        old = channel[ts < time.time_ns() // 1000 - FRESH_US]
        locked = _lock_channels(np.unique(old).tolist(), using)
        candidates = candidates.select_for_update()
    found = list(candidates.values_list("channel_id", "window_start"))
    if not found:
        return 0  # the usual case, even for a backfill of a million old readings: no (channel, window) set built
    near = np.isin(channel, [c for c, _ in found]) & np.isin(windows, [w for _, w in found])
    wanted = set(zip(channel[near].tolist(), windows[near].tolist(), strict=True))
    hits = [pair for pair in found if pair in wanted]
    if not hits:
        return 0
    expanded = 0
    with transaction.atomic(using=using):
        if locked is None:
            locked = _lock_channels([c for c, _ in hits], using)
        for channel_id, window in sorted(hits):
            block = (
                ReadingBlock.objects.using(using)
                .select_for_update()
                .filter(channel_id=channel_id, window_start=window)
                .first()
            )
            if block is not None and channel_id in locked:
                expanded += _expand(block, using)
    return expanded


def drop_blocks_before(channel_id: int, cutoff: int, *, using: str = "default") -> int:
    """Retention: delete the channel's blocks wholly before ``cutoff`` and expand the one straddling it
    (its readings before ``cutoff`` then go with the hot rows). Returns the readings dropped."""
    with transaction.atomic(using=using):
        if _compactor_may_hold(cutoff - 1):  # as in expand_blocks: a block being written now is waited for
            _lock_channels([channel_id], using)
        whole = ReadingBlock.objects.using(using).filter(channel_id=channel_id, last_ts__lt=cutoff)
        dropped = sum(whole.values_list("count", flat=True))
        whole.delete()
        expand_blocks(channel_id, cutoff - 1, cutoff, using=using)
    return int(dropped)


def count_blocks(channel_id: int, start: int, end: int, *, using: str = "default") -> int:
    """Readings the channel's blocks hold in [start, end) (whole blocks by their count, edges decoded)."""
    total = 0
    found = ReadingBlock.objects.using(using).filter(
        channel_id=channel_id, window_start__gt=start - BLOCK_WIDTH_US, window_start__lt=end
    )
    for block in found:
        if block.first_ts >= start and block.last_ts < end:
            total += block.count
        else:
            ts = codec.decode_timestamps(bytes(block.ts_data))
            total += int(((ts >= start) & (ts < end)).sum())
    return total
