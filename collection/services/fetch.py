"""Engine-specific fast reads into numpy: the read-side twin of ``collection.storage``.

Every read of readings or rollup buckets goes through ``fetch_columns`` (one result set into numpy
columns) or ``iter_chunks`` (a long range in bounded pieces, by keyset pagination on the table's
primary key, so memory stays constant whatever the range holds).

* PostgreSQL: ``COPY (SELECT array_agg(column), ... FROM (query)) TO STDOUT (FORMAT BINARY)``: one row
  holding one binary array per column, viewed as numpy arrays without a Python loop (binary COPY is
  about 2.5x the rate of a text ``fetchall`` here, shared/PERFORMANCE.md; one row instead of one per
  reading saves a few µs of Python per row on top). Columns are cast to int8 or float8, float NULLs
  become NaN, so every element has the same width.
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
    # One row holding one array per column: libpq hands COPY output over a row at a time, and at a few
    # µs of Python per row that, not the server, would set the pace for a plot's 10,000 buckets.
    arrays = ", ".join(
        f"array_agg(q.{name}::int8)" if kind == I8 else f"array_agg(COALESCE(q.{name}::float8, 'NaN'::float8))"
        for name, kind in columns
    )
    statement = f"COPY (SELECT {arrays} FROM ({sql}) AS q) TO STDOUT (FORMAT BINARY)"
    buffer = bytearray()
    connection.ensure_connection()
    with connection.cursor() as cursor, cursor.cursor.copy(statement, params or None) as copy:
        for chunk in copy:
            buffer += chunk
    result = parse_pg_arrays(bytes(buffer), columns)
    # array_agg keeps the order of its ordered subquery in practice, which PostgreSQL does not promise:
    # the first column is the key (unique, ascending), so check it and sort if ever needed.
    key = result[columns[0][0]]
    if len(key) > 1 and not np.all(key[1:] > key[:-1]):
        order = np.argsort(key, kind="stable")
        result = {name: column[order] for name, column in result.items()}
    return result


def _pg_row(data: bytes, fields: int) -> list[tuple[int, int] | None]:
    """The (offset, length) of each field of the one row of a binary COPY stream (None: NULL)."""
    if not data.startswith(_PG_SIGNATURE) or int.from_bytes(data[15:19], "big") != 0:
        raise ValueError("not a PostgreSQL binary COPY stream without header extension")
    position = _PG_HEADER_LENGTH
    found = int.from_bytes(data[position : position + 2], "big", signed=True)
    if found != fields:
        raise ValueError(f"expected {fields} fields, got {found}")
    position += 2
    out: list[tuple[int, int] | None] = []
    for _ in range(fields):
        length = int.from_bytes(data[position : position + 4], "big", signed=True)
        position += 4
        out.append((position, length) if length >= 0 else None)
        position += max(length, 0)
    return out


def _pg_array(data: bytes, field: tuple[int, int] | None, kind: str) -> np.ndarray:
    """A one-dimensional int8/float8 array field without NULL elements (a NULL field: empty)."""
    if field is None:  # array_agg of no rows
        return np.empty(0, dtype=kind)
    position = field[0]
    ndim, has_nulls = (int.from_bytes(data[position + i : position + i + 4], "big") for i in (0, 4))
    if ndim != 1 or has_nulls:
        raise ValueError("expected a one-dimensional array without NULL elements")
    count = int.from_bytes(data[position + 12 : position + 16], "big")
    element = np.dtype([("length", ">i4"), ("value", ">i8" if kind == I8 else ">f8")])
    return np.frombuffer(data, dtype=element, count=count, offset=position + 20)["value"].astype(kind)


def parse_pg_arrays(data: bytes, columns: Sequence[tuple[str, str]]) -> dict[str, np.ndarray]:
    """Columns from ``COPY (SELECT array_agg(..), ..) TO STDOUT (FORMAT BINARY)``: one row of one-dimensional
    int8/float8 arrays without NULL elements (a NULL field is an empty result)."""
    fields = _pg_row(data, len(columns))
    return {name: _pg_array(data, field, kind) for (name, kind), field in zip(columns, fields, strict=True)}


def fetch_readings(sql: str, params: Sequence, *, using: str = "default") -> dict[str, np.ndarray]:
    """``fetch_columns`` of ``sql`` selecting ``ts, value, quality`` (NOT NULL: a narrow table's readings),
    ordered by ts: {"ts", "value", "quality"} as int64, float64, int64.

    On PostgreSQL, ts and value each as one bytea of their binary sends, and only the qualities that are
    not 0 (with their ts): ~30% less server time than one array of each (``array_send`` writes a length
    before every element, and most qualities are 0), where compaction spends most of its own."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return fetch_columns(sql, params, (("ts", I8), ("value", F8), ("quality", I8)), using=using)
    statement = (
        "COPY (SELECT string_agg(int8send(q.ts), ''), string_agg(float8send(q.value), ''), "
        "array_agg(q.ts) FILTER (WHERE q.quality <> 0), array_agg(q.quality::int8) FILTER (WHERE q.quality <> 0) "
        f"FROM ({sql}) AS q) TO STDOUT (FORMAT BINARY)"
    )
    buffer = bytearray()
    connection.ensure_connection()
    with connection.cursor() as cursor, cursor.cursor.copy(statement, params or None) as copy:
        for chunk in copy:
            buffer += chunk
    data = bytes(buffer)
    ts_field, value_field, flagged_ts, flagged = _pg_row(data, 4)
    ts, value = (
        np.frombuffer(data, dtype=code, count=field[1] // 8, offset=field[0]).astype(kind)
        if field is not None
        else np.empty(0, dtype=kind)
        for field, code, kind in ((ts_field, ">i8", I8), (value_field, ">f8", F8))
    )
    if len(ts) != len(value):
        raise ValueError("readings of different lengths")
    # string_agg keeps the order of its ordered subquery in practice, which PostgreSQL does not promise (see
    # _pg_fetch): check, and sort if ever needed.
    if len(ts) > 1 and not np.all(ts[1:] > ts[:-1]):
        order = np.argsort(ts, kind="stable")
        ts, value = ts[order], value[order]
    quality = np.zeros(len(ts), dtype=np.int64)
    if flagged is not None:  # each flag at its reading's place (keys are unique)
        quality[np.searchsorted(ts, _pg_array(data, flagged_ts, I8))] = _pg_array(data, flagged, I8)
    return {"ts": ts, "value": value, "quality": quality}


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
