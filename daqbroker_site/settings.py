"""DAQBroker settings.

Configured only through environment variables (every variable: docs/configuration.md); every reader in
``daqbroker_site.env`` refuses a malformed value at start-up.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from csp.constants import NONE as CSP_NONE
from csp.constants import SELF as CSP_SELF
from csp.constants import UNSAFE_INLINE as CSP_UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured

from daqbroker_site.env import (
    RANDOM_PAGE_COST,
    database_settings,
    env_bool,
    env_choice,
    env_cost,
    env_int,
    env_list,
    env_network_rules,
    env_path,
    env_paths,
    env_rate,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DAQBROKER_DEBUG", True)
DATA_DIR = env_path("DAQBROKER_DATA_DIR", BASE_DIR / "var")

_INSECURE_DEV_KEY = "django-insecure-daqbroker-development-only-key-do-not-use-in-production"
SECRET_KEY = env_str("DAQBROKER_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DAQBROKER_SECRET_KEY must be set when DAQBROKER_DEBUG is false")
    SECRET_KEY = _INSECURE_DEV_KEY

ALLOWED_HOSTS = env_list("DAQBROKER_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("DAQBROKER_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "guardian",
    "drf_spectacular_sidecar",
    "axes",
    "instruments",
    "accounts",
    "collection",
    "pages",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # A database that cannot be reached answers 503 + Retry-After (JSON for the API), not a bare 500.
    "daqbroker_site.middleware.DatabaseUnavailableMiddleware",
    # Before anything reads a query parameter: NUL in the path or the query string answers 400.
    "daqbroker_site.middleware.RefuseNulCharactersMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "accounts.audit.AuditContextMiddleware",
    # Last, as django-axes asks: turns a refused login into the lockout response.
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    # First: refuses a locked-out username+address before any password is checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]

ROOT_URLCONF = "daqbroker_site.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "pages.context_processors.navigation",
            ],
        },
    },
]

WSGI_APPLICATION = "daqbroker_site.wsgi.application"

DATABASES = {
    "default": database_settings(
        env_str("DATABASE_URL") or None,
        DATA_DIR,
        conn_max_age=env_int("DAQBROKER_DB_CONN_MAX_AGE", 0, minimum=0),
        prepared=env_bool("DAQBROKER_DB_PREPARED_STATEMENTS", True),
        random_page_cost=env_cost("DAQBROKER_DB_RANDOM_PAGE_COST", RANDOM_PAGE_COST),
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("DAQBROKER_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = DEBUG
# With the finders, look each file up when asked rather than index every static file whenever the middleware
# is built. WhiteNoise's own default follows settings.DEBUG at that moment, which the test runner turns off:
# every test client then re-indexed all the files, a third of a permission-matrix case's time.
WHITENOISE_AUTOREFRESH = DEBUG
# The pages' own CSS and JavaScript, and the browser libraries committed under static/vendor/ (no CDN, no
# build step, nothing to fetch: docs/dependencies.md), found by Django's default finders.
STATICFILES_DIRS = [BASE_DIR / "static"]

# The admin keeps its own login page; collaborators' pages send anonymous visitors to /login/ (their
# views set login_url), and land on the instrument list after logging in.
LOGIN_URL = "login"  # the collaborators' login page; the admin keeps its own
LOGIN_REDIRECT_URL = "instruments:home"
LOGOUT_REDIRECT_URL = "login"

# --- Security (all on when debug is off; `manage.py check --deploy` is clean then) -----------------
SECURE_SSL_REDIRECT = env_bool("DAQBROKER_SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SESSION_COOKIE_HTTPONLY = True
SECURE_HSTS_SECONDS = env_int("DAQBROKER_HSTS_SECONDS", 0 if DEBUG else 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = env_bool("DAQBROKER_HSTS_PRELOAD", not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# Content-Security-Policy (django-csp): scripts only from this site's static files, never inline (pages
# start from json_script data and data-* attributes). Styles allow inline because plotly writes <style>
# elements and style attributes as it draws; plots exported as images are data: and blob: URLs.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [CSP_SELF],
        "script-src": [CSP_SELF],
        "style-src": [CSP_SELF, CSP_UNSAFE_INLINE],
        "img-src": [CSP_SELF, "data:", "blob:"],
        "font-src": [CSP_SELF, "data:"],
        "connect-src": [CSP_SELF],
        "object-src": [CSP_NONE],
        "base-uri": [CSP_SELF],
        "form-action": [CSP_SELF],
        "frame-ancestors": [CSP_NONE],
    }
}
X_FRAME_OPTIONS = "DENY"
# Behind one reverse proxy that sets X-Forwarded-Proto and appends the client to X-Forwarded-For.
DAQBROKER_BEHIND_PROXY = env_bool("DAQBROKER_BEHIND_PROXY", False)
if DAQBROKER_BEHIND_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Accounts: login lockout, guardian, API ------------------------------------------------------
# django-axes: after DAQBROKER_LOGIN_FAILURE_LIMIT failed logins for one username from one address,
# that pair is refused for DAQBROKER_LOGIN_COOLOFF_MINUTES (each further try restarts the wait).
AXES_FAILURE_LIMIT = env_int("DAQBROKER_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("DAQBROKER_LOGIN_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "accounts.audit.client_address"
AXES_HTTP_RESPONSE_CODE = 429
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"

# Object permissions are never given to anonymous visitors: no guardian "AnonymousUser" row.
ANONYMOUS_USER_NAME = None

REST_FRAMEWORK: dict[str, Any] = {
    # Bearer first: its WWW-Authenticate header makes DRF answer 401 (not 403) to unauthenticated calls.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "accounts.api.access.TokenScopePermission",
        "accounts.api.access.ObjectLevelPermission",
    ],
    "DEFAULT_FILTER_BACKENDS": [
        "accounts.api.access.VisibilityFilter",
        "django_filters.rest_framework.DjangoFilterBackend",
    ],
    "DEFAULT_PAGINATION_CLASS": "accounts.api.access.Pagination",
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        *(["rest_framework.renderers.BrowsableAPIRenderer"] if DEBUG else []),
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "DAQBroker API",
    "DESCRIPTION": "Instruments, readings and access. Authenticate with 'Authorization: Bearer dbk_...'.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI from the drf-spectacular-sidecar package: served by the app, no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- Email ---------------------------------------------------------------------------------------
EMAIL_BACKEND = env_str(
    "DAQBROKER_EMAIL_BACKEND",
    "django.core.mail.backends.console.EmailBackend" if DEBUG else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = env_str("DAQBROKER_EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("DAQBROKER_EMAIL_PORT", 25, minimum=1, maximum=65535)
EMAIL_HOST_USER = env_str("DAQBROKER_EMAIL_USER", "")
EMAIL_HOST_PASSWORD = env_str("DAQBROKER_EMAIL_PASSWORD", "")
EMAIL_USE_TLS = env_bool("DAQBROKER_EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("DAQBROKER_EMAIL_USE_SSL", False)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("DAQBROKER_EMAIL_USE_TLS and DAQBROKER_EMAIL_USE_SSL cannot both be true")
DEFAULT_FROM_EMAIL = env_str("DAQBROKER_EMAIL_FROM", "daqbroker@localhost")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- Celery --------------------------------------------------------------------------------------
# With REDIS_URL (or CELERY_BROKER_URL) set, Redis; otherwise kombu's filesystem transport under the
# data dir: a real broker that needs no server and works across processes on one host.
REDIS_URL = env_str("REDIS_URL", "")
BROKER_DIR = DATA_DIR / "broker"
# (The filesystem transport ignores the host; naming one spares a "No hostname was supplied" warning
# at each connection.)
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL or "filesystem://localhost/")
if CELERY_BROKER_URL.startswith("filesystem://"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
# Several deployments (or test runs) can share one Redis by giving each its own queue name.
CELERY_TASK_DEFAULT_QUEUE = env_str("DAQBROKER_CELERY_QUEUE", "daqbroker")
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = env_int("DAQBROKER_TASK_TIME_LIMIT", 600, minimum=10)
CELERY_TASK_SOFT_TIME_LIMIT = CELERY_TASK_TIME_LIMIT - 5
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
DISPATCH_INTERVAL_SECONDS = env_int("DAQBROKER_DISPATCH_INTERVAL", 5, minimum=1)
# At most this many due sources are claimed by one dispatcher pass (the most overdue first); a full batch
# queues the next pass at once (docs/performance.md#scheduling).
DISPATCH_BATCH = env_int("DAQBROKER_DISPATCH_BATCH", 250, minimum=1)
# Pages, API lists and badges count what they hold up to this many rows, then say "more" (accounts.paging).
DAQBROKER_COUNT_LIMIT = env_int("DAQBROKER_COUNT_LIMIT", 1000, minimum=10, maximum=1_000_000)
CELERY_BEAT_SCHEDULE = {
    "dispatch-due-sources": {
        "task": "collection.tasks.dispatch_due_sources",
        "schedule": float(DISPATCH_INTERVAL_SECONDS),
        # A dispatch that waited longer than its period is superseded by the next one.
        "options": {"expires": max(1, DISPATCH_INTERVAL_SECONDS - 1)},
    },
    "prune-run-history": {
        "task": "collection.tasks.prune_run_history",
        "schedule": 3600.0,
        "options": {"expires": 1800},
    },
    # Each ingest wakes a rollup refresh; this sweep catches spans whose wake-up was lost.
    "refresh-rollups": {
        "task": "collection.tasks.refresh_rollups_task",
        "schedule": 60.0,
        "options": {"expires": 50},
    },
    # Instruments whose latest reading ingest's update after commit missed (a process killed in between).
    "catch-up-freshness": {
        "task": "collection.tasks.catch_up_freshness",
        "schedule": 600.0,
        "options": {"expires": 300},
    },
    # SQLite's query planner statistics as the tables grow (what autovacuum's analyse does on PostgreSQL).
    "refresh-planner-statistics": {
        "task": "collection.tasks.refresh_planner_statistics_task",
        "schedule": 3600.0,
        "options": {"expires": 1800},
    },
    # Raw readings past each instrument's raw_retention_days (tiers are kept).
    "enforce-retention": {
        "task": "collection.tasks.enforce_retention_task",
        "schedule": 3600.0,
        "options": {"expires": 1800},
    },
}

# --- Collection, validation and alarms -----------------------------------------------------------
# A collection run holds its source for at most this long (the collection task is stopped before it
# ends); a worker killed mid-run frees its source after this long.
DAQBROKER_COLLECT_LEASE_SECONDS = env_int("DAQBROKER_COLLECT_LEASE_SECONDS", 300, minimum=5)
# How often the stream collector (manage.py run_stream_collectors) looks for added, changed or removed sources.
DAQBROKER_STREAM_RELOAD_SECONDS = env_int("DAQBROKER_STREAM_RELOAD_SECONDS", 10, minimum=1)
# Seconds one collection run may spend parsing lines one by one (regular expressions above all; each line's
# match is also limited, see daqbroker_agent.patterns). Lines left when it is spent are quarantined with
# that reason, so one slow source cannot hold a worker that dispatch and alarm tasks are waiting for.
DAQBROKER_PARSE_BUDGET_SECONDS = env_int("DAQBROKER_PARSE_BUDGET_SECONDS", 30, minimum=1, maximum=3600)
# Collection transactions (claims, leases, a run's commit) wait at most this many seconds for a row lock
# another worker holds, and the database ends one left idle longer than the second figure (a frozen
# worker's transaction, whose locks then go with it). PostgreSQL and MariaDB; see docs/operations.md.
DAQBROKER_DB_LOCK_TIMEOUT = env_int("DAQBROKER_DB_LOCK_TIMEOUT", 10, minimum=1, maximum=3600)
DAQBROKER_DB_IDLE_TRANSACTION_TIMEOUT = env_int("DAQBROKER_DB_IDLE_TRANSACTION_TIMEOUT", 60, minimum=1, maximum=86400)
# Raw copies of the files read by file sources configured with "archive": true.
DAQBROKER_ARCHIVE_DIR = env_path("DAQBROKER_ARCHIVE_DIR", DATA_DIR / "archive")
# The largest raw file an agent may ship into the archive (docs/raw-files.md); sent in chunks of 1 MiB.
DAQBROKER_RAW_FILE_MAX_BYTES = env_int("DAQBROKER_RAW_FILE_MAX_BYTES", 1024**3, minimum=1)
# Raw files (agents' and the server's own copies) received more than this many days ago are deleted by the
# daily clean-up of the archive, which also removes contents no file names any more; 0 keeps them all.
DAQBROKER_RAW_FILE_DAYS = env_int("DAQBROKER_RAW_FILE_DAYS", 0, minimum=0)
# --- Source targets: who may point a source where (docs/security.md, "Who may point a source where") ---
# Folders server file sources may read (resolved; the data dir, database, archive and program folder stay
# unreadable even under a root). Default: the data dir's files/ folder and the demo's folder.
DAQBROKER_FILE_ROOTS = env_paths("DAQBROKER_FILE_ROOTS", [DATA_DIR / "files", DATA_DIR / "demo"])
# Hosts, addresses and networks (CIDR), each optionally with :port, that TCP sources, socket:// and
# rfc2217:// serial URLs and alarm webhooks may reach. Default: none (administrators may still set
# out-of-rule sources; webhooks need an entry).
DAQBROKER_NETWORK_ALLOW = env_network_rules("DAQBROKER_NETWORK_ALLOW", [])
# Serial devices (glob patterns such as /dev/ttyUSB*) that non-administrators may name. Default: none.
DAQBROKER_SERIAL_DEVICES = env_list("DAQBROKER_SERIAL_DEVICES", [])
for _pattern in DAQBROKER_SERIAL_DEVICES:
    if not _pattern.startswith("/"):
        raise ImproperlyConfigured(f"DAQBROKER_SERIAL_DEVICES: {_pattern!r} is not an absolute device path or pattern")
# How often stale channels are looked for (and any alarm evaluation missed after an ingest is caught up).
DAQBROKER_ALARM_CHECK_SECONDS = env_int("DAQBROKER_ALARM_CHECK_SECONDS", 30, minimum=1)
# Webhook deliveries: attempts in all, the first retry's delay in seconds (doubling, with jitter), and
# the timeout of one request.
DAQBROKER_WEBHOOK_ATTEMPTS = env_int("DAQBROKER_WEBHOOK_ATTEMPTS", 6, minimum=1, maximum=50)
DAQBROKER_WEBHOOK_RETRY_SECONDS = env_int("DAQBROKER_WEBHOOK_RETRY_SECONDS", 30, minimum=0)
DAQBROKER_WEBHOOK_TIMEOUT = env_int("DAQBROKER_WEBHOOK_TIMEOUT", 10, minimum=1)
# This server's public address, for links in alarm emails (e.g. https://daq.example.org).
DAQBROKER_SITE_URL = env_str("DAQBROKER_SITE_URL", "").rstrip("/")
# "Validate now" in the admin re-checks this many days of readings.
DAQBROKER_REVALIDATE_DAYS = env_int("DAQBROKER_REVALIDATE_DAYS", 30, minimum=1)
CELERY_BEAT_SCHEDULE.update(
    {
        "check-alarms": {
            "task": "collection.alarms.tasks.check_alarms",
            "schedule": float(DAQBROKER_ALARM_CHECK_SECONDS),
            "options": {"expires": max(1, DAQBROKER_ALARM_CHECK_SECONDS - 1)},
        },
        # After-ingest work, kept in the database by every ingest: each ingest wakes a worker for it (at most
        # about once a second per process); this sweep catches what a lost wake-up or a broker outage left.
        "replay-follow-ups": {
            "task": "collection.alarms.tasks.replay_follow_ups_task",
            "schedule": 60.0,
            "options": {"expires": 50},
        },
        "sweep-notifications": {
            "task": "collection.alarms.tasks.sweep_notifications",
            "schedule": 300.0,
            "options": {"expires": 240},
        },
    }
)

# --- Ingest --------------------------------------------------------------------------------------
# Readings stamped further than this in the future are rejected (clock errors, unit mix-ups).
DAQBROKER_MAX_FUTURE_SECONDS = env_int("DAQBROKER_MAX_FUTURE_SECONDS", 86400, minimum=0)
DAQBROKER_INGEST_MAX_BYTES = env_int("DAQBROKER_INGEST_MAX_BYTES", 64 * 1024 * 1024, minimum=1024)
DAQBROKER_INGEST_MAX_READINGS = env_int("DAQBROKER_INGEST_MAX_READINGS", 100_000, minimum=1)
# Readings one correction may delete or replace (docs/reading-data.md): a larger range is refused with its size.
DAQBROKER_CORRECTION_MAX_READINGS = env_int("DAQBROKER_CORRECTION_MAX_READINGS", 1_000_000, minimum=1)
# Compressed storage (docs/storage.md): readings in hourly windows that closed more than this many seconds
# ago (an hour by default) are compacted into blocks, and their fine rollup tiers packed, by a periodic
# task. 0 leaves every reading in the narrow tables. At least 600 s when on: ingest of readings older than
# that takes the block-aware path.
DAQBROKER_COMPACT_AFTER = env_int("DAQBROKER_COMPACT_AFTER", 3600, minimum=0)
if 0 < DAQBROKER_COMPACT_AFTER < 600:
    raise ImproperlyConfigured(
        f"DAQBROKER_COMPACT_AFTER={DAQBROKER_COMPACT_AFTER} is below the minimum of 600 (or 0: off)"
    )
if DAQBROKER_COMPACT_AFTER:
    CELERY_BEAT_SCHEDULE["compact-blocks"] = {
        "task": "collection.tasks.compact_blocks_task",
        "schedule": 300.0,
        "options": {"expires": 240},
    }
# Every other route keeps Django's own limits (DATA_UPLOAD_MAX_MEMORY_SIZE 2.5 MB, 1,000 form fields):
# only the ingest endpoint reads a larger body, itself, up to DAQBROKER_INGEST_MAX_BYTES (docs/security.md).
# A CSV body's header line: at most this many bytes and columns, checked before the CSV is parsed.
DAQBROKER_INGEST_CSV_MAX_HEADER_BYTES = env_int("DAQBROKER_INGEST_CSV_MAX_HEADER_BYTES", 1024, minimum=16)
DAQBROKER_INGEST_CSV_MAX_COLUMNS = env_int("DAQBROKER_INGEST_CSV_MAX_COLUMNS", 16, minimum=3)
# Quarantine of what API and agent senders send: rejected readings kept one by one per request and per
# sender per hour; beyond, and for channels the sender may not write, one record counts the rest.
DAQBROKER_QUARANTINE_PER_REQUEST = env_int("DAQBROKER_QUARANTINE_PER_REQUEST", 1000, minimum=0)
DAQBROKER_QUARANTINE_PER_SENDER_HOUR = env_int("DAQBROKER_QUARANTINE_PER_SENDER_HOUR", 10_000, minimum=0)
# Quarantine records older than this many days are deleted (hourly, in bounded batches); 0 keeps them all.
DAQBROKER_QUARANTINE_DAYS = env_int("DAQBROKER_QUARANTINE_DAYS", 90, minimum=0)
# Records one replay request handles at once; a larger selection is replayed by a task in batches this size.
DAQBROKER_QUARANTINE_REPLAY_BATCH = env_int("DAQBROKER_QUARANTINE_REPLAY_BATCH", 1000, minimum=1, maximum=100_000)
# The archive's clean-up: raw files past DAQBROKER_RAW_FILE_DAYS, contents no file names, abandoned uploads.
CELERY_BEAT_SCHEDULE["clean-raw-file-archive"] = {
    "task": "collection.tasks.clean_raw_file_archive_task",
    "schedule": 86400.0,
    "options": {"expires": 43200},
}
CELERY_BEAT_SCHEDULE["expire-quarantine"] = {
    "task": "collection.tasks.expire_quarantine_task",
    "schedule": 3600.0,
    "options": {"expires": 1800},
}

# --- Bounded work per request (docs/security.md) -------------------------------------------------
# A response that makes no progress for this long (the client reads nothing) is dropped, freeing the
# worker thread: the socket's send timeout under gunicorn, with writes of at most 64 KiB.
DAQBROKER_SEND_TIMEOUT_SECONDS = env_int("DAQBROKER_SEND_TIMEOUT_SECONDS", 30, minimum=1)
# Exports and percentile statistics at once per user (or agent token): one more answers 429.
DAQBROKER_HEAVY_REQUESTS_PER_USER = env_int("DAQBROKER_HEAVY_REQUESTS_PER_USER", 2, minimum=1)
# A NetCDF/HDF5 export is written to a temporary file before it is sent (HDF5 seeks back): at most this
# many MB of it (about 16 bytes a reading); a larger one is refused with 400 before anything is sent.
DAQBROKER_EXPORT_FILE_MAX_MB = env_int("DAQBROKER_EXPORT_FILE_MAX_MB", 2048, minimum=1)
# A token found usable is remembered this long per process (revocations made elsewhere take effect within
# it; accounts.tokens, docs/security.md). 0: every request looks its token up.
DAQBROKER_TOKEN_CACHE_SECONDS = env_int("DAQBROKER_TOKEN_CACHE_SECONDS", 10, minimum=0, maximum=300)
# Requests per token to POST /api/v1/ingest/ ("none" turns throttling off).
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = {"ingest": env_rate("DAQBROKER_INGEST_THROTTLE", "600/minute")}

# Throttle counters and other shared state: in Redis when there is one, so every web worker agrees.
CACHES = {
    "default": (
        {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            # A Redis that hangs must not hang requests: the ingest throttle then counts locally.
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

# One logging configuration for the web process, the worker and beat (daqbroker_site/celery.py hands
# Celery's logging to it). INFO is what a person wants to know (an alarm raised, a source failing or
# working again, readings quarantined); each routine run, task and schedule tick is DEBUG.
_LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LOG_LEVEL = env_choice("DAQBROKER_LOG_LEVEL", "INFO", _LOG_LEVELS)
# Loggers whose INFO is per-task chatter (Celery's "Task ... received", "... succeeded in 0.01s: ...",
# "Discarding revoked task" for an expired tick, beat's "Sending due task ..."): shown only at DEBUG; their
# warnings and errors always.
_CHATTER_LEVEL = "DEBUG" if LOG_LEVEL == "DEBUG" else max(LOG_LEVEL, "WARNING", key=_LOG_LEVELS.index)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # django-axes logs every successful login at INFO; failures and lockouts are WARNING.
        "axes": {"level": "WARNING"},
        "celery.worker.strategy": {"level": _CHATTER_LEVEL},
        "celery.worker.request": {"level": _CHATTER_LEVEL},
        "celery.app.trace": {"level": _CHATTER_LEVEL},
        "celery.beat": {"level": _CHATTER_LEVEL},
    },
}
