"""The admin beside the sources: recent runs, "collect now", "validate now", alarm events and their
acknowledgement, each operator seeing only the instruments they may reach."""

from __future__ import annotations

import numpy as np
import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from collection.alarms import evaluate
from collection.alarms.models import AlarmEvent, AlarmRule
from collection.choices import RunStatus
from collection.models import CollectionRun
from collection.services import SampleBatch, ingest_samples
from daqbroker_agent.parsing import now_us
from instruments.tests.factories import make_channel, make_instrument, make_source, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def source(tmp_path):
    return make_source(make_instrument(name="Roof station"), config={"path": str(tmp_path)})


def raise_alarm(channel) -> AlarmEvent:
    AlarmRule.objects.get_or_create(name=f"hot {channel.pk}", instrument=channel.instrument, threshold=30)
    spans = ingest_samples(SampleBatch(np.array([channel.pk]), np.array([now_us() - 10**6]), np.array([31.0]))).spans
    evaluate.evaluate_after_ingest(spans)
    return AlarmEvent.objects.get(channel=channel)


def test_source_page_shows_its_recent_runs(admin_client, source):
    CollectionRun.objects.create(
        source=source,
        started_at=timezone.now(),
        finished_at=timezone.now(),
        status=RunStatus.SUCCESS,
        accepted=42,
        note="re-read from the start; continues next run",
    )
    CollectionRun.objects.create(
        source=source, started_at=timezone.now(), status=RunStatus.FAILED, error="FileNotFoundError: gone"
    )
    page = admin_client.get(reverse("admin:instruments_datasource_change", args=[source.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Recent collection runs" in html
    assert "<td>42</td>" in html
    assert "FileNotFoundError: gone" in html
    assert "<th>Note</th>" in html and "<td>re-read from the start; continues next run</td>" in html
    assert f"?source__id__exact={source.pk}" in html
    runs = admin_client.get(reverse("admin:collection_collectionrun_changelist"), {"source__id__exact": source.pk})
    assert runs.status_code == 200
    assert "FileNotFoundError: gone" in runs.content.decode()
    assert "column-short_note" in runs.content.decode() and "re-read from the start" in runs.content.decode()


@pytest.mark.parametrize(
    ("action", "message"),
    [("collect_now", "Collection queued for 1 data source(s)."), ("validate_sources_now", "Validation queued")],
)
def test_collect_now_and_validate_now_queue_tasks(admin_client, source, action, message):
    make_channel(source.instrument, source=source)  # a source without channels is not collected: it waits
    response = admin_client.post(
        reverse("admin:instruments_datasource_changelist"),
        {"action": action, "_selected_action": [source.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert message in response.content.decode()


def test_validate_now_on_channels(admin_client, source):
    channel = make_channel(source.instrument, source=source)
    response = admin_client.post(
        reverse("admin:instruments_channel_changelist"),
        {"action": "validate_channels_now", "_selected_action": [channel.pk]},
        follow=True,
    )
    assert "Validation queued for 1 channel(s)." in response.content.decode()


def test_alarm_events_are_listed_and_acknowledged(admin_client, admin_user, source):
    event = raise_alarm(make_channel(source.instrument, slug="temp", units="degC"))
    listing = admin_client.get(reverse("admin:collection_alarmevent_changelist"), {"state": "active"}).content.decode()
    assert f"/admin/collection/alarmevent/{event.pk}/change/" in listing
    assert f">{event.channel}</td>" in listing  # the channel column: "<instrument slug>/temp"
    assert admin_client.get(reverse("admin:collection_alarmevent_change", args=[event.pk])).status_code == 200
    response = admin_client.post(
        reverse("admin:collection_alarmevent_changelist"),
        {"action": "acknowledge", "_selected_action": [event.pk]},
        follow=True,
    )
    assert "1 alarm(s) acknowledged." in response.content.decode()
    event.refresh_from_db()
    assert event.acknowledged_by == admin_user
    for name in ("alarmrule", "spikecheck", "alarmsubscription", "alarmnotification"):
        assert admin_client.get(reverse(f"admin:collection_{name}_changelist")).status_code == 200
    assert admin_client.get(reverse("admin:collection_alarmrule_add")).status_code == 200


def test_an_operator_sees_and_acknowledges_only_the_alarms_of_instruments_they_reach(client, source):
    operator = make_user(is_staff=True)
    operator.user_permissions.add(*Permission.objects.filter(codename__in=["view_alarmevent", "view_collectionrun"]))
    mine = make_instrument(operator, name="Operator's station")
    my_event = raise_alarm(make_channel(mine, slug="mine"))
    their_event = raise_alarm(make_channel(source.instrument, slug="theirs"))
    client.force_login(operator)
    listing = client.get(reverse("admin:collection_alarmevent_changelist")).content.decode()
    assert f"/admin/collection/alarmevent/{my_event.pk}/change/" in listing
    assert f"/admin/collection/alarmevent/{their_event.pk}/change/" not in listing
    theirs = client.get(reverse("admin:collection_alarmevent_change", args=[their_event.pk]))
    assert theirs.status_code in (302, 403, 404)
    client.post(
        reverse("admin:collection_alarmevent_changelist"),
        {"action": "acknowledge", "_selected_action": [my_event.pk, their_event.pk]},
    )
    my_event.refresh_from_db()
    their_event.refresh_from_db()
    assert my_event.acknowledged_by == operator
    assert their_event.acknowledged_at is None


def test_a_rule_must_select_some_channels_and_a_list_of_channels_is_enough(admin_client, source):
    channel = make_channel(source.instrument, slug="temp")
    form = {"name": "hot", "enabled": "on", "kind": "above", "severity": "warning", "threshold": "30",
            "hysteresis": "0", "min_duration_seconds": "0", "stale_factor": "3", "notify_contacts": "on"}  # fmt: skip
    refused = admin_client.post(reverse("admin:collection_alarmrule_add"), form)
    assert refused.status_code == 200
    assert "Choose which channels this applies to" in refused.content.decode()
    saved = admin_client.post(reverse("admin:collection_alarmrule_add"), {**form, "channels": [channel.pk]})
    assert saved.status_code == 302
    assert list(AlarmRule.objects.get(name="hot").selected_channels()) == [channel]
