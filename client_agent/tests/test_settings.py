"""Agent settings from TOML and DAQBROKER_AGENT_* variables: precedence, checks, local sources."""

from __future__ import annotations

import pytest

from daqbroker_agent.settings import SettingsError, load_settings

TOML = """
url = "https://daqbroker.example.org/"
token_file = "{token_file}"
spool = "/var/lib/daqbroker-agent"
batch_size = 2000

[[sources]]
name = "rooftop"
interval_seconds = 10
collect = {{ kind = "file", path = "/data/logger", pattern = "*.csv", columns = ["time", "t_air", "state"] }}
channels = [
    {{ channel = "roof/air-temperature", field = "t_air" }},
    {{ channel = 17, field = "state", kind = "text" }},
]
"""


@pytest.fixture
def config_file(tmp_path):
    token = tmp_path / "token"
    token.write_text("dbk_first\n")
    path = tmp_path / "agent.toml"
    path.write_text(TOML.format(token_file=token))
    return path


def test_file_then_environment_then_options(config_file):
    settings = load_settings(config_file, environ={})
    assert (settings.url, settings.spool, settings.batch_size, settings.uploaders) == (
        "https://daqbroker.example.org/",
        "/var/lib/daqbroker-agent",
        2000,
        2,
    )
    settings = load_settings(
        config_file,
        environ={"DAQBROKER_AGENT_BATCH_SIZE": "500", "DAQBROKER_AGENT_LOG_LEVEL": "debug"},
        overrides={"spool": "/tmp/spool"},
    )
    assert (settings.batch_size, settings.log_level, settings.spool) == (500, "DEBUG", "/tmp/spool")


def test_environment_alone_is_enough(tmp_path):
    settings = load_settings(
        environ={
            "DAQBROKER_AGENT_URL": "http://10.0.0.2:8000",
            "DAQBROKER_AGENT_TOKEN": "dbk_abc",
            "DAQBROKER_AGENT_SPOOL": str(tmp_path),
        }
    )
    assert (settings.url, settings.current_token(), settings.sources) == ("http://10.0.0.2:8000", "dbk_abc", ())
    settings.require_server()


def test_the_configuration_file_can_come_from_the_environment(config_file):
    assert load_settings(environ={"DAQBROKER_AGENT_CONFIG": str(config_file)}).batch_size == 2000


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"DAQBROKER_AGENT_BATCH_SIZE": "lots"}, "DAQBROKER_AGENT_BATCH_SIZE: must be a whole number, not 'lots'"),
        ({"DAQBROKER_AGENT_UPLOADERS": "0"}, "DAQBROKER_AGENT_UPLOADERS: must be at least 1"),
        ({"DAQBROKER_AGENT_URL": "daqbroker.example.org"}, "must start with http:// or https://"),
        ({"DAQBROKER_AGENT_LOG_LEVEL": "loud"}, "DAQBROKER_AGENT_LOG_LEVEL: 'LOUD' is not one of"),
        (
            {"DAQBROKER_AGENT_RETRY_INITIAL_SECONDS": "10", "DAQBROKER_AGENT_RETRY_MAX_SECONDS": "5"},
            "retry_max_seconds must not be below retry_initial_seconds",
        ),
    ],
)
def test_bad_values_stop_the_agent_with_their_name(tmp_path, environ, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(environ={"DAQBROKER_AGENT_SPOOL": str(tmp_path), **environ})


def test_a_spool_folder_is_required():
    with pytest.raises(
        SettingsError, match="no spool folder: set spool in the configuration file or DAQBROKER_AGENT_SPOOL"
    ):
        load_settings(environ={})


def test_server_settings_are_required_to_talk_to_it(tmp_path):
    settings = load_settings(environ={"DAQBROKER_AGENT_SPOOL": str(tmp_path)})
    with pytest.raises(SettingsError, match="no server"):
        settings.require_server()


def test_a_misspelt_option_is_named_with_a_suggestion(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('spool = "/x"\nbatch_sise = 10\n')
    with pytest.raises(SettingsError, match=r"batch_sise: unknown option \(did you mean 'batch_size'\?\)"):
        load_settings(path, environ={})


def test_not_toml(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text("spool = \n")
    with pytest.raises(SettingsError, match="is not valid TOML"):
        load_settings(path, environ={})


def test_local_sources_are_validated_like_the_servers(config_file):
    [source] = load_settings(config_file, environ={}).sources
    assert (source.name, source.interval_seconds) == ("rooftop", 10.0)
    assert source.collect["kind"] == "file"
    assert source.collect["delimiter"] == ","  # defaults filled in by the shared validation
    assert [(c.channel, c.field, c.kind) for c in source.channels] == [
        ("roof/air-temperature", "t_air", "numeric"),
        ("17", "state", "text"),
    ]


TCP = 'collect = { kind = "tcp", host = "h", port = 1 }'
BAD_LOCAL_SOURCES = [
    ('name = "x"\ncollect = { kind = "serial" }\nchannels = [{ channel = "a/b" }]', r"collect\.url: is required"),
    (f'name = "x"\n{TCP}', "list the channels"),
    (f'name = "x"\n{TCP}\nchannels = [{{ channel = "nope" }}]', "instrument-slug/channel-slug"),
    (TCP, r"sources\[0\]\.name: is required"),
]


@pytest.mark.parametrize(("source", "message"), BAD_LOCAL_SOURCES)
def test_bad_local_sources_are_refused(tmp_path, source, message):
    path = tmp_path / "agent.toml"
    path.write_text(f'spool = "/x"\n[[sources]]\n{source}\n')
    with pytest.raises(SettingsError, match=message):
        load_settings(path, environ={})


def test_the_token_file_is_read_again(config_file, tmp_path):
    settings = load_settings(config_file, environ={})
    assert settings.current_token() == "dbk_first"
    (tmp_path / "token").write_text("dbk_second")
    assert settings.current_token() == "dbk_second"
    (tmp_path / "token").unlink()
    with pytest.raises(SettingsError, match="token_file: cannot read"):
        settings.current_token()


def test_a_token_in_the_configuration_file_is_read_again(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(f'spool = "{tmp_path}"\ntoken = "dbk_one"\n')
    settings = load_settings(path, environ={})
    path.write_text(f'spool = "{tmp_path}"\ntoken = "dbk_two"\n')
    assert settings.current_token() == "dbk_two"
