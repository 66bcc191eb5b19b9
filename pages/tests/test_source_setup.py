"""The "New data source" page: who may open it, and saving a source and its channels in one step
(one transaction, the target check, the audit trail, enabled only with channels)."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.urls import reverse

from accounts import services
from accounts.choices import AuditAction
from accounts.models import AuditEvent
from instruments.models import Channel, DataSource
from instruments.tests.factories import make_channel, make_instrument, make_source, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner():
    return make_user("olga")


@pytest.fixture
def instrument(owner):
    return make_instrument(owner=owner, slug="station")


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


CHANNELS = [
    {"name": "Air temperature", "slug": "t-air", "kind": "numeric", "units": "deg C", "source_field": "t_air",
     "missing_values": [-9999], "valid_min": -40, "valid_max": 60},
    {"name": "Status", "slug": "status", "kind": "text", "units": "", "source_field": "status", "missing_values": []},
]  # fmt: skip


def post(client, slug, tmp_path, *, channels=CHANNELS, url=None, **values):
    columns = ["time", "t_air", "status"]
    config = {"path": str(tmp_path), "pattern": "*.csv", "header_lines": 1, "columns": columns}
    config = values.pop("config", {**config, "timestamp": {"columns": ["time"]}})
    data = {"name": "logger", "kind": "file", "interval_seconds": "60", "enabled": "on", **values,
            "config_json": json.dumps(config), "channels_json": json.dumps(channels)}  # fmt: skip
    return client.post(url or reverse("instruments:source-new", args=[slug]), data)


def test_the_owner_opens_the_page_a_viewer_is_refused_a_stranger_sees_nothing(instrument, owner):
    url = reverse("instruments:source-new", args=["station"])
    page = client_for(owner).get(url)
    assert page.status_code == 200 and b"New data source" in page.content
    assert b"unpkg" not in page.content and b"cdn" not in page.content.lower()
    viewer = make_user("vic")
    services.share(instrument, viewer, "view")
    assert client_for(viewer).get(url).status_code == 403
    assert client_for(make_user("stan")).get(url).status_code == 404


def test_source_and_channels_are_saved_in_one_step_enabled_and_audited(instrument, owner, tmp_path):
    response = post(client_for(owner), "station", tmp_path)
    assert response.status_code == 302, response.content.decode()[:2000]
    source = DataSource.objects.get(instrument=instrument, name="logger")
    assert source.enabled and source.target_set_by == owner
    assert source.config["header_lines"] == 1 and source.config["delimiter"] == ","  # defaults filled in
    channels = {c.slug: c for c in source.channels.all()}
    assert channels["t-air"].units == "degC" and channels["t-air"].missing_values == [-9999]
    assert channels["status"].kind == "text"
    events = AuditEvent.objects.filter(action=AuditAction.CONFIG_CREATED)
    assert {e.object_repr for e in events} >= {str(source), "station/t-air", "station/status"}


def test_a_bad_channel_saves_nothing_and_says_where(instrument, owner, tmp_path):
    bad = [CHANNELS[0], {**CHANNELS[1], "slug": "s2", "name": "Other", "kind": "numeric", "units": "bananas"}]
    response = post(client_for(owner), "station", tmp_path, channels=bad)
    assert response.status_code == 200
    assert "channels.1.units" in response.content.decode()
    assert not DataSource.objects.exists() and not Channel.objects.exists()


def test_a_folder_outside_the_roots_is_refused_and_nothing_saved(instrument, owner, tmp_path, settings):
    settings.DAQBROKER_FILE_ROOTS = [str(tmp_path / "elsewhere")]
    response = post(client_for(owner), "station", tmp_path)
    assert response.status_code == 200 and "DAQBROKER_FILE_ROOTS" in response.content.decode()
    assert not DataSource.objects.exists()


def test_a_source_without_channels_is_saved_but_not_enabled(instrument, owner, tmp_path):
    assert post(client_for(owner), "station", tmp_path, channels=[]).status_code == 302
    assert not DataSource.objects.get(name="logger").enabled


def test_a_slug_of_another_sources_channel_is_refused(instrument, owner, tmp_path):
    make_channel(instrument=instrument, slug="t-air", name="Elsewhere")
    response = post(client_for(owner), "station", tmp_path)
    assert response.status_code == 200 and "already has a channel" in response.content.decode()


def test_editing_a_source_on_the_same_page_changes_its_channels(instrument, owner, tmp_path):
    source = make_source(instrument=instrument, config={"path": str(tmp_path), "columns": ["time", "t_air"]})
    make_channel(instrument=instrument, source=source, slug="t-air", name="Air temperature", source_field="t_air")
    url = reverse("instruments:source-edit", args=["station", source.pk])
    assert client_for(owner).get(url).status_code == 200
    changed = [{**CHANNELS[0], "units": "K"}]
    response = post(client_for(owner), "station", tmp_path, channels=changed, url=url, name=source.name)
    assert response.status_code == 302
    assert Channel.objects.get(slug="t-air").units == "K"
    assert Channel.objects.count() == 1
    assert AuditEvent.objects.filter(action=AuditAction.CONFIG_CHANGED, object_repr="station/t-air").exists()


def test_a_source_of_another_instrument_is_not_found(instrument, owner, tmp_path):
    other = make_source(instrument=make_instrument(owner=owner))
    url = reverse("instruments:source-edit", args=["station", other.pk])
    assert client_for(owner).get(url).status_code == 404


def test_broken_json_is_a_message_not_a_500(instrument, owner):
    response = client_for(owner).post(
        reverse("instruments:source-new", args=["station"]),
        {"name": "x", "kind": "file", "config_json": "{nope", "channels_json": "[]"},
    )
    assert response.status_code == 200 and "not valid JSON" in response.content.decode()


# --- sources an agent collects on its machine -----------------------------------------------------------


def test_the_owner_saves_a_source_her_agent_collects_from_the_same_page(instrument, owner, tmp_path):
    agent, _ = services.create_agent(owner=owner, name="olga-pc", instruments=[instrument])
    page = client_for(owner).get(reverse("instruments:source-new", args=["station"]))
    assert b"Agent olga-pc (on its machine)" in page.content
    response = post(client_for(owner), "station", tmp_path, agent=str(agent.pk))
    assert response.status_code == 302, response.content.decode()[:2000]
    source = DataSource.objects.get(name="logger")
    assert source.kind == "agent" and source.agent == agent and source.enabled
    assert source.config["collect"]["kind"] == "file"
    assert source.config["collect"]["path"] == str(tmp_path) and source.config["collect"]["header_lines"] == 1
    assert {c.slug for c in source.channels.all()} == {"t-air", "status"}
    # Opened again: shown as what the agent collects, and where.
    state = client_for(owner).get(reverse("instruments:source-edit", args=["station", source.pk])).context
    initial = state["setup_state"]["initial"]
    assert (initial["kind"], initial["agent"], initial["config"]["path"]) == ("file", agent.pk, str(tmp_path))


def test_a_co_editor_may_not_pick_someone_elses_agent(instrument, owner, tmp_path):
    agent, _ = services.create_agent(owner=owner, name="olga-pc", instruments=[instrument])
    eddie = make_user("eddie")
    services.share(instrument, eddie, "change")
    page = client_for(eddie).get(reverse("instruments:source-new", args=["station"]))
    assert b"olga-pc" not in page.content
    response = post(client_for(eddie), "station", tmp_path, agent=str(agent.pk))
    assert response.status_code == 200
    assert "No such agent among those whose sources you may set" in response.content.decode()
    assert not DataSource.objects.filter(name="logger").exists()


def test_a_co_editor_changes_the_channels_of_an_agent_source_keeping_its_agent(instrument, owner, tmp_path):
    agent, _ = services.create_agent(owner=owner, name="olga-pc", instruments=[instrument])
    collect = {"kind": "file", "path": str(tmp_path), "pattern": "*.csv", "header_lines": 1,
               "columns": ["time", "t_air", "status"], "timestamp": {"columns": ["time"]}}  # fmt: skip
    source = DataSource.objects.create(
        instrument=instrument, name="logger", kind="agent", agent=agent, config={"collect": collect}
    )
    eddie = make_user("eddie")
    services.share(instrument, eddie, "change")
    url = reverse("instruments:source-edit", args=["station", source.pk])
    assert b"olga-pc" in client_for(eddie).get(url).content  # its own agent stays selectable
    config = {k: v for k, v in collect.items() if k != "kind"}
    response = post(client_for(eddie), "station", tmp_path, url=url, agent=str(agent.pk), config=config)
    assert response.status_code == 302, response.content.decode()[:2000]
    source.refresh_from_db()
    assert source.kind == "agent" and source.agent == agent
    assert source.channels.count() == 2
