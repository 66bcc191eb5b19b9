"""Derived channels: readings computed from other channels of the same instrument by an expression.

After readings arrive, every derived channel that reads an affected channel (directly or through other
derived channels) is computed over the time span of the new readings, in dependency order. Inputs are
aligned on timestamps: a derived reading exists at each time where every input has a reading that is not
a missing-value sentinel. The expression is evaluated with ``instruments.expressions`` (a whitelisted
syntax tree, never ``eval``), element-wise over numpy arrays. Results that are not finite (``sqrt(-1)``,
``log(0)``) are not stored. Readings go through ``ingest_samples`` like any other, so a computation run
twice stores nothing twice, and the new derived readings are validated and evaluated for alarms in turn.
A derived value that differs from the one stored (an input was corrected) replaces it
(``on_conflict="replace"``, audited); after inputs are deleted, ``recompute_after_deletion`` also deletes
the derived readings whose inputs are gone.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from django.db import transaction

from accounts import audit
from accounts.choices import AuditAction
from collection.choices import Origin, Quality
from collection.models import Sample
from collection.services import blocks, rollups
from collection.services.ingest import REPLACE, SampleBatch, ingest_samples
from collection.services.series import read_series
from daqbroker_agent.parsing import us_to_datetime
from instruments.choices import ChannelKind
from instruments.expressions import ExpressionError, evaluate, parse_expression
from instruments.models import Channel, expression_name

logger = logging.getLogger(__name__)


@dataclass
class Formula:
    channel: Channel
    tree: ast.Expression
    inputs: dict[str, int]  # name in the expression -> channel id


def formulas_of(instrument_ids: Iterable[int]) -> list[Formula]:
    """The instruments' derived channels that can be computed, inputs before the channels reading them.

    A channel whose expression does not parse, names an unknown channel, or sits in a cycle is skipped
    with a warning (the registry refuses such expressions when saved; this guards the rest).
    """
    channels = list(Channel.objects.filter(instrument_id__in=set(instrument_ids)).exclude(kind=ChannelKind.TEXT))
    by_name = {(c.instrument_id, expression_name(c.slug)): c.pk for c in channels}
    pending: dict[int, Formula] = {}
    for channel in channels:
        if channel.kind != ChannelKind.DERIVED:
            continue
        try:
            tree, names = parse_expression(channel.expression)
            inputs = {name: by_name[(channel.instrument_id, name)] for name in names}
        except (ExpressionError, KeyError) as exc:
            logger.warning("derived channel %s cannot be computed: %s", channel, exc)
            continue
        pending[channel.pk] = Formula(channel, tree, inputs)
    ordered: list[Formula] = []
    done: set[int] = set()
    while pending:
        ready = [f for f in pending.values() if all(i not in pending or i in done for i in f.inputs.values())]
        if not ready:
            logger.warning("derived channels %s refer to each other in a cycle", sorted(pending))
            break
        for formula in ready:
            ordered.append(formula)
            done.add(formula.channel.pk)
            del pending[formula.channel.pk]
    return ordered


def compute_derived(spans: dict[int, tuple[int, int]], *, prune: bool = False) -> int:
    """Compute the derived channels depending on the channels in ``spans`` {channel id: (first, last) µs};
    returns the number of readings stored. ``prune``: inputs were deleted in these spans, so a derived
    reading of the span that can no longer be computed is deleted too."""
    if not spans:
        return 0
    instruments = set(Channel.objects.filter(pk__in=list(spans)).values_list("instrument_id", flat=True))
    windows = dict(spans)
    stored = 0
    for formula in formulas_of(instruments):
        touched = [windows[i] for i in formula.inputs.values() if i in windows]
        if not touched:
            continue
        start, end = min(w[0] for w in touched), max(w[1] for w in touched)
        count, computed = compute_formula(formula, start, end, prune=prune)
        stored += count
        if computed is not None:
            windows[formula.channel.pk] = computed
    return stored


def recompute_after_deletion(spans: dict[int, tuple[int, int]]) -> int:
    """Readings of the channels in ``spans`` were deleted: recompute the derived channels reading them over
    those spans, deleting their readings that can no longer be computed."""
    return compute_derived(spans, prune=True)


def compute_formula(
    formula: Formula, start: int, end: int, *, prune: bool = False
) -> tuple[int, tuple[int, int] | None]:
    """Compute one derived channel over [start, end]; (readings stored, span of the computed readings).
    ``prune``: delete its readings in [start, end] at times it can no longer be computed (inputs deleted);
    the span returned then covers them, so the channels reading this one are recomputed there too."""
    if prune:
        pruned = _prune(formula, start, end)
        stored, computed = compute_formula(formula, start, end)
        if pruned is None:
            return stored, computed
        if computed is None:
            return stored, pruned
        return stored, (min(pruned[0], computed[0]), max(pruned[1], computed[1]))
    ts = None
    series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, channel_id in formula.inputs.items():
        t, v, q = read_series(channel_id, start=start, end=end)
        keep = q != Quality.MISSING
        series[name] = (t[keep], v[keep])
        ts = series[name][0] if ts is None else np.intersect1d(ts, series[name][0], assume_unique=True)
    if ts is None:  # an expression without channels (a constant): nothing to align on
        return 0, None
    if len(ts) == 0:
        return 0, None
    aligned = {name: v[np.searchsorted(t, ts)] for name, (t, v) in series.items()}
    values = evaluate(formula.tree, aligned)
    values = np.broadcast_to(values, ts.shape).astype(np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        logger.info(
            "derived channel %s: %d of %d values are not finite and were not stored",
            formula.channel,
            int((~finite).sum()),
            len(values),
        )
    ts, values = ts[finite], values[finite]
    if len(ts) == 0:
        return 0, None
    batch = SampleBatch(np.full(len(ts), formula.channel.pk, dtype=np.int64), ts, values)
    # Computed by the server: a value that differs from the stored one follows a corrected input.
    result = ingest_samples(batch, origin=Origin.DERIVED, allow_derived=True, on_conflict=REPLACE)
    return result.accepted, (int(ts[0]), int(ts[-1]))


def _prune(formula: Formula, start: int, end: int) -> tuple[int, int] | None:
    """Delete the derived readings in [start, end] at which an input has no usable reading any more;
    the span of those deleted, or None."""
    stored_ts, _v, _q = read_series(formula.channel.pk, start=start, end=end)
    if len(stored_ts) == 0:
        return None
    usable = stored_ts
    for channel_id in formula.inputs.values():
        t, _, q = read_series(channel_id, start=start, end=end)
        usable = np.intersect1d(usable, t[q != Quality.MISSING], assume_unique=True)
    gone = np.setdiff1d(stored_ts, usable, assume_unique=True)
    if len(gone) == 0:
        return None
    with transaction.atomic():
        blocks.expand_blocks(formula.channel.pk, int(gone[0]), int(gone[-1]) + 1)  # deletions work on hot rows
        for i in range(0, len(gone), 1000):
            Sample.objects.filter(channel_id=formula.channel.pk, ts__in=gone[i : i + 1000].tolist()).delete()
        audit.record(
            AuditAction.SAMPLES_DELETED,
            obj=formula.channel,
            changes={
                "reason": "derived readings whose inputs were deleted",
                "instrument": formula.channel.instrument.slug,
                "channel": formula.channel.slug,
                "range": [us_to_datetime(int(gone[0])).isoformat(), us_to_datetime(int(gone[-1])).isoformat()],
                "deleted": len(gone),
            },
        )
        rollups.mark_changed({formula.channel.pk: (int(gone[0]), int(gone[-1]))})
        transaction.on_commit(rollups.request_refresh)
    return int(gone[0]), int(gone[-1])
