"""Node health: an agent's heartbeat figures become readings of its health instrument (created at the first
heartbeat, owned like the agent), through the one write path, with two default alarm rules."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from accounts import permissions, services
from accounts.models import Agent, AgentHealth
from collection.alarms import evaluate
from collection.alarms.models import AlarmEvent, AlarmRule
from collection.models import Sample
from collection.services import ingest
from collection.tests.test_small_senders import BUDGET, FRESHNESS_UPDATE
from daqbroker_agent.parsing import datetime_to_us, now_us
from instruments.models import Instrument
from instruments.tests.factories import make_instrument, make_user

pytestmark = pytest.mark.django_db

HEALTH = {
    "cpu_load": 0.25,
    "memory_available_bytes": 4_000_000_000,
    "memory_used_percent": 61.5,
    "spool_disk_free_bytes": 1_000_000,
    "spool_disk_used_percent": 97.5,
    "spool_depth": 1234,
    "spool_oldest_age_seconds": 42.0,
}


def beat(token: str, **body):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client.post("/api/v1/agent/heartbeat/", body, format="json")


@pytest.fixture
def roof_pc():
    owner = make_user("olga")
    agent, token = services.create_agent(owner=owner, name="roof-pc", instruments=[make_instrument(owner)])
    return owner, agent, token


def values(instrument: Instrument) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    for slug, value in (
        Sample.objects.filter(channel__instrument=instrument).order_by("ts").values_list("channel__slug", "value")
    ):
        found.setdefault(slug, []).append(value)
    return found


def test_heartbeat_figures_are_stored_as_readings_of_the_agents_health_instrument(roof_pc):
    owner, agent, token = roof_pc
    response = beat(token, spool_depth=1234, clock_offset=-0.25, heartbeat_seconds=10, health=HEALTH)
    assert response.status_code == 200, response.content
    agent.refresh_from_db()
    instrument = agent.health_instrument
    assert instrument is not None and instrument.owner == owner
    assert values(instrument) == {
        "cpu_load": [0.25],
        "memory_available": [4e9],
        "memory_used": [61.5],
        "spool_disk_free": [1e6],
        "spool_disk_used": [97.5],
        "spool_depth": [1234.0],
        "spool_oldest_age": [42.0],
        "clock_offset": [-0.25],
    }
    assert set(instrument.channels.values_list("expected_interval_seconds", flat=True)) == {10}

    # A second heartbeat adds to the same instrument; figures the agent could not read are left out.
    assert (
        beat(token, spool_depth=0, heartbeat_seconds=10, health={**HEALTH, "memory_used_percent": None}).status_code
        == 200
    )
    assert Instrument.objects.filter(health_of_agent=agent).count() == 1
    later = values(instrument)
    assert later["spool_depth"] == [1234.0, 0.0] and later["memory_used"] == [61.5]

    # Visible like the agent: its owner, not a stranger.
    assert permissions.has_perm(owner, permissions.VIEW, instrument)
    assert not permissions.has_perm(make_user("stranger"), permissions.VIEW, instrument)


def test_an_old_agent_without_health_figures_still_gets_spool_depth_and_clock(roof_pc):
    _, agent, token = roof_pc
    assert beat(token, spool_depth=7, clock_offset=1.5).status_code == 200
    agent.refresh_from_db()
    assert values(agent.health_instrument) == {"spool_depth": [7.0], "clock_offset": [1.5]}


def test_default_rules_warn_of_a_nearly_full_spool_disk_and_a_silent_agent(roof_pc):
    _, agent, token = roof_pc
    assert beat(token, spool_depth=3, heartbeat_seconds=10, health=HEALTH).status_code == 200
    agent = Agent.objects.get(pk=agent.pk)
    instrument = agent.health_instrument
    disk, silent = (
        AlarmRule.objects.get(instrument=instrument, kind="above"),
        AlarmRule.objects.get(instrument=instrument, kind="stale"),
    )
    assert disk.threshold == 90 and [c.slug for c in disk.channels.all()] == ["spool_disk_used"]
    assert [c.slug for c in silent.channels.all()] == ["spool_depth"]

    evaluate.evaluate_channels(instrument.channels.values_list("pk", flat=True))
    assert AlarmEvent.objects.filter(rule=disk, cleared_at=None).count() == 1  # 97.5 % > 90 %

    evaluate.check_periodic(now=now_us() + 31 * 1_000_000)  # three heartbeats (10 s) missed
    [event] = AlarmEvent.objects.filter(rule=silent)
    assert event.channel.slug == "spool_depth" and event.cleared_at is None


def test_health_figures_out_of_range_are_refused_with_the_field(roof_pc):
    _, _, token = roof_pc
    response = beat(token, health={"memory_used_percent": 250})
    assert response.status_code == 400
    assert "memory_used_percent" in response.json()["health"]


# A heartbeat's own statements beside the write of its readings: the health row (one UPDATE, which also
# checks that none of the agent's sources is still marked as refused by it: then there is no mark to clear)
# and the health channels (one SELECT, handed to the write, whose budget counts a channel look-up: hence
# none of its own). The write's statements are the ingest endpoint's, the instrument's freshness included:
# a real agent's heartbeats are seconds apart, so each writes it. A thousand agents beating every ten
# seconds send a hundred heartbeats a second (bench/many_agents.py; timed by bench/ingest_small.py).
HEARTBEAT_OWN = 1


@pytest.mark.django_db(transaction=True)
def test_a_heartbeat_after_the_first_costs_one_statement_beside_the_write_of_its_figures(roof_pc):
    _, agent, token = roof_pc
    assert beat(token, spool_depth=1, heartbeat_seconds=10, health=HEALTH).status_code == 200  # makes the instrument
    ports = [{"device": "/dev/ttyUSB0"}]
    assert beat(token, spool_depth=2, heartbeat_seconds=10, serial_ports=ports).status_code == 200

    ingest.forget_written_freshness()  # as after the seconds between two real heartbeats
    with CaptureQueriesContext(connection) as queries:
        response = beat(token, spool_depth=3, heartbeat_seconds=10, hostname="roof", health=HEALTH)
    assert response.status_code == 200, response.content
    statements = [q["sql"].replace("`", '"') for q in queries.captured_queries if not q["sql"].startswith("BEGIN")]
    expected = HEARTBEAT_OWN + BUDGET[connection.vendor] + FRESHNESS_UPDATE
    assert len(statements) == expected, "\n".join(s[:150] for s in statements)
    assert statements[0].startswith('UPDATE "accounts_agenthealth"'), statements[0]
    selects = [s for s in statements if s.startswith("SELECT")]
    assert len(selects) == 1 and 'FROM "instruments_channel"' in selects[0], statements
    assert not [s for s in statements if s.startswith('UPDATE "instruments_datasource"')], statements

    # Everything still kept: the row (the serial ports of the heartbeat before, not sent again), the readings.
    health = AgentHealth.objects.get(agent=agent)
    assert (health.spool_depth, health.hostname, health.heartbeat_seconds) == (3, "roof", 10)
    assert [port["device"] for port in health.serial_ports] == ["/dev/ttyUSB0"]
    agent.refresh_from_db()
    assert values(agent.health_instrument)["spool_depth"] == [1.0, 2.0, 3.0]
    assert agent.health_instrument.last_reading_ts == datetime_to_us(health.last_heartbeat)


@pytest.mark.django_db(transaction=True)
def test_a_changed_heartbeat_interval_moves_the_health_channels_expected_interval(roof_pc):
    _, agent, token = roof_pc
    assert beat(token, spool_depth=1, heartbeat_seconds=10).status_code == 200
    assert beat(token, spool_depth=1, heartbeat_seconds=45).status_code == 200
    agent.refresh_from_db()
    assert set(agent.health_instrument.channels.values_list("expected_interval_seconds", flat=True)) == {45}


@pytest.mark.django_db(transaction=True)
def test_a_heartbeat_after_the_owner_deleted_the_health_channels_writes_nothing_and_fails_nothing(roof_pc):
    _, agent, token = roof_pc
    assert beat(token, spool_depth=1).status_code == 200
    agent.refresh_from_db()
    agent.health_instrument.channels.all().delete()
    assert beat(token, spool_depth=2).status_code == 200  # no channel: nothing to write, no error
    assert Instrument.objects.filter(health_of_agent=agent).count() == 1
    assert AgentHealth.objects.get(agent=agent).spool_depth == 2
