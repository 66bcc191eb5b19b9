"""Engine-specific bulk writers for readings: the only code that knows how each database loads fast.

Each writer inserts rows that are already validated and free of in-batch duplicates, skips rows whose
(channel, ts) is already stored, and returns how many it inserted. Paths, measured in
``bench/ingest_service.py`` and shared/PERFORMANCE.md:

* SQLite: ``executemany`` of ``INSERT OR IGNORE``.
* PostgreSQL: optimistic binary COPY straight into the table inside a savepoint; on a unique violation
  the savepoint is rolled back and the rows go through a temporary staging table and
  ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``. Retries are rare, so the fast path is the usual one.
* MariaDB: ``executemany`` of ``INSERT IGNORE``, which mysqlclient folds into multi-row statements.
  IGNORE also downgrades bad values to warnings, which is why everything is validated beforehand.
"""

from __future__ import annotations

import gc

import numpy as np
from django.db import connections, transaction

from collection.models import Sample, TextSample

MYSQL_CHUNK = 10_000
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


def insert_numeric(
    channel: np.ndarray, ts: np.ndarray, value: np.ndarray, quality: np.ndarray, *, using: str = "default"
) -> int:
    if len(channel) == 0:
        return 0
    connection = connections[using]
    vendor = connection.vendor
    if vendor == "postgresql":
        return _pg_insert_numeric(connection, channel, ts, value, quality, using)
    table = connection.ops.quote_name(Sample._meta.db_table)
    return _insert_ignore(
        connection, table, row_tuples(channel.tolist(), ts.tolist(), value.tolist(), quality.tolist())
    )


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


def insert_text(rows: list[tuple[int, int, str, int]], *, using: str = "default") -> int:
    if not rows:
        return 0
    connection = connections[using]
    table = connection.ops.quote_name(TextSample._meta.db_table)
    return _insert_ignore(connection, table, rows)


def _insert_ignore(connection, table: str, rows: list[tuple]) -> int:
    columns = "(channel_id, ts, value, quality) VALUES (%s, %s, %s, %s)"
    if connection.vendor == "sqlite":
        sql = f"INSERT OR IGNORE INTO {table} {columns}"
    elif connection.vendor == "mysql":
        sql = f"INSERT IGNORE INTO {table} {columns}"
    else:
        sql = f"INSERT INTO {table} {columns} ON CONFLICT DO NOTHING"
    chunk = MYSQL_CHUNK if connection.vendor == "mysql" else len(rows)
    inserted = 0
    with connection.cursor() as cursor:
        for start in range(0, len(rows), chunk):
            cursor.executemany(sql, rows[start : start + chunk])
            inserted += max(cursor.rowcount, 0)
    return inserted


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


def _pg_insert_numeric(connection, channel, ts, value, quality, using: str) -> int:
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
        return len(channel)
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
        inserted = cursor.rowcount
        cursor.execute(f"TRUNCATE {_STAGE}")
    return inserted
