"""Agents' node health as readings: each agent's heartbeat figures become readings of its health instrument.

The agent reports its machine's load, memory, the free disk where its spool lives, the spool's depth and the
age of its oldest waiting reading (``daqbroker_agent.health``), and its clock offset. The server keeps their
history as readings of one instrument per agent (``Agent.health_instrument``), created at the agent's first
heartbeat and owned by the agent's owner, so it is visible to exactly who sees the agent (the owner and
administrators; shared further like any instrument) and its channels plot, alarm and export like any other.
The readings go through the one write path (``ingest_samples``), stamped with the server's clock.

Two alarm rules come with each health instrument (``DEFAULT_RULES``): the spool's disk nearly full, and the
agent silent (the stale-channel rule on its spool-depth channel, sent in every heartbeat). Administrators
may change or disable them in the admin like any rule; they are not created again once they exist.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from django.db import IntegrityError, connections, transaction
from django.utils import timezone
from django.utils.text import slugify

from accounts.models import Agent, AgentHealth
from collection import storage
from collection.alarms.choices import RuleKind, Severity
from collection.alarms.models import AlarmRule
from collection.choices import Origin
from collection.services import blocks
from collection.services.ingest import CHANNEL_COLUMNS, IngestResult, SampleBatch, ingest_samples
from daqbroker_agent.parsing import datetime_to_us
from instruments.models import Channel, Instrument


@dataclass(frozen=True)
class HealthChannel:
    slug: str
    name: str
    units: str
    description: str


# The heartbeat's figure (key in its ``health`` object, or "clock_offset") -> the channel that keeps it.
HEALTH_CHANNELS: dict[str, HealthChannel] = {
    "cpu_load": HealthChannel("cpu_load", "CPU load per core", "", "1-minute load average / number of CPUs."),
    "memory_used_percent": HealthChannel("memory_used", "Memory used", "%", "Of the machine's memory."),
    "memory_available_bytes": HealthChannel("memory_available", "Memory available", "B", "MemAvailable."),
    "spool_disk_free_bytes": HealthChannel(
        "spool_disk_free", "Spool disk free", "B", "Free space on the file system holding the agent's spool."
    ),
    "spool_disk_used_percent": HealthChannel(
        "spool_disk_used", "Spool disk used", "%", "How full the file system holding the agent's spool is."
    ),
    "spool_depth": HealthChannel("spool_depth", "Spool depth", "", "Readings waiting in the agent's spool."),
    "spool_oldest_age_seconds": HealthChannel(
        "spool_oldest_age", "Oldest spooled reading", "s", "Age of the oldest reading still waiting in the spool."
    ),
    "clock_offset": HealthChannel(
        "clock_offset", "Clock offset", "s", "The agent's clock minus the server's (positive: the agent is ahead)."
    ),
}
SILENT_CHANNEL = "spool_depth"  # sent in every heartbeat: the channel whose silence means the agent's
DISK_CHANNEL = "spool_disk_used"
DISK_NEARLY_FULL_PERCENT = 90.0
SILENT_AFTER_HEARTBEATS = 3.0


def health_instrument(agent: Agent, heartbeat_seconds: int = 30) -> Instrument:
    """The agent's health instrument, with its channels and default alarm rules (made on first call)."""
    if agent.health_instrument_id is not None:
        instrument = Instrument.objects.filter(pk=agent.health_instrument_id).first()
        if instrument is not None:
            return instrument
    with transaction.atomic():
        locked = Agent.objects.select_for_update().get(pk=agent.pk)
        if locked.health_instrument_id is not None and (
            instrument := Instrument.objects.filter(pk=locked.health_instrument_id).first()
        ):
            agent.health_instrument = instrument
            return instrument
        instrument = _new_instrument(agent)
        for health in HEALTH_CHANNELS.values():
            Channel.objects.create(
                instrument=instrument,
                slug=health.slug,
                name=health.name,
                units=health.units,
                description=health.description,
                expected_interval_seconds=heartbeat_seconds,
            )
        _default_rules(agent, instrument)
        locked.health_instrument = instrument
        locked.save(update_fields=["health_instrument"])
        agent.health_instrument = instrument
        return instrument


def _new_instrument(agent: Agent) -> Instrument:
    base = slugify(f"agent-{agent.pk}-{agent.name}")[:80].strip("-") or f"agent-{agent.pk}"
    for attempt in range(20):
        slug = f"{base}-health" if attempt == 0 else f"{base}-health-{attempt}"
        if Instrument.objects.filter(slug=slug).exists():
            continue
        try:
            with transaction.atomic():
                return Instrument.objects.create(
                    name=f"Agent {agent.name} (health)"[:200],
                    slug=slug,
                    owner=agent.owner,
                    description=f"The health of the agent {agent.name}, from its heartbeats (docs/agent.md).",
                )
        except IntegrityError:  # taken meanwhile
            continue
    raise RuntimeError(f"no free slug for the health instrument of agent {agent.pk}")


def _default_rules(agent: Agent, instrument: Instrument) -> None:
    disk = AlarmRule.objects.create(
        name=f"Agent {agent.name}: spool disk nearly full"[:200],
        kind=RuleKind.ABOVE,
        severity=Severity.WARNING,
        threshold=DISK_NEARLY_FULL_PERCENT,
        hysteresis=2.0,
        instrument=instrument,
    )
    disk.channels.set(instrument.channels.filter(slug=DISK_CHANNEL))
    silent = AlarmRule.objects.create(
        name=f"Agent {agent.name}: silent"[:200],
        kind=RuleKind.STALE,
        severity=Severity.WARNING,
        stale_factor=SILENT_AFTER_HEARTBEATS,
        instrument=instrument,
    )
    silent.channels.set(instrument.channels.filter(slug=SILENT_CHANNEL))


def _health_channels(agent: Agent, heartbeat_seconds: int) -> dict[str, tuple]:
    """The health instrument's channels by slug (the instrument made first if need be), each as the row
    ``ingest_samples`` would look up (CHANNEL_COLUMNS and whether it holds blocks: handed to it, so not read
    twice), their expected interval following the agent's own heartbeat interval so that the silence rule
    does. One query per heartbeat once the instrument exists; one more when the interval changed."""
    rows: list[tuple] = []
    if agent.health_instrument_id is not None:
        rows = _read_channels(agent.health_instrument_id)
    if not rows:  # the first heartbeat; or the instrument, or all its channels, deleted by the owner
        rows = _read_channels(health_instrument(agent, heartbeat_seconds).pk)
    ours = {h.slug for h in HEALTH_CHANNELS.values()}
    behind = [row[0] for slug, interval, *row in rows if slug in ours and interval != heartbeat_seconds]
    if behind:
        Channel.objects.filter(pk__in=behind).update(expected_interval_seconds=heartbeat_seconds)
    return {slug: tuple(row) for slug, _, *row in rows}


def _read_channels(instrument_id: int) -> list[tuple]:
    """(slug, expected interval, *CHANNEL_COLUMNS, has blocks) of an instrument's channels. Written out once
    per engine rather than built by the ORM for every heartbeat (building it cost more than running it), and
    prepared once per connection on PostgreSQL, as the ingest endpoint's channel look-up."""
    connection = connections["default"]
    sql = _channels_sql.get(connection.vendor)
    if sql is None:
        quote = connection.ops.quote_name
        columns = ", ".join(f"c.{quote(column)}" for column in ("slug", "expected_interval_seconds", *CHANNEL_COLUMNS))
        sql = _channels_sql[connection.vendor] = (
            f"SELECT {columns}, {blocks.has_any_block_sql('c', connection)} FROM {quote(Channel._meta.db_table)} c "
            f"WHERE c.{quote('instrument_id')} = %s"
        )
    missing_values = Channel._meta.get_field("missing_values")
    sentinels = 2 + CHANNEL_COLUMNS.index("missing_values")
    with storage.prepared_cursor(connection) as cursor:
        cursor.execute(sql, [instrument_id])
        rows = [list(row) for row in cursor.fetchall()]
    for row in rows:  # as the ORM reads them: the sentinels a list (a JSON column), blocks a bool on every engine
        row[sentinels] = missing_values.from_db_value(row[sentinels], None, connection)  # type: ignore[arg-type]  # the expression is unused
        row[-1] = bool(row[-1])
    return [tuple(row) for row in rows]


_channels_sql: dict[str, str] = {}


def record_health(agent: Agent, health: AgentHealth, figures: dict | None) -> IngestResult | None:
    """Store the figures of a heartbeat just recorded (``health``) as readings of the agent's health
    instrument, stamped with the heartbeat's arrival; figures the agent could not read (None) are left out."""
    values = dict(figures or {})
    if health.clock_offset_seconds is not None:
        values["clock_offset"] = health.clock_offset_seconds
    values["spool_depth"] = health.spool_depth  # the heartbeat's own figure, as in the admin's agent list
    channels = _health_channels(agent, health.heartbeat_seconds)
    ids, numbers = [], []
    for key, value in values.items():
        spec = HEALTH_CHANNELS.get(key)
        if spec is None or value is None or spec.slug not in channels:
            continue  # a channel deleted by its owner stays deleted
        ids.append(channels[spec.slug][0])
        numbers.append(float(value))
    if not ids:
        return None
    when = datetime_to_us(health.last_heartbeat or timezone.now())
    batch = SampleBatch(np.array(ids, dtype=np.int64), np.full(len(ids), when, dtype=np.int64), np.array(numbers))
    return ingest_samples(batch, origin=Origin.AGENT, known_channels={row[0]: row for row in channels.values()})
