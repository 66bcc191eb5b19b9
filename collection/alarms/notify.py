"""Alarm notifications: who is told, the outbox, and delivery by email and webhook.

When an alarm is raised or cleared, ``queue`` writes one ``AlarmNotification`` per medium (email,
webhook) in the same transaction, and asks for delivery once that transaction commits. The outbox row is
unique per (event, transition, medium), and delivery claims it by compare-and-set (pending -> sending):
so however many workers evaluate or deliver, each is sent once. A delivery interrupted while "sending"
(the worker died) is marked failed rather than sent again. Webhooks are retried on transient errors
(connection problems, timeouts, HTTP 429 and 5xx) with exponential backoff and jitter, up to
``DAQBROKER_WEBHOOK_ATTEMPTS`` attempts; each request carries ``X-DAQBroker-Delivery`` (the outbox id, the
same on every retry) so a receiver can drop repeats of a request it did get.

Email goes to the instrument's contact address, its owner and its subscribers who may view it (when the
rule says so), plus the rule's extra addresses.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import random
import smtplib
import socket
import ssl
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from celery import current_app
from django.conf import settings
from django.core.mail import EmailMessage
from django.db import transaction
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from accounts import targets
from accounts.permissions import VIEW, has_instrument_perm
from collection.alarms.choices import DeliveryStatus, Medium, Transition
from collection.alarms.models import AlarmEvent, AlarmNotification, AlarmSubscription

logger = logging.getLogger(__name__)

SENDING_GIVE_UP = timedelta(minutes=30)
# Queued by name: collection.alarms.tasks imports this module, so importing the task here would be a cycle.
DELIVER_NOTIFICATION_TASK = "collection.alarms.tasks.deliver_notification"
PENDING_REQUEUE = timedelta(minutes=2)


def can_view(user, instrument) -> bool:
    return has_instrument_perm(user, VIEW, instrument)


def email_recipients(event: AlarmEvent) -> list[str]:
    rule, instrument = event.rule, event.channel.instrument
    addresses: list[str] = []
    if rule.notify_contacts:
        if instrument.contact_email:
            addresses.append(instrument.contact_email)
        owner = instrument.owner
        if owner.is_active and owner.email:
            addresses.append(owner.email)
        subscriptions = AlarmSubscription.objects.filter(instrument=instrument, user__is_active=True).select_related(
            "user"
        )
        addresses.extend(s.user.email for s in subscriptions if s.user.email and can_view(s.user, instrument))
    addresses.extend(rule.email_list())
    unique: dict[str, str] = {}
    for address in addresses:
        unique.setdefault(address.lower(), address)
    return list(unique.values())


def queue(event: AlarmEvent, transition: str) -> list[AlarmNotification]:
    """Write the event's notifications for ``transition`` and deliver them after the transaction commits."""
    rows = [
        AlarmNotification(
            event=event,
            transition=transition,
            medium=Medium.EMAIL,
            recipients=(emails := email_recipients(event)),
            status=DeliveryStatus.PENDING if emails else DeliveryStatus.SKIPPED,
        )
    ]
    if event.rule.webhook_url:
        rows.append(
            AlarmNotification(
                event=event, transition=transition, medium=Medium.WEBHOOK, recipients=[event.rule.webhook_url]
            )
        )
    for row in rows:
        row.save()
    pending = [row.pk for row in rows if row.status == DeliveryStatus.PENDING]
    if pending:
        transaction.on_commit(lambda: enqueue(pending))
    return rows


def enqueue(notification_ids: list[int]) -> None:
    for notification_id in notification_ids:
        try:
            current_app.send_task(DELIVER_NOTIFICATION_TASK, args=[notification_id])
        except Exception:  # the broker is down: the periodic sweep sends it later
            logger.exception("could not queue delivery of alarm notification %s", notification_id)


# --- delivery ----------------------------------------------------------------------------------------


class TransientError(Exception):
    """Worth trying again later."""


@dataclass(frozen=True)
class RetryLater:
    delay: float


def retry_delay(attempts: int) -> float:
    """Exponential backoff with jitter: about base, 2 x base, 4 x base, ... seconds."""
    base = settings.DAQBROKER_WEBHOOK_RETRY_SECONDS * 2 ** max(attempts - 1, 0)
    return base * random.uniform(0.75, 1.25)


def deliver(notification_id: int) -> RetryLater | None:
    """Send one notification if nobody else is sending or has sent it; RetryLater after a transient error."""
    claimed = AlarmNotification.objects.filter(
        pk=notification_id, status__in=[DeliveryStatus.PENDING, DeliveryStatus.RETRYING]
    ).update(status=DeliveryStatus.SENDING, claimed_at=timezone.now(), attempts=F("attempts") + 1)
    if not claimed:
        return None
    notification = AlarmNotification.objects.select_related(
        "event__rule", "event__channel__instrument", "event__channel__source"
    ).get(pk=notification_id)
    try:
        if notification.medium == Medium.EMAIL:
            send_email(notification)
        else:
            send_webhook(notification)
    except TransientError as exc:
        if notification.attempts >= settings.DAQBROKER_WEBHOOK_ATTEMPTS:
            _finish(notification, DeliveryStatus.FAILED, f"gave up after {notification.attempts} attempts: {exc}")
            return None
        _finish(notification, DeliveryStatus.RETRYING, str(exc))
        return RetryLater(retry_delay(notification.attempts))
    except Exception as exc:
        logger.warning("alarm notification %s failed: %s", notification_id, exc)
        _finish(notification, DeliveryStatus.FAILED, f"{type(exc).__name__}: {exc}")
        return None
    _finish(notification, DeliveryStatus.SENT, "")
    return None


def _finish(notification: AlarmNotification, status: str, error: str) -> None:
    AlarmNotification.objects.filter(pk=notification.pk, status=DeliveryStatus.SENDING).update(
        status=status,
        last_error=error[:2000],
        sent_at=timezone.now() if status == DeliveryStatus.SENT else None,
    )


def describe(notification: AlarmNotification) -> dict:
    """The JSON a webhook receives (and the facts an email states)."""
    event = notification.event
    channel, rule = event.channel, event.rule
    return {
        "delivery": notification.pk,
        "event": event.pk,
        "transition": notification.transition,
        "active": event.active,
        "severity": event.severity,
        "message": event.message,
        "rule": {"id": rule.pk, "name": rule.name, "kind": rule.kind, "condition": rule.describe()},
        "instrument": {"slug": channel.instrument.slug, "name": channel.instrument.name},
        "channel": {"slug": channel.slug, "name": channel.name, "units": channel.units},
        "condition_since": _iso(event.condition_since),
        "raised_at": _iso(event.raised_at),
        "raised_value": event.raised_value,
        "cleared_at": _iso(event.cleared_at),
        "cleared_value": event.cleared_value,
        "url": _event_url(event),
    }


def _iso(moment) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def _event_url(event: AlarmEvent) -> str:
    path = reverse("admin:collection_alarmevent_change", args=[event.pk])
    return f"{settings.DAQBROKER_SITE_URL}{path}" if settings.DAQBROKER_SITE_URL else path


def send_email(notification: AlarmNotification) -> None:
    facts = describe(notification)
    event = notification.event
    word = "RAISED" if notification.transition == Transition.RAISED else "cleared"
    subject = (
        f"[DAQBroker] {event.get_severity_display()} {word}: {event.channel.instrument.name} / {event.channel.name}"
    )
    lines = [
        f"Alarm {word}: {event.message}",
        "",
        f"Rule:       {event.rule.name} ({facts['rule']['condition']})",
        f"Instrument: {facts['instrument']['name']} ({facts['instrument']['slug']})",
        f"Channel:    {facts['channel']['name']} ({facts['channel']['slug']})",
        f"Raised at:  {facts['raised_at']}"
        + (f", value {event.raised_value:.6g}" if event.raised_value is not None else ""),
    ]
    if event.cleared_at:
        value = f", value {event.cleared_value:.6g}" if event.cleared_value is not None else ""
        lines.append(f"Cleared at: {facts['cleared_at']}{value}")
    lines += ["", f"Details and acknowledgement: {facts['url']}"]
    message = EmailMessage(subject=subject[:250], body="\n".join(lines), to=notification.recipients)
    try:
        message.send()
    except (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, ConnectionError, TimeoutError) as exc:
        raise TransientError(f"mail server: {exc}") from exc


def send_webhook(notification: AlarmNotification) -> None:
    (url,) = notification.recipients
    body = json.dumps(describe(notification)).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "DAQBroker-alarms/1",
        "X-DAQBroker-Delivery": str(notification.pk),
    }
    secret = notification.event.rule.webhook_secret
    if secret:
        headers["X-DAQBroker-Signature"] = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    try:
        # The one target check at send time: the rules may have changed since the rule was saved.
        host, address = targets.check_webhook_url(url)
    except targets.TargetRefused as exc:
        raise ValueError(exc.reason) from None
    try:
        status, location = _post_pinned(url, host, address, body, headers)
    except (OSError, http.client.HTTPException) as exc:  # refused, unreachable, timed out, cut off
        raise TransientError(f"{url}: {exc}") from exc
    if 300 <= status < 400:
        raise ValueError(f"HTTP {status} from {url} (to {location or '?'}): webhooks never follow redirects")
    if status == 429 or status >= 500:
        raise TransientError(f"HTTP {status} from {url}")
    if status >= 400:
        raise ValueError(f"HTTP {status} from {url}: the receiver refused the notification")


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to the checked address, with the certificate checked against the URL's host name."""

    def __init__(self, host: str, port: int | None, address: str, **kwargs):
        self.tls = ssl.create_default_context()
        super().__init__(host, port, context=self.tls, **kwargs)
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int | None, address: str, **kwargs):
        super().__init__(host, port, **kwargs)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


def _post_pinned(url: str, host: str, address, body: bytes, headers: dict) -> tuple[int, str]:
    """POST ``body`` to ``url`` over a connection to ``address`` (the one the target check approved, so a
    name re-pointed in DNS meanwhile is not followed). http.client never follows redirects."""
    parts = urlsplit(url)
    cls = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
    connection = cls(host, parts.port, str(address), timeout=settings.DAQBROKER_WEBHOOK_TIMEOUT)
    try:
        path = parts.path or "/"
        connection.request("POST", f"{path}?{parts.query}" if parts.query else path, body=body, headers=headers)
        response = connection.getresponse()
        response.read(1024)
        return response.status, response.getheader("Location", "")
    finally:
        connection.close()


def sweep() -> dict[str, int]:
    """Periodic: queue deliveries that were never queued (broker outage, a worker lost between commit and
    queueing), and give up on deliveries interrupted while sending (never sent twice)."""
    now = timezone.now()
    abandoned = AlarmNotification.objects.filter(
        status=DeliveryStatus.SENDING, claimed_at__lt=now - SENDING_GIVE_UP
    ).update(
        status=DeliveryStatus.FAILED,
        last_error="delivery interrupted (the worker stopped while sending); not retried, so as never to send twice",
    )
    stuck = list(
        AlarmNotification.objects.filter(status=DeliveryStatus.PENDING, created__lt=now - PENDING_REQUEUE).values_list(
            "pk", flat=True
        )[:1000]
    )
    late = [
        pk
        for pk, attempts, claimed in AlarmNotification.objects.filter(status=DeliveryStatus.RETRYING).values_list(
            "pk", "attempts", "claimed_at"
        )[:1000]
        if claimed is None or claimed < now - timedelta(seconds=2 * retry_delay(attempts) + 300)
    ]
    enqueue(stuck + late)
    return {"abandoned": abandoned, "requeued": len(stuck) + len(late)}
