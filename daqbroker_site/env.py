"""Typed readers for the environment variables that configure DAQBroker.

Every helper fails loudly (``ImproperlyConfigured`` naming the variable and the bad value) instead of
silently falling back to a default: a typo in a production setting must stop the process at start-up.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _raw(name: str, environ: Mapping[str, str] | None) -> str | None:
    value = (os.environ if environ is None else environ).get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def env_str(name: str, default: str = "", *, environ: Mapping[str, str] | None = None) -> str:
    value = _raw(name, environ)
    return default if value is None else value


def env_bool(name: str, default: bool, *, environ: Mapping[str, str] | None = None) -> bool:
    value = _raw(name, environ)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean; use one of true/false, yes/no, on/off, 1/0")


def env_int(
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    value = _raw(name, environ)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a whole number") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} is below the minimum of {minimum}")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name}={number} is above the maximum of {maximum}")
    return number


def env_cost(name: str, default: float | None, *, environ: Mapping[str, str] | None = None) -> float | None:
    """A positive planner cost, or ``None`` for ``server`` (leave the database server's own setting)."""
    value = _raw(name, environ)
    if value is None:
        return default
    if value.lower() == "server":
        return None
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a number (or 'server')") from None
    if not 0 < number <= 1000:
        raise ImproperlyConfigured(f"{name}={value!r} is not a cost between 0 (excluded) and 1000")
    return number


def env_list(name: str, default: list[str], *, environ: Mapping[str, str] | None = None) -> list[str]:
    """A comma-separated list; empty items are dropped."""
    value = _raw(name, environ)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_path(name: str, default: Path, *, environ: Mapping[str, str] | None = None) -> Path:
    value = _raw(name, environ)
    return (Path(value).expanduser() if value is not None else default).resolve()


SUPPORTED_DB_ENGINES = {
    "django.db.backends.sqlite3": "sqlite",
    "django.db.backends.postgresql": "postgresql",
    "django.db.backends.mysql": "mysql",
}


# psycopg prepares a statement a cursor asks it to prepare only when the connection has a threshold; none of
# Django's cursors ask (client-side binding), so only the ingest path's few hot statements are prepared.
PREPARE_ON_REQUEST = 2**31 - 1
# PostgreSQL's planner price of a random page read for DAQBroker's connections (the server's default is 4).
RANDOM_PAGE_COST = 1.1


def database_settings(
    url: str | None,
    data_dir: Path,
    *,
    conn_max_age: int = 0,
    prepared: bool = True,
    random_page_cost: float | None = RANDOM_PAGE_COST,
) -> dict:
    """DATABASES['default'] for a DATABASE_URL, or the embedded SQLite file under the data dir.

    SQLite runs in WAL mode with IMMEDIATE transactions so that the web process, the worker and the
    beat scheduler can share the file without "database is locked" upgrade deadlocks. On PostgreSQL,
    ``prepared`` lets the ingest path prepare its hot statements once per connection
    (``collection.storage.prepared_cursor``); off behind a transaction-pooling proxy that cannot keep them.
    ``random_page_cost`` is the planner's price of a random page read set on each PostgreSQL connection
    (None: the server's own): the registry's tables are read from memory, where the server's default of 4,
    made for spinning disks, prices a few hundred index probes above a scan of 100,000 channels
    (docs/performance.md#planner-costs).
    """
    if url is None:
        return sqlite_settings(data_dir / "daqbroker.sqlite3")
    try:
        config = dj_database_url.parse(url, conn_max_age=conn_max_age)
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL is not a database URL DAQBroker understands: {exc}") from None
    engine = config.get("ENGINE")
    if engine not in SUPPORTED_DB_ENGINES:
        raise ImproperlyConfigured(
            f"DATABASE_URL uses {engine!r}; DAQBroker supports sqlite://, postgres:// and mysql:// (MariaDB)"
        )
    if engine == "django.db.backends.sqlite3":
        return sqlite_settings(Path(config["NAME"]))
    if engine == "django.db.backends.mysql":
        config.setdefault("OPTIONS", {}).update(
            {
                "charset": "utf8mb4",
                "isolation_level": "read committed",
                "init_command": "SET sql_mode='STRICT_TRANS_TABLES'",
            }
        )
        config.setdefault("TEST", {}).update({"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"})
    if engine == "django.db.backends.postgresql":
        # Server-side cursors break behind transaction-pooling proxies; exports opt in explicitly.
        config.setdefault("DISABLE_SERVER_SIDE_CURSORS", False)
        options = config.setdefault("OPTIONS", {})
        options["prepare_threshold"] = PREPARE_ON_REQUEST if prepared else None
        if random_page_cost is not None:
            # libpq's startup options (no statement of their own); a URL's own ?options= are kept before it.
            options["options"] = f"{options.get('options', '')} -c random_page_cost={random_page_cost:g}".strip()
    return dict(config)  # a plain dict (dj_database_url types it as its DBConfig TypedDict)


def sqlite_settings(path: Path) -> dict:
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        "OPTIONS": {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;",
        },
        # Tests that start real worker processes need a file they can share, not ":memory:".
        "TEST": {"NAME": str(path.with_name(f"test_{path.name}"))},
    }


def env_choice(name: str, default: str, choices: Iterable[str], *, environ: Mapping[str, str] | None = None) -> str:
    """One of ``choices`` (matched without regard to case; returned as spelt in ``choices``)."""
    value = _raw(name, environ)
    if value is None:
        return default
    by_folded = {choice.casefold(): choice for choice in choices}
    if value.casefold() not in by_folded:
        raise ImproperlyConfigured(f"{name}={value!r} is not one of {', '.join(by_folded.values())}")
    return by_folded[value.casefold()]


_RATE = re.compile(r"^\d+/(s|sec|second|m|min|minute|h|hour|d|day)$")


def env_rate(name: str, default: str | None, *, environ: Mapping[str, str] | None = None) -> str | None:
    """A DRF throttle rate such as ``600/minute``; ``none`` turns the throttle off (None)."""
    value = _raw(name, environ)
    if value is None:
        return default
    if value.lower() == "none":
        return None
    if not _RATE.match(value):
        raise ImproperlyConfigured(f"{name}={value!r} is not a rate; use e.g. 600/minute, 20/second or none")
    return value


def env_paths(name: str, default: list[Path], *, environ: Mapping[str, str] | None = None) -> list[Path]:
    """A comma-separated list of absolute folders, each resolved (symlinks and ``..`` followed)."""
    value = _raw(name, environ)
    if value is None:
        return [Path(p).resolve() for p in default]
    paths = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        path = Path(item).expanduser()
        if not path.is_absolute():
            raise ImproperlyConfigured(f"{name}: {item!r} is not an absolute path")
        paths.append(path.resolve())
    return paths


@dataclass(frozen=True)
class NetworkRule:
    """One entry of ``DAQBROKER_NETWORK_ALLOW``: an address or network (CIDR), or a host name, and
    optionally one port. ``text`` is the entry as written, for messages."""

    text: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    host: str | None = None
    port: int | None = None

    def matches(self, name: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return address.version == self.network.version and address in self.network
        return self.host == name.lower().rstrip(".")


_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$"
)


def parse_network_rule(item: str) -> NetworkRule:
    """``10.0.0.0/8``, ``192.168.1.20:502``, ``[fd00::/8]:4001``, ``::1``, ``plc.lab.example:502``."""
    text = item.strip()
    where, port = text, None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError("an IPv6 entry in brackets needs its closing ]")
        where, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError("after [address] only :port may follow")
            port = rest[1:]
    elif text.count(":") == 1:
        where, port = text.split(":")
    number = None
    if port is not None:
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{port!r} is not a port (1-65535)")
        number = int(port)
    try:
        network = ipaddress.ip_network(where, strict=False)
    except ValueError:
        network = None
    if network is not None:
        return NetworkRule(text, network=network, port=number)
    host = where.lower().rstrip(".")
    if "/" in host or not _HOST_NAME.match(host):
        raise ValueError("is neither an address, a network (CIDR) nor a host name")
    return NetworkRule(text, host=host, port=number)


def env_network_rules(name: str, default: list[str], *, environ: Mapping[str, str] | None = None) -> list[NetworkRule]:
    """A comma-separated list of network rules (see ``parse_network_rule``); a bad entry stops start-up."""
    rules = []
    for item in env_list(name, default, environ=environ):
        try:
            rules.append(parse_network_rule(item))
        except ValueError as exc:
            raise ImproperlyConfigured(f"{name}: {item!r} {exc}") from None
    return rules
