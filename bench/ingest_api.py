#!/usr/bin/env python
"""Readings/s through the real HTTP ingest API, beside the database's own bulk load in the same run.

Starts gunicorn (--workers, default 2) on a fresh bench database, then posts pre-encoded JSON bodies of
--batch readings (columnar form, --channels channels) from --clients concurrent keep-alive clients until
--readings readings are stored. Baselines, measured in the same run on the same rows:
  PostgreSQL: two concurrent binary COPY streams into a (channel_id, ts)-keyed table;
  SQLite: one sqlite3 executemany INSERT OR IGNORE stream into a WITHOUT ROWID table.

    .venv/bin/python bench/ingest_api.py --engines postgresql,sqlite --readings 2000000
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import gunicorn, recreate_database, server_env

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
PG_URL = os.environ.get("BENCH_POSTGRESQL_URL", "postgres://postgres@127.0.0.1:5432/daqbroker_bench_api")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="postgresql,sqlite")
    parser.add_argument("--readings", type=int, default=2_000_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.setup:
        print(json.dumps(setup_database(args.channels)))
        return
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "daqbroker_site.settings")
    import django

    django.setup()  # for collection.storage's COPY payload builder, shared with the baseline
    print(
        f"ingest API over HTTP: {args.readings:,} readings in batches of {args.batch:,}, {args.channels} channels, "
        f"{args.clients} clients, gunicorn {args.workers} workers"
    )
    print(f"{'engine':<11} {'HTTP ingest/s':>14} {'baseline/s':>12} {'ratio':>7}  baseline")
    for engine in args.engines.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            ours, raw, what = run_engine(engine, args, Path(tmp))
        print(f"{engine:<11} {ours:>14,.0f} {raw:>12,.0f} {ours / raw:>6.0%}  {what}")


def setup_database(channels: int) -> dict:
    """(In a child process with the engine's environment.) Fresh schema, a user, channels and a token."""
    if os.environ.get("DATABASE_URL"):
        recreate_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection

    from accounts.choices import TokenScope
    from accounts.services import create_personal_token
    from instruments.models import Channel, Instrument

    call_command("migrate", verbosity=0)
    user = User.objects.create_superuser("bench", password=None)
    instrument = Instrument.objects.create(name="Bench", slug="bench", owner=user)
    for i in range(channels):
        Channel.objects.create(instrument=instrument, name=f"c{i}", slug=f"c{i}")
    _, token = create_personal_token(user=user, name="bench", scope=TokenScope.READ_WRITE)
    return {
        "token": token,
        "db": connection.settings_dict["NAME"],
        "channel_ids": sorted(Channel.objects.values_list("id", flat=True)),
    }


def run_engine(engine: str, args, tmp: Path) -> tuple[float, float, str]:
    import numpy as np
    import orjson

    env = server_env(tmp, PG_URL if engine == "postgresql" else None)
    setup = subprocess.run(
        [sys.executable, __file__, "--setup", "1", "--channels", str(args.channels)],
        env=env, cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if setup.returncode != 0:
        sys.exit(f"setup failed for {engine}:\n{setup.stderr[-3000:]}")
    info = json.loads(setup.stdout.strip().splitlines()[-1])
    # A body smaller than --channels writes fewer channels (one reading each): 1-reading bodies work.
    channels = min(args.channels, args.batch)
    per_channel = args.batch // channels
    batches = max(args.readings // (per_channel * channels), 2)
    t0 = 1_600_000_000_000_000
    bodies = []
    for b in range(batches):
        ts = (t0 + (b * per_channel + np.arange(per_channel, dtype=np.int64)) * 1_000_000).tolist()
        values = np.random.default_rng(b).normal(20, 3, (channels, per_channel)).round(4)
        columns = {f"bench/c{i}": {"t": ts, "v": values[i].tolist()} for i in range(channels)}
        bodies.append(orjson.dumps({"batch_id": f"b{b}", "time_unit": "us", "channels": columns}))
    total = batches * per_channel * channels

    with gunicorn(env, workers=args.workers, timeout=120) as server:
        port = server.port
        headers = {"Authorization": f"Bearer {info['token']}", "Content-Type": "application/json"}
        post(port, headers, bodies[0])  # warm-up: imports, connections
        queue = list(range(1, len(bodies)))
        lock = threading.Lock()
        errors: list[str] = []

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            while True:
                with lock:
                    if not queue:
                        break
                    index = queue.pop()
                status, body = post(port, headers, bodies[index], conn)
                if status != 200 or orjson.loads(body)["accepted"] != per_channel * channels:
                    errors.append(f"{status} {body[:300]!r}")
            conn.close()

        start = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        if errors:
            sys.exit(f"{len(errors)} uploads failed, first: {errors[0]}")
        ours = (total - per_channel * channels) / elapsed

    channel_ids = np.array(info["channel_ids"][:channels], dtype=np.int64)
    channel = np.repeat(channel_ids, total // len(channel_ids))
    ts = np.tile(t0 + np.arange(total // len(channel_ids), dtype=np.int64) * 1_000_000, len(channel_ids))
    value = np.random.default_rng(0).normal(20, 3, total)
    if engine == "postgresql":
        return ours, raw_copy_two_streams(info["db"], channel, ts, value), "2 concurrent binary COPY streams"
    return ours, raw_sqlite(tmp / "raw.sqlite3", channel, ts, value), "sqlite3 executemany, 1 stream"


def post(port, headers, body, conn=None):
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/api/v1/ingest/", body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    if own:
        conn.close()
    return response.status, data


def raw_copy_two_streams(db: str, channel, ts, value) -> float:
    import dj_database_url
    import numpy as np
    import psycopg

    from collection.storage import pg_binary_copy_payload

    cfg = dj_database_url.parse(PG_URL)
    connect = {"host": cfg["HOST"], "port": cfg["PORT"] or 5432, "user": cfg["USER"], "dbname": db}
    with psycopg.connect(**connect) as conn:
        conn.execute("DROP TABLE IF EXISTS raw_bench")
        conn.execute(
            "CREATE TABLE raw_bench (channel_id bigint NOT NULL, ts bigint NOT NULL, value double precision NOT NULL,"
            " quality smallint NOT NULL, PRIMARY KEY (channel_id, ts))"
        )
    quality = np.zeros(len(channel), dtype=np.int16)
    half = len(channel) // 2

    def stream(part: slice) -> None:
        with psycopg.connect(**connect) as conn, conn.cursor().copy("COPY raw_bench FROM STDIN (FORMAT BINARY)") as cp:
            cp.write(pg_binary_copy_payload(channel[part], ts[part], value[part], quality[part]))

    start = time.perf_counter()
    threads = [threading.Thread(target=stream, args=(s,)) for s in (slice(0, half), slice(half, None))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(channel) / (time.perf_counter() - start)


def raw_sqlite(path: Path, channel, ts, value) -> float:
    import sqlite3

    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE raw_bench (channel_id INTEGER NOT NULL, ts INTEGER NOT NULL, value REAL NOT NULL, "
        "quality INTEGER NOT NULL, PRIMARY KEY (channel_id, ts)) WITHOUT ROWID"
    )
    start = time.perf_counter()
    rows = zip(channel.tolist(), ts.tolist(), value.tolist(), [0] * len(channel), strict=True)
    conn.executemany("INSERT OR IGNORE INTO raw_bench VALUES (?, ?, ?, ?)", rows)
    conn.commit()
    return len(channel) / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
