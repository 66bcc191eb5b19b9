"""Small reads of one channel's stored numeric readings into numpy, for validation, derived channels and
alarms (which look at a batch's time span, at a reading's neighbours, or at what arrived since they last
looked)."""

from __future__ import annotations

import numpy as np
from django.db import connections

from collection.models import Sample


def read_series(
    channel_id: int,
    *,
    start: int | None = None,
    end: int | None = None,
    after: int | None = None,
    before: int | None = None,
    limit: int | None = None,
    last: bool = False,
    using: str = "default",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ts, value, quality) of a channel's readings, oldest first.

    ``start``/``end`` bound ts inclusively, ``after``/``before`` exclusively. ``limit`` keeps the first
    readings, or with ``last`` the latest ones (a reading's previous neighbours).
    """
    connection = connections[using]
    table = connection.ops.quote_name(Sample._meta.db_table)
    where, params = ["channel_id = %s"], [int(channel_id)]
    for op, bound in ((">=", start), ("<=", end), (">", after), ("<", before)):
        if bound is not None:
            where.append(f"ts {op} %s")
            params.append(int(bound))
    sql = f"SELECT ts, value, quality FROM {table} WHERE {' AND '.join(where)} ORDER BY ts {'DESC' if last else 'ASC'}"
    if limit:
        sql += f" LIMIT {int(limit)}"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = list(cursor.fetchall())  # a tuple on MariaDB
    if last:
        rows.reverse()
    if not rows:
        return np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.int16)
    ts, value, quality = zip(*rows, strict=True)
    return np.array(ts, np.int64), np.array(value, np.float64), np.array(quality, np.int16)
