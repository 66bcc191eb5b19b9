"""BlockParser (pandas, many lines at once) must agree with LineParser (one line at a time).

The property: every row the block parser reads in bulk is read exactly as LineParser reads that line
(same time, same field text, same number), and every line LineParser reads cleanly is read in bulk (so the
fast path is the usual one). Lines it hands back as irregular go through LineParser in the collector.
Needs pandas, which the server has and the agent does not.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

pytest.importorskip("pandas")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daqbroker_agent.config import validate_source_config
from daqbroker_agent.parsing import NUMBER, TEXT, BlockParser, FieldNotFound, LineError, LineParser

T0 = datetime(2024, 3, 30, 22, 0, tzinfo=UTC)  # Europe/Lisbon changes clocks at 01:00 UTC on 31 March 2024


def config(**options) -> dict:
    return validate_source_config("file", {"path": "/data", **options})


def check_agreement(cfg: dict, wanted: dict[str, str], lines: list[str], *, expect_all_regular: bool = False):
    data = "".join(line + "\n" for line in lines).encode()
    block = BlockParser(cfg, wanted).parse(data)
    line_parser = LineParser(cfg)
    regular = set(block.rows.tolist())
    assert regular.isdisjoint(block.irregular.tolist())
    assert regular | set(block.irregular.tolist()) == set(range(len(lines)))
    for position, row in enumerate(block.rows.tolist()):
        parsed = line_parser.parse(lines[row])  # a regular row must parse
        assert block.ts_us[position] == parsed.ts_us, lines[row]
        for key, kind in wanted.items():
            expected = parsed.fields[key]
            got = block.values[key][position]
            if kind == NUMBER:
                assert got == float(expected), (lines[row], key)
            else:
                assert got == expected, (lines[row], key)
    if expect_all_regular:
        assert len(block.irregular) == 0, [lines[i] for i in block.irregular.tolist()]
    return block


# --- hand-picked ----------------------------------------------------------------------------------


def test_clean_csv_is_read_in_bulk():
    cfg = config(columns=["time", "t", "rh", "status"], timestamp={"columns": ["time"]})
    lines = [
        f"{(T0 + timedelta(seconds=i)).isoformat().replace('+00:00', 'Z')},{i / 3:.4f},{50 + i},OK{i % 3}"
        for i in range(500)
    ]
    block = check_agreement(cfg, {"t": NUMBER, "rh": NUMBER, "status": TEXT}, lines, expect_all_regular=True)
    assert block.values["status"][4] == "OK1"


def test_odd_lines_are_handed_back():
    cfg = config(columns=["time", "t", "rh", "status"], timestamp={"columns": ["time"]})
    lines = [
        "2024-05-06T07:08:00Z,1.5,40,OK",
        "ERR sensor bus timeout",  # too few fields
        "",  # blank
        "2024-05-06T07:08:01Z,,40,OK",  # empty field
        "2024-05-06T07:08:02Z,abc,40,OK",  # not a number
        "2024-05-06T07:08:03Z,nan,40,OK",  # a number, but not finite: ingest rejects it
        "2024-05-06T07:08:04Z,1.5,40,OK,extra,fields",  # extra fields are ignored, as LineParser does
        "2024-13-06T07:08:05Z,1.5,40,OK",  # impossible date
        "2024-05-06T07:08:06Z, 2.5 ,41, spaced ",
        '2024-05-06T07:08:07Z,3.5,42,"quoted, with comma"',
    ]
    block = check_agreement(cfg, {"t": NUMBER, "rh": NUMBER, "status": TEXT}, lines)
    assert block.rows.tolist() == [0, 6, 8, 9]
    assert block.irregular.tolist() == [1, 2, 3, 4, 5, 7]
    assert block.values["status"].tolist() == ["OK", "OK", "spaced", "quoted, with comma"]


def test_mixed_offsets_and_naive_times_in_a_zone():
    cfg = config(timestamp={"timezone": "Europe/Lisbon"})
    lines = ["2024-07-01T12:00:00,1", "2024-07-01T12:00:00Z,2", "2024-07-01T12:00:00+02:00,3", "2024-01-15 12:00,4"]
    check_agreement(cfg, {"1": NUMBER}, lines, expect_all_regular=True)


def test_naive_times_across_a_clock_change():
    cfg = config(timestamp={"timezone": "Europe/Lisbon", "format": "%Y-%m-%d %H:%M"})
    # 01:00 -> 02:00 on 31 March 2024 (01:30 does not exist) and 02:00 -> 01:00 on 27 October (01:30 twice).
    lines = [
        "2024-03-31 00:30,1",
        "2024-03-31 01:30,2",
        "2024-03-31 02:30,3",
        "2024-10-27 01:30,4",
        "2024-10-27 02:30,5",
    ]
    block = check_agreement(cfg, {"1": NUMBER}, lines)
    assert block.irregular.tolist() == [1]  # the time that does not exist is LineParser's to read


@pytest.mark.parametrize("fmt", ["epoch", "epoch_ms"])
def test_epochs(fmt):
    cfg = config(timestamp={"format": fmt}, not_before="")  # before 1970 too
    lines = ["1714979289,1", "1714979289.5,2", "1714979289.123456,3", "-5,4", "1.7e9,5", "soon,6", "inf,7"]
    block = check_agreement(cfg, {"1": NUMBER}, lines)
    assert block.irregular.tolist() == [5, 6]


def test_large_integer_epochs_stay_exact():
    cfg = config(timestamp={"format": "epoch"})
    check_agreement(cfg, {"1": NUMBER}, ["9007199254741,1", "1700000000,2"], expect_all_regular=True)


def test_year_day_of_year_hhmm_columns():
    cfg = config(
        columns=["id", "year", "doy", "hhmm", "t"],
        timestamp={"format": "year_doy_hhmm", "columns": ["year", "doy", "hhmm"], "timezone": "America/New_York"},
    )
    lines = ["101,2024,127,1430,1.5", "101,2024,366,2400,2", "101,2024,60,5,3", "101,2023,366,0,4", "101,2024,1,2460,5"]
    block = check_agreement(cfg, {"t": NUMBER}, lines)
    assert block.irregular.tolist() == [3, 4]


def test_date_and_time_in_two_columns():
    cfg = config(
        delimiter=";",
        columns=["date", "time", "t"],
        timestamp={"columns": ["date", "time"], "format": "%d/%m/%Y %H:%M:%S"},
    )
    lines = ["06/05/2024;07:08:09;1,5", "06/05/2024;07:08:10;2", "31/02/2024;07:08:11;3"]
    block = check_agreement(cfg, {"t": NUMBER}, lines)
    assert block.irregular.tolist() == [0, 2]  # "1,5" is not a number with ";" fields; 31 February does not exist


def test_whitespace_delimited():
    cfg = config(delimiter=" ", columns=["time", "t", "p"], timestamp={"columns": ["time"]})
    lines = ["2024-05-06T07:08:09Z    21.5 \t 1013.2", "  2024-05-06T07:08:10Z 21.6 1013.3  ", "2024-05-06T07:08:11Z 1"]
    block = check_agreement(cfg, {"t": NUMBER, "p": NUMBER}, lines)
    assert block.rows.tolist() == [0, 1]


def test_fixed_width_with_a_sentinel():
    cfg = config(format="fixed_width", widths=[20, 8, 8], columns=["time", "t", "rh"], timestamp={"columns": ["time"]})
    lines = [
        "2024-05-06T07:08:09Z   21.50   40.00",
        "2024-05-06T07:08:10Z-9999.00   41.00",
        "2024-05-06T07:08:11Z   21.70",  # too short: rh missing
        "2024-05-06T07:08:12Z           42.00",  # t blank
        "garbage",
    ]
    block = check_agreement(cfg, {"t": NUMBER, "rh": NUMBER}, lines)
    assert block.rows.tolist() == [0, 1]
    assert block.values["t"].tolist() == [21.5, -9999.0]


def test_no_line_reaching_the_wanted_column_is_all_irregular():
    block = check_agreement(config(), {"5": NUMBER}, ["2024-05-06T07:08:09Z,1", "2024-05-06T07:08:10Z,2"])
    assert block.irregular.tolist() == [0, 1]


def test_a_quoted_field_spanning_lines_sends_the_block_line_by_line():
    block = check_agreement(config(), {"1": TEXT}, ['2024-05-06T07:08:09Z,"a', 'b",x', "2024-05-06T07:08:10Z,y"])
    assert block.irregular.tolist() == [0, 1, 2]


def test_text_that_looks_like_numbers_stays_text():
    cfg = config(columns=["time", "code", "t"], timestamp={"columns": ["time"]})
    lines = ["2024-05-06T07:08:09Z,01,1.50", "2024-05-06T07:08:10Z,002,2.50", "2024-05-06T07:08:11Z,1e3,3"]
    block = check_agreement(cfg, {"code": TEXT, "t": NUMBER}, lines, expect_all_regular=True)
    assert block.values["code"].tolist() == ["01", "002", "1e3"]


def test_bytes_the_encoding_cannot_decode_become_replacement_characters_as_line_by_line():
    cfg = config(columns=["time", "note", "t"], timestamp={"columns": ["time"]})
    data = b"2024-05-06T07:08:09Z,caf\xe9,1\n2024-05-06T07:08:10Z,ok,2\n"
    block = BlockParser(cfg, {"note": TEXT, "t": NUMBER}).parse(data)
    expected = LineParser(cfg).parse(data.split(b"\n")[0].decode("utf-8", errors="replace"))
    assert block.rows.tolist() == [0, 1]
    assert block.values["note"][0] == expected.fields["note"] == "caf\ufffd"


def test_latin_1_files():
    cfg = config(encoding="latin-1", columns=["time", "note", "t"], timestamp={"columns": ["time"]})
    block = BlockParser(cfg, {"note": TEXT}).parse("2024-05-06T07:08:09Z,café,1\n".encode("latin-1"))
    assert block.values["note"].tolist() == ["café"]


def test_unknown_field_names_the_columns():
    with pytest.raises(FieldNotFound) as excinfo:
        BlockParser(config(columns=["time", "t"]), {"temperature": NUMBER})
    assert "'temperature' is neither a column name (configured: 'time', 't')" in str(excinfo.value)


def test_line_error_class_is_what_line_parser_raises():
    with pytest.raises(LineError):
        LineParser(config()).parse("garbage,1")


# --- generated -------------------------------------------------------------------------------------

good_numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64).map(repr),
    st.integers(-(10**12), 10**12).map(str),
    st.decimals(-10000, 10000, places=3, allow_nan=False, allow_infinity=False).map(str),
)
numbers = st.one_of(
    good_numbers,
    st.sampled_from(["", " ", "nan", "inf", "-inf", "1e5", " 7 ", "abc", "1_000", "+3", ".5", "-0", "True", "NA"]),
)
texts = st.text(st.characters(codec="utf-8", exclude_characters="\n\r\x00,;\t\"'"), max_size=8)
moments = st.datetimes(datetime(1950, 1, 1), datetime(2100, 1, 1)).map(lambda d: d.replace(microsecond=d.microsecond))
offsets = st.sampled_from(["", "Z", "+02:00", "-04:30", "+0000"])


@st.composite
def iso_lines(draw, delimiter: str):
    if draw(st.booleans()):  # mostly well-formed: time, number, text, number, and maybe more
        moment = draw(moments).isoformat(timespec=draw(st.sampled_from(["seconds", "microseconds"])))
        parts = [moment + draw(offsets), draw(good_numbers), draw(texts.filter(str.strip)), draw(numbers)]
        parts += draw(st.lists(texts, max_size=2))
        return delimiter.join(parts)
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["time", "number", "text", "garbage"]))
        if kind == "time":
            moment = draw(moments)
            spec = draw(st.sampled_from(["seconds", "milliseconds", "microseconds", "minutes"]))
            parts.append(moment.isoformat(sep=draw(st.sampled_from(["T", " "])), timespec=spec) + draw(offsets))
        elif kind == "number":
            parts.append(draw(numbers))
        elif kind == "text":
            parts.append(draw(texts))
        else:
            parts.append(draw(st.sampled_from(["ERR", "2024-13-01", "", " ", '"', "2024-05-06T07:08:09+25:00"])))
    return delimiter.join(parts)


@st.composite
def delimited_blocks(draw) -> tuple[str, list[str]]:
    delimiter = draw(st.sampled_from([",", ";", "\t", " "]))
    return delimiter, draw(st.lists(iso_lines(delimiter), max_size=25))


def test_generated_delimited_lines_agree_and_many_take_the_bulk_path():
    """The property, and a check that it was not vacuous: the generated lines must often be read in bulk,
    or every example could fall back to LineParser and the comparison would prove nothing. The count lives
    in this test, so the check holds in any order and on its own (it once sat in a second test that read a
    module global this one filled, and skipped or passed by luck of the order)."""
    lines_seen: list[int] = []
    rows_in_bulk: list[int] = []

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(delimited_blocks(), st.sampled_from(["UTC", "Europe/Lisbon", "Asia/Kathmandu"]))
    def agree(generated, zone):
        delimiter, lines = generated
        cfg = config(delimiter=delimiter, timestamp={"timezone": zone})
        block = check_agreement(cfg, {"1": NUMBER, "2": TEXT, "3": NUMBER}, lines)
        lines_seen.append(len(lines))
        rows_in_bulk.append(len(block.rows))

    agree()
    # About 40% of the examples read some row in bulk (38-84 of 150 over 40 runs); 10% leaves a wide margin
    # and still fails if the generator stops making lines the fast path takes.
    with_bulk_rows = sum(1 for rows in rows_in_bulk if rows)
    assert with_bulk_rows >= len(rows_in_bulk) // 10, (
        f"only {with_bulk_rows} of {len(rows_in_bulk)} examples read any line in bulk "
        f"({sum(rows_in_bulk)} of {sum(lines_seen)} lines)"
    )


@st.composite
def epoch_lines(draw):
    first = draw(
        st.one_of(
            st.integers(-(10**10), 10**10).map(str),
            st.floats(-1e10, 1e10, allow_nan=False).map(repr),
            st.sampled_from(["", "x", "nan", "1e3"]),
        )
    )
    return ",".join([first, draw(numbers)])


@settings(max_examples=100, deadline=None)
@given(st.lists(epoch_lines(), max_size=25), st.sampled_from(["epoch", "epoch_ms"]))
def test_generated_epoch_lines_agree(lines, fmt):
    check_agreement(config(timestamp={"format": fmt}), {"1": NUMBER}, lines)


@st.composite
def fixed_lines(draw):
    moment = draw(moments).strftime("%Y-%m-%d %H:%M:%S")
    value = draw(numbers)
    return (moment + " " + value.rjust(10))[: draw(st.integers(0, 40))]


@settings(max_examples=100, deadline=None)
@given(st.lists(fixed_lines(), max_size=25), st.sampled_from(["UTC", "America/New_York"]))
def test_generated_fixed_width_lines_agree(lines, zone):
    cfg = config(
        format="fixed_width", colspecs=[[0, 19], [19, 30]], timestamp={"format": "%Y-%m-%d %H:%M:%S", "timezone": zone}
    )
    check_agreement(cfg, {"1": NUMBER}, lines)


# --- times without a year, unpadded hhmm, the plausible window (issue 15) --------------------------


def test_day_of_year_hhmm_with_a_year_agrees_and_refuses_what_line_parser_refuses():
    cfg = config(
        columns=["doy", "hhmm", "t"], timestamp={"format": "doy_hhmm", "columns": ["doy", "hhmm"], "year": 2024}
    )
    lines = ["127,10,1", "127,100,2", "127,2400,3", "366,2400,4", "127,2460,5", "127,2401,6", "127,99,7", "367,0,8"]
    block = check_agreement(cfg, {"t": NUMBER}, lines)
    assert block.irregular.tolist() == [4, 5, 6, 7]


def test_a_year_given_per_block_and_none_known():
    cfg = config(
        header_lines=1,
        columns=["doy", "hhmm", "t"],
        timestamp={"format": "doy_hhmm", "columns": ["doy", "hhmm"], "year_pattern": r"(\d{4})"},
    )
    data = b"60,1200,1\n"
    assert BlockParser(cfg, {"t": NUMBER}).parse(data).irregular.tolist() == [0]  # no year: LineParser says why
    block = BlockParser(cfg, {"t": NUMBER}).parse(data, year=2024)
    assert block.ts_us.tolist() == [LineParser(cfg).parse("60,1200,1", year=2024).ts_us]


def test_a_strptime_pattern_without_a_year_agrees():
    cfg = config(
        columns=["doy", "time", "t"], timestamp={"format": "%j %H:%M", "columns": ["doy", "time"], "year": 2024}
    )
    block = check_agreement(cfg, {"t": NUMBER}, ["366,23:59,1", "60,00:00,2", "367,00:00,3"])
    assert block.irregular.tolist() == [2]


@st.composite
def logger_lines(draw, with_year: bool):
    """Logger array lines: [year,] day of year, hhmm (often unpadded, sometimes impossible), value."""
    parts = [str(draw(st.sampled_from([1899, 1969, 1970, 2023, 2024, 2100])))] if with_year else []
    parts.append(draw(st.one_of(st.integers(-1, 368).map(str), st.sampled_from(["", "x", "1.5", "060"]))))
    hhmm = st.one_of(
        st.integers(0, 23).flatmap(lambda h: st.integers(0, 59).map(lambda m: str(h * 100 + m))),
        st.integers(-10, 2500).map(str),
        st.sampled_from(["2400", "0010", "10", "100", "2460", "2401", "99", "12.0", "12.5", "", "nan"]),
    )
    parts.append(draw(hhmm))
    parts.append(draw(numbers))
    return ",".join(parts)


def test_generated_logger_lines_agree_with_and_without_a_year_column():
    rows_in_bulk: list[int] = []

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.booleans(),
        st.data(),
        st.sampled_from(["UTC", "America/New_York"]),
        st.sampled_from(["", "1970-01-01", "2024-03-01"]),
        st.sampled_from(["", "2024-06-30"]),
    )
    def agree(with_year, data, zone, not_before, not_after):
        lines = data.draw(st.lists(logger_lines(with_year), max_size=25))
        if with_year:
            timestamp = {"format": "year_doy_hhmm", "columns": [0, 1, 2], "timezone": zone}
            value = "3"
        else:
            timestamp = {"format": "doy_hhmm", "columns": [0, 1], "timezone": zone, "year": 2024}
            value = "2"
        cfg = config(timestamp=timestamp, not_before=not_before, not_after=not_after)
        block = check_agreement(cfg, {value: NUMBER}, lines)
        # A line whose time LineParser reads and whose value is a plain number is read in bulk: the times
        # (unpadded hhmm, 2400, the window) never need the slow path.
        line_parser = LineParser(cfg)
        for index in block.irregular.tolist():
            try:
                parsed = line_parser.parse(lines[index])
            except LineError:
                continue
            assert not re.fullmatch(r"-?\d+(\.\d*)?", parsed.fields.get(value, "")), lines[index]
        rows_in_bulk.append(len(block.rows))

    agree()
    assert sum(1 for rows in rows_in_bulk if rows) >= len(rows_in_bulk) // 10


@settings(max_examples=100, deadline=None)
@given(
    st.lists(logger_lines(with_year=True).map(lambda text: text.replace(",", " ", 2)), max_size=25),
    st.sampled_from(["UTC", "Europe/Lisbon"]),
)
def test_generated_strptime_hhmm_fields_agree(lines, zone):
    """A strptime pattern's own %H%M field: padded times in bulk, the rest (unpadded, 2400) line by line."""
    cfg = config(timestamp={"format": "%Y %j %H%M", "timezone": zone}, not_before="")
    check_agreement(cfg, {"1": NUMBER}, lines)
