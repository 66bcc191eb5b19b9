"""gunicorn settings for production: ``gunicorn -c python:daqbroker_site.gunicorn_conf daqbroker_site.wsgi``.

Threaded workers (``gthread``): one process per core, each serving several requests at once, so a request
waiting on the database (or a long export streaming to a slow client) does not hold a whole process, and
keep-alive connections from many small senders are held cheaply between their requests. Chosen by
measurement with ``bench/ingest_small.py`` (docs/performance.md#small-senders). Command-line options and
``GUNICORN_CMD_ARGS`` override any of these (``--workers 8``, ``--bind 0.0.0.0:8000``).
"""

import os

bind = "127.0.0.1:8000"
workers = os.cpu_count() or 2
worker_class = "gthread"
threads = 4
timeout = 300  # streamed exports of millions of readings are not cut off
keepalive = 75  # seconds an idle keep-alive connection is kept: a sender posting every few seconds reuses it
# Open connections per worker, idle keep-alive ones included (gunicorn's default is 1,000): a fleet of agents
# each keeping its connection must not find a worker full (bench/many_agents.py, docs/performance.md).
worker_connections = 2000
