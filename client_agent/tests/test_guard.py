"""What the agent lets the server's configuration do on its machine: allow_commands and allowed_paths."""

from __future__ import annotations

import pytest

from daqbroker_agent.guard import refusal, within
from daqbroker_agent.settings import SettingsError, load_settings


def test_commands_are_refused_unless_the_local_file_enables_them():
    command = {"kind": "command", "command": ["id"]}
    assert "commands are not enabled on this host" in refusal(command, allow_commands=False, allowed_paths=())
    assert refusal(command, allow_commands=True, allowed_paths=()) == ""


def test_file_sources_only_read_under_allowed_paths(tmp_path):
    allowed = tmp_path / "logger"
    allowed.mkdir()
    (tmp_path / "escape").symlink_to("/etc")
    (allowed / "out").symlink_to("/etc")
    paths = (str(allowed),)
    assert refusal({"kind": "file", "path": str(allowed)}, allow_commands=False, allowed_paths=paths) == ""
    for path in ("/etc", str(tmp_path / "escape"), str(allowed / "out"), f"{allowed}/../escape"):
        why = refusal({"kind": "file", "path": path}, allow_commands=False, allowed_paths=paths)
        assert "is not under this agent's allowed_paths" in why, path
    why = refusal({"kind": "file", "path": str(allowed), "pattern": "../*"}, allow_commands=True, allowed_paths=paths)
    assert "may not be absolute or contain '..'" in why


def test_nothing_is_allowed_by_default():
    assert "none" in refusal({"kind": "file", "path": "/data"}, allow_commands=False, allowed_paths=())


def test_serial_devices_need_allowed_paths_but_urls_do_not():
    assert (
        refusal({"kind": "serial", "url": "/dev/ttyUSB0"}, allow_commands=False, allowed_paths=("/dev/ttyUSB0",)) == ""
    )
    why = refusal({"kind": "serial", "url": "/dev/ttyS0"}, allow_commands=False, allowed_paths=("/dev/ttyUSB0",))
    assert "serial device /dev/ttyS0" in why
    assert refusal({"kind": "serial", "url": "socket://10.0.0.5:4001"}, allow_commands=False, allowed_paths=()) == ""
    assert refusal({"kind": "tcp", "host": "10.0.0.5", "port": 1}, allow_commands=False, allowed_paths=()) == ""


def test_within_follows_symlinks(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a")
    assert within(tmp_path / "link" / "f.csv", [str(tmp_path / "a")])
    assert not within(tmp_path / "b", [str(tmp_path / "a")])


def write(tmp_path, text: str):
    path = tmp_path / "agent.toml"
    path.write_text(f'spool = "{tmp_path}"\n{text}')
    return path


def test_the_local_file_sets_allow_commands_and_allowed_paths(tmp_path):
    settings = load_settings(
        write(tmp_path, 'allow_commands = true\nallowed_paths = ["/data", "/dev/ttyUSB0"]\n'), environ={}
    )
    assert settings.allow_commands is True
    assert settings.allowed_paths == ("/data", "/dev/ttyUSB0")


def test_by_default_no_commands_and_no_paths(tmp_path):
    settings = load_settings(write(tmp_path, ""), environ={})
    assert (settings.allow_commands, settings.allowed_paths) == (False, ())


def test_the_environment_cannot_enable_commands(tmp_path):
    environ = {"DAQBROKER_AGENT_ALLOW_COMMANDS": "true", "DAQBROKER_AGENT_ALLOWED_PATHS": "/"}
    settings = load_settings(write(tmp_path, ""), environ=environ)
    assert (settings.allow_commands, settings.allowed_paths) == (False, ())


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('allow_commands = "yes"\n', "allow_commands: must be true or false"),
        ('allowed_paths = "/data"\n', "allowed_paths: must be a list of absolute paths"),
        ('allowed_paths = ["data"]\n', "'data' is not an absolute path"),
    ],
)
def test_bad_local_settings_stop_the_agent(tmp_path, text, why):
    with pytest.raises(SettingsError, match=why):
        load_settings(write(tmp_path, text), environ={})
