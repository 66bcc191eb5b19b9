"""SQLite's planner statistics, kept by the hourly task (collection.services.planner): with them, the channel
picker's first page walks the instruments' name index and stops, instead of sorting every channel."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.db import connection

from collection.tasks import refresh_planner_statistics_task
from daqbroker_site.env import RANDOM_PAGE_COST
from instruments.models import Channel
from instruments.tests.factories import make_user
from instruments.tests.many_things import build_things
from pages.reading_views import visible_channels

pytestmark = pytest.mark.django_db


def sqlite_plan(queryset) -> str:
    sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
        return "\n".join(str(row[-1]) for row in cursor.fetchall())


def test_the_hourly_task_refreshes_sqlite_statistics_and_leaves_the_other_engines_alone():
    assert settings.CELERY_BEAT_SCHEDULE["refresh-planner-statistics"]["task"] == refresh_planner_statistics_task.name
    build_things(20, make_user(), channels=3)
    refreshed = refresh_planner_statistics_task.apply().get()
    assert refreshed is (connection.vendor == "sqlite")
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("SELECT tbl FROM sqlite_stat1")
            tables = {table for (table,) in cursor.fetchall()}
        assert {Channel._meta.db_table, "instruments_instrument"} <= tables


def test_with_statistics_the_first_channels_in_name_order_read_no_channel_table_scan():
    if connection.vendor != "sqlite":
        pytest.skip("PostgreSQL and MariaDB keep their statistics themselves")
    admin = make_user(is_superuser=True, is_staff=True)
    build_things(300, make_user(), channels=10)
    first_page = visible_channels(admin).order_by("instrument__name", "name", "pk")[:21]
    refresh_planner_statistics_task.apply()
    plan = sqlite_plan(first_page)
    assert "SCAN instruments_channel" not in plan and "TEMP B-TREE FOR ORDER BY" not in plan, plan


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's planner setting")
def test_postgresql_connections_price_random_page_reads_as_settings_say():
    """The server's default (4, for spinning disks) made the planner scan 100,000 channels rather than probe
    a few hundred by index (docs/performance.md#planner-costs): every connection of ours sets its own."""
    with connection.cursor() as cursor:
        cursor.execute("SHOW random_page_cost")
        (value,) = cursor.fetchone()
    assert float(value) == RANDOM_PAGE_COST != 4
