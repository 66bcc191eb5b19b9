"""What the API base viewset and the page mixin guarantee to every view built on them."""

from __future__ import annotations

import pytest

from accounts.models import AuditEvent
from instruments.models import Channel

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.urls("accounts.tests.probe_urls"),
    pytest.mark.usefixtures("module_world"),  # one world for the module's tests
]


def channels_url(channel=None) -> str:
    return f"/api/channels/{channel.pk}/" if channel else "/api/channels/"


# --- API base viewset ------------------------------------------------------------------------------


def test_lists_hold_only_visible_objects(persona, world):
    response = persona.client.get(channels_url())
    expected = {"anonymous": 401, "agent_scoped": 403, "agent_unscoped": 403}.get(persona.name, 200)
    assert response.status_code == expected
    if expected == 200:
        slugs = {row["slug"] for row in response.json()["results"]}
        everyone = {world.alpha_channel.slug, world.zulu_channel.slug}
        assert slugs == everyone & persona.sees
    assert persona.foreign_in(response.content.decode()) == []


def test_a_hidden_object_answers_404_exactly_like_a_missing_one(stranger, world):
    assert stranger.client.get(channels_url(world.alpha_channel)).status_code == 404
    assert stranger.client.get("/api/channels/999999/").status_code == 404
    assert stranger.client.patch(channels_url(world.alpha_channel), {"units": "K"}, format="json").status_code == 404
    assert stranger.client.delete(channels_url(world.alpha_channel)).status_code == 404


def test_a_visible_object_without_the_level_answers_403(shared_viewer, world):
    assert shared_viewer.client.get(channels_url(world.alpha_channel)).status_code == 200
    response = shared_viewer.client.patch(channels_url(world.alpha_channel), {"units": "K"}, format="json")
    assert response.status_code == 403
    assert shared_viewer.client.delete(channels_url(world.alpha_channel)).status_code == 403


def test_an_edit_through_the_api_is_audited_with_what_changed(shared_editor, world):
    response = shared_editor.client.patch(
        channels_url(world.alpha_channel), {"units": "K", "description": "kelvin now"}, format="json",
        REMOTE_ADDR="198.51.100.23",
    )  # fmt: skip
    assert response.status_code == 200
    event = AuditEvent.objects.get(action="config.changed")
    assert event.actor == world.users["eddie"] and event.address == "198.51.100.23"
    assert event.object_type == "instruments.channel" and event.object_id == str(world.alpha_channel.pk)
    assert event.changes == {"description": ["", "kelvin now"], "units": ["degC", "K"]}


def test_a_create_needs_the_change_level_on_the_target_instrument(shared_editor, shared_viewer, world):
    new = {"name": "pressure", "slug": "pressure", "units": "hPa", "instrument": "alpha-station"}
    response = shared_viewer.client.post(channels_url(), new, format="json")
    assert response.status_code == 400
    assert response.json() == {"instrument": ["Unknown, or not one you may use."]}
    response = shared_editor.client.post(channels_url(), new, format="json")
    assert response.status_code == 201
    assert AuditEvent.objects.get(action="config.created").changes["slug"] == "pressure"
    # a hidden instrument reads exactly like a missing one
    for slug in ("zulu-hidden", "no-such-instrument"):
        response = shared_editor.client.post(channels_url(), {**new, "instrument": slug}, format="json")
        assert response.json() == {"instrument": ["Unknown, or not one you may use."]}


def test_a_delete_is_audited(owner, world):
    assert owner.client.delete(channels_url(world.alpha_channel)).status_code == 204
    assert not Channel.objects.filter(pk=world.alpha_channel.pk).exists()
    event = AuditEvent.objects.get(action="config.deleted")
    assert event.changes["slug"] == world.alpha_channel.slug and event.actor == world.users["olivia"]


def test_a_read_token_cannot_write_even_where_its_user_may(personal_read_token, world):
    response = personal_read_token.client.patch(channels_url(world.alpha_channel), {"units": "K"}, format="json")
    assert response.status_code == 403


# --- page mixin ------------------------------------------------------------------------------------

PAGE_EXPECTED = {
    # persona: (detail of alpha, edit alpha, sharing page of alpha)
    "anonymous": (302, 302, 302),
    "stranger": (404, 404, 404),
    "shared_viewer": (200, 403, 403),
    "group_member": (200, 403, 403),
    "shared_editor": (200, 200, 403),
    "owner": (200, 200, 200),
    "administrator": (200, 200, 200),
    # pages are for people with a session; a token or an agent is nobody here
    "agent_scoped": (302, 302, 302),
    "agent_unscoped": (302, 302, 302),
    "personal_read_token": (302, 302, 302),
    "personal_write_token": (302, 302, 302),
}


def test_pages_answer_by_persona(persona, world):
    detail, edit, sharing = PAGE_EXPECTED[persona.name]
    for url, status in [
        ("/pages/instruments/alpha-station/", detail),
        ("/pages/instruments/alpha-station/edit/", edit),
        ("/pages/instruments/alpha-station/sharing/", sharing),
    ]:
        response = persona.client.get(url)
        assert response.status_code == status, url
        if status == 302:
            assert response["Location"].startswith("/login/?next=")
    hidden = persona.client.get("/pages/instruments/zulu-hidden/")
    assert hidden.status_code == (200 if persona.name == "administrator" else 302 if detail == 302 else 404)
    listing = persona.client.get("/pages/channels/").content.decode()
    assert persona.foreign_in(listing) == []


def test_an_edit_page_records_the_change(shared_editor, world):
    response = shared_editor.client.post(
        "/pages/instruments/alpha-station/edit/", {"description": "new words", "location": "roof"}
    )
    assert response.status_code == 302
    event = AuditEvent.objects.get(action="config.changed")
    assert event.changes == {"description": ["", "new words"], "location": ["", "roof"]}
    assert event.actor == world.users["eddie"]


def test_an_edit_page_refuses_a_viewer_without_changing_anything(shared_viewer, world):
    response = shared_viewer.client.post("/pages/instruments/alpha-station/edit/", {"description": "x"})
    assert response.status_code == 403
    world.alpha.refresh_from_db()
    assert world.alpha.description == "" and not AuditEvent.objects.filter(action="config.changed").exists()
