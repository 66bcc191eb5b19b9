"""The agent's central configuration and heartbeat endpoints, the DataSource.agent rules, and the admin's
health columns."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import agents, roles, services
from accounts.models import Agent, AgentHealth, ApiToken
from collection.choices import Origin
from collection.models import RejectedSample
from instruments.choices import ChannelKind, SourceKind
from instruments.models import DataSource
from instruments.tests.factories import make_channel, make_instrument, make_user

pytestmark = pytest.mark.django_db

SERIAL = {"collect": {"kind": "serial", "url": "loop://", "columns": ["time", "temp"]}}


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def station():
    owner = make_user("olga", is_staff=True)
    owner.groups.add(Group.objects.get(name=roles.OPERATORS))
    instrument = make_instrument(owner, slug="roof-station")
    agent, token = services.create_agent(owner=owner, name="roof-pc", instruments=[instrument])
    source = DataSource.objects.create(
        instrument=instrument, name="logger", kind=SourceKind.AGENT, agent=agent, config=SERIAL, interval_seconds=5
    )
    temp = make_channel(instrument, slug="temp", source=source, source_field="temp")
    return owner, instrument, agent, token, source, temp


def test_config_lists_the_agents_sources_with_validated_settings_and_channels(station):
    _, instrument, _, token, source, temp = station
    status = make_channel(instrument, slug="status", kind=ChannelKind.TEXT, source=source)
    response = bearer(token).get("/api/v1/agent/config/")
    assert response.status_code == 200
    body = response.json()
    assert body["agent"] == "roof-pc"
    assert response["ETag"] == f'"{body["version"]}"'
    [listed] = body["sources"]
    assert (listed["id"], listed["name"], listed["instrument"], listed["interval_seconds"]) == (
        source.id,
        "logger",
        "roof-station",
        5,
    )
    assert listed["collect"]["kind"] == "serial"
    assert listed["collect"]["baudrate"] == 9600  # defaults filled in
    assert listed["channels"] == [
        {"id": temp.id, "slug": "temp", "source_field": "temp", "kind": "numeric"},
        {"id": status.id, "slug": "status", "source_field": "", "kind": "text"},
    ]
    assert body["skipped"] == []


def test_config_leaves_out_what_the_agent_does_not_serve(station):
    owner, instrument, agent, token, _, _ = station
    other_agent, _ = services.create_agent(owner=owner, name="other-pc", instruments=[instrument])
    DataSource.objects.create(
        instrument=instrument, name="not-mine", kind=SourceKind.AGENT, agent=other_agent, config=SERIAL
    )
    DataSource.objects.create(
        instrument=instrument, name="paused", kind=SourceKind.AGENT, agent=agent, config=SERIAL, enabled=False
    )
    elsewhere = make_instrument(owner, slug="basement")
    DataSource.objects.create(instrument=elsewhere, name="unscoped", kind=SourceKind.AGENT, agent=agent, config=SERIAL)
    names = [s["name"] for s in bearer(token).get("/api/v1/agent/config/").json()["sources"]]
    assert names == ["logger"]  # "unscoped": the agent may not push to the basement, so it is not told of it
    instrument.active = False
    instrument.save()
    assert bearer(token).get("/api/v1/agent/config/").json()["sources"] == []


def test_config_is_not_modified_until_something_changes(station):
    _, _, _, token, source, temp = station
    client = bearer(token)
    etag = client.get("/api/v1/agent/config/")["ETag"]
    again = client.get("/api/v1/agent/config/", HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304
    assert again.content == b""
    assert again["ETag"] == etag
    assert client.get("/api/v1/agent/config/", HTTP_IF_NONE_MATCH=f'"other", W/{etag}').status_code == 304

    temp.source_field = "temperature"  # edited in the admin
    temp.save()
    changed = client.get("/api/v1/agent/config/", HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200
    assert changed["ETag"] != etag
    assert changed.json()["sources"][0]["channels"][0]["source_field"] == "temperature"

    etag = changed["ETag"]
    source.interval_seconds = 60
    source.save()
    assert client.get("/api/v1/agent/config/", HTTP_IF_NONE_MATCH=etag).status_code == 200


def test_a_source_saved_under_older_rules_is_reported_not_sent(station):
    _, _, _, token, source, _ = station
    # Bypass save()'s validation, as a row written before a rule existed would be.
    DataSource.objects.filter(pk=source.pk).update(config={"collect": {"kind": "serial", "url": "x", "baudrate": 7}})
    body = bearer(token).get("/api/v1/agent/config/").json()
    assert body["sources"] == []
    assert body["skipped"] == [{"id": source.id, "name": "logger", "error": "collect.baudrate: 7 is not one of " + (
        "50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, "
        "460800, 500000, 576000, 921600, 1000000"
    )}]  # fmt: skip


def test_only_agents_have_a_configuration_or_heartbeat(station):
    owner, *_ = station
    _, personal = services.create_personal_token(user=owner, name="script", scope="read_write")
    assert bearer(personal).get("/api/v1/agent/config/").status_code == 403
    assert bearer(personal).post("/api/v1/agent/heartbeat/", {}, format="json").status_code == 403
    assert APIClient().get("/api/v1/agent/config/").status_code == 401


def test_a_revoked_agent_is_refused(station):
    _, _, agent, token, _, _ = station
    services.revoke_agent(agent)
    response = bearer(token).get("/api/v1/agent/config/")
    assert response.status_code == 401
    assert bearer(token).post("/api/v1/agent/heartbeat/", {}, format="json").status_code == 401


def test_heartbeat_is_stored_and_answered_with_the_server_time(station):
    _, _, agent, token, _, _ = station
    before = timezone.now().timestamp()
    response = bearer(token).post(
        "/api/v1/agent/heartbeat/",
        {
            "version": "0.1.0",
            "hostname": "roof-pc.local",
            "spool_depth": 1234,
            "spool_capacity": 1_000_000,
            "last_error": "upload: server answered 503",
            "last_upload": "2026-11-27T10:00:00Z",
            "agent_time": before + 120,  # two minutes ahead
            "heartbeat_seconds": 10,
        },
        format="json",
    )
    assert response.status_code == 200, response.content
    assert before <= response.json()["server_time"] <= timezone.now().timestamp()
    health = AgentHealth.objects.get(agent=agent)
    assert (health.version, health.hostname, health.spool_depth, health.spool_capacity) == (
        "0.1.0",
        "roof-pc.local",
        1234,
        1_000_000,
    )
    assert health.last_error == "upload: server answered 503"
    assert health.heartbeat_seconds == 10
    assert 119 < health.clock_offset_seconds <= 120  # one-way estimate on the first heartbeat
    assert health.address == "127.0.0.1"

    # Later heartbeats carry the agent's own round-trip estimate, which wins.
    bearer(token).post("/api/v1/agent/heartbeat/", {"clock_offset": 0.25, "spool_depth": 0}, format="json")
    health.refresh_from_db()
    assert (health.clock_offset_seconds, health.spool_depth, health.last_error) == (0.25, 0, "")


def test_a_heartbeat_refusing_nothing_clears_a_refusal_mark_whatever_the_heartbeat_before_said(station):
    """The usual heartbeat skips clearing refusal marks when none of the agent's sources carries one; the
    database is asked, not the last heartbeat's list (a mark may outlive it: two heartbeats racing)."""
    _, instrument, agent, token, source, _ = station
    failing = DataSource.objects.create(
        instrument=instrument, name="other", kind=SourceKind.AGENT, agent=agent, config=SERIAL
    )
    assert bearer(token).post("/api/v1/agent/heartbeat/", {"spool_depth": 1}, format="json").status_code == 200
    assert AgentHealth.objects.get(agent=agent).refused_sources == []
    DataSource.objects.filter(pk=source.pk).update(last_error=agents.REFUSED_PREFIX + "commands are not enabled")
    DataSource.objects.filter(pk=failing.pk).update(last_error="serial port /dev/ttyUSB0 not found")

    assert bearer(token).post("/api/v1/agent/heartbeat/", {"spool_depth": 2}, format="json").status_code == 200
    source.refresh_from_db()
    failing.refresh_from_db()
    assert source.last_error == ""
    assert failing.last_error == "serial port /dev/ttyUSB0 not found"  # not a refusal: left alone
    assert AgentHealth.objects.get(agent=agent).spool_depth == 2

    # Refused again: marked again, and kept while the agent keeps refusing it.
    refusal = {"refused_sources": [{"id": source.pk, "name": "logger", "reason": "no such port"}], "spool_depth": 3}
    for _ in range(2):
        assert bearer(token).post("/api/v1/agent/heartbeat/", refusal, format="json").status_code == 200
        source.refresh_from_db()
        assert source.last_error == agents.REFUSED_PREFIX + "no such port"
    assert [item["id"] for item in AgentHealth.objects.get(agent=agent).refused_sources] == [source.pk]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"spool_depth": -1}, "spool_depth"),
        ({"agent_time": "soon"}, "agent_time"),
        ({"heartbeat_seconds": 0}, "heartbeat_seconds"),
    ],
)
def test_heartbeat_refuses_nonsense(station, body, field):
    *_, token, _, _ = station
    response = bearer(token).post("/api/v1/agent/heartbeat/", body, format="json")
    assert response.status_code == 400
    assert field in response.json()


# --- DataSource.agent -------------------------------------------------------------------------------


def _errors(source) -> dict:
    with pytest.raises(ValidationError) as excinfo:
        source.full_clean()
    return excinfo.value.message_dict


def test_an_agent_source_needs_an_agent_allowed_to_push_to_its_instrument(station):
    owner, instrument, agent, _, _, _ = station
    orphan = DataSource(instrument=instrument, name="orphan", kind=SourceKind.AGENT, config=SERIAL)
    assert _errors(orphan) == {"agent": ["A remote-agent source needs the agent that collects it."]}
    stranger_agent, _ = services.create_agent(owner=owner, name="cellar-pc", instruments=[])
    orphan.agent = stranger_agent
    assert _errors(orphan) == {
        "agent": ["Agent 'cellar-pc' may not push to this instrument: add it to the agent's instruments."]
    }
    orphan.agent = agent
    orphan.full_clean()


def test_only_agent_sources_have_an_agent(station):
    _, instrument, agent, _, _, _ = station
    source = DataSource(instrument=instrument, name="file", kind=SourceKind.FILE, config={"path": "/srv"}, agent=agent)
    assert _errors(source) == {"agent": ["Only a remote-agent source is collected by an agent."]}


def test_deleting_an_agent_leaves_its_sources_unserved(station):
    _, _, agent, _, source, _ = station
    agent.delete()
    source.refresh_from_db()
    assert source.agent is None
    assert not ApiToken.objects.exists()  # its token went with it (on MariaDB too: no NULL agent on the way)


@pytest.mark.django_db
def test_deleting_the_owner_of_an_agent_deletes_the_agent_and_its_token():
    owner = make_user("leaving")  # owns no instrument (instruments protect their owner)
    agent, token = services.create_agent(owner=owner, name="old-pc", instruments=[])
    owner.delete()
    assert not Agent.objects.filter(pk=agent.pk).exists() and not ApiToken.objects.exists()
    assert bearer(token).get("/api/v1/agent/config/").status_code == 401


# --- admin ------------------------------------------------------------------------------------------


def test_agent_list_shows_health(client, station):
    owner, instrument, agent, _, _, _ = station
    silent, _ = services.create_agent(owner=owner, name="silent-pc", instruments=[instrument])
    quiet, _ = services.create_agent(owner=owner, name="quiet-pc", instruments=[instrument])
    AgentHealth.objects.create(
        agent=agent, last_heartbeat=timezone.now(), spool_depth=2500, spool_capacity=10_000, clock_offset_seconds=-0.042
    )
    AgentHealth.objects.create(agent=quiet, last_heartbeat=timezone.now() - timedelta(hours=2), heartbeat_seconds=30)
    client.force_login(make_user("root", is_superuser=True, is_staff=True, password=None))
    page = client.get("/admin/accounts/agent/").content.decode()
    assert "2,500 of 10,000 (25%)" in page
    assert "-0.042 s" in page
    assert "never seen" in page  # silent-pc
    assert "silent for 2" in page  # quiet-pc: 2 hours
    assert silent.name in page
    detail = client.get(f"/admin/accounts/agent/{agent.pk}/change/").content.decode()
    assert "2,500 of 10,000" in detail


def test_source_admin_offers_only_agents_the_user_may_use(client, station):
    owner, _, agent, _, source, _ = station
    zed = make_user("zed")
    services.create_agent(owner=zed, name="zeds-secret-pc", instruments=[make_instrument(zed)])
    client.force_login(owner)
    page = client.get(f"/admin/instruments/datasource/{source.pk}/change/").content.decode()
    assert f'<option value="{agent.pk}" selected>roof-pc</option>' in page
    assert "zeds-secret-pc" not in page


# --- lines the agent could not parse -------------------------------------------------------------

UNPARSED = "/api/v1/agent/unparsed/"


def test_unparsed_lines_are_kept_in_quarantine_with_their_source_file_and_line(station):
    owner, _, _, token, source, _ = station
    elsewhere = DataSource.objects.create(
        instrument=make_instrument(owner, slug="cellar"), name="cellar", kind=SourceKind.AGENT, config=SERIAL
    )
    body = {
        "batch_id": "lines-0001",
        "lines": [
            {
                "text": "ERR bus\x00timeout",
                "reason": "line not parsed: no time",
                "source": source.pk,
                "source_name": "logger",
                "file": "/data/log.csv",
                "line": 17,
                "received": "2026-11-27T10:00:00Z",
            },
            {
                "text": "x" * 5000,
                "reason": "field 'temp' is missing from the line",
                "source": elsewhere.pk,
                "source_name": "cellar",
            },
            {"text": "#junk", "reason": "line not parsed: no time in '\x00'", "source_name": "local:bench"},
        ],
    }
    response = bearer(token).post(UNPARSED, body, format="json")
    assert response.status_code == 200, response.content
    answer = {"batch_id": "lines-0001", "stored": 3, "without_source": 2, "aggregated": 0}
    assert response.json() == {**answer, "replayed": False}
    kept = list(RejectedSample.objects.filter(batch_id="lines-0001").order_by("id"))
    assert [(r.origin, r.source_id) for r in kept] == [
        (Origin.AGENT, source.pk),
        (Origin.AGENT, None),
        (Origin.AGENT, None),
    ]
    first = kept[0]
    assert (first.raw_value, first.reason) == ("ERR bus\\x00timeout", "line not parsed: no time")
    assert first.context == {
        "file": "/data/log.csv",
        "line": 17,
        "received": "2026-11-27T10:00:00+00:00",
        "agent_source": "logger",
    }
    # Another agent's source is not linked (nor revealed); the line is kept all the same, cut to 2,000 characters.
    assert kept[1].context == {"agent_source": "cellar", "unknown_source_id": elsewhere.pk, "line_length": 5000}
    assert len(kept[1].raw_value) == 2000
    assert kept[2].reason == "line not parsed: no time in '\\x00'"  # a NUL in the reason never refuses the report
    # A retry of the same batch stores nothing twice.
    again = bearer(token).post(UNPARSED, body, format="json")
    assert again.json() == {**answer, "replayed": True}
    assert RejectedSample.objects.filter(batch_id="lines-0001").count() == 3


@pytest.mark.parametrize(
    "body, complaint",
    [
        ({"lines": [{"text": "x", "reason": "r"}]}, "batch_id"),
        ({"batch_id": "has space", "lines": [{"text": "x", "reason": "r"}]}, "batch_id"),
        ({"batch_id": "b1", "lines": []}, "lines"),
        ({"batch_id": "b1", "lines": [{"text": "x"}]}, "lines"),
        ({"batch_id": "b1", "lines": [{"text": "x", "reason": "r", "line": 0}]}, "lines"),
        ({"batch_id": "b1", "lines": [{"text": "x", "reason": "r"}] * 1001}, "lines"),
        ({"batch_id": "b1", "lines": "not a list"}, "lines"),
    ],
)
def test_a_malformed_report_is_a_400_that_names_the_field(station, body, complaint):
    response = bearer(station[3]).post(UNPARSED, body, format="json")
    assert response.status_code == 400
    assert complaint in response.json()
    assert not RejectedSample.objects.exists()


def test_only_agents_report_unparsed_lines(station):
    owner = station[0]
    _, personal = services.create_personal_token(user=owner, name="script", scope="read_write")
    body = {"batch_id": "b1", "lines": [{"text": "x", "reason": "r"}]}
    assert bearer(personal).post(UNPARSED, body, format="json").status_code == 403
    assert APIClient().post(UNPARSED, body, format="json").status_code == 401
