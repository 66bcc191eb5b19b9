"""Validation of data-source configurations, shared by the server (at save time) and the agent.

Each kind of source has a small table of options. ``validate_source_config(kind, raw)`` returns the
configuration with defaults filled in, or raises :class:`ConfigError` naming the offending option
(``config.baudrate: 12345 is not a standard baud rate``), so a broken configuration is refused when it
is saved rather than when a worker first tries to use it.
"""

from __future__ import annotations

import codecs
import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from regex import error as regex_error

from daqbroker_agent.parsing import DEFAULT_NOT_BEFORE, needs_year, parse_moment
from daqbroker_agent.patterns import check_pattern_speed, compile_pattern
from daqbroker_agent.tail import DEFAULT_FINAL_LINE_AFTER


class ConfigError(ValueError):
    """A configuration value that cannot be used; ``field`` is a dotted path such as ``timestamp.format``."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


Validator = Callable[[Any, str], Any]

_MISSING = object()


@dataclass(frozen=True)
class Option:
    validate: Validator
    default: Any = _MISSING
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is _MISSING


# --- value validators ----------------------------------------------------------------------------


def text(*, allow_empty: bool = False, max_length: int = 1000) -> Validator:
    def check(value: Any, field: str) -> str:
        if not isinstance(value, str):
            raise ConfigError(field, f"must be text, not {type(value).__name__}")
        if not allow_empty and not value.strip():
            raise ConfigError(field, "must not be empty")
        if len(value) > max_length:
            raise ConfigError(field, f"is longer than {max_length} characters")
        return value

    return check


def integer(*, minimum: int | None = None, maximum: int | None = None, allowed: tuple[int, ...] = ()) -> Validator:
    def check(value: Any, field: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
                value = int(value)
            else:
                raise ConfigError(field, f"must be a whole number, not {value!r}")
        if allowed and value not in allowed:
            raise ConfigError(field, f"{value} is not one of {', '.join(map(str, allowed))}")
        if minimum is not None and value < minimum:
            raise ConfigError(field, f"must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise ConfigError(field, f"must be at most {maximum}")
        return value

    return check


def number(*, minimum: float | None = None, maximum: float | None = None, allowed: tuple[float, ...] = ()) -> Validator:
    def check(value: Any, field: str) -> float:
        if isinstance(value, bool):
            raise ConfigError(field, f"must be a number, not {value!r}")
        try:
            result = float(value)
        except (TypeError, ValueError):
            raise ConfigError(field, f"must be a number, not {value!r}") from None
        if result != result or result in (float("inf"), float("-inf")):
            raise ConfigError(field, "must be a finite number")
        if allowed and result not in allowed:
            raise ConfigError(field, f"{value} is not one of {', '.join(map(str, allowed))}")
        if minimum is not None and result < minimum:
            raise ConfigError(field, f"must be at least {minimum}")
        if maximum is not None and result > maximum:
            raise ConfigError(field, f"must be at most {maximum}")
        return result

    return check


def boolean() -> Validator:
    def check(value: Any, field: str) -> bool:
        if not isinstance(value, bool):
            raise ConfigError(field, f"must be true or false, not {value!r}")
        return value

    return check


def choice(*choices: str) -> Validator:
    def check(value: Any, field: str) -> str:
        if value not in choices:
            raise ConfigError(field, f"{value!r} is not one of {', '.join(choices)}")
        return value

    return check


def regex(*, named_groups: bool = False, one_group: bool = False) -> Validator:
    def check(value: Any, field: str) -> str:
        if value == "":
            return value  # no expression
        text()(value, field)
        try:
            compiled = compile_pattern(value)
        except regex_error as exc:
            raise ConfigError(field, f"is not a valid regular expression: {exc}") from None
        if named_groups and not compiled.groupindex:
            raise ConfigError(field, "needs at least one named group, e.g. (?P<temperature>[-\\d.]+)")
        if one_group and compiled.groups != 1:
            raise ConfigError(
                field, f"needs exactly one group, the year (it has {compiled.groups}), e.g. Year:\\s*(\\d{{4}})"
            )
        too_slow = check_pattern_speed(compiled)
        if too_slow:
            raise ConfigError(field, too_slow)
        return value

    return check


def encoding() -> Validator:
    def check(value: Any, field: str) -> str:
        text()(value, field)
        try:
            return codecs.lookup(value).name
        except LookupError:
            raise ConfigError(field, f"{value!r} is not a known text encoding") from None

    return check


def moment() -> Validator:
    """An ISO 8601 date (``2024-05-06``) or time (``2024-05-06T12:00:00+00:00``); naive means UTC."""

    def check(value: Any, field: str) -> str:
        if value == "":
            return value  # no limit
        text(max_length=64)(value, field)
        try:
            parse_moment(value)
        except (ValueError, OverflowError):
            raise ConfigError(field, f"{value!r} is not an ISO 8601 date or time, e.g. 2020-01-01") from None
        return value.strip()

    return check


def timezone_name() -> Validator:
    def check(value: Any, field: str) -> str:
        text()(value, field)
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                field, f"{value!r} is not a known time zone (use an IANA name such as Europe/Lisbon)"
            ) from None
        return value

    return check


def column_list() -> Validator:
    """Column references: names (text) or zero-based positions (whole numbers)."""

    def check(value: Any, field: str) -> list[str | int]:
        if not isinstance(value, list):
            raise ConfigError(field, "must be a list of column names or positions")
        result: list[str | int] = []
        for index, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                raise ConfigError(f"{field}[{index}]", "must be a column name or a zero-based position")
            if isinstance(item, int) and item < 0:
                raise ConfigError(f"{field}[{index}]", "a column position cannot be negative")
            if isinstance(item, str) and not item.strip():
                raise ConfigError(f"{field}[{index}]", "must not be empty")
            result.append(item)
        return result

    return check


def colspec_list() -> Validator:
    """Fixed-width fields as zero-based ``[start, end]`` character ranges (end excluded)."""

    def check(value: Any, field: str) -> list[list[int]]:
        if not isinstance(value, list):
            raise ConfigError(field, "must be a list of [start, end] character ranges, e.g. [[0, 19], [19, 27]]")
        result: list[list[int]] = []
        for index, item in enumerate(value):
            where = f"{field}[{index}]"
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise ConfigError(where, "must be a [start, end] pair of character positions")
            start, end = (integer(minimum=0, maximum=100_000)(part, where) for part in item)
            if end <= start:
                raise ConfigError(where, f"the end ({end}) must be after the start ({start})")
            result.append([start, end])
        return result

    return check


def width_list() -> Validator:
    def check(value: Any, field: str) -> list[int]:
        if not isinstance(value, list):
            raise ConfigError(field, "must be a list of field widths in characters, e.g. [19, 8, 8]")
        return [integer(minimum=1, maximum=100_000)(item, f"{field}[{index}]") for index, item in enumerate(value)]

    return check


def file_globs() -> Validator:
    """Comma-separated glob patterns of file names inside the source's folder (no folders, no ``..``)."""
    check_text = text(allow_empty=True, max_length=300)

    def check(value: Any, field: str) -> str:
        value = check_text(value, field)
        for glob in (part.strip() for part in value.split(",")):
            if "/" in glob or "\\" in glob or glob.startswith(".."):
                raise ConfigError(field, f"{glob!r} must name files inside the folder, not another folder")
        return value

    return check


def command_line() -> Validator:
    def check(value: Any, field: str) -> list[str]:
        if isinstance(value, str):
            value = value.split()
        if not isinstance(value, list) or not value or not all(isinstance(part, str) and part for part in value):
            raise ConfigError(field, 'must be a command as a list of words, e.g. ["sensors", "-j"]')
        return value

    return check


def section(options: Mapping[str, Option], *, checks: tuple[Callable[[dict, str], None], ...] = ()) -> Validator:
    def check(value: Any, field: str) -> dict:
        return validate_options(options, value, field, checks=checks)

    return check


def validate_options(
    options: Mapping[str, Option],
    raw: Any,
    prefix: str,
    *,
    checks: tuple[Callable[[dict, str], None], ...] = (),
) -> dict:
    if not isinstance(raw, Mapping):
        raise ConfigError(prefix, "must be an object of option names and values")
    for key in raw:
        if key not in options:
            close = difflib.get_close_matches(str(key), list(options), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known options: {', '.join(sorted(options))}"
            raise ConfigError(_join(prefix, str(key)), f"unknown option{hint}")
    result: dict[str, Any] = {}
    for key, option in options.items():
        field = _join(prefix, key)
        if key in raw and raw[key] is not None:
            result[key] = option.validate(raw[key], field)
        elif option.required:
            raise ConfigError(field, "is required")
        else:
            result[key] = option.default() if callable(option.default) else option.default
    for extra_check in checks:
        extra_check(result, prefix)
    return result


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


# --- the parsing options every line-based source shares -----------------------------------------

TIMESTAMP_FORMATS = ("iso", "epoch", "epoch_ms", "year_doy_hhmm", "doy_hhmm", "receipt")

TIMESTAMP_OPTIONS = {
    "columns": Option(column_list(), default=lambda: [0], help="column(s) joined with a space to form the time"),
    "format": Option(
        text(),
        default="iso",
        help=(
            "iso, epoch (seconds), epoch_ms, year_doy_hhmm (year, day of year and hhmm columns, optionally "
            "seconds), doy_hhmm (day of year and hhmm columns, optionally seconds; the year from year or "
            "year_pattern), receipt (time of reading) or a strptime pattern like %Y-%m-%d %H:%M:%S"
        ),
    ),
    "timezone": Option(timezone_name(), default="UTC", help="zone of naive timestamps"),
    "year": Option(
        integer(minimum=1000, maximum=9999),
        default=None,
        help="times without a year (doy_hhmm, a strptime pattern without %Y): the year they belong to",
    ),
    "year_pattern": Option(
        regex(one_group=True),
        default="",
        help="times without a year, in files: a regular expression with one group, the year, searched in "
        "the file's header lines (e.g. Year:\\s*(\\d{4}))",
    ),
}


def _check_timestamp(result: dict, prefix: str) -> None:
    fmt = result["format"]
    if fmt not in TIMESTAMP_FORMATS and "%" not in fmt:
        raise ConfigError(
            _join(prefix, "format"),
            f"{fmt!r} is neither one of {', '.join(TIMESTAMP_FORMATS)} nor a strptime pattern containing %",
        )
    if fmt != "receipt" and not result["columns"]:
        raise ConfigError(_join(prefix, "columns"), "name at least one column holding the time")
    if fmt == "year_doy_hhmm" and len(result["columns"]) not in (3, 4):
        raise ConfigError(
            _join(prefix, "columns"),
            "year_doy_hhmm needs three columns (year, day of year, hhmm) or four (and seconds)",
        )
    if fmt == "doy_hhmm" and len(result["columns"]) not in (2, 3):
        raise ConfigError(
            _join(prefix, "columns"), "doy_hhmm needs two columns (day of year, hhmm) or three (and seconds)"
        )
    year, year_pattern = result.get("year"), result.get("year_pattern")
    if fmt != "receipt" and needs_year(fmt):
        if year is None and not year_pattern:
            what = "doy_hhmm has no year column" if fmt == "doy_hhmm" else f"{fmt!r} has no year (%Y)"
            raise ConfigError(
                _join(prefix, "year"),
                f"{what}: give year (e.g. 2024) or year_pattern (a regular expression with one group finding "
                "the year in a header line of the file); without one the times would be read as 1900",
            )
        if year is not None and year_pattern:
            raise ConfigError(_join(prefix, "year_pattern"), "give year or year_pattern, not both")
    else:
        for option in ("year", "year_pattern"):
            if result.get(option) not in (None, ""):
                raise ConfigError(
                    _join(prefix, option),
                    f"only applies when the time has no year (doy_hhmm, or a strptime pattern without %Y), "
                    f"not to {fmt!r}",
                )


PARSER_OPTIONS = {
    "format": Option(choice("delimited", "regex", "fixed_width"), default="delimited"),
    "delimiter": Option(text(allow_empty=True, max_length=8), default=",", help='" " splits on runs of blanks'),
    "quotechar": Option(
        text(allow_empty=True, max_length=1),
        default='"',
        help='delimited: the character quoting fields that hold the delimiter; "" for no quoting',
    ),
    "regex": Option(regex(named_groups=True), default=""),
    "columns": Option(column_list(), default=list, help="names of the fields by position"),
    "widths": Option(width_list(), default=list, help="fixed_width: widths of consecutive fields, in characters"),
    "colspecs": Option(
        colspec_list(), default=list, help="fixed_width: [start, end] character ranges of the fields (end excluded)"
    ),
    "timestamp": Option(
        section(TIMESTAMP_OPTIONS, checks=(_check_timestamp,)),
        default=lambda: {**TIMESTAMP_DEFAULTS, "columns": list(TIMESTAMP_DEFAULTS["columns"])},
    ),
    "not_before": Option(
        moment(),
        default=DEFAULT_NOT_BEFORE,
        help="readings timed before this ISO date or time are refused with the reason (a misread year); "
        '"" for no limit but the server\'s (1900)',
    ),
    "not_after": Option(
        moment(),
        default="",
        help="readings timed after this ISO date or time (a date alone: the end of that day) are refused; "
        "the server refuses times more than DAQBROKER_MAX_FUTURE_SECONDS ahead of its clock in any case",
    ),
}
TIMESTAMP_DEFAULTS: dict[str, Any] = {
    "columns": [0],
    "format": "iso",
    "timezone": "UTC",
    "year": None,
    "year_pattern": "",
}


def _check_parser(result: dict, prefix: str, *, file: bool = False) -> None:
    if result["timestamp"].get("year_pattern"):
        if not file:
            raise ConfigError(
                _join(prefix, "timestamp.year_pattern"), "is searched in a file's header lines: file sources only"
            )
        if not result["header_lines"]:
            raise ConfigError(
                _join(prefix, "timestamp.year_pattern"),
                "is searched in the file's header lines: set header_lines to how many there are",
            )
    window = result["not_before"], result["not_after"]
    if all(window) and parse_moment(window[0]) >= parse_moment(window[1], end_of_day=True):
        raise ConfigError(_join(prefix, "not_after"), "must be later than not_before")
    if result["delimiter"] == "":
        raise ConfigError(_join(prefix, "delimiter"), "must not be empty")
    if result["format"] == "regex" and not result["regex"]:
        raise ConfigError(_join(prefix, "regex"), "is required when format is regex")
    if result["format"] == "delimited" and result["regex"]:
        raise ConfigError(_join(prefix, "regex"), "only applies when format is regex")
    if result["format"] == "fixed_width":
        if bool(result["widths"]) == bool(result["colspecs"]):
            raise ConfigError(
                _join(prefix, "widths"), "fixed_width needs either widths or colspecs (exactly one of the two)"
            )
        if result["regex"]:
            raise ConfigError(_join(prefix, "regex"), "only applies when format is regex")
    else:
        for option in ("widths", "colspecs"):
            if result[option]:
                raise ConfigError(_join(prefix, option), "only applies when format is fixed_width")
    if result["quotechar"] and result["quotechar"] in result["delimiter"]:
        raise ConfigError(_join(prefix, "quotechar"), "must differ from the delimiter")


def _check_file(result: dict, prefix: str) -> None:
    _check_parser(result, prefix, file=True)
    # Files are read as bytes and cut at b"\n": the encoding must write ASCII as ASCII (not UTF-16).
    if "\n,; \t".encode(result["encoding"], errors="replace") != b"\n,; \t":
        raise ConfigError(_join(prefix, "encoding"), f"{result['encoding']} files cannot be read line by line")


STANDARD_BAUDRATES = (
    50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800, 9600, 19200, 38400, 57600, 115200,
    230400, 460800, 500000, 576000, 921600, 1000000,
)  # fmt: skip

LINE_OPTIONS = {
    "request": Option(text(allow_empty=True, max_length=200), default="", help='sent before reading, e.g. "R\\r\\n"'),
    "response_lines": Option(
        integer(minimum=0, maximum=1_000_000),
        default=1,
        help="with a request: lines in the answer (0: read until a pause of `timeout` seconds)",
    ),
    "line_terminator": Option(choice("\n", "\r\n", "\r"), default="\n"),
    "encoding": Option(encoding(), default="utf-8"),
    "timeout": Option(number(minimum=0.01, maximum=600), default=2.0, help="seconds to wait for a line"),
    "listen_seconds": Option(
        number(minimum=0, maximum=3600),
        default=0.0,
        help="streaming instruments: read for this long each run (0: until a pause of `timeout` seconds)",
    ),
    "max_lines": Option(integer(minimum=1, maximum=1_000_000), default=1000, help="lines read per collection run"),
}

# --- Modbus (daqbroker_agent.modbus) -----------------------------------------------------------------

MODBUS_FUNCTIONS = ("holding", "input", "coil", "discrete")
MODBUS_TYPES = ("int16", "uint16", "int32", "uint32", "float32", "float64", "bool")
MODBUS_WORDS = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "float64": 4, "bool": 1}
MODBUS_MAX_ENTRIES = 2000  # register-map entries per source: bounds a poll's work
MODBUS_MAX_REGISTERS = 125  # registers per read request (the protocol's limit for function codes 3 and 4)
MODBUS_MAX_BITS = 2000  # coils or discrete inputs per read request (the limit for function codes 1 and 2)

MODBUS_ENTRY_OPTIONS = {
    "field": Option(text(max_length=200), help="the name a channel's source field takes the value by"),
    "address": Option(integer(minimum=0, maximum=65535), help="zero-based address of the (first) register"),
    "function": Option(choice(*MODBUS_FUNCTIONS), default="holding"),
    "type": Option(choice(*MODBUS_TYPES), default=None, help="uint16 for registers, bool for coils and inputs"),
    "word_order": Option(choice("big", "little"), default="big", help="big: the most significant register first"),
    "byte_order": Option(choice("big", "little"), default="big", help="big: each register's high byte first"),
    "scale": Option(number(), default=1.0, help="value = raw * scale + offset"),
    "offset": Option(number(), default=0.0),
}


def _check_modbus_entry(entry: dict, prefix: str) -> None:
    bits = entry["function"] in ("coil", "discrete")
    if entry["type"] is None:
        entry["type"] = "bool" if bits else "uint16"
    if bits and entry["type"] != "bool":
        raise ConfigError(
            _join(prefix, "type"), f"a {entry['function']} is a single bit: its type is bool, not {entry['type']}"
        )
    if not bits and entry["type"] == "bool":
        raise ConfigError(
            _join(prefix, "type"),
            f"{entry['function']} registers hold numbers ({', '.join(MODBUS_TYPES[:-1])}); bool is for coils "
            "and discrete inputs",
        )
    last = entry["address"] + MODBUS_WORDS[entry["type"]] - 1
    if last > 65535:
        raise ConfigError(_join(prefix, "address"), f"a {entry['type']} at {entry['address']} runs past 65535")
    if entry["scale"] == 0:
        raise ConfigError(_join(prefix, "scale"), "must not be 0 (every reading would equal the offset)")


def register_map() -> Validator:
    """A Modbus source's register map: a list of entries, one channel field each."""
    check_entry = section(MODBUS_ENTRY_OPTIONS, checks=(_check_modbus_entry,))

    def check(value: Any, field: str) -> list[dict]:
        if not isinstance(value, list) or not value:
            raise ConfigError(
                field,
                'must be a list of registers, e.g. [{"field": "temperature", "address": 0, "type": "float32"}]',
            )
        if len(value) > MODBUS_MAX_ENTRIES:
            raise ConfigError(field, f"has {len(value)} entries; at most {MODBUS_MAX_ENTRIES}")
        entries = [check_entry(item, f"{field}[{index}]") for index, item in enumerate(value)]
        seen: dict[str, int] = {}
        for index, entry in enumerate(entries):
            if entry["field"] in seen:
                raise ConfigError(
                    f"{field}[{index}].field",
                    f"{entry['field']!r} is already the field of entry {seen[entry['field']]}: each entry feeds "
                    "its own channel",
                )
            seen[entry["field"]] = index
        return entries

    return check


MODBUS_OPTIONS: dict[str, Option] = {
    "transport": Option(choice("tcp", "rtu"), default="tcp", help="tcp: Modbus TCP; rtu: Modbus RTU on a serial line"),
    "host": Option(text(allow_empty=True, max_length=255), default="", help="tcp: the device or gateway"),
    "port": Option(integer(minimum=1, maximum=65535), default=502, help="tcp: its port"),
    "url": Option(
        text(allow_empty=True),
        default="",
        help="rtu: serial device (/dev/ttyUSB0) or pyserial URL (socket://host:port for RTU over TCP)",
    ),
    "baudrate": Option(integer(allowed=STANDARD_BAUDRATES), default=9600, help="rtu"),
    "bytesize": Option(integer(allowed=(7, 8)), default=8, help="rtu"),
    "parity": Option(choice("N", "E", "O"), default="E", help="rtu (the Modbus standard's default is even)"),
    "stopbits": Option(number(allowed=(1, 2)), default=1.0, help="rtu"),
    "unit": Option(integer(minimum=1, maximum=255), default=1, help="the device's unit (slave) id"),
    "timeout": Option(number(minimum=0.05, maximum=60), default=1.0, help="seconds to wait for each answer"),
    "retries": Option(integer(minimum=0, maximum=5), default=1, help="times a request without an answer is sent again"),
    "max_registers": Option(
        integer(minimum=1, maximum=MODBUS_MAX_REGISTERS),
        default=MODBUS_MAX_REGISTERS,
        help="registers per read request: contiguous registers are read together, up to this many "
        "(some devices take fewer than the protocol's 125)",
    ),
    "registers": Option(register_map(), help="the register map: one entry per channel field"),
}


def _check_modbus(result: dict, prefix: str) -> None:
    if result["transport"] == "tcp":
        if not result["host"].strip():
            raise ConfigError(_join(prefix, "host"), "is required for Modbus TCP")
        if result["url"]:
            raise ConfigError(_join(prefix, "url"), "is for Modbus RTU (transport rtu); Modbus TCP uses host and port")
    else:
        if not result["url"].strip():
            raise ConfigError(_join(prefix, "url"), "is required for Modbus RTU: a serial device or pyserial URL")
        if result["host"]:
            raise ConfigError(_join(prefix, "host"), "is for Modbus TCP; Modbus RTU uses url")


SOURCE_OPTIONS: dict[str, dict[str, Option]] = {
    "file": {
        "path": Option(text(), help="folder holding the files"),
        "pattern": Option(text(), default="*", help="glob pattern of the files inside the folder"),
        "rotated_pattern": Option(
            file_globs(),
            default="",
            help="glob(s), comma-separated, of the names files are rotated to (default: the pattern followed by "
            ".1, .2… or -20260101…); files that appeared and were rotated while collection was stopped are found "
            "there. Compressed rotations (.gz…) cannot be followed byte by byte",
        ),
        "header_lines": Option(integer(minimum=0, maximum=1000), default=0),
        "final_line_after": Option(
            number(minimum=0, maximum=30 * 86400),
            default=DEFAULT_FINAL_LINE_AFTER,
            help="seconds a file must stay unchanged before its last line is read without a newline (once); "
            "0: never (only lines ending with a newline are read)",
        ),
        "encoding": Option(encoding(), default="utf-8"),
        "archive": Option(boolean(), default=False, help="keep a copy of every raw file read"),
        "max_lines": Option(
            integer(minimum=1, maximum=10_000_000), default=200_000, help="lines read per collection run"
        ),
        **PARSER_OPTIONS,
    },
    "serial": {
        "url": Option(text(), help="device (/dev/ttyUSB0) or pyserial URL (loop://, socket://host:port, rfc2217://)"),
        "baudrate": Option(integer(allowed=STANDARD_BAUDRATES), default=9600),
        "bytesize": Option(integer(allowed=(5, 6, 7, 8)), default=8),
        "parity": Option(choice("N", "E", "O", "M", "S"), default="N"),
        "stopbits": Option(number(allowed=(1, 1.5, 2)), default=1.0),
        **LINE_OPTIONS,
        **PARSER_OPTIONS,
    },
    "tcp": {
        "host": Option(text(max_length=255)),
        "port": Option(integer(minimum=1, maximum=65535)),
        **LINE_OPTIONS,
        **PARSER_OPTIONS,
    },
    "modbus": MODBUS_OPTIONS,
    "command": {
        "command": Option(command_line()),
        "timeout": Option(number(minimum=0.1, maximum=3600), default=30.0),
        **PARSER_OPTIONS,
    },
}


def mqtt_fields() -> Validator:
    """The fields of an MQTT source: ``[{"name": "t_air", "topic": "lab/+/env", "path": "temperature"}]``."""
    from daqbroker_agent.mqtt import path_problem, topic_filter_problem

    options = {
        "name": Option(text(max_length=200), help="what a channel's source field names"),
        "topic": Option(text(max_length=1000), help="a topic filter; + and # are wildcards"),
        "path": Option(text(allow_empty=True, max_length=500), default="", help="into a JSON payload"),
    }

    def check(value: Any, field: str) -> list[dict]:
        if not isinstance(value, list) or not value:
            raise ConfigError(field, 'must be a list of fields, e.g. [{"name": "t", "topic": "lab/room1/temperature"}]')
        if len(value) > 1000:
            raise ConfigError(field, "at most 1000 fields")
        result: list[dict] = []
        for index, item in enumerate(value):
            where = f"{field}[{index}]"
            checked = validate_options(options, item, where)
            problem = topic_filter_problem(checked["topic"])
            if problem:
                raise ConfigError(f"{where}.topic", problem)
            problem = path_problem(checked["path"])
            if problem:
                raise ConfigError(f"{where}.path", problem)
            if any(other["name"] == checked["name"] for other in result):
                raise ConfigError(f"{where}.name", f"{checked['name']!r} is named twice")
            result.append(checked)
        return result

    return check


def mqtt_password_env() -> Validator:
    def check(value: Any, field: str) -> str:
        from daqbroker_agent.mqtt import PASSWORD_ENV

        text(allow_empty=True, max_length=100)(value, field)
        if value and not PASSWORD_ENV.fullmatch(value):
            raise ConfigError(
                field,
                "must name an environment variable of the collecting process starting with MQTT_PASSWORD_ "
                "(e.g. MQTT_PASSWORD_LAB): a password is never stored in a source's configuration",
            )
        return value

    return check


MQTT_TIMESTAMP_OPTIONS = {
    "path": Option(
        text(allow_empty=True, max_length=500),
        default="",
        help="path of the time in a JSON payload (e.g. ts); empty: the time the message was received",
    ),
    "format": Option(text(max_length=100), default="iso", help="iso, epoch, epoch_ms or a strptime pattern"),
    "timezone": Option(timezone_name(), default="UTC", help="zone of naive timestamps"),
}


def _check_mqtt_timestamp(result: dict, prefix: str) -> None:
    from daqbroker_agent.mqtt import path_problem

    fmt = result["format"]
    if fmt not in ("iso", "epoch", "epoch_ms") and "%" not in fmt:
        raise ConfigError(_join(prefix, "format"), f"{fmt!r} is neither iso, epoch, epoch_ms nor a strptime pattern")
    if "%" in fmt and needs_year(fmt):
        raise ConfigError(_join(prefix, "format"), f"{fmt!r} has no year (%Y): the times would be read as 1900")
    problem = path_problem(result["path"])
    if problem:
        raise ConfigError(_join(prefix, "path"), problem)


def _check_mqtt(result: dict, prefix: str) -> None:
    if result["password_env"] and not result["username"]:
        raise ConfigError(_join(prefix, "password_env"), "a password needs a username")
    if result["ca_file"] and not result["tls"]:
        raise ConfigError(_join(prefix, "ca_file"), "only applies with tls = true")


SOURCE_OPTIONS["mqtt"] = {
    "host": Option(text(max_length=255), help="the broker's host name or address"),
    "port": Option(integer(minimum=1, maximum=65535), default=1883, help="1883; usually 8883 with TLS"),
    "fields": Option(
        mqtt_fields(),
        help='[{"name": ..., "topic": ..., "path": ...}]: a channel takes the field its source field names',
    ),
    "qos": Option(
        integer(allowed=(0, 1, 2)), default=1, help="1: every message at least once (0 loses what the broker drops)"
    ),
    "client_id": Option(
        text(allow_empty=True, max_length=128),
        default="",
        help="the session's name at the broker; empty: daqbroker-<source> (set one when several DAQBroker "
        "installations use one broker)",
    ),
    "keepalive": Option(integer(minimum=5, maximum=3600), default=60, help="seconds between pings"),
    "tls": Option(boolean(), default=False, help="connect with TLS"),
    "ca_file": Option(
        text(allow_empty=True, max_length=4000), default="", help="CA bundle of a broker with a private certificate"
    ),
    "username": Option(text(allow_empty=True, max_length=200), default=""),
    "password_env": Option(
        mqtt_password_env(),
        default="",
        help="the environment variable (MQTT_PASSWORD_...) holding the password, on the collecting host",
    ),
    "encoding": Option(encoding(), default="utf-8"),
    "timestamp": Option(
        section(MQTT_TIMESTAMP_OPTIONS, checks=(_check_mqtt_timestamp,)),
        default=lambda: {"path": "", "format": "iso", "timezone": "UTC"},
    ),
}


def opcua_nodes() -> Validator:
    """The nodes of an OPC UA source: ``[{"node": "ns=2;i=7", "name": "t_air"}]``."""
    from daqbroker_agent.opcua import node_id_problem

    options = {
        "node": Option(text(max_length=1200), help="a node id: ns=2;i=7, ns=3;s=Boiler.Temperature"),
        "name": Option(text(max_length=200), help="what a channel's source field names"),
    }

    def check(value: Any, field: str) -> list[dict]:
        if not isinstance(value, list) or not value:
            raise ConfigError(field, 'must be a list of nodes, e.g. [{"node": "ns=2;i=7", "name": "t"}]')
        if len(value) > 1000:
            raise ConfigError(field, "at most 1000 nodes")
        result: list[dict] = []
        for index, item in enumerate(value):
            where = f"{field}[{index}]"
            checked = validate_options(options, item, where)
            problem = node_id_problem(checked["node"])
            if problem:
                raise ConfigError(f"{where}.node", problem)
            if any(other["name"] == checked["name"] for other in result):
                raise ConfigError(f"{where}.name", f"{checked['name']!r} is named twice")
            if any(other["node"] == checked["node"] for other in result):
                raise ConfigError(f"{where}.node", f"{checked['node']!r} is listed twice")
            result.append(checked)
        return result

    return check


def opcua_password_env() -> Validator:
    def check(value: Any, field: str) -> str:
        from daqbroker_agent.opcua import PASSWORD_ENV

        text(allow_empty=True, max_length=100)(value, field)
        if value and not PASSWORD_ENV.fullmatch(value):
            raise ConfigError(
                field,
                "must name an environment variable of the collecting process starting with OPCUA_PASSWORD_ "
                "(e.g. OPCUA_PASSWORD_PLANT): a password is never stored in a source's configuration",
            )
        return value

    return check


def opcua_path() -> Validator:
    def check(value: Any, field: str) -> str:
        from daqbroker_agent.opcua import path_problem

        text(allow_empty=True, max_length=500)(value, field)
        problem = path_problem(value)
        if problem:
            raise ConfigError(field, problem)
        return value

    return check


def opcua_file() -> Validator:
    """A certificate's or key's path on the collecting host: absolute, or empty."""

    def check(value: Any, field: str) -> str:
        text(allow_empty=True, max_length=4000)(value, field)
        if value and not value.startswith("/"):
            raise ConfigError(field, f"{value!r} must be an absolute path on the collecting host")
        return value

    return check


def _check_opcua(result: dict, prefix: str) -> None:
    secured = result["security_policy"] != "None"
    for name in ("certificate", "private_key"):
        if secured and not result[name]:
            raise ConfigError(
                _join(prefix, name), f"security_policy {result['security_policy']} needs the client's {name} file"
            )
    for name in ("certificate", "private_key", "server_certificate"):
        if result[name] and not secured:
            raise ConfigError(_join(prefix, name), "only applies with a security_policy other than None")
    if result["password_env"] and not result["username"]:
        raise ConfigError(_join(prefix, "password_env"), "a password needs a username")
    if result["username"] and not result["password_env"]:
        raise ConfigError(_join(prefix, "username"), "a user name needs password_env (the password's variable)")


SOURCE_OPTIONS["opcua"] = {
    "host": Option(text(max_length=255), help="the OPC UA server's host name or address"),
    "port": Option(integer(minimum=1, maximum=65535), default=4840, help="4840 by default"),
    "path": Option(opcua_path(), default="", help="the endpoint's path, e.g. /freeopcua/server/"),
    "nodes": Option(
        opcua_nodes(), help='[{"node": "ns=2;i=7", "name": ...}]: a channel takes the node its source field names'
    ),
    "publishing_interval": Option(
        number(minimum=10, maximum=3_600_000),
        default=1000,
        help="milliseconds between the server's notifications (and its sampling of the nodes)",
    ),
    "timeout": Option(number(minimum=1, maximum=120), default=10, help="seconds a request may take"),
    "history": Option(
        boolean(),
        default=False,
        help="on each (re)connection, read back each node's history since its latest value stored (the server "
        "must keep history): changes while disconnected are not lost",
    ),
    "security_policy": Option(
        choice("None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"),
        default="None",
        help="None: no signing or encryption; otherwise the policy of a secured endpoint (with certificate and key)",
    ),
    "security_mode": Option(
        choice("Sign", "SignAndEncrypt"),
        default="SignAndEncrypt",
        help="with a security_policy: sign, or sign and encrypt",
    ),
    "certificate": Option(
        opcua_file(), default="", help="the client's certificate (DER or PEM), a file on the collecting host"
    ),
    "private_key": Option(
        opcua_file(), default="", help="the client's private key (PEM), a file on the collecting host"
    ),
    "server_certificate": Option(
        opcua_file(), default="", help="the server's certificate to trust (empty: the one the endpoint presents)"
    ),
    "username": Option(text(allow_empty=True, max_length=200), default=""),
    "password_env": Option(
        opcua_password_env(),
        default="",
        help="the environment variable (OPCUA_PASSWORD_...) holding the password, on the collecting host",
    ),
}

# Sources read continuously over a connection kept open (not collected by the periodic dispatcher).
STREAMING_KINDS = ("mqtt", "opcua")

AGENT_COLLECTS = ("file", "serial", "tcp", "modbus", "command", "mqtt", "opcua")


def option_schema(kind: str) -> list[dict[str, Any]]:
    """The options of a source of ``kind`` (name, required, default, help), for forms generated from them
    (the admin's configuration field, the "New data source" page). A section's options are listed as
    ``section.option``."""
    rows: list[dict[str, Any]] = []
    for name, option in SOURCE_OPTIONS[kind].items():
        if name == "timestamp" and kind == "mqtt":
            for sub, inner in MQTT_TIMESTAMP_OPTIONS.items():
                default = inner.default
                rows.append({"name": f"timestamp.{sub}", "required": False, "default": default, "help": inner.help})
            continue
        if name == "timestamp":
            for sub, inner in TIMESTAMP_OPTIONS.items():
                default = TIMESTAMP_DEFAULTS[sub]
                rows.append({"name": f"timestamp.{sub}", "required": False, "default": default, "help": inner.help})
            continue
        default = None if option.required else (option.default() if callable(option.default) else option.default)
        rows.append({"name": name, "required": option.required, "default": default, "help": option.help})
    return rows


def validate_source_config(kind: str, raw: Any, prefix: str = "") -> dict:
    """The configuration of a source of ``kind`` with defaults filled in, or ConfigError."""
    _refuse_nul(raw, prefix)
    if kind == "agent":
        return _validate_agent(raw, prefix)
    if kind not in SOURCE_OPTIONS:
        raise ConfigError(prefix or "kind", f"unknown source kind {kind!r}")
    check = {"file": _check_file, "modbus": _check_modbus, "mqtt": _check_mqtt, "opcua": _check_opcua}.get(
        kind, _check_parser
    )
    return validate_options(SOURCE_OPTIONS[kind], raw, prefix, checks=(check,))


def _refuse_nul(value: Any, field: str) -> None:
    """No NUL character anywhere: databases cannot store one in text (PostgreSQL refuses it in JSON)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ConfigError(field, "must not contain a NUL character")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _refuse_nul(key, field)
            _refuse_nul(item, _join(field, str(key)))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _refuse_nul(item, f"{field}[{index}]")


def _validate_agent(raw: Any, prefix: str) -> dict:
    """An agent source says what the agent collects on its own machine: ``{"collect": {"kind": ..., ...}}``."""
    if not isinstance(raw, Mapping):
        raise ConfigError(prefix, "must be an object of option names and values")
    unknown = set(raw) - {"collect"}
    if unknown:
        raise ConfigError(_join(prefix, sorted(unknown)[0]), "unknown option; an agent source has only 'collect'")
    collect = raw.get("collect")
    field = _join(prefix, "collect")
    if not isinstance(collect, Mapping):
        raise ConfigError(field, 'is required: what the agent reads, e.g. {"kind": "serial", "url": "/dev/ttyUSB0"}')
    kind = collect.get("kind")
    if kind not in AGENT_COLLECTS:
        raise ConfigError(_join(field, "kind"), f"{kind!r} is not one of {', '.join(AGENT_COLLECTS)}")
    rest = {key: value for key, value in collect.items() if key != "kind"}
    return {"collect": {"kind": kind, **validate_source_config(kind, rest, field)}}
