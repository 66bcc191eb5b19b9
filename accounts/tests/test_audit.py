"""The audit trail: append-only, readable in the admin by Administrators only, and written for every
deletion of readings whichever way it happens."""

from __future__ import annotations

import time

import pytest
from django.urls import reverse

from accounts.audit import client_address, record
from accounts.choices import AuditAction
from accounts.models import AuditEvent, AuditTrailIsAppendOnly
from collection.models import Sample
from collection.services.ingest import SampleBatch, ingest_samples
from instruments.tests.factories import make_channel

pytestmark = pytest.mark.django_db


@pytest.fixture
def event():
    return record(AuditAction.CONFIG_CHANGED, object_type="instruments.instrument", object_id=1, changes={"a": [1, 2]})


def test_events_cannot_be_changed_or_deleted(event):
    event.object_repr = "tampered"
    with pytest.raises(AuditTrailIsAppendOnly):
        event.save()
    with pytest.raises(AuditTrailIsAppendOnly):
        event.delete()
    with pytest.raises(AuditTrailIsAppendOnly):
        AuditEvent.objects.filter(pk=event.pk).update(object_repr="tampered")
    with pytest.raises(AuditTrailIsAppendOnly):
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.get(pk=event.pk).object_repr == ""


def test_unknown_actions_are_refused():
    with pytest.raises(ValueError):
        record("something.else")


def test_a_system_event_has_no_actor(event):
    assert (event.actor, event.actor_label) == (None, "system")


def test_the_admin_shows_events_to_administrators_and_lets_nobody_edit_them(administrator, owner, world):
    event = AuditEvent.objects.earliest("at")
    change = reverse("admin:accounts_auditevent_change", args=[event.pk])
    page = administrator.client.get(change)
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()  # read-only: no save button
    assert administrator.client.post(change, {"object_repr": "tampered"}).status_code == 403
    delete = reverse("admin:accounts_auditevent_delete", args=[event.pk])
    assert administrator.client.post(delete, {"post": "yes"}).status_code == 403
    changelist = reverse("admin:accounts_auditevent_changelist")
    response = administrator.client.post(changelist, {"action": "delete_selected", "_selected_action": [event.pk]})
    assert AuditEvent.objects.filter(pk=event.pk).exists() and response.status_code in (200, 302)
    assert owner.client.get(changelist).status_code == 403
    event.refresh_from_db()
    assert event.object_repr == str(world.alpha)


def store_a_reading(channel) -> None:
    ingest_samples(SampleBatch.from_rows([(channel.pk, time.time_ns() // 1000, 1.0)]))


def test_deleting_a_channel_in_the_admin_records_the_deleted_readings(owner, world):
    # (the world's channel has alarm events, which an Operator may not delete: take a fresh one)
    channel = make_channel(world.alpha, name="spare", slug="spare")
    store_a_reading(channel)
    response = owner.client.post(
        reverse("admin:instruments_channel_delete", args=[channel.pk]), {"post": "yes"}, REMOTE_ADDR="192.0.2.44"
    )
    assert response.status_code == 302
    assert not Sample.objects.filter(channel_id=channel.pk).exists()
    event = AuditEvent.objects.get(action="samples.deleted")
    assert (event.actor, event.address) == (world.users["olivia"], "192.0.2.44")
    assert event.changes["channel"] == "spare" and event.changes["instrument"] == "alpha-station"


def test_deleting_an_instrument_records_each_channel_with_readings(world):
    store_a_reading(world.zulu_channel)
    world.zulu.delete()  # from the shell: the system did it
    event = AuditEvent.objects.get(action="samples.deleted")
    assert (event.actor_label, event.changes["channel"]) == ("system", world.zulu_channel.slug)


def test_a_channel_without_readings_deletes_quietly(world):
    world.zulu_channel.delete()
    assert not AuditEvent.objects.filter(action="samples.deleted").exists()


def test_client_address_trusts_forwarded_for_only_behind_our_proxy(rf, settings):
    request = rf.get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.5")
    settings.DAQBROKER_BEHIND_PROXY = False
    assert client_address(request) == "10.0.0.1"
    settings.DAQBROKER_BEHIND_PROXY = True
    assert client_address(request) == "203.0.113.5"  # what our proxy appended; the first entry is forgeable
    assert client_address(rf.get("/", REMOTE_ADDR="not an address")) is None
