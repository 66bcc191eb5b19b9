"""NetCDF4 / HDF5 exports following the CF conventions, written in bounded memory (docs/reading-data.md#netcdf).

One writer for both formats: a netCDF4 file *is* an HDF5 file, so ``hdf5`` is the same file under an
``.h5`` name (h5py, MATLAB's ``h5read``, Igor's HDF5 browser and every netCDF reader open it).

* **long** (the default): every channel on its own time axis, as stored: a variable per channel with
  its own dimension and coordinate ``<name>_time``; nothing is filled in.
* **wide**: one instrument's channels on one ``time`` axis (every distinct timestamp, as the wide CSV);
  a channel without a reading at an instant holds ``_FillValue`` there.

Each data variable carries ``units``, ``long_name``, ``valid_min``/``valid_max`` (when set),
``_FillValue`` (NaN for numbers) and the channel's reference; time is ``int64`` microseconds since
1970-01-01 UTC (``units = "microseconds since 1970-01-01 00:00:00"``, ``calendar = "proleptic_gregorian"``),
exact to the microsecond. Readings flagged with a quality other than OK are left out, as in every
export, unless ``include_flagged``: then their instants are kept and their values are ``_FillValue``,
and the flag is in the ancillary ``<name>_quality`` variable (``flag_values``/``flag_meanings``), which is
also written on ``quality``. Text channels are variable-length strings ("" where a wide table has no text).

Bounded memory: readings come from the one read path (``export._chunks`` / ``export._wide_windows``, over
``fetch.iter_chunks``) in pieces and are appended to resizable, chunked HDF5 datasets with a small chunk
cache. HDF5 writes its index at the end and seeks back, so the file is built in an anonymous temporary
file (removed by the operating system even if the process dies) and then streamed from it. The file is
written when the export is asked for, before the response starts, so a refusal (the size limit,
DAQBROKER_EXPORT_FILE_MAX_MB, or a database error) is a clean answer, not a cut download.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import h5netcdf
import h5py
import numpy as np
from django.conf import settings

from collection.choices import Quality
from collection.services import export_read
from instruments.choices import ChannelKind
from instruments.models import Channel

TIME_UNITS = "microseconds since 1970-01-01 00:00:00"
CALENDAR = "proleptic_gregorian"
READ_BYTES = 1024 * 1024  # pieces streamed from the finished file
MAX_CHUNK = 65_536  # elements per HDF5 chunk of one variable
MIN_CHUNK = 4_096
QUALITY_FILL = np.int8(-1)
FLAG_VALUES = np.array([q.value for q in Quality], dtype=np.int8)
FLAG_MEANINGS = " ".join(q.name.lower() for q in Quality)  # "ok out_of_range missing suspect"
_TEXT = h5py.string_dtype()


@dataclasses.dataclass(frozen=True)
class Names:
    variable: str
    time: str  # its dimension and coordinate: "time" (wide) or "<variable>_time" (long)
    quality: str


def variable_names(channels: Sequence[Channel], layout: str) -> dict[int, Names]:
    """Channel slugs when they are one instrument's, ``<instrument>.<channel>`` otherwise; a name already
    taken (a channel called ``time``, or ``temp_quality`` beside ``temp``) gets ``_2``, ``_3``, ..."""
    taken = {"time"} if layout == "wide" else set()

    def unique(name: str) -> str:
        candidate, n = name, 1
        while candidate in taken:
            n += 1
            candidate = f"{name}_{n}"
        taken.add(candidate)
        return candidate

    one_instrument = len({c.instrument_id for c in channels}) == 1
    names = {}
    for c in channels:
        variable = unique(c.slug if one_instrument else f"{c.instrument.slug}.{c.slug}")
        time = "time" if layout == "wide" else unique(f"{variable}_time")
        names[c.pk] = Names(variable, time, unique(f"{variable}_quality"))
    return names


class Budget:
    """The temporary file's size, estimated from what is appended (HDF5's own bookkeeping is small)."""

    def __init__(self) -> None:
        self.limit = settings.DAQBROKER_EXPORT_FILE_MAX_MB * 1_000_000
        self.used = 0

    def spend(self, data_bytes: int) -> None:
        self.used += data_bytes
        if self.used > self.limit:
            raise ValueError(
                f"the file would be larger than DAQBROKER_EXPORT_FILE_MAX_MB "
                f"({settings.DAQBROKER_EXPORT_FILE_MAX_MB} MB): export a shorter range or fewer channels, or "
                "as CSV or Parquet, which stream without a temporary file"
            )


def netcdf_export(request: export_read.ExportRequest, using: str) -> Iterator[bytes]:
    """Writes the file now (HDF5 needs to seek; a refusal is still a clean 400), in bounded memory, and
    returns its bytes in pieces."""
    file = tempfile.TemporaryFile(prefix="daqbroker-export-")  # noqa: SIM115  # closed by _stream, or below
    try:
        _write(request, file, using, Budget())
    except BaseException:
        file.close()
        raise
    return _stream(file)


def _stream(file) -> Iterator[bytes]:
    with file:
        file.seek(0)
        while piece := file.read(READ_BYTES):
            yield piece


def _write(request: export_read.ExportRequest, file, using: str, budget: Budget) -> None:
    with_quality = request.quality or request.include_flagged
    per_variable = 2 if with_quality else 1
    if request.layout == "wide":
        per_variable *= len(request.channels)
    # Every variable being appended holds at most one partly written chunk in its cache: keep them small
    # when there are many.
    chunk = max(MIN_CHUNK, min(MAX_CHUNK, 2**20 // per_variable))
    with h5netcdf.File(file, "w", rdcc_nbytes=chunk * 8 * 2) as nc:
        nc.attrs["Conventions"] = "CF-1.10"
        nc.attrs["title"] = "DAQBroker readings"
        nc.attrs["source"] = "DAQBroker"
        nc.attrs["history"] = f"{datetime.now(UTC).isoformat(timespec='seconds')} exported by DAQBroker"
        flagged = "kept as _FillValue, their flag in <name>_quality" if request.include_flagged else "left out"
        nc.attrs["comment"] = f"Readings flagged with a quality other than OK are {flagged}"
        if request.layout == "wide":
            _write_wide(request, nc, chunk, with_quality, using, budget)
        else:
            _write_long(request, nc, chunk, with_quality, using, budget)


def _time_variable(nc: h5netcdf.File, name: str, chunk: int) -> h5netcdf.Variable:
    nc.dimensions[name] = None  # unlimited: appended to as readings arrive
    variable = nc.create_variable(name, (name,), np.int64, chunks=(chunk,))
    variable.attrs.update(
        {"standard_name": "time", "long_name": "time", "axis": "T", "units": TIME_UNITS, "calendar": CALENDAR}
    )
    return variable


def _data_variables(
    nc: h5netcdf.File, names: Names, channel: Channel, chunk: int, with_quality: bool
) -> tuple[h5netcdf.Variable, h5netcdf.Variable | None]:
    text = channel.kind == ChannelKind.TEXT
    variable = nc.create_variable(
        names.variable,
        (names.time,),
        _TEXT if text else np.float64,
        chunks=(chunk,),
        fillvalue=None if text else np.nan,
    )
    attrs: dict[str, object] = {
        "long_name": f"{channel.instrument.name} {channel.name}",
        "daqbroker_channel": export_read.channel_label(channel),
        "daqbroker_channel_id": np.int64(channel.pk),
    }
    if channel.units:
        attrs["units"] = channel.units
    if not text:
        for bound in ("valid_min", "valid_max"):
            if getattr(channel, bound) is not None:
                attrs[bound] = np.float64(getattr(channel, bound))
    if channel.description:
        attrs["comment"] = channel.description
    quality = None
    if with_quality:
        attrs["ancillary_variables"] = names.quality
        quality = nc.create_variable(names.quality, (names.time,), np.int8, chunks=(chunk,), fillvalue=QUALITY_FILL)
        quality.attrs.update(
            {
                "standard_name": "status_flag",
                "long_name": f"quality of {channel.instrument.name} {channel.name}",
                "flag_values": FLAG_VALUES,
                "flag_meanings": FLAG_MEANINGS,
            }
        )
    variable.attrs.update(attrs)
    return variable, quality


def _values(channel: Channel, values: np.ndarray, quality: np.ndarray | None) -> np.ndarray:
    """What the data variable holds: NaN (the fill) where a reading is flagged; text as Python str."""
    if channel.kind == ChannelKind.TEXT:
        return np.array(["" if v is None else v for v in values.tolist()], dtype=object)
    out = np.asarray(values, dtype=np.float64)
    if quality is not None:
        flagged = quality != Quality.OK
        if flagged.any():
            out = np.where(flagged, np.nan, out)
    return out


def _write_long(
    request: export_read.ExportRequest,
    nc: h5netcdf.File,
    chunk: int,
    with_quality: bool,
    using: str,
    budget: Budget,
) -> None:
    names = variable_names(request.channels, "long")
    targets = {}
    for channel in request.channels:  # every variable declared first: an empty channel is still described
        dimension = names[channel.pk].time
        targets[channel.pk] = (
            dimension,
            _time_variable(nc, dimension, chunk),
            *_data_variables(nc, names[channel.pk], channel, chunk, with_quality),
        )
    for channel in request.channels:
        dimension, time, variable, quality = targets[channel.pk]
        size = 0
        for piece in export_read._chunks(
            channel, request.start, request.end, using, include_flagged=request.include_flagged
        ):
            n = len(piece["ts"])
            budget.spend(n * (17 if with_quality else 16))
            nc.resize_dimension(dimension, size + n)
            time[size : size + n] = piece["ts"]
            variable[size : size + n] = _values(channel, piece["value"], piece["quality"])
            if quality is not None:
                quality[size : size + n] = piece["quality"].astype(np.int8)
            size += n


def _write_wide(
    request: export_read.ExportRequest,
    nc: h5netcdf.File,
    chunk: int,
    with_quality: bool,
    using: str,
    budget: Budget,
) -> None:
    time = _time_variable(nc, "time", chunk)
    names = variable_names(request.channels, "wide")
    targets = {c.pk: _data_variables(nc, names[c.pk], c, chunk, with_quality) for c in request.channels}
    # Quality columns are read whenever flagged readings are included: they say which values become fill.
    windows = dataclasses.replace(request, quality=with_quality)
    size = 0
    for frame in export_read._wide_windows(windows, using):
        n = len(frame)
        budget.spend(n * (8 + len(request.channels) * (9 if with_quality else 8)))
        nc.resize_dimension("time", size + n)
        time[size : size + n] = frame.index.to_numpy(dtype=np.int64)
        for channel in request.channels:
            variable, quality_variable = targets[channel.pk]
            column = frame[export_read.wide_header(channel)]
            quality = None
            if with_quality:
                quality = frame[f"{channel.slug} quality"].to_numpy(dtype=np.int8, na_value=QUALITY_FILL)
            if channel.kind == ChannelKind.TEXT:
                values = np.array(
                    ["" if not isinstance(v, str) else v for v in column.tolist()],
                    dtype=object,
                )
            else:
                values = column.to_numpy(dtype=np.float64)
                if quality is not None:
                    values = np.where((quality != Quality.OK) & (quality != QUALITY_FILL), np.nan, values)
            variable[size : size + n] = values
            if quality_variable is not None and quality is not None:
                quality_variable[size : size + n] = quality
        size += n
