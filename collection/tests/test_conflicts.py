"""Duplicates and conflicts: the same value already stored at a (channel, time) is a duplicate (counted,
nothing kept); another value there is a conflict (the stored value stays, the new one is quarantined with
both values). Through ``ingest_samples`` on every engine's bulk path, and through the HTTP ingest API."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import orjson
import pytest
from django.core.cache import cache

from collection import storage
from collection.choices import Origin
from collection.models import RejectedSample, Sample, TextSample
from collection.services import SampleBatch, ingest_samples
from daqbroker_agent.parsing import datetime_to_us, us_to_datetime
from instruments.choices import ChannelKind
from instruments.tests.factories import make_channel, make_instrument

pytestmark = pytest.mark.django_db

T0 = datetime_to_us(datetime(2024, 5, 6, 7, 0, 0, tzinfo=UTC))
SECOND = 1_000_000


@pytest.fixture
def instrument():
    return make_instrument()


@pytest.fixture
def temp(instrument):
    return make_channel(instrument, slug="temp")


@pytest.fixture
def status(instrument):
    return make_channel(instrument, slug="status", kind=ChannelKind.TEXT)


def at(i: int) -> str:
    return us_to_datetime(T0 + i * SECOND).isoformat()


def stored(channel) -> dict[int, float]:
    return dict(Sample.objects.filter(channel=channel).values_list("ts", "value"))


def quarantined(channel) -> list[tuple[str, str, str, object]]:
    rows = RejectedSample.objects.filter(channel=channel, reason__startswith="conflict:").order_by("raw_time", "id")
    return [(r.raw_time, r.raw_value, r.reason, r.context.get("stored_value")) for r in rows]


def test_an_exact_duplicate_is_counted_and_nothing_is_quarantined(temp, status):
    rows = [(temp.pk, T0, 21.5), (temp.pk, T0 + SECOND, 0.1 + 0.2), (status.pk, T0, "OK ")]
    ingest_samples(SampleBatch.from_rows(rows))
    again = ingest_samples(SampleBatch.from_rows(rows))
    assert (again.accepted, again.duplicates, again.conflicts, again.rejected_count) == (0, 3, 0, 0)
    assert again.as_dict()["conflicts"] == 0
    assert not RejectedSample.objects.exists()


def test_a_different_value_is_a_conflict_quarantined_with_both_values(temp):
    ingest_samples(SampleBatch.from_rows([(temp.pk, T0, 21.5), (temp.pk, T0 + SECOND, 22.0)]))
    result = ingest_samples(SampleBatch.from_rows([(temp.pk, T0, 23.25), (temp.pk, T0 + SECOND, 22.0)]))
    assert (result.accepted, result.duplicates, result.conflicts, result.rejected_count) == (0, 1, 1, 0)
    assert result.as_dict()["conflicts"] == 1
    assert stored(temp) == {T0: 21.5, T0 + SECOND: 22.0}, "the stored value stays"
    assert quarantined(temp) == [(at(0), "23.25", f"conflict: 23.25 differs from the stored 21.5 at {at(0)}", 21.5)]
    kept = RejectedSample.objects.get(channel=temp)
    assert kept.origin == Origin.INTERNAL
    assert kept.context["conflict"] is True


def test_floats_compare_exactly_as_stored(temp):
    values = [0.1 + 0.2, 1e-300, 123456789.12345679, -0.0, 2.0**-1074]
    ingest_samples(SampleBatch.from_rows([(temp.pk, T0 + i * SECOND, v) for i, v in enumerate(values)]))
    same = ingest_samples(SampleBatch.from_rows([(temp.pk, T0 + i * SECOND, v) for i, v in enumerate(values)]))
    assert (same.duplicates, same.conflicts) == (len(values), 0)
    # 0.3 is not 0.1 + 0.2 (0.30000000000000004); one ulp apart is another value.
    near = [0.3, 1e-300 * (1 + 2**-52), np.nextafter(123456789.12345679, np.inf), 0.0, 2.0**-1073]
    result = ingest_samples(SampleBatch.from_rows([(temp.pk, T0 + i * SECOND, float(v)) for i, v in enumerate(near)]))
    # -0.0 equals 0.0 as a number, here and in SQL: a duplicate.
    assert (result.accepted, result.duplicates, result.conflicts) == (0, 1, 4)
    assert quarantined(temp)[0][2] == f"conflict: 0.3 differs from the stored 0.30000000000000004 at {at(0)}"


def test_text_values_compare_as_text(status):
    ingest_samples(SampleBatch.from_rows([(status.pk, T0, "OK"), (status.pk, T0 + SECOND, "Ünïcode 🌡")]))
    # Case, a trailing blank and another character are other values (MariaDB's collation would call
    # "OK" and "ok " equal; the comparison does not go through it).
    result = ingest_samples(
        SampleBatch.from_rows([(status.pk, T0, "ok "), (status.pk, T0 + SECOND, "Ünïcode 🌡"), (status.pk, T0, "OK")])
    )
    assert (result.accepted, result.duplicates, result.conflicts) == (0, 2, 1)
    assert quarantined(status) == [(at(0), "ok ", f"conflict: 'ok ' differs from the stored 'OK' at {at(0)}", "OK")]
    assert dict(TextSample.objects.filter(channel=status).values_list("ts", "value"))[T0] == "OK"


def test_conflicts_inside_one_batch(temp, status):
    batch = SampleBatch.from_rows(
        [
            (temp.pk, T0, 1.0),
            (temp.pk, T0, 2.0),  # conflicts with the first of the batch, which is stored
            (temp.pk, T0, 1.0),  # the stored value again: a duplicate
            (status.pk, T0, "a"),
            (status.pk, T0, "b"),
        ]
    )
    result = ingest_samples(batch)
    assert (result.accepted, result.duplicates, result.conflicts) == (2, 1, 2)
    assert stored(temp) == {T0: 1.0}
    assert quarantined(temp) == [(at(0), "2.0", f"conflict: 2.0 differs from the stored 1.0 at {at(0)}", 1.0)]
    assert quarantined(status)[0][2] == f"conflict: 'b' differs from the stored 'a' at {at(0)}"
    # The sender's index of each conflicting reading is kept, to find it in what was sent.
    assert sorted(r.index for r in result.conflicted) == [1, 4]


def test_repeats_in_a_batch_are_judged_against_the_value_already_stored(temp):
    ingest_samples(SampleBatch.from_rows([(temp.pk, T0, 5.0)]))
    result = ingest_samples(SampleBatch.from_rows([(temp.pk, T0, 6.0), (temp.pk, T0, 5.0), (temp.pk, T0, 6.0)]))
    assert (result.accepted, result.duplicates, result.conflicts) == (0, 1, 2)
    assert [q[3] for q in quarantined(temp)] == [5.0, 5.0]
    assert stored(temp) == {T0: 5.0}


def test_a_mixed_batch_larger_than_a_chunk_gives_exact_counts(instrument):
    """New, duplicate and conflicting readings scattered through several of the bulk path's chunks (and,
    on PostgreSQL, through its staged path), plus repeats inside the batch."""
    channels = [make_channel(instrument, slug=f"c{i}") for i in range(3)]
    ids = np.array([c.pk for c in channels], dtype=np.int64)
    per_channel = storage.CHUNK  # 3 channels: the batch spans several chunks
    ts = T0 + np.arange(per_channel, dtype=np.int64) * SECOND
    value = np.arange(per_channel, dtype=np.float64) / 8
    rng = np.random.default_rng(7)
    before = rng.random(per_channel) < 0.2  # stored before: 20 % of the times
    changed = before & (rng.random(per_channel) < 0.25)  # of which a quarter now come with another value
    for channel_id in ids.tolist():
        ingest_samples(SampleBatch(np.full(before.sum(), channel_id), ts[before], value[before]))

    sent = np.where(changed, value + 1000, value)
    channel = np.repeat(ids, per_channel)
    batch_ts, batch_value = np.tile(ts, 3), np.tile(sent, 3)
    # Repeats after their first: 30 times sent again with the same value, 20 with another.
    order = rng.permutation(len(channel))
    again = rng.choice(per_channel * 3, 50, replace=False)
    channel = np.r_[channel, channel[again]]
    batch_ts = np.r_[batch_ts, batch_ts[again]]
    batch_value = np.r_[batch_value, batch_value[again] + np.r_[np.zeros(30), np.full(20, 0.5)]]
    order = np.r_[order, np.arange(len(order), len(channel))]  # shuffled, with the repeats after their first
    result = ingest_samples(SampleBatch(channel[order], batch_ts[order], batch_value[order]))

    new, dup, conflict = (~before).sum() * 3, (before & ~changed).sum() * 3, changed.sum() * 3
    # A repeat is judged against the value that ends up stored at its time: the earlier one (``value``).
    repeat_dup = int((batch_value[-50:] == np.tile(value, 3)[again]).sum())
    assert 0 < repeat_dup < 50
    assert result.accepted == new
    assert result.duplicates == dup + repeat_dup
    assert result.conflicts == conflict + 50 - repeat_dup
    assert result.rejected_count == 0
    assert RejectedSample.objects.count() == conflict + 50 - repeat_dup
    assert Sample.objects.filter(channel__in=channels).count() == per_channel * 3
    # Stored values: the earlier ones where they conflicted, the sent ones where they were new.
    for c in channels:
        assert stored(c) == dict(zip(ts.tolist(), value.tolist(), strict=True))


def test_flagged_counts_no_conflicting_reading(instrument):
    ranged = make_channel(instrument, slug="rh", valid_min=0, valid_max=100)
    ingest_samples(SampleBatch.from_rows([(ranged.pk, T0, 50.0)]))
    result = ingest_samples(SampleBatch.from_rows([(ranged.pk, T0, 150.0), (ranged.pk, T0 + SECOND, 150.0)]))
    assert (result.accepted, result.conflicts, result.flagged) == (1, 1, 1)


# --- through the HTTP ingest API ---------------------------------------------------------------------------

URL = "/api/v1/ingest/"
T_API = 1_767_323_045  # 2026-01-02T03:04:05Z


@pytest.fixture
def _fresh_throttle_counters():
    cache.clear()
    yield
    cache.clear()


def _post(persona, body: bytes, content_type: str):
    return persona.client.generic("POST", URL, body, content_type=content_type)


@pytest.mark.usefixtures("_fresh_throttle_counters")
def test_the_api_answers_conflicts_apart_from_duplicates_json_and_csv(world, agent_scoped, owner):
    channel = world.alpha_channel
    ref = f"{channel.instrument.slug}/{channel.slug}"
    first = [{"channel": ref, "t": T_API + i, "v": 1.5 + i} for i in range(3)]
    assert _post(agent_scoped, orjson.dumps(first), "application/json").json()["accepted"] == 3

    # JSON: t+0 resent as is, t+1 with another value, t+3 new and then repeated with another value.
    body = [
        {"channel": ref, "t": T_API, "v": 1.5},
        {"channel": ref, "t": T_API + 1, "v": 9.0},
        {"channel": ref, "t": T_API + 3, "v": 4.5},
        {"channel": ref, "t": T_API + 3, "v": 4.75},
    ]
    answer = _post(agent_scoped, orjson.dumps(body), "application/json").json()
    assert {k: answer[k] for k in ("received", "accepted", "duplicates", "conflicts", "rejected")} == {
        "received": 4,
        "accepted": 1,
        "duplicates": 1,
        "conflicts": 2,
        "rejected": 0,
    }
    assert answer["rejections"] == []  # a conflict is not a refusal of the reading's form

    # CSV, from another sender: t+2 with another value, t+4 new.
    csv = f"channel,t,v\n{ref},{T_API + 2},7\n{channel.id},{T_API + 4},8\n{ref},{T_API},1.5\n".encode()
    answer = _post(owner, csv, "text/csv").json()
    assert (answer["accepted"], answer["duplicates"], answer["conflicts"]) == (1, 1, 1), answer

    values = dict(Sample.objects.filter(channel=channel).values_list("ts", "value"))
    assert values == {(T_API + i) * SECOND: v for i, v in enumerate([1.5, 2.5, 3.5, 4.5, 8.0])}
    kept = RejectedSample.objects.filter(channel=channel, reason__startswith="conflict:").order_by(
        "raw_time", "raw_value"
    )
    assert [(r.raw_value, r.context["stored_value"]) for r in kept] == [("9.0", 2.5), ("7", 3.5), ("4.75", 4.5)]
    when = us_to_datetime((T_API + 1) * SECOND).isoformat()
    assert kept[0].reason == f"conflict: 9.0 differs from the stored 2.5 at {when}"
