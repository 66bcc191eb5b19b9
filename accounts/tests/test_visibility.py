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


def test_restricting_their_channels_is_one_query(many, django_assert_max_num_queries):
    vera = many["vera"]
    permissions.is_administrator(vera)  # cached on the user object, as within one request
    with django_assert_max_num_queries(1):
        channels = list(permissions.restrict(Channel.objects.all(), vera))
    assert len(channels) == GRANTED


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
