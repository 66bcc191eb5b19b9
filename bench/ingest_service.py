#!/usr/bin/env python
"""Throughput of ``ingest_samples`` beside the database's own raw bulk path, measured in the same run.

For each engine: N new readings (channels interleaved, one call), then the same N again where 10% are
already stored ("dup10"), each the median of --repeat runs; beside the raw baseline into an equivalent
keyed table: sqlite3 executemany INSERT OR IGNORE (WITHOUT ROWID), psycopg binary COPY, and mysqlclient
executemany INSERT IGNORE. Prints readings/s and the ratio to the baseline.

    .venv/bin/python bench/ingest_service.py --readings 1000000 --engines sqlite,postgresql,mariadb
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

from _common import recreate_database

REPO = Path(__file__).resolve().parent.parent
DEFAULT_URLS = {
    "sqlite": None,
    "postgresql": "postgres://postgres@127.0.0.1:5432/daqbroker_bench",
    "mariadb": "mysql://root@127.0.0.1:3306/daqbroker_bench",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--engines", default="sqlite,postgresql", help="comma list of sqlite, postgresql, mariadb")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_engine(args.child, args)))
        return
    print(
        f"ingest_samples vs raw bulk load: {args.readings:,} readings, {args.channels} channels, "
        f"median of {args.repeat}"
    )
    print(f"{'engine':<11} {'case':<6} {'ingest_samples/s':>17} {'raw baseline/s':>15} {'ratio':>7}")
    for engine in args.engines.split(","):
        env = dict(os.environ, DAQBROKER_DEBUG="false", DAQBROKER_SECRET_KEY="bench-" + "x" * 60)
        with tempfile.TemporaryDirectory() as tmp:
            env["DAQBROKER_DATA_DIR"] = tmp
            env.pop("DATABASE_URL", None)
            if DEFAULT_URLS[engine]:
                env["DATABASE_URL"] = os.environ.get(f"BENCH_{engine.upper()}_URL", DEFAULT_URLS[engine])
            argv = [sys.executable, __file__, "--child", engine, "--readings", str(args.readings)]
            argv += ["--channels", str(args.channels), "--repeat", str(args.repeat)]
            out = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{engine:<11} failed: {out.stderr.strip().splitlines()[-1] if out.stderr else out.returncode}")
            continue
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        for case in ("new", "dup10"):
            ours, raw = figures[case], figures[f"raw_{case}"]
            print(f"{engine:<11} {case:<6} {ours:>17,.0f} {raw:>15,.0f} {ours / raw:>6.0%}")


def run_engine(engine: str, args) -> dict:
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "daqbroker_site.settings")
    if engine != "sqlite":
        recreate_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    import numpy as np
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection

    from collection.models import Sample
    from collection.services import SampleBatch, ingest_samples
    from instruments.models import Channel, Instrument

    call_command("migrate", verbosity=0)
    owner = User.objects.create_user("bench")
    instrument = Instrument.objects.create(name="Bench", slug="bench", owner=owner)
    ids = [
        Channel.objects.create(instrument=instrument, name=f"c{i}", slug=f"c{i}", valid_min=-1e9, valid_max=1e9).id
        for i in range(args.channels)
    ]
    n = args.readings - args.readings % args.channels
    channel = np.tile(np.array(ids, dtype=np.int64), n // args.channels)
    ts = np.repeat(1_700_000_000_000_000 + np.arange(n // args.channels, dtype=np.int64) * 1_000_000, args.channels)
    value = np.random.default_rng(1).normal(20, 5, n)
    batch = SampleBatch(channel, ts, value)
    tenth = SampleBatch(channel[: n // 10], ts[: n // 10], value[: n // 10])

    def ours(preload: bool) -> float:
        Sample.objects.all().delete()
        if preload:
            ingest_samples(tenth)
        start = time.perf_counter()
        result = ingest_samples(batch)
        elapsed = time.perf_counter() - start
        assert result.accepted == (n - n // 10 if preload else n), result.as_dict()
        return n / elapsed

    raw = RAW[connection.vendor]
    raw_insert = raw(connection, channel, ts, value)
    figures = {}
    for case, preload in (("new", False), ("dup10", True)):
        figures[case] = statistics.median(ours(preload) for _ in range(args.repeat))
        figures[f"raw_{case}"] = statistics.median(raw_insert(preload) for _ in range(args.repeat))
    return figures


def raw_sqlite(connection, channel, ts, value):
    import sqlite3

    conn = sqlite3.connect(connection.settings_dict["NAME"])
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE raw_bench (channel_id INTEGER NOT NULL, ts INTEGER NOT NULL, value REAL NOT NULL, "
        "quality INTEGER NOT NULL, PRIMARY KEY (channel_id, ts)) WITHOUT ROWID"
    )
    rows = list(zip(channel.tolist(), ts.tolist(), value.tolist(), [0] * len(channel), strict=True))
    sql = "INSERT OR IGNORE INTO raw_bench VALUES (?, ?, ?, ?)"

    def insert(preload: bool) -> float:
        conn.execute("DELETE FROM raw_bench")
        conn.commit()
        if preload:
            conn.executemany(sql, rows[: len(rows) // 10])
            conn.commit()
        start = time.perf_counter()
        conn.executemany(sql, list(zip(channel.tolist(), ts.tolist(), value.tolist(), [0] * len(channel), strict=True)))
        conn.commit()
        return len(rows) / (time.perf_counter() - start)

    return insert


def raw_postgresql(connection, channel, ts, value):
    import numpy as np
    import psycopg

    from collection.storage import pg_binary_copy_payload

    s = connection.settings_dict
    conn = psycopg.connect(host=s["HOST"], port=s["PORT"] or 5432, user=s["USER"], dbname=s["NAME"])
    conn.execute(
        "CREATE TABLE raw_bench (channel_id bigint NOT NULL, ts bigint NOT NULL, value double precision NOT NULL, "
        "quality smallint NOT NULL, PRIMARY KEY (channel_id, ts))"
    )
    conn.commit()
    quality = np.zeros(len(channel), dtype=np.int16)
    tenth = len(channel) // 10

    def insert(preload: bool) -> float:
        conn.execute("TRUNCATE raw_bench")
        conn.commit()
        if preload:
            with conn.cursor().copy("COPY raw_bench FROM STDIN (FORMAT BINARY)") as copy:
                copy.write(pg_binary_copy_payload(channel[:tenth], ts[:tenth], value[:tenth], quality[:tenth]))
            conn.commit()
        start = time.perf_counter()
        if preload:
            # raw COPY cannot skip duplicates: the raw idempotent path is COPY to a temp table + ON CONFLICT
            conn.execute("CREATE TEMP TABLE stage (LIKE raw_bench) ON COMMIT DROP")
            with conn.cursor().copy("COPY stage FROM STDIN (FORMAT BINARY)") as copy:
                copy.write(pg_binary_copy_payload(channel, ts, value, quality))
            conn.execute("INSERT INTO raw_bench SELECT * FROM stage ON CONFLICT DO NOTHING")
        else:
            with conn.cursor().copy("COPY raw_bench FROM STDIN (FORMAT BINARY)") as copy:
                copy.write(pg_binary_copy_payload(channel, ts, value, quality))
        conn.commit()
        return len(channel) / (time.perf_counter() - start)

    return insert


def raw_mysql(connection, channel, ts, value):
    import MySQLdb

    s = connection.settings_dict
    conn = MySQLdb.connect(host=s["HOST"], port=int(s["PORT"] or 3306), user=s["USER"], database=s["NAME"])
    cur = conn.cursor()
    cur.execute(
        "CREATE TABLE raw_bench (channel_id bigint NOT NULL, ts bigint NOT NULL, value double NOT NULL, "
        "quality smallint NOT NULL, PRIMARY KEY (channel_id, ts))"
    )
    rows = list(zip(channel.tolist(), ts.tolist(), value.tolist(), [0] * len(channel), strict=True))
    sql = "INSERT IGNORE INTO raw_bench VALUES (%s, %s, %s, %s)"

    def insert(preload: bool) -> float:
        cur.execute("TRUNCATE raw_bench")
        if preload:
            cur.executemany(sql, rows[: len(rows) // 10])
            conn.commit()
        start = time.perf_counter()
        fresh = list(zip(channel.tolist(), ts.tolist(), value.tolist(), [0] * len(channel), strict=True))
        for i in range(0, len(fresh), 10_000):
            cur.executemany(sql, fresh[i : i + 10_000])
        conn.commit()
        return len(rows) / (time.perf_counter() - start)

    return insert


RAW = {"sqlite": raw_sqlite, "postgresql": raw_postgresql, "mysql": raw_mysql}

if __name__ == "__main__":
    main()
