"""Evaluating alarm rules: after readings arrive, and periodically for staleness.

Each (rule, channel) pair has an ``AlarmState``: how far its readings have been evaluated, whether the
condition is pending (holding, but not yet for ``min_duration_seconds``), the previous reading (for
rates) and the active event. Evaluation locks that row, reads the readings stamped after
``evaluated_until`` (missing-value sentinels and suspect readings are left out), and walks them in time
order:

* **above / below**: raised when the value passes the threshold and stays past it for the minimum
  duration (reading time); cleared once it is back past the threshold by the hysteresis.
* **rate**: the same with ``|Δvalue / Δt|`` (per second) between consecutive readings.
* **stale**: raised when a channel has had no reading for ``stale_factor`` times its expected interval
  (the channel's, else its source's collection interval), by the periodic check; cleared by the next
  reading, or by the periodic check once the channel is fresh again.

Raising and clearing write the event, its state and its notifications (the outbox) in one transaction;
the notifications are sent after it commits. With the state row locked, two workers evaluating the same
readings at once raise one event, not two. Readings stamped earlier than what was already evaluated
(late backfills) are not evaluated; a rule's first evaluation of a channel starts with the batch that
triggered it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from django.db import connections, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from collection.alarms import notify
from collection.alarms.choices import RuleKind, Transition
from collection.alarms.models import AlarmEvent, AlarmRule, AlarmState
from collection.choices import Quality
from collection.services.series import read_series
from daqbroker_agent.parsing import datetime_to_us, now_us, us_to_datetime
from instruments.models import Channel

logger = logging.getLogger(__name__)

MAX_READINGS_PER_PASS = 500_000
EVALUATED_QUALITIES = (Quality.OK, Quality.OUT_OF_RANGE)


@dataclass
class Outcome:
    raised: int = 0
    cleared: int = 0

    def __iadd__(self, other: Outcome) -> Outcome:
        self.raised += other.raised
        self.cleared += other.cleared
        return self


def _rules() -> list[tuple[AlarmRule, set[int]]]:
    """The enabled rules and the ids of the channels each lists, loaded again only when the rules changed.

    A worker evaluates after every ingest it takes up (about once a second under load), and a site with
    many agents has two rules per health instrument: loading and building them every time was a fifth of a
    busy worker's time with 300 agents (docs/performance.md#many-agents). What they are is read from the
    database each time in one statement, ``_rules_version``, whatever process changed them."""
    global _cached_rules
    version = _rules_version()
    cached = _cached_rules
    if cached is not None and cached[0] == version:
        return cached[1]
    rules = AlarmRule.objects.filter(enabled=True).select_related("instrument").prefetch_related("channels")
    loaded = [(rule, {c.pk for c in rule.channels.all()}) for rule in rules]
    _cached_rules = (version, loaded)
    return loaded


_cached_rules: tuple[tuple, list[tuple[AlarmRule, set[int]]]] | None = None


def _rules_version() -> tuple:
    """What changes whenever a rule or the channels a rule lists change: the rules' count, newest id and
    latest save (``updated`` is set by every save), and the count and newest id of the rules' channel list
    (a row removed lowers the count, a row added raises the newest id). One statement."""
    connection = connections[AlarmRule.objects.db]
    quote = connection.ops.quote_name
    rules = quote(AlarmRule._meta.db_table)
    listed = quote(AlarmRule.channels.through._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT (SELECT COUNT(*) FROM {rules}), (SELECT MAX({quote('id')}) FROM {rules}), "
            f"(SELECT MAX({quote('updated')}) FROM {rules}), (SELECT COUNT(*) FROM {listed}), "
            f"(SELECT MAX({quote('id')}) FROM {listed})"
        )
        return tuple(cursor.fetchone())


def forget_rules() -> None:
    """Forget the loaded rules (tests: each starts on a database whose ids may be reused)."""
    global _cached_rules
    _cached_rules = None


class _RuleIndex:
    """The enabled rules by what they can select, so that finding a channel's rules does not try every rule:
    a site with a thousand agents has two thousand rules (two per health instrument) and evaluates the
    channels of every heartbeat. A rule listing channels can select only those, one scoped to an instrument
    only that instrument's channels; the rest (units, a name pattern) are tried on every channel. Whether a
    candidate selects the channel is still ``AlarmRule.matches``."""

    def __init__(self, rules: list[tuple[AlarmRule, set[int]]]) -> None:
        self.by_channel: dict[int, list[int]] = {}
        self.by_instrument: dict[int, list[int]] = {}
        self.everywhere: list[int] = []
        self.rules = rules
        for i, (rule, explicit) in enumerate(rules):
            if explicit:
                for channel_id in explicit:
                    self.by_channel.setdefault(channel_id, []).append(i)
            elif rule.instrument_id:
                self.by_instrument.setdefault(rule.instrument_id, []).append(i)
            else:
                self.everywhere.append(i)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def candidates(self) -> QuerySet[Channel]:
        """Every channel some rule may select (a superset: ``of`` says which rules do), in one query."""
        where = Q(pk__in=list(self.by_channel)) | Q(instrument_id__in=list(self.by_instrument))
        for i in self.everywhere:
            rule, _ = self.rules[i]
            if rule.units:
                where |= Q(units=rule.units)
            elif rule.channel_pattern:
                where |= Q(pk__isnull=False)  # a name pattern alone: any channel of the site
        return Channel.objects.filter(where)

    def of(self, channel: Channel) -> list[AlarmRule]:
        """The rules that select ``channel`` and apply to its kind, in the rules' order."""
        candidates = sorted(
            {
                *self.by_channel.get(channel.pk, ()),
                *self.by_instrument.get(channel.instrument_id, ()),
                *self.everywhere,
            }
        )
        return [
            rule
            for rule, explicit in (self.rules[i] for i in candidates)
            if rule.applies_to_kind(channel) and rule.matches(channel, explicit)
        ]


def evaluate_after_ingest(spans: dict[int, tuple[int, int]]) -> Outcome:
    """Evaluate every enabled rule selecting a channel of ``spans`` {channel id: (first, last) µs}."""
    outcome = Outcome()
    rules = _RuleIndex(_rules())
    if not rules or not spans:
        return outcome
    now = now_us()  # with the channels' last readings read just below: one consistent look for stale rules
    channels = list(Channel.objects.filter(pk__in=list(spans)).select_related("instrument", "source"))
    pairs = [(rule, channel) for channel in channels for rule in rules.of(channel)]
    active = _active_pairs([rule for rule, _ in pairs if rule.kind == RuleKind.STALE], list(spans))
    for rule, channel in pairs:
        if rule.kind == RuleKind.STALE:
            outcome += evaluate_stale(rule, channel, now, active=(rule.pk, channel.pk) in active, fresh=True)
        else:
            outcome += evaluate_values(rule, channel, first_ts=spans[channel.pk][0])
    return outcome


def _active_pairs(rules: list[AlarmRule], channel_ids: list[int]) -> set[tuple[int, int]]:
    """The (rule, channel) pairs of these rules and channels with an active event, in one query."""
    if not rules:
        return set()
    return set(
        AlarmState.objects.filter(
            rule__in={rule.pk for rule in rules}, channel_id__in=channel_ids, active_event__isnull=False
        ).values_list("rule_id", "channel_id")
    )


def check_periodic(now: int | None = None) -> Outcome:
    """The beat task's pass: stale channels, and value rules whose channel has readings not yet evaluated
    (an after-ingest evaluation that never ran: a lost task, a broker outage).

    A few statements whatever the number of rules and channels (the rules, the channels they may select,
    the active stale alarms, the value rules' progress); then work only for the pairs that change: a stale
    pair whose alarm is to be raised or cleared (``evaluate_stale`` reads the channel again first), a value
    rule behind its channel's last reading."""
    now = now_us() if now is None else now
    outcome = Outcome()
    rules = _RuleIndex(_rules())
    if not rules:
        return outcome
    channels = list(rules.candidates().select_related("instrument", "source"))
    pairs = [(rule, channel) for channel in channels for rule in rules.of(channel)]
    stale_rules = [rule for rule, _ in pairs if rule.kind == RuleKind.STALE]
    value_rules = {rule.pk for rule, _ in pairs if rule.kind != RuleKind.STALE}
    channel_ids = [channel.pk for channel in channels]
    active = _active_pairs(stale_rules, channel_ids)
    evaluated = dict(
        (
            ((rule_id, channel_id), until)
            for rule_id, channel_id, until in AlarmState.objects.filter(
                rule__in=value_rules, channel_id__in=channel_ids
            ).values_list("rule_id", "channel_id", "evaluated_until")
        )
        if value_rules
        else ()
    )
    for rule, channel in pairs:
        if rule.kind == RuleKind.STALE:
            is_active = (rule.pk, channel.pk) in active
            if _is_stale(rule, channel, now) != is_active:  # a change, as of the channels read above
                outcome += evaluate_stale(rule, channel, now, active=is_active)
            continue
        until = evaluated.get((rule.pk, channel.pk))
        if until is not None and channel.last_ts is not None and channel.last_ts > until:
            outcome += evaluate_values(rule, channel)
    return outcome


def evaluate_channels(channel_ids: Iterable[int]) -> Outcome:
    """Evaluate every rule on these channels now ("validate now")."""
    outcome = Outcome()
    rules = _RuleIndex(_rules())
    for channel in Channel.objects.filter(pk__in=list(channel_ids)).select_related("instrument", "source"):
        for rule in rules.of(channel):
            if rule.kind == RuleKind.STALE:
                outcome += evaluate_stale(rule, channel, now_us())
            else:
                outcome += evaluate_values(rule, channel, first_ts=channel.last_ts)
    return outcome


def _locked_state(rule: AlarmRule, channel: Channel, initial: int) -> AlarmState:
    """The pair's state row, locked until the transaction ends (created on first use).

    The no-op UPDATE takes the row lock on every engine (SQLite has no SELECT ... FOR UPDATE, but a write
    makes a second writer wait); the locking read then sees what the previous holder committed.
    """
    pair = AlarmState.objects.filter(rule=rule, channel=channel)
    if not pair.update(evaluated_until=F("evaluated_until")):  # the pair's first evaluation
        AlarmState.objects.get_or_create(rule=rule, channel=channel, defaults={"evaluated_until": initial})
        pair.update(evaluated_until=F("evaluated_until"))
    return pair.select_for_update().get()


def evaluate_values(rule: AlarmRule, channel: Channel, first_ts: int | None = None) -> Outcome:
    """Walk the readings of ``channel`` not yet evaluated for ``rule`` (threshold and rate rules)."""
    outcome = Outcome()
    initial = (first_ts - 1) if first_ts is not None else (channel.last_ts or now_us())
    while True:
        with transaction.atomic():
            state = _locked_state(rule, channel, initial)
            ts, value, quality = read_series(channel.pk, after=state.evaluated_until, limit=MAX_READINGS_PER_PASS)
            if len(ts) == 0:
                return outcome
            keep = np.isin(quality, EVALUATED_QUALITIES)
            outcome += _walk(rule, channel, state, ts[keep], value[keep])
            state.evaluated_until = int(ts[-1])
            state.save()
        if len(ts) < MAX_READINGS_PER_PASS:
            return outcome


def _conditions(rule: AlarmRule, state: AlarmState, ts: np.ndarray, value: np.ndarray):
    """(observed quantity, raise condition, clear condition) per reading."""
    assert rule.threshold is not None  # only staleness rules have none (AlarmRule.clean); they are not evaluated here
    threshold, hysteresis = float(rule.threshold), float(rule.hysteresis)
    if rule.kind == RuleKind.RATE:
        prev_ts = np.r_[state.previous_ts if state.previous_ts is not None else -1, ts[:-1]]
        prev_value = np.r_[state.previous_value if state.previous_value is not None else np.nan, value[:-1]]
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.abs(value - prev_value) / ((ts - prev_ts) / 1_000_000)
        known = np.isfinite(rate) & (prev_ts >= 0)
        if state.previous_ts is None:
            known[0] = False
        return rate, known & (rate > threshold), known & (rate <= threshold - hysteresis)
    if rule.kind == RuleKind.ABOVE:
        return value, value > threshold, value <= threshold - hysteresis
    return value, value < threshold, value >= threshold + hysteresis


def _walk(rule: AlarmRule, channel: Channel, state: AlarmState, ts: np.ndarray, value: np.ndarray) -> Outcome:
    """Run the rule's state machine over readings, jumping from one possible change to the next."""
    outcome = Outcome()
    if len(ts) == 0:
        return outcome
    observed, raise_if, clear_if = _conditions(rule, state, ts, value)
    raising, not_raising, clearing = (np.flatnonzero(m) for m in (raise_if, ~raise_if, clear_if))
    min_duration = rule.min_duration_seconds * 1_000_000
    n, i = len(ts), 0
    while i < n:
        if state.active_event is not None:
            j = _next(clearing, i)
            if j is None:
                break
            _clear(state, int(ts[j]), float(value[j]))
            outcome.cleared += 1
            i = j + 1
            continue
        if state.pending_since is None:
            j = _next(raising, i)
            if j is None:
                break
            state.pending_since = int(ts[j])
            i = j
        run_end = _next(not_raising, i)
        limit = n if run_end is None else run_end
        k = max(i, int(np.searchsorted(ts, state.pending_since + min_duration, side="left")))
        if k < limit:
            _raise(rule, channel, state, int(ts[k]), float(observed[k]), float(value[k]))
            outcome.raised += 1
            i = k + 1
            continue
        if run_end is None:
            break  # still holding at the end of the readings: pending carries over to the next ones
        state.pending_since = None
        i = run_end
    if rule.kind == RuleKind.RATE:
        state.previous_ts, state.previous_value = int(ts[-1]), float(value[-1])
    return outcome


def _next(positions: np.ndarray, i: int) -> int | None:
    k = int(np.searchsorted(positions, i))
    return int(positions[k]) if k < len(positions) else None


def _raise(
    rule: AlarmRule, channel: Channel, state: AlarmState, at_us: int, observed: float | None, value: float | None
) -> AlarmEvent:
    since = state.pending_since if state.pending_since is not None else at_us
    event = AlarmEvent.objects.create(
        rule=rule,
        channel=channel,
        kind=rule.kind,
        severity=rule.severity,
        message=_message(rule, channel, observed, value)[:500],
        condition_since=us_to_datetime(since),
        raised_at=us_to_datetime(at_us),
        raised_value=observed,
    )
    state.active_event = event
    state.pending_since = None
    notify.queue(event, Transition.RAISED)
    logger.info("alarm raised: %s", event.message)
    return event


def _clear(state: AlarmState, at_us: int, value: float | None) -> None:
    event = state.active_event
    assert event is not None  # callers clear an active alarm only
    event.cleared_at = us_to_datetime(at_us)
    event.cleared_value = value
    event.save(update_fields=["cleared_at", "cleared_value"])
    state.active_event = None
    state.pending_since = None
    notify.queue(event, Transition.CLEARED)
    logger.info("alarm cleared: %s", event.message)


def _message(rule: AlarmRule, channel: Channel, observed: float | None, value: float | None) -> str:
    units = f" {channel.units}" if channel.units else ""
    where = f"{channel.instrument.name} / {channel.name}"
    if rule.kind == RuleKind.STALE:
        last = "never" if channel.last_ts is None else f"{us_to_datetime(channel.last_ts):%Y-%m-%d %H:%M:%S} UTC"
        return f"{where}: no reading since {last} ({rule.name}: {rule.describe()})"
    if rule.kind == RuleKind.RATE:
        return f"{where}: changing at {observed:.6g}{units}/s, now {value:.6g}{units} ({rule.name}: {rule.describe()})"
    return f"{where}: {value:.6g}{units} ({rule.name}: {rule.describe()})"


def expected_interval(channel: Channel) -> int | None:
    if channel.expected_interval_seconds:
        return channel.expected_interval_seconds
    if channel.source_id and channel.source is not None:
        return channel.source.interval_seconds
    return None


def _staleness(rule: AlarmRule, channel: Channel, now: int) -> tuple[bool, int, int] | None:
    """(stale, the channel's last reading or its creation, the rule's limit in µs) as of ``now``, from the
    channel as loaded; None when the channel has no expected interval."""
    interval = expected_interval(channel)
    if interval is None:
        return None
    last = channel.last_ts if channel.last_ts is not None else datetime_to_us(channel.created)
    limit = int(rule.stale_factor * interval * 1_000_000)
    return now - last > limit, last, limit


def _is_stale(rule: AlarmRule, channel: Channel, now: int) -> bool:
    staleness = _staleness(rule, channel, now)
    return staleness is not None and staleness[0]


def evaluate_stale(
    rule: AlarmRule, channel: Channel, now: int, *, active: bool | None = None, fresh: bool = False
) -> Outcome:
    """Raise or clear the stale alarm of ``rule`` on ``channel`` as of ``now``. ``active``: whether the pair
    has an active event, when the caller read it already; ``fresh``: the channel's last reading was read
    together with ``now`` (otherwise it is read again here)."""
    outcome = Outcome()
    if expected_interval(channel) is None:
        return outcome
    if not fresh:
        channel.refresh_from_db(fields=["last_ts", "last_value"])
    staleness = _staleness(rule, channel, now)
    assert staleness is not None  # the channel has an expected interval
    stale, last, limit = staleness
    if active is None:
        active = AlarmState.objects.filter(rule=rule, channel=channel, active_event__isnull=False).exists()
    if stale == active:
        return outcome  # nothing changes: no lock taken
    with transaction.atomic():
        state = _locked_state(rule, channel, now)
        if stale and state.active_event is None:
            _raise(rule, channel, state, last + limit, None, None)
            outcome.raised += 1
        elif not stale and state.active_event is not None:
            _clear(state, last, channel.last_value)  # last: channel.last_ts, or its creation before any reading
            outcome.cleared += 1
        state.evaluated_until = max(state.evaluated_until, now)
        state.save()
    return outcome


def acknowledge(events, user) -> int:
    """Mark events acknowledged by ``user`` (those not acknowledged yet); returns how many."""
    return AlarmEvent.objects.filter(pk__in=[e.pk for e in events], acknowledged_at__isnull=True).update(
        acknowledged_at=timezone.now(), acknowledged_by=user
    )
