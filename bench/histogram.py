#!/usr/bin/env python
"""API time of ``/api/v1/histogram/`` over 10 million readings of one channel on PostgreSQL.

Uses bench/plot_page.py's channel (10,000,000 readings, one every 10 s: ~3 years, with rollup tiers),
loading it first when the database does not hold it. Measures in this process, through Django's test
client (URL routing, authentication, the permission gate, the view, orjson), median of --repeat:

* the histogram (80 bins) and the histogram over time (200 time slices x 60 bins) over the full range, a
  month and a day;
* as the baseline in the same run, ``/api/v1/samples/`` over the same full range at 1,280 points (what the
  plot page asks for its first drawing).

It prints the share of readings each answer counted exactly (the rest estimated within their tier
bucket's min..max), how far the month's estimate is from numpy's histogram of its raw readings, and the
goal (histogram of 10 M readings over the full range under 200 ms). No assertion.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/daqbroker_plot_bench .venv/bin/python bench/histogram.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DAY_US = 86_400_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/daqbroker_plot_bench"),
    )
    args = parser.parse_args()
    os.environ.update(
        DATABASE_URL=args.database_url,
        DJANGO_SETTINGS_MODULE="daqbroker_site.settings",
        DAQBROKER_DEBUG="false",
        DAQBROKER_SECRET_KEY="histogram-bench-" + "x" * 60,
        DAQBROKER_DATA_DIR=tempfile.mkdtemp(prefix="histogram-bench-"),
        DAQBROKER_ALLOWED_HOSTS="testserver",
        DAQBROKER_SECURE_SSL_REDIRECT="false",
    )
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "bench"))
    from plot_page import ensure_database, load_readings

    ensure_database(args.database_url)
    import django

    django.setup()
    from django.test import Client

    owner, channel, first, last = load_readings(args.readings)
    client = Client()
    client.force_login(owner)
    end = last + 1

    def timed(path: str, query: dict) -> tuple[float, dict]:
        times, body = [], {}
        for _ in range(args.repeat + 1):
            started = time.perf_counter()
            response = client.get(path, query)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.content[:300]
            body = response.json()
        return statistics.median(times[1:]), body  # the first request warms the process (not counted)

    ranges = {
        "full range": (first, end),
        "a month": (end - 30 * DAY_US, end),
        "a day": (end - 200 * DAY_US, end - 199 * DAY_US),
    }
    rows = []
    base_ms, base = timed("/api/v1/samples/", {"channels": channel.pk, "start": first, "end": end, "max_points": 1280})
    for name, (a, b) in ranges.items():
        for kind, extra in (("histogram", {"bins": 80}), ("over time", {"bins": 60, "time_bins": 200})):
            ms, body = timed("/api/v1/histogram/", {"channels": channel.pk, "start": a, "end": b, **extra})
            rows.append((f"{kind}, {name}", ms, body["histograms"][0]))  # one channel: one histogram
    print(
        f"\n/api/v1/histogram/ on {args.readings:,} readings of one channel (PostgreSQL, in-process test client, "
        f"median of {args.repeat}; a shared 2-core machine under load from other sessions: figures are noisy)"
    )
    print(f"{'what':<26} {'API time':>10} {'vs samples':>11} {'readings':>12} {'exact':>7}  counted from")
    print(f"{'samples, full range':<26} {base_ms:>7.0f} ms {1:>10.2f}x {'':>12} {'':>7}  {base['series'][0]['source']}")
    for name, ms, body in rows:
        share = f"{body['exact']:.1%}"
        print(f"{name:<26} {ms:>7.0f} ms {ms / base_ms:>10.2f}x {body['total']:>12,} {share:>7}  {body['source']}")
    # How close the estimate is: the month's histogram against numpy's over every raw reading of it.
    import numpy as np

    from collection.services.query import fetch_raw

    a, b = ranges["a month"]
    month = next(body for name, _, body in rows if name == "histogram, a month")
    raw = fetch_raw(channel.pk, a, b)
    exact, _ = np.histogram(raw["value"], bins=np.array(month["edges"]))
    error = np.abs(np.array(month["counts"]) - exact).sum() / max(1, exact.sum())
    print(f"the month's histogram vs numpy over its {len(raw['value']):,} raw readings: L1 error {error:.1%} of them")
    print("goal: the histogram of the full range under 200 ms of API time")


if __name__ == "__main__":
    main()
