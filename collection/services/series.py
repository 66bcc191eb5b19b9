"""Small reads of one channel's stored numeric readings into numpy, for validation, derived channels and
alarms (which look at a batch's time span, at a reading's neighbours, or at what arrived since they last
looked). A thin layer over ``collection.services.fetch``, the one read path for readings."""

from __future__ import annotations

import numpy as np
from django.db import connections

from collection.models import Sample
from collection.services import blocks
from collection.services.fetch import F8, I8, fetch_columns

_COLUMNS = (("ts", I8), ("value", F8), ("quality", I8))


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
    lo = max(x for x in (start, None if after is None else after + 1, -(2**63)) if x is not None)
    hi = min(x for x in (None if end is None else end + 1, before, 2**63 - 1) if x is not None)
    if blocks.has_blocks(channel_id, lo, hi, using=using):  # compacted readings in the range: merged read
        if last:
            merged = blocks.read_last(channel_id, hi, limit or 2**31, using=using)
            keep = merged["ts"] >= lo
            merged = {name: column[keep] for name, column in merged.items()}
        else:
            merged = blocks.read_readings(channel_id, lo, hi, limit=limit or None, text=False, using=using)
        return merged["ts"], merged["value"], merged["quality"].astype(np.int16)
    table = connections[using].ops.quote_name(Sample._meta.db_table)
    where, params = ["channel_id = %s"], [int(channel_id)]
    for op, bound in ((">=", start), ("<=", end), (">", after), ("<", before)):
        if bound is not None:
            where.append(f"ts {op} %s")
            params.append(int(bound))
    sql = f"SELECT ts, value, quality FROM {table} WHERE {' AND '.join(where)} ORDER BY ts"
    if last:
        sql += " DESC"
    if limit:
        sql += f" LIMIT {int(limit)}"
    if last:  # the latest ones, handed back oldest first like every read
        sql = f"SELECT ts, value, quality FROM ({sql}) AS latest ORDER BY ts"
    columns = fetch_columns(sql, params, _COLUMNS, using=using)
    return columns["ts"], columns["value"], columns["quality"].astype(np.int16)
