"""A hypothesis state machine: random ingests (new, re-sent, conflicting, late into compacted hours),
compactions, packing of the fine tiers, deletions and retention against a plain dict, every read compared,
the tiers too (docs/storage.md)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from collection.models import ReadingBlock, Rollup, RollupBlock, Sample
from collection.services import SampleBatch, ingest_samples
from collection.services.blocks import compact, drop_blocks_before, read_readings
from collection.services.query import fetch_raw
from collection.services.retention import delete_readings
from collection.services.rollups import Buckets, aggregate_raw, ceil_to, combine, fetch_buckets, pack
from collection.tests.readings import SECOND, T0, refresh_all
from instruments.tests.factories import make_channel, make_instrument

pytestmark = pytest.mark.django_db

HOUR = 3600 * SECOND
SPAN = 6 * HOUR
# Times on a coarse grid (so re-sends and conflicts happen often), anywhere in six hours.
STAMPS = st.integers(0, SPAN // (7 * SECOND) - 1).map(lambda i: T0 + i * 7 * SECOND)
VALUES = st.sampled_from([0.5, 1.25, -3.0, 20.125, 1e-3])


def as_lists(buckets: Buckets) -> list[list[int]]:
    return [
        getattr(buckets, name).view(np.int64).tolist()
        for name in ("bucket", "count", "min_value", "max_value", "sum_value", "m2", "first_ts", "last_ts")
    ]


def test_blocks_behave_like_a_plain_dict():
    channel = make_channel(make_instrument(), slug="model")

    class Readings(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            Sample.objects.filter(channel=channel).delete()
            ReadingBlock.objects.filter(channel=channel).delete()
            Rollup.objects.filter(channel=channel).delete()
            RollupBlock.objects.filter(channel=channel).delete()
            self.model: dict[int, float] = {}
            self.dropped_before = T0  # buckets before it may hold readings retention dropped: not compared

        @rule(batch=st.dictionaries(STAMPS, VALUES, min_size=1, max_size=30))
        def ingest(self, batch):
            ts = np.array(sorted(batch), dtype=np.int64)
            values = np.array([batch[t] for t in ts.tolist()])
            result = ingest_samples(SampleBatch(np.full(len(ts), channel.pk), ts, values))
            new = [t for t in batch if t not in self.model]
            same = [t for t in batch if t in self.model and self.model[t] == batch[t]]
            assert (result.accepted, result.duplicates) == (len(new), len(same))
            assert result.conflicts == len(batch) - len(new) - len(same)
            self.model.update((t, batch[t]) for t in new)

        @rule(hours=st.integers(0, 6), windows=st.integers(1, 4))
        def compact_some(self, hours, windows):
            compact(T0 + hours * HOUR, max_windows=windows)

        @rule(hours=st.integers(0, 6), windows=st.integers(1, 8))
        def pack_some(self, hours, windows):
            refresh_all()  # the tiers first, as the worker keeps them
            pack(T0 + hours * HOUR, max_windows=windows)

        @rule(a=STAMPS, length=st.integers(1, 2 * 3600))
        def delete(self, a, length):
            b = a + length * SECOND
            deleted = delete_readings([channel], a, b)[channel.pk]
            gone = [t for t in self.model if a <= t < b]
            assert deleted == len(gone)
            for t in gone:
                del self.model[t]

        @rule(cutoff=STAMPS)
        def drop_before(self, cutoff):
            # Retention's block step, then its hot-row delete (enforce_retention runs both per channel).
            drop_blocks_before(channel.pk, cutoff)
            Sample.objects.filter(channel=channel, ts__lt=cutoff).delete()
            self.model = {t: v for t, v in self.model.items() if t >= cutoff}
            self.dropped_before = max(self.dropped_before, cutoff)

        @invariant()
        def every_read_matches(self):
            got = read_readings(channel.pk, T0, T0 + SPAN)
            keys = sorted(self.model)
            assert got["ts"].tolist() == keys
            assert got["value"].tolist() == [self.model[t] for t in keys]
            lo, hi = T0 + HOUR - 3 * SECOND, T0 + 4 * HOUR + 11 * SECOND
            raw = fetch_raw(channel.pk, lo, hi, include_flagged=True)
            assert raw["ts"].tolist() == [t for t in keys if lo <= t < hi]

        @invariant()
        def every_tier_matches(self):
            refresh_all()
            keys = sorted(self.model)
            ts = np.array(keys, dtype=np.int64)
            expected = aggregate_raw(
                ts, np.array([self.model[t] for t in keys]), np.zeros(len(ts), np.int64), 10 * SECOND
            )
            for tier in (10, 60, 600, 3600):
                if tier > 10:
                    expected = combine(expected, tier * SECOND)
                lo = ceil_to(self.dropped_before, tier * SECOND)
                got = fetch_buckets(channel.pk, tier, lo, T0 + SPAN)
                assert as_lists(got) == as_lists(expected.select(expected.bucket >= lo)), tier

    run_state_machine_as_test(
        Readings,
        settings=settings(
            max_examples=25,
            stateful_step_count=12,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
