"""A site of many things, made in bulk: N instruments x C channels x 1 data source each.

Used by the tests that check that a page or a dispatch pass costs the same number of queries at two sizes
(``pages/tests/test_scale.py``, ``collection/tests/test_scheduling.py``) and by ``bench/things.py``.
Statuses are spread on purpose: every 3rd instrument's channels are silent (their last reading long
ago), every 7th instrument's source is failing, every 11th has never had a reading, every 13th has an active alarm.
"""

from __future__ import annotations

import time
from datetime import timedelta

from django.contrib.auth.models import Permission
from django.utils import timezone

from accounts.models import InstrumentGroupPermission, InstrumentUserPermission
from collection.alarms.models import AlarmEvent, AlarmRule
from instruments.choices import ChannelKind, SourceKind
from instruments.models import Channel, DataSource, Instrument, refresh_instrument_freshness

UNITS = ("degC", "hPa", "%", "V", "A", "m/s", "lx", "ppm", "W", "Hz")


def build_things(n: int, owner, *, channels: int = 10, prefix: str = "site", path: str = "/tmp", batch: int = 2000):
    """Make ``n`` instruments named "<prefix> 00000".. owned by ``owner``, each with one file source and
    ``channels`` numeric channels taking its columns. Returns the instruments' ids, in name order."""
    now_us = time.time_ns() // 1000
    Instrument.objects.bulk_create(
        [
            Instrument(
                name=f"{prefix} {i:05d}",
                slug=f"{prefix}-{i:05d}",
                owner=owner,
                location=f"building {i % 40}",
                description=f"instrument {i} of a site of {n}",
            )
            for i in range(n)
        ],
        batch_size=batch,
    )
    ids = list(Instrument.objects.filter(slug__startswith=f"{prefix}-").order_by("slug").values_list("pk", flat=True))
    columns = ["time", *[f"v{j}" for j in range(channels)]]
    DataSource.objects.bulk_create(
        [
            DataSource(
                instrument_id=pk,
                name="logger",
                kind=SourceKind.FILE,
                config={"path": path, "pattern": "*.csv", "columns": columns},
                interval_seconds=60,
                consecutive_failures=3 if i % 7 == 0 else 0,
            )
            for i, pk in enumerate(ids)
        ],
        batch_size=batch,
    )
    sources = dict(
        DataSource.objects.filter(instrument__slug__startswith=f"{prefix}-").values_list("instrument_id", "pk")
    )
    rows = []
    for i, pk in enumerate(ids):
        if i % 11 == 0:
            last = None
        elif i % 3 == 0:
            last = now_us - 86_400 * 1_000_000  # a day ago: silent for a 60 s interval
        else:
            last = now_us - 30 * 1_000_000
        for j in range(channels):
            rows.append(
                Channel(
                    instrument_id=pk,
                    source_id=sources[pk],
                    name=f"channel {j}",
                    slug=f"channel-{j}",
                    kind=ChannelKind.NUMERIC,
                    units=UNITS[j % len(UNITS)],
                    source_field=f"v{j}",
                    last_ts=last,
                    last_value=None if last is None else float(j),
                )
            )
        if len(rows) >= batch:
            Channel.objects.bulk_create(rows, batch_size=batch)
            rows = []
    Channel.objects.bulk_create(rows, batch_size=batch)
    refresh_instrument_freshness(ids)  # what saving each channel would have done
    rule = AlarmRule.objects.create(name=f"{prefix} too high", kind="above", threshold=1e9)
    first_channels = Channel.objects.filter(instrument_id__in=ids[::13], slug="channel-0")
    AlarmEvent.objects.bulk_create(
        [
            AlarmEvent(
                rule=rule,
                channel=channel,
                kind=rule.kind,
                severity=rule.severity,
                message=f"{channel.slug}: too high",
                raised_at=timezone.now() - timedelta(minutes=5),
                raised_value=2e9,
            )
            for channel in first_channels
        ],
        batch_size=batch,
    )
    return ids


def grant_view(instrument_ids, *, user=None, group=None, batch: int = 2000) -> None:
    """Grant ``view`` on each instrument to ``user`` or ``group`` in bulk (the rows ``accounts.services.share``
    would write one by one, without their audit events: a test or benchmark fixture only)."""
    permission = Permission.objects.get(codename="view_instrument", content_type__app_label="instruments")
    if user is not None:
        InstrumentUserPermission.objects.bulk_create(
            [InstrumentUserPermission(content_object_id=pk, user=user, permission=permission) for pk in instrument_ids],
            batch_size=batch,
        )
    if group is not None:
        InstrumentGroupPermission.objects.bulk_create(
            [
                InstrumentGroupPermission(content_object_id=pk, group=group, permission=permission)
                for pk in instrument_ids
            ],
            batch_size=batch,
        )
