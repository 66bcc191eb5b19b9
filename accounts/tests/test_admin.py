"""The admin: tokens shown once, Operators confined to what they may change, ownership kept."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse
from rest_framework.test import APIClient

from accounts import services
from accounts.models import Agent, ApiToken, AuditEvent
from instruments.models import Instrument

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("module_world")]  # one world for the module's tests


def whoami(token: str) -> int:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client.get("/api/v1/whoami/").status_code


def test_creating_an_agent_shows_its_token_once(owner, world):
    response = owner.client.post(
        reverse("admin:accounts_agent_add"),
        {"name": "roof-logger", "instruments": [world.alpha.pk], "description": "", "expires": ""},
    )
    assert response.status_code == 200
    token = response.context["token"]
    assert token in response.content.decode() and "no-store" in response["Cache-Control"]
    agent = Agent.objects.get(name="roof-logger")
    assert agent.owner == world.users["olivia"] and list(agent.instruments.all()) == [world.alpha]
    assert whoami(token) == 200
    assert AuditEvent.objects.filter(action="agent.created", object_id=str(agent.pk)).exists()
    for url in (reverse("admin:accounts_agent_changelist"), reverse("admin:accounts_agent_change", args=[agent.pk])):
        page = owner.client.get(url).content.decode()
        assert token not in page and token[-43:] not in page
        assert agent.token.prefix in page


def test_an_operator_cannot_scope_an_agent_to_an_instrument_they_may_not_collect_to(owner, world):
    response = owner.client.post(
        reverse("admin:accounts_agent_add"), {"name": "sneaky", "instruments": [world.zulu.pk]}
    )
    assert response.status_code == 200 and "token" not in response.context
    assert response.context["adminform"].form.errors["instruments"]
    assert not Agent.objects.filter(name="sneaky").exists()


def test_an_operator_cannot_give_an_agent_to_someone_else(owner, world):
    owner.client.post(reverse("admin:accounts_agent_add"), {"name": "mine", "owner": world.users["zed"].pk})
    assert Agent.objects.get(name="mine").owner == world.users["olivia"]


def test_a_duplicate_agent_name_is_a_form_error(owner, world):
    response = owner.client.post(reverse("admin:accounts_agent_add"), {"name": "alpha-logger"})
    assert response.status_code == 200 and response.context["adminform"].form.errors["name"]


def test_creating_a_personal_token_shows_it_once(owner, world):
    response = owner.client.post(reverse("admin:accounts_apitoken_add"), {"name": "laptop", "scope": "read"})
    token = response.context["token"]
    assert whoami(token) == 200
    created = ApiToken.objects.get(name="laptop")
    assert (created.user, created.scope, created.agent) == (world.users["olivia"], "read", None)
    page = owner.client.get(reverse("admin:accounts_apitoken_change", args=[created.pk])).content.decode()
    assert token[-43:] not in page and 'name="_save"' not in page  # read-only


def test_the_revoke_action_revokes(owner, world):
    token = world.read_token
    response = owner.client.post(
        reverse("admin:accounts_apitoken_changelist"), {"action": "revoke_selected", "_selected_action": [token.pk]}
    )
    assert response.status_code == 302
    assert whoami(world.tokens["personal_read_token"]) == 401
    agent = world.agents["alpha-logger"]
    owner.client.post(
        reverse("admin:accounts_agent_changelist"), {"action": "revoke_selected", "_selected_action": [agent.pk]}
    )
    assert whoami(world.tokens["agent_scoped"]) == 401
    assert set(AuditEvent.objects.values_list("action", flat=True)) >= {"token.revoked", "agent.revoked"}


def test_the_new_token_action_gives_a_revoked_agent_a_working_token_once(owner, world):
    agent = world.agents["alpha-logger"]
    changelist = reverse("admin:accounts_agent_changelist")
    owner.client.post(changelist, {"action": "revoke_selected", "_selected_action": [agent.pk]})
    assert whoami(world.tokens["agent_scoped"]) == 401
    two = owner.client.post(
        changelist, {"action": "new_token", "_selected_action": [agent.pk, world.agents["spare-logger"].pk]}
    )
    assert two.status_code == 302  # one agent at a time
    response = owner.client.post(changelist, {"action": "new_token", "_selected_action": [agent.pk]})
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    token = response.context["token"]
    assert "previous token no longer works" in response.content.decode()
    assert whoami(token) == 200 and whoami(world.tokens["agent_scoped"]) == 401
    assert AuditEvent.objects.filter(action="agent.token_replaced", object_id=str(agent.pk)).exists()
    assert token not in owner.client.get(changelist).content.decode()


def test_an_operator_cannot_revoke_someone_elses_token_through_the_admin(owner, world):
    owner.client.post(
        reverse("admin:accounts_apitoken_changelist"),
        {"action": "revoke_selected", "_selected_action": [world.zed_token.pk]},
    )
    assert whoami(world.tokens["zed-script"]) == 200  # not in olivia's changelist, so not selectable


def test_an_operator_lists_only_instruments_they_may_change(world):
    vera = world.users["vera"]  # view on alpha only
    vera.is_staff = True
    vera.save()
    vera.groups.add(Group.objects.get(name="Operators"))
    services.share(world.zulu, vera, "change")
    client = APIClient()
    client.force_login(vera)
    page = client.get(reverse("admin:instruments_instrument_changelist")).content.decode()
    assert "zulu-hidden" in page and "alpha-station" not in page
    assert client.get(reverse("admin:instruments_instrument_change", args=[world.alpha.pk])).status_code == 302
    channels = client.get(reverse("admin:instruments_channel_changelist")).content.decode()
    assert "zulu-hidden-temp" in channels and "alpha-station-temp" not in channels
    # delete needs the share level, which vera does not have on zulu
    assert client.get(reverse("admin:instruments_instrument_delete", args=[world.zulu.pk])).status_code == 403


def test_an_operators_new_instrument_is_theirs_whatever_the_form_says(owner, world):
    response = owner.client.post(
        reverse("admin:instruments_instrument_add"),
        {
            "name": "Beta",
            "slug": "beta",
            "owner": world.users["zed"].pk,
            "active": "on",
            **{f"{prefix}-{k}": v for prefix in ("sources", "channels", "logbook") for k, v in MANAGEMENT.items()},
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    assert Instrument.objects.get(slug="beta").owner == world.users["olivia"]


MANAGEMENT = {"TOTAL_FORMS": "0", "INITIAL_FORMS": "0", "MIN_NUM_FORMS": "0", "MAX_NUM_FORMS": "1000"}


def test_an_operator_may_only_pick_their_instruments_in_foreign_keys(owner, world):
    page = owner.client.get(reverse("admin:instruments_channel_change", args=[world.alpha_channel.pk]))
    source_choices = {str(choice[0]) for choice in page.context["adminform"].form.fields["source"].choices}
    assert str(world.alpha_source.pk) in source_choices and str(world.zulu_source.pk) not in source_choices
    found = owner.client.get(
        reverse("admin:autocomplete"),
        {"app_label": "instruments", "model_name": "channel", "field_name": "instrument", "term": ""},
    ).json()
    assert [r["text"] for r in found["results"]] == [str(world.alpha)]
