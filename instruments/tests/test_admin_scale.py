"""The admin at scale (docs/performance.md#the-admin): its lists, forms and autocompletes cost the same
number of queries at 4 and at 44 instruments, and a list filter over instruments, sources or channels is a
box to type in, never a list of every one of them."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from instruments.models import Channel
from instruments.tests.factories import make_user
from instruments.tests.many_things import build_things

pytestmark = pytest.mark.django_db

URLS = {
    "instruments": "/admin/instruments/instrument/",
    "channels": "/admin/instruments/channel/",
    "sources": "/admin/instruments/datasource/",
    "logbook": "/admin/instruments/logbookentry/",
    "channel form": "/admin/instruments/channel/add/",
    "source form": "/admin/instruments/datasource/add/",
    "alarm events": "/admin/collection/alarmevent/",
    "collection runs": "/admin/collection/collectionrun/",
    "quarantine": "/admin/collection/rejectedsample/",
    "instrument autocomplete": "/admin/autocomplete/?app_label=instruments&model_name=channel&field_name=instrument"
    "&term=0001",
    "source autocomplete": "/admin/autocomplete/?app_label=instruments&model_name=channel&field_name=source&term=log",
}


def _queries(client: Client) -> dict[str, int]:
    counts = {}
    for name, url in URLS.items():
        client.get(url)
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url)
        assert response.status_code == 200, f"{url}: {response.status_code}"
        counts[name] = len(queries)
    return counts


def test_the_admins_lists_forms_and_autocompletes_cost_the_same_queries_at_4_and_44_instruments():
    client = Client()
    client.force_login(make_user(is_superuser=True, is_staff=True))
    owner = make_user()
    build_things(4, owner, prefix="small")
    small = _queries(client)
    build_things(40, owner, prefix="large")
    large = _queries(client)
    grown = {name: (small[name], large[name]) for name in small if large[name] != small[name]}
    assert not grown, f"queries grew with the number of instruments: {grown}"


def test_an_instrument_filter_is_typed_not_a_list_of_every_instrument():
    client = Client()
    client.force_login(make_user(is_superuser=True, is_staff=True))
    build_things(30, make_user(), prefix="lab", channels=2)
    body = client.get("/admin/instruments/channel/").content.decode()
    assert 'name="instrument_q"' in body
    assert "lab-00029" not in body.split('id="changelist-filter"')[1]  # the sidebar names no instrument
    filtered = client.get("/admin/instruments/channel/", {"instrument_q": "lab-00007", "kind__exact": "numeric"})
    rows = filtered.context["cl"].result_list
    assert {c.instrument.slug for c in rows} == {"lab-00007"} and len(rows) == 2
    by_name = client.get("/admin/instruments/datasource/", {"instrument_q": "lab 0001"}).context["cl"].result_list
    assert sorted(s.instrument.slug for s in by_name) == [f"lab-{i:05d}" for i in range(10, 20)]
    assert Channel.objects.count() == 60
