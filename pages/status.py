"""Status at a glance for the collaborators' pages: how fresh an instrument's readings are, how its data
sources are doing, how many alarms are active. Plain functions over querysets the caller has already
narrowed with ``accounts.permissions``; a fixed number of queries whatever the number of instruments.

Freshness compares the time since the last reading with the expected interval between readings (the
channel's ``expected_interval_seconds``, else its source's collection interval):

* **ok** (green): within 2 intervals: a reading can arrive up to one collection late without alarm;
* **late** (amber): within 5 intervals: something is slow, not yet dead;
* **stale** (red): beyond that, or never a reading although one is expected;
* **unknown** (grey): nothing says how often readings should come, or there are no channels.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.db.models import Count, F, Q, Value

from accounts.paging import BoundedCount, bounded_counts
from collection.alarms.models import AlarmEvent
from instruments.choices import ChannelKind, SourceKind
from instruments.models import WAITING_FOR_CHANNELS, Channel, DataSource, Instrument

if TYPE_CHECKING:
    from accounts.models import Agent

OK, LATE, STALE, UNKNOWN, WAITING = "ok", "late", "stale", "unknown", "waiting"
LATE_FACTOR, STALE_FACTOR = 2, 5
# CSS class and words for each state.
STATE_CLASS = {OK: "ok", LATE: "warn", STALE: "bad", UNKNOWN: "idle", WAITING: "warn"}


def now_us() -> int:
    return time.time_ns() // 1000


def expected_interval(channel: Channel) -> int | None:
    """Seconds expected between readings of ``channel`` (``channel.source`` should be select_related)."""
    if channel.expected_interval_seconds:
        return channel.expected_interval_seconds
    source = channel.source if channel.source_id else None
    if source is not None and source.kind != SourceKind.AGENT:
        return source.interval_seconds
    return None


def freshness(last_ts: int | None, interval_s: int | None, now: int | None = None) -> str:
    if interval_s is None:
        return UNKNOWN
    if last_ts is None:
        return STALE
    age = (now if now is not None else now_us()) - last_ts
    if age <= LATE_FACTOR * interval_s * 1_000_000:
        return OK
    if age <= STALE_FACTOR * interval_s * 1_000_000:
        return LATE
    return STALE


@dataclass
class SourceHealth:
    source: DataSource
    state: str  # ok / late / stale / unknown, or "disabled"
    words: str
    last_reading: int | None = None

    @property
    def css(self) -> str:
        return STATE_CLASS.get(self.state, "idle")


def source_health(source: DataSource, channels: Iterable[Channel], now: int | None = None) -> SourceHealth:
    """A collected source is judged by its runs; an agent's source by the readings its channels got."""
    latest = max((c.last_ts for c in channels if c.last_ts is not None), default=None)
    if not source.enabled:
        return SourceHealth(source, "disabled", "disabled", latest)
    if not any(c.kind != ChannelKind.DERIVED for c in channels):
        # Nothing it reads could be stored: it is not read until a channel takes one of its fields.
        return SourceHealth(source, WAITING, WAITING_FOR_CHANNELS, latest)
    if source.kind == SourceKind.AGENT:
        if source.agent_id is None:
            return SourceHealth(source, STALE, "no agent assigned", latest)
        health = getattr(source.agent, "health", None)
        if health is not None and health.is_stale:
            return SourceHealth(source, STALE, "agent silent", latest)
        if health is not None and health.last_error:
            return SourceHealth(source, LATE, "agent reports an error", latest)
        intervals = [c.expected_interval_seconds for c in channels if c.expected_interval_seconds]
        state = freshness(latest, min(intervals) if intervals else None, now)
        words = {
            OK: "receiving",
            LATE: "late",
            STALE: "no recent data",
            UNKNOWN: "receiving" if latest else "no data yet",
        }
        return SourceHealth(source, state, words[state], latest)
    if source.consecutive_failures >= 3:
        return SourceHealth(source, STALE, f"failing ({source.consecutive_failures} runs)", latest)
    if source.consecutive_failures:
        plural = "s" if source.consecutive_failures > 1 else ""
        return SourceHealth(source, LATE, f"{source.consecutive_failures} failed run{plural}", latest)
    if source.last_success_at is None:
        return SourceHealth(source, UNKNOWN, "not run yet", latest)
    age_us = (now if now is not None else now_us()) - int(source.last_success_at.timestamp() * 1_000_000)
    if age_us > STALE_FACTOR * source.interval_seconds * 1_000_000:
        return SourceHealth(source, LATE, "overdue", latest)
    return SourceHealth(source, OK, "collecting", latest)


@dataclass
class AgentStatus:
    """An agent that pushes to an instrument through the API, judged by its token and its heartbeats."""

    agent: Agent  # with token and health select_related
    state: str
    words: str
    last_heartbeat: object = None

    @property
    def css(self) -> str:
        return STATE_CLASS.get(self.state, "idle")


def agent_status(agent) -> AgentStatus:
    token = getattr(agent, "token", None)
    health = getattr(agent, "health", None)
    seen = health.last_heartbeat if health is not None else None
    if token is None or token.revoked_at is not None:
        return AgentStatus(agent, STALE, "token revoked", seen)
    if token.is_expired:
        return AgentStatus(agent, STALE, "token expired", seen)
    if health is None:
        return AgentStatus(agent, UNKNOWN, "no heartbeat yet", seen)
    if health.is_stale:
        return AgentStatus(agent, STALE, "silent", seen)
    if health.last_error:
        return AgentStatus(agent, LATE, "reports an error", seen)
    return AgentStatus(agent, OK, "alive", seen)


@dataclass
class InstrumentStatus:
    instrument: Instrument
    channels: list[Channel] = field(default_factory=list)
    sources: list[SourceHealth] = field(default_factory=list)
    active_alarms: int = 0
    last_reading: int | None = None
    interval: int | None = None
    state: str = UNKNOWN

    @property
    def css(self) -> str:
        return STATE_CLASS[self.state]

    @property
    def failing_sources(self) -> list[SourceHealth]:
        return [s for s in self.sources if s.state in (LATE, STALE, WAITING)]

    @property
    def plottable(self) -> list[Channel]:
        """The channels with numbers (text channels have nothing to plot)."""
        return [c for c in self.channels if c.kind != ChannelKind.TEXT]

    @property
    def healthy_sources(self) -> list[SourceHealth]:
        return [s for s in self.sources if s.state == OK]


def active_alarm_counts(instrument_ids: Iterable[int]) -> dict[int, int]:
    rows = (
        AlarmEvent.objects.filter(cleared_at__isnull=True, channel__instrument_id__in=list(instrument_ids))
        .values("channel__instrument_id")
        .annotate(n=Count("id"))
    )
    return {row["channel__instrument_id"]: row["n"] for row in rows}


def instrument_statuses(instruments: Iterable[Instrument], now: int | None = None) -> list[InstrumentStatus]:
    """The status of each instrument, in the order given: three queries in all."""
    instruments = list(instruments)
    ids = [i.pk for i in instruments]
    now = now if now is not None else now_us()
    channels: dict[int, list[Channel]] = defaultdict(list)
    by_source: dict[int, list[Channel]] = defaultdict(list)
    for channel in Channel.objects.filter(instrument_id__in=ids).select_related("source").order_by("name"):
        channels[channel.instrument_id].append(channel)
        if channel.source_id:
            by_source[channel.source_id].append(channel)
    sources: dict[int, list[DataSource]] = defaultdict(list)
    for source in DataSource.objects.filter(instrument_id__in=ids).select_related("agent__health").order_by("name"):
        sources[source.instrument_id].append(source)
    alarms = active_alarm_counts(ids)
    statuses = []
    for instrument in instruments:
        status = InstrumentStatus(instrument, channels[instrument.pk], active_alarms=alarms.get(instrument.pk, 0))
        status.sources = [source_health(s, by_source[s.pk], now) for s in sources[instrument.pk]]
        status.last_reading = max((c.last_ts for c in status.channels if c.last_ts is not None), default=None)
        intervals = [i for i in (expected_interval(c) for c in status.channels) if i]
        status.interval = min(intervals) if intervals else None
        status.state = freshness(status.last_reading, status.interval, now)
        statuses.append(status)
    return statuses


# --- the same states, decided by the database (filters and counts over any number of instruments) -------

COLLECTING, SILENT, FAILING, ALARMS = "collecting", "silent", "failing", "alarms"
# The home page's filters, in the order shown.
STATUS_FILTERS = (
    (COLLECTING, "Collecting"),
    (SILENT, "Silent"),
    (FAILING, "Failing"),
    (ALARMS, "Alarms"),
)


def _freshness_q(state: str, now: int) -> Q:
    """Collecting: a reading within STALE_FACTOR expected intervals (``ok`` or ``late``). Silent: readings
    are expected but none came within STALE_FACTOR intervals, or none ever (``stale``). Over the
    instrument's own freshness columns (``Instrument.last_reading_ts``, ``reading_interval_seconds``), kept
    by ingest and by saving channels and sources: no grouping of channels per request."""
    interval = Q(reading_interval_seconds__isnull=False)
    within = Q(last_reading_ts__gte=Value(now) - F("reading_interval_seconds") * (STALE_FACTOR * 1_000_000))
    if state == COLLECTING:
        return interval & within
    return interval & (Q(last_reading_ts__isnull=True) | ~within)


def failing_ids():
    """Instruments with an enabled, collected source whose latest run failed: a subquery computed once (an
    ``IN``, not an ``EXISTS`` per instrument, which SQLite would run 10,000 times)."""
    return (
        DataSource.objects.filter(enabled=True, consecutive_failures__gt=0)
        .exclude(kind=SourceKind.AGENT)
        .values("instrument_id")
    )


def alarm_ids():
    """Instruments with an active alarm: a subquery computed once."""
    return AlarmEvent.objects.filter(cleared_at__isnull=True).values("channel__instrument_id")


def filter_by_status(instruments, state: str, now: int | None = None):
    """``instruments`` (a queryset the gate already narrowed) in the state ``state`` (STATUS_FILTERS)."""
    now = now if now is not None else now_us()
    if state in (COLLECTING, SILENT):
        return instruments.filter(_freshness_q(state, now))
    if state == FAILING:
        return instruments.filter(pk__in=failing_ids())
    if state == ALARMS:
        return instruments.filter(pk__in=alarm_ids())
    raise ValueError(f"unknown state {state!r}")


def status_counts(instruments, now: int | None = None) -> dict[str, BoundedCount]:
    """How many of ``instruments`` are in each state, and in all: one statement, each count stopping at the
    bound (``accounts.paging``: "1,000+"), so its work does not grow with what the user may see."""
    now = now if now is not None else now_us()
    return bounded_counts({"all": instruments, **{s: filter_by_status(instruments, s, now) for s, _ in STATUS_FILTERS}})
