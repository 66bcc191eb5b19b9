"""Audit receivers for deletions that happen by cascade, whichever surface started them."""

from __future__ import annotations

from django.db.models.signals import pre_delete
from django.dispatch import receiver

from accounts.audit import current_origin, record
from accounts.choices import AuditAction
from instruments.models import Channel


@receiver(pre_delete, sender=Channel, dispatch_uid="accounts.audit_channel_readings_deleted")
def channel_readings_deleted(sender, instance: Channel, **kwargs) -> None:
    """Deleting a channel (alone or with its instrument) deletes all its readings: say so, and by whom."""
    if instance.last_ts is None:
        return  # never received a reading: nothing was deleted
    record(
        AuditAction.SAMPLES_DELETED,
        obj=instance,
        changes={
            "reason": "channel deleted",
            "instrument": instance.instrument.slug,
            "channel": instance.slug,
            "range": "all",
            "last_ts": instance.last_ts,
        },
        **current_origin(),
    )
