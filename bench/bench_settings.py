"""Settings for benchmark servers: the product's own, plus the bench's URL conf (``bench_urls``: the
floor endpoint) and a middleware that reports each request's database statements in a header. Used by
``bench/ingest_small.py`` through ``DJANGO_SETTINGS_MODULE=bench_settings``; never by the product."""

from daqbroker_site.settings import *  # noqa: F403
from daqbroker_site.settings import MIDDLEWARE

ROOT_URLCONF = "bench_urls"
MIDDLEWARE = ["bench_urls.StatementCountMiddleware", *MIDDLEWARE]
