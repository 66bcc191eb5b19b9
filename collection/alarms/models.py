"""Spike checks, alarm rules, their per-channel state, events, subscriptions and the notification outbox.

A rule (or a spike check) applies to every channel its selectors match, all of them together: an
instrument, a channel name pattern, units, and/or an explicit list of channels. Adding a channel that
matches puts it under the rule without touching the rule.
"""

from __future__ import annotations

import fnmatch

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models

from accounts import targets
from collection.alarms.choices import DeliveryStatus, Medium, RuleKind, Severity, Transition
from daqbroker_agent.parsing import us_to_datetime
from instruments.choices import ChannelKind
from instruments.models import Channel
from instruments.units import check_units


class ChannelSelection(models.Model):
    """Which channels a rule applies to: those matching every selector given."""

    instrument = models.ForeignKey(
        "instruments.Instrument",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="%(class)ss",
        help_text="Only this instrument's channels (empty: any instrument).",
    )
    channel_pattern = models.CharField(
        max_length=200,
        blank=True,
        help_text="Shell-style pattern matched against the channel's slug or name, case-insensitive: "
        "temp*, *_voltage, wind_?.",
    )
    units = models.CharField(max_length=64, blank=True, help_text='Only channels in these units, e.g. "degC".')
    channels = models.ManyToManyField(
        "instruments.Channel", blank=True, related_name="%(class)ss", help_text="Only these channels."
    )

    class Meta:
        abstract = True

    NO_SELECTOR = "Choose which channels this applies to: an instrument, a channel pattern, units, or channels."

    def clean(self) -> None:
        super().clean()
        if self.units:
            # In the channels' own canonical spelling, so "deg C" here selects the channels stored as "degC".
            try:
                self.units = check_units(self.units)
            except ValueError as exc:
                raise ValidationError({"units": str(exc)}) from None

    def has_selector(self, explicit: set[int]) -> bool:
        """A rule with no selector at all applies to nothing (the admin refuses to save one)."""
        return bool(self.instrument_id or self.channel_pattern or self.units or explicit)

    def matches(self, channel, explicit: set[int]) -> bool:
        """Whether ``channel`` is selected; ``explicit`` is the ids of ``channels`` (empty: no such selector)."""
        if not self.has_selector(explicit):
            return False
        if self.instrument_id and channel.instrument_id != self.instrument_id:
            return False
        if self.units and channel.units != self.units:
            return False
        if explicit and channel.pk not in explicit:
            return False
        if self.channel_pattern:
            pattern = self.channel_pattern.lower()
            return fnmatch.fnmatchcase(channel.slug.lower(), pattern) or fnmatch.fnmatchcase(
                channel.name.lower(), pattern
            )
        return True

    def selected_channels(self) -> list:
        queryset = Channel.objects.select_related("instrument", "source")
        if self.instrument_id:
            queryset = queryset.filter(instrument_id=self.instrument_id)
        if self.units:
            queryset = queryset.filter(units=self.units)
        explicit = set(self.channels.values_list("pk", flat=True))
        if not self.has_selector(explicit):
            return []
        if explicit:
            queryset = queryset.filter(pk__in=explicit)
        return [channel for channel in queryset if self.matches(channel, explicit)]

    def selection_text(self) -> str:
        parts = []
        if self.instrument_id:
            parts.append(f"instrument {self.instrument}")
        if self.channel_pattern:
            parts.append(f"channels like {self.channel_pattern!r}")
        if self.units:
            parts.append(f"in {self.units}")
        if self.pk and self.channels.exists():
            parts.append("listed channels")
        return ", ".join(parts) or "no channels"


class SpikeCheck(ChannelSelection):
    """Flags a reading *suspect* when it jumps away from both neighbours (the QARTOD spike test):
    ``|v - (prev + next) / 2| - |(next - prev) / 2| > threshold``. The reading is kept, only flagged."""

    name = models.CharField(max_length=200)
    enabled = models.BooleanField(default=True)
    threshold = models.FloatField(
        validators=[MinValueValidator(0)], help_text="In the channel's units; larger jumps are suspect."
    )
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class AlarmRule(ChannelSelection):
    name = models.CharField(max_length=200)
    enabled = models.BooleanField(default=True)
    kind = models.CharField(max_length=16, choices=RuleKind.choices, default=RuleKind.ABOVE)
    severity = models.CharField(max_length=16, choices=Severity.choices, default=Severity.WARNING)
    threshold = models.FloatField(
        null=True,
        blank=True,
        help_text="Above/below: the value that raises the alarm. Rate: the largest change per second allowed.",
    )
    hysteresis = models.FloatField(
        default=0,
        validators=[MinValueValidator(0)],
        help_text="The alarm clears only once the value is back past the threshold by this much.",
    )
    min_duration_seconds = models.PositiveIntegerField(
        default=0, help_text="The condition must hold this long (reading time) before the alarm is raised."
    )
    stale_factor = models.FloatField(
        default=3,
        validators=[MinValueValidator(1)],
        help_text="Stale: raised when a channel has had no reading for this many times its expected interval "
        "(the channel's, or else its source's collection interval).",
    )
    notify_contacts = models.BooleanField(
        default=True,
        help_text="Email the instrument's contact address, its owner and its subscribers.",
    )
    extra_emails = models.TextField(blank=True, help_text="More addresses to email, comma- or line-separated.")
    webhook_url = models.URLField(
        max_length=500, blank=True, help_text="POST a JSON description of each raise and clear here."
    )
    webhook_secret = models.CharField(
        max_length=200,
        blank=True,
        help_text="If set, each webhook carries X-DAQBroker-Signature: sha256=<HMAC of the body with this secret>.",
    )
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        super().clean()
        errors = {}
        if self.kind != RuleKind.STALE and self.threshold is None:
            errors["threshold"] = "Threshold and rate rules need a threshold."
        if self.kind == RuleKind.RATE and self.threshold is not None and self.threshold <= 0:
            errors["threshold"] = "A rate threshold is a positive change per second."
        if self.webhook_url:
            # The one target check: webhooks reach only what DAQBROKER_NETWORK_ALLOW permits (checked again
            # at each delivery).
            try:
                targets.check_webhook_url(self.webhook_url)
            except targets.TargetRefused as exc:
                errors["webhook_url"] = exc.reason
        if errors:
            raise ValidationError(errors)

    def applies_to_kind(self, channel) -> bool:
        """Stale rules watch every channel; value rules only channels with numbers."""
        return self.kind == RuleKind.STALE or channel.kind != ChannelKind.TEXT

    def email_list(self) -> list[str]:
        return [part.strip() for part in self.extra_emails.replace("\n", ",").split(",") if part.strip()]

    def describe(self) -> str:
        if self.kind == RuleKind.STALE:
            return f"no reading for {self.stale_factor:g} x the expected interval"
        if self.kind == RuleKind.RATE:
            return f"changing faster than {self.threshold:g} per second"
        word = "above" if self.kind == RuleKind.ABOVE else "below"
        return f"{word} {self.threshold:g}" + (
            f" for {self.min_duration_seconds} s" if self.min_duration_seconds else ""
        )


class AlarmEvent(models.Model):
    """One alarm: raised when a rule's condition started to hold for a channel, cleared when it stopped."""

    rule = models.ForeignKey(AlarmRule, on_delete=models.CASCADE, related_name="events")
    channel = models.ForeignKey("instruments.Channel", on_delete=models.CASCADE, related_name="alarm_events")
    kind = models.CharField(max_length=16, choices=RuleKind.choices)
    severity = models.CharField(max_length=16, choices=Severity.choices)
    message = models.CharField(max_length=500)
    condition_since = models.DateTimeField(null=True, blank=True, help_text="When the condition started to hold.")
    raised_at = models.DateTimeField(help_text="Reading time at which the alarm was raised.")
    raised_value = models.FloatField(null=True, blank=True)
    cleared_at = models.DateTimeField(null=True, blank=True)
    cleared_value = models.FloatField(null=True, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-raised_at", "-id"]
        indexes = [
            models.Index(fields=["channel", "-raised_at"]),
            models.Index(fields=["rule", "-raised_at"]),
            models.Index(fields=["cleared_at"]),
            # The active ones, newest first: the alarms page reads its 50 rows in this order and stops, instead
            # of joining every active alarm to its channel and sorting them all (PostgreSQL and SQLite: MariaDB
            # has no partial index, Django makes none there).
            models.Index(
                fields=["-raised_at", "-id"], condition=models.Q(cleared_at__isnull=True), name="alarm_active_recent"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.rule} on {self.channel}: {'active' if self.active else 'cleared'}"

    @property
    def active(self) -> bool:
        return self.cleared_at is None


class AlarmState(models.Model):
    """Where evaluation of one rule on one channel stands; locked while evaluating, so two workers never
    raise the same alarm twice."""

    rule = models.ForeignKey(AlarmRule, on_delete=models.CASCADE, related_name="states")
    channel = models.ForeignKey("instruments.Channel", on_delete=models.CASCADE, related_name="alarm_states")
    evaluated_until = models.BigIntegerField(help_text="Readings up to this time (µs) have been evaluated.")
    pending_since = models.BigIntegerField(null=True, blank=True, help_text="Condition holding since (µs).")
    previous_ts = models.BigIntegerField(null=True, blank=True)
    previous_value = models.FloatField(null=True, blank=True)
    active_event = models.ForeignKey(AlarmEvent, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["rule", "channel"], name="alarmstate_unique_rule_channel")]

    def __str__(self) -> str:
        return f"{self.rule} / {self.channel} until {us_to_datetime(self.evaluated_until):%Y-%m-%d %H:%M:%S}"


class AlarmSubscription(models.Model):
    """A user who wants the alarms of an instrument (they must be allowed to see it to be told)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="alarm_subscriptions")
    instrument = models.ForeignKey(
        "instruments.Instrument", on_delete=models.CASCADE, related_name="alarm_subscriptions"
    )
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "instrument"], name="alarmsubscription_unique_user_instrument")
        ]

    def __str__(self) -> str:
        return f"{self.user} -> {self.instrument}"


class AlarmNotification(models.Model):
    """The outbox: one row per event, transition and medium, written in the transaction that raised or
    cleared the alarm, so it is delivered once and never twice (see ``notify``)."""

    event = models.ForeignKey(AlarmEvent, on_delete=models.CASCADE, related_name="notifications")
    transition = models.CharField(max_length=16, choices=Transition.choices)
    medium = models.CharField(max_length=16, choices=Medium.choices)
    recipients = models.JSONField(default=list, blank=True, help_text="Email addresses, or the webhook URL.")
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["event", "transition", "medium"], name="alarmnotification_once_per_event_transition"
            )
        ]
        indexes = [models.Index(fields=["status", "created"])]

    def __str__(self) -> str:
        return f"{self.medium} {self.transition} of event {self.event_id}: {self.status}"
