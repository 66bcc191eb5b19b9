"""Quality flags beyond what ``ingest_samples`` sets on arrival.

``ingest_samples`` flags each reading *out of range* or *missing* (sentinel) as it is stored. Here:

* ``flag_spikes``: after readings arrive, spike checks (``SpikeCheck``) flag readings *suspect* when they
  jump away from both neighbours. A reading is judged once both neighbours exist, so the newest reading
  of a batch is judged when the next one arrives.
* ``revalidate``: "validate now" in the admin. The flags of a channel's recent readings are set again
  from its current valid range and sentinels (after an administrator changed them), and spike checks
  run again over them. Readings are never changed or dropped, only flagged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from django.db import connections, transaction

from collection.alarms.models import SpikeCheck
from collection.choices import Quality
from collection.models import Sample
from collection.services import blocks, rollups
from collection.services.series import read_series
from instruments.choices import ChannelKind
from instruments.models import Channel

UPDATE_CHUNK = 500


def spike_checks_for(channels: Iterable[Channel]) -> dict[int, float]:
    """{channel id: the smallest threshold of the enabled spike checks selecting it}."""
    checks = list(SpikeCheck.objects.filter(enabled=True).prefetch_related("channels"))
    thresholds: dict[int, float] = {}
    for check in checks:
        explicit = {c.pk for c in check.channels.all()}
        for channel in channels:
            if channel.kind != ChannelKind.TEXT and check.matches(channel, explicit):
                thresholds[channel.pk] = min(check.threshold, thresholds.get(channel.pk, np.inf))
    return thresholds


def spike_mask(values: np.ndarray, threshold: float) -> np.ndarray:
    """True where the QARTOD spike test exceeds ``threshold``; the first and last values have no verdict."""
    mask = np.zeros(len(values), dtype=bool)
    if len(values) >= 3:
        prev, here, nxt = values[:-2], values[1:-1], values[2:]
        test = np.abs(here - (nxt + prev) / 2) - np.abs((nxt - prev) / 2)
        mask[1:-1] = test > threshold
    return mask


def flag_spikes(spans: dict[int, tuple[int, int]]) -> int:
    """Flag spikes among the readings in ``spans`` and the reading just before each span; returns how many."""
    if not spans or not SpikeCheck.objects.filter(enabled=True).exists():
        return 0
    channels = list(Channel.objects.filter(pk__in=list(spans)))
    flagged = 0
    for channel_id, threshold in spike_checks_for(channels).items():
        start, end = spans[channel_id]
        before = read_series(channel_id, before=start, limit=2, last=True)
        inside = read_series(channel_id, start=start, end=end)
        after = read_series(channel_id, after=end, limit=1)
        ts, value, quality = (np.concatenate(parts) for parts in zip(before, inside, after, strict=True))
        # Missing-value sentinels are not readings: they neither spike nor serve as neighbours.
        usable = quality != Quality.MISSING
        ts, value, quality = ts[usable], value[usable], quality[usable]
        spikes = spike_mask(value, threshold) & (quality == Quality.OK)
        flagged += _set_quality(channel_id, ts[spikes], Quality.SUSPECT, only_from=Quality.OK)
    return flagged


def _set_quality(channel_id: int, stamps: np.ndarray, quality: int, *, only_from: int) -> int:
    if len(stamps) == 0:
        return 0
    changed = 0
    with transaction.atomic():
        blocks.expand_blocks(channel_id, int(stamps.min()), int(stamps.max()) + 1)  # flags change on hot rows
        for i in range(0, len(stamps), UPDATE_CHUNK):
            chunk = stamps[i : i + UPDATE_CHUNK].tolist()
            changed += Sample.objects.filter(channel_id=channel_id, ts__in=chunk, quality=only_from).update(
                quality=quality
            )
        if changed:  # flagged readings leave the rollup tiers: recompute their buckets
            rollups.mark_changed({channel_id: (int(stamps.min()), int(stamps.max()))})
            transaction.on_commit(rollups.request_refresh)
    return changed


@dataclass
class Revalidated:
    channels: int = 0
    readings: int = 0
    flagged: int = 0
    spikes: int = 0


def revalidate(channel_ids: Iterable[int], since_us: int) -> Revalidated:
    """Set the quality flags of the channels' readings since ``since_us`` again, then re-run spike checks."""
    result = Revalidated()
    channels = list(Channel.objects.filter(pk__in=list(channel_ids)).exclude(kind=ChannelKind.TEXT))
    connection = connections["default"]
    table = connection.ops.quote_name(Sample._meta.db_table)
    spans: dict[int, tuple[int, int]] = {}
    for channel in channels:
        case, params = _quality_case(channel)
        with transaction.atomic(), connection.cursor() as cursor:
            blocks.expand_blocks(channel.pk, since_us, 2**63 - 1)  # flags change on hot rows
            cursor.execute(
                f"UPDATE {table} SET quality = {case} WHERE channel_id = %s AND ts >= %s",
                [*params, channel.pk, since_us],
            )
            result.readings += max(cursor.rowcount, 0)
            cursor.execute(
                f"SELECT MIN(ts), MAX(ts), SUM(CASE WHEN quality <> %s THEN 1 ELSE 0 END) FROM {table} "
                "WHERE channel_id = %s AND ts >= %s",
                [Quality.OK, channel.pk, since_us],
            )
            first, last, flagged = cursor.fetchone()
            if first is not None:  # the flags changed: so do the rollup tiers over these readings
                rollups.mark_changed({channel.pk: (int(first), int(last))})
                transaction.on_commit(rollups.request_refresh)
        result.flagged += flagged or 0
        result.channels += 1
        if first is not None:
            spans[channel.pk] = (int(first), int(last))
    result.spikes = flag_spikes(spans)
    return result


def _quality_case(channel: Channel) -> tuple[str, list]:
    """SQL giving a reading's flag from its value, the way ``ingest_samples`` sets it."""
    whens, params = [], []
    sentinels = [float(v) for v in channel.missing_values or []]
    if sentinels:
        whens.append(f"WHEN value IN ({', '.join(['%s'] * len(sentinels))}) THEN {int(Quality.MISSING)}")
        params.extend(sentinels)
    bounds = []
    if channel.valid_min is not None:
        bounds.append("value < %s")
        params.append(channel.valid_min)
    if channel.valid_max is not None:
        bounds.append("value > %s")
        params.append(channel.valid_max)
    if bounds:
        whens.append(f"WHEN {' OR '.join(bounds)} THEN {int(Quality.OUT_OF_RANGE)}")
    if not whens:
        return str(int(Quality.OK)), []
    return f"CASE {' '.join(whens)} ELSE {int(Quality.OK)} END", params
