"""The typed environment readers behind settings.py, and the settings they produce at start-up."""

from __future__ import annotations

import os
import secrets
import string
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from daqbroker_site.env import (
    PREPARE_ON_REQUEST,
    RANDOM_PAGE_COST,
    database_settings,
    env_bool,
    env_cost,
    env_int,
    env_list,
    env_network_rules,
    env_path,
    env_paths,
    env_str,
    parse_network_rule,
)

REPO = Path(__file__).resolve().parents[2]

# --- env_str ---------------------------------------------------------------------------------------


def test_env_str_returns_the_value_stripped():
    assert env_str("NAME", "fallback", environ={"NAME": "  hello world  "}) == "hello world"


@pytest.mark.parametrize("environ", [{}, {"NAME": ""}, {"NAME": "   "}])
def test_env_str_unset_or_blank_gives_the_default(environ):
    assert env_str("NAME", "fallback", environ=environ) == "fallback"


def test_env_str_default_default_is_empty():
    assert env_str("NAME", environ={}) == ""


# --- env_bool --------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "Yes", "on", " on "])
def test_env_bool_true_spellings(raw):
    assert env_bool("FLAG", False, environ={"FLAG": raw}) is True


@pytest.mark.parametrize("raw", ["0", "false", "False", "NO", "off"])
def test_env_bool_false_spellings(raw):
    assert env_bool("FLAG", True, environ={"FLAG": raw}) is False


@pytest.mark.parametrize("default", [True, False])
def test_env_bool_unset_or_blank_gives_the_default(default):
    assert env_bool("FLAG", default, environ={}) is default
    assert env_bool("FLAG", default, environ={"FLAG": "  "}) is default


@pytest.mark.parametrize("raw", ["maybe", "tru", "2", "enabled"])
def test_env_bool_refuses_anything_else(raw):
    with pytest.raises(ImproperlyConfigured) as excinfo:
        env_bool("DAQBROKER_DEBUG", True, environ={"DAQBROKER_DEBUG": raw})
    assert str(excinfo.value) == (
        f"DAQBROKER_DEBUG={raw!r} is not a boolean; use one of true/false, yes/no, on/off, 1/0"
    )


# --- env_int ---------------------------------------------------------------------------------------


def test_env_int_parses_whole_numbers():
    assert env_int("N", 5, environ={"N": "42"}) == 42
    assert env_int("N", 5, environ={"N": " -7 "}) == -7


def test_env_int_unset_gives_the_default():
    assert env_int("N", 5, environ={}) == 5
    assert env_int("N", 5, environ={"N": ""}) == 5


def test_env_int_accepts_the_bounds_themselves():
    assert env_int("N", 5, minimum=1, maximum=10, environ={"N": "1"}) == 1
    assert env_int("N", 5, minimum=1, maximum=10, environ={"N": "10"}) == 10


@pytest.mark.parametrize("raw", ["12.5", "ten", "1e3", "0x10"])
def test_env_int_refuses_non_integers(raw):
    with pytest.raises(ImproperlyConfigured) as excinfo:
        env_int("DAQBROKER_EMAIL_PORT", 25, environ={"DAQBROKER_EMAIL_PORT": raw})
    assert str(excinfo.value) == f"DAQBROKER_EMAIL_PORT={raw!r} is not a whole number"


def test_env_int_refuses_below_minimum():
    with pytest.raises(ImproperlyConfigured) as excinfo:
        env_int("DAQBROKER_DISPATCH_INTERVAL", 5, minimum=1, environ={"DAQBROKER_DISPATCH_INTERVAL": "0"})
    assert str(excinfo.value) == "DAQBROKER_DISPATCH_INTERVAL=0 is below the minimum of 1"


def test_env_int_refuses_above_maximum():
    with pytest.raises(ImproperlyConfigured) as excinfo:
        env_int("DAQBROKER_EMAIL_PORT", 25, minimum=1, maximum=65535, environ={"DAQBROKER_EMAIL_PORT": "70000"})
    assert str(excinfo.value) == "DAQBROKER_EMAIL_PORT=70000 is above the maximum of 65535"


# --- env_list --------------------------------------------------------------------------------------


def test_env_list_splits_on_commas_and_drops_empty_items():
    environ = {"HOSTS": " example.org, ,www.example.org ,,api.example.org "}
    assert env_list("HOSTS", ["localhost"], environ=environ) == ["example.org", "www.example.org", "api.example.org"]


def test_env_list_unset_gives_a_copy_of_the_default():
    default = ["localhost"]
    result = env_list("HOSTS", default, environ={})
    assert result == ["localhost"]
    result.append("mutated")
    assert default == ["localhost"]


# --- env_path --------------------------------------------------------------------------------------


def test_env_path_resolves_the_value(tmp_path):
    assert env_path("DIR", Path("/nowhere"), environ={"DIR": f"{tmp_path}/a/../b"}) == (tmp_path / "b").resolve()


def test_env_path_unset_gives_the_resolved_default(tmp_path):
    default = tmp_path / "x" / ".." / "var"
    assert env_path("DIR", default, environ={}) == (tmp_path / "var").resolve()


# --- database_settings -----------------------------------------------------------------------------


def test_database_settings_default_is_sqlite_in_the_data_dir(tmp_path):
    db = database_settings(None, tmp_path)
    assert db["ENGINE"] == "django.db.backends.sqlite3"
    assert db["NAME"] == str(tmp_path / "daqbroker.sqlite3")
    assert db["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
    assert "PRAGMA journal_mode=WAL;" in db["OPTIONS"]["init_command"]
    assert "PRAGMA busy_timeout=30000;" in db["OPTIONS"]["init_command"]
    assert db["TEST"]["NAME"] == str(tmp_path / "test_daqbroker.sqlite3")


def test_database_settings_sqlite_url_keeps_wal_and_immediate(tmp_path):
    db = database_settings(f"sqlite:///{tmp_path}/elsewhere.db", Path("/unused"))
    assert db["ENGINE"] == "django.db.backends.sqlite3"
    assert db["NAME"] == str(tmp_path / "elsewhere.db")
    assert db["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
    assert "PRAGMA journal_mode=WAL;" in db["OPTIONS"]["init_command"]


def test_database_settings_postgres_url(tmp_path):
    db = database_settings("postgres://daq:secret@db.example:5433/daqbroker", tmp_path, conn_max_age=60)
    assert db["ENGINE"] == "django.db.backends.postgresql"
    assert (db["HOST"], db["PORT"], db["NAME"], db["USER"], db["PASSWORD"]) == (
        "db.example",
        5433,
        "daqbroker",
        "daq",
        "secret",
    )
    assert db["CONN_MAX_AGE"] == 60
    assert db["DISABLE_SERVER_SIDE_CURSORS"] is False
    assert db["OPTIONS"]["prepare_threshold"] == PREPARE_ON_REQUEST  # only what asks to be prepared is


def test_database_settings_postgres_without_prepared_statements_for_a_pooling_proxy(tmp_path):
    db = database_settings("postgres://daq@db.example/daqbroker", tmp_path, prepared=False)
    assert db["OPTIONS"]["prepare_threshold"] is None


def test_database_settings_postgres_sets_the_planners_random_page_cost_at_connection(tmp_path):
    db = database_settings("postgres://daq@db.example/daqbroker", tmp_path)
    assert db["OPTIONS"]["options"] == f"-c random_page_cost={RANDOM_PAGE_COST:g}"
    kept = database_settings("postgres://daq@db.example/daqbroker?options=-c%20work_mem%3D64MB", tmp_path)
    assert kept["OPTIONS"]["options"] == f"-c work_mem=64MB -c random_page_cost={RANDOM_PAGE_COST:g}"
    servers = database_settings("postgres://daq@db.example/daqbroker", tmp_path, random_page_cost=None)
    assert "options" not in servers["OPTIONS"]
    assert "options" not in database_settings("mysql://daq@db.example/daqbroker", tmp_path)["OPTIONS"]


def test_env_cost_is_a_positive_number_or_the_servers_own():
    assert env_cost("X", 1.1, environ={}) == 1.1
    assert env_cost("X", 1.1, environ={"X": "2"}) == 2.0
    assert env_cost("X", 1.1, environ={"X": "Server"}) is None
    for bad in ("0", "-1", "cheap", "1e9"):
        with pytest.raises(ImproperlyConfigured, match="X="):
            env_cost("X", 1.1, environ={"X": bad})


def test_database_settings_mysql_url_is_strict_utf8mb4_read_committed(tmp_path):
    db = database_settings("mysql://daq:secret@db.example/daqbroker", tmp_path)
    assert db["ENGINE"] == "django.db.backends.mysql"
    assert (db["HOST"], db["NAME"], db["USER"]) == ("db.example", "daqbroker", "daq")
    assert db["OPTIONS"]["charset"] == "utf8mb4"
    assert db["OPTIONS"]["isolation_level"] == "read committed"
    assert db["OPTIONS"]["init_command"] == "SET sql_mode='STRICT_TRANS_TABLES'"
    assert db["TEST"] == {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}
    assert db["CONN_MAX_AGE"] == 0


def test_database_settings_refuses_an_unsupported_engine(tmp_path):
    with pytest.raises(ImproperlyConfigured) as excinfo:
        database_settings("oracle://daq:secret@db.example/daqbroker", tmp_path)
    assert str(excinfo.value) == (
        "DATABASE_URL uses 'django.db.backends.oracle'; "
        "DAQBroker supports sqlite://, postgres:// and mysql:// (MariaDB)"
    )


def test_database_settings_refuses_an_unknown_scheme(tmp_path):
    with pytest.raises(ImproperlyConfigured) as excinfo:
        database_settings("nosuchdb://host/name", tmp_path)
    assert str(excinfo.value).startswith("DATABASE_URL is not a database URL DAQBroker understands: ")
    assert "nosuchdb" in str(excinfo.value)


# --- settings.py at start-up, in a fresh process ---------------------------------------------------


def _manage(args: list[str], tmp_path: Path, **overrides: str) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DAQBROKER_", "PYTEST", "DJANGO_")) and k not in {"DATABASE_URL", "REDIS_URL"}
    }
    env.update(DAQBROKER_DATA_DIR=str(tmp_path / "var"), **overrides)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_check_deploy_is_clean_with_debug_off(tmp_path):
    key = "".join(secrets.choice(string.ascii_letters + string.digits + "!@#%^&*(-_=+)") for _ in range(60))
    proc = _manage(
        ["check", "--deploy"],
        tmp_path,
        DAQBROKER_DEBUG="false",
        DAQBROKER_SECRET_KEY=key,
        DAQBROKER_ALLOWED_HOSTS="example.org",
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "System check identified no issues" in output
    assert "WARNINGS" not in output
    assert "security.W" not in output


def test_debug_off_without_a_secret_key_refuses_to_start(tmp_path):
    proc = _manage(["check"], tmp_path, DAQBROKER_DEBUG="false", DAQBROKER_ALLOWED_HOSTS="example.org")
    assert proc.returncode != 0
    assert "ImproperlyConfigured: DAQBROKER_SECRET_KEY must be set when DAQBROKER_DEBUG is false" in proc.stderr


def test_a_malformed_setting_refuses_to_start(tmp_path):
    proc = _manage(["check"], tmp_path, DAQBROKER_DEBUG="perhaps")
    assert proc.returncode != 0
    assert "DAQBROKER_DEBUG='perhaps' is not a boolean" in proc.stderr


def test_env_rate_reads_drf_rates_and_none():
    from daqbroker_site.env import env_rate

    assert env_rate("R", "600/minute", environ={}) == "600/minute"
    assert env_rate("R", "600/minute", environ={"R": "20/second"}) == "20/second"
    assert env_rate("R", "600/minute", environ={"R": "None"}) is None
    with pytest.raises(ImproperlyConfigured) as caught:
        env_rate("R", "600/minute", environ={"R": "lots"})
    assert str(caught.value) == "R='lots' is not a rate; use e.g. 600/minute, 20/second or none"


def test_the_parse_budget_is_read_from_the_environment_and_bounded(tmp_path):
    shown = ["shell", "-c", "from django.conf import settings; print(settings.DAQBROKER_PARSE_BUDGET_SECONDS)"]
    assert _manage(shown, tmp_path).stdout.split()[-1] == "30"
    assert _manage(shown, tmp_path, DAQBROKER_PARSE_BUDGET_SECONDS="5").stdout.split()[-1] == "5"
    refused = _manage(["check"], tmp_path, DAQBROKER_PARSE_BUDGET_SECONDS="0")
    assert refused.returncode != 0
    assert "DAQBROKER_PARSE_BUDGET_SECONDS=0 is below the minimum of 1" in refused.stderr


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("DAQBROKER_DB_LOCK_TIMEOUT", "0", "DAQBROKER_DB_LOCK_TIMEOUT=0 is below the minimum of 1"),
        ("DAQBROKER_DB_LOCK_TIMEOUT", "ten", "DAQBROKER_DB_LOCK_TIMEOUT='ten' is not a whole number"),
        (
            "DAQBROKER_DB_IDLE_TRANSACTION_TIMEOUT",
            "0",
            "DAQBROKER_DB_IDLE_TRANSACTION_TIMEOUT=0 is below the minimum of 1",
        ),
    ],
)
def test_collection_transaction_timeouts_refuse_bad_values(tmp_path, name, raw, message):
    proc = _manage(["check"], tmp_path, **{name: raw})
    assert proc.returncode != 0
    assert message in proc.stderr


# --- source targets: env_paths, env_network_rules ---------------------------------------------------


def test_env_paths_reads_absolute_folders_resolved(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    value = f"{tmp_path}/link, {tmp_path}/real/../real,,"
    assert env_paths("ROOTS", [], environ={"ROOTS": value}) == [tmp_path / "real", tmp_path / "real"]


def test_env_paths_unset_gives_the_default_resolved(tmp_path):
    assert env_paths("ROOTS", [tmp_path / "a" / ".." / "b"], environ={}) == [tmp_path / "b"]


def test_env_paths_refuses_a_relative_path():
    with pytest.raises(ImproperlyConfigured, match=r"DAQBROKER_FILE_ROOTS: 'data/files' is not an absolute path"):
        env_paths("DAQBROKER_FILE_ROOTS", [], environ={"DAQBROKER_FILE_ROOTS": "/srv/ok,data/files"})


def test_env_network_rules_reads_addresses_networks_hosts_and_ports():
    raw = "10.0.0.0/8, 192.168.1.20:502, [fd00::/8]:4001, ::1, PLC.lab.example:502, 127.0.0.1"
    rules = env_network_rules("ALLOW", [], environ={"ALLOW": raw})
    assert [(str(r.network) if r.network else r.host, r.port) for r in rules] == [
        ("10.0.0.0/8", None),
        ("192.168.1.20/32", 502),
        ("fd00::/8", 4001),
        ("::1/128", None),
        ("plc.lab.example", 502),
        ("127.0.0.1/32", None),
    ]


def test_network_rules_match_address_port_and_name():
    import ipaddress

    lan = parse_network_rule("10.0.0.0/8:502")
    assert lan.matches("plc", ipaddress.ip_address("10.1.2.3"), 502)
    assert not lan.matches("plc", ipaddress.ip_address("10.1.2.3"), 503)
    assert not lan.matches("plc", ipaddress.ip_address("11.1.2.3"), 502)
    named = parse_network_rule("plc.lab.example")
    assert named.matches("PLC.lab.example.", ipaddress.ip_address("192.0.2.1"), 1)
    assert not named.matches("other.example", ipaddress.ip_address("192.0.2.1"), 1)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("10.0.0.0/33", "neither an address"),
        ("host:99999", "'99999' is not a port"),
        ("host:port", "'port' is not a port"),
        ("[::1", "closing ]"),
        ("[::1]x", "only :port"),
        ("bad host!", "neither an address"),
    ],
)
def test_env_network_rules_refuses_a_bad_entry(raw, why):
    with pytest.raises(ImproperlyConfigured, match="DAQBROKER_NETWORK_ALLOW: ") as excinfo:
        env_network_rules("DAQBROKER_NETWORK_ALLOW", [], environ={"DAQBROKER_NETWORK_ALLOW": f"10.0.0.1,{raw}"})
    assert why in str(excinfo.value)


def test_the_default_rules_open_the_data_dirs_files_and_demo_folders_and_no_network(tmp_path):
    script = (
        "from django.conf import settings; "
        "print([str(p) for p in settings.DAQBROKER_FILE_ROOTS], settings.DAQBROKER_NETWORK_ALLOW, "
        "settings.DAQBROKER_SERIAL_DEVICES)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAQBROKER_", "PYTEST"))}
    env.update(DAQBROKER_DATA_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="daqbroker_site.settings")
    result = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {script}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{[str(tmp_path / 'files'), str(tmp_path / 'demo')]} [] []"


def test_a_relative_serial_device_pattern_refuses_to_start(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAQBROKER_", "PYTEST"))}
    env.update(
        DAQBROKER_DATA_DIR=str(tmp_path),
        DJANGO_SETTINGS_MODULE="daqbroker_site.settings",
        DAQBROKER_SERIAL_DEVICES="ttyUSB*",
    )
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "DAQBROKER_SERIAL_DEVICES: 'ttyUSB*' is not an absolute device path" in result.stderr


def test_env_choice_reads_one_of_its_choices_in_any_case():
    from daqbroker_site.env import env_choice

    levels = ["DEBUG", "INFO", "WARNING"]
    assert env_choice("L", "INFO", levels, environ={}) == "INFO"
    assert env_choice("L", "INFO", levels, environ={"L": "debug"}) == "DEBUG"
    with pytest.raises(ImproperlyConfigured) as caught:
        env_choice("L", "INFO", levels, environ={"L": "loud"})
    assert str(caught.value) == "L='loud' is not one of DEBUG, INFO, WARNING"


def test_the_log_level_quiets_celery_chatter_but_debug_shows_it(tmp_path):
    shown = [
        "shell",
        "-c",
        "from django.conf import settings; print(settings.LOGGING['root']['level'], "
        "settings.LOGGING['loggers']['celery.app.trace']['level'])",
    ]
    assert _manage(shown, tmp_path).stdout.split()[-2:] == ["INFO", "WARNING"]
    assert _manage(shown, tmp_path, DAQBROKER_LOG_LEVEL="debug").stdout.split()[-2:] == ["DEBUG", "DEBUG"]
    assert _manage(shown, tmp_path, DAQBROKER_LOG_LEVEL="error").stdout.split()[-2:] == ["ERROR", "ERROR"]
    refused = _manage(["check"], tmp_path, DAQBROKER_LOG_LEVEL="loud")
    assert refused.returncode != 0
    assert "DAQBROKER_LOG_LEVEL='loud' is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL" in refused.stderr
