"""Alarm notifications: who is emailed, one email per raise and per clear whatever happens twice, and
webhooks retried on transient errors against a real local HTTP server."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone

from accounts import services
from collection.alarms import evaluate, notify
from collection.alarms.choices import DeliveryStatus, Medium, RuleKind, Transition
from collection.alarms.models import AlarmEvent, AlarmNotification, AlarmRule, AlarmSubscription
from collection.services import SampleBatch, ingest_samples
from daqbroker_agent.parsing import now_us
from instruments.tests.factories import make_channel, make_instrument, make_user

pytestmark = pytest.mark.django_db

S = 1_000_000


@pytest.fixture(autouse=True)
def fast_retries(settings):
    settings.DAQBROKER_WEBHOOK_RETRY_SECONDS = 1
    settings.DAQBROKER_WEBHOOK_ATTEMPTS = 4
    settings.DAQBROKER_WEBHOOK_TIMEOUT = 5


@pytest.fixture
def station():
    owner = make_user("owner", email="owner@example.org")
    instrument = make_instrument(owner, name="Roof station", contact_email="ops@example.org")
    temp = make_channel(instrument, slug="temp", name="Air temperature", units="degC")
    return instrument, temp


def feed(channel, points, capture) -> None:
    t0 = (now_us() // S - 600) * S
    ts = np.array([t0 + s * S for s, _ in points], dtype=np.int64)
    with capture(execute=False):  # notifications are queued after commit; the test delivers them itself
        spans = ingest_samples(
            SampleBatch(np.full(len(ts), channel.pk), ts, np.array([v for _, v in points], float))
        ).spans
        evaluate.evaluate_after_ingest(spans)


def deliver_all() -> list:
    return [notify.deliver(pk) for pk in AlarmNotification.objects.order_by("pk").values_list("pk", flat=True)]


def test_one_email_per_raise_and_per_clear_to_contacts_owner_and_permitted_subscribers(
    station, mailoutbox, django_capture_on_commit_callbacks
):
    instrument, temp = station
    viewer = make_user("viewer", email="viewer@example.org")
    services.share(instrument, viewer, "view")
    stranger = make_user("stranger", email="stranger@example.org")
    AlarmSubscription.objects.create(user=viewer, instrument=instrument)
    AlarmSubscription.objects.create(user=stranger, instrument=instrument)  # may not see it: not told
    AlarmRule.objects.create(
        name="hot", instrument=instrument, threshold=30, hysteresis=1, extra_emails="Team@example.org, ops@EXAMPLE.org"
    )
    feed(temp, [(0, 25), (1, 31.5)], django_capture_on_commit_callbacks)
    deliver_all()
    deliver_all()  # a second delivery of the same notifications sends nothing
    assert len(mailoutbox) == 1
    raised = mailoutbox[0]
    assert raised.to == ["ops@example.org", "owner@example.org", "viewer@example.org", "Team@example.org"]
    assert raised.subject == "[DAQBroker] Warning RAISED: Roof station / Air temperature"
    assert "Roof station / Air temperature: 31.5 degC (hot: above 30)" in raised.body
    assert "/admin/collection/alarmevent/" in raised.body

    feed(temp, [(2, 29.5), (3, 28.9)], django_capture_on_commit_callbacks)
    deliver_all()
    assert len(mailoutbox) == 2
    assert mailoutbox[1].subject == "[DAQBroker] Warning cleared: Roof station / Air temperature"
    assert "Cleared at:" in mailoutbox[1].body
    assert set(AlarmNotification.objects.values_list("status", flat=True)) == {DeliveryStatus.SENT}


def test_notifications_are_queued_only_after_the_evaluation_commits(station, django_capture_on_commit_callbacks):
    instrument, temp = station
    AlarmRule.objects.create(name="hot", instrument=instrument, threshold=30)
    t0 = (now_us() // S - 600) * S
    spans = ingest_samples(SampleBatch(np.array([temp.pk]), np.array([t0]), np.array([31.0]))).spans
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        evaluate.evaluate_after_ingest(spans)
    assert len(callbacks) == 1  # one hook queueing the deliveries, run only if the transaction commits
    assert AlarmNotification.objects.get().status == DeliveryStatus.PENDING


def test_nobody_to_tell_is_recorded_not_sent(station, mailoutbox, django_capture_on_commit_callbacks):
    instrument, temp = station
    instrument.contact_email = ""
    instrument.save()
    instrument.owner.email = ""
    instrument.owner.save()
    AlarmRule.objects.create(name="hot", instrument=instrument, threshold=30)
    feed(temp, [(0, 31)], django_capture_on_commit_callbacks)
    assert AlarmNotification.objects.get().status == DeliveryStatus.SKIPPED
    deliver_all()
    assert mailoutbox == []


def test_webhook_is_retried_on_server_errors_then_delivered_once(
    station, http_recorder, django_capture_on_commit_callbacks
):
    instrument, temp = station
    receiver = http_recorder([500, 503])
    AlarmRule.objects.create(
        name="hot", instrument=instrument, threshold=30, notify_contacts=False, webhook_url=receiver.url,
        webhook_secret="s3cret",
    )  # fmt: skip
    feed(temp, [(0, 31)], django_capture_on_commit_callbacks)
    webhook = AlarmNotification.objects.get(medium=Medium.WEBHOOK)
    first = notify.deliver(webhook.pk)
    assert isinstance(first, notify.RetryLater) and 0.75 <= first.delay <= 1.25
    second = notify.deliver(webhook.pk)
    assert isinstance(second, notify.RetryLater) and 1.5 <= second.delay <= 2.5  # backing off
    assert notify.deliver(webhook.pk) is None
    assert notify.deliver(webhook.pk) is None  # already sent: nothing
    webhook.refresh_from_db()
    assert (webhook.status, webhook.attempts) == (DeliveryStatus.SENT, 3)
    assert [r["status"] for r in receiver.requests] == [500, 503, 200]
    assert {r["headers"]["x-daqbroker-delivery"] for r in receiver.requests} == {str(webhook.pk)}
    request = receiver.requests[-1]
    expected = "sha256=" + hmac.new(b"s3cret", request["body"], hashlib.sha256).hexdigest()
    assert request["headers"]["x-daqbroker-signature"] == expected
    payload = json.loads(request["body"])
    assert payload["transition"] == Transition.RAISED
    assert payload["channel"] == {"slug": "temp", "name": "Air temperature", "units": "degC"}
    assert payload["raised_value"] == 31.0
    assert payload["rule"]["condition"] == "above 30"


def test_webhook_refused_with_a_client_error_is_not_retried(station, http_recorder, django_capture_on_commit_callbacks):
    instrument, temp = station
    receiver = http_recorder([404])
    AlarmRule.objects.create(name="hot", instrument=instrument, threshold=30, webhook_url=receiver.url)
    feed(temp, [(0, 31)], django_capture_on_commit_callbacks)
    webhook = AlarmNotification.objects.get(medium=Medium.WEBHOOK)
    assert notify.deliver(webhook.pk) is None
    webhook.refresh_from_db()
    assert webhook.status == DeliveryStatus.FAILED
    assert "HTTP 404" in webhook.last_error


def test_webhook_gives_up_after_the_last_attempt(station, http_recorder, django_capture_on_commit_callbacks):
    instrument, temp = station
    receiver = http_recorder([502] * 10)
    AlarmRule.objects.create(name="hot", instrument=instrument, threshold=30, webhook_url=receiver.url)
    feed(temp, [(0, 31)], django_capture_on_commit_callbacks)
    webhook = AlarmNotification.objects.get(medium=Medium.WEBHOOK)
    outcomes = [notify.deliver(webhook.pk) for _ in range(5)]
    assert [type(o).__name__ for o in outcomes] == ["RetryLater", "RetryLater", "RetryLater", "NoneType", "NoneType"]
    webhook.refresh_from_db()
    assert (webhook.status, webhook.attempts, len(receiver.requests)) == (DeliveryStatus.FAILED, 4, 4)
    assert webhook.last_error.startswith("gave up after 4 attempts")


def test_unreachable_webhook_is_a_transient_error(station, django_capture_on_commit_callbacks):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    instrument, temp = station
    AlarmRule.objects.create(name="hot", instrument=instrument, threshold=30, webhook_url=f"http://127.0.0.1:{port}/")
    feed(temp, [(0, 31)], django_capture_on_commit_callbacks)
    webhook = AlarmNotification.objects.get(medium=Medium.WEBHOOK)
    assert isinstance(notify.deliver(webhook.pk), notify.RetryLater)
    webhook.refresh_from_db()
    assert webhook.status == DeliveryStatus.RETRYING
    assert "Connection refused" in webhook.last_error


def test_sweep_gives_up_on_interrupted_sends_and_requeues_forgotten_ones(station, django_capture_on_commit_callbacks):
    instrument, temp = station
    AlarmRule.objects.create(name="stale", instrument=instrument, kind=RuleKind.STALE, units="degC")
    AlarmRule.objects.create(name="hot", instrument=instrument, threshold=30)
    feed(temp, [(0, 31)], django_capture_on_commit_callbacks)
    event = AlarmEvent.objects.get()
    sending = AlarmNotification.objects.get(event=event)
    AlarmNotification.objects.filter(pk=sending.pk).update(
        status=DeliveryStatus.SENDING, claimed_at=timezone.now() - timedelta(hours=1)
    )
    forgotten = AlarmNotification.objects.create(
        event=event, transition=Transition.CLEARED, medium=Medium.EMAIL, recipients=["a@example.org"]
    )
    AlarmNotification.objects.filter(pk=forgotten.pk).update(created=timezone.now() - timedelta(minutes=10))
    assert notify.sweep() == {"abandoned": 1, "requeued": 1}
    sending.refresh_from_db()
    assert sending.status == DeliveryStatus.FAILED
    assert "not retried, so as never to send twice" in sending.last_error
