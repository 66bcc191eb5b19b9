#!/usr/bin/env python
"""Plot queries at 2,000 points over 1 M and 10 M stored readings of one channel, on PostgreSQL.

Loads readings at 1 Hz through ``ingest_samples`` (1 M, then 9 M more), brings the rollup tiers up to
date from the backlog the ingest left (``refresh_rollups``, as the worker does), then asks the query
service for the full range, the last month, the last day and the last hour at ``max_points=2000``:
median server time of the service call plus orjson rendering, and of the whole API view in-process
(authentication, permission gate, parameters, rendering). Beside each, in the same run, the raw-fetch
baseline: ``COPY (SELECT ts, value ...) TO STDOUT (FORMAT BINARY)`` of the same range into numpy.

    .venv/bin/python bench/query.py                      # 1 M then 10 M
    .venv/bin/python bench/query.py --first 200000 --total 1000000   # a quick run
    .venv/bin/python bench/query.py --compact            # the same, every hour compacted and its tiers packed

With ``--compact`` (docs/storage.md) each load is followed by compaction and tier packing of every hour
(their rates printed); the raw-fetch baseline is measured on the narrow table before that, in the same run,
so the second size goes to a channel of its own (``--total`` readings in it, not ``--total`` - ``--first``).
``--channels N`` stores ``--total`` readings in each of N channels at the second size (the storage
issue's 100 M: ``--compact --channels 10``); the queries ask for one of them.

The database (default postgres://postgres@127.0.0.1:5432/daqbroker_bench_q, or BENCH_POSTGRESQL_URL)
is dropped and created again.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/daqbroker_bench_q"
RANGES = (("full range", None), ("month", 30 * 86400), ("day", 86400), ("hour", 3600))
MAX_POINTS = 2000
SECOND = 1_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--first", type=int, default=1_000_000, help="readings stored for the first measurement")
    parser.add_argument("--total", type=int, default=10_000_000, help="readings stored for the second")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--compact", action="store_true", help="compact and pack every hour before querying")
    parser.add_argument(
        "--channels", type=int, default=1, help="channels holding --total readings each at the second size"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run(args)
        return
    env = dict(os.environ, DAQBROKER_DEBUG="false", DAQBROKER_SECRET_KEY="bench-" + "x" * 60)
    env.update(
        DAQBROKER_ALLOWED_HOSTS="testserver",
        DAQBROKER_SECURE_SSL_REDIRECT="false",
        DATABASE_URL=os.environ.get("BENCH_POSTGRESQL_URL", DEFAULT_URL),
        PYTHONPATH=os.pathsep.join([str(REPO / "client_agent"), env.get("PYTHONPATH", "")]),
    )
    with tempfile.TemporaryDirectory() as tmp:
        env["DAQBROKER_DATA_DIR"] = tmp
        argv = [sys.executable, __file__, "--child", "--first", str(args.first), "--total", str(args.total)]
        argv += ["--repeat", str(args.repeat), "--channels", str(args.channels)]
        argv += ["--compact"] if args.compact else []
        subprocess.run(argv, env=env, cwd=REPO, check=True)


def run(args) -> None:
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "daqbroker_site.settings")
    sys.path.insert(0, str(REPO / "bench"))
    from ingest_service import recreate_database

    recreate_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    import logging

    logging.disable(logging.WARNING)  # the bench's throwaway broker has no worker: its warnings are noise
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client

    from instruments.models import Channel, Instrument

    call_command("migrate", verbosity=0)
    owner = User.objects.create_user("bench")
    instrument = Instrument.objects.create(name="Bench", slug="bench", owner=owner)
    channel = Channel.objects.create(instrument=instrument, name="signal", slug="signal")
    client = Client()
    client.force_login(owner)

    storage = "compacted blocks and packed tiers" if args.compact else "rows"
    print(
        f"Plot queries at max_points={MAX_POINTS}, one channel at 1 Hz, PostgreSQL, {storage}; median of {args.repeat}"
    )
    print(
        f"{'stored':>7} {'range':<11} {'readings':>10} {'source':<12} {'points':>6} "
        f"{'service ms':>10} {'API ms':>7} {'raw fetch ms':>12} {'speed-up':>8}"
    )
    stored = in_db = 0  # readings of the queried channel, readings in the database
    results = {}
    for step, target in enumerate((args.first, args.total)):
        if args.compact and stored:  # compacted readings leave the narrow table: a channel of its own each
            channel = Channel.objects.create(instrument=instrument, name=f"signal {target}", slug=f"s{target}")
            stored = 0
        others = [
            Channel.objects.create(instrument=instrument, name=f"other {i}", slug=f"other-{i}").pk
            for i in range(args.channels - 1 if step else 0)
        ]
        started = time.perf_counter()
        load_readings(channel.pk, stored, target - stored)
        for other in others:
            load_readings(other, 0, target)
        readings = target - stored + target * len(others)
        in_db += readings
        load = {"readings": readings, "ingest_per_s": readings / (time.perf_counter() - started)}
        load.update(refresh_tiers(readings))
        stored = target
        end = T0 + stored * SECOND
        spans = {name: (T0 if seconds is None else end - seconds * SECOND, end) for name, seconds in RANGES}
        baseline = {name: raw_baseline(channel.pk, *span, args.repeat) for name, span in spans.items()}
        if args.compact:
            load.update(compact_all())
        rows = []
        for name, (start, end) in spans.items():
            figures = measure(channel.pk, start, end, client, args.repeat, baseline[name])
            rows.append({"range": name, **figures})
            print(
                f"{human(in_db):>7} {name:<11} {figures['readings']:>10,} {figures['source']:<12} "
                f"{figures['points']:>6} {figures['service_ms']:>10.1f} {figures['api_ms']:>7.1f} "
                f"{figures['raw_ms']:>12.1f} {figures['raw_ms'] / figures['api_ms']:>7.1f}x"
            )
        if args.compact:  # the whole range's raw readings from the blocks, against the COPY baseline
            full = baseline[RANGES[0][0]]
            blocks_ms = statistics.median(timed(functools.partial(read_blocks, channel.pk)) for _ in range(3))
            load["raw_blocks_ms"] = blocks_ms
            print(
                f"{'':>7} raw fetch of all {human(full['readings'])} readings: from blocks {blocks_ms:,.0f} ms, "
                f"binary COPY of the narrow table {full['raw_ms']:,.0f} ms = {full['raw_ms'] / blocks_ms:.1f}x"
            )
        results[in_db] = {"load": load, "queries": rows}
        print(
            f"{'':>7} loading {human(load['readings'])} readings: ingest_samples {load['ingest_per_s']:,.0f}/s, "
            f"rollup refresh {load['rollup_per_s']:,.0f} readings/s"
            + (
                f", compaction {load['compact_per_s']:,.0f} readings/s, packing {load['pack_per_s']:,.0f} readings/s"
                if args.compact
                else ""
            )
        )
    if len(results) == 2:
        small, large = (results[k]["queries"] for k in sorted(results))
        print(f"Flatness, API time at {human(max(results))} / at {human(min(results))} stored:")
        for a, b in zip(small, large, strict=True):
            print(f"  {a['range']:<11} {b['api_ms']:.1f} ms / {a['api_ms']:.1f} ms = {b['api_ms'] / a['api_ms']:.2f}")
    print(json.dumps(results))


T0 = 1_704_067_200 * SECOND  # 2024-01-01T00:00:00Z


def human(n: int) -> str:
    return f"{n / 1e6:g} M" if n >= 1_000_000 else f"{n / 1e3:g} k"


def refresh_tiers(readings: int) -> dict:
    """Bring every tier up to date from the backlog, as the worker does; its rate."""
    from django.db import connection

    from collection.models import RollupBacklog
    from collection.services.rollups import refresh_rollups

    started = time.perf_counter()
    while refresh_rollups(max_rows=2_000_000).remaining:
        pass
    assert not RollupBacklog.objects.exists()
    seconds = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    return {"rollup_per_s": readings / seconds}


def load_readings(channel_id: int, already: int, count: int) -> None:
    """``count`` readings at 1 Hz after the ``already`` stored, through ``ingest_samples``."""
    import numpy as np

    from collection.services import SampleBatch, ingest_samples

    rng = np.random.default_rng(already)
    for offset in range(already, already + count, 1_000_000):
        n = min(1_000_000, already + count - offset)
        ts = T0 + (offset + np.arange(n, dtype=np.int64)) * SECOND
        value = 20 + 5 * np.sin((offset + np.arange(n)) / 3600) + rng.normal(0, 0.2, n)
        value[rng.integers(0, n, 3)] = 80.0  # spikes the plots must keep
        ingest_samples(SampleBatch(np.full(n, channel_id, dtype=np.int64), ts, value))


def compact_all() -> dict:
    """Compact every hour stored and pack its fine tiers, in the task's bounded steps; their rates."""
    from django.db import connection

    from collection.services.blocks import compact
    from collection.services.rollups import pack

    far = T0 + 100 * 365 * 86400 * SECOND
    started = time.perf_counter()
    moved = 0
    while step := compact(far, max_windows=500):
        if not step.windows:
            break
        moved += step.readings
    compacted = time.perf_counter()
    while pack(far, max_windows=500):
        pass
    packed = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    return {"compact_per_s": moved / (compacted - started), "pack_per_s": moved / (packed - compacted)}


def read_blocks(channel_id: int) -> int:
    """Every reading of the channel through the merged read (blocks and hot rows), as numpy columns."""
    from collection.services.blocks import iter_readings

    return sum(len(chunk["ts"]) for chunk in iter_readings(channel_id, T0, T0 + 10**15, text=False))


def raw_baseline(channel_id: int, start: int, end: int, repeat: int) -> dict:
    """The raw-fetch baseline over the narrow table: ``COPY … TO STDOUT (FORMAT BINARY)`` into numpy."""
    import numpy as np
    from django.db import connection

    def raw_fetch():
        buffer = bytearray()
        with (
            connection.cursor() as cursor,
            cursor.cursor.copy(
                "COPY (SELECT ts, value FROM collection_sample WHERE channel_id = %s AND ts >= %s AND ts < %s "
                "ORDER BY ts) TO STDOUT (FORMAT BINARY)",
                [channel_id, start, end],
            ) as copy,
        ):
            for chunk in copy:
                buffer += chunk
        dtype = np.dtype([("n", ">i2"), ("l1", ">i4"), ("ts", ">i8"), ("l2", ">i4"), ("value", ">f8")])
        rows = np.frombuffer(buffer, dtype=dtype, count=(len(buffer) - 21) // dtype.itemsize, offset=19)
        return rows["ts"].astype(np.int64), rows["value"].astype(np.float64)

    raw_ts, raw_values = raw_fetch()
    raw_ms = statistics.median(timed(raw_fetch) for _ in range(min(repeat, 3)))
    return {"readings": len(raw_ts), "max": raw_values.max(), "raw_ms": raw_ms}


def measure(channel_id: int, start: int, end: int, client, repeat: int, baseline: dict) -> dict:
    import orjson

    from collection.api.readings import JSON_OPTIONS
    from collection.services.query import query_series

    def service():
        (series,) = query_series([channel_id], start, end, MAX_POINTS)
        orjson.dumps(series.as_dict(), option=JSON_OPTIONS)
        return series

    def api():
        response = client.get(
            "/api/v1/samples/", {"channels": channel_id, "start": start, "end": end, "max_points": MAX_POINTS}
        )
        assert response.status_code == 200, response.content[:300]
        return response

    series = service()
    api()  # warm: connection, caches
    service_ms = statistics.median(timed(service) for _ in range(repeat))
    api_ms = statistics.median(timed(api) for _ in range(repeat))
    if series.source != "lttb":  # raw and tier answers keep the extremes exactly (LTTB keeps shapes)
        peak = series.max if series.source == "tier" else series.value
        assert peak.max() == baseline["max"], f"the {series.source} answer lost the range's maximum"
    return {
        "readings": baseline["readings"],
        "source": series.source + (f" {series.as_dict()['tier']}" if series.source == "tier" else ""),
        "points": len(series),
        "service_ms": service_ms,
        "api_ms": api_ms,
        "raw_ms": baseline["raw_ms"],
    }


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


if __name__ == "__main__":
    main()
