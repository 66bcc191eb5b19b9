"""Typed readers for the environment variables that configure DAQBroker.

Every helper fails loudly (``ImproperlyConfigured`` naming the variable and the bad value) instead of
silently falling back to a default: a typo in a production setting must stop the process at start-up.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
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


def database_settings(url: str | None, data_dir: Path, *, conn_max_age: int = 0) -> dict:
    """DATABASES['default'] for a DATABASE_URL, or the embedded SQLite file under the data dir.

    SQLite runs in WAL mode with IMMEDIATE transactions so that the web process, the worker and the
    beat scheduler can share the file without "database is locked" upgrade deadlocks.
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
    return config


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
