"""Reading data back into pandas: ``Client(url, token)`` over the server's ``/api/v1/`` (docs/python-client.md).

An optional part of the agent package (``pip install "daqbroker-agent[pandas]"``): nothing else in the
package imports this module, so the agent itself never needs pandas or pyarrow. No Django either; HTTP
goes through the agent's own :class:`~daqbroker_agent.client.ApiClient` (standard library).

Readings travel as Parquet (``GET /api/v1/export/?format=parquet``, long layout, times in UTC). A long
range is read in pieces: the server's statistics (answered from its rollup tiers, cheap) say how many
readings the range holds, the range is cut into spans of about ``piece_readings`` readings each, and the
span of every next piece follows the density the previous piece showed. One piece is in memory at a time
while it is decoded; :meth:`Client.iter_readings` hands the pieces out one by one for ranges too large to
hold at once.

Retries are polite and limited: a 429 or 503 waits for its ``Retry-After`` (or a backoff), a connection
failure, 502 or 504 backs off exponentially with jitter; a 4xx that is the caller's fault (400, 401, 403,
404, ...) is raised at once as a :class:`ReadError` subclass carrying the server's message.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

try:
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError as exc:  # the extra is not installed: say which one
    raise ImportError(
        'daqbroker_agent.reader needs pandas and pyarrow: pip install "daqbroker-agent[pandas]" '
        '(from a checkout: pip install "./client_agent[pandas]")'
    ) from exc

try:
    from tqdm.auto import tqdm as _tqdm_class
except ImportError:  # optional: only progress=True needs it
    _tqdm_class = None  # type: ignore[assignment,misc]  # tqdm is not installed: no progress bars

from daqbroker_agent.client import ApiClient, Reply, ServerUnreachable
from daqbroker_agent.parsing import datetime_to_us

_tqdm: Any = _tqdm_class

__all__ = [
    "BadRequest",
    "Client",
    "Forbidden",
    "NotAuthenticated",
    "NotFound",
    "ReadError",
    "ServerError",
    "ServerUnreachable",
]

PARQUET = "application/vnd.apache.parquet"
PAGE_LIMIT = 1000  # the server's largest page
MAX_CHANNELS = 100  # the server's limit per request
RETRY_STATUSES = frozenset({429, 502, 503, 504})
TimeLike = datetime | date | str | int | float | pd.Timestamp | np.datetime64


# --- errors ---------------------------------------------------------------------------------------


class ReadError(Exception):
    """The server refused or failed a request; ``status`` is the HTTP status, ``message`` its explanation."""

    def __init__(self, status: int, message: str, path: str = ""):
        self.status = status
        self.message = message
        self.path = path
        super().__init__(f"{status} {path}: {message}" if path else f"{status}: {message}")


class BadRequest(ReadError):
    """400: a parameter is missing or malformed (the message names it)."""


class NotAuthenticated(ReadError):
    """401: no token, a wrong one, or an expired or revoked one."""


class Forbidden(ReadError):
    """403: the token may not do this (e.g. an agent's token reading readings)."""


class NotFound(ReadError):
    """404: no such instrument, channel or run, or not one this token may see (the server does not say which)."""


class ServerError(ReadError):
    """5xx, after the retries for the transient ones (502, 503, 504) ran out."""


ERRORS: dict[int, type[ReadError]] = {400: BadRequest, 401: NotAuthenticated, 403: Forbidden, 404: NotFound}


def _error_for(reply: Reply, path: str) -> ReadError:
    cls = ERRORS.get(reply.status, ServerError if reply.status >= 500 else ReadError)
    return cls(reply.status, reply.detail(), path.split("?", 1)[0])


# --- times ----------------------------------------------------------------------------------------


def to_us(value: TimeLike) -> int:
    """µs since 1970 from a datetime (naive means UTC), a pandas Timestamp or numpy datetime64 (naive: UTC),
    an ISO 8601 string (without an offset: UTC) or an int (µs)."""
    if isinstance(value, bool):
        raise TypeError("a time, not a bool")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        raise TypeError("give µs as an int, or a datetime / ISO 8601 string")
    if isinstance(value, str | np.datetime64):
        value = pd.Timestamp(value)
    if isinstance(value, pd.Timestamp):
        stamp = value.tz_localize("UTC") if value.tzinfo is None else value.tz_convert("UTC")
        return int(stamp.value // 1000)
    if isinstance(value, datetime):
        return datetime_to_us(value if value.tzinfo else value.replace(tzinfo=UTC))
    if isinstance(value, date):
        return datetime_to_us(datetime(value.year, value.month, value.day, tzinfo=UTC))
    raise TypeError(f"{value!r} is not a time")


def _utc(series: pd.Series) -> pd.Series:
    return pd.to_datetime(series, utc=True, format="ISO8601")


# --- the client -----------------------------------------------------------------------------------


class Client:
    """Read instruments, channels, readings, statistics, latest values and runs as pandas DataFrames.

    ``token`` is a personal token (read-only is enough) or a session-less token string; ``retries`` is
    how many times a transient failure is tried again, ``max_wait`` the longest single wait in seconds.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 300.0,
        ca_file: str = "",
        retries: int = 5,
        backoff: float = 1.0,
        max_wait: float = 120.0,
    ):
        if not token:
            raise ValueError("a token is needed (create one under Tokens in DAQBroker, read-only is enough)")
        self._api = ApiClient(url, lambda: token, timeout=timeout, ca_file=ca_file)
        self.retries = retries
        self.backoff = backoff
        self.max_wait = max_wait
        self.sleep: Callable[[float], None] = time.sleep

    def close(self) -> None:
        self._api.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- HTTP ----------------------------------------------------------------------------------------

    def _get(self, path: str, params: Mapping[str, Any] | None = None, *, accept: str = "application/json") -> Reply:
        query = urlencode({k: v for k, v in (params or {}).items() if v is not None})
        full = f"/api/v1/{path.lstrip('/')}" + (f"?{query}" if query else "")
        return self._get_path(full, accept=accept)

    def _get_path(self, full: str, *, accept: str = "application/json") -> Reply:
        attempt = 0
        while True:
            try:
                reply = self._api.request("GET", full, headers={"Accept": accept})
            except ServerUnreachable:
                if attempt >= self.retries:
                    raise
                self.sleep(self._backoff(attempt))
                attempt += 1
                continue
            if reply.status < 400:
                return reply
            if reply.status in RETRY_STATUSES and attempt < self.retries:
                wait = reply.retry_after
                self.sleep(min(wait if wait is not None else self._backoff(attempt), self.max_wait))
                attempt += 1
                continue
            raise _error_for(reply, full)

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff * 2**attempt * (0.5 + random.random()), self.max_wait)

    def _json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self._get(path, params).json()

    def _pages(self, path: str, params: Mapping[str, Any] | None = None) -> Iterator[dict]:
        """Every row of a paginated list, following ``next`` (the server's LimitOffset pages)."""
        data = self._json(path, {**(params or {}), "limit": PAGE_LIMIT})
        while True:
            if isinstance(data, list):  # an unpaginated list
                yield from data
                return
            yield from data["results"]
            if not data.get("next"):
                return
            parts = urlsplit(data["next"])
            # The server's own link; only its path below /api/v1/ and its query are used, on our connection.
            suffix = parts.path[parts.path.index("/api/v1/") :]
            data = self._get_path(suffix + (f"?{parts.query}" if parts.query else "")).json()

    # -- the registry --------------------------------------------------------------------------------

    def instruments(self, *, search: str | None = None, active: bool | None = None) -> pd.DataFrame:
        """The instruments this token may see, indexed by slug."""
        rows = list(self._pages("instruments/", {"search": search, "active": _flag(active)}))
        return _frame(rows, index="slug", times=("created", "updated"))

    def channels(
        self, instrument: str | None = None, *, search: str | None = None, kind: str | None = None
    ) -> pd.DataFrame:
        """Channels this token may see (of one instrument, by its slug), indexed by ``instrument/slug``."""
        rows = list(self._pages("channels/", {"instrument": instrument, "search": search, "kind": kind}))
        frame = _frame(rows, times=("last_time",))
        if len(frame):
            frame.index = pd.Index(frame["instrument"] + "/" + frame["slug"], name="channel")
        return frame

    def runs(
        self,
        run_list: str | None = None,
        start: TimeLike | None = None,
        end: TimeLike | None = None,
        *,
        instrument: str | Iterable[str] | None = None,
    ) -> pd.DataFrame:
        """Runs of the run lists this token may see, newest first; ``start``/``end`` keep those overlapping
        the range. ``run`` holds the reference ``readings(run=...)`` takes (``run-list/label``)."""
        params = {
            "run_list": run_list,
            "start": None if start is None else _iso(start),
            "end": None if end is None else _iso(end),
            "instrument": instrument if instrument is None or isinstance(instrument, str) else ",".join(instrument),
        }
        frame = _frame(list(self._pages("runs/", params)), times=("start", "end"))
        if len(frame):
            frame.insert(0, "run", frame["run_list"] + "/" + frame["label"].astype(str))
        return frame

    def run_lists(self, *, instrument: str | None = None) -> pd.DataFrame:
        """Run lists this token may see, indexed by slug, with their parameter columns."""
        return _frame(list(self._pages("runlists/", {"instrument": instrument})), index="slug", times=("created",))

    # -- readings ------------------------------------------------------------------------------------

    def latest(self, instrument: str) -> pd.DataFrame:
        """The latest reading of every channel of an instrument, indexed by channel slug."""
        data = self._json(f"instruments/{quote(instrument, safe='')}/latest/")
        frame = _frame(data["channels"], index="slug", times=("time",))
        frame.attrs["instrument"] = data["instrument"]
        frame.attrs["units"] = dict(zip(frame.index, frame["units"], strict=True)) if len(frame) else {}
        return frame

    def statistics(
        self,
        channels: str | int | Iterable[str | int],
        start: TimeLike | None = None,
        end: TimeLike | None = None,
        *,
        run: str | None = None,
        percentiles: Iterable[float] = (),
    ) -> pd.DataFrame:
        """Count, flagged, min, max, mean, std (and percentiles) per channel over a range or a run,
        indexed by the references given."""
        refs = _refs(channels)
        data = self._statistics(refs, start, end, run, percentiles)
        rows = []
        for ref, row in zip(refs, data["statistics"], strict=True):
            extra = row.pop("percentiles", {}) or {}
            rows.append({"ref": ref, "id": row.pop("channel"), **row, **extra})
        frame = pd.DataFrame(rows).set_index("ref")
        frame.index.name = "channel"
        frame.attrs["start"] = pd.Timestamp(data["start"], unit="us", tz="UTC")
        frame.attrs["end"] = pd.Timestamp(data["end"], unit="us", tz="UTC")
        return frame

    def _statistics(
        self,
        refs: list[str],
        start: TimeLike | None,
        end: TimeLike | None,
        run: str | None,
        percentiles: Iterable[float] = (),
    ) -> dict:
        params: dict[str, Any] = {"channels": ",".join(refs)}
        params |= _range_params(start, end, run)
        wanted = ",".join(f"{p:g}" for p in percentiles)
        if wanted:
            params["percentiles"] = wanted
        return self._json("statistics/", params)

    def readings(
        self,
        channels: str | int | Iterable[str | int],
        start: TimeLike | None = None,
        end: TimeLike | None = None,
        *,
        run: str | None = None,
        include_flagged: bool = False,
        wide: bool = False,
        piece_readings: int = 500_000,
        progress: bool = False,
    ) -> pd.DataFrame:
        """Readings of channels (ids or ``instrument/channel``) in [start, end) or over a run, as a DataFrame
        with a UTC DatetimeIndex named ``time``.

        Long (default): columns ``channel`` (``instrument/channel``), ``value`` (``text`` for text
        channels), and ``quality`` when ``include_flagged``. Wide: one column per channel, one row per
        instant (NaN where a channel has no reading then), ``<channel> quality`` columns when
        ``include_flagged``. Units are in ``df.attrs["units"]`` by channel. Flagged readings (out of
        range, missing-value sentinels, suspect) are left out unless ``include_flagged``, as on the plot.
        """
        pieces = list(
            self.iter_readings(
                channels,
                start,
                end,
                run=run,
                include_flagged=include_flagged,
                piece_readings=piece_readings,
                progress=progress,
            )
        )
        long = pieces[0]
        if len(pieces) > 1:
            # As one export answers: by channel (in the order asked), then time; pieces follow each other in time.
            long = pd.concat(pieces)
            order = {label: i for i, label in enumerate(long["channel"].unique())}
            if len(order) > 1:
                long = long.iloc[np.argsort(long["channel"].map(order).to_numpy(), kind="stable")]
            long.attrs = dict(pieces[0].attrs)
        if not wide:
            return long
        return _wide(long, include_flagged)

    def iter_readings(
        self,
        channels: str | int | Iterable[str | int],
        start: TimeLike | None = None,
        end: TimeLike | None = None,
        *,
        run: str | None = None,
        include_flagged: bool = False,
        piece_readings: int = 500_000,
        progress: bool = False,
    ) -> Iterator[pd.DataFrame]:
        """The readings of :meth:`readings` (long layout) as consecutive DataFrames of about
        ``piece_readings`` readings each, in time order per piece: for ranges too large to hold at once."""
        if piece_readings < 1:
            raise ValueError("piece_readings must be at least 1")
        if progress and _tqdm is None:
            raise ImportError('progress=True needs tqdm: pip install "daqbroker-agent[pandas,progress]"')
        refs = _refs(channels)
        # The statistics resolve the run (or the range) and count the readings, from the tiers.
        summary = self._statistics(refs, start, end, run)
        lo, hi = int(summary["start"]), int(summary["end"])
        total = _count(summary, include_flagged)
        bar = _tqdm(total=total, unit="readings", unit_scale=True) if progress and _tqdm is not None else None
        emitted = False
        step = hi - lo if total <= piece_readings else max(1, (hi - lo) * piece_readings // total)
        try:
            at = lo
            while at < hi:
                until = min(hi, at + step)
                if total > piece_readings:
                    until = self._piece_end(refs, at, until, include_flagged, piece_readings)
                frame = self._export_piece(refs, at, until, include_flagged)
                if bar is not None:
                    bar.update(len(frame))
                if len(frame) or (not emitted and until >= hi):
                    emitted = True
                    yield frame
                # The next span follows the density this one showed (the count check above keeps it bounded).
                step = (until - at) * piece_readings // len(frame) if len(frame) else (until - at) * 4
                step = max(1, step)
                at = until
        finally:
            if bar is not None:
                bar.close()

    def _piece_end(self, refs: list[str], start: int, end: int, include_flagged: bool, most: int) -> int:
        """The end of a piece from ``start`` holding at most ``most`` readings (counted by the server's
        statistics, from its tiers): ``end`` shortened in proportion until the count fits."""
        for _ in range(30):
            count = _count(self._statistics(refs, start, end, None), include_flagged)
            if count <= most or end - start <= 1:
                return end
            end = start + max(1, (end - start) * most // count * 9 // 10)
        return end

    def _export_piece(self, refs: list[str], start: int, end: int, include_flagged: bool) -> pd.DataFrame:
        params = {
            "channels": ",".join(refs),
            "start": start,
            "end": end,
            "format": "parquet",
            "layout": "long",
            "time_format": "iso",
            "tz": "UTC",
            "include_flagged": _flag(include_flagged),
            "quality": _flag(include_flagged),
        }
        reply = self._get("export/", params, accept=PARQUET)
        table = pq.read_table(pa.BufferReader(reply.body))
        metadata = table.schema.metadata or {}
        units = json.loads(metadata.get(b"daqbroker.units", b"{}"))
        frame = table.to_pandas()
        frame = frame.set_index("time")
        frame.index = pd.DatetimeIndex(frame.index, name="time").tz_convert("UTC")
        frame.attrs["units"] = units
        return frame


# --- helpers --------------------------------------------------------------------------------------


def _count(summary: dict, include_flagged: bool) -> int:
    rows = summary["statistics"]
    return sum(int(row["count"]) + (int(row["flagged"]) if include_flagged else 0) for row in rows)


def _flag(value: bool | None) -> str | None:
    return None if value is None else ("true" if value else "false")


def _iso(value: TimeLike) -> str:
    return pd.Timestamp(to_us(value), unit="us", tz="UTC").isoformat()


def _refs(channels: str | int | Iterable[str | int]) -> list[str]:
    if isinstance(channels, str | int):
        channels = [channels]
    refs = [str(c).strip() for c in channels]
    refs = [r for r in dict.fromkeys(refs) if r]
    if not refs:
        raise ValueError("name at least one channel (an id or instrument/channel)")
    if len(refs) > MAX_CHANNELS:
        raise ValueError(f"at most {MAX_CHANNELS} channels per request")
    return refs


def _range_params(start: TimeLike | None, end: TimeLike | None, run: str | None) -> dict[str, Any]:
    if run is not None:
        if start is not None or end is not None:
            raise ValueError("give either run or start and end")
        return {"run": run}
    if start is None or end is None:
        raise ValueError("give start and end (or run=)")
    return {"start": to_us(start), "end": to_us(end)}


def _frame(rows: list[dict], *, index: str | None = None, times: Iterable[str] = ()) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for column in times:
        if column in frame:
            frame[column] = _utc(frame[column])
    if index is not None and index in frame:
        frame = frame.set_index(index)
    return frame


def _wide(long: pd.DataFrame, include_flagged: bool) -> pd.DataFrame:
    """One column per channel (in the order asked), one row per instant."""
    columns: dict[str, pd.Series] = {}
    for label, rows in long.groupby("channel", sort=False):
        rows = rows[~rows.index.duplicated(keep="last")]
        if "text" in rows and rows["value"].isna().all() and rows["text"].notna().any():
            columns[str(label)] = rows["text"]
        else:
            columns[str(label)] = rows["value"]
        if include_flagged and "quality" in rows:
            columns[f"{label} quality"] = rows["quality"]
    units = long.attrs.get("units", {})
    if columns:
        frame = pd.concat(columns, axis=1, sort=True)
    else:
        frame = pd.DataFrame(index=pd.DatetimeIndex([], tz="UTC", name="time"), columns=list(units))
    frame.index.name = "time"
    frame.attrs["units"] = units
    return frame
