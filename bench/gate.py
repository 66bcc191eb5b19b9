#!/usr/bin/env python
"""The permission gate's SQL shapes, query by query, for a user who sees few instruments and one who sees many.

Builds one site of N instruments x 10 channels (``--size``, 10,000 by default; ``instruments.tests.many_things``),
a **guest** who may see 5 of them (the last five in name order, granted directly) and a **collaborator** who may
see N/2 (half granted to her, half to her group), then times each gated query of the busiest pages (the first
page of the API's channel and source lists, the channel picker's first page and a search, the alarms page and
its count) written three ways:

* ``subquery``: ``instrument IN (SELECT id FROM instrument WHERE owner = u OR id IN (grants) OR ...)`` (the gate
  before 2026-12-07);
* ``row by row``: ``owner = u OR instrument IN (grants) OR instrument IN (group grants)`` on the rows' own
  instrument column (today's beyond LISTED_UP_TO instruments);
* ``ids``: ``instrument IN (1, 2, 3, ...)``, her instruments' ids read first (today's up to LISTED_UP_TO);

and the gate as ``accounts.permissions.restrict`` writes it now (``now``, its look at her instruments
included), beside the same query for an administrator (no gate: the baseline, measured in the same run).
Milliseconds of the statement alone, best of ``--repeat`` (PostgreSQL: ``EXPLAIN ANALYZE``'s execution time).

    .venv/bin/python bench/gate.py                                      # SQLite, in a temporary folder
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/daqbroker_gate_bench .venv/bin/python bench/gate.py
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10_000, help="number of instruments")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    args = parser.parse_args()
    sys.path[:0] = [str(REPO / "bench"), str(REPO), str(REPO / "client_agent")]
    from _common import recreate_database, server_env

    env = server_env(Path(tempfile.mkdtemp(prefix="daqbroker-gate-")), args.database_url or None)
    os.environ.clear()
    os.environ.update(env)
    if args.database_url:
        recreate_database(args.database_url)
    run(args.size, args.repeat)


def run(size: int, repeat: int) -> None:
    import logging

    import django

    django.setup()
    logging.disable(logging.WARNING)
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command
    from django.db import connection

    from accounts import permissions
    from collection.alarms.models import AlarmEvent
    from collection.services.planner import refresh_planner_statistics
    from instruments.models import Channel, DataSource
    from instruments.search import channels_matching
    from instruments.tests.many_things import build_things, grant_view

    call_command("migrate", verbosity=0)
    owner = User.objects.create_user("owner-gate", password=None)
    guest = User.objects.create_user("guest-gate", password=None)
    collaborator = User.objects.create_user("carol-gate", password=None)
    lab = Group.objects.create(name="gate lab")
    collaborator.groups.add(lab)
    started = time.perf_counter()
    ids = build_things(size, owner, prefix="g")
    grant_view(ids[-5:], user=guest)
    grant_view(ids[: size // 4], user=collaborator)
    grant_view(ids[size // 4 : size // 2], group=lab)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    else:
        refresh_planner_statistics()
    print(
        f"engine: {connection.vendor}; {size:,} instruments, {size * 10:,} channels (built in "
        f"{time.perf_counter() - started:.1f} s); best of {repeat}; milliseconds of the statement alone"
    )

    def subquery(queryset, user, path):
        return queryset.filter(**{f"{path}__in": permissions.instruments_for(user).values("pk")})

    def row_by_row(queryset, user, path):
        return queryset.filter(permissions._grant_filter(user, permissions.VIEW, path))

    def listed(queryset, user, path):
        return queryset.filter(**{f"{path}__in": list(permissions.instruments_for(user).values_list("pk", flat=True))})

    def now(queryset, user, path):
        return permissions.restrict(queryset, user)

    def timed(queryset, count: bool = False) -> float:
        if count:
            queryset = queryset.order_by().values("pk")[:1001]
        sql, params = queryset.query.sql_with_params()
        if count:
            sql = f"SELECT COUNT(*) FROM ({sql}) counted"
        best = float("inf")
        with connection.cursor() as cursor:
            for _ in range(repeat):
                if connection.vendor == "postgresql":
                    cursor.execute("EXPLAIN (ANALYZE, TIMING OFF) " + sql, params)
                    plan = "\n".join(row[0] for row in cursor.fetchall())
                    best = min(best, float(re.search(r"Execution Time: ([\d.]+)", plan).group(1)))
                else:
                    started = time.perf_counter()
                    cursor.execute(sql, params)
                    cursor.fetchall()
                    best = min(best, (time.perf_counter() - started) * 1000)
        return best

    def look(user) -> float:
        best = float("inf")
        for _ in range(repeat):
            started = time.perf_counter()
            permissions._few_instruments(user, permissions.VIEW, "default")
            best = min(best, (time.perf_counter() - started) * 1000)
        return best

    active = AlarmEvent.objects.filter(cleared_at__isnull=True)
    queries = {
        "API channels, first page": (
            Channel.objects.select_related("instrument").order_by("instrument__slug", "slug"),
            "instrument",
            100,
        ),
        "API sources, first page": (
            DataSource.objects.select_related("instrument").order_by("instrument__slug", "name"),
            "instrument",
            100,
        ),
        "channel picker, first page": (
            Channel.objects.select_related("instrument").order_by("instrument__name", "name", "id"),
            "instrument",
            21,
        ),
        "channel picker, q=hPa 0004": (
            Channel.objects.filter(channels_matching(["hPa", "0004"]))
            .select_related("instrument")
            .order_by("instrument__name", "name", "id"),
            "instrument",
            21,
        ),
        "active alarms, first page": (
            active.select_related("channel__instrument", "rule").order_by("-raised_at", "-id"),
            "channel__instrument",
            50,
        ),
        "active alarms, count to 1,000": (active, "channel__instrument", None),
    }
    shapes = {"subquery": subquery, "row by row": row_by_row, "ids": listed, "now": now}
    print(f"\n{'query':32} {'who':15} {'admin':>7} " + " ".join(f"{s:>11}" for s in shapes) + "   now / admin")
    for name, (queryset, path, page) in queries.items():
        baseline = timed(queryset[:page] if page else queryset, count=page is None)
        for who, user in (("guest (5)", guest), (f"collab ({size // 2:,})", collaborator)):
            cells, expected = [], None
            for shape in shapes.values():
                gated = shape(queryset, user, path)
                rows = list(gated[:page].values_list("pk", flat=True)) if page else gated.count()
                if expected is None:
                    expected = rows
                assert rows == expected, f"{name}: the shapes disagree for {who}"
                cells.append(timed(gated[:page] if page else gated, count=page is None))
            print(
                f"{name:32} {who:15} {baseline:7.2f} "
                + " ".join(f"{c:11.2f}" for c in cells)
                + f"   {cells[-1] / max(baseline, 0.01):6.1f}x"
            )
    print(
        f"\nthe look at her instruments (now's first query): guest {look(guest):.2f} ms, "
        f"collab {look(collaborator):.2f} ms"
    )


if __name__ == "__main__":
    main()
