"""Source-configuration validation shared by the agent and the server. No Django here: the agent runs without it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from daqbroker_agent.config import STANDARD_BAUDRATES, ConfigError, validate_source_config

BAUDRATES = ", ".join(map(str, STANDARD_BAUDRATES))
AGENT_KINDS = "file, serial, tcp, modbus, command, mqtt, opcua"
PARSER_DEFAULTS = {
    "format": "delimited",
    "delimiter": ",",
    "quotechar": '"',
    "regex": "",
    "columns": [],
    "widths": [],
    "colspecs": [],
    "timestamp": {"columns": [0], "format": "iso", "timezone": "UTC", "year": None, "year_pattern": ""},
    "not_before": "1970-01-01",
    "not_after": "",
}
LINE_DEFAULTS = {
    "request": "",
    "response_lines": 1,
    "line_terminator": "\n",
    "encoding": "utf-8",
    "timeout": 2.0,
    "listen_seconds": 0.0,
    "max_lines": 1000,
}


def refused(kind: str, raw, prefix: str = "") -> ConfigError:
    with pytest.raises(ConfigError) as excinfo:
        validate_source_config(kind, raw, prefix)
    return excinfo.value


def test_the_agent_package_does_not_need_django():
    code = (
        "import sys, daqbroker_agent.config, daqbroker_agent.parsing; "
        "sys.exit(1 if any(m == 'django' or m.startswith('django.') for m in sys.modules) else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr or "importing the agent imported Django"


# --- defaults --------------------------------------------------------------------------------------


def test_file_source_defaults():
    assert validate_source_config("file", {"path": "/data/logger"}) == {
        "path": "/data/logger",
        "pattern": "*",
        "rotated_pattern": "",
        "header_lines": 0,
        "final_line_after": 300.0,
        "encoding": "utf-8",
        "archive": False,
        "max_lines": 200_000,
        **PARSER_DEFAULTS,
    }


def test_serial_source_defaults_and_coercions():
    config = validate_source_config("serial", {"url": "/dev/ttyUSB0", "baudrate": "115200", "stopbits": 2})
    assert config == {
        "url": "/dev/ttyUSB0",
        "baudrate": 115200,
        "bytesize": 8,
        "parity": "N",
        "stopbits": 2.0,
        **LINE_DEFAULTS,
        **PARSER_DEFAULTS,
    }


def test_tcp_source_defaults():
    assert validate_source_config("tcp", {"host": "10.0.0.5", "port": 4001}) == {
        "host": "10.0.0.5",
        "port": 4001,
        **LINE_DEFAULTS,
        **PARSER_DEFAULTS,
    }


def test_command_source_splits_a_command_string():
    config = validate_source_config("command", {"command": "sensors -j"})
    assert config == {"command": ["sensors", "-j"], "timeout": 30.0, **PARSER_DEFAULTS}


def test_agent_source_validates_what_it_collects():
    config = validate_source_config("agent", {"collect": {"kind": "serial", "url": "/dev/ttyS0"}})
    assert config == {
        "collect": {
            "kind": "serial",
            "url": "/dev/ttyS0",
            "baudrate": 9600,
            "bytesize": 8,
            "parity": "N",
            "stopbits": 1.0,
            **LINE_DEFAULTS,
            **PARSER_DEFAULTS,
        }
    }


def test_none_means_use_the_default():
    assert validate_source_config("file", {"path": "/d", "pattern": None})["pattern"] == "*"


def test_timestamp_section_fills_in_its_own_defaults():
    config = validate_source_config("file", {"path": "/d", "timestamp": {"format": "%d/%m/%Y %H:%M"}})
    assert config["timestamp"] == {
        "columns": [0],
        "format": "%d/%m/%Y %H:%M",
        "timezone": "UTC",
        "year": None,
        "year_pattern": "",
    }


def test_each_config_gets_its_own_default_lists():
    first = validate_source_config("file", {"path": "/d"})
    first["timestamp"]["columns"].append(3)
    first["columns"].append("extra")
    second = validate_source_config("file", {"path": "/d"})
    assert second["timestamp"]["columns"] == [0]
    assert second["columns"] == []


def test_input_is_not_modified():
    raw = {"path": "/d", "timestamp": {"format": "epoch"}}
    validate_source_config("file", raw)
    assert raw == {"path": "/d", "timestamp": {"format": "epoch"}}


@pytest.mark.parametrize("delimiter", [";", "\t", " ", "||"])
def test_delimiters_including_whitespace_are_accepted(delimiter):
    assert validate_source_config("file", {"path": "/d", "delimiter": delimiter})["delimiter"] == delimiter


def test_regex_with_named_groups_is_accepted():
    pattern = r"T=(?P<temperature>[-\d.]+) RH=(?P<humidity>[\d.]+)"
    config = validate_source_config("tcp", {"host": "h", "port": 1, "format": "regex", "regex": pattern})
    assert config["regex"] == pattern


def test_fixed_width_and_year_doy_hhmm_configs_are_accepted():
    config = validate_source_config(
        "file",
        {
            "path": "/d",
            "format": "fixed_width",
            "widths": [4, 4, 5, 8],
            "columns": ["year", "doy", "hhmm", "temp"],
            "timestamp": {"format": "year_doy_hhmm", "columns": ["year", "doy", "hhmm"]},
        },
    )
    assert config["widths"] == [4, 4, 5, 8]
    assert config["colspecs"] == []
    config = validate_source_config("file", {"path": "/d", "format": "fixed_width", "colspecs": [[0, 10], ["12", 20]]})
    assert config["colspecs"] == [[0, 10], [12, 20]]


def test_no_quoting_is_an_empty_quotechar():
    assert validate_source_config("file", {"path": "/d", "quotechar": ""})["quotechar"] == ""


def test_encoding_is_canonicalised():
    assert validate_source_config("file", {"path": "/d", "encoding": "Latin-1"})["encoding"] == "iso8859-1"


# --- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "raw", "field", "message"),
    [
        ("file", {"path": "/d", "patern": "*.csv"}, "patern", "unknown option (did you mean 'pattern'?)"),
        ("file", {"path": "/d", "delimter": ";"}, "delimter", "unknown option (did you mean 'delimiter'?)"),
        (
            "file",
            {"path": "/d", "qqq": 1},
            "qqq",
            "unknown option; known options: archive, colspecs, columns, delimiter, encoding, final_line_after, "
            "format, header_lines, max_lines, not_after, not_before, path, pattern, quotechar, regex, "
            "rotated_pattern, timestamp, widths",
        ),
        ("file", {}, "path", "is required"),
        ("file", {"path": ""}, "path", "must not be empty"),
        ("file", {"path": 5}, "path", "must be text, not int"),
        ("file", {"path": "/d", "delimiter": ""}, "delimiter", "must not be empty"),
        ("file", {"path": "/d", "header_lines": -1}, "header_lines", "must be at least 0"),
        ("file", {"path": "/d", "archive": "yes"}, "archive", "must be true or false, not 'yes'"),
        ("file", {"path": "/d", "format": "xml"}, "format", "'xml' is not one of delimited, regex, fixed_width"),
        ("file", {"path": "/d", "columns": "a,b"}, "columns", "must be a list of column names or positions"),
        ("file", {"path": "/d", "columns": ["a", -1]}, "columns[1]", "a column position cannot be negative"),
        ("file", {"path": "/d", "regex": "(?P<x>.)"}, "regex", "only applies when format is regex"),
        ("file", {"path": "/d", "format": "regex"}, "regex", "is required when format is regex"),
        (
            "file",
            {"path": "/d", "format": "regex", "regex": "(?P<x>"},
            "regex",
            "is not a valid regular expression: missing ) at position 6",
        ),
        (
            "file",
            {"path": "/d", "format": "regex", "regex": r"(\d+)"},
            "regex",
            r"needs at least one named group, e.g. (?P<temperature>[-\d.]+)",
        ),
        (
            "file",
            {"path": "/d", "timestamp": {"timezone": "Europe/Atlantis"}},
            "timestamp.timezone",
            "'Europe/Atlantis' is not a known time zone (use an IANA name such as Europe/Lisbon)",
        ),
        (
            "file",
            {"path": "/d", "timestamp": {"format": "unix"}},
            "timestamp.format",
            "'unix' is neither one of iso, epoch, epoch_ms, year_doy_hhmm, doy_hhmm, receipt nor a strptime "
            "pattern containing %",
        ),
        (
            "file",
            {"path": "/d", "timestamp": {"columns": []}},
            "timestamp.columns",
            "name at least one column holding the time",
        ),
        (
            "file",
            {"path": "/d", "timestamp": {"zone": "UTC"}},
            "timestamp.zone",
            "unknown option (did you mean 'timezone'?)",
        ),
        ("file", {"path": "/d", "timestamp": "iso"}, "timestamp", "must be an object of option names and values"),
        (
            "file",
            {"path": "/d", "format": "fixed_width"},
            "widths",
            "fixed_width needs either widths or colspecs (exactly one of the two)",
        ),
        (
            "file",
            {"path": "/d", "format": "fixed_width", "widths": [3], "colspecs": [[0, 3]]},
            "widths",
            "fixed_width needs either widths or colspecs (exactly one of the two)",
        ),
        ("file", {"path": "/d", "widths": [3, 4]}, "widths", "only applies when format is fixed_width"),
        ("file", {"path": "/d", "colspecs": [[0, 3]]}, "colspecs", "only applies when format is fixed_width"),
        ("file", {"path": "/d", "format": "fixed_width", "widths": [3, 0]}, "widths[1]", "must be at least 1"),
        (
            "file",
            {"path": "/d", "format": "fixed_width", "colspecs": [[0, 3], [5, 5]]},
            "colspecs[1]",
            "the end (5) must be after the start (5)",
        ),
        (
            "file",
            {"path": "/d", "format": "fixed_width", "colspecs": [[0, 3], 7]},
            "colspecs[1]",
            "must be a [start, end] pair of character positions",
        ),
        ("file", {"path": "/d", "delimiter": ";", "quotechar": ";"}, "quotechar", "must differ from the delimiter"),
        ("file", {"path": "/d", "quotechar": "''"}, "quotechar", "is longer than 1 characters"),
        ("file", {"path": "/d", "encoding": "utf-16"}, "encoding", "utf-16 files cannot be read line by line"),
        ("file", {"path": "/d", "max_lines": 0}, "max_lines", "must be at least 1"),
        (
            "file",
            {"path": "/d", "timestamp": {"format": "year_doy_hhmm", "columns": [0, 1]}},
            "timestamp.columns",
            "year_doy_hhmm needs three columns (year, day of year, hhmm) or four (and seconds)",
        ),
        ("serial", {"url": "/dev/ttyS0", "response_lines": -1}, "response_lines", "must be at least 0"),
        ("serial", {"url": "/dev/ttyS0", "listen_seconds": 7200}, "listen_seconds", "must be at most 3600"),
        ("tcp", {"host": "h", "port": 1, "encoding": "klingon"}, "encoding", "'klingon' is not a known text encoding"),
        ("serial", {"baudrate": 9600}, "url", "is required"),
        ("serial", {"url": "/dev/ttyS0", "baudrate": 12345}, "baudrate", f"12345 is not one of {BAUDRATES}"),
        ("serial", {"url": "/dev/ttyS0", "baudrate": 9600.0}, "baudrate", "must be a whole number, not 9600.0"),
        ("serial", {"url": "/dev/ttyS0", "baudrate": True}, "baudrate", "must be a whole number, not True"),
        ("serial", {"url": "/dev/ttyS0", "bytesize": 9}, "bytesize", "9 is not one of 5, 6, 7, 8"),
        ("serial", {"url": "/dev/ttyS0", "stopbits": 3}, "stopbits", "3 is not one of 1, 1.5, 2"),
        ("serial", {"url": "/dev/ttyS0", "timeout": 0}, "timeout", "must be at least 0.01"),
        ("serial", {"url": "/dev/ttyS0", "timeout": "nan"}, "timeout", "must be a finite number"),
        ("serial", {"url": "/dev/ttyS0", "line_terminator": ";"}, "line_terminator", "';' is not one of \n, \r\n, \r"),
        ("tcp", {"host": "h"}, "port", "is required"),
        ("tcp", {"host": "h", "port": 0}, "port", "must be at least 1"),
        ("tcp", {"host": "h", "port": 65536}, "port", "must be at most 65535"),
        ("tcp", {"host": "h", "port": "http"}, "port", "must be a whole number, not 'http'"),
        ("command", {"command": []}, "command", 'must be a command as a list of words, e.g. ["sensors", "-j"]'),
        ("ftp", {}, "kind", "unknown source kind 'ftp'"),
        ("file", ["path", "/d"], "", "must be an object of option names and values"),
        (
            "agent",
            {},
            "collect",
            'is required: what the agent reads, e.g. {"kind": "serial", "url": "/dev/ttyUSB0"}',
        ),
        ("agent", {"collect": {"kind": "agent"}}, "collect.kind", f"'agent' is not one of {AGENT_KINDS}"),
        ("agent", {"collect": {"url": "/dev/ttyS0"}}, "collect.kind", f"None is not one of {AGENT_KINDS}"),
        ("agent", {"collect": {"kind": "serial"}}, "collect.url", "is required"),
        ("agent", {"collect": {"kind": "tcp", "host": "h", "port": -1}}, "collect.port", "must be at least 1"),
        (
            "agent",
            {"collect": {"kind": "file", "path": "/d"}, "x": 1},
            "x",
            "unknown option; an agent source has only 'collect'",
        ),
    ],
)
def test_bad_configs_are_refused_naming_the_option(kind, raw, field, message):
    error = refused(kind, raw)
    assert (error.field, error.message) == (field, message)
    assert str(error) == (f"{field}: {message}" if field else message)


def test_prefix_is_prepended_to_the_field():
    error = refused("tcp", {"host": "h", "port": 0}, prefix="config")
    assert str(error) == "config.port: must be at least 1"


def test_a_nul_character_anywhere_is_refused():
    with pytest.raises(ConfigError) as caught:
        validate_source_config("file", {"path": "/d", "columns": ["a", "b\x00"]})
    assert str(caught.value) == "columns[1]: must not contain a NUL character"


def test_a_pattern_that_backtracks_exponentially_is_refused_at_save():
    with pytest.raises(ConfigError) as refused:
        validate_source_config("tcp", {"host": "h", "port": 1, "format": "regex", "regex": r"^(?P<x>(a|aa)+)+$"})
    assert refused.value.field == "regex"
    assert str(refused.value).startswith("regex: this pattern takes too long")


def test_the_finding_pattern_is_fast_under_the_regex_package_and_accepted():
    # Python's re backtracks for minutes on /etc/passwd lines with it; regex checks the literal "!" first.
    pattern = r"^(?P<x>([a-z:/0-9])+)+!$"
    config = validate_source_config("tcp", {"host": "h", "port": 1, "format": "regex", "regex": pattern})
    assert config["regex"] == pattern


# --- times without a year, the plausible window (issue 15) -----------------------------------------

DOY = {"format": "doy_hhmm", "columns": [0, 1]}


@pytest.mark.parametrize(
    ("kind", "raw", "field", "message"),
    [
        ("file", {"timestamp": DOY}, "timestamp.year", "doy_hhmm has no year column: give year (e.g. 2024) or"),
        (
            "file",
            {"timestamp": {"format": "%j %H:%M", "columns": [0, 1]}},
            "timestamp.year",
            "'%j %H:%M' has no year (%Y): give year",
        ),
        ("file", {"timestamp": {**DOY, "columns": [0]}}, "timestamp.columns", "doy_hhmm needs two columns"),
        (
            "file",
            {"header_lines": 1, "timestamp": {**DOY, "year": 2024, "year_pattern": r"(\d{4})"}},
            "timestamp.year_pattern",
            "give year or year_pattern, not both",
        ),
        ("file", {"timestamp": {**DOY, "year": 24}}, "timestamp.year", "must be at least 1000"),
        ("file", {"timestamp": {"year": 2024}}, "timestamp.year", "only applies when the time has no year"),
        (
            "file",
            {"timestamp": {"format": "year_doy_hhmm", "columns": [0, 1, 2], "year_pattern": r"(\d+)"}},
            "timestamp.year_pattern",
            "only applies when the time has no year",
        ),
        (
            "file",
            {"header_lines": 1, "timestamp": {**DOY, "year_pattern": r"Year (\d{4}) day (\d+)"}},
            "timestamp.year_pattern",
            "needs exactly one group, the year (it has 2)",
        ),
        (
            "file",
            {"timestamp": {**DOY, "year_pattern": r"Year (\d{4})"}},
            "timestamp.year_pattern",
            "is searched in the file's header lines: set header_lines",
        ),
        (
            "serial",
            {"url": "loop://", "timestamp": {**DOY, "year_pattern": r"Year (\d{4})"}},
            "timestamp.year_pattern",
            "file sources only",
        ),
        ("file", {"not_before": "last year"}, "not_before", "'last year' is not an ISO 8601 date or time"),
        ("file", {"not_after": "2024-13-01"}, "not_after", "is not an ISO 8601 date or time"),
        ("file", {"not_before": "2024-01-01", "not_after": "2023-12-31"}, "not_after", "must be later than not_before"),
    ],
)
def test_times_without_a_year_and_windows_are_checked_when_saved(kind, raw, field, message):
    base = {"path": "/d"} if kind == "file" else {}
    with pytest.raises(ConfigError) as excinfo:
        validate_source_config(kind, {**base, **raw})
    assert excinfo.value.field == field
    assert message in excinfo.value.message


def test_times_without_a_year_and_windows_are_accepted():
    fixed = validate_source_config("file", {"path": "/d", "timestamp": {**DOY, "year": "2024"}})
    assert fixed["timestamp"]["year"] == 2024
    found = validate_source_config(
        "file", {"path": "/d", "header_lines": 2, "timestamp": {**DOY, "year_pattern": r"Year:\s*(\d{4})"}}
    )
    assert found["timestamp"]["year_pattern"] == r"Year:\s*(\d{4})"
    window = validate_source_config("tcp", {"host": "h", "port": 1, "not_before": "", "not_after": " 2030-01-01 "})
    assert (window["not_before"], window["not_after"]) == ("", "2030-01-01")
    agent = validate_source_config(
        "agent",
        {
            "collect": {
                "kind": "file",
                "path": "/d",
                "header_lines": 1,
                "timestamp": {**DOY, "year_pattern": r"(\d{4})"},
            }
        },
    )
    assert agent["collect"]["timestamp"]["year_pattern"] == r"(\d{4})"
