"""Proposing a source's parsing configuration and channels from a sample of its lines.

``propose(lines)`` looks at the first lines of a logger file (or what a serial or TCP instrument said)
and answers what a person would write in the source's configuration (``daqbroker_agent.config``): the
delimiter and quoting, or fixed widths where the columns line up; how many header lines to skip; the
column names from the header row; the timestamp columns and format; and a channel per column (slug,
name, units from ``[...]`` or ``(...)`` in the header or from a TOA5 units line, missing-value sentinels).
The time zone of naive times is never guessed: it is left as asked (UTC unless told) and listed in
``questions``.

Pure Python and no Django: the server's preview service and the agent use it alike. Units are passed
through ``normalise_units`` when given (the server gives its canonical pint spelling,
``instruments.units.check_units``).
"""

from __future__ import annotations

import csv
import re
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from daqbroker_agent.config import SOURCE_OPTIONS, TIMESTAMP_FORMATS, TIMESTAMP_OPTIONS

# Lines looked at: enough for a logger file's structure and its sentinels, bounded whatever the sample.
MAX_LINES = 2000
DELIMITERS = ("\t", ";", ",", "|", " ")  # preferred in this order when several fit (";" before "," for decimal commas)
# Values loggers write for "no reading": repeated nines (and 7999, 6999 of some Campbell tables).
SENTINEL = re.compile(r"^-?(?:9{3,}|[67]9{3,})(?:\.0*)?$")
UNITS_IN_HEADER = re.compile(r"^(?P<name>.*?)\s*(?:\[(?P<square>[^\]]*)\]|\((?P<round>[^)]*)\))\s*$")
DATE_PATTERNS = (
    "%Y-%m-%d",
    "%Y/%m/%d",
    "%d/%m/%Y",
    "%m/%d/%Y",
    "%d.%m.%Y",
    "%d-%m-%Y",
)
TIME_PATTERNS = ("%H:%M:%S", "%H:%M", "%H:%M:%S.%f")
YEAR_IN_HEADER = r"\b((?:19|20)\d\d)\b"
TIME_LIKE = re.compile(r"^\d[\d:/.\- T]{3,30}(?:Z|[+-]\d\d:?\d\d)?$")
ISO_START = re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d")
SNIFF_LINES = 100
TOA5_NOT_UNITS = ("TS", "RN", "")  # a TOA5 units line's words for the timestamp and the record number


@dataclass
class ChannelProposal:
    slug: str
    name: str
    source_field: str
    kind: str = "numeric"  # "numeric" or "text"
    units: str = ""
    missing_values: list[float] = field(default_factory=list)
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "slug": self.slug,
            "name": self.name,
            "source_field": self.source_field,
            "kind": self.kind,
            "units": self.units,
            "missing_values": self.missing_values,
            "note": self.note,
        }


@dataclass
class Proposal:
    config: dict[str, Any]
    channels: list[ChannelProposal]
    questions: dict[str, str] = field(default_factory=dict)  # option -> what only a person can answer
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "channels": [channel.as_dict() for channel in self.channels],
            "questions": self.questions,
            "notes": self.notes,
        }


def slugify(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:100] or "field"


def _number(text: str) -> float | None:
    text = text.strip()
    if not text or text.lower() in ("nan", "inf", "-inf", "infinity", "+inf"):
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _split(line: str, delimiter: str) -> list[str]:
    """The fields of ``line`` as the parser splits them (the default quote character, ")."""
    if delimiter == " ":
        if '"' in line:
            return next(csv.reader([line.strip()], delimiter=" ", quotechar='"', skipinitialspace=True))
        return line.split()
    if '"' in line:
        return next(csv.reader([line], delimiter=delimiter, quotechar='"'))
    return line.split(delimiter)


# --- structure ----------------------------------------------------------------------------------------


def _modal_count(rows: Sequence[list[str]]) -> tuple[int, float]:
    counts = Counter(len(row) for row in rows)
    width, hits = counts.most_common(1)[0]
    return width, hits / len(rows)


def _typed(value: str) -> bool:
    """Whether a field looks like a number or a time (cheaply: the delimiter is chosen by it)."""
    value = value.strip()
    return bool(value) and (_number(value) is not None or bool(TIME_LIKE.match(value)))


def _pick_delimiter(lines: list[str]) -> str | None:
    """The delimiter whose split of the data lines is the most regular, or None (fixed width?)."""
    tail = (lines[len(lines) // 2 :] if len(lines) > 4 else lines)[:SNIFF_LINES]
    best: tuple[float, bool, int] | None = None
    chosen = None
    for rank, delimiter in enumerate(DELIMITERS):
        try:
            rows = [_split(line, delimiter) for line in tail]
        except csv.Error:
            continue
        width, share = _modal_count(rows)
        if width < 2 or share < 0.8:
            continue
        regular = [row for row in rows if len(row) == width]
        typed = sum(1 for row in regular for value in row if _typed(value)) / (len(regular) * width)
        if typed < 0.3:
            continue
        score = (share, typed > 0.5, -rank)
        if best is None or score > best:
            best, chosen = score, delimiter
    return chosen


def _first_data_line(lines: list[str], delimiter: str, width: int) -> int:
    """The first line of the run of data lines that ends the sample (header and preamble come before)."""
    first = len(lines)
    for index in range(len(lines) - 1, -1, -1):
        row = _split(lines[index], delimiter)
        if len(row) != width or not any(_typed(value) for value in row):
            break
        first = index
    return first


# --- values -------------------------------------------------------------------------------------------


def _column_time_kind(values: list[str]) -> str | None:
    """The one time kind every value of a column fits: "iso", a strptime pattern, "date:<pattern>" or
    "time:<pattern>" (day-first and month-first settled by the values), or None."""
    kinds: set[str] | None = None
    for value in values:
        value = value.strip()
        if not value:
            continue
        if kinds is None:
            if not TIME_LIKE.match(value) or _number(value) is not None:
                return None
            kinds = _all_time_kinds(value)
        else:
            kinds = {kind for kind in kinds if _fits_kind(value, kind)}
        if not kinds:
            return None
    if not kinds:
        return None
    if "iso" in kinds:
        return "iso"
    return sorted(kinds, key=_pattern_rank)[0]


def _fits_kind(value: str, kind: str) -> bool:
    if kind == "iso":
        return _is_iso(value)
    return _fits(value, _pattern_of(kind))


def _pattern_of(kind: str) -> str:
    return kind[5:] if kind.startswith(("date:", "time:")) else kind


def _is_iso(value: str) -> bool:
    if not ISO_START.match(value):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _pattern_rank(kind: str) -> int:
    pattern = _pattern_of(kind)
    for rank, date in enumerate(DATE_PATTERNS):
        if pattern.startswith(date):
            return rank
    return len(DATE_PATTERNS)


def _all_time_kinds(value: str) -> set[str]:
    found: set[str] = {"iso"} if _is_iso(value) else set()
    for date in DATE_PATTERNS:
        for time in TIME_PATTERNS:
            for sep in (" ", "T"):
                if _fits(value, f"{date}{sep}{time}"):
                    found.add(f"{date}{sep}{time}")
        if _fits(value, date):
            found.add(f"date:{date}")
    for time in TIME_PATTERNS:
        if _fits(value, time):
            found.add(f"time:{time}")
    return found


def _fits(value: str, pattern: str) -> bool:
    try:
        datetime.strptime(value, pattern)
    except ValueError:
        return False
    return True


def _integers(values: list[str]) -> list[int] | None:
    out = []
    for value in values:
        number = _number(value)
        if number is None or not number.is_integer():
            return None
        out.append(int(number))
    return out


def _sentinels(numbers: list[float], file_sentinels: set[float]) -> list[float]:
    """The sentinel values of a column: sentinel-looking, repeated in the sample, far from the other values."""
    found = sorted({n for n in numbers if n in file_sentinels})
    if not found:
        return []
    others = [n for n in numbers if n not in file_sentinels]
    if not others:
        return found
    low, high = min(others), max(others)
    spread = max(high - low, abs(statistics.median(others)), 1.0)
    return [s for s in found if s < low - 5 * spread or s > high + 5 * spread]


# --- the proposal -------------------------------------------------------------------------------------


def _header_name_units(text: str) -> tuple[str, str]:
    text = text.strip().strip('"').strip()
    match = UNITS_IN_HEADER.match(text)
    if match and match.group("name"):
        units = match.group("square") if match.group("square") is not None else match.group("round")
        return match.group("name").strip(), (units or "").strip()
    return text, ""


def _fixed_width(lines: list[str]) -> list[tuple[int, int]] | None:
    """Character ranges of fields that line up in every line (runs of non-blank columns), or None."""
    length = max(len(line) for line in lines)
    used = [False] * length
    for line in lines:
        for position, char in enumerate(line):
            if not char.isspace():
                used[position] = True
    starts = [p for p in range(length) if used[p] and (p == 0 or not used[p - 1])]
    if len(starts) < 2:
        return None
    return [(start, starts[i + 1] if i + 1 < len(starts) else length) for i, start in enumerate(starts)]


def propose(
    lines: Sequence[str],
    *,
    kind: str = "file",
    timezone: str | None = None,
    normalise_units: Callable[[str], str] | None = None,
) -> Proposal:
    """What a person would configure for a source whose first lines are ``lines`` (see the module docstring)."""
    lines = [line.rstrip("\r\n") for line in list(lines)[:MAX_LINES]]
    while lines and not lines[-1].strip():
        lines.pop()
    notes: list[str] = []
    questions: dict[str, str] = {}
    if not lines:
        return Proposal({}, [], {}, ["The sample has no lines to look at."])
    config: dict[str, Any] = {}
    names: list[str] = []
    units_row: list[str] = []
    toa5 = lines[0].startswith(('"TOA5"', "TOA5,"))
    specs: list[tuple[int, int]] | None = None
    if toa5:
        delimiter = ","
        names = _split(lines[1], delimiter) if len(lines) > 1 else []
        units_row = _split(lines[2], delimiter) if len(lines) > 2 else []
        first_data = min(4, len(lines))
        width = len(names)
        notes.append("A Campbell Scientific TOA5 file: four header lines, names on the second, units on the third.")
    else:
        picked = _pick_delimiter(lines)
        if picked is None:
            specs = _fixed_width([line for line in lines if line.strip()])
            if specs is None or not any(_typed(word) for line in lines for word in line.split()):
                return Proposal({}, [], {}, ["No columns found: the lines have no common delimiter or layout."])
            delimiter = " "
            width = len(specs)
            first_data = 0
        else:
            delimiter = picked
            tail = lines[len(lines) // 2 :] if len(lines) > 4 else lines
            width, _ = _modal_count([_split(line, delimiter) for line in tail])
            first_data = _first_data_line(lines, delimiter, width)
            if first_data > 0:
                header = _split(lines[first_data - 1], delimiter)
                if len(header) == width and not any(_typed(value) for value in header):
                    names = header
            if delimiter == " ":
                data_lines = lines[first_data:]
                counts = {len(line.split()) for line in data_lines}
                aligned = _fixed_width(data_lines)
                if len(counts) > 1 and aligned is not None and len(aligned) == max(counts):
                    specs = aligned  # empty fields: only the columns line up
                    width = len(specs)
                    names = []
    data = lines[first_data:]
    if specs is not None:
        rows = [[line[start:end].strip() for start, end in specs] for line in data]
    else:
        rows = [[value.strip() for value in _split(line, delimiter)] for line in data]
    rows = [row for row in rows if len(row) == width]
    if not rows:
        return Proposal({}, [], {}, ["No data lines found below the header."])
    columns = [[row[i] for row in rows] for i in range(width)]
    headers = [_header_name_units(name) for name in names] if names else []
    if headers and len({name for name, _ in headers}) != len(headers):
        headers = [(name.strip().strip('"'), "") for name in names]  # names only unique with their units
    # -- configuration of the parser
    if specs is not None:
        config["format"] = "fixed_width"
        if specs[0][0] == 0:
            config["widths"] = [end - start for start, end in specs]
        else:
            config["colspecs"] = [list(spec) for spec in specs]
    else:
        config["delimiter"] = delimiter
    if first_data and kind == "file":
        config["header_lines"] = first_data
    if headers:
        config["columns"] = [name for name, _ in headers]
    # -- the time
    timestamp, used = _propose_timestamp(columns, headers, lines[:first_data], questions, notes)
    if specs is not None and len(used) == 2 and timestamp is not None and timestamp["format"] != "year_doy_hhmm":
        # A date field and a time field side by side: one field, as a person reads it.
        first, second = used
        specs[first : second + 1] = [(specs[first][0], specs[second][1])]
        merged = [" ".join(pair) for pair in zip(columns[first], columns[second], strict=True)]
        columns[first : second + 1] = [merged]
        used = [first]
        config.pop("widths", None)
        config.pop("colspecs", None)
        if specs[0][0] == 0:
            config["widths"] = [end - start for start, end in specs]
        else:
            config["colspecs"] = [list(spec) for spec in specs]
    if timestamp is not None:
        naive = timestamp["format"] not in ("epoch", "epoch_ms") and not _carries_offset(columns, used)
        if naive:
            timestamp["timezone"] = timezone or "UTC"
            if not timezone:
                questions["timestamp.timezone"] = (
                    "The times carry no zone: in which zone does the logger keep its clock? (UTC until you say)"
                )
        elif timezone:
            timestamp["timezone"] = timezone
        refs: list[str | int] = [headers[i][0] if headers else i for i in used]
        timestamp["columns"] = refs
        config["timestamp"] = timestamp
    elif "timestamp.format" not in questions:
        config["timestamp"] = {"format": "receipt"}
        notes.append("No column holds a time: each line is stamped when it is read.")
    # -- channels
    file_sentinels = _file_sentinels(columns, used)
    channels: list[ChannelProposal] = []
    taken: set[str] = set()
    for index, values in enumerate(columns):
        if index in used or not any(values):
            continue
        name, units = headers[index] if headers else (f"Column {index + 1}", "")
        if toa5 and index < len(units_row):
            units = units_row[index].strip().strip('"')
            units = "" if units in TOA5_NOT_UNITS else units
        slug = slugify(name)
        while slug in taken:
            slug = f"{slug}-{index}"
        taken.add(slug)
        channel = ChannelProposal(slug=slug, name=name, source_field=name if headers else str(index))
        numbers = [_number(value) for value in values if value]
        if all(number is not None for number in numbers):
            channel.missing_values = _sentinels([n for n in numbers if n is not None], file_sentinels)
            channel.units = units
            if units and normalise_units is not None:
                channel.units, channel.note = _normalised(units, normalise_units)
        else:
            channel.kind = "text"
            if any(SENTINEL.match(value) or _number(value) is not None for value in values):
                channel.note = "mixes numbers and text: kept as text"
        channels.append(channel)
    if any("," in value and _number(value.replace(",", ".")) is not None for values in columns for value in values):
        notes.append(
            "Values are written with a decimal comma (12,5): the parser reads numbers with a decimal point, so "
            "such columns are proposed as text."
        )
    return Proposal(config, channels, questions, notes)


def _normalised(units: str, normalise_units: Callable[[str], str]) -> tuple[str, str]:
    """(units in their canonical spelling, or "" with a note saying why not)."""
    try:
        return normalise_units(units), ""
    except ValueError as exc:
        try:
            return normalise_units(units.lower()), ""  # "Volts", "Watts": headers capitalise units
        except ValueError:
            return "", f"units left empty: {exc}"


def _carries_offset(columns: list[list[str]], used: list[int]) -> bool:
    if not used:
        return False
    sample = [value for value in columns[used[-1]] if value][:50]
    return bool(sample) and all(re.search(r"(Z|[+-]\d\d:?\d\d)$", value) for value in sample)


def _file_sentinels(columns: list[list[str]], used: list[int]) -> set[float]:
    counts: Counter[float] = Counter()
    for index, values in enumerate(columns):
        if index in used:
            continue
        for value in values:
            if SENTINEL.match(value.strip()):
                counts[float(value)] += 1
    return {value for value, count in counts.items() if count >= 2}


def accepts_year_options() -> bool:
    """Whether the configuration language knows day-of-year files without a year column (``doy_hhmm`` with
    ``timestamp.year`` / ``timestamp.year_pattern``)."""
    return "doy_hhmm" in TIMESTAMP_FORMATS and {"year", "year_pattern"} <= set(TIMESTAMP_OPTIONS)


def _propose_timestamp(
    columns: list[list[str]],
    headers: list[tuple[str, str]],
    header_lines: list[str],
    questions: dict[str, str],
    notes: list[str],
) -> tuple[dict[str, Any] | None, list[int]]:
    """(timestamp section without columns and zone, the column positions it uses)."""
    kinds = [_column_time_kind(values[:200]) for values in columns]
    # One column holding date and time.
    for index, found in enumerate(kinds):
        if found and not found.startswith(("date:", "time:")):
            return {"format": found}, [index]
    # A date column and a time column.
    for index, found in enumerate(kinds[:-1]):
        after = kinds[index + 1]
        if found and found.startswith("date:") and after and after.startswith("time:"):
            date, time = found[5:], after[5:]
            joined = [f"{d} {t}" for d, t in zip(columns[index][:200], columns[index + 1][:200], strict=True)]
            if date == "%Y-%m-%d" and _column_time_kind(joined) == "iso":
                return {"format": "iso"}, [index, index + 1]
            return {"format": f"{date} {time}"}, [index, index + 1]
    # Year, day of year, hhmm (and seconds).
    numbers = [_integers(values[:500]) for values in columns]
    for index in range(len(columns) - 2):
        year, doy, hhmm = numbers[index : index + 3]
        if year and doy and hhmm and _is_year(year) and _is_doy(doy) and _is_hhmm(hhmm):
            used = [index, index + 1, index + 2]
            seconds = numbers[index + 3] if index + 3 < len(columns) else None
            if seconds and all(0 <= s < 60 for s in seconds) and _named_seconds(headers, index + 3):
                used.append(index + 3)
            return {"format": "year_doy_hhmm"}, used
    # Day of year and hhmm without a year.
    for index in range(len(columns) - 1):
        doy, hhmm = numbers[index : index + 2]
        if doy and hhmm and _is_doy(doy) and _is_hhmm(hhmm) and max(doy) > 24 and _named_doy(headers, index):
            if accepts_year_options():
                section: dict[str, Any] = {"format": "doy_hhmm"}
                if re.search(YEAR_IN_HEADER, "\n".join(header_lines)):
                    section["year_pattern"] = YEAR_IN_HEADER
                else:
                    questions["timestamp.year"] = "The lines carry no year: which year do they belong to?"
                return section, [index, index + 1]
            questions["timestamp.format"] = (
                "Day of year and hhmm columns without a year: this parser needs a year column "
                "(year_doy_hhmm), so no time is proposed."
            )
            return None, [index, index + 1]
    # Epoch seconds or milliseconds.
    for index, values in enumerate(columns):
        maybe = [_number(value) for value in values[:500] if value]
        parsed = [number for number in maybe if number is not None]
        if not parsed or len(parsed) != len(maybe):
            continue
        low, high = min(parsed), max(parsed)
        if low >= 9e8 and high <= 4.2e9:  # 1998 to 2103, in seconds
            return {"format": "epoch"}, [index]
        if low >= 9e11 and high <= 4.2e12:
            return {"format": "epoch_ms"}, [index]
    return None, []


def _is_year(values: list[int]) -> bool:
    return all(1970 <= v <= 2100 for v in values)


def _is_doy(values: list[int]) -> bool:
    return all(1 <= v <= 366 for v in values)


def _is_hhmm(values: list[int]) -> bool:
    return all(0 <= v <= 2400 and v % 100 < 60 for v in values)


def _named_seconds(headers: list[tuple[str, str]], index: int) -> bool:
    return not headers or bool(re.search(r"sec", headers[index][0], re.IGNORECASE))


def _named_doy(headers: list[tuple[str, str]], index: int) -> bool:
    return not headers or bool(re.search(r"doy|day|jd|julian", headers[index][0], re.IGNORECASE))


def kinds_supported() -> tuple[str, ...]:
    """The source kinds whose lines ``propose`` can read (a Modbus device has registers, not lines)."""
    return tuple(kind for kind in SOURCE_OPTIONS if kind not in ("command", "modbus"))
