"""Proposals from sample files: the configuration a person would write, file by file (``samples/``).

Each expected configuration is checked exactly, then validated and used to parse the sample with the one
parser, so a proposal that reads well but parses badly fails here too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from daqbroker_agent.config import validate_source_config
from daqbroker_agent.parsing import LineError, LineParser
from daqbroker_agent.propose import accepts_year_options, propose

SAMPLES = Path(__file__).parent / "samples"
ISO_UTC = {"format": "iso", "timezone": "UTC"}

EXPECTED: dict[str, dict] = {
    "csv_header.csv": {
        "delimiter": ",",
        "header_lines": 1,
        "columns": ["time", "temperature", "humidity"],
        "timestamp": {**ISO_UTC, "columns": ["time"]},
    },
    "csv_no_header.csv": {"delimiter": ",", "timestamp": {**ISO_UTC, "columns": [0]}},
    "semicolon_decimal_comma.csv": {
        "delimiter": ";",
        "header_lines": 1,
        "columns": ["Datum", "Zeit", "Temperatur", "Feuchte"],
        "timestamp": {"format": "%d.%m.%Y %H:%M:%S", "timezone": "UTC", "columns": ["Datum", "Zeit"]},
    },
    "tab_units.tsv": {
        "delimiter": "\t",
        "header_lines": 1,
        "columns": ["Timestamp", "Air Temperature", "Rel Humidity", "Pressure"],
        "timestamp": {"format": "%Y/%m/%d %H:%M:%S", "timezone": "UTC", "columns": ["Timestamp"]},
    },
    "toa5.dat": {
        "delimiter": ",",
        "header_lines": 4,
        "columns": ["TIMESTAMP", "RECORD", "AirTC_Avg", "RH", "BattV_Min"],
        "timestamp": {**ISO_UTC, "columns": ["TIMESTAMP"]},
    },
    "year_doy_hhmm.dat": {
        "delimiter": ",",
        "timestamp": {"format": "year_doy_hhmm", "timezone": "UTC", "columns": [1, 2, 3]},
    },
    "date_time_columns.csv": {
        "delimiter": ",",
        "header_lines": 1,
        "columns": ["date", "time", "wind_speed", "wind_dir"],
        "timestamp": {**ISO_UTC, "columns": ["date", "time"]},
    },
    "epoch.csv": {
        "delimiter": ",",
        "header_lines": 1,
        "columns": ["epoch", "power"],
        "timestamp": {"format": "epoch", "columns": ["epoch"]},
    },
    "epoch_ms_spaces.txt": {"delimiter": " ", "timestamp": {"format": "epoch_ms", "columns": [0]}},
    "fixed_width.txt": {"format": "fixed_width", "widths": [20, 7, 4], "timestamp": {**ISO_UTC, "columns": [0]}},
    "sentinels.csv": {
        "delimiter": ",",
        "header_lines": 1,
        "columns": ["time", "t_air", "rh", "pressure"],
        "timestamp": {**ISO_UTC, "columns": ["time"]},
    },
    "status_text.csv": {
        "delimiter": ",",
        "header_lines": 1,
        "columns": ["time", "value", "status"],
        "timestamp": {**ISO_UTC, "columns": ["time"]},
    },
    "quoted.csv": {
        "delimiter": ",",
        "header_lines": 1,
        "columns": ["time", "site", "level"],
        "timestamp": {**ISO_UTC, "columns": ["time"]},
    },
}


def _lines(name: str) -> list[str]:
    return (SAMPLES / name).read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_it_proposes_what_a_person_would_write(name):
    assert propose(_lines(name)).config == EXPECTED[name]


def test_the_corpus_is_at_least_twelve_files():
    assert len(EXPECTED) >= 12
    assert {path.name for path in SAMPLES.iterdir()} >= set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_proposal_is_valid_and_parses_every_data_line(name):
    proposal = propose(_lines(name))
    config = validate_source_config("file", {"path": "/srv/data", **proposal.config})
    parser = LineParser(config)
    data = [line for line in _lines(name)[config["header_lines"] :] if line.strip()]
    parsed = [parser.parse(line) for line in data]
    for channel in proposal.channels:
        assert all(channel.source_field in line.fields for line in parsed), channel


def test_units_come_from_brackets_parentheses_and_the_toa5_units_line():
    tab = {c.name: c.units for c in propose(_lines("tab_units.tsv")).channels}
    assert tab == {"Air Temperature": "deg C", "Rel Humidity": "%", "Pressure": "hPa"}
    toa5 = {c.name: c.units for c in propose(_lines("toa5.dat")).channels}
    assert toa5 == {"RECORD": "", "AirTC_Avg": "Deg C", "RH": "%", "BattV_Min": "Volts"}


def test_units_are_normalised_by_the_given_function_and_refused_ones_left_empty_with_a_note():
    def normalise(units: str) -> str:
        if units == "Volts":
            raise ValueError("'Volts' is not a unit")
        return units.upper()

    channels = {c.name: c for c in propose(_lines("toa5.dat"), normalise_units=normalise).channels}
    assert channels["AirTC_Avg"].units == "DEG C"
    assert channels["BattV_Min"].units == "VOLTS"  # the lower-case retry answered
    assert channels["RECORD"].units == ""


def test_sentinels_are_the_repeated_far_out_values_of_each_column():
    channels = {c.slug: c.missing_values for c in propose(_lines("sentinels.csv")).channels}
    assert channels == {"t-air": [-9999.0], "rh": [-7999.0], "pressure": []}
    fixed = {c.source_field: c.missing_values for c in propose(_lines("fixed_width.txt")).channels}
    assert fixed == {"1": [-9999.0], "2": []}


def test_a_single_far_value_is_not_a_sentinel():
    lines = ["t,v", "2024-01-01T00:00:00,1.0", "2024-01-01T00:01:00,-9999", "2024-01-01T00:02:00,1.2"]
    assert propose(lines).channels[0].missing_values == []


def test_a_text_column_becomes_a_text_channel():
    kinds = {c.slug: c.kind for c in propose(_lines("status_text.csv")).channels}
    assert kinds == {"value": "numeric", "status": "text"}


def test_decimal_commas_are_named_and_such_columns_proposed_as_text():
    proposal = propose(_lines("semicolon_decimal_comma.csv"))
    assert {c.kind for c in proposal.channels} == {"text"}
    assert any("decimal comma" in note for note in proposal.notes)


def test_the_zone_of_naive_times_is_asked_never_guessed():
    assert "timestamp.timezone" in propose(_lines("csv_header.csv")).questions
    told = propose(_lines("csv_header.csv"), timezone="Europe/Lisbon")
    assert told.config["timestamp"]["timezone"] == "Europe/Lisbon"
    assert "timestamp.timezone" not in told.questions
    assert "timestamp.timezone" not in propose(_lines("epoch.csv")).questions


def test_day_first_and_month_first_dates_are_settled_by_the_values():
    lines = ["01/02/2024 10:00:00,1", "13/02/2024 10:00:00,2"]
    assert propose(lines).config["timestamp"]["format"] == "%d/%m/%Y %H:%M:%S"
    lines = ["02/01/2024 10:00:00,1", "02/13/2024 10:00:00,2"]
    assert propose(lines).config["timestamp"]["format"] == "%m/%d/%Y %H:%M:%S"


def test_a_day_of_year_file_without_a_year_column():
    proposal = propose(_lines("doy_no_year.txt"))
    assert proposal.config["header_lines"] == 2
    assert [c.slug for c in proposal.channels] == ["temp"]  # the day and hhmm columns are the time
    if accepts_year_options():
        assert proposal.config["timestamp"] == {
            "format": "doy_hhmm",
            "columns": ["DOY", "HHMM"],
            "timezone": "UTC",
            "year_pattern": r"\b((?:19|20)\d\d)\b",
        }
    else:  # the parser cannot place such a file in time: asked, not guessed
        assert "timestamp" not in proposal.config
        assert "timestamp.format" in proposal.questions


def test_a_trailing_blank_line_and_an_empty_sample():
    assert propose([*_lines("status_text.csv"), "", "  "]).config == EXPECTED["status_text.csv"]
    empty = propose([])
    assert empty.config == {} and empty.channels == [] and empty.notes


def test_lines_without_columns_are_said_so():
    proposal = propose(["hello world", "nothing here at all"])
    assert proposal.config == {} and proposal.channels == []
    assert proposal.notes == ["No columns found: the lines have no common delimiter or layout."]


def test_a_proposal_parses_its_times_in_utc():
    proposal = propose(_lines("year_doy_hhmm.dat"))
    parser = LineParser(validate_source_config("file", {"path": "/srv", **proposal.config}))
    # 2024 day 127 is 6 May; 14:30 UTC
    assert parser.parse("101,2024,127,1430,12.5,80.1").ts_us == 1715005800 * 1_000_000
    with pytest.raises(LineError):
        parser.parse("101,2024,400,1430,12.5,80.1")
