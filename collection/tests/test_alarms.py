"""Alarm rules: thresholds with hysteresis and minimum duration, rates, staleness, selectors; evaluated
incrementally and never raising the same alarm twice."""

from __future__ import annotations

import re
from datetime import timedelta

import numpy as np
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from collection.alarms import evaluate
from collection.alarms.choices import RuleKind, Transition
from collection.alarms.models import AlarmEvent, AlarmNotification, AlarmRule, AlarmState
from collection.services import SampleBatch, ingest_samples
from daqbroker_agent.parsing import datetime_to_us, now_us, us_to_datetime
from instruments.choices import ChannelKind
from instruments.tests.factories import make_channel, make_instrument, make_source

pytestmark = pytest.mark.django_db

S = 1_000_000


@pytest.fixture
def t0():
    return (now_us() // S - 3600) * S


@pytest.fixture
def temp():
    return make_channel(make_instrument(), slug="temp", units="degC", missing_values=[-9999])


def feed(channel, t0, points) -> dict:
    """Ingest (seconds after t0, value) points and evaluate the rules, as the after-ingest task does."""
    ts = np.array([t0 + s * S for s, _ in points], dtype=np.int64)
    values = np.array([v for _, v in points], dtype=float)
    spans = ingest_samples(SampleBatch(np.full(len(ts), channel.pk), ts, values)).spans
    evaluate.evaluate_after_ingest(spans)
    return spans


def events(channel) -> list[tuple]:
    return [
        (e.raised_at, e.raised_value, e.cleared_at, e.cleared_value)
        for e in AlarmEvent.objects.filter(channel=channel).order_by("raised_at")
    ]


def at(t0, seconds):
    return us_to_datetime(t0 + seconds * S)


def test_threshold_with_hysteresis(temp, t0):
    AlarmRule.objects.create(name="hot", instrument=temp.instrument, kind=RuleKind.ABOVE, threshold=30, hysteresis=2)
    feed(temp, t0, [(0, 25), (1, 31), (2, 29.5), (3, 28.5), (4, 28), (5, 30), (6, 30.5), (7, 20)])
    assert events(temp) == [(at(t0, 1), 31.0, at(t0, 4), 28.0), (at(t0, 6), 30.5, at(t0, 7), 20.0)]


def test_below_threshold_and_sentinels_are_not_readings(temp, t0):
    AlarmRule.objects.create(name="frost", instrument=temp.instrument, kind=RuleKind.BELOW, threshold=0, hysteresis=1)
    feed(temp, t0, [(0, 5), (1, -9999), (2, 0.5), (3, -0.5), (4, 0.5), (5, 1)])
    assert events(temp) == [(at(t0, 3), -0.5, at(t0, 5), 1.0)]


def test_minimum_duration_counts_reading_time_across_batches(temp, t0):
    AlarmRule.objects.create(
        name="hot 10 s", instrument=temp.instrument, kind=RuleKind.ABOVE, threshold=30, min_duration_seconds=10
    )
    feed(temp, t0, [(0, 31), (5, 32), (10, 29), (15, 31)])  # the first run ends before 10 s
    assert events(temp) == []
    assert AlarmState.objects.get().pending_since == t0 + 15 * S
    feed(temp, t0, [(20, 31)])
    assert events(temp) == []
    feed(temp, t0, [(25, 33), (30, 31)])
    [event] = AlarmEvent.objects.all()
    assert (event.condition_since, event.raised_at, event.raised_value) == (at(t0, 15), at(t0, 25), 33.0)


def test_rate_of_change(temp, t0):
    AlarmRule.objects.create(
        name="jumps", instrument=temp.instrument, kind=RuleKind.RATE, threshold=1.0, hysteresis=0.2
    )
    feed(temp, t0, [(0, 0), (2, 2)])  # 1/s: not beyond the threshold
    feed(temp, t0, [(4, 10)])  # 4/s from the previous batch's last reading
    feed(temp, t0, [(6, 11), (8, 12.5), (10, 13.5)])  # 0.5/s clears (<= 0.8)
    [event] = AlarmEvent.objects.all()
    assert (event.raised_at, event.raised_value, event.cleared_at, event.cleared_value) == (
        at(t0, 4),
        4.0,
        at(t0, 6),
        11.0,
    )
    assert "changing at 4" in event.message


def test_one_rule_applies_to_many_channels_by_units_pattern_instrument_and_list(t0):
    a, b = make_instrument(), make_instrument()
    channels = {
        "a_air": make_channel(a, slug="air_temp", units="degC"),
        "a_box": make_channel(a, slug="box_temp", name="Logger box temperature", units="degC"),
        "a_rh": make_channel(a, slug="rh", units="%"),
        "b_air": make_channel(b, slug="air_temp", units="degC"),
        "b_text": make_channel(b, slug="status", kind=ChannelKind.TEXT),
    }
    by_units = AlarmRule.objects.create(name="degC", units="degC", threshold=40)
    by_pattern = AlarmRule.objects.create(name="air", channel_pattern="AIR*", threshold=40)
    by_name = AlarmRule.objects.create(name="box", channel_pattern="*box temperature", threshold=40)
    on_a = AlarmRule.objects.create(name="a", instrument=a, threshold=40)
    listed = AlarmRule.objects.create(name="listed", threshold=40)
    listed.channels.set([channels["a_rh"]])
    for channel in channels.values():
        if channel.kind != ChannelKind.TEXT:
            feed(channel, t0, [(0, 50)])
    fired = {(e.rule.name, e.channel_id) for e in AlarmEvent.objects.select_related("rule")}
    ids = {k: c.pk for k, c in channels.items()}
    assert fired == {
        *((by_units.name, ids[k]) for k in ("a_air", "a_box", "b_air")),
        *((by_pattern.name, ids[k]) for k in ("a_air", "b_air")),
        (by_name.name, ids["a_box"]),
        *((on_a.name, ids[k]) for k in ("a_air", "a_box", "a_rh")),
        (listed.name, ids["a_rh"]),
    }
    assert by_units.selection_text() == "in degC"


def test_evaluating_the_same_readings_twice_raises_one_alarm(temp, t0):
    AlarmRule.objects.create(name="hot", instrument=temp.instrument, threshold=30)
    spans = feed(temp, t0, [(0, 31)])
    evaluate.evaluate_after_ingest(spans)  # a second worker with the same batch
    evaluate.check_periodic()
    assert AlarmEvent.objects.count() == 1
    assert AlarmNotification.objects.filter(transition=Transition.RAISED).count() == 1


def test_the_periodic_check_catches_up_an_evaluation_that_never_ran(temp, t0):
    AlarmRule.objects.create(name="hot", instrument=temp.instrument, threshold=30)
    feed(temp, t0, [(0, 20)])
    ingest_samples(SampleBatch(np.array([temp.pk]), np.array([t0 + S]), np.array([35.0])))  # its task was lost
    assert AlarmEvent.objects.count() == 0
    assert evaluate.check_periodic().raised == 1


def test_a_disabled_rule_does_nothing(temp, t0):
    AlarmRule.objects.create(name="hot", instrument=temp.instrument, threshold=30, enabled=False)
    feed(temp, t0, [(0, 31)])
    assert AlarmEvent.objects.count() == 0


def test_stale_channel_is_raised_by_the_periodic_check_and_cleared_by_the_next_reading():
    t0 = now_us() - 2 * S  # readings from just now: fresh when they arrive
    instrument = make_instrument()
    source = make_source(instrument, config={"path": "/tmp"}, interval_seconds=10)
    fast = make_channel(instrument, slug="fast", source=source, expected_interval_seconds=5)
    slow = make_channel(instrument, slug="slow", source=source)  # expected: its source's 10 s
    rule = AlarmRule.objects.create(name="quiet", instrument=instrument, kind=RuleKind.STALE, stale_factor=3)
    feed(fast, t0, [(0, 1)])
    feed(slow, t0, [(0, 1)])
    now = t0 + 20 * S
    assert evaluate.check_periodic(now).raised == 1  # fast: 20 s > 3 x 5 s; slow: 20 s < 3 x 10 s
    [event] = AlarmEvent.objects.all()
    assert (event.channel, event.raised_at) == (fast, at(t0, 15))
    assert "no reading since" in event.message
    assert evaluate.check_periodic(now).raised == 0  # still stale: the same alarm
    assert evaluate.check_periodic(t0 + 31 * S).raised == 1  # now slow too
    feed(fast, t0, [(1, 2)])  # the channel speaks again
    event.refresh_from_db()
    assert event.cleared_at is not None
    assert list(AlarmEvent.objects.filter(rule=rule, cleared_at__isnull=True).values_list("channel", flat=True)) == [
        slow.pk
    ]


def test_a_channel_that_never_spoke_is_stale_after_its_grace_period(t0):
    instrument = make_instrument()
    quiet = make_channel(instrument, slug="quiet", expected_interval_seconds=60)
    AlarmRule.objects.create(name="quiet", instrument=instrument, kind=RuleKind.STALE, stale_factor=2)
    created = datetime_to_us(quiet.created)
    assert evaluate.check_periodic(created + 100 * S).raised == 0
    assert evaluate.check_periodic(created + 121 * S).raised == 1


def test_rules_refuse_missing_thresholds():
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as excinfo:
        AlarmRule(name="x", kind=RuleKind.ABOVE, units="V").full_clean()
    assert set(excinfo.value.message_dict) == {"threshold"}
    with pytest.raises(ValidationError):
        AlarmRule(name="x", kind=RuleKind.RATE, threshold=-1, units="V").full_clean()
    AlarmRule(name="x", kind=RuleKind.STALE, units="V").full_clean()


def test_a_rule_without_any_selector_applies_to_nothing(temp, t0):
    rule = AlarmRule.objects.create(name="everything?", threshold=30)
    feed(temp, t0, [(0, 31)])
    assert AlarmEvent.objects.count() == 0
    assert rule.selected_channels() == []


def test_acknowledge(temp, t0):
    from instruments.tests.factories import make_user

    AlarmRule.objects.create(name="hot", instrument=temp.instrument, threshold=30)
    feed(temp, t0, [(0, 31)])
    operator = make_user()
    assert evaluate.acknowledge(AlarmEvent.objects.all(), operator) == 1
    assert evaluate.acknowledge(AlarmEvent.objects.all(), make_user()) == 0  # already acknowledged
    event = AlarmEvent.objects.get()
    assert event.acknowledged_by == operator
    assert timezone.now() - event.acknowledged_at < timedelta(minutes=1)


def test_evaluating_costs_statements_per_rule_that_can_change_not_per_rule_on_the_site():
    """A site with a thousand agents has two thousand rules (two per health instrument: a value rule and a
    stale rule); the channels of each heartbeat are evaluated against them. Rules that cannot select a
    channel cost nothing, and a stale rule on a channel that just spoke, with no alarm to clear, costs no
    statement; a value rule costs the same whatever the number of rules on the site."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    t0 = now_us() - 2 * S
    statements, periodic = {}, {}
    for n in (2, 12):
        fed = []
        for i in range(n):
            instrument = make_instrument()
            channel = make_channel(instrument, slug="depth", expected_interval_seconds=10)
            AlarmRule.objects.create(name=f"full {n}/{i}", instrument=instrument, kind=RuleKind.ABOVE, threshold=90)
            AlarmRule.objects.create(name=f"silent {n}/{i}", instrument=instrument, kind=RuleKind.STALE)
            fed.append(channel)
        spans = {}
        for channel in fed:
            spans.update(ingest_samples(SampleBatch(np.array([channel.pk]), np.array([t0]), np.array([1.0]))).spans)
        evaluate.evaluate_after_ingest({fed[0].pk: spans[fed[0].pk]})  # every pair's state made once
        for channel in fed[1:]:
            evaluate.evaluate_after_ingest({channel.pk: spans[channel.pk]})
        later = {}
        for channel in fed:
            later.update(ingest_samples(SampleBatch(np.array([channel.pk]), np.array([t0 + S]), np.array([2.0]))).spans)
        with CaptureQueriesContext(connection) as queries:
            outcome = evaluate.evaluate_after_ingest({fed[0].pk: later[fed[0].pk]})
        assert (outcome.raised, outcome.cleared) == (0, 0)
        statements[n] = len(queries.captured_queries)
        for channel in fed[1:]:
            evaluate.evaluate_after_ingest({channel.pk: later[channel.pk]})
        # The beat's pass (every 30 s) with nothing to raise, clear or catch up: the same few statements.
        with CaptureQueriesContext(connection) as queries:
            outcome = evaluate.check_periodic(now=t0 + 2 * S)
        assert (outcome.raised, outcome.cleared) == (0, 0)
        periodic[n] = len(queries.captured_queries)
    # The rules unchanged since they were loaded (1: their version), the channels they may select, the active
    # stale alarms, the value rules' progress.
    assert periodic[12] == periodic[2] <= 4, periodic
    # The rules unchanged (1: their version), the channels (1), the active stale pairs (1), the value rule:
    # its locked state (2), its readings (2: the block probe, the rows), its state saved (1), and the
    # savepoint around it (2: the test runs in a transaction).
    assert statements[12] == statements[2] <= 10, statements


def test_rules_are_loaded_again_only_when_they_change_and_every_change_applies_at_the_next_evaluation(temp, t0):
    """Evaluation keeps the enabled rules it loaded while one statement says they are the same
    (``evaluate._rules_version``); a saved threshold, a channel added to or removed from a rule's list, a
    rule disabled, deleted or created each apply to the next batch, whichever process made the change."""
    other = make_channel(temp.instrument, slug="other", units="hPa")
    hot = AlarmRule.objects.create(name="hot", instrument=temp.instrument, kind=RuleKind.ABOVE, threshold=30)
    loading = re.compile(r"collection_alarmrule\W{1,3}enabled")

    def fed(channel, second, value) -> int:
        """Feed one reading; how many times the enabled rules were read for it."""
        with CaptureQueriesContext(connection) as queries:
            feed(channel, t0, [(second, value)])
        return sum(1 for query in queries if loading.search(query["sql"]))

    assert fed(temp, 0, 20) == 1
    assert fed(temp, 1, 21) == 0  # unchanged: not loaded again
    hot.threshold = 10
    hot.save()  # a saved rule: its new threshold applies to the next reading
    assert fed(temp, 2, 15) == 1
    assert events(temp) == [(at(t0, 2), 15.0, None, None)]
    listed = AlarmRule.objects.create(name="listed", kind=RuleKind.BELOW, threshold=0)
    assert fed(other, 3, -1) == 1  # a new rule, still listing no channel: selects nothing
    assert events(other) == []
    listed.channels.add(other)  # a channel added to its list
    assert fed(other, 4, -2) == 1
    assert events(other) == [(at(t0, 4), -2.0, None, None)]
    listed.channels.remove(other)  # and removed: the next reading is not evaluated by it
    assert fed(other, 5, 5) == 1
    assert events(other) == [(at(t0, 4), -2.0, None, None)]
    hot.enabled = False
    hot.save()
    assert fed(temp, 6, 5) == 1  # disabled: the active event is not cleared by it any more
    assert events(temp) == [(at(t0, 2), 15.0, None, None)]
    AlarmRule.objects.filter(pk=hot.pk).delete()
    assert fed(temp, 7, 50) == 1
    assert fed(temp, 8, 50) == 0
