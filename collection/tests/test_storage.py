"""How readings are laid out on disk and on the wire, engine by engine."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from django.db import OperationalError, connection

from collection.storage import pg_binary_copy_payload

HEADER = 19  # signature (11), flags (4), header-extension length (4)
ROW = 2 + (4 + 8) + (4 + 8) + (4 + 8) + (4 + 2)  # field count, then (length, value) for 4 columns: 44 bytes
TRAILER = 2


@pytest.mark.django_db
@pytest.mark.parametrize("table", ["collection_sample", "collection_textsample"])
def test_readings_tables_are_without_rowid_on_sqlite(table):
    if connection.vendor != "sqlite":
        pytest.skip(f"WITHOUT ROWID is a SQLite table option; this run uses {connection.vendor}")
    with connection.cursor() as cursor:
        cursor.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = %s", [table])
        (create_sql,) = cursor.fetchone()
    assert create_sql.upper().rstrip().endswith("WITHOUT ROWID")
    assert 'PRIMARY KEY ("channel_id", "ts")' in create_sql
    # A rowid table answers to "rowid"; a WITHOUT ROWID table has no such column.
    with connection.cursor() as cursor, pytest.raises(OperationalError, match="no such column: rowid"):
        cursor.execute(f'SELECT rowid FROM "{table}" LIMIT 1')


@pytest.mark.parametrize("n", [0, 1, 7, 1000])
def test_pg_binary_copy_payload_length(n):
    rng = np.random.default_rng(n)
    payload = pg_binary_copy_payload(
        np.arange(n, dtype=np.int64),
        rng.integers(0, 2**62, n),
        rng.normal(size=n),
        rng.integers(0, 4, n).astype(np.int16),
    )
    assert len(payload) == 19 + 44 * n + 2


def test_pg_binary_copy_payload_layout():
    channel = np.array([7, 2**40], dtype=np.int64)
    ts = np.array([1_714_979_289_123_457, -1], dtype=np.int64)
    value = np.array([21.5, -0.0])
    quality = np.array([0, 2], dtype=np.int16)
    payload = pg_binary_copy_payload(channel, ts, value, quality)

    assert payload[:11] == b"PGCOPY\n\xff\r\n\x00"
    assert payload[11:19] == b"\x00" * 8  # flags and header-extension length
    assert payload[-2:] == b"\xff\xff"
    rows = [struct.unpack(">hiqiqidih", payload[HEADER + i * ROW : HEADER + (i + 1) * ROW]) for i in range(2)]
    assert rows[0] == (4, 8, 7, 8, 1_714_979_289_123_457, 8, 21.5, 2, 0)
    assert rows[1] == (4, 8, 2**40, 8, -1, 8, -0.0, 2, 2)
