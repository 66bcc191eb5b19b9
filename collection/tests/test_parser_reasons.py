"""Every reason the shared parser gives (each ``LineError(...)`` in daqbroker_agent/parsing.py) gets its kind.

The lines are parsed for real, so the reasons are the parser's own words; the collectors store them as
``line not parsed: <reason>`` (collection/collectors/base.py), which is what is classified here. A new
``LineError`` in the parser fails ``test_every_line_error_of_the_parser_is_reached_by_a_case`` until a case makes it.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest

from collection.choices import RejectionKind
from collection.reasons import classify_reason
from daqbroker_agent import parsing
from daqbroker_agent.parsing import LineError, LineParser, TimestampParser


def _parse(config: dict, line: str, year: int | None = None) -> None:
    LineParser(config).parse(line, year=year)


def _timestamp(fmt: str, raw: str, year: int | None = None) -> None:
    TimestampParser(fmt, "UTC", year)(raw)


DELIMITED = {"format": "delimited", "delimiter": ",", "timestamp": {"columns": [0], "format": "iso"}}

REGEX = {"format": "regex", "regex": r"^(?P<t>\S+) (?P<v>\S+)$", "timestamp": {"columns": ["t"]}}
# Nested repetition on a line that almost matches: far past the parser's time budget for one match.
CATASTROPHIC = {"format": "regex", "regex": r"^(?P<t>(a|a)+)$", "timestamp": {"columns": ["t"]}}

# (how to make the parser raise, the expected kind); each case names the reason it makes
CASES = [
    (lambda: _timestamp("%Y-%m-%d %H%M", "2024-01-02 1275"), RejectionKind.BAD_TIME),  # hhmm minutes
    (lambda: _timestamp("iso", "  "), RejectionKind.BAD_TIME),  # empty timestamp
    (lambda: _timestamp("%j %H:%M", "12 10:00"), RejectionKind.BAD_TIME),  # no year known
    (lambda: _timestamp("epoch", "soon"), RejectionKind.BAD_TIME),  # not a number of seconds
    (lambda: _timestamp("epoch", "nan"), RejectionKind.BAD_TIME),  # not finite
    (lambda: _timestamp("epoch_ms", "-inf"), RejectionKind.BAD_TIME),  # not finite
    (lambda: _timestamp("iso", "yesterday"), RejectionKind.BAD_TIME),  # not an ISO 8601 time
    (lambda: _timestamp("year_doy_hhmm", "2024 12"), RejectionKind.BAD_TIME),  # too few numbers
    (lambda: _timestamp("year_doy_hhmm", "2024 x 1200"), RejectionKind.BAD_TIME),  # not numbers
    (lambda: _timestamp("year_doy_hhmm", "2024 1.5 1200"), RejectionKind.BAD_TIME),  # day not whole
    (lambda: _timestamp("year_doy_hhmm", "2024 12 1290"), RejectionKind.BAD_TIME),  # hhmm minutes
    (lambda: _timestamp("doy_hhmm", "12 2500", 2024), RejectionKind.BAD_TIME),  # hhmm past 2400
    (lambda: _timestamp("year_doy_hhmm", "0 12 1200"), RejectionKind.BAD_TIME),  # year out of range
    (lambda: _timestamp("year_doy_hhmm", "2023 366 1200"), RejectionKind.BAD_TIME),  # day not in the year
    (lambda: _timestamp("year_doy_hhmm", "2024 12 1200 61"), RejectionKind.BAD_TIME),  # seconds
    (lambda: _timestamp("year_doy_hhmm", "9999 365 2400"), RejectionKind.BAD_TIME),  # past year 9999
    (lambda: _parse(CATASTROPHIC, "a" * 40 + "!"), RejectionKind.UNPARSED),  # the regex took too long
    (lambda: _parse(REGEX, "x"), RejectionKind.UNPARSED),  # does not match the regular expression
    (lambda: _parse(DELIMITED, "   \r\n"), RejectionKind.UNPARSED),  # empty line
    (
        lambda: _parse({**DELIMITED, "timestamp": {"columns": [3], "format": "iso"}}, "2024-01-02T00:00:00Z,1"),
        RejectionKind.MISSING_FIELD,  # the time column is missing from the line
    ),
    (lambda: _parse(DELIMITED, "1899-12-31T00:00:00Z,1"), RejectionKind.OUT_OF_WINDOW),  # before not_before
    (
        lambda: _parse({**DELIMITED, "not_after": "2020-01-01"}, "2024-01-02T00:00:00Z,1"),
        RejectionKind.OUT_OF_WINDOW,  # after not_after
    ),
]


def _raised(make) -> tuple[LineError, int]:
    """The LineError ``make`` raises and the line of parsing.py that raised it."""
    with pytest.raises(LineError) as raised:
        make()
    frames = [f for f in traceback.extract_tb(raised.value.__traceback__) if f.filename == parsing.__file__]
    assert frames[-1].line is not None and frames[-1].line.startswith("raise LineError(")
    return raised.value, frames[-1].lineno or 0


@pytest.mark.parametrize(("make", "kind"), CASES, ids=[f"{i}-{c[1]}" for i, c in enumerate(CASES)])
def test_each_reason_of_the_parser_gets_its_kind(make, kind):
    error, _line = _raised(make)
    # As the collectors store it, as an agent's older parser may send it, and bare.
    for reason in (f"line not parsed: {error}", str(error)):
        assert classify_reason(reason, whole_line=True) == kind, reason


def test_every_line_error_of_the_parser_is_reached_by_a_case():
    """A new ``raise LineError(`` in the parser fails here until a case above makes it (and names its kind)."""
    lines = Path(parsing.__file__).read_text().splitlines()
    sites = {n for n, text in enumerate(lines, start=1) if "raise LineError(" in text}
    reached = {_raised(make)[1] for make, _kind in CASES}
    missing = sorted(sites - reached)
    assert not missing, [f"parsing.py:{n}: {lines[n - 1].strip()}" for n in missing]
