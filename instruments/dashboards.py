"""Dashboards: who may see and change them, and the changes themselves (called by the pages).

Visibility follows the instruments (see ``instruments.models.Dashboard``): everything here asks
``accounts.permissions`` which instruments a user may see; nothing else decides it. Every change is
recorded in the audit trail, in the same transaction, with the acting user and their address.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Max, Q, QuerySet
from django.utils import timezone

from accounts import audit, permissions
from accounts.choices import AuditAction
from instruments import units
from instruments.expressions import ExpressionError, parse_curve
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

# A panel's plot options (DashboardPanel.options), as the plot page keeps them in its link.
VIEWS = ("series", "hist", "heatmap")
MAX_AXES = 12
MAX_EXPRESSIONS = 6  # as the plot page keeps
MAX_EXPRESSION_LENGTH = 500  # as /api/v1/expression/ takes
AXIS_KEYS = {"units", "log", "min", "max", "unit"}
OPTION_KEYS = {"view", "heat", "axes", "exprs"}
MAX_LIMIT = 1e300


def _limit(value, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValidationError({"options": f"{where} is a finite number or empty."})
    if abs(value) > MAX_LIMIT:
        raise ValidationError({"options": f"{where} is too large."})
    return float(value)


def _clean_axis(axis, channel_units: set[str], seen: set[str], n: int) -> dict | None:
    if not isinstance(axis, dict) or not set(axis) <= AXIS_KEYS or not isinstance(axis.get("units"), str):
        raise ValidationError(
            {"options": f"Axis {n}: an object of units, log, min, max and unit (the unit shown), naming its units."}
        )
    name = axis["units"] or "no unit"
    if axis["units"] not in channel_units:
        raise ValidationError({"options": f"Axis {n} ({name}): no channel of the plot is in these units."})
    if axis["units"] in seen:
        raise ValidationError({"options": f"Axis {n} ({name}): one axis per unit."})
    seen.add(axis["units"])
    log = axis.get("log", False)
    if not isinstance(log, bool):
        raise ValidationError({"options": f"Axis {n} ({name}): log is true or false."})
    low, high = _limit(axis.get("min"), f"Axis {n} ({name}) min"), _limit(axis.get("max"), f"Axis {n} ({name}) max")
    if low is not None and high is not None and not high > low:
        raise ValidationError({"options": f"Axis {n} ({name}): the top must be above the bottom."})
    if log and any(v is not None and v <= 0 for v in (low, high)):
        raise ValidationError({"options": f"Axis {n} ({name}): a log scale's limits are above 0."})
    shown = axis.get("unit")
    if shown is not None:
        if not isinstance(shown, str) or not 0 < len(shown) <= 40:
            raise ValidationError({"options": f"Axis {n} ({name}): the unit shown is a unit's name."})
        try:
            units.converter(axis["units"], shown)
        except ValueError as exc:
            raise ValidationError({"options": f"Axis {n} ({name}): {exc}."}) from None
        if shown == axis["units"]:
            shown = None
    if not log and low is None and high is None and shown is None:
        return None  # all automatic: nothing to keep
    return {"units": axis["units"], "log": log, "min": low, "max": high, "unit": shown}


def clean_plot_options(options, channels: Sequence[Channel]) -> dict:
    """A panel's plot options, checked and in one shape: ``view`` (series, hist or heatmap), ``heat`` (the
    histogram over time's channel, one of ``channels``; kept with that view only), ``axes`` (per unit of
    ``channels``: log scale, manual limits, the unit shown) and ``exprs`` (expression curves, their syntax
    checked; the channels they name are looked up, through the permission gate, when drawn).
    Raises ValidationError saying what is wrong. Defaults are left out: {} is a plain plot."""
    if options is None:
        return {}
    if not isinstance(options, dict) or not set(options) <= OPTION_KEYS:
        raise ValidationError({"options": "The plot's options are an object of view, heat, axes and exprs."})
    out: dict = {}
    view = options.get("view", "series")
    if view not in VIEWS:
        raise ValidationError({"options": f"The view is one of {', '.join(VIEWS)}."})
    if view != "series":
        out["view"] = view
    heat = options.get("heat")
    if heat is not None:
        if isinstance(heat, bool) or not isinstance(heat, int) or heat not in {c.pk for c in channels}:
            raise ValidationError({"options": "The histogram over time's channel is one of the plot's channels."})
        if view == "heatmap":  # the plot page keeps it (hc=) for that view only
            out["heat"] = heat
    axes = options.get("axes", [])
    if not isinstance(axes, list) or len(axes) > MAX_AXES:
        raise ValidationError({"options": f"The axes are a list of at most {MAX_AXES}."})
    channel_units = {c.units or "" for c in channels}
    seen: set[str] = set()
    kept = [a for n, axis in enumerate(axes, 1) if (a := _clean_axis(axis, channel_units, seen, n)) is not None]
    if kept:
        out["axes"] = kept
    exprs = options.get("exprs", [])
    if not isinstance(exprs, list) or len(exprs) > MAX_EXPRESSIONS:
        raise ValidationError({"options": f"The expressions are a list of at most {MAX_EXPRESSIONS}."})
    for n, expression in enumerate(exprs, 1):
        if not isinstance(expression, str) or len(expression) > MAX_EXPRESSION_LENGTH:
            raise ValidationError({"options": f"Expression {n} is text of at most {MAX_EXPRESSION_LENGTH} characters."})
        try:
            parse_curve(expression.strip())
        except ExpressionError as exc:
            raise ValidationError({"options": f"Expression {n} ({expression[:60]!r}): {exc}."}) from None
    if exprs:
        out["exprs"] = [e.strip() for e in exprs]
    return out


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
    options: dict | None = None,
    address: str | None = None,
) -> DashboardPanel:
    """A new panel at the end of ``dashboard``, over the channels of ``channel_ids`` ``user`` may see, with the
    plot's ``options`` (``clean_plot_options``)."""
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
    options = clean_plot_options(options, channels)
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
        options=options,
    )
    panel.channels.set(channels)
    _touch(dashboard)
    facts = {**_panel_facts(panel, channels), "time_range": time_range}
    if options:
        facts["options"] = options
    audit.record(AuditAction.CONFIG_CHANGED, actor=user, obj=dashboard, changes={"panel added": facts}, address=address)
    return panel


@transaction.atomic
def update_panel_options(user, panel: DashboardPanel, options, *, address: str | None = None) -> DashboardPanel:
    """Replace ``panel``'s plot options (view, histogram over time's channel, y axes, expression curves) with
    ``options``, checked by ``clean_plot_options`` against the panel's channels ``user`` may see, as when a
    plot is saved from the plotter. Its owner or an administrator; audited with the options before and after."""
    dashboard = panel.dashboard
    _check_change(user, dashboard)
    channels = panel_channels(user, panel)
    if not channels:
        raise ValidationError({"options": "None of this plot's channels is visible to you: its options cannot change."})
    cleaned = clean_plot_options(options, channels)
    before = DashboardPanel.objects.select_for_update().values_list("options", flat=True).get(pk=panel.pk) or {}
    panel.options = cleaned
    if cleaned != before:
        panel.save(update_fields=["options"])
        _touch(dashboard)
        facts = {**_panel_facts(panel, channels), "options": [before, cleaned]}
        audit.record(
            AuditAction.CONFIG_CHANGED, actor=user, obj=dashboard, changes={"panel options": facts}, address=address
        )
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
