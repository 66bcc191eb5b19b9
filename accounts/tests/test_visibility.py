"""Visibility is one bounded query, however many instruments and grants there are."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from accounts import permissions
from accounts.models import InstrumentGroupPermission, InstrumentUserPermission
from instruments.models import Channel, Instrument
from instruments.tests.factories import make_user

pytestmark = pytest.mark.django_db

GRANTED, HIDDEN = 1000, 200


@pytest.fixture
def many():
    """1,200 instruments of someone else; vera holds 1,000 grants: 500 her own, 500 through her group."""
    zed, vera, team = make_user("zed"), make_user("vera"), Group.objects.create(name="team")
    vera.groups.add(team)
    Instrument.objects.bulk_create(
        [Instrument(name=f"Instrument {i:04}", slug=f"i{i:04}", owner=zed) for i in range(GRANTED + HIDDEN)]
    )
    instruments = list(Instrument.objects.order_by("slug"))
    view = Permission.objects.get(codename="view_instrument")
    change = Permission.objects.get(codename="change_instrument")
    half = GRANTED // 2
    InstrumentUserPermission.objects.bulk_create(
        [InstrumentUserPermission(user=vera, permission=view, content_object=i) for i in instruments[:half]]
    )
    InstrumentGroupPermission.objects.bulk_create(
        [InstrumentGroupPermission(group=team, permission=change, content_object=i) for i in instruments[half:GRANTED]]
    )
    Channel.objects.bulk_create(
        [Channel(instrument=i, name="t", slug="t") for i in instruments]  # one channel each
    )
    return {"vera": vera, "granted": {i.slug for i in instruments[:GRANTED]}}


def test_listing_1000_visible_instruments_is_two_queries(many, django_assert_max_num_queries):
    vera = many["vera"]
    with django_assert_max_num_queries(2):  # "is vera an Administrator?" and the list itself
        slugs = {i.slug for i in permissions.instruments_visible_to(vera)}
    assert slugs == many["granted"]


def test_restricting_their_channels_is_two_queries(many, django_assert_max_num_queries):
    vera = many["vera"]
    permissions.is_administrator(vera)  # cached on the user object, as within one request
    with django_assert_max_num_queries(2):  # the look at her instruments (at most 101 ids), then the list
        channels = list(permissions.restrict(Channel.objects.all(), vera))
    assert len(channels) == GRANTED


def _gate_sql(queryset) -> str:
    return str(queryset.query).lower()


def test_the_gate_lists_a_few_instruments_by_id_and_tests_many_through_the_grant_tables(many):
    """Two shapes of one gate (docs/performance.md#the-gates-shape), the same rows: a user who may see up to
    LISTED_UP_TO instruments gets their ids; one who may see more, the grant tables as subqueries."""
    vera, zed = many["vera"], make_user("zed-guest")
    few = list(Instrument.objects.exclude(slug__in=many["granted"]).order_by("slug")[:3])
    view = Permission.objects.get(codename="view_instrument")
    InstrumentUserPermission.objects.bulk_create(
        [InstrumentUserPermission(user=zed, permission=view, content_object=i) for i in few]
    )
    own = Instrument.objects.create(name="Zed's own", slug="zeds-own", owner=zed)
    Channel.objects.create(instrument=own, name="t", slug="t")
    assert len(few) + 1 <= permissions.LISTED_UP_TO < GRANTED

    small = permissions.restrict(Channel.objects.all(), zed)
    assert "instrumentuserpermission" not in _gate_sql(small)  # a list of ids
    assert {c.instrument.slug for c in small.select_related("instrument")} == {i.slug for i in [*few, own]}

    large = permissions.restrict(Channel.objects.all(), vera)
    assert "instrumentuserpermission" in _gate_sql(large) and "instrumentgrouppermission" in _gate_sql(large)
    assert {c.instrument.slug for c in large.select_related("instrument")} == many["granted"]
    # Either shape agrees with asking instrument by instrument, on the edges of the grants (the first and last
    # of the direct ones and of the group's; the first hidden ones, zed's three; her own, last) and a spread
    # between them: asking all 1,204 one by one was a test's worth of queries for each user.
    ordered = list(Instrument.objects.order_by("slug"))
    edges = {0, GRANTED // 2 - 1, GRANTED // 2, GRANTED - 1, GRANTED, GRANTED + 1, GRANTED + 2, len(ordered) - 1}
    sample = [i for n, i in enumerate(ordered) if n in edges or n % 41 == 0]
    for user in (zed, vera):
        expected = {i.pk for i in sample if permissions.has_perm(user, permissions.VIEW, i)}
        gated = set(permissions.restrict(Channel.objects.all(), user).values_list("instrument_id", flat=True))
        assert gated & {i.pk for i in sample} == expected


def test_levels_through_groups_are_counted(many, django_assert_max_num_queries):
    vera = many["vera"]
    with django_assert_max_num_queries(2):
        changeable = permissions.instruments_for(vera, "change").count()
    assert changeable == GRANTED // 2


@pytest.mark.urls("accounts.tests.probe_urls")
def test_the_api_base_lists_1000_instruments_in_a_bounded_number_of_queries(many):
    client = APIClient()
    client.force_login(many["vera"])
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/api/rows/?limit=1000")
    assert response.status_code == 200
    assert response.json()["count"] == GRANTED
    assert {row["slug"] for row in response.json()["results"]} == many["granted"]
    # session, user, "Administrator?", count, page: whatever the number of rows and grants
    assert len(queries) <= 6, "\n".join(q["sql"][:200] for q in queries)
    print(f"\nAPI list of {GRANTED} instruments with {GRANTED} grants: {len(queries)} queries")


@pytest.mark.urls("accounts.tests.probe_urls")
def test_the_api_base_answers_404_for_a_hidden_instrument(many):
    client = APIClient()
    client.force_login(many["vera"])
    assert client.get("/api/rows/i0001/").status_code == 200
    assert client.get(f"/api/rows/i{GRANTED + 1:04}/").status_code == 404  # exists, hidden
    assert client.get("/api/rows/nonexistent/").status_code == 404  # the same answer
