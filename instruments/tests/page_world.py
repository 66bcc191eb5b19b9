"""Dashboards and alarm events in the personas' world (``accounts.tests.personas``), made on demand.

The permission matrix fills URLs from the world with these (``lambda w: {"pk": alpha_dashboard(w).pk}``);
each call returns the existing object when there is one, so a case may call it more than once.
"""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from collection.alarms.models import AlarmEvent, AlarmRule
from instruments.models import Dashboard, DashboardPanel


def _dashboard(owner, channel, title: str) -> Dashboard:
    dashboard, created = Dashboard.objects.get_or_create(owner=owner, title=title, defaults={"shared": True})
    if created:
        panel = DashboardPanel.objects.create(dashboard=dashboard, title=f"{title} plot")
        panel.channels.set([channel])
    return dashboard


def alpha_dashboard(world) -> Dashboard:
    """Olivia's shared dashboard over alpha: seen by everyone who sees alpha, changed by olivia only."""
    return _dashboard(world.users["olivia"], world.alpha_channel, "alpha-board")


def zulu_dashboard(world) -> Dashboard:
    """Zed's shared dashboard over zulu: nobody but zed and the administrator may see zulu."""
    return _dashboard(world.users["zed"], world.zulu_channel, "zulu-board")


def alpha_panel(world) -> DashboardPanel:
    return alpha_dashboard(world).panels.first()


def _alarm(instrument, channel, name: str) -> AlarmEvent:
    rule, _ = AlarmRule.objects.get_or_create(
        name=name, defaults={"instrument": instrument, "kind": "above", "threshold": 30.0}
    )
    event = AlarmEvent.objects.filter(rule=rule).first()
    if event is None:
        event = AlarmEvent.objects.create(
            rule=rule,
            channel=channel,
            kind=rule.kind,
            severity=rule.severity,
            message=f"{channel.slug}: 31.5 ({name}: above 30)",
            raised_at=timezone.now() - timedelta(minutes=5),
            raised_value=31.5,
        )
    return event


def alpha_alarm(world) -> AlarmEvent:
    return _alarm(world.alpha, world.alpha_channel, "alpha-too-hot")


def zulu_alarm(world) -> AlarmEvent:
    return _alarm(world.zulu, world.zulu_channel, "zulu-too-hot")


def any_instrument_rule(world) -> AlarmRule:
    """An alarm rule bound to no instrument ("any instrument": it selects channels by units everywhere).
    Administrators only: it reaches olivia's and zed's channels alike."""
    rule, _ = AlarmRule.objects.get_or_create(
        name="everywhere-too-hot", defaults={"instrument": None, "units": "degC", "kind": "above", "threshold": 40.0}
    )
    return rule
