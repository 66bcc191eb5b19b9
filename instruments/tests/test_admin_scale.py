"""The admin at scale (docs/performance.md#the-admin): its lists, forms and autocompletes cost the same
number of queries at 4 and at 44 instruments, and a list filter over instruments, sources or channels is a
box to type in, never a list of every one of them."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.forms import MultiWidget
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from instruments.models import Channel, Instrument, LogbookEntry
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


def _change_form(client: Client, url: str):
    client.get(url)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200, f"{url}: {response.status_code}"
    return response, len(queries)


def _post_of(response) -> dict[str, str]:
    """What a browser submits for the change form as shown (every form of every inline unchanged)."""
    data: dict[str, str] = {}
    for form in [response.context["adminform"].form] + [
        f for s in response.context["inline_admin_formsets"] for f in [s.formset.management_form, *s.formset.forms]
    ]:
        for name, field in form.fields.items():
            value = form[name].value()
            if value is None or value is False:
                continue
            if isinstance(field.widget, MultiWidget):  # the admin's date and time boxes
                for i, part in enumerate(field.widget.decompress(value)):
                    data[f"{form.add_prefix(name)}_{i}"] = str(part)
                continue
            data[form.add_prefix(name)] = (
                "on" if value is True else ",".join(map(str, value)) if isinstance(value, list) else str(value)
            )
    return data


def test_an_instruments_change_form_holds_the_first_channels_and_logbook_not_all_of_them():
    """An instrument of thousands of channels and years of logbook: its change form holds the first 25
    channels by name and the 50 newest entries, the same queries at 40 and 400 channels, and links to the
    lists of all of them; saving it changes what it shows and nothing else."""
    client = Client()
    admin = make_user(is_superuser=True, is_staff=True)
    client.force_login(admin)
    [pk] = build_things(1, make_user(), prefix="rig", channels=40)
    instrument = Instrument.objects.get(pk=pk)
    LogbookEntry.objects.bulk_create(
        LogbookEntry(
            instrument=instrument, author=admin, text=f"entry {i}", occurred_at=timezone.now() - timedelta(hours=i)
        )
        for i in range(60)
    )
    url = f"/admin/instruments/instrument/{pk}/change/"
    _, before = _change_form(client, url)
    source = instrument.sources.get()
    Channel.objects.bulk_create(
        Channel(
            instrument=instrument, source=source, name=f"sensor {i:04d}", slug=f"sensor-{i:04d}", source_field=f"s{i}"
        )
        for i in range(360)
    )
    response, after = _change_form(client, url)
    assert after == before, "the change form's queries grew with the instrument's channels"
    inlines = {s.opts.model: s.formset for s in response.context["inline_admin_formsets"]}
    names = list(instrument.channels.order_by("name").values_list("name", flat=True))
    assert [f.instance.name for f in inlines[Channel].forms] == names[:25]
    newest = list(instrument.logbook.order_by("-occurred_at").values_list("text", flat=True))
    assert [f.instance.text for f in inlines[LogbookEntry].forms] == newest[:50]
    body = response.content.decode()
    assert "25 of 400 channels shown here" in body and "?instrument_q=rig-00000" in body
    assert "50 of 60 logbook entries shown here" in body
    listed = client.get("/admin/instruments/channel/", {"instrument_q": "rig-00000"}).context["cl"]
    assert listed.result_count == 400

    data = _post_of(response)
    first = inlines[Channel].forms[0]
    data[first.add_prefix("units")] = "kPa"
    saved = client.post(url, data)
    assert saved.status_code == 302, [saved.context["adminform"].form.errors] + [
        s.formset.errors for s in saved.context["inline_admin_formsets"]
    ]
    assert instrument.channels.get(pk=first.instance.pk).units == "kPa"
    assert instrument.channels.count() == 400 and instrument.logbook.count() == 60
    assert instrument.channels.exclude(pk=first.instance.pk).filter(units="kPa").count() == 0
