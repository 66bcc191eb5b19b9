"""Exports of stored readings, streamed in constant memory: CSV, Parquet, or NetCDF4/HDF5 (CF conventions,
written by ``export_netcdf``), long or wide.

* **long** (default): one row per reading, ``time, channel, value[, quality]``, ordered by channel then
  time (the primary key's order, so nothing is sorted). ``channel`` is ``<instrument>/<channel>``.
* **wide**: one instrument's channels side by side, one row per distinct timestamp, one column per
  channel headed ``<slug> [<units>]``; a channel without a reading at that instant is empty. Built with
  pandas in windows: every channel is read in chunks and a window is written once every channel has
  been read past it, so memory is bounded by chunk size x channels.

Flagged readings (a quality other than OK: out of range, a missing-value sentinel) are left out, as the
plot leaves them out, unless ``include_flagged``; ``quality`` adds their flags as a column.

Time (``time_format``): ``iso`` is ISO 8601 in the chosen time zone with the offset, microseconds
trimmed of trailing zeros (``2024-05-06T09:00:00.25+02``: PostgreSQL's own ISO output with a "T");
``epoch_s`` / ``epoch_ms`` are exact decimals (6 / 3 decimals); ``epoch_us`` is the stored integer.
The original DAQBroker's formats for analysis programs: ``igor`` is seconds since 1904-01-01 (Igor Pro's
date), an exact decimal (6 decimals); ``matlab`` is a MATLAB datenum (days since year 0, 1970-01-01 being
719529) with 11 decimals, rounded half up: within half a microsecond, so it reads back to the microsecond.
Parquet keeps time as a native timestamp (µs, with the time zone) and units in the field metadata.
Values are written in their shortest exact form, so a CSV parsed back gives the stored floats bit for bit.

A long CSV is the same bytes on every engine. On PostgreSQL the hot rows of a channel are written by the
server itself, ``COPY (SELECT ...) TO STDOUT (FORMAT CSV)``, streamed to the client as it arrives; a
channel with compressed blocks in the range, and every channel on the other engines, is read in chunks
(keyset pagination on (channel_id, ts), or decoded blocks) and formatted column-wise by ``csv_text``,
which writes what PostgreSQL writes. Parquet and wide tables are read in chunks too.
"""

from __future__ import annotations

import csv
import io
import json
import zoneinfo
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from django.db import DatabaseError, connections, transaction

from collection.models import Sample, TextSample
from collection.services import blocks, csv_text
from collection.services.export_netcdf import netcdf_export
from collection.services.export_read import (  # the request and the readers, shared with export_netcdf
    DAY_US,
    FLUSH_BYTES,
    IGOR_EPOCH_US,
    MATLAB_DECIMALS,
    MATLAB_EPOCH_DAYS,
    ExportRequest,
    _chunks,
    _only_ok,
    _wide_windows,
    channel_label,
    wide_header,
)
from instruments.choices import ChannelKind
from instruments.models import Channel


def export(request: ExportRequest, *, using: str = "default") -> Iterator[bytes]:
    """The export as a stream of byte chunks, for ``StreamingHttpResponse`` or a file."""
    if request.format == "csv" and request.layout == "long":
        if connections[using].vendor == "postgresql":
            _pg_check_time_zone(request.time_zone, using)  # now, not halfway through the download
            return _flushed(_pg_long_csv(request, using))
        return _flushed(_long_csv(request, using))
    if request.format == "csv":
        return _flushed(_wide_csv(request, using))
    if request.format in ("netcdf", "hdf5"):
        return netcdf_export(request, using)
    if request.layout == "long":
        return _long_parquet(request, using)
    return _wide_parquet(request, using)


def _flushed(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """Pieces regrouped into chunks of about FLUSH_BYTES: fewer, larger writes to the socket (and a large
    piece, a formatted chunk of readings, cut to that size)."""
    pending = bytearray()
    for piece in pieces:
        pending += piece
        if len(pending) >= FLUSH_BYTES:
            view = memoryview(pending)
            cut = len(pending) - len(pending) % FLUSH_BYTES
            for start in range(0, cut, FLUSH_BYTES):
                yield bytes(view[start : start + FLUSH_BYTES])
            view.release()
            del pending[:cut]
    if pending:
        yield bytes(pending)


# --- time formatting ------------------------------------------------------------------------------


def format_times(ts: np.ndarray, time_format: str, zone: zoneinfo.ZoneInfo) -> list[str]:
    """Timestamps (µs) as text, identical to what the PostgreSQL path writes."""
    return csv_text.lines(csv_text.times(ts, time_format, zone))


def _pg_time_sql(time_format: str) -> str:
    if time_format == "epoch_us":
        return "ts"
    if time_format == "epoch_s":
        return "(ts::numeric / 1000000)::numeric(26, 6)"
    if time_format == "epoch_ms":
        return "(ts::numeric / 1000)::numeric(26, 3)"
    if time_format == "igor":
        return f"((ts + {IGOR_EPOCH_US})::numeric * 0.000001)::numeric(26, 6)"
    if time_format == "matlab":
        # Integer arithmetic first (PostgreSQL's numeric division picks its own scale), then an exact shift.
        scale = 10**MATLAB_DECIMALS
        units = f"div((ts + {MATLAB_EPOCH_DAYS * DAY_US})::numeric * {2 * scale} + {DAY_US}, {2 * DAY_US})"
        return f"({units} * 0.{'0' * (MATLAB_DECIMALS - 1)}1)::numeric(30, {MATLAB_DECIMALS})"
    # Exact: whole seconds through to_timestamp, the microseconds as an interval.
    return "replace((to_timestamp(ts / 1000000) + (ts %% 1000000) * interval '1 microsecond')::text, ' ', 'T')"


# --- long CSV -------------------------------------------------------------------------------------


def _csv_header(request: ExportRequest) -> bytes:
    return ("time,channel,value" + (",quality" if request.quality else "") + "\n").encode()


def _pg_check_time_zone(name: str, using: str) -> None:
    """PostgreSQL's time zone database may lack a zone Python's has: refuse it before streaming."""
    try:
        with transaction.atomic(using=using), connections[using].cursor() as cursor:
            cursor.execute("SELECT timezone(%s, now())", [name])
    except DatabaseError:
        raise ValueError(f"the database does not know the time zone {name!r}") from None


def _pg_long_csv(request: ExportRequest, using: str) -> Iterator[bytes]:
    connection = connections[using]
    yield _csv_header(request)
    time_sql = _pg_time_sql(request.time_format)
    quality = ", quality" if request.quality else ""
    with transaction.atomic(using=using), connection.cursor() as cursor:
        # Local to this transaction: the ISO text of a timestamptz follows the session's time zone.
        cursor.execute(
            "SELECT set_config('TimeZone', %s, true), set_config('DateStyle', 'ISO', true)", [request.time_zone]
        )
        for channel in request.channels:
            if blocks.has_blocks(channel.pk, request.start, request.end, using=using):
                yield from _channel_csv(channel, request, using)
                continue
            table = connection.ops.quote_name(
                (TextSample if channel.kind == ChannelKind.TEXT else Sample)._meta.db_table
            )
            only_ok = f" AND {_only_ok(False)}" if not request.include_flagged else ""
            statement = (
                f"COPY (SELECT {time_sql}, %s::text, value{quality} FROM {table} "
                f"WHERE channel_id = %s AND ts >= %s AND ts < %s{only_ok} ORDER BY ts) TO STDOUT (FORMAT CSV)"
            )
            params = [channel_label(channel), channel.pk, request.start, request.end]
            with cursor.cursor.copy(statement, params) as copy:
                for data in copy:
                    yield bytes(data)


def _channel_csv(channel: Channel, request: ExportRequest, using: str) -> Iterator[bytes]:
    """A channel's rows read in chunks (hot rows, or blocks and hot rows merged) and formatted here as
    PostgreSQL's ``COPY ... TO CSV`` writes them (``csv_text``), byte for byte."""
    for chunk in _chunks(channel, request.start, request.end, using, include_flagged=request.include_flagged):
        yield _rows(channel, chunk, request)


def _rows(channel: Channel, chunk: dict[str, np.ndarray], request: ExportRequest) -> bytes:
    quality = chunk["quality"] if request.quality else None
    label = channel_label(channel)
    return csv_text.rows(chunk["ts"], label, chunk["value"], quality, request.time_format, request.zone)


def _long_csv(request: ExportRequest, using: str) -> Iterator[bytes]:
    """The other engines' long CSV: the same bytes as PostgreSQL's."""
    yield _csv_header(request)
    for channel in request.channels:
        yield from _channel_csv(channel, request, using)


# --- wide tables ----------------------------------------------------------------------------------


def _wide_csv(request: ExportRequest, using: str) -> Iterator[bytes]:
    names = []
    for channel in request.channels:
        names.append(wide_header(channel))
        if request.quality:
            names.append(f"{channel.slug} quality")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(["time", *names])
    yield buffer.getvalue().encode()
    for frame in _wide_windows(request, using):
        buffer.seek(0)
        buffer.truncate()
        times = format_times(frame.index.to_numpy(dtype=np.int64), request.time_format, request.zone)
        cells: list[list] = [times]
        for name in names:
            column = frame[name]
            if name.endswith(" quality"):
                cells.append(["" if pd.isna(q) else int(q) for q in column.tolist()])
            elif column.dtype == object:
                cells.append(
                    ["" if v is None or v is pd.NA or (isinstance(v, float) and v != v) else v for v in column]
                )
            else:
                values = column.to_numpy(dtype=np.float64)
                texts = csv_text.lines(csv_text.floats(values))
                cells.append(["" if missing else text for missing, text in zip(np.isnan(values), texts, strict=True)])
        writer.writerows(zip(*cells, strict=True))
        yield buffer.getvalue().encode()


# --- Parquet --------------------------------------------------------------------------------------


class _Drain(io.RawIOBase):
    """A write-only file that hands what was written to the caller between row groups."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.position = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def _time_type(request: ExportRequest) -> pa.DataType:
    return pa.timestamp("us", tz=request.time_zone)


def _units_metadata(channels: Sequence[Channel]) -> dict[bytes | str, bytes | str]:
    return {
        b"daqbroker.units": json.dumps({channel_label(c): c.units for c in channels}).encode(),
    }


def _long_parquet(request: ExportRequest, using: str) -> Iterator[bytes]:
    has_text = any(c.kind == ChannelKind.TEXT for c in request.channels)
    fields = [
        pa.field("time", _time_type(request), nullable=False),
        pa.field("channel", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
    ]
    if has_text:
        fields.append(pa.field("text", pa.string()))
    if request.quality:
        fields.append(pa.field("quality", pa.int16(), nullable=False))
    schema = pa.schema(fields, metadata=_units_metadata(request.channels))
    sink = _Drain()
    # The ignore: _Drain is a write-only file object; the stub names only paths, IO and pyarrow's NativeFile.
    with pq.ParquetWriter(sink, schema) as writer:  # type: ignore[arg-type]
        for channel in request.channels:
            label = channel_label(channel)
            for chunk in _chunks(channel, request.start, request.end, using, include_flagged=request.include_flagged):
                n = len(chunk["ts"])
                is_text = channel.kind == ChannelKind.TEXT
                columns = {
                    "time": pa.array(chunk["ts"], type=pa.int64()).cast(_time_type(request)),
                    "channel": pa.array([label] * n, type=pa.string()),
                    "value": pa.nulls(n, pa.float64()) if is_text else pa.array(chunk["value"], type=pa.float64()),
                }
                if has_text:
                    columns["text"] = (
                        pa.array(chunk["value"].tolist(), type=pa.string()) if is_text else pa.nulls(n, pa.string())
                    )
                if request.quality:
                    columns["quality"] = pa.array(chunk["quality"], type=pa.int16())
                writer.write_table(pa.table(columns, schema=schema))
                yield sink.take()
    yield sink.take()


def _wide_parquet(request: ExportRequest, using: str) -> Iterator[bytes]:
    fields = [pa.field("time", _time_type(request), nullable=False)]
    for channel in request.channels:
        kind = pa.string() if channel.kind == ChannelKind.TEXT else pa.float64()
        metadata = {b"units": channel.units.encode(), b"channel": channel_label(channel).encode()}
        fields.append(pa.field(channel.slug, kind, metadata=metadata))
        if request.quality:
            fields.append(pa.field(f"{channel.slug} quality", pa.int16()))
    schema = pa.schema(fields, metadata=_units_metadata(request.channels))
    sink = _Drain()
    # The ignore: _Drain is a write-only file object; the stub names only paths, IO and pyarrow's NativeFile.
    with pq.ParquetWriter(sink, schema) as writer:  # type: ignore[arg-type]
        for frame in _wide_windows(request, using):
            columns = {
                "time": pa.array(frame.index.to_numpy(dtype=np.int64), type=pa.int64()).cast(_time_type(request))
            }
            for channel in request.channels:
                column = frame[wide_header(channel)]
                if channel.kind == ChannelKind.TEXT:
                    columns[channel.slug] = pa.array(
                        [None if v is None or (isinstance(v, float) and v != v) else v for v in column.tolist()],
                        type=pa.string(),
                    )
                else:
                    values = column.to_numpy(dtype=np.float64)
                    columns[channel.slug] = pa.array(values, mask=np.isnan(values), type=pa.float64())
                if request.quality:
                    q = frame[f"{channel.slug} quality"]
                    columns[f"{channel.slug} quality"] = pa.array(
                        [None if pd.isna(v) else int(v) for v in q.tolist()], type=pa.int16()
                    )
            writer.write_table(pa.table(columns, schema=schema))
            yield sink.take()
    yield sink.take()


__all__ = ["ExportRequest", "export", "format_times"]
