"""The admin's bulk channel edit: units, valid range or sentinels on many channels at once, each checked like
its own form, all or nothing, audited; and the data-source page's link to the guided setup."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from accounts.choices import AuditAction
from accounts.models import AuditEvent
from instruments.choices import ChannelKind
from instruments.models import Channel
from instruments.tests.factories import make_channel, make_instrument, make_source, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client():
    client = Client()
    client.force_login(make_user("ada", is_staff=True, is_superuser=True))
    return client


def bulk(client, channels, **fields):
    data = {"action": "bulk_edit", "_selected_action": [c.pk for c in channels], "apply": "1", **fields}
    return client.post(reverse("admin:instruments_channel_changelist"), data)


def test_the_action_shows_a_form_for_the_selected_channels(admin_client):
    a, b = make_channel(slug="a1"), make_channel(slug="b1")
    data = {"action": "bulk_edit", "_selected_action": [a.pk, b.pk]}
    page = admin_client.post(reverse("admin:instruments_channel_changelist"), data)
    assert page.status_code == 200 and b"Set missing-value sentinels" in page.content
    assert str(a).encode() in page.content and str(b).encode() in page.content


def test_ticked_fields_are_set_on_every_channel_and_audited(admin_client):
    instrument = make_instrument()
    a = make_channel(instrument=instrument, slug="a1", valid_max=5)
    b = make_channel(instrument=instrument, slug="b1", valid_max=7)
    response = bulk(admin_client, [a, b], set_units="on", units="deg C", set_missing_values="on",
                    missing_values="-9999, -7999", valid_max="99")  # fmt: skip
    assert response.status_code == 302
    for channel in Channel.objects.filter(pk__in=[a.pk, b.pk]):
        assert channel.units == "degC" and channel.missing_values == [-9999.0, -7999.0]
    assert Channel.objects.get(pk=a.pk).valid_max == 5  # not ticked: unchanged
    assert AuditEvent.objects.filter(action=AuditAction.CONFIG_CHANGED).count() == 2


def test_one_refused_channel_changes_none(admin_client):
    instrument = make_instrument()
    a = make_channel(instrument=instrument, slug="a1")
    text = make_channel(instrument=instrument, slug="t1", kind=ChannelKind.TEXT)
    response = bulk(admin_client, [a, text], set_units="on", units="V")
    assert response.status_code == 200 and b"Text channels have no units" in response.content
    assert Channel.objects.get(pk=a.pk).units == ""


def test_bad_sentinels_are_a_form_error(admin_client):
    a = make_channel(slug="a1")
    response = bulk(admin_client, [a], set_missing_values="on", missing_values="-9999, lots")
    assert response.status_code == 200 and b"separated by commas" in response.content


def test_the_data_source_page_links_to_the_guided_setup(admin_client):
    source = make_source(instrument=make_instrument(slug="st"))
    page = admin_client.get(reverse("admin:instruments_datasource_change", args=[source.pk]))
    assert reverse("instruments:source-edit", args=["st", source.pk]).encode() in page.content
