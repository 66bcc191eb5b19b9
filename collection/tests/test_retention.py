"""Deleting readings: on request (tiers follow) and by retention (tiers stay), audited either way."""

from __future__ import annotations

import numpy as np
import pytest

from accounts.choices import AuditAction
from accounts.models import AuditEvent
from collection.choices import RollupTier
from collection.models import Rollup, RollupState, Sample, TextSample
from collection.services import SampleBatch, ingest_samples
from collection.services.retention import delete_readings, enforce_retention, retention_cutoff
from collection.services.rollups import rebuild_rollups
from collection.tasks import enforce_retention_task
from collection.tests.readings import SECOND, T0, ingest, refresh_all, stored_raw, stored_tiers
from instruments.choices import ChannelKind
from instruments.tests.factories import make_channel, make_instrument, make_user

pytestmark = pytest.mark.django_db

DAY = 86400 * SECOND
NOW = T0 + 30 * DAY + 12 * 3600 * SECOND  # "now" for the retention runs: 30.5 days after T0
STEP = 300  # seconds between numeric readings
PER_DAY = 86400 // STEP


@pytest.fixture
def station(django_capture_on_commit_callbacks):
    """An instrument keeping 10 days of raw readings: a numeric channel read every 5 min for 30 days,
    and a text channel read every hour."""
    instrument = make_instrument(raw_retention_days=10)
    numeric = make_channel(instrument, slug="temp")
    text = make_channel(instrument, slug="status", kind=ChannelKind.TEXT)
    ts = T0 + np.arange(0, 30 * 86400, STEP) * SECOND
    ingest(django_capture_on_commit_callbacks, numeric.pk, ts, np.cos(np.arange(len(ts)) / 50))
    hours = T0 + np.arange(0, 30 * 24) * 3600 * SECOND
    with django_capture_on_commit_callbacks(execute=True):
        ingest_samples(SampleBatch(np.full(len(hours), text.pk), hours, np.array(["ok"] * len(hours), dtype=object)))
    return instrument, numeric, text


def test_retention_deletes_only_old_raw_readings_and_keeps_the_tiers(station):
    _, numeric, text = station
    refresh_all()
    tiers_before = stored_tiers(numeric.pk)
    cutoff = retention_cutoff(10, NOW)
    assert cutoff == T0 + 20 * DAY  # 20.5 days back, down to a whole day
    result = enforce_retention(now_us=NOW)
    assert not result.remaining
    assert Sample.objects.filter(channel=numeric).order_by("ts").first().ts == cutoff
    assert Sample.objects.filter(channel=numeric).count() == 10 * PER_DAY
    assert TextSample.objects.filter(channel=text).order_by("ts").first().ts == cutoff
    assert result.deleted == 20 * PER_DAY + 20 * 24
    assert stored_tiers(numeric.pk) == tiers_before
    assert RollupState.objects.get(channel=numeric).raw_kept_from == cutoff
    events = AuditEvent.objects.filter(action=AuditAction.SAMPLES_DELETED).order_by("id")
    assert [(e.object_id, e.changes["reason"], e.changes["deleted"]) for e in events] == [
        (str(numeric.pk), "retention", 20 * PER_DAY),
        (str(text.pk), "retention", 20 * 24),
    ]
    assert events[0].actor is None and events[0].changes["retention_days"] == 10


def test_retention_works_in_bounded_batches(station):
    _, numeric, _ = station
    first = enforce_retention(now_us=NOW, batch_rows=1000, max_batches=3)
    assert first.remaining and first.batches == 3 and first.deleted == 3000
    assert Sample.objects.filter(channel=numeric, ts__lt=T0 + 20 * DAY).count() == 20 * PER_DAY - 3000
    while enforce_retention(now_us=NOW, batch_rows=1000, max_batches=2).remaining:
        pass
    assert not Sample.objects.filter(channel=numeric, ts__lt=T0 + 20 * DAY).exists()
    assert Sample.objects.filter(channel=numeric).count() == 10 * PER_DAY


def test_retention_first_rolls_up_what_was_pending(station):
    """Readings ingested but not yet rolled up when their raw rows expire still reach the tiers."""
    _, numeric, _ = station
    enforce_retention(now_us=NOW)
    day = Rollup.objects.get(channel=numeric, tier=RollupTier.D1, bucket=T0)
    assert day.count == PER_DAY


def test_late_readings_before_the_watermark_do_not_wipe_the_tiers(station, django_capture_on_commit_callbacks):
    _, numeric, _ = station
    enforce_retention(now_us=NOW)
    ingest(django_capture_on_commit_callbacks, numeric.pk, [T0 + 30 * SECOND], [5.0])
    refresh_all()
    assert Rollup.objects.get(channel=numeric, tier=RollupTier.D1, bucket=T0).count == PER_DAY


def test_instruments_without_retention_keep_everything(station):
    instrument, numeric, _ = station
    instrument.raw_retention_days = None
    instrument.save()
    assert enforce_retention(now_us=NOW).deleted == 0
    assert Sample.objects.filter(channel=numeric).count() == 30 * PER_DAY


def test_the_periodic_task_runs_the_service(station, settings):
    _, numeric, _ = station
    assert "enforce-retention" in settings.CELERY_BEAT_SCHEDULE
    enforce_retention_task.apply()  # in this process, against the real clock: T0 is in the past
    assert not Sample.objects.filter(channel=numeric, ts__lt=retention_cutoff(10, NOW)).exists()


def test_deleting_readings_refreshes_tiers_last_value_and_audit(station, django_capture_on_commit_callbacks):
    _, numeric, _ = station
    refresh_all()
    actor = make_user()
    with django_capture_on_commit_callbacks(execute=True):
        counts = delete_readings([numeric], T0 + 29 * DAY, T0 + 40 * DAY, actor=actor, address="10.0.0.1", reason="bad")
    assert counts == {numeric.pk: PER_DAY}
    refresh_all()
    ts, value, _ = stored_raw(numeric.pk)
    assert ts[-1] == T0 + 29 * DAY - STEP * SECOND
    maintained = stored_tiers(numeric.pk)
    rebuild_rollups([numeric.pk])  # from scratch (checked against an oracle in test_rollups)
    assert maintained.keys() == stored_tiers(numeric.pk).keys()
    assert max(key[1] for key in maintained) < T0 + 29 * DAY
    numeric.refresh_from_db()
    assert (numeric.last_ts, numeric.last_value) == (int(ts[-1]), float(value[-1]))
    event = AuditEvent.objects.get(action=AuditAction.SAMPLES_DELETED)
    assert (event.actor, event.address, event.changes["reason"], event.changes["deleted"]) == (
        actor,
        "10.0.0.1",
        "bad",
        PER_DAY,
    )


def test_deleting_nothing_records_nothing(station):
    _, numeric, _ = station
    assert delete_readings([numeric], T0 - 2 * DAY, T0 - DAY) == {numeric.pk: 0}
    assert not AuditEvent.objects.filter(action=AuditAction.SAMPLES_DELETED).exists()
