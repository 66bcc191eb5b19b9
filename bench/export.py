#!/usr/bin/env python
"""Exports of 10 M readings over real HTTP (CSV in every time format, Parquet, NetCDF, HDF5), beside
PostgreSQL's own ``COPY ... TO STDOUT CSV`` and the default CSV export, measured in the same run.

Loads N readings of one channel (1 Hz) into a PostgreSQL bench database through ``ingest_samples``,
then for each case starts gunicorn (1 worker, gthread) in a subprocess against that database, downloads
``GET /api/v1/export/`` with a Bearer token (a plain http.client reader, 1 MiB reads), and reads the
worker's peak resident memory (VmHWM in /proc) when the download ends. The baseline, in the same run,
is ``COPY (SELECT ts, value FROM collection_sample WHERE channel_id = .. ORDER BY ts) TO STDOUT (FORMAT
CSV)`` read by psycopg in this process: the database writing CSV itself, with no HTTP and no formatting.

    .venv/bin/python bench/export.py                   # 10 M readings
    .venv/bin/python bench/export.py --readings 1000000
    .venv/bin/python bench/export.py --only CSV,NetCDF,HDF5   # cases whose name contains one of these
    .venv/bin/python bench/export.py --compact         # the readings compacted into blocks (docs/storage.md)

With ``--compact`` the readings are compacted into blocks after the ``COPY`` baseline is measured on the
narrow table (same run), and every export reads them from the blocks.

The database (default postgres://postgres@127.0.0.1:5432/daqbroker_bench_x, or BENCH_POSTGRESQL_URL)
is dropped and created again.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import gunicorn

REPO = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/daqbroker_bench_x"
SECOND = 1_000_000
T0 = 1_704_067_200 * SECOND
CASES = (
    ("CSV, ISO times (default)", {"format": "csv"}),
    ("CSV, epoch µs", {"format": "csv", "time_format": "epoch_us"}),
    ("CSV, ISO + quality", {"format": "csv", "quality": "true"}),
    ("CSV, MATLAB datenum", {"format": "csv", "time_format": "matlab"}),
    ("CSV, Igor (s since 1904)", {"format": "csv", "time_format": "igor"}),
    ("Parquet", {"format": "parquet"}),
    ("NetCDF (long)", {"format": "netcdf"}),
    ("HDF5 (wide)", {"format": "hdf5", "layout": "wide"}),
    ("NetCDF + flagged/quality", {"format": "netcdf", "include_flagged": "true", "quality": "true"}),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=1, help="downloads per case (median)")
    parser.add_argument("--only", default="", help="comma-separated parts of case names (the CSV default always runs)")
    parser.add_argument("--compact", action="store_true", help="export from compressed blocks")
    parser.add_argument("--setup", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compact-stored", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    env = dict(os.environ, DAQBROKER_DEBUG="false", DAQBROKER_SECRET_KEY="bench-" + "x" * 60)
    env.update(
        DAQBROKER_ALLOWED_HOSTS="127.0.0.1",
        DAQBROKER_SECURE_SSL_REDIRECT="false",
        DATABASE_URL=os.environ.get("BENCH_POSTGRESQL_URL", DEFAULT_URL),
        PYTHONPATH=os.pathsep.join([str(REPO / "client_agent"), str(REPO), env.get("PYTHONPATH", "")]),
        DJANGO_SETTINGS_MODULE="daqbroker_site.settings",
    )
    if args.setup:
        print(json.dumps(setup(args.readings)))
        return
    if args.compact_stored:
        print(json.dumps(compact_stored()))
        return
    with tempfile.TemporaryDirectory() as tmp:
        env["DAQBROKER_DATA_DIR"] = tmp
        out = subprocess.run(
            [sys.executable, __file__, "--setup", "--readings", str(args.readings)],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            sys.exit(out.stderr)
        info = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"Export of {args.readings:,} readings (one channel) over HTTP: gunicorn, 1 worker (gthread), PostgreSQL; "
            f"loaded by ingest_samples at {info['ingest_per_s']:,.0f}/s"
        )
        baseline = statistics.median(copy_csv_rate(env["DATABASE_URL"], info["channel"]) for _ in range(args.repeat))
        if args.compact:
            argv = [sys.executable, __file__, "--compact-stored"]
            out = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(out.stderr)
            done = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"Compacted into blocks at {done['per_s']:,.0f} readings/s; every export below reads the blocks")
        wanted = [part.strip() for part in args.only.split(",") if part.strip()]
        cases = [c for i, c in enumerate(CASES) if i == 0 or not wanted or any(w in c[0] for w in wanted)]
        print(
            f"{'case':<26} {'seconds':>8} {'rows/s':>11} {'vs COPY CSV':>11} {'vs CSV export':>13} {'MB':>7} "
            f"{'peak RSS MB':>12}"
        )
        copy_row = f"{'COPY ... TO STDOUT CSV':<26} {'':>8} {baseline:>11,.0f} {'100%':>11}"
        print(f"{copy_row} {'':>13} {'':>7} {'(database)':>12}")
        csv_rate = None
        for name, query in cases:
            runs = [download(env, info, query, args.readings) for _ in range(args.repeat)]
            rate = statistics.median(r["rows_per_s"] for r in runs)
            size = statistics.median(r["mb"] for r in runs)
            peak = max(r["peak_rss_mb"] for r in runs)
            csv_rate = csv_rate or rate
            print(
                f"{name:<26} {args.readings / rate:>8.1f} {rate:>11,.0f} {rate / baseline:>10.0%} "
                f"{rate / csv_rate:>12.0%} {size:>7.0f} {peak:>12.0f}"
            )


def setup(readings: int) -> dict:
    sys.path.insert(0, str(REPO / "bench"))
    from ingest_service import recreate_database

    recreate_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    import logging

    import numpy as np
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection

    from accounts.choices import TokenScope
    from accounts.services import create_personal_token
    from collection.services import SampleBatch, ingest_samples
    from instruments.models import Channel, Instrument

    logging.disable(logging.WARNING)  # no worker runs: the queued rollup refreshes are not needed here
    call_command("migrate", verbosity=0)
    owner = User.objects.create_user("bench")
    instrument = Instrument.objects.create(name="Bench", slug="bench", owner=owner)
    channel = Channel.objects.create(instrument=instrument, name="signal", slug="signal", units="degC")
    rng = np.random.default_rng(1)
    started = time.perf_counter()
    for offset in range(0, readings, 1_000_000):
        n = min(1_000_000, readings - offset)
        ts = T0 + (offset + np.arange(n, dtype=np.int64)) * SECOND + rng.integers(0, 1000, n)
        ingest_samples(SampleBatch(np.full(n, channel.pk, dtype=np.int64), ts, rng.normal(20, 5, n)))
    elapsed = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    _, token = create_personal_token(user=owner, name="bench", scope=TokenScope.READ)
    return {"channel": channel.pk, "token": token, "ingest_per_s": readings / elapsed}


def compact_stored() -> dict:
    """Compact every stored hour into blocks, in the task's bounded steps; the rate."""
    import django

    django.setup()
    import logging

    from django.db import connection

    from collection.models import Sample
    from collection.services.blocks import compact

    logging.disable(logging.WARNING)
    started = time.perf_counter()
    moved = 0
    while (step := compact(T0 + 100 * 365 * 86400 * SECOND, max_windows=500)).windows:
        moved += step.readings
    elapsed = time.perf_counter() - started
    assert not Sample.objects.exists()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    return {"readings": moved, "per_s": moved / elapsed}


def copy_csv_rate(url: str, channel_id: int) -> float:
    import dj_database_url
    import psycopg

    cfg = dj_database_url.parse(url)
    with psycopg.connect(
        host=cfg["HOST"], port=cfg["PORT"] or 5432, user=cfg["USER"], dbname=cfg["NAME"], autocommit=True
    ) as conn:
        started = time.perf_counter()
        lines = 0
        with (
            conn.cursor() as cursor,
            cursor.copy(
                "COPY (SELECT ts, value FROM collection_sample WHERE channel_id = %s ORDER BY ts) "
                "TO STDOUT (FORMAT CSV)",
                [channel_id],
            ) as copy,
        ):
            for chunk in copy:
                lines += bytes(chunk).count(b"\n")
        return lines / (time.perf_counter() - started)


def worker_pids(master: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{master}/task").iterdir():
        children += [int(pid) for pid in (task / "children").read_text().split()]
    return children


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def download(env: dict, info: dict, query: dict, readings: int) -> dict:
    from urllib.parse import urlencode

    options = ["--worker-class", "gthread", "--threads", "2"]
    with gunicorn(env, workers=1, timeout=600, options=options) as server:
        deadline = time.monotonic() + 60
        while not (workers := worker_pids(server.process.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)  # a loaded machine: the worker may be (re)starting
        (worker,) = workers
        path = "/api/v1/export/?" + urlencode({"channels": info["channel"], **query})
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
        started = time.perf_counter()
        connection.request("GET", path, headers={"Authorization": f"Bearer {info['token']}"})
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"{response.status}: {response.read()[:500]!r}")
        size = lines = 0
        while chunk := response.read(1 << 20):
            size += len(chunk)
            lines += chunk.count(b"\n")
        elapsed = time.perf_counter() - started
        peak = peak_rss_mb(worker)
        connection.close()
        if query["format"] == "csv":
            assert lines == readings + 1, (lines, readings)
        else:  # a binary file holds at least the times and values
            assert size >= 16 * readings, (size, readings)
        return {"rows_per_s": readings / elapsed, "mb": size / 1e6, "peak_rss_mb": peak}


if __name__ == "__main__":
    main()
