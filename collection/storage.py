"""Engine-specific bulk writers for readings: the only code that knows how each database loads fast.

Each writer inserts rows that are already validated, ordered by (channel, ts) and free of in-batch
repeats, skips rows whose (channel, ts) is already stored, and returns a ``Written``: how many it
inserted, and which of the skipped rows found *another* value stored at their time (conflicts) with that
stored value. The other skipped rows are exact duplicates. Telling the two apart costs only when the bulk
insert reports fewer rows inserted than offered: on SQLite and MariaDB the rows go in chunks, and only the
keys of a chunk that came up short are looked up (one indexed query per channel and chunk); on PostgreSQL
each staged row is looked up in the index. Values are compared as stored: float8/DOUBLE/REAL keep a
float64 exactly, so equality is exact; text compares as text. Paths, measured in
``bench/ingest_service.py`` and shared/PERFORMANCE.md:

* SQLite: ``executemany`` of ``INSERT OR IGNORE``.
* PostgreSQL, small batches (fewer than ``PG_COPY_FROM`` rows): one ``INSERT ... SELECT FROM unnest(...)
  ON CONFLICT DO NOTHING``; short of rows, the skipped keys are looked up as on the other engines.
* PostgreSQL, larger ones: optimistic binary COPY straight into the table inside a savepoint; on a unique violation
  the savepoint is rolled back and the rows go through a temporary staging table and
  ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``. Retries are rare, so the fast path is the usual one.
* MariaDB: ``executemany`` of ``INSERT IGNORE``, which mysqlclient folds into multi-row statements.
  IGNORE also downgrades bad values to warnings, which is why everything is validated beforehand.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field

import numpy as np
from django.db import connections, transaction
from django.db.backends.postgresql.base import ServerBindingCursor

from collection.models import Sample, TextSample

CHUNK = 10_000  # rows per executemany: MariaDB folds them into multi-row statements; a short chunk is checked
_PG_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_PG_TRAILER = b"\xff\xff"
_PG_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("channel_len", ">i4"),
        ("channel", ">i8"),
        ("ts_len", ">i4"),
        ("ts", ">i8"),
        ("value_len", ">i4"),
        ("value", ">f8"),
        ("quality_len", ">i4"),
        ("quality", ">i2"),
    ]
)
_STAGE = "daqbroker_ingest_stage"
# PostgreSQL: fewer rows than this go in one INSERT ... SELECT FROM unnest(arrays) ON CONFLICT DO NOTHING (one
# statement) rather than a COPY inside a savepoint (three): what a small sender's request costs.
PG_COPY_FROM = 1000
_IN_LIST = 1000  # timestamps per look-up query of a short chunk


@dataclass
class Written:
    """What a bulk write did with the rows offered to it."""

    offered: int = 0
    inserted: int = 0
    # Positions (in the offered rows) of those whose (channel, ts) already holds another value ...
    conflict_rows: list[int] = field(default_factory=list)
    # ... and that stored value, one per conflict row.
    stored: list = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        """Rows skipped because the very same value is stored at their time."""
        return max(self.offered - self.inserted - len(self.conflict_rows), 0)


class _PreparingCursor(ServerBindingCursor):
    """Parameters bound on the server, and each statement prepared the first time a connection runs it."""

    # The ignores: django-stubs declares ServerBindingCursor without psycopg's Cursor behind it.
    def execute(self, query, params=None, *, prepare=None, binary=None):
        cursor = super().execute(query, params, prepare=True, binary=binary)  # type: ignore[misc]
        # psycopg records the text it sent only when it did not run a prepared statement; Django's query
        # log (DEBUG, tests counting statements) reads that record: the statement as written, then.
        self._query = _SentText(query.encode())
        return cursor


@dataclass(frozen=True)
class _SentText:
    query: bytes


def prepared_cursor(connection):
    """A cursor for the ingest path's few hot statements, through Django's wrapper (statements are counted
    and logged as any other). On PostgreSQL their plans are made once per connection instead of once per
    request: planning the channel look-up (with its permission subquery) cost five times its execution.
    Statement texts must not vary with the data (arrays, not lists of placeholders). Behind a pooling proxy
    that cannot keep prepared statements, DAQBROKER_DB_PREPARED_STATEMENTS=false leaves them unprepared
    (psycopg prepares nothing on a connection without a threshold). Other engines: a plain cursor."""
    if connection.vendor != "postgresql":
        return connection.cursor()
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        return connection._prepare_cursor(_PreparingCursor(connection.connection))  # type: ignore[call-arg]


def pg_array(values: list) -> str:
    """A list of numbers as PostgreSQL's array literal, for a ``%s::bigint[]`` (or ``float8[]``) parameter:
    one text value for psycopg to send instead of a list it inspects item by item. ``repr`` of a float is
    the shortest text that reads back as the same double: values are stored exactly."""
    return "{" + ",".join(map(repr, values)) + "}"


def insert_numeric(
    channel: np.ndarray, ts: np.ndarray, value: np.ndarray, quality: np.ndarray, *, using: str = "default"
) -> Written:
    if len(channel) == 0:
        return Written()
    connection = connections[using]
    vendor = connection.vendor
    if vendor == "postgresql":
        if len(channel) < PG_COPY_FROM:
            return _pg_insert_small(connection, channel, ts, value, quality)
        return _pg_insert_numeric(connection, channel, ts, value, quality, using)
    table = connection.ops.quote_name(Sample._meta.db_table)
    values = value.tolist()
    rows = row_tuples(channel.tolist(), ts.tolist(), values, quality.tolist())
    written, short = _insert_ignore(connection, table, rows)
    if short:
        _find_conflicts(connection, table, written, channel, ts, values, short)
    return written


def row_tuples(*columns: list) -> list[tuple]:
    """Rows for ``executemany`` from equal-length columns. Python's cyclic garbage collector is paused
    meanwhile: a million new tuples would set off its full passes, which then take most of the time
    (0.57 s instead of 0.10 s for a million rows here), and tuples of numbers and strings hold no cycles."""
    paused = gc.isenabled()
    gc.disable()
    try:
        return list(zip(*columns, strict=True))
    finally:
        if paused:
            gc.enable()


def insert_text(rows: list[tuple[int, int, str, int]], *, using: str = "default") -> Written:
    if not rows:
        return Written()
    connection = connections[using]
    table = connection.ops.quote_name(TextSample._meta.db_table)
    written, short = _insert_ignore(connection, table, rows)
    if short:
        channel = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        ts = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
        _find_conflicts(connection, table, written, channel, ts, [r[2] for r in rows], short)
    return written


def _insert_ignore(connection, table: str, rows: list[tuple]) -> tuple[Written, list[tuple[int, int]]]:
    """Inserts ``rows`` in chunks; returns what was written and the (start, end) of each chunk that
    inserted fewer rows than it offered (where the duplicates and conflicts are)."""
    columns = "(channel_id, ts, value, quality) VALUES (%s, %s, %s, %s)"
    if connection.vendor == "sqlite":
        sql = f"INSERT OR IGNORE INTO {table} {columns}"
    elif connection.vendor == "mysql":
        sql = f"INSERT IGNORE INTO {table} {columns}"
    else:
        sql = f"INSERT INTO {table} {columns} ON CONFLICT DO NOTHING"
    written = Written(offered=len(rows))
    short = []
    with connection.cursor() as cursor:
        for start in range(0, len(rows), CHUNK):
            part = rows[start : start + CHUNK]
            cursor.executemany(sql, part)
            inserted = max(cursor.rowcount, 0)
            written.inserted += inserted
            if inserted < len(part):
                short.append((start, start + len(part)))
    return written, short


def _find_conflicts(
    connection, table: str, written: Written, channel: np.ndarray, ts: np.ndarray, values: list, short: list
) -> None:
    """Looks up the stored values at the keys of the short chunks; the rows whose stored value differs
    from theirs are conflicts (a row inserted now reads back its own value, a duplicate the same one)."""
    with connection.cursor() as cursor:
        for start, end in short:
            for channel_id in np.unique(channel[start:end]).tolist():
                rows = start + np.flatnonzero(channel[start:end] == channel_id)
                stored = {}
                for i in range(0, len(rows), _IN_LIST):
                    stamps = ts[rows[i : i + _IN_LIST]].tolist()
                    marks = ", ".join(["%s"] * len(stamps))
                    sql = f"SELECT ts, value FROM {table} WHERE channel_id = %s AND ts IN ({marks})"
                    cursor.execute(sql, [channel_id, *stamps])
                    stored.update(cursor.fetchall())
                for row in rows.tolist():
                    old = stored.get(int(ts[row]))
                    if old is not None and old != values[row]:
                        written.conflict_rows.append(row)
                        written.stored.append(old)


def pg_small_insert_sql(connection) -> str:
    """PostgreSQL's insert of a small batch, its four columns given as array parameters (channel ids, times,
    values, qualities): run alone (``insert_numeric``) or as the first step of the ingest's one write
    (``collection.services.ingest``). Either way ``small_insert_written`` then tells what it did."""
    table = connection.ops.quote_name(Sample._meta.db_table)
    return (
        f"INSERT INTO {table} (channel_id, ts, value, quality) SELECT * FROM "
        "unnest(%s::bigint[], %s::bigint[], %s::float8[], %s::smallint[]) ON CONFLICT DO NOTHING"
    )


def pg_small_insert_params(channel: np.ndarray, ts: np.ndarray, value: np.ndarray, quality: np.ndarray) -> list[str]:
    return [pg_array(channel.tolist()), pg_array(ts.tolist()), pg_array(value.tolist()), pg_array(quality.tolist())]


def small_insert_written(connection, inserted: int, channel: np.ndarray, ts: np.ndarray, value: np.ndarray) -> Written:
    """What ``pg_small_insert_sql`` did, given how many rows it inserted: the skipped keys are looked up
    (one more query, only when some were skipped) to tell conflicts from duplicates."""
    written = Written(offered=len(channel), inserted=max(inserted, 0))
    if written.inserted < len(channel):
        table = connection.ops.quote_name(Sample._meta.db_table)
        _find_conflicts(connection, table, written, channel, ts, value.tolist(), [(0, len(channel))])
    return written


def _pg_insert_small(connection, channel, ts, value, quality) -> Written:
    with prepared_cursor(connection) as cursor:
        cursor.execute(pg_small_insert_sql(connection), pg_small_insert_params(channel, ts, value, quality))
        inserted = cursor.rowcount
    return small_insert_written(connection, inserted, channel, ts, value)


def pg_binary_copy_payload(channel: np.ndarray, ts: np.ndarray, value: np.ndarray, quality: np.ndarray) -> bytes:
    """PostgreSQL's binary COPY format for (bigint, bigint, float8, smallint) rows, built with numpy."""
    rows = np.empty(len(channel), dtype=_PG_ROW)
    rows["fields"] = 4
    rows["channel_len"] = 8
    rows["channel"] = channel
    rows["ts_len"] = 8
    rows["ts"] = ts
    rows["value_len"] = 8
    rows["value"] = value
    rows["quality_len"] = 2
    rows["quality"] = quality
    return _PG_HEADER + rows.tobytes() + _PG_TRAILER


def _pg_insert_numeric(connection, channel, ts, value, quality, using: str) -> Written:
    from psycopg import errors

    table = connection.ops.quote_name(Sample._meta.db_table)
    payload = pg_binary_copy_payload(channel, ts, value, quality)
    columns = "(channel_id, ts, value, quality)"
    try:
        with (
            transaction.atomic(using=using),
            connection.cursor() as cursor,
            cursor.cursor.copy(f"COPY {table} {columns} FROM STDIN (FORMAT BINARY)") as copy,
        ):
            copy.write(payload)
        return Written(offered=len(channel), inserted=len(channel))
    except errors.UniqueViolation:
        pass  # some rows are already stored: the savepoint is rolled back, take the staged path
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} "
            "(channel_id bigint, ts bigint, value double precision, quality smallint) ON COMMIT DELETE ROWS"
        )
        cursor.execute(f"TRUNCATE {_STAGE}")
        with cursor.cursor.copy(f"COPY {_STAGE} {columns} FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(payload)
        cursor.execute(
            f"INSERT INTO {table} {columns} SELECT channel_id, ts, value, quality FROM {_STAGE} ON CONFLICT DO NOTHING"
        )
        written = Written(offered=len(channel), inserted=cursor.rowcount)
        if written.inserted < len(channel):
            # Every staged row is stored now: those whose stored value differs from theirs are conflicts.
            # A scalar subquery per staged row: one index probe each, never a plan that scans the readings
            # table (a plain join is planned as a hash join over the whole table, temp tables having no
            # statistics).
            cursor.execute(
                "SELECT channel_id, ts, old FROM (SELECT s.channel_id, s.ts, s.value, "
                f"(SELECT r.value FROM {table} r WHERE r.channel_id = s.channel_id AND r.ts = s.ts) AS old "
                f"FROM {_STAGE} s) staged WHERE old <> value"
            )
            conflicts = cursor.fetchall()
        else:
            conflicts = []
        cursor.execute(f"TRUNCATE {_STAGE}")
    for channel_id, stamp, old in conflicts:
        lo, hi = np.searchsorted(channel, channel_id, "left"), np.searchsorted(channel, channel_id, "right")
        written.conflict_rows.append(int(lo + np.searchsorted(ts[lo:hi], stamp)))
        written.stored.append(old)
    return written


def replace_values(text: bool, rows: list[tuple], *, using: str = "default") -> None:
    """Overwrite stored readings on purpose (``ingest_samples(..., on_conflict="replace")``): ``rows`` are
    (value, quality, channel_id, ts) of readings known to be stored. One keyed UPDATE each, through the
    primary key; the caller bounds how many (one batch)."""
    if not rows:
        return
    connection = connections[using]
    table = connection.ops.quote_name((TextSample if text else Sample)._meta.db_table)
    with connection.cursor() as cursor:
        for start in range(0, len(rows), CHUNK):
            cursor.executemany(
                f"UPDATE {table} SET value = %s, quality = %s WHERE channel_id = %s AND ts = %s",
                rows[start : start + CHUNK],
            )
