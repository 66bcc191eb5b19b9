"""share/unshare: exact grants, the level ladder, audit events, and the admin's sharing pages."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied, ValidationError
from django.urls import reverse
from guardian.shortcuts import assign_perm, get_perms
from rest_framework.test import APIClient

from accounts import permissions, services
from accounts.models import AuditEvent, InstrumentGroupPermission, InstrumentUserPermission
from instruments.tests.factories import make_channel, make_instrument, make_user

pytestmark = pytest.mark.django_db


def held(instrument, user) -> set[str]:
    return set(
        InstrumentUserPermission.objects.filter(content_object=instrument, user=user).values_list(
            "permission__codename", flat=True
        )
    )


@pytest.fixture
def alpha():
    return make_instrument(slug="alpha")


@pytest.mark.parametrize(
    ("level", "codenames"),
    [
        ("view", {"view_instrument"}),
        ("collect", {"view_instrument", "collect_instrument"}),
        ("change", {"view_instrument", "collect_instrument", "change_instrument"}),
        ("share", {"view_instrument", "collect_instrument", "change_instrument", "share_instrument"}),
    ],
)
def test_a_level_grants_itself_and_every_level_below(alpha, level, codenames):
    vera = make_user()
    assert services.share(alpha, vera, level)
    assert held(alpha, vera) == codenames
    assert permissions.level_on(vera, alpha) == level
    for rung in permissions.LEVELS:
        assert permissions.has_instrument_perm(vera, rung, alpha) == (rung in permissions.levels_up_to(level))


def test_sharing_again_replaces_the_level_and_records_each_change(alpha):
    owner, vera = alpha.owner, make_user("vera")
    services.share(alpha, vera, "change", actor=owner, address="192.0.2.7")
    services.share(alpha, vera, "view", actor=owner, address="192.0.2.7")
    assert held(alpha, vera) == {"view_instrument"}
    events = list(AuditEvent.objects.filter(action="share.set").order_by("id"))
    assert [(e.changes["from"], e.changes["to"]) for e in events] == [(None, "change"), ("change", "view")]
    event = events[-1]
    assert (event.actor, event.actor_label, event.address) == (owner, owner.username, "192.0.2.7")
    assert (event.object_type, event.object_id, event.changes["user"]) == (
        "instruments.instrument",
        str(alpha.pk),
        "vera",
    )


def test_sharing_at_the_same_level_is_a_no_op(alpha):
    vera = make_user()
    assert services.share(alpha, vera, "view")
    assert not services.share(alpha, vera, "view")
    assert AuditEvent.objects.filter(action="share.set").count() == 1


def test_unshare_removes_every_level_and_is_recorded(alpha):
    vera = make_user()
    services.share(alpha, vera, "share")
    assert services.unshare(alpha, vera, actor=alpha.owner)
    assert held(alpha, vera) == set()
    assert not permissions.has_instrument_perm(vera, "view", alpha)
    event = AuditEvent.objects.get(action="share.removed")
    assert (event.changes["from"], event.changes["to"]) == ("share", None)
    assert not services.unshare(alpha, vera, actor=alpha.owner)  # nothing left: nothing recorded
    assert AuditEvent.objects.filter(action="share.removed").count() == 1


def test_groups_share_like_users(alpha):
    team, gina = Group.objects.create(name="team"), make_user()
    gina.groups.add(team)
    services.share(alpha, team, "change")
    assert set(InstrumentGroupPermission.objects.filter(group=team).values_list("permission__codename", flat=True)) == {
        "view_instrument",
        "collect_instrument",
        "change_instrument",
    }
    assert permissions.level_on(gina, alpha) == "change"
    assert AuditEvent.objects.get(action="share.set").changes["group"] == "team"
    services.unshare(alpha, team)
    assert permissions.level_on(gina, alpha) is None


def test_the_highest_of_user_and_group_grants_counts(alpha):
    team, gina = Group.objects.create(name="team"), make_user()
    gina.groups.add(team)
    services.share(alpha, gina, "view")
    services.share(alpha, team, "change")
    assert permissions.level_on(gina, alpha) == "change"
    assert permissions.has_instrument_perm(gina, "change", alpha)


def test_change_implies_view_even_for_grants_made_with_guardian_directly(alpha):
    eddie, team, gina = make_user(), Group.objects.create(name="team"), make_user()
    gina.groups.add(team)
    assign_perm("instruments.change_instrument", eddie, alpha)
    assign_perm("instruments.change_instrument", team, alpha)
    # guardian wrote to our direct tables, not its generic ones
    assert InstrumentUserPermission.objects.filter(user=eddie, content_object=alpha).exists()
    assert InstrumentGroupPermission.objects.filter(group=team, content_object=alpha).exists()
    for user in (eddie, gina):
        assert permissions.has_instrument_perm(user, "view", alpha)
        assert permissions.has_instrument_perm(user, "collect", alpha)
        assert permissions.has_instrument_perm(user, "change", alpha)
        assert not permissions.has_instrument_perm(user, "share", alpha)
        assert list(permissions.instruments_visible_to(user)) == [alpha]
    assert get_perms(eddie, alpha) == ["change_instrument"]


def test_channels_and_sources_inherit_from_their_instrument(alpha):
    channel, vera = make_channel(alpha), make_user()
    assert not permissions.has_perm(vera, "view", channel)
    services.share(alpha, vera, "view")
    assert permissions.has_perm(vera, "view", channel)
    assert not permissions.has_perm(vera, "change", channel)
    assert list(permissions.restrict(type(channel).objects.all(), vera)) == [channel]


def test_the_owner_cannot_be_shared_with(alpha):
    with pytest.raises(ValidationError):
        services.share(alpha, alpha.owner, "view")


def test_only_a_principal_with_the_share_level_may_share(alpha):
    eddie, vera, stan = make_user(), make_user(), make_user()
    services.share(alpha, eddie, "change")
    with pytest.raises(PermissionDenied):
        services.share(alpha, stan, "view", actor=eddie)
    with pytest.raises(PermissionDenied):
        services.unshare(alpha, eddie, actor=stan)
    services.share(alpha, vera, "share", actor=alpha.owner)
    assert services.share(alpha, stan, "view", actor=vera)  # a co-owner may share
    assert not AuditEvent.objects.filter(actor=eddie).exists()


def test_unknown_levels_are_refused(alpha):
    with pytest.raises(ValidationError):
        services.share(alpha, make_user(), "admin")


def test_shares_of_lists_users_then_groups(alpha):
    services.share(alpha, make_user("zoe"), "view")
    services.share(alpha, make_user("adam"), "change")
    services.share(alpha, Group.objects.create(name="team"), "view")
    assert [(s.kind, s.name, s.level) for s in services.shares_of(alpha)] == [
        ("user", "adam", "change"),
        ("user", "zoe", "view"),
        ("group", "team", "view"),
    ]


# --- the admin's sharing pages (django-guardian's, routed through the service) -----------------------


def test_admin_sharing_page_shares_through_the_service(owner, world):
    url = reverse("admin:instruments_instrument_permissions_manage_user", args=[world.alpha.pk, world.users["stan"].pk])
    page = owner.client.get(url)
    assert page.status_code == 200 and 'name="level"' in page.content.decode()
    response = owner.client.post(url, {"level": "change"}, REMOTE_ADDR="198.51.100.4")
    assert response.status_code == 302
    assert permissions.level_on(world.users["stan"], world.alpha) == "change"
    event = AuditEvent.objects.filter(action="share.set").latest("id")
    assert (event.actor, event.address, event.changes["to"]) == (world.users["olivia"], "198.51.100.4", "change")
    owner.client.post(url, {"level": ""})
    assert permissions.level_on(world.users["stan"], world.alpha) is None
    assert AuditEvent.objects.filter(action="share.removed").latest("id").changes["user"] == "stan"


def test_admin_group_sharing_page_shares_through_the_service(owner, world):
    url = reverse("admin:instruments_instrument_permissions_manage_group", args=[world.alpha.pk, world.group.pk])
    assert owner.client.post(url, {"level": "collect"}).status_code == 302
    assert permissions.level_on(world.users["gina"], world.alpha) == "collect"


def test_admin_sharing_needs_the_share_level(world):
    eddie = world.users["eddie"]
    eddie.is_staff = True
    eddie.save()
    eddie.groups.add(Group.objects.get(name="Operators"))
    client = APIClient()
    client.force_login(eddie)
    # eddie may change alpha (it is in his admin) but not share it
    assert client.get(reverse("admin:instruments_instrument_change", args=[world.alpha.pk])).status_code == 200
    url = reverse("admin:instruments_instrument_permissions_manage_user", args=[world.alpha.pk, world.users["stan"].pk])
    assert client.post(url, {"level": "share"}).status_code == 403
    assert permissions.level_on(world.users["stan"], world.alpha) is None


def test_admin_sharing_refuses_the_owner(owner, world):
    url = reverse(
        "admin:instruments_instrument_permissions_manage_user", args=[world.alpha.pk, world.users["olivia"].pk]
    )
    response = owner.client.get(url)
    assert response.status_code == 302 and response["Location"].endswith(f"/{world.alpha.pk}/permissions/")
