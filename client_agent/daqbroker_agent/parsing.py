"""Turning raw instrument lines into timestamped fields: the one parser the server and the agent share.

A :class:`LineParser` is built from a source configuration already checked by
``daqbroker_agent.config.validate_source_config``. ``parse`` returns a :class:`ParsedLine` (UTC
microseconds since the Unix epoch, plus the line's fields addressable by column name or zero-based
position, or by regex group name) or raises :class:`LineError` with a reason a person can act on.

A :class:`BlockParser` reads many complete lines of a delimited or fixed-width source at once with pandas
(the server's file collector: a million lines a second instead of a hundred thousand). It gives exactly
what :class:`LineParser` gives line by line: every line it cannot handle in bulk (a missing or odd field, a
time it cannot read) is handed back as *irregular*, for the caller to parse with :class:`LineParser`, so
both paths agree by construction. pandas and numpy are imported only when a BlockParser is built: the
agent does not need them.
"""

from __future__ import annotations

import calendar
import csv
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo

from daqbroker_agent.patterns import PatternTimeout, compile_pattern, search

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# The default start of a source's plausible window (``not_before``): before it, a time is a misread year.
DEFAULT_NOT_BEFORE = "1970-01-01"


def _shown_time(ts_us: int) -> str:
    try:
        return us_to_datetime(ts_us).isoformat()
    except OverflowError:
        return f"{ts_us} µs"


class LineError(ValueError):
    """A line that cannot be turned into readings; the message says why."""


@dataclass(frozen=True)
class ParsedLine:
    ts_us: int
    fields: dict[str, str]

    def get(self, key: str) -> str | None:
        return self.fields.get(key)


def datetime_to_us(moment: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime, exactly (no float rounding)."""
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def us_to_datetime(ts_us: int) -> datetime:
    return EPOCH + timedelta(microseconds=int(ts_us))


def now_us() -> int:
    return time.time_ns() // 1000


# Time formats whose numbers are columns read as numbers (the bulk path reads them with numpy).
NUMERIC_TIME_FORMATS = ("epoch", "epoch_ms", "year_doy_hhmm", "doy_hhmm")
_YEAR_DIRECTIVES = ("%Y", "%y", "%G", "%c", "%x")


def needs_year(fmt: str) -> bool:
    """Whether times in format ``fmt`` carry no year of their own (``timestamp.year`` or
    ``timestamp.year_pattern`` gives it): ``doy_hhmm``, or a strptime pattern without a year directive."""
    if fmt == "doy_hhmm":
        return True
    return "%" in fmt and not any(directive in fmt for directive in _YEAR_DIRECTIVES)


def header_year(pattern: str, lines: list[str]) -> int | None:
    """The year found by ``pattern`` (one group: the year) in the first of ``lines`` it matches, or None."""
    compiled = compile_pattern(pattern)
    for line in lines:
        try:
            match = search(compiled, line)
        except PatternTimeout:
            continue
        if match is not None:
            found = (match.group(1) or "").strip()
            if found.isascii() and found.isdigit() and 1 <= int(found) <= 9999:
                return int(found)
    return None


def parse_moment(text: str, *, end_of_day: bool = False) -> datetime:
    """An ISO date or time of a source's plausible window (``not_before``/``not_after``) as an aware UTC
    datetime; a naive one is UTC. A date alone is its first instant, or with ``end_of_day`` its last."""
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if end_of_day and re.fullmatch(r"\d{4}-?\d{2}-?\d{2}", text.strip()):
        moment += timedelta(days=1, microseconds=-1)
    return moment.astimezone(UTC)


def _hhmm_problem(hhmm: float) -> str:
    """Why an hhmm number is not a time of day ('' when it is one)."""
    if not math.isfinite(hhmm) or not hhmm.is_integer():
        return f"hhmm {hhmm:g} is not a whole number"
    if not 0 <= hhmm <= 2400:
        return f"hhmm {int(hhmm)} is not a time of day (0 to 2400, 2400 being the midnight that ends the day)"
    if hhmm % 100 >= 60:
        return f"hhmm {int(hhmm)} has {int(hhmm % 100)} minutes (the last two digits must be below 60)"
    return ""


class TimestampParser:
    """Turns the text of a line's time column(s) into UTC microseconds.

    ``year``: for formats without a year (``doy_hhmm``, strptime patterns without ``%Y``), the year the
    times belong to (``timestamp.year``, or one found in a file's header); ``__call__`` may be given the
    year of the file at hand instead.
    """

    def __init__(self, fmt: str = "iso", timezone: str = "UTC", year: int | None = None):
        self.fmt = fmt
        self.zone = ZoneInfo(timezone)
        self.year = year
        self.needs_year = needs_year(fmt)
        # A strptime pattern with an hhmm field of its own ("%Y %j %H%M"): strptime misreads it unpadded
        # ("10" as 01:00) and refuses 2400, so that field is read as a number first (see _padded_hhmm).
        words = (f"%Y {fmt}" if self.needs_year else fmt).split()
        self.hhmm_word = words.index("%H%M") if "%" in fmt and "%H%M" in words else None
        self.fmt_words = len(words)

    def _padded_hhmm(self, text: str) -> tuple[str, bool]:
        """``text`` with its hhmm field written as strptime reads it (``10`` -> ``0010``), and whether it
        was 2400 (the midnight ending the day: read as 0000 of the next)."""
        words = text.split()
        if self.hhmm_word is None or len(words) != self.fmt_words:
            return text, False
        hhmm = words[self.hhmm_word]
        if not (hhmm.isascii() and hhmm.isdigit() and len(hhmm) <= 4):
            return text, False  # strptime says what is wrong
        problem = _hhmm_problem(float(hhmm))
        if problem:
            raise LineError(f"timestamp {text!r}: {problem}")
        words[self.hhmm_word] = "0000" if int(hhmm) == 2400 else f"{int(hhmm):04d}"
        return " ".join(words), int(hhmm) == 2400

    def __call__(self, raw: str, year: int | None = None) -> int:
        raw = raw.strip()
        if not raw:
            raise LineError("empty timestamp")
        year = self.year if year is None else year
        if self.needs_year and year is None:
            raise LineError(
                "the time has no year and none is known: no header line of the file matches timestamp.year_pattern"
            )
        if self.fmt in ("epoch", "epoch_ms"):
            try:
                value = float(raw)
            except ValueError:
                raise LineError(
                    f"timestamp {raw!r} is not a number of {'milliseconds' if self.fmt == 'epoch_ms' else 'seconds'}"
                ) from None
            if value != value or value in (float("inf"), float("-inf")):
                raise LineError(f"timestamp {raw!r} is not finite")
            scale = 1_000 if self.fmt == "epoch_ms" else 1_000_000
            if "." not in raw and "e" not in raw.lower():
                return int(raw) * scale  # exact for integer epochs
            return round(value * scale)
        if self.fmt in ("year_doy_hhmm", "doy_hhmm"):
            with_year = raw if self.fmt == "year_doy_hhmm" else f"{year} {raw}"
            return datetime_to_us(self._year_doy_hhmm(with_year, raw).replace(tzinfo=self.zone))
        fmt, text = self.fmt, raw
        if self.needs_year:  # strptime alone would say 1900 (and refuse 29 February, day 366)
            fmt, text = f"%Y {fmt}", f"{year} {raw}"
        text, next_day = self._padded_hhmm(text)
        try:
            moment = datetime.fromisoformat(text) if fmt == "iso" else datetime.strptime(text, fmt)
        except ValueError:
            expected = "an ISO 8601 time" if self.fmt == "iso" else f"a time in the format {self.fmt!r}"
            raise LineError(f"timestamp {raw!r} is not {expected}") from None
        if next_day:
            moment += timedelta(days=1)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=self.zone)
        return datetime_to_us(moment)

    def _year_doy_hhmm(self, raw: str, shown: str) -> datetime:
        """Year, day of year (1 = 1 January), hours and minutes as one number (0-2400), optional seconds.

        The layout of many data loggers' array output (``2024 127 1430 15``). The hhmm number is read as a
        number, so unpadded values are right: ``5`` is 00:05, ``100`` 01:00, and 2400 is the midnight that
        ends the day (00:00 of the next). ``shown`` is the text as the line has it, for the reason.
        """
        parts = raw.split()
        layout = "year, day of year, hhmm" if self.fmt == "year_doy_hhmm" else "day of year, hhmm"
        expected = f"timestamp {shown!r} is not {layout}[, seconds]"
        if len(parts) not in (3, 4):
            raise LineError(expected)
        try:
            numbers = [float(part) for part in parts]
        except ValueError:
            raise LineError(expected) from None
        if not all(math.isfinite(n) for n in numbers) or not all(n.is_integer() for n in numbers[:2]):
            raise LineError(expected)
        hhmm_problem = _hhmm_problem(numbers[2])
        if hhmm_problem:
            raise LineError(f"timestamp {shown!r}: {hhmm_problem}")
        year, doy, hhmm = (int(n) for n in numbers[:3])
        seconds = numbers[3] if len(numbers) == 4 else 0.0
        hours, minutes = divmod(hhmm, 100)
        if not 1 <= year <= 9999:
            raise LineError(f"{expected} (year {year} out of range)")
        days_in_year = 366 if calendar.isleap(year) else 365
        if not 1 <= doy <= days_in_year:
            raise LineError(f"timestamp {shown!r}: day of year {doy} is not in {year} (1 to {days_in_year})")
        if not 0 <= seconds < 60:
            raise LineError(f"timestamp {shown!r}: seconds {seconds:g} are not between 0 and 60")
        try:
            return datetime(year, 1, 1) + timedelta(
                days=doy - 1, hours=hours, minutes=minutes, microseconds=round(seconds * 1_000_000)
            )
        except OverflowError:
            raise LineError(f"{expected} (out of range)") from None


def fixed_width_specs(config: Mapping[str, Any]) -> list[tuple[int, int]]:
    """A fixed-width source's fields as [start, end) character ranges."""
    if config.get("colspecs"):
        return [(int(start), int(end)) for start, end in config["colspecs"]]
    specs, start = [], 0
    for width in config.get("widths") or []:
        specs.append((start, start + int(width)))
        start += int(width)
    return specs


class LineParser:
    """Parses one line of a delimited, fixed-width or regex-described instrument output."""

    def __init__(self, config: dict):
        self.config = config
        self.format = config.get("format", "delimited")
        self.delimiter = config.get("delimiter", ",")
        self.quotechar = config.get("quotechar", '"')
        self.columns: list = list(config.get("columns") or [])
        self.specs = fixed_width_specs(config) if self.format == "fixed_width" else []
        ts = config.get("timestamp") or {}
        self.ts_columns = [str(c) for c in ts.get("columns", [0])]
        self.ts_format = ts.get("format", "iso")
        self.timezone = ts.get("timezone", "UTC")
        self.year_pattern = ts.get("year_pattern") or ""
        self.parse_time = TimestampParser(
            self.ts_format if self.ts_format != "receipt" else "iso", self.timezone, ts.get("year")
        )
        self.pattern = compile_pattern(config["regex"]) if self.format == "regex" else None
        # The source's plausible window: a time outside it is refused with the reason (a wrong year, say).
        not_before, not_after = config.get("not_before", DEFAULT_NOT_BEFORE), config.get("not_after", "")
        self.not_before = not_before or ""
        self.not_after = not_after or ""
        self.earliest_us = datetime_to_us(parse_moment(not_before)) if not_before else None
        self.latest_us = datetime_to_us(parse_moment(not_after, end_of_day=True)) if not_after else None

    def year_from_header(self, header: list[str]) -> int | None:
        """The year of a file whose times carry none, from its header lines (``timestamp.year_pattern``)."""
        return header_year(self.year_pattern, header) if self.year_pattern else None

    def window_problem(self, ts_us: int) -> str:
        """Why a time is outside the source's plausible window ('' when inside it)."""
        if self.earliest_us is not None and ts_us < self.earliest_us:
            return f"time {_shown_time(ts_us)} is before this source's not_before ({self.not_before})"
        if self.latest_us is not None and ts_us > self.latest_us:
            return f"time {_shown_time(ts_us)} is after this source's not_after ({self.not_after})"
        return ""

    @cached_property
    def _simple_split(self) -> bool:
        return len(self.delimiter) == 1

    def split(self, line: str) -> dict[str, str]:
        """The line's fields keyed by position ("0", "1", ...) and, when columns are named, by name."""
        if self.pattern is not None:
            try:
                match = search(self.pattern, line)
            except PatternTimeout as exc:
                raise LineError(str(exc)) from None
            if match is None:
                raise LineError("line does not match the configured regular expression")
            return {name: value for name, value in match.groupdict().items() if value is not None}
        if self.specs:
            # A field the line is too short to reach is missing; one it reaches is kept, even if blank.
            parts = [line[start:end] for start, end in self.specs if start < len(line)]
        elif self._simple_split and self.quotechar and self.quotechar in line:
            if self.delimiter == " ":
                parts = next(csv.reader([line.strip()], delimiter=" ", quotechar=self.quotechar, skipinitialspace=True))
            else:
                parts = next(csv.reader([line], delimiter=self.delimiter, quotechar=self.quotechar))
        elif self.delimiter == " ":
            parts = line.split()  # space-aligned columns: runs of blanks are one separator
        else:
            parts = line.split(self.delimiter)
        fields = {str(index): part.strip() for index, part in enumerate(parts)}
        for index, name in enumerate(self.columns):
            if index < len(parts):
                fields[str(name)] = parts[index].strip()
        return fields

    def parse(self, line: str, received_us: int | None = None, year: int | None = None) -> ParsedLine:
        """``year``: the year of the file the line comes from, when its times carry none (see
        :meth:`year_from_header`)."""
        line = line.rstrip("\r\n")
        if not line.strip():
            raise LineError("empty line")
        fields = self.split(line)
        if self.ts_format == "receipt":
            return ParsedLine(received_us if received_us is not None else now_us(), fields)
        try:
            raw_time = " ".join(fields[column] for column in self.ts_columns)
        except KeyError as exc:
            raise LineError(f"the time column {exc.args[0]!r} is missing from the line") from None
        ts_us = self.parse_time(raw_time, year)
        problem = self.window_problem(ts_us)
        if problem:
            raise LineError(problem)
        return ParsedLine(ts_us, fields)

    def position_of(self, key: str) -> int | None:
        """The zero-based field position that ``split`` files under ``key``, or None (regex groups)."""
        if self.pattern is not None:
            return None
        names = [str(name) for name in self.columns]
        if key in names:
            return len(names) - 1 - names[::-1].index(key)  # a repeated name keeps the last position
        if key.isdigit() and key.isascii():
            return int(key)
        return None


# --- many lines at once ----------------------------------------------------------------------------


def _take(series, rows):
    """``series`` at positions ``rows``, without a copy when that is all of it."""
    return series if len(rows) == len(series) else series.iloc[rows]


NUMBER, TEXT = "number", "text"
_EXACT_US = 2**53  # float64 holds every integer below this exactly


class FieldNotFound(ValueError):
    """A wanted field is neither a configured column name nor a position."""


@dataclass
class ParsedBlock:
    """What a :class:`BlockParser` read from ``n_lines`` lines.

    ``rows`` are the line indices (0-based) parsed in bulk, ``ts_us`` their times, ``values`` each wanted
    field's values for those rows (float64 for numbers, str objects for text). ``irregular`` are the line
    indices left for :class:`LineParser`: odd lines, and blank ones.
    """

    n_lines: int
    rows: Any
    ts_us: Any
    values: dict[str, Any] = field(default_factory=dict)
    irregular: Any = None


class BlockParser:
    """Parses blocks of complete lines of a delimited or fixed-width source with pandas.

    ``wanted`` maps each field key (as ``LineParser.split`` names it) to ``"number"`` or ``"text"``.
    Only rows where the time and every wanted field are present and readable are parsed in bulk; the
    rest are returned as irregular (see the module docstring). Delimited sources need a one-character
    delimiter (or ``" "``), and regular expressions are line-by-line only: see :meth:`supports`.
    """

    def __init__(self, config: Mapping[str, Any], wanted: Mapping[str, str]):
        import numpy as np
        import pandas as pd

        self.np, self.pd = np, pd
        self.config = config
        self.lines = LineParser(dict(config))
        self.encoding = config.get("encoding", "utf-8")
        self.wanted = dict(wanted)
        self.positions: dict[str, int] = {}
        for key in [*self.wanted, *self._ts_keys()]:
            position = self.lines.position_of(key)
            if position is None or (self.lines.specs and position >= len(self.lines.specs)):
                known = ", ".join(repr(str(c)) for c in self.lines.columns) or "none"
                raise FieldNotFound(
                    f"field {key!r} is neither a column name (configured: {known}) nor a zero-based column position"
                    + (f" below {len(self.lines.specs)}" if self.lines.specs else "")
                )
            self.positions[key] = position
        self._text_positions = {self.positions[k] for k, kind in self.wanted.items() if kind == TEXT}
        self._numeric_ts = self.lines.ts_format in NUMERIC_TIME_FORMATS
        if not self._numeric_ts and self.lines.ts_format != "receipt":
            self._text_positions |= {self.positions[k] for k in self._ts_keys()}

    @staticmethod
    def supports(config: Mapping[str, Any]) -> bool:
        fmt = config.get("format", "delimited")
        return fmt == "fixed_width" or (fmt == "delimited" and len(config.get("delimiter", ",")) == 1)

    def _ts_keys(self) -> list[str]:
        return [] if self.lines.ts_format == "receipt" else list(self.lines.ts_columns)

    # -- reading the columns ---------------------------------------------------------------------------

    def parse(
        self, data: bytes, received_us: int | None = None, n_lines: int | None = None, year: int | None = None
    ) -> ParsedBlock:
        """Parse ``data``: complete lines, each ending with a newline (``n_lines`` of them, if known).
        ``year``: the year of the file, when its times carry none (as for ``LineParser.parse``)."""
        np = self.np
        n_lines = data.count(b"\n") if n_lines is None else n_lines
        everything = np.arange(n_lines, dtype=np.int64)
        empty = ParsedBlock(n_lines, np.empty(0, np.int64), np.empty(0, np.int64), {}, everything)
        if n_lines == 0:
            return empty
        frame = self._read_fixed_width(data, n_lines) if self.lines.specs else self._read_delimited(data, n_lines)
        if frame is None:
            return empty
        bad = np.zeros(n_lines, dtype=bool)
        values: dict[str, Any] = {}
        for key, kind in self.wanted.items():
            column = frame[self.positions[key]]
            if kind == NUMBER:
                numbers = self._numbers(column)
                bad |= np.isnan(numbers)
                values[key] = numbers
            else:
                bad |= column.isna().to_numpy()
                values[key] = column.str.strip()
        rows = np.flatnonzero(~bad)
        ts, ts_bad = self._times(frame, rows, received_us, year)
        ts_bad = ts_bad | self._outside_window(ts)
        if ts_bad.any():
            rows, ts = rows[~ts_bad], ts[~ts_bad]
            bad[np.flatnonzero(~bad)[ts_bad]] = True
        picked = {}
        for key, column in values.items():
            if self.wanted[key] == NUMBER:
                picked[key] = column if len(rows) == n_lines else column[rows]
            else:
                picked[key] = _take(column, rows).to_numpy(dtype=object)
        return ParsedBlock(n_lines, rows, ts, picked, np.flatnonzero(bad))

    def _read_delimited(self, data: bytes, n_lines: int):
        import csv

        pd = self.pd
        if self._odd_whitespace(data):
            return None
        positions = sorted(set(self.positions.values()))
        options: dict[str, Any] = {
            "header": None,
            "names": range(max(positions) + 1),
            # With usecols, lines with more fields than named keep their row: extra fields are ignored, as
            # LineParser ignores them. Lines with fewer fields get NaN and are handed back as irregular.
            "usecols": positions,
            "index_col": False,
            "skip_blank_lines": False,
            "keep_default_na": False,
            "na_values": [""],
            "encoding": self.encoding,
            "engine": "c",
        }
        if self.lines.delimiter == " ":
            options["sep"] = r"\s+"
        else:
            options["sep"] = self.lines.delimiter
        if self.lines.quotechar:
            options["quotechar"] = self.lines.quotechar
        else:
            options["quoting"] = csv.QUOTE_NONE
        try:
            frame = self._read_csv(data, options)
            # Text fields (and times) must stay exactly as written: a column pandas read as numbers (status
            # codes "01", "02") is read again as text. Forcing text up front costs ~3x, so only when needed.
            as_text = [
                p for p in positions if p in self._text_positions and not isinstance(frame[p].dtype, pd.StringDtype)
            ]
            if as_text:
                frame = self._read_csv(data, {**options, "dtype": {p: "str" for p in as_text}})
        except (pd.errors.ParserError, ValueError):
            return None  # e.g. no line reaches the last wanted column: every line is irregular
        if len(frame) != n_lines:
            return None  # a quoted field spanning lines, or a bare carriage return: go line by line
        return frame

    def _odd_whitespace(self, data: bytes) -> bool:
        """Whether ``data`` holds whitespace that Python's ``split()``/``strip()`` and pandas treat differently
        (vertical tab, form feed, the ASCII separators; with a blank delimiter, any non-ASCII blank). Such
        blocks go line by line: never in real instrument output, and LineParser's reading is the rule."""
        if any(data.find(bytes([c])) >= 0 for c in (0x0B, 0x0C, 0x1C, 0x1D, 0x1E, 0x1F)):
            return True
        if self.lines.delimiter == " " and not data.isascii():
            return re.search(r"[^\S \t\r\n]", data.decode(self.encoding, errors="replace")) is not None
        return False

    def _read_csv(self, data: bytes, options: dict):
        import io

        try:
            return self.pd.read_csv(io.BytesIO(data), **options)
        except UnicodeDecodeError:
            # Bytes the encoding cannot decode become U+FFFD, as LineParser's decoding does. Not asked for
            # up front: pandas' error-tolerant decoding is ~3x slower.
            return self.pd.read_csv(io.BytesIO(data), **{**options, "encoding_errors": "replace"})

    def _read_fixed_width(self, data: bytes, n_lines: int):
        pd = self.pd
        if self._odd_whitespace(data):
            return None
        text = data.decode(self.encoding, errors="replace").split("\n")
        text.pop()  # after the final newline
        if len(text) != n_lines:
            return None
        lines = pd.Series(text, dtype="str")
        frame = {}
        for position in sorted(set(self.positions.values())):
            start, end = self.lines.specs[position]
            cut = lines.str.slice(start, end).str.strip()
            frame[position] = cut.where(cut != "")  # blank: let LineParser say "empty" or "missing"
        return frame

    def _numbers(self, column):
        np, pd = self.np, self.pd
        if column.dtype == np.float64:
            return column.to_numpy()  # NaN already marks the empty and missing fields; no copy
        if column.dtype.kind in "fi":
            return column.to_numpy(dtype=np.float64, na_value=np.nan)
        # Text in a numeric field (or "nan", "inf", "1_000"): pandas' reading when it has one, and the
        # odd ones (NaN here) go to LineParser and ingest, which say exactly what is wrong with them.
        return pd.to_numeric(column.astype("str"), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)

    # -- timestamps ------------------------------------------------------------------------------------

    def _outside_window(self, ts):
        """Times outside the source's plausible window: left to LineParser, which says why."""
        np = self.np
        outside = np.zeros(len(ts), dtype=bool)
        if self.lines.earliest_us is not None:
            outside |= ts < self.lines.earliest_us
        if self.lines.latest_us is not None:
            outside |= ts > self.lines.latest_us
        return outside

    def _times(self, frame, rows, received_us: int | None, year: int | None = None):
        """(µs since the epoch, could-not-read mask) for ``rows``."""
        np = self.np
        n = len(rows)
        fmt = self.lines.ts_format
        if fmt == "receipt":
            return np.full(n, received_us if received_us is not None else now_us(), dtype=np.int64), np.zeros(n, bool)
        year = self.lines.parse_time.year if year is None else year
        if self.lines.parse_time.needs_year and year is None:
            return np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool)  # LineParser says why
        columns = [frame[self.positions[key]] for key in self._ts_keys()]
        if fmt in ("epoch", "epoch_ms"):
            return self._epoch(columns[0], rows, 1_000 if fmt == "epoch_ms" else 1_000_000)
        if fmt in ("year_doy_hhmm", "doy_hhmm"):
            return self._year_doy_hhmm(columns, rows, year if fmt == "doy_hhmm" else None)
        if self.lines.parse_time.needs_year:  # a strptime pattern without a year: "<year> <time>"
            raw = _take(columns[0], rows).str.strip()
            for more in columns[1:]:
                raw = raw + " " + _take(more, rows).str.strip()
            raw = (f"{year} " + raw.str.strip()).reset_index(drop=True)
            missing = raw.isna().to_numpy()
            ts, bad = np.zeros(n, dtype=np.int64), missing.copy()
            present = np.flatnonzero(~missing)
            if len(present):
                part = raw.iloc[present].reset_index(drop=True)
                ts[present], bad[present] = self._strings_to_us(part, f"%Y {fmt}", stripped=True)
            return ts, bad
        if len(columns) == 1:
            raw = _take(columns[0], rows)  # stripped only if it must be (see _strings_to_us)
        else:
            raw = _take(columns[0], rows).str.strip()
            for more in columns[1:]:
                raw = raw + " " + _take(more, rows).str.strip()
        raw = raw.reset_index(drop=True)
        missing = raw.isna().to_numpy()
        if missing.any():  # a time column the line does not reach: LineParser says so
            ts, bad = np.zeros(n, dtype=np.int64), missing.copy()
            present = np.flatnonzero(~missing)
            ts[present], bad[present] = self._strings_to_us(raw.iloc[present].reset_index(drop=True), fmt)
            return ts, bad
        return self._strings_to_us(raw, fmt)

    def _strings_to_us(self, raw, fmt: str, stripped: bool = False):
        if fmt == "iso":
            ts, bad = self._iso(raw, one_by_one=stripped)
        else:
            parsed = self.pd.to_datetime(raw, format=fmt, errors="coerce", utc="%z" in fmt)
            if parsed.dt.tz is not None:
                ts, bad = self._as_us(parsed), parsed.isna().to_numpy()
            else:
                ts, bad = self._localize(self._as_us(parsed), parsed.isna().to_numpy())
            bad = bad | self._odd_hhmm(raw)
        if bad.any() and not stripped:  # blanks around a time, as LineParser strips them: try once more
            return self._strings_to_us(raw.str.strip(), fmt, stripped=True)
        return ts, bad

    def _odd_hhmm(self, raw):
        """Times whose own hhmm field is not four digits below 2400 (``10``, ``2400``): LineParser reads them."""
        np = self.np
        timestamps = self.lines.parse_time
        if timestamps.hhmm_word is None:
            return np.zeros(len(raw), dtype=bool)
        words = raw.astype("string").str.split()
        count = words.str.len().fillna(-1).to_numpy(dtype=np.int64)
        hhmm = words.str.get(timestamps.hhmm_word).astype("string").fillna("")
        plain = hhmm.str.fullmatch(r"[0-9]{4}").fillna(False).to_numpy(dtype=bool)
        below = (hhmm < "2400").fillna(False).to_numpy(dtype=bool)
        return ~(plain & below & (count == timestamps.fmt_words))

    def _iso(self, raw, one_by_one: bool = True):
        import pyarrow as pa
        import pyarrow.compute as pc

        np = self.np
        strings = pa.array(raw, type=pa.string())
        try:  # every time carries its offset
            return self._arrow_us(pc.cast(strings, pa.timestamp("us", tz="UTC"))), np.zeros(len(raw), bool)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        try:  # none does: wall-clock times in the configured zone
            wall = self._arrow_us(pc.cast(strings, pa.timestamp("us")))
            return self._localize(wall, np.zeros(len(raw), bool))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        if not one_by_one:
            return np.zeros(len(raw), dtype=np.int64), np.ones(len(raw), dtype=bool)
        # Mixed, or some unreadable: one at a time, with exactly LineParser's reading.
        ts = np.zeros(len(raw), dtype=np.int64)
        bad = np.zeros(len(raw), dtype=bool)
        parse = self.lines.parse_time
        for i, text in enumerate(raw.tolist()):
            try:
                ts[i] = parse(text)
            except LineError:
                bad[i] = True
        return ts, bad

    def _arrow_us(self, array):
        np = self.np
        return array.cast("int64").to_numpy(zero_copy_only=False).astype(np.int64, copy=False)

    def _as_us(self, parsed):
        np = self.np
        values = parsed.dt.tz_convert("UTC").dt.tz_localize(None) if parsed.dt.tz is not None else parsed
        values = values.to_numpy(dtype="datetime64[us]")
        out = values.astype(np.int64)
        out[np.isnat(values)] = 0
        return out

    def _localize(self, wall_us, bad):
        """UTC µs of wall-clock µs in the configured zone, as ``datetime.replace(tzinfo=zone)`` reads them.

        An ambiguous time (clocks going back) is its first occurrence, like ``fold=0``; a time that does not
        exist (clocks going forward) is left to LineParser.
        """
        np, pd = self.np, self.pd
        if self.lines.timezone == "UTC":
            return wall_us, bad
        index = pd.DatetimeIndex(wall_us.astype("datetime64[us]"))
        local = index.tz_localize(self.lines.timezone, ambiguous=np.ones(len(index), dtype=bool), nonexistent="NaT")
        missing = np.asarray(local.isna())
        utc = local.tz_convert("UTC").tz_localize(None).to_numpy(dtype="datetime64[us]").astype(np.int64)
        utc[missing] = 0
        return utc, bad | missing

    def _epoch(self, column, rows, scale: int):
        np, pd = self.np, self.pd
        if column.dtype.kind == "i":
            seconds = column.to_numpy()[rows]
            limit = np.iinfo(np.int64).max // scale
            bad = np.abs(seconds) > limit
            return np.where(bad, 0, seconds) * scale, bad
        values = self._numbers(column)[rows] if column.dtype.kind == "f" else None
        if values is None:
            values = pd.to_numeric(column.iloc[rows].astype("str"), errors="coerce").to_numpy(np.float64)
        scaled = values * scale
        bad = ~np.isfinite(scaled) | (np.abs(scaled) >= _EXACT_US)
        out = np.zeros(len(rows), dtype=np.int64)
        out[~bad] = np.round(scaled[~bad]).astype(np.int64)
        return out, bad

    def _year_doy_hhmm(self, columns, rows, year: int | None = None):
        """year_doy_hhmm columns, or (with ``year``) doy_hhmm ones."""
        np = self.np
        parts = [self._numbers(column)[rows] for column in columns]
        if year is not None:
            parts.insert(0, np.full(len(rows), float(year)))
        years, doy, hhmm = parts[:3]
        seconds = parts[3] if len(parts) == 4 else np.zeros(len(rows))
        with np.errstate(invalid="ignore"):
            integral = (years == np.floor(years)) & (doy == np.floor(doy)) & (hhmm == np.floor(hhmm))
            leap = (years % 4 == 0) & ((years % 100 != 0) | (years % 400 == 0))
            hours, minutes = np.floor_divide(hhmm, 100), np.mod(hhmm, 100)
            ok = (
                integral
                & (years >= 1)
                & (years <= 9999)
                & (doy >= 1)
                & (doy <= np.where(leap, 366, 365))
                & (hhmm >= 0)
                & (hhmm <= 2400)
                & (minutes < 60)
                & (seconds >= 0)
                & (seconds < 60)
            )
        safe = np.where(ok, years, 1970).astype(np.int64)
        jan1_days = (safe - 1970).astype("datetime64[Y]").astype("datetime64[D]").astype(np.int64)
        day_us = 86_400_000_000
        wall = (
            (jan1_days + np.where(ok, doy, 1).astype(np.int64) - 1) * day_us
            + np.where(ok, hours, 0).astype(np.int64) * 3_600_000_000
            + np.where(ok, minutes, 0).astype(np.int64) * 60_000_000
            + np.round(np.where(ok, seconds, 0) * 1_000_000).astype(np.int64)
        )
        return self._localize(wall, ~ok)
