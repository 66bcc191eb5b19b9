"""Turning raw instrument lines into timestamped fields: the one parser the server and the agent share.

A :class:`LineParser` is built from a source configuration already checked by
``daqbroker_agent.config.validate_source_config``. ``parse`` returns a :class:`ParsedLine` (UTC
microseconds since the Unix epoch, plus the line's fields addressable by column name or zero-based
position, or by regex group name) or raises :class:`LineError` with a reason a person can act on.
"""

from __future__ import annotations

import csv
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from zoneinfo import ZoneInfo

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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


class TimestampParser:
    def __init__(self, fmt: str = "iso", timezone: str = "UTC"):
        self.fmt = fmt
        self.zone = ZoneInfo(timezone)

    def __call__(self, raw: str) -> int:
        raw = raw.strip()
        if not raw:
            raise LineError("empty timestamp")
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
        try:
            moment = datetime.fromisoformat(raw) if self.fmt == "iso" else datetime.strptime(raw, self.fmt)
        except ValueError:
            expected = "an ISO 8601 time" if self.fmt == "iso" else f"a time in the format {self.fmt!r}"
            raise LineError(f"timestamp {raw!r} is not {expected}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=self.zone)
        return datetime_to_us(moment)


class LineParser:
    """Parses one line of a delimited or regex-described instrument output."""

    def __init__(self, config: dict):
        self.config = config
        self.format = config.get("format", "delimited")
        self.delimiter = config.get("delimiter", ",")
        self.columns: list = list(config.get("columns") or [])
        ts = config.get("timestamp") or {}
        self.ts_columns = [str(c) for c in ts.get("columns", [0])]
        self.ts_format = ts.get("format", "iso")
        self.parse_time = TimestampParser(
            self.ts_format if self.ts_format != "receipt" else "iso", ts.get("timezone", "UTC")
        )
        self.pattern = re.compile(config["regex"]) if self.format == "regex" else None

    @cached_property
    def _simple_split(self) -> bool:
        return len(self.delimiter) == 1

    def split(self, line: str) -> dict[str, str]:
        """The line's fields keyed by position ("0", "1", ...) and, when columns are named, by name."""
        if self.pattern is not None:
            match = self.pattern.search(line)
            if match is None:
                raise LineError("line does not match the configured regular expression")
            return {name: value for name, value in match.groupdict().items() if value is not None}
        if self._simple_split and '"' in line:
            parts = next(csv.reader([line], delimiter=self.delimiter))
        elif self.delimiter == " ":
            parts = line.split()  # space-aligned columns: runs of blanks are one separator
        else:
            parts = line.split(self.delimiter)
        fields = {str(index): part.strip() for index, part in enumerate(parts)}
        for index, name in enumerate(self.columns):
            if index < len(parts):
                fields[str(name)] = parts[index].strip()
        return fields

    def parse(self, line: str, received_us: int | None = None) -> ParsedLine:
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
        return ParsedLine(self.parse_time(raw_time), fields)
