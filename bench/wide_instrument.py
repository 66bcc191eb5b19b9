#!/usr/bin/env python
"""The home page and an instrument's page as one instrument's channels grow (issue 22: an instrument may have
thousands of channels, a detector or a rig with a channel per sensor).

Builds, in one fresh database, a site of 24 instruments x 10 channels (a full home page), then grows its first
instrument to C channels (``--channels``: 100, two full pages of them on its page, then 1,000 and 5,000), each
channel with a reading every 10 minutes over the last day (its sparkline's day) and the rollup tiers brought up
to date, as the worker would. At each C it measures, in this process through Django's test client (no network,
one thread), as an administrator: the home page, the instrument's page, its second page of channels and a
search among them: median time of ``--repeat`` requests after one warm-up, the number of queries and the
response size. The baseline is the
same measurement at the first C, in the same run: the last columns print each figure's ratio to it (the goal
of issue 22: a page's time, queries and size do not grow with what the site holds).

    .venv/bin/python bench/wide_instrument.py                         # SQLite, in a temporary folder
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/daqbroker_wide_bench .venv/bin/python bench/wide_instrument.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DAY_US = 86_400 * 1_000_000
STEP_US = 600 * 1_000_000  # a reading every 10 minutes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--channels", default="100,1000,5000", help="the first instrument's channels, comma-separated (100: two pages)"
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.channels.split(","))
    sys.path[:0] = [str(REPO / "bench"), str(REPO), str(REPO / "client_agent")]
    from _common import recreate_database, server_env

    env = server_env(Path(tempfile.mkdtemp(prefix="daqbroker-wide-")), args.database_url or None)
    env["DAQBROKER_ALLOWED_HOSTS"] = "testserver"  # Django's test client
    os.environ.clear()
    os.environ.update(env)
    if args.database_url:
        recreate_database(args.database_url)
    run(sizes, args.repeat)


def run(sizes: list[int], repeat: int) -> None:
    import logging

    import django

    django.setup()
    logging.disable(logging.WARNING)
    import numpy as np
    from _common import page_figures, print_ratios
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    from collection.services.ingest import SampleBatch, ingest_samples
    from collection.services.rollups import refresh_rollups
    from instruments.choices import ChannelKind
    from instruments.models import Channel, Instrument
    from instruments.tests.many_things import UNITS, build_things

    call_command("migrate", verbosity=0)
    call_command("collectstatic", interactive=False, verbosity=0)  # DEBUG off: pages name hashed files
    admin = User.objects.create_superuser("admin-wide", password=None)
    client = Client()
    client.force_login(admin)
    ids = build_things(24, User.objects.create_user("owner-wide", password=None), prefix="wide")
    wide = Instrument.objects.get(pk=ids[0])
    source = wide.sources.get()
    now = time.time_ns() // 1000
    times = np.arange(now - DAY_US, now, STEP_US, dtype=np.int64)

    def grow(to: int) -> None:
        have = wide.channels.count()
        made = Channel.objects.bulk_create(
            Channel(
                instrument=wide,
                source=source,
                name=f"sensor {i:05d}",
                slug=f"sensor-{i:05d}",
                kind=ChannelKind.NUMERIC,
                units=UNITS[i % len(UNITS)],
                source_field=f"s{i}",
            )
            for i in range(have, to)
        )
        pks = [c.pk for c in made] or list(wide.channels.values_list("pk", flat=True))
        channel = np.repeat(np.array(pks, dtype=np.int64), len(times))
        ts = np.tile(times, len(pks))
        ingest_samples(SampleBatch(channel=channel, ts=ts, value=np.sin(ts / 3e9) + channel % 7))
        while refresh_rollups(max_channels=1000).remaining:
            pass

    def measure(url: str) -> dict:
        figures = page_figures(client, url, repeat)
        assert figures["status"] == 200, (url, figures["status"])
        return figures

    page = f"/instruments/{wide.slug}/"
    urls = {
        "home": "/",
        "instrument page": page,
        "its channels, page 2": f"{page}?channel_page=2",
        "its channels, search": f"{page}?channels=sensor+0000",
    }
    print(f"engine: {connection.vendor}; median of {repeat} requests after a warm-up; in-process test client")
    results: dict[int, dict[str, dict]] = {}
    for size in sizes:
        started = time.perf_counter()
        grow(size)
        print(
            f"\n--- the first of 24 instruments with {size:,} channels, each read every 10 minutes for a day "
            f"(built in {time.perf_counter() - started:.1f} s) ---"
        )
        row = {name: measure(url) for name, url in urls.items()}
        results[size] = row
        base = results[sizes[0]]
        print_ratios(row, base, sizes[0], width=24)


if __name__ == "__main__":
    main()
