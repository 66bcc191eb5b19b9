"""CSV text of readings (collection.services.csv_text): what PostgreSQL's COPY writes, byte for byte.

Without a database: the column-wise fast path against the one-value-at-a-time path, and every text
reading back to the same double. On PostgreSQL: the formatter against the server's own text for floats,
times in every format and zone, and quoted text values."""

from __future__ import annotations

import csv
import io
import zoneinfo

import numpy as np
import pytest
from django.db import connection
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from collection.services import csv_text
from collection.services.export import _pg_time_sql
from collection.services.export_read import TIME_FORMATS

ZONES = ["UTC", "Europe/Zurich", "America/St_Johns", "Asia/Kolkata", "Europe/Amsterdam"]
TEXTS = ["plain", "with, comma", 'with "quotes"', "two\nlines", "cr\rhere", "ünïcødé ✓", "", "\\.", " spaced "]


def tricky_floats() -> np.ndarray:
    """Decimals as instruments write them, and every kind of double the fast path leaves to the slow one."""
    rng = np.random.default_rng(5)
    return np.concatenate(
        [
            np.round(rng.normal(20, 5, 3000), 3),
            np.round(rng.normal(0, 1e-3, 500), 6),
            np.round(rng.uniform(-1e7, 1e7, 500), 8),
            np.round(rng.uniform(-1e12, 1e12, 500), 3),
            np.round(rng.uniform(-1e15, 1e15, 500)),
            rng.normal(0, 1, 500),
            rng.normal(0, 1, 500) * 10.0 ** rng.integers(-30, 30, 500),
            rng.integers(-(2**62), 2**62, 500).view(np.float64),  # any bits: subnormals, NaNs, infinities
            # Even integers beyond 2**53: where Python's shortest text may lie halfway to the next double.
            (rng.integers(2**52, 2**53, 2000) * 2).astype(np.float64) * 2.0 ** rng.integers(1, 30, 2000),
            2.0 ** np.arange(-1074, 1024, 3),
            np.nextafter(2.0 ** np.arange(-1000, 1000, 7), 0),
            [0.0, -0.0, 1e15, 1e14, 999999999999999.9, 123456789012345.6, 1e-4, 9.9999e-5, 5e-324],
            [1.7976931348623157e308, -2.2250738585072014e-308],
            [np.inf, -np.inf, np.nan, 0.1 + 0.2, 2.0**53, 2.0**63, 1e7, 9999999.99999999, 12345678.123],
        ]
    )


def texts_of(words: np.ndarray) -> list[str]:
    return csv_text.lines(words)


@settings(max_examples=200)
@given(hnp.arrays(np.float64, st.integers(0, 50), elements=st.floats(width=64, allow_subnormal=True)))
def test_every_float_reads_back_to_its_bits(values):
    texts = texts_of(csv_text.floats(values))
    back = np.array([float(t.replace("Infinity", "inf")) for t in texts], dtype=np.float64)
    assert back.tobytes() == values.tobytes() or (np.isnan(values) == np.isnan(back)).all()
    assert texts == [csv_text.pg_float(v) for v in values.tolist()]  # column-wise and one by one agree


@settings(max_examples=200)
@given(st.lists(st.integers(-(10**15) + 1, 10**15 - 1), max_size=50), st.integers(0, 8))
def test_decimals_are_written_as_the_decimal(units, digits):
    """A reading that is a decimal of at most 15 digits is written as that decimal, no more digits."""
    exact = [u for u in units if abs(u) < 10 ** min(15, 7 + digits)]
    values = np.array(exact, dtype=np.int64) / 10.0**digits
    expected = []
    for unit, value in zip(exact, values.tolist(), strict=True):
        if value != 0 and abs(value) < 1e-4:
            expected.append(csv_text.pg_float(value))  # PostgreSQL writes 5e-05
            continue
        whole, fraction = divmod(abs(unit), 10**digits)
        decimals = f"{fraction:0{digits}d}".rstrip("0") if digits else ""
        expected.append(("-" if unit < 0 else "") + str(whole) + ("." + decimals if decimals else ""))
    assert texts_of(csv_text.floats(values)) == expected


def test_a_channel_of_text_is_quoted_where_needed():
    ts = 1_700_000_000_000_000 + np.arange(len(TEXTS), dtype=np.int64)
    data = csv_text.rows(ts, "station/status", np.array(TEXTS, dtype=object), None, "epoch_us", csv_text.UTC)
    rows = list(csv.reader(io.StringIO(data.decode(), newline="")))
    assert [row[2] for row in rows] == TEXTS
    assert b',"",' not in data.split(b"\n")[0] and b',""\n' in data  # empty is "" as PostgreSQL writes it


on_postgresql = pytest.mark.skipif(connection.vendor != "postgresql", reason="compares with PostgreSQL's own text")


@on_postgresql
@pytest.mark.django_db
def test_floats_are_what_postgresql_writes():
    values = tricky_floats()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT x::text FROM unnest(%s::float8[]) WITH ORDINALITY AS u(x, i) ORDER BY i", [values.tolist()]
        )
        theirs = [row[0] for row in cursor.fetchall()]
    ours = texts_of(csv_text.floats(values))
    assert [(v, o, t) for v, o, t in zip(values.tolist(), ours, theirs, strict=True) if o != t] == []


@on_postgresql
@pytest.mark.django_db
@pytest.mark.parametrize("zone", ZONES)
def test_times_are_what_postgresql_writes_in_every_format(zone):
    rng = np.random.default_rng(7)
    ts = np.concatenate(
        [
            rng.integers(-62_000_000_000_000_000, 253_000_000_000_000_000, 3000),  # years 0005 to 9987
            1_711_846_800_000_000 + np.arange(-7200, 7200, 599) * 1_000_000 + 1,  # around a change of offset
            [0, -1, 1, -1_000_000, 1_700_000_000_123_400, 946_684_800_000_000, -2_208_988_800_000_001],
        ]
    ).astype(np.int64)
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('TimeZone', %s, true), set_config('DateStyle', 'ISO', true)", [zone])
        for time_format in TIME_FORMATS:
            cursor.execute(
                f"SELECT ({_pg_time_sql(time_format)})::text FROM unnest(%s::int8[]) WITH ORDINALITY AS u(ts, i) "
                "ORDER BY i",
                [ts.tolist()],
            )
            theirs = [row[0] for row in cursor.fetchall()]
            ours = texts_of(csv_text.times(ts, time_format, zoneinfo.ZoneInfo(zone)))
            assert [(t, o, p) for t, o, p in zip(ts.tolist(), ours, theirs, strict=True) if o != p] == [], time_format


@on_postgresql
@pytest.mark.django_db
def test_text_values_are_quoted_as_postgresql_quotes_them():
    with connection.cursor() as cursor:
        buffer = io.BytesIO()
        with cursor.cursor.copy("COPY (SELECT unnest(%s::text[])) TO STDOUT (FORMAT CSV)", [TEXTS]) as copy:
            for data in copy:
                buffer.write(data)
    assert buffer.getvalue().decode() == "".join(csv_text.field(t) + "\n" for t in TEXTS)
