"""Decoding ingest request bodies (JSON rows, JSON columns, CSV) into a ``SampleBatch``.

This is deliberately not a DRF serializer: serializers validate readings at a few percent of the
database's load rate (shared/PERFORMANCE.md). Bodies are decoded with orjson or pandas and checked in
columns with numpy; ``ingest_samples`` then does the per-channel checks. Problems with the body as a
whole raise :class:`PayloadError` (a 400/413 for the whole request); problems with single readings
become :class:`Rejection` entries carrying their index in the body, while the rest is stored.

Accepted bodies (``Content-Type: application/json``)::

    [{"channel": "station-1/air-temperature", "t": "2026-11-27T10:00:00Z", "v": 12.5}, ...]
    {"batch_id": "...", "readings": [ ...rows as above... ]}
    {"batch_id": "...", "channels": {"station-1/air-temperature": {"t": [...], "v": [...]}, "17": {...}}}

and ``Content-Type: text/csv`` with a header ``channel,t,v`` (``batch_id`` then comes from the query
string). A channel is ``instrument-slug/channel-slug`` or its numeric id. A time is ISO 8601 (naive
means UTC) or a number of seconds, milliseconds or microseconds since 1970: numbers below 1e11 are
seconds, below 1e14 milliseconds, otherwise microseconds (or say so with ``time_unit``: s, ms, us).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import orjson
import pandas as pd

from collection.services.ingest import UNKNOWN_CHANNEL, Rejection, SampleBatch, raw_text

__all__ = ["UNKNOWN_CHANNEL", "DecodedPayload", "PayloadError", "decode_ingest_body", "iter_slug_pairs"]
TIME_UNITS = {"s": 1_000_000, "ms": 1_000, "us": 1}
MAX_BATCH_ID = 100


class PayloadError(ValueError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class DecodedPayload:
    batch: SampleBatch
    rejections: list[Rejection]
    batch_id: str
    received: int
    refs: list  # each reading's channel as the sender named it


# Resolves channel references ("inst/chan") to ids; returns {ref: id} for the ones that exist.
Resolver = Callable[[set[str]], dict[str, int]]


def decode_ingest_body(
    body: bytes,
    content_type: str,
    *,
    max_readings: int,
    resolve: Resolver,
    batch_id: str = "",
    time_unit: str = "",
    csv_max_header_bytes: int = 1024,
    csv_max_columns: int = 16,
) -> DecodedPayload:
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type in ("application/json", ""):
        refs, times, values, body_batch_id, body_unit = _columns_from_json(body, max_readings)
    elif media_type in ("text/csv", "application/csv"):
        refs, times, values = _columns_from_csv(body, max_readings, csv_max_header_bytes, csv_max_columns)
        body_batch_id, body_unit = "", ""
    else:
        raise PayloadError(f"unsupported content type {media_type!r}; send application/json or text/csv", status=415)
    batch_id = _check_batch_id(body_batch_id or batch_id)
    unit = _check_time_unit(body_unit or time_unit)
    received = len(refs)
    if received == 0:
        raise PayloadError("the batch holds no readings")

    rejections: list[Rejection] = []
    channel_ids, channel_ok = _resolve_channels(refs, resolve)
    ts, ts_ok, ts_reasons = _parse_times(times, unit)
    value = _value_array(values)
    for i in np.nonzero(~channel_ok)[0].tolist():
        rejections.append(_rejection(UNKNOWN_CHANNEL, i, refs, times, values, unwritable=True))
    for i in np.nonzero(channel_ok & ~ts_ok)[0].tolist():
        rejections.append(_rejection(ts_reasons.get(i, "timestamp is not a valid time"), i, refs, times, values))
    keep = np.nonzero(channel_ok & ts_ok)[0]
    batch = SampleBatch(channel_ids[keep], ts[keep], value[keep], position=keep)
    return DecodedPayload(batch=batch, rejections=rejections, batch_id=batch_id, received=received, refs=refs)


def _rejection(reason: str, i: int, refs, times, values, *, unwritable: bool = False) -> Rejection:
    return Rejection(
        reason=reason,
        index=i,
        channel_ref=raw_text(refs[i], 300),
        raw_time=raw_text(times[i], 100),
        raw_value=raw_text(values[i]),
        unwritable=unwritable,
    )


def _check_batch_id(batch_id) -> str:
    if batch_id in (None, ""):
        return ""
    if not isinstance(batch_id, str) or len(batch_id) > MAX_BATCH_ID or not batch_id.isprintable():
        raise PayloadError(f"batch_id must be printable text of at most {MAX_BATCH_ID} characters")
    return batch_id


def _check_time_unit(unit) -> str:
    if unit in (None, ""):
        return ""
    if unit not in TIME_UNITS:
        raise PayloadError(f"time_unit must be one of {', '.join(TIME_UNITS)}")
    return unit


def _too_many(count: int, limit: int) -> PayloadError:
    return PayloadError(f"the batch holds {count:,} readings; the limit is {limit:,} per request", status=413)


def _columns_from_json(body: bytes, max_readings: int):
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"the body is not valid JSON: {exc}") from None
    batch_id, unit = "", ""
    if isinstance(data, dict):
        batch_id, unit = data.get("batch_id", ""), data.get("time_unit", "")
        unknown = set(data) - {"batch_id", "time_unit", "readings", "channels"}
        if unknown:
            raise PayloadError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; expected readings or channels")
        if ("readings" in data) == ("channels" in data):
            raise PayloadError('the body needs exactly one of "readings" (rows) or "channels" (columns)')
        if "channels" in data:
            return (*_columns_from_channel_map(data["channels"], max_readings), batch_id, unit)
        data = data["readings"]
    if not isinstance(data, list):
        raise PayloadError("the body must be a list of readings or an object with readings or channels")
    if len(data) > max_readings:
        raise _too_many(len(data), max_readings)
    refs, times, values = [], [], []
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise PayloadError(f"reading {i} is not an object with channel, t and v")
        try:
            refs.append(row["channel"])
            times.append(row["t"])
            values.append(row["v"])
        except KeyError as exc:
            raise PayloadError(f"reading {i} has no {exc.args[0]!r}") from None
    return refs, times, values, batch_id, unit


def _columns_from_channel_map(channels, max_readings: int):
    if not isinstance(channels, dict):
        raise PayloadError('"channels" must map each channel to {"t": [...], "v": [...]}')
    refs: list = []
    times: list = []
    values: list = []
    for ref, series in channels.items():
        if (
            not isinstance(series, dict)
            or not isinstance(series.get("t"), list)
            or not isinstance(series.get("v"), list)
        ):
            raise PayloadError(f'channel {ref!r} must be an object {{"t": [...], "v": [...]}}')
        if len(series["t"]) != len(series["v"]):
            raise PayloadError(f"channel {ref!r} has {len(series['t'])} times but {len(series['v'])} values")
        if len(times) + len(series["t"]) > max_readings:
            raise _too_many(len(times) + sum(len(s.get("t", ())) for s in channels.values()), max_readings)
        refs.extend([ref] * len(series["t"]))
        times.extend(series["t"])
        values.extend(series["v"])
    return refs, times, values


def _check_csv_header(body: bytes, max_header_bytes: int, max_columns: int) -> int:
    """Refuse a CSV whose header line is too long or too wide, before pandas sees it; its width.

    pandas builds a column per header field: a 1,000,000-column header in 8 MB costs gigabytes and a
    minute and a half of CPU.
    """
    end = body.find(b"\n", 0, max_header_bytes + 1)
    if end < 0 and len(body) > max_header_bytes:
        raise PayloadError(
            f"the CSV header line is longer than {max_header_bytes:,} bytes "
            "(DAQBROKER_INGEST_CSV_MAX_HEADER_BYTES); expected channel,t,v"
        )
    columns = _widest_csv_row(body if end < 0 else body[:end])
    if columns > max_columns:
        raise PayloadError(
            f"the CSV header has {columns:,} columns; the limit is {max_columns:,} "
            "(DAQBROKER_INGEST_CSV_MAX_COLUMNS); expected channel,t,v"
        )
    return columns


def _widest_csv_row(body: bytes, piece_bytes: int = 1 << 20) -> int:
    """Fields in the widest row of a CSV body (RFC 4180 quotes), in linear time and bounded memory.

    pandas' parser is quadratic in the width of a row that is wider than its header (200,000 trailing
    commas on one row took minutes): every row is measured first. Delimiters and line ends inside
    quotes do not count; the quote state and the open row are carried from piece to piece.
    """
    data = np.frombuffer(body, dtype=np.uint8)
    has_quotes = b'"' in body
    quoted = 0  # quotes seen so far, modulo 2
    open_row = 0  # unquoted commas of the row still open at the start of the piece
    widest = 0
    for start in range(0, len(data), piece_bytes):
        part = data[start : start + piece_bytes]
        commas = np.flatnonzero(part == 44)
        ends = np.flatnonzero((part == 10) | (part == 13))
        if has_quotes:
            is_quote = part == 34
            inside = ((np.cumsum(is_quote, dtype=np.int32) + quoted) & 1).astype(bool)
            commas, ends = commas[~inside[commas]], ends[~inside[ends]]
            quoted = (quoted + int(np.count_nonzero(is_quote))) & 1
        per_row = np.bincount(np.searchsorted(ends, commas), minlength=len(ends) + 1)
        per_row[0] += open_row
        widest = max(widest, int(per_row.max()))
        open_row = int(per_row[len(ends)])
    return widest + 1


def _columns_from_csv(body: bytes, max_readings: int, max_header_bytes: int, max_columns: int):
    columns = _check_csv_header(body, max_header_bytes, max_columns)
    fields = _widest_csv_row(body)
    if fields > columns:
        raise PayloadError(
            f"a CSV row has {fields:,} fields but the header has {columns}: every row must have at most the "
            f"header's fields (and at most {max_columns:,}, DAQBROKER_INGEST_CSV_MAX_COLUMNS)"
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"the body is not UTF-8 text (byte {exc.start})") from None
    try:
        # Only the three columns are built (pandas is slow per extra field), and never an implicit index.
        frame = pd.read_csv(
            io.StringIO(text),
            dtype=str,
            keep_default_na=False,
            skipinitialspace=True,
            usecols=lambda column: column in ("channel", "t", "v"),
            index_col=False,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise PayloadError(f"the body is not CSV with a header channel,t,v: {exc}") from None
    missing = [column for column in ("channel", "t", "v") if column not in frame.columns]
    if missing:
        raise PayloadError(f"the CSV header lacks {', '.join(missing)}; expected channel,t,v")
    if len(frame) > max_readings:
        raise _too_many(len(frame), max_readings)
    return frame["channel"].tolist(), frame["t"].tolist(), frame["v"].tolist()


def _resolve_channels(refs: list, resolve: Resolver) -> tuple[np.ndarray, np.ndarray]:
    """Channel ids for each reference (ids as such, slugs through ``resolve``), and which resolved."""
    by_ref: dict = {}
    slug_refs: set[str] = set()
    for ref in set(map(_hashable, refs)):
        if isinstance(ref, bool):
            continue
        if isinstance(ref, int):
            by_ref[ref] = ref
        elif isinstance(ref, str):
            if ref.isdigit():
                by_ref[ref] = int(ref)
            elif ref.count("/") == 1 and "\x00" not in ref:  # a NUL can name no channel (nor go in a query)
                slug_refs.add(ref)
    if slug_refs:
        by_ref.update(resolve(slug_refs))
    ids = np.fromiter((by_ref.get(_hashable(r), -1) for r in refs), dtype=np.int64, count=len(refs))
    return ids, (ids > 0) & (ids < 2**62)


def _hashable(ref):
    return ref if isinstance(ref, str | int) else raw_text(ref, 300)


def _parse_times(times: list, unit: str) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """µs since the epoch for each time, whether it parsed, and reasons for the ones that did not."""
    n = len(times)
    ts = np.zeros(n, dtype=np.int64)
    ok = np.zeros(n, dtype=bool)
    reasons: dict[int, str] = {}
    numeric = [i for i, t in enumerate(times) if isinstance(t, int | float) and not isinstance(t, bool)]
    text = [i for i, t in enumerate(times) if isinstance(t, str)]
    for i in set(range(n)) - set(numeric) - set(text):
        reasons[i] = f"timestamp {raw_text(times[i], 100)} is neither ISO 8601 text nor a number"
    if numeric:
        _numeric_times(np.array(numeric), [times[i] for i in numeric], unit, ts, ok, reasons)
    if text:
        _text_times(np.array(text), [times[i] for i in text], unit, ts, ok, reasons)
    return ts, ok, reasons


def _numeric_times(where: np.ndarray, raw: list, unit: str, ts, ok, reasons) -> None:
    as_float = np.array(raw, dtype=np.float64)
    finite = np.isfinite(as_float) & (np.abs(as_float) < 9e18)
    magnitude = np.abs(np.where(finite, as_float, 0))
    if unit:
        scale = np.full(len(raw), TIME_UNITS[unit], dtype=np.int64)
    else:
        scale = np.where(magnitude < 1e11, 1_000_000, np.where(magnitude < 1e14, 1_000, 1)).astype(np.int64)
    all_int = all(isinstance(t, int) for t in raw)
    if all_int and finite.all() and (magnitude * scale < 9e18).all():
        micro = np.array(raw, dtype=np.int64) * scale  # exact for integer epochs
    else:
        micro = np.round(np.where(finite, as_float, 0) * scale)
        finite &= np.abs(micro) < 9e18
        micro = micro.astype(np.int64)
    ts[where] = micro
    ok[where] = finite
    for j in np.nonzero(~finite)[0].tolist():
        reasons[int(where[j])] = f"timestamp {raw[j]!r} is not a usable number of seconds since 1970"


def _text_times(where: np.ndarray, raw: list[str], unit: str, ts, ok, reasons) -> None:
    # Numbers sent as text (CSV) are epochs; everything else must be ISO 8601.
    as_number = pd.to_numeric(pd.Series(raw, dtype=object), errors="coerce").to_numpy(dtype=np.float64)
    is_number = ~np.isnan(as_number)
    if is_number.any():
        numbers = [float(x) if not float(x).is_integer() else int(float(x)) for x in as_number[is_number]]
        _numeric_times(where[is_number], numbers, unit, ts, ok, reasons)
    iso = np.nonzero(~is_number)[0]
    if len(iso) == 0:
        return
    parsed = pd.to_datetime(pd.Series([raw[j] for j in iso], dtype=object), utc=True, format="ISO8601", errors="coerce")
    good = parsed.notna().to_numpy()
    micro = parsed.where(parsed.notna(), pd.Timestamp(0, tz="UTC")).dt.as_unit("us").astype("int64")
    ts[where[iso]] = micro.to_numpy()
    ok[where[iso]] = good
    for j in np.nonzero(~good)[0].tolist():
        reasons[int(where[iso[j]])] = f"timestamp {raw[iso[j]]!r} is not an ISO 8601 time or a number"


def _value_array(values: list) -> np.ndarray:
    try:
        if all(type(v) in (float, int) for v in values):
            return np.array(values, dtype=np.float64)
    except OverflowError:
        pass
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def iter_slug_pairs(refs: Iterable[str]) -> tuple[set[str], set[str]]:
    """The instrument and channel slugs named by ``inst/chan`` references."""
    instruments, channels = set(), set()
    for ref in refs:
        instrument, channel = ref.split("/", 1)
        instruments.add(instrument)
        channels.add(channel)
    return instruments, channels
