"""The registry API (/api/v1/instruments, sources, channels, logbook) through the personas."""

from __future__ import annotations

import pytest

from accounts.choices import AuditAction
from accounts.models import AuditEvent
from instruments.models import SLUG_TAKEN, Channel, DataSource, Instrument

pytestmark = pytest.mark.usefixtures("module_world")  # one world for the module's tests


def test_lists_show_only_what_the_persona_may_see(world, owner, shared_viewer, stranger):
    assert [i["slug"] for i in owner.client.get("/api/v1/instruments/").json()["results"]] == ["alpha-station"]
    assert [i["slug"] for i in shared_viewer.client.get("/api/v1/instruments/").json()["results"]] == ["alpha-station"]
    assert stranger.client.get("/api/v1/instruments/").json()["results"] == []
    channels = owner.client.get("/api/v1/channels/").json()["results"]
    assert [c["slug"] for c in channels] == ["alpha-station-temp"]
    assert stranger.client.get(f"/api/v1/channels/{world.zulu_channel.id}/").status_code == 404
    assert owner.client.get("/api/v1/instruments/zulu-hidden/").status_code == 404


def test_anonymous_gets_401(anonymous):
    for url in ("/api/v1/instruments/", "/api/v1/sources/", "/api/v1/channels/", "/api/v1/logbook/"):
        assert anonymous.client.get(url).status_code == 401


def test_operator_creates_an_instrument_and_owns_it(world, owner):
    response = owner.client.post("/api/v1/instruments/", {"name": "Radiometer", "slug": "radiometer"}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["owner"] == "olivia"
    created = Instrument.objects.get(slug="radiometer")
    assert created.owner == world.users["olivia"]
    assert AuditEvent.objects.filter(action=AuditAction.CONFIG_CREATED, object_repr__contains="Radiometer").exists()


def test_viewer_may_not_create_instruments(shared_viewer):
    response = shared_viewer.client.post("/api/v1/instruments/", {"name": "X", "slug": "x"}, format="json")
    assert response.status_code == 403


def test_duplicate_slug_has_the_admin_message(world, owner):
    response = owner.client.post("/api/v1/instruments/", {"name": "Again", "slug": "zulu-hidden"}, format="json")
    assert response.status_code == 400
    assert response.json() == {"slug": [SLUG_TAKEN]}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"url": "/dev/ttyUSB0", "baudrate": 12345}, "baudrate: 12345 is not one of"),
        ({"url": "/dev/ttyUSB0", "baud": 9600}, "baud: unknown option (did you mean 'baudrate'?)"),
        ({"baudrate": 9600}, "url: is required"),
        ({"url": "loop://", "format": "regex", "regex": "(unclosed"}, "regex: is not a valid regular expression"),
    ],
)
def test_a_broken_source_config_is_refused_with_the_admin_message(world, owner, config, message):
    body = {"instrument": "alpha-station", "name": "port", "kind": "serial", "config": config}
    response = owner.client.post("/api/v1/sources/", body, format="json")
    assert response.status_code == 400, response.content
    (error,) = response.json()["config"]
    assert error.startswith(message)
    source = DataSource(instrument=world.alpha, name="port", kind="serial", config=config)
    with pytest.raises(Exception) as admin_side:
        source.full_clean()
    assert admin_side.value.message_dict["config"] == [error]


def test_a_good_source_config_comes_back_with_its_defaults(world, owner):
    body = {"instrument": "alpha-station", "name": "port", "kind": "serial", "config": {"url": "loop://"}}
    response = owner.client.post("/api/v1/sources/", body, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["config"]["baudrate"] == 9600
    assert DataSource.objects.get(name="port").config["parity"] == "N"


def test_bad_units_are_refused(world, owner):
    body = {"instrument": "alpha-station", "name": "Yield", "slug": "yield", "units": "bananas/parsec²"}
    response = owner.client.post("/api/v1/channels/", body, format="json")
    assert response.status_code == 400
    assert response.json()["units"][0].startswith("'bananas/parsec²' is not a unit DAQBroker knows")


def test_editor_changes_a_channel_viewer_may_not_stranger_sees_nothing(world, shared_editor, shared_viewer, stranger):
    url = f"/api/v1/channels/{world.alpha_channel.id}/"
    assert shared_editor.client.patch(url, {"units": "K"}, format="json").status_code == 200
    assert Channel.objects.get(pk=world.alpha_channel.id).units == "K"
    assert shared_viewer.client.patch(url, {"units": "degC"}, format="json").status_code == 403
    assert stranger.client.patch(url, {"units": "degC"}, format="json").status_code == 404
    assert Channel.objects.get(pk=world.alpha_channel.id).units == "K"


def test_cannot_attach_a_channel_to_an_instrument_one_cannot_change(world, shared_viewer, owner):
    body = {"instrument": "zulu-hidden", "name": "Sneaky", "slug": "sneaky"}
    response = owner.client.post("/api/v1/channels/", body, format="json")
    assert response.status_code == 400
    assert "instrument" in response.json()
    body["instrument"] = "alpha-station"
    assert shared_viewer.client.post("/api/v1/channels/", body, format="json").status_code == 400
    assert not Channel.objects.filter(slug="sneaky").exists()


def test_deleting_an_instrument_needs_the_share_level(world, shared_editor, owner):
    assert shared_editor.client.delete("/api/v1/instruments/alpha-station/").status_code == 403
    assert owner.client.delete("/api/v1/instruments/alpha-station/").status_code == 204
    assert not Instrument.objects.filter(slug="alpha-station").exists()


def test_filters_ordering_and_pagination(world, owner, administrator):
    assert administrator.client.get("/api/v1/channels/?instrument=zulu-hidden").json()["count"] == 1
    assert owner.client.get("/api/v1/channels/?instrument=zulu-hidden").json()["count"] == 0
    slugs = [i["slug"] for i in administrator.client.get("/api/v1/instruments/?ordering=-slug").json()["results"]]
    assert slugs == ["zulu-hidden", "alpha-station"]
    page = administrator.client.get("/api/v1/instruments/?limit=1").json()
    assert page["count"] == 2 and len(page["results"]) == 1 and page["next"]


def test_logbook_entry_records_its_author(world, shared_editor, shared_viewer):
    body = {"instrument": "alpha-station", "text": "Cleaned the radiation shield."}
    response = shared_editor.client.post("/api/v1/logbook/", body, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["author"] == "eddie"
    assert shared_viewer.client.post("/api/v1/logbook/", body, format="json").status_code == 400


def test_schema_and_docs_are_served_without_a_cdn(anonymous):
    schema = anonymous.client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    assert "/api/v1/ingest/" in schema.json()["paths"]
    docs = anonymous.client.get("/api/v1/docs/")
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "swagger-ui" in html and "cdn" not in html.lower() and "//unpkg" not in html


@pytest.mark.parametrize(
    ("query", "count"),
    [
        ("before=2999-01-01T00:00:00%2B23:59", 1),  # a legal ISO offset PostgreSQL would refuse as such
        ("after=2999-01-01T00:00:00-18:23", 0),
        ("before=9999-12-31T23:00:00-23:00", None),  # beyond what can be stored: 400, not 500
        ("before=yesterday", None),
    ],
)
def test_logbook_time_filters_take_any_iso_offset(world, owner, query, count):
    response = owner.client.get(f"/api/v1/logbook/?{query}")
    if count is None:
        assert response.status_code == 400
    else:
        assert response.status_code == 200, response.content
        assert response.json()["count"] == count


def test_an_agent_source_is_created_with_one_of_ones_agents(world, owner, shared_editor):
    agent = world.agents["alpha-logger"]
    body = {
        "instrument": "alpha-station",
        "name": "remote port",
        "kind": "agent",
        "agent": agent.pk,
        "config": {"collect": {"kind": "serial", "url": "/dev/ttyUSB0"}},
    }
    response = owner.client.post("/api/v1/sources/", body, format="json")
    assert response.status_code == 201, response.content
    assert DataSource.objects.get(name="remote port").agent == agent
    # eddie may change alpha, but the agent is olivia's
    response = shared_editor.client.post("/api/v1/sources/", {**body, "name": "other"}, format="json")
    assert response.status_code == 400
    assert response.json() == {"agent": ["Unknown, or not one you may use."]}
    without = owner.client.post("/api/v1/sources/", {**body, "name": "no agent", "agent": None}, format="json")
    assert without.status_code == 400
    assert "agent" in without.json()


@pytest.mark.parametrize(
    "body",
    [
        {"instrument": "alpha\x00station", "name": "x", "kind": "file", "config": {"path": "/d"}},
        {"instrument": "alpha-station", "name": "x", "kind": "file", "config": {"path": "/d\x00"}},
    ],
)
def test_nul_characters_are_a_400_on_every_engine(world, owner, body):
    response = owner.client.post("/api/v1/sources/", body, format="json")
    assert response.status_code == 400, response.content
