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

from django.db import connection
from django.db.models import Count, Exists, F, Max, Min, OuterRef, Q, Value
from django.db.models.functions import NullIf

from accounts.paging import BoundedCount, bounded_counts
from collection.alarms.models import AlarmEvent
from instruments.choices import ChannelKind, SourceKind
from instruments.models import WAITING_FOR_CHANNELS, Channel, DataSource, Instrument, channel_interval_expression

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


@dataclass(frozen=True)
class ChannelsSummary:
    """What a status needs to know of a set of channels (an instrument's, or a source's): counted by the
    database for the pages (``instrument_statuses``, whatever the number of channels), or from the channels
    themselves (``of``)."""

    count: int = 0
    collected: int = 0  # not derived: channels taking a value the source reads
    latest: int | None = None  # the latest reading's time
    interval: int | None = None  # the shortest expected interval (``expected_interval``)
    own_interval: int | None = None  # the shortest of the channels' own expected intervals

    @classmethod
    def of(cls, channels: Iterable[Channel]) -> ChannelsSummary:
        channels = list(channels)
        intervals = [i for i in (expected_interval(c) for c in channels) if i]
        own = [c.expected_interval_seconds for c in channels if c.expected_interval_seconds]
        return cls(
            count=len(channels),
            collected=sum(1 for c in channels if c.kind != ChannelKind.DERIVED),
            latest=max((c.last_ts for c in channels if c.last_ts is not None), default=None),
            interval=min(intervals, default=None),
            own_interval=min(own, default=None),
        )

    def __add__(self, other: ChannelsSummary) -> ChannelsSummary:
        return ChannelsSummary(
            count=self.count + other.count,
            collected=self.collected + other.collected,
            latest=_either(max, self.latest, other.latest),
            interval=_either(min, self.interval, other.interval),
            own_interval=_either(min, self.own_interval, other.own_interval),
        )


def _either(pick, a: int | None, b: int | None) -> int | None:
    """``pick(a, b)`` of the two that are known."""
    return b if a is None else a if b is None else pick(a, b)


def source_health(source: DataSource, channels: ChannelsSummary, now: int | None = None) -> SourceHealth:
    """A collected source is judged by its runs; an agent's source by the readings its channels got."""
    latest = channels.latest
    if not source.enabled:
        return SourceHealth(source, "disabled", "disabled", latest)
    if not channels.collected:
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
        state = freshness(latest, channels.own_interval, now)
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
    channel_count: int = 0
    plottable: list[int] = field(default_factory=list)  # the first channels with numbers, by name: their ids
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
    def healthy_sources(self) -> list[SourceHealth]:
        return [s for s in self.sources if s.state == OK]


def active_alarm_counts(instrument_ids: Iterable[int]) -> dict[int, int]:
    rows = (
        AlarmEvent.objects.filter(cleared_at__isnull=True, channel__instrument_id__in=list(instrument_ids))
        .values("channel__instrument_id")
        .annotate(n=Count("id"))
    )
    return {row["channel__instrument_id"]: row["n"] for row in rows}


def channel_summaries(instrument_ids: list[int]) -> dict[tuple[int, int | None], ChannelsSummary]:
    """(instrument id, source id or None) -> the summary of those channels: one grouped statement, rows of
    counts, not every channel (an instrument may have thousands)."""
    rows = (
        Channel.objects.filter(instrument_id__in=instrument_ids)
        .order_by()
        .values("instrument_id", "source_id")
        .annotate(
            count=Count("pk"),
            collected=Count("pk", filter=~Q(kind=ChannelKind.DERIVED)),
            latest=Max("last_ts"),
            interval=Min(channel_interval_expression()),
            own_interval=Min(NullIf("expected_interval_seconds", 0)),
        )
    )
    return {
        (row["instrument_id"], row["source_id"]): ChannelsSummary(
            count=row["count"],
            collected=row["collected"],
            latest=row["latest"],
            interval=row["interval"],
            own_interval=row["own_interval"],
        )
        for row in rows
    }


def first_plottable(instrument_ids: list[int], k: int) -> dict[int, list[int]]:
    """instrument id -> the ids of its first ``k`` channels with numbers, by name: one statement reading ``k``
    rows of each instrument through the (instrument, name) index, whatever the number of channels."""
    if not instrument_ids or k < 1:
        return {}
    q = connection.ops.quote_name
    one = (
        f"SELECT {q('instrument_id')}, {q('id')}, {q('name')} FROM {q(Channel._meta.db_table)} "
        f"WHERE {q('instrument_id')} = %s AND {q('kind')} <> %s ORDER BY {q('name')} LIMIT {int(k)}"
    )
    found: dict[int, list[int]] = defaultdict(list)
    for start in range(0, len(instrument_ids), PARTS_PER_STATEMENT):
        part = instrument_ids[start : start + PARTS_PER_STATEMENT]
        parts = " UNION ALL ".join(f"SELECT * FROM ({one}) first_{i}" for i in range(len(part)))
        sql = f"{parts} ORDER BY 1, 3"  # by name in the database's collation, as the channel lists
        with connection.cursor() as cursor:
            cursor.execute(sql, [value for pk in part for value in (pk, ChannelKind.TEXT)])
            for instrument_id, channel_id, _ in cursor.fetchall():
                found[instrument_id].append(channel_id)
    return found


PARTS_PER_STATEMENT = 200  # SQLite takes at most 500 SELECTs in one compound statement


def instrument_statuses(
    instruments: Iterable[Instrument], now: int | None = None, *, plottable: int = 4
) -> list[InstrumentStatus]:
    """The status of each instrument, in the order given: four queries in all, whatever the number of
    channels (their counts and latest times grouped by the database, not read one by one)."""
    instruments = list(instruments)
    ids = [i.pk for i in instruments]
    now = now if now is not None else now_us()
    summaries = channel_summaries(ids)
    of_instrument: dict[int, ChannelsSummary] = defaultdict(ChannelsSummary)
    for (instrument_id, _), summary in summaries.items():
        of_instrument[instrument_id] += summary
    sources: dict[int, list[DataSource]] = defaultdict(list)
    for source in DataSource.objects.filter(instrument_id__in=ids).select_related("agent__health").order_by("name"):
        sources[source.instrument_id].append(source)
    alarms = active_alarm_counts(ids)
    first = first_plottable(ids, plottable)
    statuses = []
    for instrument in instruments:
        summary = of_instrument[instrument.pk]
        status = InstrumentStatus(
            instrument,
            channel_count=summary.count,
            plottable=first.get(instrument.pk, []),
            active_alarms=alarms.get(instrument.pk, 0),
            last_reading=summary.latest,
            interval=summary.interval,
        )
        status.sources = [
            source_health(s, summaries.get((instrument.pk, s.pk), ChannelsSummary()), now)
            for s in sources[instrument.pk]
        ]
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


def filter_by_status(instruments, state: str, now: int | None = None, *, few: bool = False):
    """``instruments`` (a queryset the gate already narrowed) in the state ``state`` (STATUS_FILTERS). ``few``:
    they are a short list of ids (a search that found few), tested one by one for a failing source or an
    active alarm instead of against every failing source's and every alarm's instrument."""
    now = now if now is not None else now_us()
    if state in (COLLECTING, SILENT):
        return instruments.filter(_freshness_q(state, now))
    if state == FAILING:
        if few:
            return instruments.filter(Exists(failing_ids().filter(instrument=OuterRef("pk"))))
        return instruments.filter(pk__in=failing_ids())
    if state == ALARMS:
        if few:
            return instruments.filter(Exists(alarm_ids().filter(channel__instrument=OuterRef("pk"))))
        return instruments.filter(pk__in=alarm_ids())
    raise ValueError(f"unknown state {state!r}")


def status_counts(instruments, now: int | None = None, *, few: bool = False) -> dict[str, BoundedCount]:
    """How many of ``instruments`` are in each state, and in all: one statement, each count stopping at the
    bound (``accounts.paging``: "1,000+"), so its work does not grow with what the user may see."""
    now = now if now is not None else now_us()
    states = {s: filter_by_status(instruments, s, now, few=few) for s, _ in STATUS_FILTERS}
    return bounded_counts({"all": instruments, **states})
