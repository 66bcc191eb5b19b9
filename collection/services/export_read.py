"""What an export asks for (``ExportRequest``) and how it reads the readings back in bounded pieces: a
channel's readings in chunks, and wide windows of an instrument's channels side by side. Shared by the
writers of ``export`` (CSV, Parquet) and ``export_netcdf`` (NetCDF4/HDF5), which both sit on it."""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from django.db import connections

from collection.choices import Quality
from collection.models import Sample, TextSample
from collection.services import blocks
from collection.services.fetch import F8, I8, iter_chunks
from instruments.choices import ChannelKind
from instruments.models import Channel

FORMATS = ("csv", "parquet", "netcdf", "hdf5")
LAYOUTS = ("long", "wide")
TIME_FORMATS = ("iso", "epoch_s", "epoch_ms", "epoch_us", "matlab", "igor")
IGOR_EPOCH_US = 2_082_844_800 * 1_000_000  # 1904-01-01 to 1970-01-01
MATLAB_EPOCH_DAYS = 719_529  # datenum(1970, 1, 1)
MATLAB_DECIMALS = 11  # 1e-11 day = 0.864 µs: rounded, within half a microsecond of the stored time
DAY_US = 86_400_000_000
CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
    "netcdf": "application/x-netcdf",
    "hdf5": "application/x-hdf5",
}
EXTENSIONS = {"csv": "csv", "parquet": "parquet", "netcdf": "nc", "hdf5": "h5"}
MIN_TS = -(2**62)
MAX_TS = 2**62
CHUNK_ROWS = 100_000
FLUSH_BYTES = 256 * 1024
UTC = zoneinfo.ZoneInfo("UTC")


@dataclass
class ExportRequest:
    channels: Sequence[Channel]  # with .instrument loaded
    start: int = MIN_TS
    end: int = MAX_TS
    format: str = "csv"
    layout: str = "long"
    time_format: str = "iso"
    time_zone: str = "UTC"
    quality: bool = False  # add a quality column (long) or a "<slug> quality" column per channel (wide)
    # As the plot: readings flagged with a quality other than OK (range, sentinel) are left out unless asked for.
    include_flagged: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}")
        if self.time_format not in TIME_FORMATS:
            raise ValueError(f"time_format must be one of {', '.join(TIME_FORMATS)}")
        try:
            self.zone = zoneinfo.ZoneInfo(self.time_zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.time_zone!r}; use an IANA name such as Europe/Zurich") from None
        if self.end <= self.start:
            raise ValueError("the end of the range must be after its start")
        if not self.channels:
            raise ValueError("no channels to export")
        if self.layout == "wide" and len({c.instrument_id for c in self.channels}) != 1:
            raise ValueError("a wide table holds the channels of one instrument")
        if self.format in ("netcdf", "hdf5") and self.time_format != "iso":
            raise ValueError(
                "time_format applies to CSV: NetCDF and HDF5 files hold time as CF microseconds since 1970 (UTC)"
            )

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    @property
    def filename(self) -> str:
        instruments = sorted({c.instrument.slug for c in self.channels})
        stem = instruments[0] if len(instruments) == 1 else "readings"
        return f"{stem}-{self.layout}.{EXTENSIONS[self.format]}"


def channel_label(channel: Channel) -> str:
    return f"{channel.instrument.slug}/{channel.slug}"


def wide_header(channel: Channel) -> str:
    return f"{channel.slug} [{channel.units}]" if channel.units else channel.slug


_NUMERIC_COLUMNS = (("ts", I8), ("value", F8), ("quality", I8))


def _only_ok(include_flagged: bool) -> str:
    """The SQL condition leaving flagged readings out ('' when they are included)."""
    return "" if include_flagged else f"quality = {int(Quality.OK)}"


def _chunks(
    channel: Channel, start: int, end: int, using: str, chunk_rows: int = CHUNK_ROWS, include_flagged: bool = False
) -> Iterator[dict[str, np.ndarray]]:
    """A channel's readings in [start, end) in chunks: numeric ones in numpy, text ones as object arrays."""
    if blocks.has_blocks(channel.pk, start, end, using=using):
        yield from blocks.iter_readings(
            channel.pk,
            start,
            end,
            text=channel.kind == ChannelKind.TEXT,
            include_flagged=include_flagged,
            chunk_rows=chunk_rows,
            using=using,
        )
        return
    if channel.kind != ChannelKind.TEXT:
        yield from iter_chunks(
            Sample._meta.db_table,
            _NUMERIC_COLUMNS,
            channel_id=channel.pk,
            start=start,
            end=end,
            chunk_rows=chunk_rows,
            extra_where=_only_ok(include_flagged),
            using=using,
        )
        return
    connection = connections[using]
    table = connection.ops.quote_name(TextSample._meta.db_table)
    only_ok = f"AND {_only_ok(include_flagged)} " if not include_flagged else ""
    sql = (
        f"SELECT ts, value, quality FROM {table} WHERE channel_id = %s AND ts >= %s AND ts < %s {only_ok}"
        f"ORDER BY ts LIMIT {int(chunk_rows)}"
    )
    lower = start
    while lower < end:
        with connection.cursor() as cursor:
            cursor.execute(sql, [channel.pk, lower, end])
            rows = cursor.fetchall()
        if rows:
            ts, value, quality = zip(*rows, strict=True)
            yield {
                "ts": np.array(ts, dtype=np.int64),
                "value": np.array(value, dtype=object),
                "quality": np.array(quality, dtype=np.int64),
            }
        if len(rows) < chunk_rows:
            return
        lower = rows[-1][0] + 1


def _wide_windows(request: ExportRequest, using: str) -> Iterator[pd.DataFrame]:
    """DataFrames indexed by ts (µs), one column per channel (and "<slug> quality" columns on request),
    covering consecutive time windows; each window holds every reading of every channel in it."""
    channels = list(request.channels)
    # Every channel holds a chunk in memory at once: share CHUNK_ROWS among them.
    chunk_rows = max(1_000, CHUNK_ROWS // len(channels))
    sources = {
        c.pk: _chunks(c, request.start, request.end, using, chunk_rows, request.include_flagged) for c in channels
    }
    pending: dict[int, dict[str, np.ndarray] | None] = {c.pk: None for c in channels}
    exhausted: set[int] = set()
    while True:
        # Keep every buffer at least half a chunk deep, so that each window spans about a chunk of the
        # fastest channel instead of the sliver between two channels' chunk ends.
        for cid in sources:
            buffer = pending[cid]
            held = 0 if buffer is None else len(buffer["ts"])
            if cid not in exhausted and held < max(1, chunk_rows // 2):
                chunk = next(sources[cid], None)
                if chunk is None:
                    exhausted.add(cid)
                elif buffer is not None and held:
                    pending[cid] = {name: np.concatenate([buffer[name], chunk[name]]) for name in chunk}
                else:
                    pending[cid] = chunk
        live = [cid for cid in sources if cid not in exhausted]
        if not live and all(p is None or len(p["ts"]) == 0 for p in pending.values()):
            return
        # Every channel still being read has been read up to at least this instant.
        # The ignore: every live channel holds a buffer after the loop above (a channel without one is exhausted).
        horizon = min(int(pending[cid]["ts"][-1]) for cid in live) if live else MAX_TS  # type: ignore[index]
        columns: dict[str, pd.Series] = {}
        for channel in channels:
            chunk = pending[channel.pk]
            if chunk is None or len(chunk["ts"]) == 0:
                columns[wide_header(channel)] = pd.Series(
                    [], dtype=_wide_dtype(channel), index=pd.Index([], dtype=np.int64)
                )
                if request.quality:
                    columns[f"{channel.slug} quality"] = pd.Series(
                        [], dtype="Int16", index=pd.Index([], dtype=np.int64)
                    )
                continue
            cut = int(np.searchsorted(chunk["ts"], horizon, side="right"))
            index = pd.Index(chunk["ts"][:cut])
            columns[wide_header(channel)] = pd.Series(chunk["value"][:cut], index=index, dtype=_wide_dtype(channel))
            if request.quality:
                columns[f"{channel.slug} quality"] = pd.Series(chunk["quality"][:cut], index=index, dtype="Int16")
            pending[channel.pk] = {name: column[cut:] for name, column in chunk.items()}
        frame = pd.concat(columns, axis=1, sort=True)
        if len(frame):
            yield frame


def _wide_dtype(channel: Channel):
    return object if channel.kind == ChannelKind.TEXT else np.float64
