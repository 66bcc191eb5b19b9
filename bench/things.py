#!/usr/bin/env python
"""Pages, API lists, the admin and the dispatcher as the number of *things* grows (issue 22).

Builds, in one fresh database, a site of N instruments x 10 channels x 1 file source (N = 100, 1,000,
5,000 by default; ``--sizes 100,1000,5000,10000`` for the issue's goal), growing it between steps. At each
size it measures, in this process through Django's test client (no network, one thread):

* every collaborator page and API list, as a **superuser**, as a **collaborator** who sees half of the
  instruments (N/2 grants: half granted to her directly, half to her group) and as a **guest** who sees five
  (granted directly, the last five in name order: a page in name order must find them at the end): median
  time of ``--repeat`` requests after one warm-up, the number of queries, the response size;
* the admin's main lists (instruments, channels, sources) and the channel form's instrument autocomplete;
* one **dispatcher pass** (``claim_due_sources`` with every source due): time and number of queries; a pass
  claims at most ``DAQBROKER_DISPATCH_BATCH`` sources (the next pass follows at once while batches are full).

On PostgreSQL the site's tables are analysed after each build, as autovacuum would after a bulk load; on
SQLite the planner's statistics are refreshed as the hourly task does (``--no-planner-statistics``: not).

The baseline is the same measurement at the first size, in the same run: the last columns print each
figure's ratio to it (the goals: under 300 ms and 300 KB at any size, at most 1.5 times the time at 100; the
dispatcher under 100 ms in at most 3 queries). Timings on a shared machine are noisy: compare ratios.

    .venv/bin/python bench/things.py                                   # SQLite, in a temporary folder
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/daqbroker_things_bench .venv/bin/python bench/things.py
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,5000", help="numbers of instruments, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument(
        "--no-planner-statistics",
        action="store_true",
        help="SQLite: measure without the planner statistics the hourly task keeps (a site it has not run on)",
    )
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    data_dir = Path(tempfile.mkdtemp(prefix="daqbroker-things-"))
    sys.path[:0] = [str(REPO / "bench"), str(REPO), str(REPO / "client_agent")]
    from _common import recreate_database, server_env

    env = server_env(data_dir, args.database_url or None)
    env["DAQBROKER_ALLOWED_HOSTS"] = "testserver"  # Django's test client
    os.environ.clear()
    os.environ.update(env)
    if args.database_url:
        recreate_database(args.database_url)
    run(sizes, args.repeat, planner_statistics=not args.no_planner_statistics)


def run(sizes: list[int], repeat: int, *, planner_statistics: bool = True) -> None:
    import logging

    import django

    django.setup()
    logging.disable(logging.WARNING)
    from _common import page_figures, print_ratios
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from accounts.models import InstrumentUserPermission
    from collection.services.collect import claim_due_sources
    from collection.services.planner import refresh_planner_statistics
    from instruments.models import DataSource, Instrument
    from instruments.tests.many_things import build_things, grant_view

    call_command("migrate", verbosity=0)
    call_command("collectstatic", interactive=False, verbosity=0)  # DEBUG off: pages name hashed files
    superuser = User.objects.create_superuser("admin-bench", password=None)
    collaborator = User.objects.create_user("carol-bench", password=None)
    owner = User.objects.create_user("owner-bench", password=None)
    lab = Group.objects.create(name="bench lab")
    collaborator.groups.add(lab)
    guest = User.objects.create_user("guest-bench", password=None)
    clients = {}
    for name, user in (("superuser", superuser), ("collaborator", collaborator), ("guest", guest)):
        clients[name] = Client()
        clients[name].force_login(user)

    def dispatcher() -> dict:
        times, queries = [], 0
        for _ in range(repeat):
            DataSource.objects.update(next_run_at=None)
            with CaptureQueriesContext(connection) as captured:
                started = time.perf_counter()
                claimed = claim_due_sources()
                times.append((time.perf_counter() - started) * 1000)
            queries = len(captured)
        return {"ms": statistics.median(times), "queries": queries, "kb": 0.0, "status": len(claimed)}

    results: dict[int, dict[str, dict]] = {}
    built = 0
    print(f"engine: {connection.vendor}; median of {repeat} requests after a warm-up; in-process test client")
    for size in sizes:
        started = time.perf_counter()
        ids = build_things(size - built, owner, prefix=f"s{size}")
        half = len(ids) // 2
        grant_view(ids[: half // 2], user=collaborator)
        grant_view(ids[half // 2 : half], group=lab)
        InstrumentUserPermission.objects.filter(user=guest).delete()
        grant_view(ids[-5:], user=guest)  # the guest's five: the last ones in name order
        built = size
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:  # what autovacuum does after a bulk load: the planner's statistics
                cursor.execute("ANALYZE")
        elif planner_statistics:
            refresh_planner_statistics()  # SQLite: what the hourly task does (collection.services.planner)
        print(
            f"\n--- {size:,} instruments, {size * 10:,} channels, {size:,} sources (built in "
            f"{time.perf_counter() - started:.1f} s; the collaborator sees {size // 2:,}) ---"
        )
        slug = f"s{sizes[0]}-00001"
        urls = {
            "home": "/",
            "home ?status=silent": "/?status=silent",
            "home ?q=00042": "/?q=00042",
            "plot": "/plot/",
            "plot ?instrument=": f"/plot/?instrument={slug}",
            "channel search q=hPa 0004": "/plot/channels/?q=hPa+0004",
            "channel search (empty)": f"/plot/channels/?instrument={slug}",
            "alarms": "/alarms/",
            "dashboards": "/dashboards/",
            "instrument page": f"/instruments/{slug}/",
            "API instruments": "/api/v1/instruments/",
            "API channels": "/api/v1/channels/",
            "API sources": "/api/v1/sources/",
        }
        admin_urls = {
            "admin instruments": "/admin/instruments/instrument/",
            "admin channels": "/admin/instruments/channel/",
            "admin sources": "/admin/instruments/datasource/",
            "admin channel form": "/admin/instruments/channel/add/",
            "admin autocomplete": "/admin/autocomplete/?app_label=instruments&model_name=channel"
            "&field_name=instrument&term=00042",
        }
        row: dict[str, dict] = {}
        # Her instrument whose page is measured: one of her five in the state of the others' (index 1: recent
        # readings, a healthy source, no alarm; many_things spreads states by index), the same at every size.
        like_the_first = next((i for i in range(len(ids) - 5, len(ids)) if all(i % k for k in (3, 7, 11, 13))), -1)
        guest_slug = Instrument.objects.get(pk=ids[like_the_first]).slug
        for who, client in clients.items():
            for name, url in urls.items():
                if who == "guest":  # her own instrument where a page names one
                    url = url.replace(slug, guest_slug)
                row[f"{who}: {name}"] = page_figures(client, url, repeat)
        for name, url in admin_urls.items():
            row[f"superuser: {name}"] = page_figures(clients["superuser"], url, repeat)
        row["dispatcher pass"] = dispatcher()
        results[size] = row
        base = results[sizes[0]]

        def note(name: str, figures: dict, size: int = size) -> str:
            if name == "dispatcher pass":
                return f"  ({figures['status']:,} claimed of {size:,} due)"
            return f"  (HTTP {figures['status']})" if figures["status"] != 200 else ""

        print_ratios(row, base, sizes[0], width=44, note=note)
    worst = max(sizes)
    slow = {k: v["ms"] for k, v in results[worst].items() if v["ms"] > 300}
    big = {k: round(v["kb"]) for k, v in results[worst].items() if v["kb"] > 300}
    print(f"\nat {worst:,}: over 300 ms: {slow or 'none'}; over 300 KB: {big or 'none'}")


if __name__ == "__main__":
    main()
