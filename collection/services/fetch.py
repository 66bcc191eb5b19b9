"""Engine-specific fast reads into numpy: the read-side twin of ``collection.storage``.

Every read of readings or rollup buckets goes through ``fetch_columns`` (one result set into numpy
columns) or ``iter_chunks`` (a long range in bounded pieces, by keyset pagination on the table's
primary key, so memory stays constant whatever the range holds).

* PostgreSQL: ``COPY (query) TO STDOUT (FORMAT BINARY)`` read into one bytearray and viewed as a
  structured numpy array: about 2.5x the rate of a text ``fetchall`` here (shared/PERFORMANCE.md). Every
  column is cast to int8 or float8 and float NULLs become NaN, so every row has the same width.
* SQLite and MariaDB: the driver's ``fetchall`` (C in both), split into columns.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from django.db import connections

I8, F8 = "i8", "f8"
_PG_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_PG_HEADER_LENGTH = 19  # signature, flags, header-extension length (zero)


def fetch_columns(
    sql: str, params: Sequence, columns: Sequence[tuple[str, str]], *, using: str = "default"
) -> dict[str, np.ndarray]:
    """Run ``sql`` (placeholders ``%s``) whose result columns are ``columns`` [(name, "i8" | "f8")], in that
    order, and return {name: array}. Integer columns must not be NULL; NULL in a float column is NaN."""
    connection = connections[using]
    if connection.vendor == "postgresql":
        return _pg_fetch(connection, sql, params, columns)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    # Tuples straight into a structured array (C loop; None in a float column becomes NaN), then columns.
    # A list: numpy would read mysqlclient's tuple of rows as one record.
    table = np.array(rows if isinstance(rows, list) else list(rows), dtype=[(name, kind) for name, kind in columns])
    return {name: np.ascontiguousarray(table[name]) for name, _ in columns}


def _pg_fetch(connection, sql: str, params: Sequence, columns: Sequence[tuple[str, str]]) -> dict[str, np.ndarray]:
    casts = ", ".join(
        f"q.{name}::int8" if kind == I8 else f"COALESCE(q.{name}::float8, 'NaN'::float8)" for name, kind in columns
    )
    statement = f"COPY (SELECT {casts} FROM ({sql}) AS q) TO STDOUT (FORMAT BINARY)"
    buffer = bytearray()
    connection.ensure_connection()
    with connection.cursor() as cursor, cursor.cursor.copy(statement, params or None) as copy:
        for chunk in copy:
            buffer += chunk
    return parse_pg_binary(bytes(buffer), columns)


def pg_row_dtype(columns: Sequence[tuple[str, str]]) -> np.dtype:
    fields = [("_fields", ">i2")]
    for name, kind in columns:
        fields += [(f"_{name}_length", ">i4"), (name, ">i8" if kind == I8 else ">f8")]
    return np.dtype(fields)


def parse_pg_binary(data: bytes, columns: Sequence[tuple[str, str]]) -> dict[str, np.ndarray]:
    """Columns of a complete ``COPY ... (FORMAT BINARY)`` output of fixed-width, non-NULL int8/float8 rows."""
    if not data.startswith(_PG_SIGNATURE) or int.from_bytes(data[15:19], "big") != 0:
        raise ValueError("not a PostgreSQL binary COPY stream without header extension")
    dtype = pg_row_dtype(columns)
    count = (len(data) - _PG_HEADER_LENGTH - 2) // dtype.itemsize
    rows = np.frombuffer(data, dtype=dtype, count=count, offset=_PG_HEADER_LENGTH)
    return {name: rows[name].astype(kind) for name, kind in columns}


def iter_chunks(
    table: str,
    columns: Sequence[tuple[str, str]],
    *,
    channel_id: int,
    start: int,
    end: int,
    chunk_rows: int,
    extra_where: str = "",
    key: str = "ts",
    using: str = "default",
) -> Iterator[dict[str, np.ndarray]]:
    """One channel's rows of ``table`` with ``start <= key < end``, ordered by ``key``, in chunks of at
    most ``chunk_rows``: keyset pagination on the primary key (channel_id, key), one index range each."""
    connection = connections[using]
    quoted = connection.ops.quote_name(table)
    names = ", ".join(name for name, _ in columns)
    if key not in {name for name, _ in columns}:
        raise ValueError("the keyset column must be fetched")
    where = f"channel_id = %s AND {key} >= %s AND {key} < %s" + (f" AND {extra_where}" if extra_where else "")
    sql = f"SELECT {names} FROM {quoted} WHERE {where} ORDER BY {key} LIMIT {int(chunk_rows)}"
    lower = start
    while lower < end:
        chunk = fetch_columns(sql, [channel_id, lower, end], columns, using=using)
        n = len(chunk[key])
        if n:
            yield chunk
        if n < chunk_rows:
            return
        lower = int(chunk[key][-1]) + 1
