"""Keep each instrument's freshness columns (``Instrument.last_reading_ts``, ``reading_interval_seconds``)
in step with its channels and sources, whichever surface saves or deletes them (admin, pages, API, the
source setup page, management commands). Ingest moves ``last_reading_ts`` forward itself."""

from __future__ import annotations

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from instruments.models import Channel, DataSource, Instrument, refresh_instrument_freshness


@receiver(post_save, sender=Channel, dispatch_uid="instruments.channel_saved_freshness")
def channel_saved(sender, instance: Channel, using: str, raw: bool = False, **kwargs) -> None:
    if raw:  # loading a fixture: the instrument's columns come with it
        return
    ids = {instance.instrument_id, getattr(instance, "_loaded_instrument_id", None)} - {None}
    refresh_instrument_freshness(sorted(ids), using=using)
    instance._loaded_instrument_id = instance.instrument_id


@receiver(post_save, sender=DataSource, dispatch_uid="instruments.source_saved_freshness")
def source_saved(sender, instance: DataSource, using: str, raw: bool = False, **kwargs) -> None:
    if not raw:
        refresh_instrument_freshness([instance.instrument_id], using=using)


@receiver(post_delete, sender=Channel, dispatch_uid="instruments.channel_deleted_freshness")
@receiver(post_delete, sender=DataSource, dispatch_uid="instruments.source_deleted_freshness")
def part_deleted(sender, instance: Channel | DataSource, using: str, origin=None, **kwargs) -> None:
    if isinstance(origin, Instrument) or (hasattr(origin, "model") and origin.model is Instrument):
        return  # the instrument itself is going
    refresh_instrument_freshness([instance.instrument_id], using=using)
