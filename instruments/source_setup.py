"""Saving a data source and its channels in one step: the "New data source" page's (and its edit's) service.

One transaction: the source is checked (its configuration by ``daqbroker_agent.config``, where it reads by
``accounts.targets`` given the acting person), its channels are checked like the admin checks them (units
in their canonical spelling, sentinels, valid range), and the source is enabled only once it has channels.
Every object created or changed is recorded in the audit trail. Errors come back as one ValidationError
keyed ``source.<field>`` and ``channels.<n>.<field>``, so a page shows each where it belongs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.forms.models import model_to_dict

from accounts import audit, permissions, targets
from accounts.choices import AuditAction
from instruments.choices import ChannelKind
from instruments.models import Channel, DataSource, Instrument

CHANNEL_FIELDS = ("name", "slug", "kind", "units", "source_field", "missing_values", "valid_min", "valid_max")
SOURCE_FIELDS = ("name", "kind", "config", "interval_seconds", "enabled", "agent")


@dataclass
class SavedSource:
    source: DataSource
    created: bool
    channels_created: int
    channels_changed: int


def _errors_of(exc: ValidationError, prefix: str) -> dict[str, list[str]]:
    if hasattr(exc, "error_dict"):
        return {f"{prefix}{field}": list(messages) for field, messages in exc.message_dict.items()}
    return {prefix.rstrip("."): list(exc.messages)}


def _clean_number(value: Any) -> Any:
    return None if value in ("", None) else value


def save_source_with_channels(
    principal: targets.Principal,
    instrument: Instrument,
    values: dict[str, Any],
    channels: list[dict[str, Any]],
    *,
    source: DataSource | None = None,
    origin: dict | None = None,
) -> SavedSource:
    """Create (or, given ``source``, change) a source of ``instrument`` and its ``channels`` (dicts of
    ``CHANNEL_FIELDS``; a channel whose slug the source already has is changed, others created)."""
    origin = origin or {"actor": None, "address": None}
    errors: dict[str, list[str]] = {}
    previous = DataSource.objects.get(pk=source.pk) if source is not None else None
    row = source or DataSource(instrument=instrument)
    before = model_to_dict(previous, fields=SOURCE_FIELDS) if previous is not None else {}
    wanted_enabled = bool(values.get("enabled", True))
    for field in SOURCE_FIELDS:
        if field in values:
            setattr(row, field, values[field])
    set_target = False
    try:
        row.full_clean(exclude=["instrument"])
        set_target = targets.check_source(principal, row, previous=previous)
    except ValidationError as exc:
        errors.update(_errors_of(exc, "source."))
    existing = {c.slug: c for c in row.channels.all()} if row.pk else {}
    others = set(
        Channel.objects.filter(instrument=instrument).exclude(source=row.pk).values_list("slug", flat=True)
        if row.pk
        else Channel.objects.filter(instrument=instrument).values_list("slug", flat=True)
    )
    seen: set[str] = set()
    planned: list[tuple[Channel, bool, dict]] = []
    for index, data in enumerate(channels):
        prefix = f"channels.{index}."
        slug = str(data.get("slug") or "")
        if slug in seen:
            errors[f"{prefix}slug"] = [f"{slug!r} is given twice."]
            continue
        seen.add(slug)
        if slug in others:
            errors[f"{prefix}slug"] = [f"The instrument already has a channel {slug!r} (of another source)."]
            continue
        channel = existing.get(slug) or Channel(instrument=instrument)
        channel_before = model_to_dict(channel, fields=CHANNEL_FIELDS) if channel.pk else {}
        for field in CHANNEL_FIELDS:
            if field in data:
                value = data[field]
                if field in ("valid_min", "valid_max"):
                    value = _clean_number(value)
                if field == "units" and data.get("kind") == ChannelKind.TEXT:
                    value = ""
                if field == "missing_values" and value is None:
                    value = []
                setattr(channel, field, value)
        try:
            channel.full_clean(exclude=["instrument", "source"], validate_unique=False)
        except ValidationError as exc:
            errors.update(_errors_of(exc, prefix))
            continue
        planned.append((channel, channel.pk is None, channel_before))
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        created = row.pk is None
        row.enabled = False if created else row.enabled
        if set_target:
            row.target_set_by = permissions.resolve(principal)[0]  # type: ignore[assignment]
        row.save()
        made = changed = 0
        for channel, new, channel_before in planned:
            channel.source = row
            channel.save()
            after = model_to_dict(channel, fields=CHANNEL_FIELDS)
            if new:
                made += 1
                audit.record(AuditAction.CONFIG_CREATED, obj=channel, changes=after, **origin)
            elif audit.diff(channel_before, after):
                changed += 1
                audit.record(
                    AuditAction.CONFIG_CHANGED, obj=channel, changes=audit.diff(channel_before, after), **origin
                )
        # Enabled only once it has channels: a source without any would wait, reading nothing.
        row.enabled = wanted_enabled and row.collected_channels().exists()
        row.save(update_fields=["enabled", "updated"])
        after = model_to_dict(row, fields=SOURCE_FIELDS)
        if created:
            audit.record(AuditAction.CONFIG_CREATED, obj=row, changes=after, **origin)
        elif audit.diff(before, after):
            audit.record(AuditAction.CONFIG_CHANGED, obj=row, changes=audit.diff(before, after), **origin)
    return SavedSource(row, created, made, changed)
