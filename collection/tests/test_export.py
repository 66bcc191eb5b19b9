"""Exports read back equal the stored rows exactly, in every format, layout, time format and time zone."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from decimal import Decimal

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import xarray as xr
from django.db import connection

from collection.choices import Quality
from collection.models import Sample, TextSample
from collection.services import SampleBatch, ingest_samples
from collection.services.blocks import compact
from collection.services.export import (
    DAY_US,
    FLUSH_BYTES,
    IGOR_EPOCH_US,
    MATLAB_EPOCH_DAYS,
    ExportRequest,
    _long_csv,
    export,
    format_times,
)
from daqbroker_agent.parsing import datetime_to_us
from instruments.choices import ChannelKind
from instruments.tests.factories import make_channel, make_instrument

pytestmark = pytest.mark.django_db

SECOND = 1_000_000
# Across the spring-forward change in Europe (2024-03-31 01:00 UTC) and before 1970 for one reading.
START = datetime_to_us(datetime(2024, 3, 30, 22, 0, tzinfo=UTC))
ODD_VALUES = [0.1 + 0.2, 1e-300, -1e300, 1.0, -0.0, 123456789.123456789, 5e-324, 1e15, 1e16, 2.5]
TEXTS = ["plain", "with, comma", 'with "quotes"', "two\nlines", "ünïcødé ✓", ""]


@pytest.fixture
def station(django_capture_on_commit_callbacks):
    instrument = make_instrument(slug="station")
    temp = make_channel(instrument, slug="temp", units="degC", valid_min=-1e301, valid_max=1e301)
    wind = make_channel(instrument, slug="wind", units="m/s")
    status = make_channel(instrument, slug="status", kind=ChannelKind.TEXT)
    rng = np.random.default_rng(11)
    ts = np.unique(START + rng.integers(0, 6 * 3600 * SECOND, size=700))
    values = rng.normal(10, 5, size=len(ts))
    values[: len(ODD_VALUES)] = ODD_VALUES
    values[20] = 5e301  # out of range: flagged
    wind_ts = np.r_[ts[::3], ts[-1] + 17, -123_456_789]  # shares some instants with temp, plus its own
    rows = (
        [(temp.pk, int(t), float(v)) for t, v in zip(ts, values, strict=True)]
        + [(wind.pk, int(t), float(i)) for i, t in enumerate(wind_ts)]
        + [(status.pk, int(t), TEXTS[i % len(TEXTS)]) for i, t in enumerate(ts[::5])]
    )
    with django_capture_on_commit_callbacks(execute=True):
        ingest_samples(SampleBatch.from_rows(rows))
    for channel in (temp, wind, status):
        channel.refresh_from_db()
    return instrument, [temp, wind, status]


def stored_rows(channels) -> list[tuple[str, int, object, int]]:
    rows = []
    for channel in channels:
        model = TextSample if channel.kind == ChannelKind.TEXT else Sample
        for ts, value, quality in (
            model.objects.filter(channel=channel).order_by("ts").values_list("ts", "value", "quality")
        ):
            rows.append((f"station/{channel.slug}", ts, value, quality))
    return rows


def body(request: ExportRequest) -> bytes:
    return b"".join(export(request))


def parse_time(text: str, time_format: str) -> int:
    if time_format == "iso":
        return datetime_to_us(datetime.fromisoformat(text))
    if time_format == "igor":
        return int(Decimal(text) * 1_000_000) - IGOR_EPOCH_US
    if time_format == "matlab":  # 11 decimals of a day: within half a microsecond
        return int(((Decimal(text) - MATLAB_EPOCH_DAYS) * DAY_US).to_integral_value())
    scale = {"epoch_s": 1_000_000, "epoch_ms": 1_000, "epoch_us": 1}[time_format]
    return int(Decimal(text) * scale)


def parse_value(text: str, channel: str) -> object:
    return text if channel == "station/status" else float(text)


def same(a, b) -> bool:
    """Equal, and for floats equal bit for bit (so -0.0 is not 0.0)."""
    if isinstance(a, float) and isinstance(b, float):
        return np.float64(a).tobytes() == np.float64(b).tobytes()
    return a == b


@pytest.mark.parametrize(
    ("time_format", "zone"),
    [
        ("iso", "UTC"),
        ("iso", "Europe/Zurich"),
        ("iso", "Asia/Kolkata"),
        ("epoch_s", "UTC"),
        ("epoch_ms", "UTC"),
        ("epoch_us", "UTC"),
        ("matlab", "UTC"),
        ("igor", "UTC"),
    ],
)
def test_long_csv_read_back_equals_the_stored_rows(station, time_format, zone):
    _, channels = station
    data = body(
        ExportRequest(channels=channels, time_format=time_format, time_zone=zone, quality=True, include_flagged=True)
    )
    reader = csv.reader(io.StringIO(data.decode(), newline=""))
    assert next(reader) == ["time", "channel", "value", "quality"]
    got = [(row[1], parse_time(row[0], time_format), parse_value(row[2], row[1]), int(row[3])) for row in reader]
    want = stored_rows(channels)
    assert len(got) == len(want) == 700 + 236 + 140
    assert all(
        len(g) == len(w) and all(same(x, y) for x, y in zip(g, w, strict=True)) for g, w in zip(got, want, strict=True)
    )


@pytest.mark.parametrize("time_format", ["iso", "epoch_s", "epoch_ms", "epoch_us", "matlab", "igor"])
def test_a_compacted_channel_exports_the_same_bytes(station, time_format):
    """On PostgreSQL the hot rows are written by COPY and compacted ones by csv_text: the same file, odd
    floats, text that needs quoting and zones with half-hour offsets included."""
    _, channels = station
    requests = [
        ExportRequest(channels=channels, time_format=time_format, time_zone=zone, quality=quality, include_flagged=True)
        for zone, quality in (("UTC", True), ("America/St_Johns", False))
    ]
    before = [body(request) for request in requests]
    while compact(2**62).windows:
        pass
    assert not Sample.objects.exists() and not TextSample.objects.exists()
    assert [body(request) for request in requests] == before


def test_iso_times_carry_the_zone_offset(station):
    _, channels = station
    data = body(ExportRequest(channels=channels[:1], time_zone="Europe/Zurich")).decode()
    offsets = {line.split(",")[0][-3:] for line in data.splitlines()[1:]}
    assert offsets == {"+01", "+02"}  # winter and summer time
    assert data.splitlines()[0] == "time,channel,value"


def test_a_time_range_selects_readings(station):
    _, channels = station
    start, end = START + 3600 * SECOND, START + 7200 * SECOND
    data = body(ExportRequest(channels=channels[:1], start=start, end=end, time_format="epoch_us"))
    times = [int(line.split(",")[0]) for line in data.decode().splitlines()[1:]]
    stored = list(Sample.objects.filter(channel=channels[0], ts__gte=start, ts__lt=end).values_list("ts", flat=True))
    assert times == sorted(stored) and times


def test_long_parquet_read_back_equals_the_stored_rows(station):
    _, channels = station
    table = pq.read_table(
        io.BytesIO(body(ExportRequest(channels=channels, format="parquet", quality=True, include_flagged=True)))
    )
    assert table.schema.field("time").type.tz == "UTC"
    columns = {name: table.column(name).to_pylist() for name in ("channel", "value", "text", "quality")}
    times = table.column("time").cast("int64").to_pylist()
    got = [
        (c, t, x if c == "station/status" else v, q)
        for c, t, v, x, q in zip(
            columns["channel"], times, columns["value"], columns["text"], columns["quality"], strict=True
        )
    ]
    want = stored_rows(channels)
    assert len(got) == len(want)
    assert all(all(same(x, y) for x, y in zip(g, w, strict=True)) for g, w in zip(got, want, strict=True))
    assert b"degC" in table.schema.metadata[b"daqbroker.units"]


def wide_expected(channels) -> pd.DataFrame:
    columns = {}
    for channel in channels:
        model = TextSample if channel.kind == ChannelKind.TEXT else Sample
        pairs = list(model.objects.filter(channel=channel).order_by("ts").values_list("ts", "value"))
        columns[channel.slug] = pd.Series([v for _, v in pairs], index=[t for t, _ in pairs], dtype=object)
    return pd.concat(columns, axis=1, sort=True)


def test_wide_csv_has_one_column_per_channel_with_units(station):
    _, channels = station
    data = body(ExportRequest(channels=channels, layout="wide", time_format="epoch_us", include_flagged=True))
    reader = csv.reader(io.StringIO(data.decode(), newline=""))
    assert next(reader) == ["time", "temp [degC]", "wind [m/s]", "status"]
    expected = wide_expected(channels)
    rows = list(reader)
    assert [int(r[0]) for r in rows] == expected.index.tolist()
    for row, (_, want) in zip(rows, expected.iterrows(), strict=True):
        for cell, slug in zip(row[1:], ["temp", "wind", "status"], strict=True):
            value = want[slug]
            if value is None or (isinstance(value, float) and np.isnan(value)):
                assert cell == ""
            elif slug == "status":
                assert cell == value
            else:
                assert same(float(cell), value)


def test_wide_parquet_read_back_equals_the_stored_rows(station):
    _, channels = station
    table = pq.read_table(
        io.BytesIO(
            body(ExportRequest(channels=channels, layout="wide", format="parquet", quality=True, include_flagged=True))
        )
    )
    assert table.schema.field("temp").metadata[b"units"] == b"degC"
    assert table.column_names == ["time", "temp", "temp quality", "wind", "wind quality", "status", "status quality"]
    expected = wide_expected(channels)
    times = table.column("time").cast("int64").to_pylist()
    assert times == expected.index.tolist()
    for slug in ("temp", "wind", "status"):
        got = table.column(slug).to_pylist()
        want = [None if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in expected[slug]]
        assert all(same(g, w) for g, w in zip(got, want, strict=True)), slug
    assert table.column("temp quality").to_pylist().count(1) == 1  # the out-of-range reading


def test_a_large_export_is_streamed_in_pieces(django_capture_on_commit_callbacks):
    channel = make_channel(make_instrument(slug="station"), slug="fast")
    ts = START + np.arange(60_000) * SECOND
    with django_capture_on_commit_callbacks(execute=True):
        ingest_samples(SampleBatch(np.full(len(ts), channel.pk), ts, np.arange(60_000) / 7))
    pieces = list(export(ExportRequest(channels=[channel])))
    assert len(pieces) > 3 and max(len(p) for p in pieces) < 3 * FLUSH_BYTES
    assert b"".join(pieces).count(b"\n") == 60_001


def test_time_formatting_matches_on_every_path(station):
    """The database-side (PostgreSQL COPY) and Python-side formatters write the same time text."""
    _, channels = station
    for zone in ("UTC", "Europe/Zurich", "America/St_Johns"):
        for time_format in ("iso", "epoch_s", "epoch_ms", "epoch_us", "matlab", "igor"):
            request = ExportRequest(channels=channels[1:2], time_format=time_format, time_zone=zone)
            python_side = [line.split(",")[0] for line in b"".join(_long_csv(request, "default")).decode().splitlines()]
            if connection.vendor == "postgresql":
                database_side = [line.split(",")[0] for line in body(request).decode().splitlines()]
                assert database_side == python_side, (zone, time_format)
            ts = np.array(sorted(Sample.objects.filter(channel=channels[1]).values_list("ts", flat=True)))
            assert python_side[1:] == format_times(ts, time_format, request.zone)
            assert [parse_time(t, time_format) for t in python_side[1:]] == ts.tolist()


def test_bad_requests_are_refused(station):
    _, channels = station
    other = make_channel(make_instrument())
    for kwargs in (
        {"format": "xlsx"},
        {"layout": "tall"},
        {"time_format": "excel"},
        {"format": "netcdf", "time_format": "matlab"},  # CF time only
        {"time_zone": "Mars/Olympus"},
        {"start": 10, "end": 5},
    ):
        with pytest.raises(ValueError):
            ExportRequest(channels=channels, **kwargs)
    with pytest.raises(ValueError, match="one instrument"):
        ExportRequest(channels=[channels[0], other], layout="wide")


def test_an_abandoned_download_leaves_the_connection_usable(django_capture_on_commit_callbacks):
    """A client that hangs up mid-export closes the stream: the database connection must still work."""
    channel = make_channel(make_instrument(slug="station"), slug="fast")
    ts = START + np.arange(200_000) * SECOND
    with django_capture_on_commit_callbacks(execute=True):
        ingest_samples(SampleBatch(np.full(len(ts), channel.pk), ts, np.arange(200_000) / 3))
    for fmt, layout in (("csv", "long"), ("parquet", "long"), ("csv", "wide"), ("netcdf", "long")):
        stream = export(ExportRequest(channels=[channel], format=fmt, layout=layout))
        next(stream)
        stream.close()
        assert Sample.objects.filter(channel=channel).count() == 200_000, (fmt, layout)


def test_a_wide_table_of_many_channels_is_read_in_windows(django_capture_on_commit_callbacks):
    """Each channel's share of the chunk is small here (1,000 rows): windows must still line up exactly."""
    instrument = make_instrument(slug="station")
    channels = [make_channel(instrument, slug=f"c{i:03d}") for i in range(120)]
    rng = np.random.default_rng(5)
    rows = []
    for i, channel in enumerate(channels):
        step = 1 + i % 7  # each channel its own rate: windows end at different instants
        ts = START + np.arange(0, 3000 * step, step)[: 1500 + 10 * i] * SECOND
        rows += [(channel.pk, int(t), float(v)) for t, v in zip(ts, rng.normal(size=len(ts)), strict=True)]
    with django_capture_on_commit_callbacks(execute=True):
        ingest_samples(SampleBatch.from_rows(rows))
    table = pq.read_table(io.BytesIO(body(ExportRequest(channels=channels, layout="wide", format="parquet"))))
    times = table.column("time").cast("int64").to_pylist()
    assert times == sorted(set(times))
    for channel in channels[::17]:
        pairs = list(Sample.objects.filter(channel=channel).order_by("ts").values_list("ts", "value"))
        column = dict(zip(times, table.column(channel.slug).to_pylist(), strict=True))
        assert [(t, column[t]) for t, _ in pairs] == pairs
        assert sum(v is not None for v in column.values()) == len(pairs)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL formats the times itself")
def test_a_zone_the_database_does_not_know_is_refused_before_streaming(station):
    from collection.services.export import _pg_check_time_zone

    _pg_check_time_zone("Europe/Zurich", "default")
    with pytest.raises(ValueError, match="does not know"):
        _pg_check_time_zone("Mars/Olympus_Mons", "default")
    assert Sample.objects.exists()  # the connection is still usable after the refusal


# --- exports match the plot: flagged readings left out unless asked for (issue 15, point 6) ---------


@pytest.mark.parametrize(
    ("fmt", "layout"), [("csv", "long"), ("csv", "wide"), ("parquet", "long"), ("parquet", "wide")]
)
def test_flagged_readings_are_left_out_as_the_plot_leaves_them_out_unless_asked_for(station, fmt, layout):
    _, channels = station
    temp = channels[0]
    flagged = Sample.objects.filter(channel=temp).exclude(quality=Quality.OK)
    assert list(flagged.values_list("value", flat=True)) == [5e301]  # the out-of-range reading
    ok_count = Sample.objects.filter(channel=temp, quality=Quality.OK).count()

    def exported(**options) -> tuple[list[float], list[int]]:
        data = body(ExportRequest(channels=[temp], format=fmt, layout=layout, time_format="epoch_us", **options))
        if fmt == "csv":
            rows = list(csv.reader(io.StringIO(data.decode(), newline="")))[1:]
            value_at = 2 if layout == "long" else 1
            values = [float(row[value_at]) for row in rows]
            qualities = [int(row[-1]) for row in rows] if options.get("quality") else []
            return values, qualities
        table = pq.read_table(io.BytesIO(data))
        values = table.column("value" if layout == "long" else "temp").to_pylist()
        quality = "quality" if layout == "long" else "temp quality"
        return values, table.column(quality).to_pylist() if options.get("quality") else []

    values, _ = exported()
    assert len(values) == ok_count and 5e301 not in values
    values, qualities = exported(quality=True)
    assert len(values) == ok_count and set(qualities) == {Quality.OK}
    values, qualities = exported(include_flagged=True, quality=True)
    assert len(values) == ok_count + 1 and 5e301 in values
    assert qualities[values.index(5e301)] == Quality.OUT_OF_RANGE and qualities.count(Quality.OK) == ok_count


# --- the original DAQBroker's time formats: MATLAB datenum, Igor seconds since 1904 ----------------


@pytest.mark.engine_independent  # the writer is; the read path under it is tested on every engine
def test_matlab_and_igor_times_are_the_programs_own_numbers():
    instants = [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2000, 1, 1, 12, tzinfo=UTC),
        datetime(1903, 12, 31, tzinfo=UTC),
    ]
    ts = np.array([datetime_to_us(d) for d in instants] + [54, 1], dtype=np.int64)
    # MATLAB: datenum(2000, 1, 1, 12, 0, 0) = 730486.5; 54 µs is exactly half a unit of the 11th decimal
    # (rounded up), 1 µs is 1.157e-11 day.
    assert format_times(ts, "matlab", UTC) == [
        "719529.00000000000",
        "730486.50000000000",
        "695421.00000000000",  # datenum(1904, 1, 1) = 695422
        "719529.00000000063",
        "719529.00000000001",
    ]
    # Igor Pro: seconds since 1904-01-01; a day before it is negative.
    assert format_times(ts, "igor", UTC) == [
        "2082844800.000000",
        "3029572800.000000",
        "-86400.000000",
        "2082844800.000054",
        "2082844800.000001",
    ]


# --- NetCDF4 / HDF5 (CF conventions), read back with xarray ---------------------------------------


def open_dataset(request: ExportRequest, **options) -> xr.Dataset:
    return xr.open_dataset(io.BytesIO(body(request)), engine="h5netcdf", **options).load()


def stored(channel, *, ok_only: bool = False) -> tuple[np.ndarray, list, np.ndarray]:
    model = TextSample if channel.kind == ChannelKind.TEXT else Sample
    rows = model.objects.filter(channel=channel).order_by("ts")
    if ok_only:
        rows = rows.filter(quality=Quality.OK)
    ts, values, quality = zip(*rows.values_list("ts", "value", "quality"), strict=True)
    return np.array(ts, dtype=np.int64), list(values), np.array(quality)


def as_us(times: xr.DataArray) -> list[int]:
    return times.values.astype("datetime64[us]").astype(np.int64).tolist()


def test_netcdf_long_read_back_equals_the_stored_rows_with_flagged_readings_as_fill(station):
    _, channels = station
    status = channels[2]
    ds = open_dataset(ExportRequest(channels=channels, format="netcdf", include_flagged=True))
    assert ds.attrs["Conventions"] == "CF-1.10"
    for channel in channels:
        ts, values, quality = stored(channel)
        variable = ds[channel.slug]
        assert variable.dims == (f"{channel.slug}_time",)
        assert as_us(variable[f"{channel.slug}_time"]) == ts.tolist()
        assert variable.attrs["long_name"] == f"{channel.instrument.name} {channel.name}"
        assert variable.attrs["daqbroker_channel"] == f"station/{channel.slug}"
        assert ds[f"{channel.slug}_quality"].values.tolist() == quality.tolist()
        if channel == status:
            assert variable.values.tolist() == values
            continue
        want = [np.nan if q else v for v, q in zip(values, quality, strict=True)]
        got = variable.values.tolist()
        assert all(same(g, w) or (np.isnan(g) and np.isnan(w)) for g, w in zip(got, want, strict=True))
    assert ds["temp"].attrs["units"] == "degC" and ds["wind"].attrs["units"] == "m/s"
    assert "units" not in ds["status"].attrs
    assert np.isnan(ds["temp"].encoding["_FillValue"])
    assert int(np.isnan(ds["temp"].values).sum()) == 1  # the out-of-range reading, as the fill
    assert ds["temp"].attrs["ancillary_variables"] == "temp_quality"
    assert ds["temp_quality"].attrs["flag_meanings"] == "ok out_of_range missing suspect"
    time = ds["temp_time"]
    assert time.encoding["units"] == "microseconds since 1970-01-01 00:00:00"
    assert time.encoding["calendar"] == "proleptic_gregorian" and time.encoding["dtype"] == np.int64
    assert as_us(ds["wind_time"])[0] == -123_456_789  # before 1970, to the microsecond


@pytest.mark.engine_independent  # the writer is; the read path under it is tested on every engine
def test_netcdf_leaves_flagged_readings_out_by_default(station):
    _, channels = station
    ds = open_dataset(ExportRequest(channels=channels[:1], format="netcdf"))
    ts, values, _ = stored(channels[0], ok_only=True)
    assert as_us(ds["temp_time"]) == ts.tolist()
    assert all(same(g, w) for g, w in zip(ds["temp"].values.tolist(), values, strict=True))
    assert "temp_quality" not in ds and not np.isnan(ds["temp"].values).any()


@pytest.mark.engine_independent  # the writer is; the read path under it is tested on every engine
def test_hdf5_wide_puts_channels_on_one_time_axis_with_fill_where_one_has_no_reading(station):
    _, channels = station
    request = ExportRequest(channels=channels, format="hdf5", layout="wide", include_flagged=True)
    assert request.filename == "station-wide.h5" and request.content_type == "application/x-hdf5"
    data = body(request)
    import h5py  # an HDF5 file to any HDF5 reader, not only to netCDF ones

    with h5py.File(io.BytesIO(data), "r") as h5:
        assert h5["temp"].attrs["units"] == b"degC" or h5["temp"].attrs["units"] == "degC"
        assert h5["time"].dtype == np.int64
    ds = xr.open_dataset(io.BytesIO(data), engine="h5netcdf").load()
    expected = wide_expected(channels)
    assert as_us(ds["time"]) == expected.index.tolist()
    for channel in channels:
        ts, values, quality = stored(channel)
        got = dict(zip(as_us(ds["time"]), ds[channel.slug].values.tolist(), strict=True))
        flags = dict(zip(as_us(ds["time"]), ds[f"{channel.slug}_quality"].values.tolist(), strict=True))
        for t, v, q in zip(ts.tolist(), values, quality.tolist(), strict=True):
            if channel.kind == ChannelKind.TEXT or not q:
                assert same(got[t], v)
            else:
                assert np.isnan(got[t])
            assert flags[t] == q
        absent = set(got) - set(ts.tolist())
        assert absent  # every channel misses some of the shared instants
        if channel.kind == ChannelKind.TEXT:
            assert {got[t] for t in absent} == {""}
        else:
            assert all(np.isnan(got[t]) for t in absent)
        assert all(np.isnan(flags[t]) for t in absent)  # the quality's fill (-1), masked
    raw = xr.open_dataset(io.BytesIO(data), engine="h5netcdf", mask_and_scale=False).load()
    assert raw["wind_quality"].attrs["_FillValue"] == -1 and -1 in raw["wind_quality"].values
    assert np.isnan(raw["wind"].attrs["_FillValue"])


@pytest.mark.engine_independent  # the writer is; the read path under it is tested on every engine
def test_netcdf_of_several_instruments_names_variables_instrument_dot_channel(station):
    _, channels = station
    other = make_channel(make_instrument(slug="roof"), slug="temp", units="K")
    ds = open_dataset(ExportRequest(channels=[channels[0], other], format="netcdf"))
    assert set(ds.data_vars) == {"station.temp", "roof.temp"}
    assert ds["roof.temp"].size == 0 and ds["roof.temp"].attrs["units"] == "K"


@pytest.mark.engine_independent  # the writer is; the read path under it is tested on every engine
def test_netcdf_names_never_clash(django_capture_on_commit_callbacks):
    """A channel called "time", or "temp_quality" beside "temp", gets a suffix instead of breaking the file."""
    instrument = make_instrument(slug="station")
    channels = [make_channel(instrument, slug=slug) for slug in ("time", "temp", "temp_quality", "temp_time")]
    with django_capture_on_commit_callbacks(execute=True):
        ingest_samples(SampleBatch.from_rows([(c.pk, START + i, float(i)) for i, c in enumerate(channels)]))
    for layout in ("wide", "long"):
        ds = open_dataset(ExportRequest(channels=channels, format="netcdf", layout=layout, quality=True))
        by_channel = {
            ds[name].attrs["daqbroker_channel"]: name for name in ds.data_vars if "daqbroker_channel" in ds[name].attrs
        }
        assert len(by_channel) == 4, layout
        for i, channel in enumerate(channels):
            values = ds[by_channel[f"station/{channel.slug}"]].values
            assert values[~np.isnan(values)].tolist() == [float(i)], (layout, channel.slug)


@pytest.mark.engine_independent
def test_a_netcdf_export_larger_than_the_limit_is_refused_before_anything_is_sent(station, settings):
    _, channels = station
    settings.DAQBROKER_EXPORT_FILE_MAX_MB = 0.01  # 10 kB: the fixture's ~700 temp readings are ~11 kB
    with pytest.raises(ValueError, match="DAQBROKER_EXPORT_FILE_MAX_MB"):
        export(ExportRequest(channels=channels, format="hdf5"))  # refused at the call, not while streaming
    settings.DAQBROKER_EXPORT_FILE_MAX_MB = 1
    assert body(ExportRequest(channels=channels, format="hdf5"))[:8] == b"\x89HDF\r\n\x1a\n"
