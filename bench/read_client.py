#!/usr/bin/env python
"""The Python read client (``daqbroker_agent.reader``) over real HTTP: rate and the client's peak memory.

Loads N readings of one channel (1 Hz) into a PostgreSQL bench database through ``ingest_samples``, starts
gunicorn (1 worker, gthread) on it, and reads the whole range in a fresh Python process per case, which
reports its rate and its peak resident memory (``ru_maxrss``); after one warm-up download, the cases
take turns, ``--repeat`` times each (median time, largest peak):

- baseline: one ``GET /api/v1/export/?format=parquet`` downloaded whole and read with pyarrow into pandas
  (what a script does by hand: the whole answer in memory at once);
- ``Client.readings(...)``: the same readings as one DataFrame, fetched in pieces of ``--piece`` readings;
- ``Client.iter_readings(...)``: piece by piece, each reduced to hourly means and dropped (bounded memory).

    .venv/bin/python bench/read_client.py                      # 2 M readings
    .venv/bin/python bench/read_client.py --readings 5000000 --piece 500000

The database (default postgres://postgres@127.0.0.1:5432/daqbroker_bench_reader, or BENCH_POSTGRESQL_URL)
is dropped and created again.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import gunicorn, recreate_database, server_env

REPO = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/daqbroker_bench_reader"
SECOND = 1_000_000
T0 = 1_704_067_200 * SECOND

# Each case runs in its own process (python -c): its peak RSS is its own. {url} {token} {end} {piece}.
PRELUDE = """
import json, resource, sys, time
import pandas as pd
start = time.perf_counter()
"""
CASES = {
    "baseline: one Parquet download": """
import io, urllib.request, pyarrow.parquet as pq
request = urllib.request.Request(
    "{url}/api/v1/export/?channels=bench/signal&format=parquet&start={start}&end={end}",
    headers={{"Authorization": "Bearer {token}"}},
)
body = urllib.request.urlopen(request, timeout=3600).read()
frame = pq.read_table(io.BytesIO(body)).to_pandas()
rows = len(frame)
""",
    "Client.readings (pieces)": """
from daqbroker_agent.reader import Client
frame = Client("{url}", "{token}").readings("bench/signal", {start}, {end}, piece_readings={piece})
rows = len(frame)
""",
    "Client.iter_readings": """
from daqbroker_agent.reader import Client
rows, hourly = 0, []
for piece in Client("{url}", "{token}").iter_readings("bench/signal", {start}, {end}, piece_readings={piece}):
    rows += len(piece)
    hourly.append(piece["value"].resample("1h").mean())
""",
}
EPILOGUE = """
elapsed = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"rows": rows, "seconds": elapsed, "peak_rss_mb": peak}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=2_000_000)
    parser.add_argument("--piece", type=int, default=500_000, help="piece_readings of the client")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (median time, largest peak)")
    parser.add_argument("--setup", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = server_env(Path(tmp), os.environ.get("BENCH_POSTGRESQL_URL", DEFAULT_URL))
        if args.setup:
            print(json.dumps(setup(args.readings)))
            return
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
            f"Reading {args.readings:,} readings (one channel, 1 Hz) into pandas over HTTP: gunicorn, 1 worker "
            f"(gthread), PostgreSQL; client pieces of {args.piece:,} readings"
        )
        values = {"token": info["token"], "start": T0, "end": T0 + args.readings * SECOND, "piece": args.piece}
        with gunicorn(env, workers=1, timeout=3600, options=["--worker-class", "gthread", "--threads", "2"]) as web:
            run_case(web.url, "baseline: one Parquet download", values, env, args.readings)  # warms the caches
            runs: dict[str, list[dict]] = {name: [] for name in CASES}
            for _ in range(args.repeat):  # interleaved, so that no case gets all the warm runs
                for name in CASES:
                    runs[name].append(run_case(web.url, name, values, env, args.readings))
            results = {
                name: {
                    "rows": args.readings,
                    "seconds": statistics.median(r["seconds"] for r in rs),
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                }
                for name, rs in runs.items()
            }
        base = results["baseline: one Parquet download"]
        base_rate = base["rows"] / base["seconds"]
        print(f"{'case':<32} {'readings/s':>11} {'vs baseline':>11} {'peak RSS MB':>12} {'vs baseline':>11}")
        for name, r in results.items():
            rate = r["rows"] / r["seconds"]
            print(
                f"{name:<32} {rate:>11,.0f} {rate / base_rate:>10.0%} {r['peak_rss_mb']:>12.0f} "
                f"{r['peak_rss_mb'] / base['peak_rss_mb']:>10.0%}"
            )


def run_case(url: str, name: str, values: dict, env: dict, readings: int) -> dict:
    script = (PRELUDE + CASES[name] + EPILOGUE).format(url=url, **values)
    ran = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    if ran.returncode != 0:
        sys.exit(f"{name}: {ran.stderr[-3000:]}")
    result = json.loads(ran.stdout.strip().splitlines()[-1])
    assert result["rows"] == readings, (name, result)
    return result


def setup(readings: int) -> dict:
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
    from collection.services.rollups import refresh_rollups
    from instruments.models import Channel, Instrument

    logging.disable(logging.WARNING)
    call_command("migrate", verbosity=0)
    owner = User.objects.create_user("bench")
    instrument = Instrument.objects.create(name="Bench", slug="bench", owner=owner)
    channel = Channel.objects.create(instrument=instrument, name="signal", slug="signal", units="degC")
    rng = np.random.default_rng(1)
    for offset in range(0, readings, 1_000_000):
        n = min(1_000_000, readings - offset)
        ts = T0 + (offset + np.arange(n, dtype=np.int64)) * SECOND
        ingest_samples(SampleBatch(np.full(n, channel.pk, dtype=np.int64), ts, rng.normal(20, 5, n)))
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")  # as autovacuum would soon: without statistics the planner sorts
    started = time.perf_counter()
    while refresh_rollups().remaining:  # the tiers the client's counts come from, as the worker keeps them
        pass
    _, token = create_personal_token(user=owner, name="bench", scope=TokenScope.READ)
    return {"channel": channel.pk, "token": token, "rollups_s": time.perf_counter() - started}


if __name__ == "__main__":
    main()
