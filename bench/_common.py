"""Helpers the benchmark scripts share (they import it as ``_common``: ``bench/`` is on their path):
a fresh database, the server's environment, and gunicorn serving the app on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60, what: str = "gunicorn", process=None, log: Path | None = None):
    """Return once something accepts connections on ``port``; exit with a message (and the log's tail)
    after ``timeout`` s, or as soon as ``process`` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (process is None or process.poll() is None):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
    sys.exit(f"{what} did not start within {timeout:.0f} s\n{tail}")


def recreate_database(url: str) -> None:
    """Drop and create the database of a PostgreSQL or MariaDB URL (nothing to do for SQLite)."""
    import dj_database_url

    cfg = dj_database_url.parse(url)
    name = cfg["NAME"]
    if cfg["ENGINE"].endswith("postgresql"):
        import psycopg

        with psycopg.connect(
            host=cfg["HOST"], port=cfg["PORT"] or 5432, user=cfg["USER"], dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
    elif cfg["ENGINE"].endswith("mysql"):
        import MySQLdb

        conn = MySQLdb.connect(host=cfg["HOST"], port=int(cfg["PORT"] or 3306), user=cfg["USER"])
        conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        conn.close()


def server_env(data_dir: Path, database_url: str | None, **extra: str) -> dict[str, str]:
    """The app's environment as in production (DEBUG off, no throttle), on ``database_url`` (None: SQLite
    in ``data_dir``), without the broker settings of the calling shell."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    env.update(
        DAQBROKER_DEBUG="false",
        DAQBROKER_SECRET_KEY="bench-" + "k" * 60,
        DAQBROKER_ALLOWED_HOSTS="127.0.0.1,localhost",
        DAQBROKER_SECURE_SSL_REDIRECT="false",
        DAQBROKER_INGEST_THROTTLE="none",
        DAQBROKER_DB_CONN_MAX_AGE="600",
        DAQBROKER_DATA_DIR=str(data_dir),
        DAQBROKER_LOG_LEVEL="WARNING",
        DJANGO_SETTINGS_MODULE="daqbroker_site.settings",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "client_agent"), str(REPO), os.environ.get("PYTHONPATH")])),
        **extra,
    )
    (data_dir / "static").mkdir(parents=True, exist_ok=True)  # WhiteNoise wants its folder
    if database_url:
        env["DATABASE_URL"] = database_url
    return env


@dataclass(frozen=True)
class Server:
    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def gunicorn(
    env: dict[str, str],
    *,
    workers: int = 2,
    timeout: int = 300,
    options: Sequence[str] = (),
    cwd: Path = REPO,
) -> Iterator[Server]:
    """The app served by gunicorn on a free port, until the block ends; its log is in DAQBROKER_DATA_DIR.
    ``cwd``: the source tree to serve (another checkout, for a before/after comparison in one run)."""
    port = free_port()
    log_path = Path(env["DAQBROKER_DATA_DIR"]) / "gunicorn.log"
    argv = [sys.executable, "-m", "gunicorn", "daqbroker_site.wsgi", "--workers", str(workers)]
    argv += ["--bind", f"127.0.0.1:{port}", "--timeout", str(timeout), "--log-level", "warning", *options]
    with log_path.open("ab") as log:
        process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, process=process, log=log_path)
            yield Server(port, process)
        finally:
            process.terminate()
            process.wait(timeout=60)


def page_figures(client, url: str, repeat: int) -> dict:
    """``url`` through Django's test ``client``: the median time (ms) of ``repeat`` requests after one warm-up,
    the last one's number of queries, its size (KB) and HTTP status."""
    import statistics

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.get(url)
    times, queries, size, status = [], 0, 0, 0
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - started) * 1000)
        queries, size, status = len(captured), len(response.content), response.status_code
    return {"ms": statistics.median(times), "queries": queries, "kb": size / 1024, "status": status}


def print_ratios(row: dict[str, dict], base: dict[str, dict], first: int, *, width: int, note=None) -> None:
    """One line per figure of ``row`` (``page_figures``' keys): time, queries, size, and the ratio of each to
    ``base``, the same figure at the first size ``first``; ``note(name, figures)`` adds words at the end."""
    print(f"{'':<{width}} {'ms':>8} {'queries':>7} {'KB':>8}   ratio to {first:,}: time  queries     KB")
    for name, figures in row.items():
        b = base[name]
        print(
            f"{name:<{width}} {figures['ms']:>8.1f} {figures['queries']:>7} {figures['kb']:>8.1f}   "
            f"{figures['ms'] / max(b['ms'], 0.001):>20.2f}x {figures['queries'] / max(b['queries'], 1):>7.2f}x "
            + (f"{figures['kb'] / b['kb']:>6.2f}x" if b["kb"] else f"{'':>7}")
            + (note(name, figures) if note else "")
        )
