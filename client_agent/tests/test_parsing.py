"""The line parser shared by the server's collectors and the agent. No Django here: the agent runs without it."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from daqbroker_agent.config import validate_source_config
from daqbroker_agent.parsing import EPOCH, LineError, LineParser, datetime_to_us, us_to_datetime


def parser(**options) -> LineParser:
    """A parser for a file source configured with ``options``, validated the way a saved source is."""
    return LineParser(validate_source_config("file", {"path": "/data", **options}))


def us(*args, tz=UTC) -> int:
    return datetime_to_us(datetime(*args, tzinfo=tz))


# --- delimited lines -------------------------------------------------------------------------------


def test_delimited_with_named_columns():
    p = parser(columns=["time", "temp", "rh"], timestamp={"columns": ["time"]})
    parsed = p.parse("2024-05-06T07:08:09Z, 21.5 ,40\n")
    assert parsed.ts_us == us(2024, 5, 6, 7, 8, 9)
    assert parsed.get("temp") == "21.5"
    assert parsed.get("rh") == "40"
    assert parsed.get("1") == "21.5"
    assert parsed.get("pressure") is None


def test_delimited_with_index_columns():
    parsed = parser().parse("2024-05-06T07:08:09+00:00,21.5,40,OK\r\n")
    assert parsed.fields == {"0": "2024-05-06T07:08:09+00:00", "1": "21.5", "2": "40", "3": "OK"}


def test_more_names_than_fields_names_only_the_fields_present():
    parsed = parser(columns=["time", "a", "b", "c"]).parse("2024-05-06T07:08:09Z,1")
    assert parsed.get("a") == "1"
    assert parsed.get("b") is None


def test_quoted_csv_fields_keep_their_delimiters():
    parsed = parser(columns=["time", "note", "value"]).parse('2024-05-06T07:08:09Z,"door open, fan off",3.5')
    assert parsed.get("note") == "door open, fan off"
    assert parsed.get("value") == "3.5"


def test_other_delimiter():
    parsed = parser(delimiter=";").parse("2024-05-06T07:08:09Z;1,5;2")
    assert parsed.fields == {"0": "2024-05-06T07:08:09Z", "1": "1,5", "2": "2"}


def test_whitespace_delimiter_treats_runs_of_blanks_as_one():
    parsed = parser(delimiter=" ", columns=["time", "t", "p"]).parse("2024-05-06T07:08:09Z    21.5 \t 1013.2")
    assert parsed.fields == {
        "0": "2024-05-06T07:08:09Z",
        "1": "21.5",
        "2": "1013.2",
        "time": "2024-05-06T07:08:09Z",
        "t": "21.5",
        "p": "1013.2",
    }


# --- regex lines -----------------------------------------------------------------------------------


def test_regex_with_named_groups():
    p = parser(
        format="regex",
        regex=r"^(?P<time>\S+) T=(?P<temp>[-\d.]+) RH=(?P<rh>[\d.]+)(?: (?P<flag>\w+))?$",
        timestamp={"columns": ["time"]},
    )
    parsed = p.parse("2024-05-06T07:08:09Z T=-3.25 RH=88.0")
    assert parsed.ts_us == us(2024, 5, 6, 7, 8, 9)
    # Groups that did not take part in the match are left out rather than stored as None.
    assert parsed.fields == {"time": "2024-05-06T07:08:09Z", "temp": "-3.25", "rh": "88.0"}


def test_regex_mismatch_is_a_line_error():
    p = parser(format="regex", regex=r"T=(?P<temp>[-\d.]+)", timestamp={"format": "receipt"})
    with pytest.raises(LineError) as excinfo:
        p.parse("HUMIDITY 40")
    assert str(excinfo.value) == "line does not match the configured regular expression"


def test_a_regex_that_times_out_on_a_line_is_a_line_error_not_a_hang():
    # A pattern saved before the save-time check existed (built here without validation).
    p = LineParser({"format": "regex", "regex": r"^(?P<x>(a|aa)+)+$", "timestamp": {"format": "receipt"}})
    with pytest.raises(LineError) as excinfo:
        p.parse("a" * 60 + "!", received_us=1)
    assert "the regular expression took longer than 100 ms on this line" in str(excinfo.value)


# --- timestamps ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-05-06T07:08:09Z", us(2024, 5, 6, 7, 8, 9)),
        ("2024-05-06T07:08:09.123456Z", us(2024, 5, 6, 7, 8, 9, 123456)),
        ("2024-05-06T09:08:09+02:00", us(2024, 5, 6, 7, 8, 9)),
        ("2024-05-06T02:38:09-04:30", us(2024, 5, 6, 7, 8, 9)),
        ("2024-05-06 07:08:09", us(2024, 5, 6, 7, 8, 9)),
        ("2024-05-06", us(2024, 5, 6)),
    ],
)
def test_iso_timestamps(raw, expected):
    assert parser().parse(f"{raw},1").ts_us == expected


def test_naive_timestamps_are_read_in_the_configured_zone():
    p = parser(timestamp={"timezone": "Europe/Lisbon"})
    # Lisbon is UTC+1 in summer (WEST) and UTC+0 in winter (WET).
    assert p.parse("2024-07-01T12:00:00,1").ts_us == us(2024, 7, 1, 11, 0, 0)
    assert p.parse("2024-01-15T12:00:00,1").ts_us == us(2024, 1, 15, 12, 0, 0)
    # An explicit offset wins over the configured zone.
    assert p.parse("2024-07-01T12:00:00Z,1").ts_us == us(2024, 7, 1, 12, 0, 0)


def test_naive_timestamps_in_a_zone_west_of_utc():
    p = parser(timestamp={"timezone": "America/New_York", "format": "%Y-%m-%d %H:%M:%S"})
    assert p.parse("2024-07-01 08:00:00,1").ts_us == us(2024, 7, 1, 12, 0, 0)


def test_epoch_seconds_integer_is_exact():
    p = parser(timestamp={"format": "epoch"}, not_before="")
    assert p.parse("1700000000,1").ts_us == 1_700_000_000_000_000
    # Larger than a double can hold exactly in microseconds: still exact.
    assert p.parse("9007199254741,1").ts_us == 9_007_199_254_741_000_000
    assert p.parse("-86400,1").ts_us == -86_400_000_000


def test_epoch_seconds_fractional():
    p = parser(timestamp={"format": "epoch"})
    assert p.parse("1700000000.5,1").ts_us == 1_700_000_000_500_000
    assert p.parse("1700000000.123456,1").ts_us == 1_700_000_000_123_456
    assert p.parse("1.7e9,1").ts_us == 1_700_000_000_000_000


def test_epoch_milliseconds():
    p = parser(timestamp={"format": "epoch_ms"})
    assert p.parse("1700000000123,1").ts_us == 1_700_000_000_123_000
    assert p.parse("1700000000123.5,1").ts_us == 1_700_000_000_123_500


def test_strptime_pattern():
    p = parser(delimiter=";", timestamp={"format": "%d/%m/%Y %H:%M:%S"})
    assert p.parse("06/05/2024 07:08:09;1").ts_us == us(2024, 5, 6, 7, 8, 9)


def test_strptime_pattern_with_an_offset():
    p = parser(delimiter=";", timestamp={"format": "%Y%m%d%H%M%S%z", "timezone": "Asia/Tokyo"})
    assert p.parse("20240506090809+0200;1").ts_us == us(2024, 5, 6, 7, 8, 9)


def test_date_and_time_columns_are_joined():
    p = parser(
        columns=["date", "time", "temp"],
        timestamp={"columns": ["date", "time"], "format": "%Y-%m-%d %H:%M:%S.%f"},
    )
    parsed = p.parse("2024-05-06,07:08:09.250000,21.5")
    assert parsed.ts_us == us(2024, 5, 6, 7, 8, 9, 250000)
    assert parsed.get("temp") == "21.5"


def test_date_and_time_columns_by_position():
    p = parser(timestamp={"columns": [1, 0], "format": "%Y-%m-%d %H:%M"})
    assert p.parse("07:08,2024-05-06,1").ts_us == us(2024, 5, 6, 7, 8)


def test_receipt_uses_the_time_of_reading():
    p = parser(timestamp={"format": "receipt"})
    assert p.parse("21.5,40", received_us=1_234_567).ts_us == 1_234_567
    assert p.parse("21.5,40", received_us=1_234_567).fields == {"0": "21.5", "1": "40"}


def test_receipt_without_a_reception_time_uses_now():
    p = parser(timestamp={"format": "receipt"})
    before = datetime_to_us(datetime.now(UTC))
    ts = p.parse("21.5").ts_us
    after = datetime_to_us(datetime.now(UTC))
    assert before <= ts <= after


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "line", "message"),
    [
        ({}, "yesterday,1", "timestamp 'yesterday' is not an ISO 8601 time"),
        ({}, "2024-13-01T00:00:00,1", "timestamp '2024-13-01T00:00:00' is not an ISO 8601 time"),
        ({}, ",1", "empty timestamp"),
        (
            {"timestamp": {"format": "%d/%m/%Y"}},
            "2024-05-06,1",
            "timestamp '2024-05-06' is not a time in the format '%d/%m/%Y'",
        ),
        ({"timestamp": {"format": "epoch"}}, "12:00,1", "timestamp '12:00' is not a number of seconds"),
        ({"timestamp": {"format": "epoch_ms"}}, "soon,1", "timestamp 'soon' is not a number of milliseconds"),
        ({"timestamp": {"format": "epoch"}}, "nan,1", "timestamp 'nan' is not finite"),
        ({"timestamp": {"format": "epoch"}}, "-inf,1", "timestamp '-inf' is not finite"),
        ({}, "", "empty line"),
        ({}, "   \r\n", "empty line"),
        ({"timestamp": {"columns": [3]}}, "2024-05-06T07:08:09Z,1", "the time column '3' is missing from the line"),
        (
            {"columns": ["a", "b"], "timestamp": {"columns": ["time"]}},
            "2024-05-06T07:08:09Z,1",
            "the time column 'time' is missing from the line",
        ),
    ],
)
def test_line_errors_say_why(options, line, message):
    with pytest.raises(LineError) as excinfo:
        parser(**options).parse(line)
    assert str(excinfo.value) == message


def test_regex_line_without_the_time_group_is_a_line_error():
    p = parser(format="regex", regex=r"(?P<time>\d{2}:\d{2})? T=(?P<temp>[-\d.]+)", timestamp={"columns": ["time"]})
    with pytest.raises(LineError) as excinfo:
        p.parse(" T=21.5")
    assert str(excinfo.value) == "the time column 'time' is missing from the line"


# --- microseconds since the epoch ------------------------------------------------------------------


@pytest.mark.parametrize(
    "moment",
    [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2024, 5, 6, 7, 8, 9, 123457, tzinfo=UTC),
        datetime(1900, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2262, 4, 11, 23, 47, 16, 854775, tzinfo=UTC),
        datetime(2024, 7, 1, 12, 0, 0, 5, tzinfo=timezone(timedelta(hours=5, minutes=45))),
    ],
)
def test_datetime_to_us_round_trips_exactly(moment):
    ts = datetime_to_us(moment)
    assert us_to_datetime(ts) == moment
    assert us_to_datetime(ts).tzinfo is UTC
    assert datetime_to_us(us_to_datetime(ts)) == ts


def test_datetime_to_us_known_values():
    assert datetime_to_us(EPOCH) == 0
    assert datetime_to_us(datetime(1970, 1, 1, 0, 0, 1, 1, tzinfo=UTC)) == 1_000_001
    assert datetime_to_us(datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) == -1
    assert datetime_to_us(datetime(2024, 5, 6, 7, 8, 9, 123457, tzinfo=UTC)) == 1_714_979_289_123_457


def test_us_round_trip_many_values():
    rng = random.Random(20240506)
    for _ in range(10_000):
        ts = rng.randrange(-2_208_988_800_000_000, 7_258_118_400_000_000)  # 1900 .. 2200
        assert datetime_to_us(us_to_datetime(ts)) == ts


def test_tab_delimiter_keeps_empty_fields_in_place():
    parsed = parser(delimiter="\t", columns=["time", "t", "p"]).parse("2024-05-06T07:08:09Z\t\t1013.2")
    assert parsed.fields["t"] == ""
    assert parsed.fields["p"] == "1013.2"


# --- quoting, fixed width, year + day of year + hhmm ----------------------------------------------


def test_no_quotechar_keeps_quotes_as_text():
    parsed = parser(quotechar="", columns=["time", "note"]).parse('2024-05-06T07:08:09Z,"a,b"')
    assert parsed.fields["note"] == '"a'


def test_another_quotechar():
    parsed = parser(quotechar="'", columns=["time", "note", "v"]).parse("2024-05-06T07:08:09Z,'a,b',3")
    assert parsed.fields["note"] == "a,b"
    assert parsed.fields["v"] == "3"


def test_fixed_width_fields_by_widths():
    p = parser(format="fixed_width", widths=[20, 8, 8], columns=["time", "temp", "rh"], timestamp={"columns": ["time"]})
    parsed = p.parse("2024-05-06T07:08:09Z  21.50   -9999")
    assert parsed.ts_us == us(2024, 5, 6, 7, 8, 9)
    assert parsed.fields == {"0": "2024-05-06T07:08:09Z", "1": "21.50", "2": "-9999", "time": "2024-05-06T07:08:09Z",
                             "temp": "21.50", "rh": "-9999"}  # fmt: skip


def test_fixed_width_fields_by_colspecs_with_gaps():
    p = parser(format="fixed_width", colspecs=[[0, 10], [11, 16], [20, 24]], timestamp={"format": "%Y-%m-%d"})
    parsed = p.parse("2024-05-06|21.5|xxx 40.1")
    assert parsed.fields == {"0": "2024-05-06", "1": "21.5|", "2": "40.1"}


def test_fixed_width_short_line_lacks_the_fields_it_does_not_reach():
    p = parser(format="fixed_width", widths=[20, 8, 8])
    parsed = p.parse("2024-05-06T07:08:09Z   1.5")
    assert parsed.fields == {"0": "2024-05-06T07:08:09Z", "1": "1.5"}
    assert parser(format="fixed_width", widths=[20, 8, 8]).parse("2024-05-06T07:08:09Z   ").fields["1"] == ""


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("2024,127,1430,1.5", us(2024, 5, 6, 14, 30)),
        ("2024,1,0,1.5", us(2024, 1, 1)),
        ("2024,366,2359,1.5", us(2024, 12, 31, 23, 59)),
        ("2023,365,2400,1.5", us(2024, 1, 1)),  # 24:00 ends the day
        ("2024,127,5,1.5", us(2024, 5, 6, 0, 5)),  # hhmm written without leading zeros
        ("2024.0,127.0,1430.0,1.5", us(2024, 5, 6, 14, 30)),
    ],
)
def test_year_day_of_year_and_hhmm(line, expected):
    p = parser(timestamp={"format": "year_doy_hhmm", "columns": [0, 1, 2]})
    assert p.parse(line).ts_us == expected


def test_year_day_of_year_hhmm_and_seconds_in_a_zone():
    p = parser(timestamp={"format": "year_doy_hhmm", "columns": [0, 1, 2, 3], "timezone": "Europe/Lisbon"})
    assert p.parse("2024,183,1200,30.25,1").ts_us == us(2024, 7, 1, 11, 0, 30, 250000)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("2023,366,0,1", "day of year 366 is not in 2023 (1 to 365)"),
        ("2024,0,0,1", "day of year 0 is not in 2024 (1 to 366)"),
        ("2024,10,2401,1", "hhmm 2401 is not a time of day (0 to 2400"),
        ("2024,10,2460,1", "hhmm 2460 is not a time of day (0 to 2400"),
        ("2024,10,1260,1", "hhmm 1260 has 60 minutes (the last two digits must be below 60)"),
        ("2024,10,99,1", "hhmm 99 has 99 minutes"),
        ("2024,10,-5,1", "hhmm -5 is not a time of day"),
        ("2024,10,12.5,1", "hhmm 12.5 is not a whole number"),
        ("2024,10.5,0,1", "is not year, day of year, hhmm[, seconds]"),
        ("x,1,0,1", "is not year, day of year, hhmm[, seconds]"),
        ("2024,1", "missing"),
    ],
)
def test_impossible_year_day_of_year_hhmm_is_a_line_error_with_its_reason(line, reason):
    p = parser(timestamp={"format": "year_doy_hhmm", "columns": [0, 1, 2]})
    with pytest.raises(LineError) as excinfo:
        p.parse(line)
    assert reason in str(excinfo.value)


# --- times without a year, and the plausible window (issue 15) -------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("127,1430,1.5", us(2024, 5, 6, 14, 30)),
        ("127,10,1.5", us(2024, 5, 6, 0, 10)),  # unpadded: 00:10, not 01:00
        ("127,100,1.5", us(2024, 5, 6, 1, 0)),  # 01:00, not 10:00
        ("127,0010,1.5", us(2024, 5, 6, 0, 10)),
        ("127,2400,1.5", us(2024, 5, 7)),  # 24:00 is the midnight that ends the day
        ("366,2400,1.5", us(2025, 1, 1)),  # ... even the last day of the year
        ("60,1200,1.5", us(2024, 2, 29, 12)),  # day 60 of a leap year
    ],
)
def test_day_of_year_and_hhmm_with_a_fixed_year(line, expected):
    p = parser(timestamp={"format": "doy_hhmm", "columns": [0, 1], "year": 2024})
    assert p.parse(line).ts_us == expected


def test_day_of_year_hhmm_and_seconds_in_a_zone():
    p = parser(timestamp={"format": "doy_hhmm", "columns": [1, 2, 3], "year": 2024, "timezone": "Etc/GMT+5"})
    assert p.parse("st1,127,5,30,1").ts_us == us(2024, 5, 6, 5, 5, 30)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("127,2460,1", "hhmm 2460 is not a time of day"),
        ("127,2401,1", "hhmm 2401 is not a time of day"),
        ("127,99,1", "hhmm 99 has 99 minutes"),
        ("367,0,1", "day of year 367 is not in 2024"),
        ("x,0,1", "is not day of year, hhmm[, seconds]"),
    ],
)
def test_bad_day_of_year_hhmm_is_refused_with_its_reason(line, reason):
    p = parser(timestamp={"format": "doy_hhmm", "columns": [0, 1], "year": 2024})
    with pytest.raises(LineError) as excinfo:
        p.parse(line)
    assert reason in str(excinfo.value)


def test_the_year_of_a_file_is_given_per_call_and_found_in_its_header():
    p = parser(header_lines=2, timestamp={"format": "doy_hhmm", "columns": [0, 1], "year_pattern": r"Year:\s*(\d{4})"})
    assert p.year_from_header(["Station 7 daily file", "Year: 2023  Units: degC"]) == 2023
    assert p.year_from_header(["Station 7 daily file", "no year here"]) is None
    assert p.parse("59,1200,1", year=2023).ts_us == us(2023, 2, 28, 12)
    assert p.parse("60,1200,1", year=2024).ts_us == us(2024, 2, 29, 12)
    with pytest.raises(LineError) as excinfo:
        p.parse("59,1200,1")  # no year known: never 1900
    assert "no year" in str(excinfo.value) and "timestamp.year_pattern" in str(excinfo.value)


def test_a_strptime_pattern_without_a_year_takes_the_configured_year():
    p = parser(timestamp={"format": "%j %H:%M", "columns": [0, 1], "year": 2024})
    assert p.parse("366,23:59,1").ts_us == us(2024, 12, 31, 23, 59)  # day 366: a leap year, not 1900
    p = parser(timestamp={"format": "%d/%m %H:%M", "year": 2024})
    assert p.parse("29/02 06:00,1").ts_us == us(2024, 2, 29, 6)


def test_times_outside_the_plausible_window_are_refused_with_the_reason():
    p = parser(timestamp={"format": "%Y %j %H:%M", "columns": [0, 1, 2]})
    with pytest.raises(LineError) as excinfo:
        p.parse("1900,127,14:30,1")
    assert str(excinfo.value) == "time 1900-05-07T14:30:00+00:00 is before this source's not_before (1970-01-01)"
    p = parser(not_before="2024-01-01", not_after="2024-12-31")
    assert p.parse("2024-12-31T23:59:59Z,1").ts_us == us(2024, 12, 31, 23, 59, 59)  # a date: its whole day
    assert p.parse("2024-01-01T00:00:00Z,1").ts_us == us(2024, 1, 1)
    with pytest.raises(LineError, match=r"is after this source's not_after \(2024-12-31\)"):
        p.parse("2025-01-01T00:00:00Z,1")
    with pytest.raises(LineError, match=r"before this source's not_before \(2024-01-01\)"):
        p.parse("2023-12-31T23:59:59Z,1")
    assert parser(not_before="").parse("1950-01-01T00:00:00Z,1").ts_us == us(1950, 1, 1)


def test_position_of_names_and_positions():
    p = parser(columns=["time", "a", "b", "a"])
    assert p.position_of("time") == 0
    assert p.position_of("a") == 3  # a repeated name keeps the last position, as split() does
    assert p.position_of("5") == 5
    assert p.position_of("nope") is None
    assert parser(format="regex", regex=r"(?P<x>\d)", timestamp={"format": "receipt"}).position_of("x") is None


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("2024 127 1430,1", us(2024, 5, 6, 14, 30)),
        ("2024 127 10,1", us(2024, 5, 6, 0, 10)),  # strptime alone: 01:00
        ("2024 127 100,1", us(2024, 5, 6, 1, 0)),  # strptime alone: 10:00
        ("2024 127 5,1", us(2024, 5, 6, 0, 5)),
        ("2024 127 2400,1", us(2024, 5, 7)),  # strptime alone: refused
    ],
)
def test_an_hhmm_field_of_a_strptime_pattern_is_read_as_a_number(line, expected):
    p = parser(timestamp={"format": "%Y %j %H%M"})
    assert p.parse(line).ts_us == expected


@pytest.mark.parametrize(
    ("line", "reason"), [("2024 127 2460,1", "is not a time of day"), ("2024 127 99,1", "99 minutes")]
)
def test_a_bad_hhmm_field_of_a_strptime_pattern_is_refused_with_its_reason(line, reason):
    with pytest.raises(LineError, match=reason):
        parser(timestamp={"format": "%Y %j %H%M"}).parse(line)
