"""What the server tells an agent (its central configuration) and what it keeps from an agent (its health).

Both are called by the agent API (``accounts.api.agent_views``) with the ``AgentPrincipal`` of the
request; neither trusts the agent beyond what ``accounts.permissions`` lets it collect.

The configuration lists the enabled sources of kind ``agent`` assigned to the agent, on active
instruments it may push to, each with its validated ``collect`` settings and its channels. Its
``version`` is a digest of exactly that content: the agent polls with ``If-None-Match`` and gets 304
until something it would act on changes (a channel renamed in the admin, a new source, an interval).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

from django.db import connections, models
from django.db.models import QuerySet
from django.utils import timezone

from accounts import agent_samples, permissions
from accounts.models import Agent, AgentHealth
from accounts.principals import AgentPrincipal
from daqbroker_agent.config import ConfigError, validate_source_config
from instruments.choices import ChannelKind, SourceKind
from instruments.models import Channel, DataSource


@dataclass(frozen=True)
class AgentConfiguration:
    body: dict
    version: str

    @property
    def etag(self) -> str:
        return f'"{self.version}"'


def agent_configuration(who) -> AgentConfiguration:
    """The sources ``who`` (an agent principal or its request) collects, with a content version."""
    user, _ = permissions.resolve(who)
    assert isinstance(user, AgentPrincipal)  # only agents reach here (the view's agent_access)
    agent: Agent = user.agent
    allowed = permissions.instruments_for(who, permissions.COLLECT).filter(active=True)
    sources = (
        DataSource.objects.filter(agent=agent, kind=SourceKind.AGENT, enabled=True, instrument__in=allowed)
        .select_related("instrument")
        .order_by("id")
    )
    channels: dict[int, list[dict]] = {}
    for channel in (
        Channel.objects.filter(source__in=sources)
        .exclude(kind=ChannelKind.DERIVED)
        .order_by("id")
        .values("id", "slug", "source_field", "kind", "source_id")
    ):
        channels.setdefault(channel["source_id"], []).append({k: v for k, v in channel.items() if k != "source_id"})
    listed, skipped = [], []
    for source in sources:
        try:
            collect = validate_source_config(SourceKind.AGENT, source.config)["collect"]
        except ConfigError as exc:  # saved under older rules: say so rather than send something unusable
            skipped.append({"id": source.id, "name": source.name, "error": str(exc)})
            continue
        listed.append(
            {
                "id": source.id,
                "name": source.name,
                "instrument": source.instrument.slug,
                "interval_seconds": source.interval_seconds,
                "collect": collect,
                "channels": channels.get(source.id, []),
            }
        )
    content = {
        "agent": agent.name,
        "sources": listed,
        "skipped": skipped,
        "sample_requests": agent_samples.waiting_for(agent),
    }
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return AgentConfiguration(body={"version": digest, **content}, version=digest)


def etag_matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 ``If-None-Match``: ``*`` or a list of (possibly weak) entity tags."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return etag in tags


def record_heartbeat(who, data: dict, *, address: str | None = None) -> AgentHealth:
    """Store an agent's heartbeat and return its health row.

    ``data`` holds what the agent reported (see ``accounts.api.agent_views.HeartbeatSerializer``). The
    clock offset is the agent's own round-trip estimate from its previous heartbeat when it sends one;
    otherwise (the first heartbeat) the one-way estimate from ``agent_time``, off by the network delay.
    """
    user, _ = permissions.resolve(who)
    assert isinstance(user, AgentPrincipal)  # only agents reach here (the view's agent_access)
    now = timezone.now()
    offset = data.get("clock_offset")
    reported = {item["id"]: item for item in data.get("refused_sources") or []}
    refused: list[dict] = []
    if reported:  # kept only for the agent's own sources, whatever ids it sends
        own = DataSource.objects.filter(agent=user.agent, kind=SourceKind.AGENT, pk__in=list(reported))
        refused = [
            {"id": pk, "name": reported[pk].get("name", ""), "reason": reported[pk]["reason"]}
            for pk in sorted(own.values_list("pk", flat=True))
        ]
    if offset is None and data.get("agent_time") is not None:
        offset = data["agent_time"] - now.timestamp()
    if offset is not None and not math.isfinite(offset):
        offset = None
    said = {
        "last_heartbeat": now,
        "heartbeat_seconds": data.get("heartbeat_seconds") or 30,
        "version": data.get("version", "")[:40],
        "hostname": data.get("hostname", "")[:255],
        "address": address,
        "spool_depth": data.get("spool_depth") or 0,
        "spool_capacity": data.get("spool_capacity"),
        "last_upload": data.get("last_upload"),
        "last_error": data.get("last_error", "")[:2000],
        "clock_offset_seconds": offset,
        "refused_sources": refused,
        **({"serial_ports": data["serial_ports"]} if data.get("serial_ports") is not None else {}),
    }
    # Every heartbeat but an agent's first is one UPDATE (no read, no transaction of its own): a thousand
    # agents beating every ten seconds are a hundred of these a second (docs/performance.md#many-agents).
    # When the agent refuses nothing, the same statement checks that none of its sources is still marked
    # refused; only if one is (or the row is missing) does it write nothing and the longer way below runs.
    clean = not refused and _update_health_row(user.agent, said, unless_marked=True)
    if clean or _update_health_row(user.agent, said, unless_marked=False):
        # The row as just written; a field this heartbeat did not send (serial_ports) is deferred and read
        # from the database only if asked for.
        names = ["agent_id", *said]
        health = AgentHealth.from_db("default", names, [user.agent.pk, *said.values()])
        health.agent = user.agent
    else:
        health, _ = AgentHealth.objects.update_or_create(agent=user.agent, defaults=said)  # the first (races safe)
    if not clean:
        _mark_refused_sources(user.agent, refused)
    return health


REFUSED_PREFIX = "refused by the agent: "


def _update_health_row(agent: Agent, said: dict, *, unless_marked: bool) -> bool:
    """UPDATE the agent's health row with ``said``; with ``unless_marked`` only if none of its sources is
    marked refused (``_refusal_marks``). Whether a row was written. Written out once per engine and set of
    fields rather than built by the ORM at every heartbeat (building it cost more than running it); the
    values prepared for the database as the ORM's UPDATE prepares them (``get_db_prep_save``)."""
    connection = connections["default"]
    key = (connection.vendor, tuple(said), unless_marked)
    if key not in _health_updates:
        quote = connection.ops.quote_name
        fields = [_field(AgentHealth, name) for name in said]
        sql = (
            f"UPDATE {quote(AgentHealth._meta.db_table)} SET {', '.join(f'{quote(_column(f))} = %s' for f in fields)} "
            f"WHERE {quote(_column(_field(AgentHealth, 'agent')))} = %s"
        )
        if unless_marked:  # the same test as _refusal_marks, written as the ORM writes it for the engine
            like = connection.operators["startswith"] % "%s"  # type: ignore[attr-defined]  # every backend has them
            sql += (
                f" AND NOT EXISTS (SELECT 1 FROM {quote(DataSource._meta.db_table)} s "
                f"WHERE s.{quote(_column(_field(DataSource, 'agent')))} = %s AND s.{quote('kind')} = %s "
                f"AND s.{quote('last_error')} {like})"
            )
        _health_updates[key] = (sql, fields)
    sql, fields = _health_updates[key]
    params = [field.get_db_prep_save(value, connection) for field, value in zip(fields, said.values(), strict=True)]
    params.append(agent.pk)
    if unless_marked:
        params += [agent.pk, SourceKind.AGENT.value, connection.ops.prep_for_like_query(REFUSED_PREFIX) + "%"]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount > 0


def _field(model: type[models.Model], name: str) -> models.Field:
    field = model._meta.get_field(name)
    assert isinstance(field, models.Field)
    return field


def _column(field: models.Field) -> str:
    assert field.column
    return field.column


_health_updates: dict[tuple, tuple[str, list[models.Field]]] = {}


def _refusal_marks(agent: Agent) -> QuerySet[DataSource]:
    """The agent's sources marked as refused by it."""
    return DataSource.objects.filter(agent=agent, kind=SourceKind.AGENT, last_error__startswith=REFUSED_PREFIX)


def _mark_refused_sources(agent: Agent, refused: list[dict]) -> None:
    """Say beside each of the agent's sources that it refused it (and clear that once it no longer does)."""
    reasons = {item["id"]: item["reason"] for item in refused}
    mine = DataSource.objects.filter(agent=agent, kind=SourceKind.AGENT)
    for source_id, reason in reasons.items():
        mine.filter(pk=source_id).exclude(last_error=REFUSED_PREFIX + reason).update(
            last_error=(REFUSED_PREFIX + reason)[:2000]
        )
    _refusal_marks(agent).exclude(pk__in=list(reasons)).update(last_error="")
