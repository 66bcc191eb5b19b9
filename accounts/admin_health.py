"""The agent list's health columns: what each agent said in its last heartbeat (``AgentHealth``)."""

from __future__ import annotations

from django.contrib import admin
from django.utils import timezone
from django.utils.html import format_html
from django.utils.timesince import timesince

from accounts.models import Agent, AgentHealth

HEALTH_COLUMNS = ("health_state", "last_heartbeat", "spool_depth", "clock_offset", "agent_last_error")
HEALTH_DETAILS = (*HEALTH_COLUMNS, "refused_sources", "agent_version", "agent_host")
CLOCK_WARNING_SECONDS = 5.0


def _health(agent: Agent) -> AgentHealth | None:
    try:
        return agent.health
    except AgentHealth.DoesNotExist:
        return None


class AgentHealthAdminMixin:
    @admin.display(description="Health")
    def health_state(self, agent: Agent) -> str:
        health = _health(agent)
        if health is None:
            return "never seen"
        if health.is_stale:
            return format_html(
                '<span style="color:#b60">silent for {}</span>', timesince(health.last_heartbeat, timezone.now())
            )
        if health.refused_sources:
            reasons = "; ".join(f"{item.get('name')}: {item.get('reason')}" for item in health.refused_sources)
            return format_html(
                '<span style="color:#b00" title="{}">refused {} source(s)</span>',
                reasons[:1000],
                len(health.refused_sources),
            )
        if health.last_error:
            return format_html('<span style="color:#b00" title="{}">error</span>', health.last_error[:500])
        if health.clock_offset_seconds is not None and abs(health.clock_offset_seconds) > CLOCK_WARNING_SECONDS:
            return format_html('<span style="color:#b60">clock off by {:.1f} s</span>', health.clock_offset_seconds)
        return format_html('<span style="color:#080">{}</span>', "ok")

    @admin.display(description="Last heartbeat")
    def last_heartbeat(self, agent: Agent):
        health = _health(agent)
        return health.last_heartbeat if health else "never"

    @admin.display(description="Spool")
    def spool_depth(self, agent: Agent) -> str:
        health = _health(agent)
        if health is None:
            return "-"
        if health.spool_capacity:
            share = health.spool_depth / health.spool_capacity
            return f"{health.spool_depth:,} of {health.spool_capacity:,} ({share:.0%})"
        return f"{health.spool_depth:,}"

    @admin.display(description="Clock offset")
    def clock_offset(self, agent: Agent) -> str:
        health = _health(agent)
        if health is None or health.clock_offset_seconds is None:
            return "-"
        return f"{health.clock_offset_seconds:+.3f} s"

    @admin.display(description="Agent's last error")
    def agent_last_error(self, agent: Agent) -> str:
        health = _health(agent)
        return (health.last_error[:200] or "-") if health else "-"

    @admin.display(description="Sources refused by the agent")
    def refused_sources(self, agent: Agent) -> str:
        health = _health(agent)
        if health is None or not health.refused_sources:
            return "-"
        return "; ".join(
            f"{item.get('name') or item.get('id')}: refused by the agent: {item.get('reason')}"
            for item in health.refused_sources
        )

    @admin.display(description="Agent version")
    def agent_version(self, agent: Agent) -> str:
        health = _health(agent)
        return (health.version or "-") if health else "-"

    @admin.display(description="Runs on")
    def agent_host(self, agent: Agent) -> str:
        health = _health(agent)
        if health is None:
            return "-"
        return f"{health.hostname or '?'} ({health.address or 'unknown address'})"
