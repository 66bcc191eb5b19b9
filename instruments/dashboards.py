"""Dashboards: who may see and change them, and the changes themselves (called by the pages).

Visibility follows the instruments (see ``instruments.models.Dashboard``): everything here asks
``accounts.permissions`` which instruments a user may see; nothing else decides it. Every change is
recorded in the audit trail, in the same transaction, with the acting user and their address.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Max, Q, QuerySet
from django.utils import timezone

from accounts import audit, permissions
from accounts.choices import AuditAction
from instruments.models import Channel, Dashboard, DashboardPanel, Instrument, PlotRange


def dashboards_visible_to(user) -> QuerySet[Dashboard]:
    """The owner's own, and the shared ones whose every channel is on an instrument ``user`` may see."""
    if not permissions.is_authenticated(user) or permissions.is_agent(user):
        return Dashboard.objects.none()
    if permissions.is_administrator(user):
        return Dashboard.objects.all()
    hidden = Instrument.objects.exclude(pk__in=permissions.instruments_visible_to(user).values("pk"))
    spoiled = DashboardPanel.channels.through.objects.filter(channel__instrument__in=hidden).values(
        "dashboardpanel__dashboard_id"
    )
    return Dashboard.objects.filter(Q(owner=user) | (Q(shared=True) & ~Q(pk__in=spoiled)))


def may_change(user, dashboard: Dashboard) -> bool:
    return dashboard.owner_id == getattr(user, "pk", None) or permissions.is_administrator(user)


def _check_change(user, dashboard: Dashboard) -> None:
    if not may_change(user, dashboard):
        raise PermissionDenied("Only the dashboard's owner may change it.")


def visible_channels(user, channel_ids: Iterable[int]) -> list[Channel]:
    """The channels among ``channel_ids`` that ``user`` may see, in the order given."""
    ids = [int(i) for i in channel_ids]
    found = {
        c.pk: c for c in permissions.restrict(Channel.objects.filter(pk__in=ids), user).select_related("instrument")
    }
    return [found[i] for i in ids if i in found]


def panel_channels(user, panel: DashboardPanel) -> list[Channel]:
    """What a panel shows to ``user``: only the channels they may see (an owner may have lost access)."""
    return list(permissions.restrict(panel.channels.all(), user).select_related("instrument").order_by("name"))


EDITABLE_FIELDS = ("title", "description", "shared")


def _panel_facts(panel: DashboardPanel, channels: Iterable[Channel]) -> dict:
    facts = {"panel": panel.pk, "channels": [f"{c.instrument.slug}/{c.slug}" for c in channels]}
    if panel.title:
        facts["title"] = panel.title
    return facts


def _touch(dashboard: Dashboard) -> None:
    Dashboard.objects.filter(pk=dashboard.pk).update(updated=timezone.now())


@transaction.atomic
def create_dashboard(
    owner, title: str, *, description: str = "", shared: bool = False, address: str | None = None
) -> Dashboard:
    if not title.strip():
        raise ValidationError({"title": "A dashboard needs a title."})
    dashboard = Dashboard.objects.create(owner=owner, title=title.strip(), description=description, shared=shared)
    changes = {name: getattr(dashboard, name) for name in EDITABLE_FIELDS}
    audit.record(AuditAction.CONFIG_CREATED, actor=owner, obj=dashboard, changes=changes, address=address)
    return dashboard


@transaction.atomic
def update_dashboard(user, dashboard: Dashboard, *, address: str | None = None, **values) -> Dashboard:
    """Change the title, description or ``shared`` of ``dashboard`` (its owner or an administrator)."""
    _check_change(user, dashboard)
    unknown = set(values) - set(EDITABLE_FIELDS)
    if unknown:
        raise TypeError(f"not editable: {sorted(unknown)}")
    if "title" in values:
        values["title"] = values["title"].strip()
        if not values["title"]:
            raise ValidationError({"title": "A dashboard needs a title."})
    # From the database: a bound ModelForm has already copied the new values onto ``dashboard``.
    before = Dashboard.objects.select_for_update().values(*values).get(pk=dashboard.pk)
    for name, value in values.items():
        setattr(dashboard, name, value)
    changes = audit.diff(before, values)
    if changes:
        dashboard.save(update_fields=[*values, "updated"])
        audit.record(AuditAction.CONFIG_CHANGED, actor=user, obj=dashboard, changes=changes, address=address)
    return dashboard


@transaction.atomic
def add_panel(
    user,
    dashboard: Dashboard,
    channel_ids: Sequence[int],
    *,
    title: str = "",
    time_range: str = PlotRange.DAY,
    start=None,
    end=None,
    include_flagged: bool = False,
    wide: bool = False,
    address: str | None = None,
) -> DashboardPanel:
    """A new panel at the end of ``dashboard``, over the channels of ``channel_ids`` ``user`` may see."""
    _check_change(user, dashboard)
    channels = visible_channels(user, channel_ids)
    if not channels or len(channels) != len(set(channel_ids)):
        raise ValidationError({"channels": "Choose one or more channels you may see."})
    if time_range not in PlotRange.values:
        raise ValidationError({"time_range": f"{time_range!r} is not a time range."})
    if time_range == PlotRange.CUSTOM and not (start and end and start < end):
        raise ValidationError({"time_range": "A fixed range needs a start before its end."})
    if time_range != PlotRange.CUSTOM:
        start = end = None
    last = dashboard.panels.aggregate(last=Max("position"))["last"]
    panel = DashboardPanel.objects.create(
        dashboard=dashboard,
        position=0 if last is None else last + 1,
        title=title.strip(),
        time_range=time_range,
        start=start,
        end=end,
        include_flagged=include_flagged,
        wide=wide,
    )
    panel.channels.set(channels)
    _touch(dashboard)
    facts = {**_panel_facts(panel, channels), "time_range": time_range}
    audit.record(AuditAction.CONFIG_CHANGED, actor=user, obj=dashboard, changes={"panel added": facts}, address=address)
    return panel


@transaction.atomic
def move_panel(user, panel: DashboardPanel, offset: int, *, address: str | None = None) -> None:
    """Move ``panel`` up (-1) or down (+1) among its dashboard's panels."""
    _check_change(user, panel.dashboard)
    panels = list(panel.dashboard.panels.select_for_update().order_by("position", "id"))
    index = next(i for i, p in enumerate(panels) if p.pk == panel.pk)
    target = index + offset
    if not 0 <= target < len(panels):
        return
    panels[index], panels[target] = panels[target], panels[index]
    for position, each in enumerate(panels):
        if each.position != position:
            DashboardPanel.objects.filter(pk=each.pk).update(position=position)
    _touch(panel.dashboard)
    moved = {"panel": panel.pk, "position": [index, target]}
    audit.record(
        AuditAction.CONFIG_CHANGED, actor=user, obj=panel.dashboard, changes={"panel moved": moved}, address=address
    )


@transaction.atomic
def remove_panel(user, panel: DashboardPanel, *, address: str | None = None) -> None:
    dashboard = panel.dashboard
    _check_change(user, dashboard)
    facts = _panel_facts(panel, panel.channels.select_related("instrument").order_by("name"))
    panel.delete()
    _touch(dashboard)
    audit.record(
        AuditAction.CONFIG_CHANGED, actor=user, obj=dashboard, changes={"panel removed": facts}, address=address
    )


@transaction.atomic
def delete_dashboard(user, dashboard: Dashboard, *, address: str | None = None) -> None:
    _check_change(user, dashboard)
    facts = {name: getattr(dashboard, name) for name in EDITABLE_FIELDS}
    audit.record(
        AuditAction.CONFIG_DELETED,
        actor=user,
        obj=dashboard,
        changes={**facts, "panels": dashboard.panels.count()},
        address=address,
    )
    dashboard.delete()
