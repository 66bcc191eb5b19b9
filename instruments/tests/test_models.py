"""Validation of the instrument registry: what full_clean() and save() refuse, with the messages people see."""

from __future__ import annotations

import pytest
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import IntegrityError, transaction

from accounts.services import create_agent
from instruments.choices import ChannelKind, SourceKind
from instruments.models import SLUG_TAKEN, Channel, DataSource, Instrument
from instruments.tests.factories import make_channel, make_instrument, make_source, make_user

pytestmark = pytest.mark.django_db


FUNCTIONS_ALLOWED = (
    "only these functions may be called: abs, arccos, arcsin, arctan, arctan2, cos, degrees, exp, log, log10, "
    "maximum, minimum, radians, sin, sqrt, tan"
)
UNKNOWN_CHANNEL_HINT = ": an expression refers to this instrument's numeric channels by slug, with '-' written as '_'."


def errors_of(obj) -> dict[str, list[str]]:
    """The message dict full_clean() raises; fails the test when the object is valid."""
    with pytest.raises(ValidationError) as excinfo:
        obj.full_clean()
    return excinfo.value.message_dict


# --- DataSource ------------------------------------------------------------------------------------

BAD_SOURCE_CONFIGS = [
    pytest.param(
        SourceKind.FILE,
        {"path": "/data", "patern": "*.csv"},
        "patern: unknown option (did you mean 'pattern'?)",
        id="file-misspelt-option",
    ),
    pytest.param(
        SourceKind.FILE,
        {"path": "/data", "zzz": 1},
        "zzz: unknown option; known options: archive, colspecs, columns, delimiter, encoding, final_line_after, "
        "format, header_lines, max_lines, not_after, not_before, path, pattern, quotechar, regex, rotated_pattern, "
        "timestamp, widths",
        id="file-unknown-option",
    ),
    pytest.param(SourceKind.FILE, {"pattern": "*.csv"}, "path: is required", id="file-missing-path"),
    pytest.param(
        SourceKind.FILE,
        {"path": "/data", "encoding": "klingon"},
        "encoding: 'klingon' is not a known text encoding",
        id="file-bad-encoding",
    ),
    pytest.param(
        SourceKind.FILE,
        {"path": "/data", "format": "regex", "regex": "(?P<t>[^,]+"},
        "regex: is not a valid regular expression: missing ) at position 11",
        id="file-bad-regex",
    ),
    pytest.param(
        SourceKind.FILE,
        {"path": "/data", "format": "regex", "regex": r"(\d+),(\d+)"},
        r"regex: needs at least one named group, e.g. (?P<temperature>[-\d.]+)",
        id="file-regex-without-named-groups",
    ),
    pytest.param(
        SourceKind.FILE,
        {"path": "/data", "format": "regex"},
        "regex: is required when format is regex",
        id="file-regex-format-without-regex",
    ),
    pytest.param(
        SourceKind.FILE,
        {"path": "/data", "timestamp": {"timezone": "Mars/Olympus_Mons"}},
        "timestamp.timezone: 'Mars/Olympus_Mons' is not a known time zone (use an IANA name such as Europe/Lisbon)",
        id="file-bad-timezone",
    ),
    pytest.param(
        SourceKind.FILE,
        {"path": "/data", "timestamp": {"format": "yyyy-mm-dd"}},
        "timestamp.format: 'yyyy-mm-dd' is neither one of iso, epoch, epoch_ms, year_doy_hhmm, doy_hhmm, receipt "
        "nor a strptime pattern containing %",
        id="file-bad-timestamp-format",
    ),
    pytest.param(SourceKind.SERIAL, {"baudrate": 9600}, "url: is required", id="serial-missing-url"),
    pytest.param(
        SourceKind.SERIAL,
        {"url": "/dev/ttyUSB0", "baudrate": 12345},
        "baudrate: 12345 is not one of 50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800, 9600, "
        "19200, 38400, 57600, 115200, 230400, 460800, 500000, 576000, 921600, 1000000",
        id="serial-bad-baudrate",
    ),
    pytest.param(
        SourceKind.SERIAL,
        {"url": "/dev/ttyUSB0", "baudrate": "fast"},
        "baudrate: must be a whole number, not 'fast'",
        id="serial-baudrate-not-a-number",
    ),
    pytest.param(
        SourceKind.SERIAL,
        {"url": "/dev/ttyUSB0", "parity": "X"},
        "parity: 'X' is not one of N, E, O, M, S",
        id="serial-bad-parity",
    ),
    pytest.param(SourceKind.TCP, {"host": "10.0.0.5"}, "port: is required", id="tcp-missing-port"),
    pytest.param(SourceKind.TCP, {"host": "10.0.0.5", "port": 70000}, "port: must be at most 65535", id="tcp-port"),
    pytest.param(SourceKind.TCP, {"host": "10.0.0.5", "port": 0}, "port: must be at least 1", id="tcp-port-zero"),
    pytest.param(
        SourceKind.AGENT,
        {},
        'collect: is required: what the agent reads, e.g. {"kind": "serial", "url": "/dev/ttyUSB0"}',
        id="agent-missing-collect",
    ),
    pytest.param(
        SourceKind.AGENT,
        {"collect": {"kind": "ftp", "url": "ftp://x"}},
        "collect.kind: 'ftp' is not one of file, serial, tcp, modbus, command, mqtt, opcua",
        id="agent-bad-collect-kind",
    ),
    pytest.param(
        SourceKind.AGENT,
        {"collect": {"kind": "serial", "url": "/dev/ttyUSB0", "baudrate": 12}},
        "collect.baudrate: 12 is not one of 50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800, 9600, "
        "19200, 38400, 57600, 115200, 230400, 460800, 500000, 576000, 921600, 1000000",
        id="agent-bad-nested-option",
    ),
    pytest.param(
        SourceKind.AGENT,
        {"collect": {"kind": "serial", "url": "/dev/ttyUSB0"}, "interval": 5},
        "interval: unknown option; an agent source has only 'collect'",
        id="agent-unknown-option",
    ),
]


@pytest.mark.parametrize(("kind", "config", "message"), BAD_SOURCE_CONFIGS)
def test_full_clean_refuses_a_bad_source_config(kind, config, message):
    source = DataSource(instrument=make_instrument(), name="logger", kind=kind, config=config)
    assert errors_of(source) == {"config": [message]}


@pytest.mark.parametrize(("kind", "config", "message"), BAD_SOURCE_CONFIGS)
def test_save_refuses_a_bad_source_config(kind, config, message):
    instrument = make_instrument()
    with pytest.raises(ValidationError) as excinfo:
        DataSource(instrument=instrument, name="logger", kind=kind, config=config).save()
    assert excinfo.value.message_dict == {"config": [message]}
    assert not DataSource.objects.filter(instrument=instrument).exists()


def test_save_refuses_a_config_made_bad_after_creation():
    source = make_source(kind=SourceKind.TCP, config={"host": "10.0.0.5", "port": 4001})
    source.config["port"] = 99999
    with pytest.raises(ValidationError) as excinfo:
        source.save()
    assert excinfo.value.message_dict == {"config": ["port: must be at most 65535"]}
    source.refresh_from_db()
    assert source.config["port"] == 4001


def test_unknown_source_kind_is_refused():
    source = DataSource(instrument=make_instrument(), name="logger", kind="ftp", config={})
    assert "'ftp' is not a kind of source" in errors_of(source)["kind"]
    with pytest.raises(ValidationError):
        source.save()


def test_saving_fills_in_the_defaults_of_a_good_config():
    source = make_source(kind=SourceKind.SERIAL, config={"url": "/dev/ttyUSB0", "baudrate": "19200"})
    source.refresh_from_db()
    assert source.config == {
        "url": "/dev/ttyUSB0",
        "baudrate": 19200,
        "bytesize": 8,
        "parity": "N",
        "stopbits": 1.0,
        "request": "",
        "line_terminator": "\n",
        "timeout": 2.0,
        "max_lines": 1000,
        "response_lines": 1,
        "listen_seconds": 0.0,
        "encoding": "utf-8",
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


def test_full_clean_fills_in_the_defaults_of_an_agent_config():
    instrument = make_instrument()
    agent, _ = create_agent(owner=instrument.owner, name="remote-logger", instruments=[instrument])
    source = DataSource(
        instrument=instrument,
        name="remote",
        kind=SourceKind.AGENT,
        agent=agent,
        config={"collect": {"kind": "tcp", "host": "10.0.0.5", "port": 4001}},
    )
    source.full_clean()
    assert source.config["collect"]["kind"] == "tcp"
    assert source.config["collect"]["port"] == 4001
    assert source.config["collect"]["timeout"] == 2.0
    assert source.config["collect"]["timestamp"] == {
        "columns": [0],
        "format": "iso",
        "timezone": "UTC",
        "year": None,
        "year_pattern": "",
    }


def test_source_name_is_unique_per_instrument():
    source = make_source()
    duplicate = DataSource(instrument=source.instrument, name=source.name, kind=SourceKind.FILE, config={"path": "/"})
    assert errors_of(duplicate) == {NON_FIELD_ERRORS: ["Data source with this Instrument and Name already exists."]}
    other = DataSource(instrument=make_instrument(), name=source.name, kind=SourceKind.FILE, config={"path": "/"})
    other.full_clean()


# --- Channel ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("units", ["degC", "W/m^2", "V", "%", "°C", "m/s", ""])
def test_channel_accepts_units_pint_knows(units):
    make_channel(units=units).full_clean()


def test_channel_refuses_unknown_units():
    channel = Channel(instrument=make_instrument(), name="Fruit", slug="fruit", units="bananas/parsec²")
    assert errors_of(channel) == {
        "units": ["'bananas/parsec²' is not a unit DAQBroker knows ('bananas' is not defined in the unit registry)"]
    }


def test_channel_refuses_a_unit_expression_that_does_not_parse():
    channel = Channel(instrument=make_instrument(), name="Odd", slug="odd", units="3 m")
    assert errors_of(channel) == {"units": ["'3 m' is not a unit expression (ValueError)"]}


def test_channel_valid_min_above_valid_max_is_refused():
    channel = Channel(instrument=make_instrument(), name="T", slug="t", valid_min=5, valid_max=1)
    # Django skips the check constraint on fields that already have an error: one message, not two.
    assert errors_of(channel) == {"valid_max": ["The valid maximum (1.0) is below the valid minimum (5.0)."]}


def test_channel_valid_range_is_enforced_by_the_database():
    instrument = make_instrument()
    with pytest.raises(IntegrityError), transaction.atomic():
        Channel.objects.create(instrument=instrument, name="T", slug="t", valid_min=5, valid_max=1)


def test_channel_equal_valid_min_and_max_is_accepted():
    make_channel(valid_min=3, valid_max=3).full_clean()


@pytest.mark.parametrize(
    "missing_values",
    [-9999, "-9999", [-9999, "x"], [True], [None], [float("nan")], {"a": 1}],
    ids=["number", "text", "list-with-text", "bool", "null", "nan", "object"],
)
def test_channel_missing_values_must_be_a_list_of_numbers(missing_values):
    channel = Channel(instrument=make_instrument(), name="T", slug="t", missing_values=missing_values)
    assert errors_of(channel)["missing_values"] == ["Must be a list of numbers, e.g. [-9999, -7999]."]


def test_channel_missing_values_list_of_numbers_is_accepted():
    make_channel(missing_values=[-9999, -7999.5, 0]).full_clean()


def test_channel_valid_bounds_must_be_finite():
    channel = Channel(instrument=make_instrument(), name="T", slug="t", valid_min=float("-inf"))
    assert errors_of(channel)["valid_min"] == ["Must be a finite number."]


@pytest.mark.parametrize("extra", [{"units": "V"}, {"valid_min": 0}, {"valid_max": 10}])
def test_text_channel_has_no_units_or_range(extra):
    channel = Channel(instrument=make_instrument(), name="Status", slug="status", kind=ChannelKind.TEXT, **extra)
    assert errors_of(channel) == {"kind": ["Text channels have no units or valid range."]}


def test_channel_source_must_belong_to_the_same_instrument():
    foreign_source = make_source()
    channel = Channel(instrument=make_instrument(), source=foreign_source, name="T", slug="t")
    assert errors_of(channel) == {"source": ["The data source belongs to another instrument."]}


def test_channel_with_a_source_of_its_own_instrument_is_accepted():
    source = make_source()
    make_channel(instrument=source.instrument, source=source, source_field="2").full_clean()


def test_numeric_channel_cannot_have_an_expression():
    channel = Channel(instrument=make_instrument(), name="T", slug="t", expression="1 + 1")
    assert errors_of(channel) == {"expression": ["Only derived channels have an expression."]}


def derived(instrument, expression: str, slug: str = "derived", **extra) -> Channel:
    return Channel(
        instrument=instrument, name=slug.title(), slug=slug, kind=ChannelKind.DERIVED, expression=expression, **extra
    )


@pytest.fixture
def thermometers():
    instrument = make_instrument()
    make_channel(instrument, slug="t1")
    make_channel(instrument, slug="t2")
    make_channel(instrument, slug="wind-u")
    make_channel(instrument, slug="note", kind=ChannelKind.TEXT)
    return instrument


def test_derived_channel_with_a_good_expression_is_accepted(thermometers):
    derived(thermometers, "(t1 + t2) / 2").full_clean()
    derived(thermometers, "sqrt(wind_u * wind_u) + pi", slug="speed").full_clean()


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("(t1 + ", "not a valid expression: '(' was never closed at character 1"),
        ("__import__('os')", FUNCTIONS_ALLOWED),
        ("t1.real", "Attribute is not allowed in an expression"),
        ("t1.__class__", "Attribute is not allowed in an expression"),
        ("", "the expression is empty"),
        ("nope * 2", "Unknown channel(s) nope" + UNKNOWN_CHANNEL_HINT),
        ("t1 + wind-u", "Unknown channel(s) u, wind" + UNKNOWN_CHANNEL_HINT),
        ("note + t1", "Unknown channel(s) note" + UNKNOWN_CHANNEL_HINT),
        ("derived + t1", "A derived channel cannot refer to itself."),
    ],
    ids=["syntax", "import", "attribute", "dunder", "empty", "unknown", "dash", "text-channel", "self"],
)
def test_derived_channel_expression_errors(thermometers, expression, message):
    assert errors_of(derived(thermometers, expression)) == {"expression": [message]}


def test_derived_channel_cannot_refer_to_a_channel_of_another_instrument(thermometers):
    make_channel(slug="elsewhere")
    expected = "Unknown channel(s) elsewhere" + UNKNOWN_CHANNEL_HINT
    assert errors_of(derived(thermometers, "elsewhere + t1")) == {"expression": [expected]}


def test_derived_channel_has_no_source(thermometers):
    source = make_source(instrument=thermometers)
    errors = errors_of(derived(thermometers, "t1 * 2", source=source))
    assert errors == {"source": ["Derived channels are computed by the server and have no data source."]}


def test_channel_slug_is_unique_within_an_instrument():
    existing = make_channel(slug="t1")
    with pytest.raises(IntegrityError), transaction.atomic():
        Channel.objects.create(instrument=existing.instrument, name="Another name", slug="t1")
    duplicate = Channel(instrument=existing.instrument, name="Another name", slug="t1")
    assert errors_of(duplicate) == {NON_FIELD_ERRORS: ["Channel with this Instrument and Slug already exists."]}


def test_channel_name_is_unique_within_an_instrument():
    existing = make_channel(name="Air temperature")
    duplicate = Channel(instrument=existing.instrument, name="Air temperature", slug="other")
    assert errors_of(duplicate) == {NON_FIELD_ERRORS: ["Channel with this Instrument and Name already exists."]}


def test_same_channel_slug_is_allowed_on_another_instrument():
    existing = make_channel(slug="t1", name="T1")
    other = Channel(instrument=make_instrument(), name="T1", slug="t1")
    other.full_clean()
    other.save()
    assert Channel.objects.filter(slug="t1").count() == 2
    assert other.instrument_id != existing.instrument_id


# --- Instrument ------------------------------------------------------------------------------------


def test_instrument_slug_is_unique():
    make_instrument(slug="weather-mast")
    duplicate = Instrument(name="Other", slug="weather-mast", owner=make_user())
    assert errors_of(duplicate) == {"slug": [SLUG_TAKEN]}
    with pytest.raises(IntegrityError), transaction.atomic():
        duplicate.save()


@pytest.mark.parametrize(("field", "value"), [("latitude", 90.5), ("latitude", -91), ("longitude", 180.01)])
def test_instrument_coordinates_out_of_range_are_refused(field, value):
    instrument = Instrument(name="Mast", slug="mast", owner=make_user(), **{field: value})
    bound = {"latitude": 90, "longitude": 180}[field]
    expected = (
        f"Ensure this value is less than or equal to {bound}."
        if value > 0
        else f"Ensure this value is greater than or equal to -{bound}."
    )
    assert errors_of(instrument) == {field: [expected]}
    with pytest.raises(IntegrityError), transaction.atomic():
        instrument.save()


def test_instrument_coordinates_at_the_limits_are_accepted():
    instrument = Instrument(name="Pole", slug="pole", owner=make_user(), latitude=-90, longitude=180)
    instrument.full_clean()
    instrument.save()
    instrument.refresh_from_db()
    assert (instrument.latitude, instrument.longitude) == (-90, 180)


def test_a_panels_plot_options_are_kept_in_one_shape_without_their_defaults():
    from instruments.dashboards import clean_plot_options

    channels = [Channel(units="degC"), Channel(units="hPa"), Channel(units="")]
    options = {
        "view": "series",  # the default: left out
        "axes": [
            {"units": "hPa", "log": False, "min": None, "max": None, "unit": None},  # all automatic: left out
            {"units": "degC", "log": False, "min": 10, "max": None, "unit": "degC"},  # its own unit: none shown
            {"units": "", "log": True},
        ],
        "exprs": ["  a/temp - b/temp "],
    }
    assert clean_plot_options(options, channels) == {
        "axes": [
            {"units": "degC", "log": False, "min": 10.0, "max": None, "unit": None},
            {"units": "", "log": True, "min": None, "max": None, "unit": None},
        ],
        "exprs": ["a/temp - b/temp"],
    }
    assert clean_plot_options({}, channels) == clean_plot_options(None, channels) == {}
    with pytest.raises(ValidationError, match="one axis per unit"):
        clean_plot_options({"axes": [{"units": "hPa", "log": True}, {"units": "hPa", "log": True}]}, channels)


def test_a_panels_histogram_over_time_channel_is_one_of_its_channels_kept_with_that_view():
    from instruments.dashboards import clean_plot_options

    channels = [Channel(pk=7, units="degC"), Channel(pk=9, units="hPa")]
    assert clean_plot_options({"view": "heatmap", "heat": 9}, channels) == {"view": "heatmap", "heat": 9}
    assert clean_plot_options({"view": "hist", "heat": 9}, channels) == {"view": "hist"}
    for heat in (8, "9", True, 9.0):
        with pytest.raises(ValidationError, match="one of the plot's channels"):
            clean_plot_options({"view": "heatmap", "heat": heat}, channels)
