#!/usr/bin/env python
"""Memory and time of exact percentiles over one channel's raw readings, on PostgreSQL.

Stores --readings readings (default 5 M) of one channel through ``ingest_samples`` and brings the
rollup tiers up to date (as the worker does after an ingest), then, each in a
fresh process so that its peak RSS is its own:

* **baseline**: the former way, every value of the range fetched into one array (chunks concatenated)
  and ``pandas.Series.quantile``, as ``range_statistics`` did before the bounded version;
* **bounded**: ``range_statistics(..., percentiles=...)`` as it is now (exact selection in passes over
  chunks of 500,000 readings);
* **fetch only**: the same chunks read once and dropped, for the cost of one pass.

Printed per case: the peak RSS above the process's RSS just before the call (VmHWM delta, from
/proc/self/status), the wall time, and whether the bounded answers equal the baseline's bit for bit.

    .venv/bin/python bench/percentiles.py                     # 5 M readings
    .venv/bin/python bench/percentiles.py --readings 1000000   # a quick run

The database (default postgres://postgres@127.0.0.1:5432/daqbroker_bench_pct, or BENCH_POSTGRESQL_URL)
is dropped and created again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from _common import recreate_database, server_env  # noqa: E402

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/daqbroker_bench_pct"
PERCENTILES = [1, 5, 25, 50, 75, 95, 99]
SECOND = 1_000_000
T0 = 1_704_067_200 * SECOND


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=5_000_000)
    parser.add_argument("--child", choices=["load", "baseline", "bounded", "fetch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    url = os.environ.get("BENCH_POSTGRESQL_URL", DEFAULT_URL)
    recreate_database(url)
    with tempfile.TemporaryDirectory() as tmp:
        env = server_env(Path(tmp), url)

        def run(case: str) -> dict:
            argv = [sys.executable, __file__, "--child", case, "--readings", str(args.readings)]
            out = subprocess.run(argv, env=env, cwd=REPO, check=True, capture_output=True, text=True).stdout
            return json.loads(out.strip().splitlines()[-1])

        load = run("load")
        print(f"Exact percentiles {PERCENTILES} of {args.readings:,} readings of one channel, PostgreSQL")
        print(f"(loaded in {load['seconds']:.1f} s; each case in a fresh process)")
        print(f"{'case':<11} {'peak RSS above start':>21} {'time s':>7} {'readings':>11}")
        results = {case: run(case) for case in ("baseline", "bounded", "fetch")}
        for case, r in results.items():
            print(f"{case:<11} {r['peak_mb']:>18.1f} MB {r['seconds']:>7.2f} {r['readings']:>11,}")
        base, bounded = results["baseline"], results["bounded"]
        print(
            f"bounded / baseline: memory {bounded['peak_mb'] / base['peak_mb']:.2f}x, "
            f"time {bounded['seconds'] / base['seconds']:.2f}x; "
            f"answers identical: {bounded['percentiles'] == base['percentiles']}"
        )
        print(json.dumps({"readings": args.readings, **results}))


def vm(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    Path("/proc/self/clear_refs").write_text("5")


def child(args) -> None:
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    import numpy as np

    from instruments.models import Channel, Instrument

    if args.child == "load":
        from django.contrib.auth.models import User
        from django.core.management import call_command

        from collection.services.ingest import SampleBatch, ingest_samples
        from collection.services.rollups import refresh_rollups

        call_command("migrate", verbosity=0)
        owner = User.objects.create_user("bench")
        channel = Channel.objects.create(
            instrument=Instrument.objects.create(name="Bench", slug="bench", owner=owner), name="s", slug="s"
        )
        rng = np.random.default_rng(5)
        started = time.perf_counter()
        for offset in range(0, args.readings, 1_000_000):
            n = min(1_000_000, args.readings - offset)
            ts = T0 + (offset + np.arange(n, dtype=np.int64)) * SECOND
            values = np.round(20 + 5 * np.sin((offset + np.arange(n)) / 3600) + rng.normal(0, 0.2, n), 3)
            ingest_samples(SampleBatch(np.full(n, channel.pk), ts, values))
        while refresh_rollups(max_rows=2_000_000).remaining:  # as the worker does after an ingest
            pass
        print(json.dumps({"seconds": time.perf_counter() - started}))
        return

    from collection.services.query import iter_raw
    from collection.services.statistics import range_statistics

    channel = Channel.objects.get(slug="s")
    end = T0 + args.readings * SECOND
    channel.instrument.refresh_from_db()  # connect and warm up before the measurement
    reset_peak()
    start_rss = vm("VmRSS")
    started = time.perf_counter()
    answers: list[float] = []
    if args.child == "baseline":
        import pandas as pd

        chunks = [c["value"] for c in iter_raw(channel.pk, T0, end, include_flagged=False, chunk_rows=1_000_000)]
        values = np.concatenate(chunks)
        n = len(values)
        answers = [float(q) for q in pd.Series(values).quantile([p / 100 for p in PERCENTILES])]
    elif args.child == "bounded":
        (stats,) = range_statistics([channel.pk], T0, end, percentiles=PERCENTILES)
        n = stats.count
        answers = [stats.percentiles[f"p{p}"] for p in PERCENTILES]
    else:
        from collection.services.statistics import PERCENTILE_CHUNK_ROWS

        chunks = iter_raw(channel.pk, T0, end, include_flagged=False, chunk_rows=PERCENTILE_CHUNK_ROWS)
        n = sum(len(c["value"]) for c in chunks)
    seconds = time.perf_counter() - started
    peak = vm("VmHWM") - start_rss
    print(json.dumps({"peak_mb": peak, "seconds": seconds, "readings": n, "percentiles": answers}))


if __name__ == "__main__":
    main()
