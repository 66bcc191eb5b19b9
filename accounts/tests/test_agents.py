"""Agents push only to the instruments they are scoped to (and their owner may collect to); they read nothing."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import permissions, services
from accounts.choices import AuditAction
from accounts.models import ApiToken, AuditEvent
from accounts.principals import AgentPrincipal
from accounts.tokens import find_token
from collection.choices import Origin
from collection.services.ingest import SampleBatch, ingest_samples
from instruments.tests.factories import make_user

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("module_world")]  # one world for the module's tests


def principal(clear: str) -> AgentPrincipal:
    token = find_token(clear)
    return AgentPrincipal(agent=token.agent, token=token)


def test_an_agent_collects_only_to_its_scoped_instruments(world):
    scoped, unscoped = principal(world.tokens["agent_scoped"]), principal(world.tokens["agent_unscoped"])
    assert list(permissions.instruments_for(scoped, "collect")) == [world.alpha]
    assert permissions.collectable_instrument_ids(scoped) == {world.alpha.pk}
    assert permissions.collectable_instrument_ids(unscoped) == set()
    assert not permissions.has_instrument_perm(scoped, "collect", world.zulu)
    assert not permissions.has_instrument_perm(unscoped, "collect", world.alpha)


def test_an_agent_sees_nothing_not_even_its_own_instrument(world):
    scoped = principal(world.tokens["agent_scoped"])
    for level in ("view", "change", "share"):
        assert list(permissions.instruments_for(scoped, level)) == []
        assert not permissions.has_instrument_perm(scoped, level, world.alpha)
    assert list(permissions.restrict(type(world.alpha_channel).objects.all(), scoped)) == []
    assert not permissions.has_perm(scoped, "view", world.agents["alpha-logger"])
    assert not scoped.has_perm("instruments.view_instrument") and not scoped.is_staff


def test_an_agent_token_is_refused_by_every_endpoint_but_whoami(world, agent_scoped):
    for url in ["/api/v1/", "/api/v1/agents/", "/api/v1/tokens/", "/api/v1/instruments/alpha-station/shares/"]:
        response = agent_scoped.client.get(url)
        assert response.status_code == 403, url
        assert response.json() == {"detail": "An agent token may only push readings."}
    whoami = agent_scoped.client.get("/api/v1/whoami/").json()
    assert (whoami["kind"], whoami["agent"], whoami["instruments"]) == ("agent", "alpha-logger", ["alpha-station"])


def test_ingest_through_the_permission_module_stores_only_scoped_readings(world):
    """The ingest API passes collectable_instrument_ids to ingest_samples; a foreign channel is refused."""
    scoped = principal(world.tokens["agent_scoped"])
    now_us = time.time_ns() // 1000
    batch = SampleBatch.from_rows([(world.alpha_channel.pk, now_us, 21.5), (world.zulu_channel.pk, now_us, 9.0)])
    result = ingest_samples(
        batch, origin=Origin.AGENT, writable_instruments=permissions.collectable_instrument_ids(scoped)
    )
    assert (result.accepted, result.rejected_count) == (1, 1)
    assert result.rejected[0].reason.startswith("unknown channel, or not one the sender may write to")


def test_an_agent_loses_what_its_owner_loses(world):
    """eddie (change on alpha) makes an agent; when alpha is no longer shared with him, it may push nothing."""
    eddie = world.users["eddie"]
    agent, clear = services.create_agent(owner=eddie, name="eddies-logger", instruments=[world.alpha], actor=eddie)
    assert permissions.collectable_instrument_ids(principal(clear)) == {world.alpha.pk}
    services.unshare(world.alpha, eddie, actor=world.users["olivia"])
    assert permissions.collectable_instrument_ids(principal(clear)) == set()
    assert list(agent.instruments.all()) == [world.alpha]  # the scope is kept; the owner's access bounds it


def test_an_agent_cannot_be_scoped_beyond_what_its_owner_may_collect_to(world):
    vera = world.users["vera"]  # view only on alpha
    with pytest.raises(ValidationError, match="may not collect to: alpha-station"):
        services.create_agent(owner=vera, name="nope", instruments=[world.alpha], actor=vera)
    with pytest.raises(ValidationError):
        services.create_agent(owner=vera, name="nope", instruments=[world.zulu], actor=vera)


def test_agents_and_tokens_are_managed_by_their_owner_or_an_administrator(world):
    olivias_agent = world.agents["alpha-logger"]
    with pytest.raises(PermissionDenied):
        services.revoke_agent(olivias_agent, actor=world.users["zed"])
    with pytest.raises(PermissionDenied):
        services.create_personal_token(user=world.users["olivia"], name="x", actor=world.users["zed"])
    with pytest.raises(PermissionDenied):
        services.revoke_agent(olivias_agent, actor=principal(world.tokens["agent_scoped"]))
    assert services.revoke_agent(olivias_agent, actor=world.users["ada"])


def test_a_revoked_agent_gets_401_and_shows_revoked(world, owner):
    agent = world.agents["alpha-logger"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {world.tokens['agent_scoped']}")
    assert client.get("/api/v1/whoami/").status_code == 200
    response = owner.client.post(f"/api/v1/agents/{agent.pk}/revoke/")
    assert response.status_code == 200
    assert response.json()["active"] is False and response.json()["revoked_at"]
    assert client.get("/api/v1/whoami/").status_code == 401
    agent.refresh_from_db()
    assert not agent.is_active and agent.revoked_at is not None


def test_a_revoked_agent_is_given_a_new_token_and_keeps_everything_else(world, owner):
    agent = world.agents["alpha-logger"]
    old = world.tokens["agent_scoped"]
    old_key_id = find_token(old).key_id
    instruments = set(agent.instruments.values_list("slug", flat=True))
    services.revoke_agent(agent, actor=world.users["olivia"])

    response = owner.client.post(f"/api/v1/agents/{agent.pk}/new-token/", {}, format="json")
    assert response.status_code == 200, response.content
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    new = body["token"]
    assert new.startswith("dbk_") and new != old and body["active"] is True and body["revoked_at"] is None
    assert (body["name"], set(body["instruments"])) == ("alpha-logger", instruments)

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {old}")
    assert client.get("/api/v1/whoami/").status_code == 401
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {new}")
    assert client.get("/api/v1/whoami/").json()["agent"] == "alpha-logger"
    assert find_token(new).agent == agent  # the same agent: its sources and health stay

    event = AuditEvent.objects.filter(action=AuditAction.AGENT_TOKEN_REPLACED).get()
    assert event.actor == world.users["olivia"] and event.object_id == str(agent.pk)
    assert event.changes["old_key_id"] == old_key_id and event.changes["was_revoked"] is True
    # The secret is never recorded: all that follows "dbk_<key id>_" (it may itself hold "_", being URL-safe
    # base64, so its last "_"-separated piece could be as short as one character and match by chance).
    secret = new.split("_", 2)[2]
    assert len(secret) >= 40 and secret not in str(event.changes)


def test_a_new_agent_token_keeps_or_replaces_the_expiry(world):
    agent = world.agents["alpha-logger"]
    soon = timezone.now() + timedelta(days=3)
    services.replace_agent_token(agent, expires=soon)
    agent.token.refresh_from_db()
    assert agent.token.expires == soon
    services.replace_agent_token(agent)  # kept while still in the future
    agent.token.refresh_from_db()
    assert agent.token.expires == soon
    with pytest.raises(ValidationError):
        services.replace_agent_token(agent, expires=timezone.now() - timedelta(seconds=1))
    ApiToken.objects.filter(pk=agent.token.pk).update(expires=timezone.now() - timedelta(days=1))
    services.replace_agent_token(agent)  # an expired expiry is not carried over
    agent.token.refresh_from_db()
    assert agent.token.expires is None and agent.token.is_usable
    with pytest.raises(PermissionDenied):
        services.replace_agent_token(agent, actor=world.users["zed"])
    with pytest.raises(PermissionDenied):
        services.replace_agent_token(agent, actor=AgentPrincipal(agent=agent, token=agent.token))  # not itself


def test_agent_names_are_unique_per_owner(world):
    with pytest.raises(ValidationError):
        services.create_agent(owner=world.users["olivia"], name="alpha-logger")
    services.create_agent(owner=make_user(), name="alpha-logger")  # another owner's may share the name
