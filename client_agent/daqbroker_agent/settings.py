"""The agent's settings: a TOML file and/or ``DAQBROKER_AGENT_*`` environment variables.

Precedence: command-line options, then environment variables, then the file, then defaults. Every value
is checked when the agent starts, with the validators the server uses for source configurations, and a
bad one stops the agent with its name (``DAQBROKER_AGENT_BATCH_SIZE: must be at least 1``).

The file (``--config``, or ``DAQBROKER_AGENT_CONFIG``) holds the settings below at its top level, and
optionally ``[[sources]]`` the agent collects on its own, in addition to the ones the server assigns it::

    url = "https://daqbroker.example.org"
    token_file = "/etc/daqbroker-agent/token"
    spool = "/var/lib/daqbroker-agent"

    # What the server may ask this agent to collect (sources of this file are not limited by these):
    allow_commands = false                      # true: the server may assign "command" sources
    allowed_paths = ["/data/logger", "/dev/ttyUSB0"]   # folders for file sources, serial devices

    [[sources]]
    name = "rooftop-logger"
    interval_seconds = 10
    collect = { kind = "file", path = "/data/logger", pattern = "*.csv", columns = ["time", "t_air"] }
    channels = [ { channel = "roof-station/air-temperature", field = "t_air" } ]
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from daqbroker_agent.config import (
    ConfigError,
    Option,
    boolean,
    choice,
    integer,
    number,
    text,
    validate_options,
    validate_source_config,
)

ENV_PREFIX = "DAQBROKER_AGENT_"


def path_list():
    def check(value: Any, field: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
            raise ConfigError(field, 'must be a list of absolute paths, e.g. ["/data/logger", "/dev/ttyUSB0"]')
        for item in value:
            if not os.path.isabs(item):
                raise ConfigError(field, f"{item!r} is not an absolute path")
        return tuple(value)

    return check


class SettingsError(ValueError):
    """A setting that cannot be used; the message names it and where it came from."""


OPTIONS: dict[str, Option] = {
    "url": Option(text(max_length=2000), default="", help="the server, e.g. https://daqbroker.example.org"),
    "token": Option(text(allow_empty=True, max_length=500), default="", help="the agent's API token (dbk_...)"),
    "token_file": Option(text(max_length=4000), default="", help="a file holding the token; re-read after a 401"),
    "spool": Option(text(max_length=4000), default="", help="the folder of the spool (created if missing)"),
    "max_spool_readings": Option(integer(minimum=1000, maximum=10**10), default=5_000_000),
    "spool_sync": Option(choice("full", "normal"), default="full", help="normal: faster, may lose on power loss"),
    "batch_size": Option(integer(minimum=1, maximum=100_000), default=5000, help="readings per upload"),
    "uploaders": Option(integer(minimum=1, maximum=16), default=2, help="uploads in flight at once"),
    "request_timeout": Option(number(minimum=1, maximum=3600), default=60.0),
    "retry_initial_seconds": Option(number(minimum=0.01, maximum=3600), default=1.0),
    "retry_max_seconds": Option(number(minimum=0.1, maximum=86_400), default=60.0),
    "heartbeat_seconds": Option(number(minimum=1, maximum=86_400), default=30.0),
    "config_poll_seconds": Option(number(minimum=1, maximum=86_400), default=30.0),
    "ca_file": Option(text(max_length=4000), default="", help="CA bundle for a server with a private certificate"),
    "log_level": Option(choice("DEBUG", "INFO", "WARNING", "ERROR"), default="INFO"),
    # Set only in the configuration file (never from the environment or the server): what the server's
    # configuration may make this agent do on this machine (daqbroker_agent.guard).
    "allow_commands": Option(boolean(), default=False, help="the server may assign command sources"),
    "allowed_paths": Option(
        path_list(), default=tuple, help="folders (and serial devices) the server's sources may read"
    ),
}
# Options only the configuration file sets: the machine's owner decides them, not an environment variable
# a service manager or a shared shell might carry.
FILE_ONLY_OPTIONS = {"allow_commands", "allowed_paths"}
INTEGER_OPTIONS = {"max_spool_readings", "batch_size", "uploaders"}


@dataclass(frozen=True)
class LocalChannel:
    channel: str  # as the server is told: "instrument-slug/channel-slug" or a numeric id
    field: str
    kind: str = "numeric"


@dataclass(frozen=True)
class LocalSource:
    name: str
    interval_seconds: float
    collect: dict
    channels: tuple[LocalChannel, ...]


@dataclass(frozen=True)
class Settings:
    url: str
    token: str
    token_file: str
    spool: str
    max_spool_readings: int
    spool_sync: str
    batch_size: int
    uploaders: int
    request_timeout: float
    retry_initial_seconds: float
    retry_max_seconds: float
    heartbeat_seconds: float
    config_poll_seconds: float
    ca_file: str
    log_level: str
    allow_commands: bool = False
    allowed_paths: tuple[str, ...] = ()
    config_file: str = ""
    sources: tuple[LocalSource, ...] = field(default=())

    def current_token(self) -> str:
        """The token to send now: the token file's content when there is one (it may have been replaced
        since the agent started), else the file's or environment's ``token``."""
        if self.token_file:
            try:
                return Path(self.token_file).read_text().strip()
            except OSError as exc:
                raise SettingsError(f"token_file: cannot read {self.token_file}: {exc.strerror}") from None
        if self.config_file and not os.environ.get(ENV_PREFIX + "TOKEN"):
            try:  # a token written into the TOML file is re-read too
                return str(_read_toml(Path(self.config_file)).get("token", self.token)).strip()
            except SettingsError:
                return self.token
        return self.token

    def require_server(self) -> None:
        if not self.url:
            raise SettingsError(f"no server: set url in the configuration file or {ENV_PREFIX}URL")
        if not (self.token or self.token_file):
            raise SettingsError(
                f"no token: set token or token_file in the configuration file, or {ENV_PREFIX}TOKEN / "
                f"{ENV_PREFIX}TOKEN_FILE"
            )


def load_settings(
    config_file: str | os.PathLike | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    environ = os.environ if environ is None else environ
    path = config_file or environ.get(ENV_PREFIX + "CONFIG") or ""
    raw: dict[str, Any] = _read_toml(Path(path)) if path else {}
    sources_raw = raw.pop("sources", [])
    try:
        values = validate_options(OPTIONS, raw, "")
    except ConfigError as exc:
        raise SettingsError(f"{path}: {exc}") from None
    for name, option in OPTIONS.items():
        env_name = ENV_PREFIX + name.upper()
        if name in FILE_ONLY_OPTIONS:
            continue
        if environ.get(env_name, "").strip():  # set and not empty
            value = environ[env_name].strip()
            value = value.upper() if name == "log_level" else value.lower() if name == "spool_sync" else value
            try:
                values[name] = option.validate(value, env_name)
            except ConfigError as exc:
                raise SettingsError(str(exc)) from None
    for name, value in (overrides or {}).items():
        if value is not None and name not in FILE_ONLY_OPTIONS:
            try:
                values[name] = OPTIONS[name].validate(value, f"--{name.replace('_', '-')}")
            except ConfigError as exc:
                raise SettingsError(str(exc)) from None
    if not values["spool"]:
        raise SettingsError(f"no spool folder: set spool in the configuration file or {ENV_PREFIX}SPOOL")
    if values["url"] and not values["url"].startswith(("http://", "https://")):
        raise SettingsError(f"url: {values['url']!r} must start with http:// or https://")
    if values["retry_max_seconds"] < values["retry_initial_seconds"]:
        raise SettingsError("retry_max_seconds must not be below retry_initial_seconds")
    for name in INTEGER_OPTIONS:
        values[name] = int(values[name])
    sources = tuple(_local_sources(sources_raw, path))
    known = {f.name for f in fields(Settings)}
    return Settings(**{k: v for k, v in values.items() if k in known}, config_file=str(path), sources=sources)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise SettingsError(f"cannot read the configuration file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path} is not valid TOML: {exc}") from None


def _local_sources(raw: Any, path: str | os.PathLike) -> list[LocalSource]:
    if not isinstance(raw, list):
        raise SettingsError(f"{path}: sources must be an array of tables ([[sources]])")
    sources, names = [], set()
    for index, item in enumerate(raw):
        where = f"{path}: sources[{index}]"
        if not isinstance(item, dict):
            raise SettingsError(f"{where} must be a table")
        unknown = set(item) - {"name", "interval_seconds", "collect", "channels"}
        if unknown:
            raise SettingsError(f"{where}.{sorted(unknown)[0]}: unknown option")
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            raise SettingsError(f"{where}.name: is required")
        if name in names:
            raise SettingsError(f"{where}.name: {name!r} is used twice")
        names.add(name)
        try:
            interval = number(minimum=0.05, maximum=86_400)(item.get("interval_seconds", 60), "interval_seconds")
            collect = validate_source_config("agent", {"collect": item.get("collect")})["collect"]
        except ConfigError as exc:
            raise SettingsError(f"{where}.{exc}") from None
        channels = item.get("channels")
        if not isinstance(channels, list) or not channels:
            raise SettingsError(f'{where}.channels: list the channels, e.g. [{{channel = "inst/chan", field = "t"}}]')
        parsed = []
        for j, channel in enumerate(channels):
            at = f"{where}.channels[{j}]"
            if not isinstance(channel, dict) or set(channel) - {"channel", "field", "kind"}:
                raise SettingsError(f"{at}: must be a table with channel, field and optionally kind")
            ref = channel.get("channel")
            if isinstance(ref, int) and not isinstance(ref, bool):
                ref = str(ref)
            if not isinstance(ref, str) or not (ref.isdigit() or ref.count("/") == 1):
                raise SettingsError(f"{at}.channel: must be instrument-slug/channel-slug or a channel id")
            kind = channel.get("kind", "numeric")
            if kind not in ("numeric", "text"):
                raise SettingsError(f"{at}.kind: must be numeric or text")
            field_name = channel.get("field", ref.rsplit("/", 1)[-1])
            parsed.append(LocalChannel(ref, str(field_name), kind))
        sources.append(LocalSource(name, interval, collect, tuple(parsed)))
    return sources
