"""The accounts API: agents, personal tokens, instrument shares, whoami."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import permissions
from accounts.models import Agent, ApiToken, AuditEvent

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("module_world")]  # one world for the module's tests


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def test_creating_an_agent_returns_its_token_once(owner, world):
    expires = (timezone.now() + timedelta(days=30)).isoformat()
    response = owner.client.post(
        "/api/v1/agents/",
        {"name": "roof", "instruments": ["alpha-station"], "expires": expires, "description": "on the roof"},
        format="json",
        REMOTE_ADDR="192.0.2.8",
    )
    assert response.status_code == 201 and "no-store" in response["Cache-Control"]
    body = response.json()
    token = body.pop("token")
    assert token.startswith(body["token_prefix"] + "_")
    assert (body["name"], body["owner"], body["instruments"], body["active"]) == (
        "roof",
        "olivia",
        ["alpha-station"],
        True,
    )
    assert bearer(token).get("/api/v1/whoami/").json()["agent"] == "roof"
    listed = owner.client.get(f"/api/v1/agents/{body['id']}/").json()
    assert "token" not in listed and listed["token_prefix"] == body["token_prefix"]
    event = AuditEvent.objects.get(action="agent.created", object_id=str(body["id"]))
    assert event.address == "192.0.2.8" and event.changes["instruments"] == ["alpha-station"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": "x", "instruments": ["zulu-hidden"]}, "instruments"),  # hidden: reads as unknown
        ({"name": "x", "instruments": ["no-such-thing"]}, "instruments"),
        ({"name": "x", "expires": "2001-01-01T00:00:00Z"}, None),
        ({"name": "alpha-logger"}, None),  # taken
        ({}, "name"),
    ],
)
def test_creating_an_agent_validates(owner, world, payload, field):
    response = owner.client.post("/api/v1/agents/", payload, format="json")
    assert response.status_code == 400
    if field:
        assert field in response.json()
    assert "zulu" not in response.content.decode()
    assert Agent.objects.count() == 3


def test_an_agents_instruments_show_only_what_the_reader_may_see(owner, world):
    agent = world.agents["alpha-logger"]
    agent.instruments.add(world.zulu)  # e.g. scoped while olivia still had access
    assert owner.client.get(f"/api/v1/agents/{agent.pk}/").json()["instruments"] == ["alpha-station"]


def test_personal_tokens_are_created_from_a_session_only(stranger, personal_write_token, world):
    response = stranger.client.post("/api/v1/tokens/", {"name": "mine", "scope": "read_write"}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert body["scope"] == "read_write" and body["user"] == "stan"
    assert bearer(body["token"]).get("/api/v1/whoami/").json()["username"] == "stan"
    refused = personal_write_token.client.post("/api/v1/tokens/", {"name": "more"}, format="json")
    assert refused.status_code == 403 and refused.json()["detail"] == "Log in to do this; API tokens cannot."


def test_a_personal_token_cannot_have_the_agent_scope(stranger):
    response = stranger.client.post("/api/v1/tokens/", {"name": "x", "scope": "agent"}, format="json")
    assert response.status_code == 400


def test_token_list_holds_personal_tokens_only(owner, world):
    names = {row["name"] for row in owner.client.get("/api/v1/tokens/").json()["results"]}
    assert names == {"olivia-read", "olivia-write"}


def test_revoking_a_token_through_the_api(personal_write_token, world):
    token = world.read_token
    response = personal_write_token.client.post(f"/api/v1/tokens/{token.pk}/revoke/")
    assert response.status_code == 200 and response.json()["active"] is False
    assert bearer(world.tokens["personal_read_token"]).get("/api/v1/whoami/").status_code == 401
    assert ApiToken.objects.get(pk=token.pk).revoked_at is not None


def test_sharing_through_the_api(owner, world):
    url = "/api/v1/instruments/alpha-station/shares/"
    assert owner.client.post(url, {"kind": "user", "name": "stan", "level": "view"}, format="json").status_code == 201
    assert permissions.level_on(world.users["stan"], world.alpha) == "view"
    again = owner.client.post(url, {"kind": "user", "name": "stan", "level": "change"}, format="json")
    assert again.status_code == 200
    assert {"kind": "user", "name": "stan", "level": "change"} in owner.client.get(url).json()
    assert owner.client.delete(f"{url}user/stan/").status_code == 204
    assert permissions.level_on(world.users["stan"], world.alpha) is None
    assert owner.client.delete(f"{url}user/stan/").status_code == 404  # no longer shared
    assert owner.client.delete(f"{url}group/alpha-team/").status_code == 204
    events = AuditEvent.objects.filter(actor=world.users["olivia"]).order_by("id")
    actions = list(events.values_list("action", flat=True))
    assert actions == ["share.set", "share.set", "share.removed", "share.removed"]


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"kind": "user", "name": "nobody", "level": "view"}, 400),
        ({"kind": "user", "name": "olivia", "level": "view"}, 400),  # the owner
        ({"kind": "robot", "name": "stan", "level": "view"}, 400),
        ({"kind": "user", "name": "stan", "level": "admin"}, 400),
    ],
)
def test_sharing_validates(owner, world, payload, status):
    response = owner.client.post("/api/v1/instruments/alpha-station/shares/", payload, format="json")
    assert response.status_code == status
    assert not AuditEvent.objects.filter(action="share.set", actor=world.users["olivia"]).exists()


def test_whoami_for_a_session(owner):
    assert owner.client.get("/api/v1/whoami/").json()["authentication"] == "session"
