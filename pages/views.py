"""The collaborators' pages over instruments: the list, an instrument, its logbook, sharing, dashboards.

Every view goes through ``accounts.mixins.InstrumentAccessMixin`` (login, 404 for what the user may not
see, 403 without the level an action needs) and calls the services; none decides access itself.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Page, Paginator
from django.db.models import Model, Q
from django.http import HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse, reverse_lazy
from django.views.generic import CreateView, DetailView, FormView, ListView, TemplateView, View

from accounts import audit, permissions, services
from accounts.mixins import AuditedFormMixin, InstrumentAccessMixin, local_next
from accounts.models import Agent
from accounts.paging import BoundedCount, BoundedPaginationMixin, BoundedPaginator, requested_page
from collection.alarms.models import AlarmEvent
from collection.services import corrections, quarantine, raw_files
from instruments import dashboards, runs
from instruments.forms import DashboardForm, LogbookEntryForm, PanelForm, PanelOptionsForm, ShareForm
from instruments.models import Channel, Dashboard, DashboardPanel, Instrument, PlotRange, channels_added_since_read
from instruments.search import instruments_matching
from pages.plotly_bundle import plotly_context
from pages.readings import channel_facts, first_reading_times, sparklines
from pages.status import (
    STATUS_FILTERS,
    agent_status,
    filter_by_status,
    instrument_statuses,
    now_us,
    status_counts,
)

# An instrument's page lists its channels and its data sources a page at a time (docs/pages.md#instrument).
CHANNELS_PER_PAGE = SOURCES_PER_PAGE = 50


class PageMixin(InstrumentAccessMixin):
    """The page mixin, sending anonymous visitors to the collaborators' login page (not the admin's)."""

    login_url = reverse_lazy("login")


def visible_channels(user):
    return (
        permissions.restrict(Channel.objects.all(), user)
        .select_related("instrument")
        .order_by("instrument__name", "name")
    )


# --- instruments ----------------------------------------------------------------------------------


class HomeView(PageMixin, BoundedPaginationMixin, ListView):
    """The instruments the user may see, each with its status at a glance: a page at a time, searchable and
    filtered by state, the counts of each state computed by the database (docs/pages.md#home)."""

    model = Instrument
    template_name = "instruments/home.html"
    paginate_by = 24

    def get_queryset(self):
        self.visible = super().get_queryset()
        self.few = False
        query = self.request.GET.get("q", "").strip()
        if query:
            # The whole text as one substring, through the engine's index (instruments.search). A search that
            # finds few is read once as their ids: the five counts and the page then test those, instead of
            # each evaluating the search and the permission gate again (docs/performance.md#searches-read-once).
            matching = self.visible.filter(instruments_matching([query], ("name", "location", "description")))
            found = list(matching.order_by().values_list("pk", flat=True)[: permissions.LISTED_UP_TO + 1])
            self.few = len(found) <= permissions.LISTED_UP_TO
            self.visible = Instrument.objects.filter(pk__in=found) if self.few else matching
        self.now = now_us()
        self.state = self.request.GET.get("status", "")
        queryset = self.visible
        if self.state in dict(STATUS_FILTERS):
            queryset = filter_by_status(queryset, self.state, self.now, few=self.few)
        else:
            self.state = ""
        return queryset.select_related("owner").order_by("name", "pk")

    def counted_rows(self):
        return None if self.state else self.counts["all"]  # unfiltered, the page lists what "all" counted

    def get_context_data(self, **kwargs):
        self.counts = status_counts(self.visible, self.now, few=self.few)
        context = super().get_context_data(**kwargs)
        query = self.request.GET.get("q", "").strip()
        keep = {k: v for k, v in (("q", query), ("status", self.state)) if v}
        context.update(
            statuses=instrument_statuses(context["object_list"], self.now),
            query=query,
            state=self.state,
            counts=self.counts,
            status_filters=STATUS_FILTERS,
            search_query=urlencode({"q": query}) if query else "",
            page_query=urlencode(keep),
        )
        return context


class InstrumentDetailView(PageMixin, DetailView):
    model = Instrument
    template_name = "instruments/detail.html"
    context_object_name = "instrument"

    def channel_page(self, instrument: Instrument, count: int) -> tuple[Page, str]:
        """A page of the instrument's channels by name (CHANNELS_PER_PAGE, with their sparklines), those whose
        name, units or description hold every word of ``?channels=``: an instrument may have thousands."""
        query = self.request.GET.get("channels", "").strip()[:100]
        channels = instrument.channels.order_by("name")
        for word in query.split()[:5]:
            channels = channels.filter(
                Q(name__icontains=word) | Q(units__icontains=word) | Q(description__icontains=word)
            )
        number = self.request.GET.get("channel_page", 1)
        paginator = BoundedPaginator(channels, CHANNELS_PER_PAGE, page=number)
        if not query:  # the status counted them already
            paginator.bounded = BoundedCount(value=count, exact=True, limit=paginator.bound)
        return paginator.get_page(requested_page(number)), query

    def query_without(self, name: str) -> str:
        kept = self.request.GET.copy()
        kept.pop(name, None)
        return kept.urlencode()

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        instrument, user = self.object, self.request.user
        status = instrument_statuses([instrument], plottable=6)[0]
        channels, channel_query = self.channel_page(instrument, status.channel_count)
        number = self.request.GET.get("source_page", 1)
        sources = Paginator(status.sources, SOURCES_PER_PAGE).get_page(requested_page(number))
        agents = {s.source.agent_id for s in status.sources if s.source.agent_id}
        # Agents pushing to the instrument through the API without one of its data sources: shown too.
        pushing = (
            Agent.objects.filter(instruments=instrument)
            .exclude(pk__in=agents)
            .select_related("token", "health", "owner")
            .order_by("name")
        )
        agent_rows = [agent_status(agent) for agent in pushing]
        agents |= {row.agent.pk for row in agent_rows}
        may_see_agents = set(
            permissions.restrict(Agent.objects.filter(pk__in=agents), user).values_list("pk", flat=True)
        )
        context.update(
            status=status,
            level=permissions.level_on(user, instrument),
            can_change=permissions.has_instrument_perm(user, permissions.CHANGE, instrument),
            can_share=permissions.has_instrument_perm(user, permissions.SHARE, instrument),
            channels=channels,
            channel_query=channel_query,
            # Each pager's links keep the rest of the address (the other pager's page, the channel search).
            channels_pager_query=self.query_without("channel_page"),
            sources_pager_query=self.query_without("source_page"),
            channels_per_page=CHANNELS_PER_PAGE,
            sources=sources,
            sparklines=sparklines(list(channels)),
            may_see_agents=may_see_agents,
            agent_rows=agent_rows,
            logbook=instrument.logbook.select_related("author", "edited_by")[:50],
            active_alarms=AlarmEvent.objects.filter(channel__instrument=instrument, cleared_at__isnull=True)
            .select_related("channel", "rule")
            .order_by("-raised_at")[:5],
            quarantined=quarantine.selection(user, {"instrument": instrument.pk}).count(),
            has_raw_files=instrument.raw_files.exists() or raw_files.has_server_copies(instrument),
        )
        if context["can_change"]:
            context["logbook_form"] = LogbookEntryForm()
            # Sources whose channels were added after they started reading: a re-read in one click.
            context["reread_offers"] = channels_added_since_read(h.source for h in sources)
        return context


class SourceRereadView(PageMixin, View):
    """Re-read a file source from the start (change level): offered on the instrument page when channels
    were added after the source started reading."""

    http_method_names = ["post"]
    required_level = permissions.CHANGE

    def post(self, request, *args, **kwargs):
        instrument = self.get_instrument()  # 404 / 403 before anything else
        source = get_object_or_404(instrument.sources, pk=kwargs["pk"])
        try:
            corrections.request_reread(source, **audit.origin(request))
        except corrections.CorrectionRefused as exc:
            messages.error(request, str(exc))
        else:
            messages.success(
                request,
                f"{source.name} will be read again from the start by its next run; readings already stored count "
                "as duplicates.",
            )
        return redirect(reverse("instruments:detail", args=[instrument.slug]) + "#sources-title")


class LogbookAddView(PageMixin, AuditedFormMixin, CreateView):
    """Adds a logbook entry (change level): the form sits on the instrument page."""

    http_method_names = ["post"]
    required_level = permissions.CHANGE
    form_class = LogbookEntryForm

    def post(self, request, *args, **kwargs):
        self.get_instrument()  # 404 / 403 before anything else
        return super().post(request, *args, **kwargs)

    def form_valid(self, form):
        form.instance.instrument = self.get_instrument()
        form.instance.author = self.request.user
        response = super().form_valid(form)
        messages.success(self.request, "Logbook entry added.")
        return response

    def form_invalid(self, form):
        errors = "; ".join(
            f"{form.fields[f].label if f in form.fields else ''} {' '.join(e)}" for f, e in form.errors.items()
        )
        messages.error(self.request, f"The entry was not added: {errors.strip()}")
        return redirect(self.get_success_url())

    def get_success_url(self):
        return reverse("instruments:detail", args=[self.get_instrument().slug]) + "#logbook"


# --- sharing --------------------------------------------------------------------------------------


SHARES_PER_PAGE = 50


class SharingView(PageMixin, FormView):
    """Who has access at which level; add a user or group (share level)."""

    required_level = permissions.SHARE
    template_name = "instruments/sharing.html"
    form_class = ShareForm

    def get_context_data(self, **kwargs):
        instrument = self.get_instrument()
        context = super().get_context_data(**kwargs)
        shares = Paginator(services.shares_of(instrument), SHARES_PER_PAGE).get_page(self.request.GET.get("page"))
        context.update(instrument=instrument, shares=shares)
        return context

    def form_valid(self, form):
        instrument = self.get_instrument()
        principal, level = form.cleaned_data["principal"], form.cleaned_data["level"]
        try:
            changed = services.share(instrument, principal, level, **audit.origin(self.request))
        except ValidationError as exc:
            form.add_error("name", exc.messages)
            return self.form_invalid(form)
        name = services.Share(form.cleaned_data["kind"], principal, level).name
        if changed:
            messages.success(self.request, f"{name} now has {level} access to {instrument.name}.")
        else:
            messages.info(self.request, f"{name} already had {level} access.")
        return HttpResponseRedirect(self.request.path)

    def get(self, request, *args, **kwargs):
        self.get_instrument()
        return super().get(request, *args, **kwargs)

    def post(self, request, *args, **kwargs):
        self.get_instrument()
        return super().post(request, *args, **kwargs)


class SharingRemoveView(PageMixin, View):
    required_level = permissions.SHARE

    def post(self, request, slug):
        instrument = self.get_instrument()
        kind, name = request.POST.get("kind"), request.POST.get("name", "")
        principal: Model | None
        if kind == "user":
            model = get_user_model()
            principal = model.objects.filter(**{model.USERNAME_FIELD: name}).first()
        elif kind == "group":
            principal = Group.objects.filter(name=name).first()
        else:
            principal = None
        if principal is not None and services.unshare(instrument, principal, **audit.origin(request)):
            messages.success(request, f"{name} no longer has access to {instrument.name}.")
        else:
            messages.info(request, f"{name or 'That'} had no access to remove.")
        return redirect("instruments:sharing", slug=instrument.slug)


# --- dashboards -----------------------------------------------------------------------------------


class DashboardAccessMixin(PageMixin):
    """The page mixin for dashboards: hidden ones answer 404; changing needs ownership (else 403)."""

    # Any: list views type model as type[M] | None, detail and edit views as type[M].
    model: Any = Dashboard

    def get_queryset(self):
        return dashboards.dashboards_visible_to(self.request.user).select_related("owner")

    def check_level(self, obj) -> None:
        if self.required_level != permissions.VIEW and not dashboards.may_change(self.request.user, obj):
            raise PermissionDenied


DASHBOARDS_PER_PAGE = 50


class DashboardListView(DashboardAccessMixin, TemplateView):
    template_name = "instruments/dashboards.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        user = self.request.user
        visible = self.get_queryset().order_by("title", "pk")
        # Two lists, each a page at a time (?mine=2, ?others=3): never every dashboard of the site.
        pages = {
            "mine": visible.filter(owner=user.pk),
            "others": visible.exclude(owner=user.pk),
        }
        for name, queryset in pages.items():
            context[name] = Paginator(queryset, DASHBOARDS_PER_PAGE).get_page(self.request.GET.get(name))
        context["form"] = DashboardForm()
        return context


class DashboardCreateView(PageMixin, View):
    """Creates a dashboard (any user); with ``channels`` in the body, its first panel too (from the plot page)."""

    def post(self, request):
        form = DashboardForm(request.POST)
        if not form.is_valid():
            messages.error(request, "A dashboard needs a title.")
            return redirect("instruments:dashboards")
        address = audit.client_address(request)
        dashboard = dashboards.create_dashboard(request.user, **form.cleaned_data, address=address)
        if request.POST.getlist("channels"):  # from the plot page: the plot's own title is "panel_title"
            panel = request.POST.copy()
            panel["title"] = panel.get("panel_title", "")
            _add_panel_from_post(request, dashboard, panel)
        messages.success(request, f"Dashboard {dashboard.title!r} created.")
        return redirect("instruments:dashboard", pk=dashboard.pk)


def _add_panel_from_post(request, dashboard: Dashboard, data=None) -> bool:
    form = PanelForm(data if data is not None else request.POST, channels=visible_channels(request.user))
    if not form.is_valid():
        messages.error(
            request, "The plot was not added: " + "; ".join(" ".join(str(m) for m in e) for e in form.errors.values())
        )
        return False
    data = form.cleaned_data
    try:
        dashboards.add_panel(
            request.user,
            dashboard,
            data["channels"],
            title=data["title"],
            time_range=data["time_range"],
            start=data["start"],
            end=data["end"],
            include_flagged=data["include_flagged"],
            wide=data["wide"],
            options=data["options"],
            address=audit.client_address(request),
        )
    except ValidationError as exc:
        messages.error(request, "The plot was not added: " + " ".join(exc.messages))
        return False
    return True


class DashboardDetailView(DashboardAccessMixin, DetailView):
    template_name = "instruments/dashboard.html"
    context_object_name = "dashboard"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        user = self.request.user
        following = self.following_run()
        can_change = dashboards.may_change(user, self.object)
        panels = []
        for panel in self.object.panels.all():
            channels = dashboards.panel_channels(user, panel)
            state = panel_state(panel, channels)
            if following is not None:
                state.update(following["state"])
            panels.append(
                {
                    "panel": panel,
                    "channels": channels,
                    "state": state,
                    "plot_url": panel_plot_url(panel, state),
                    "element_id": f"panel-state-{panel.pk}",
                    "view_words": VIEW_WORDS.get(state["kind"], ""),
                    # the options menu of whoever may change the dashboard (its form, drawn from the saved options)
                    "options_form": (
                        PanelOptionsForm(channels=channels, state=state, auto_id=f"panel{panel.pk}_%s")
                        if can_change and channels
                        else None
                    ),
                }
            )
        context.update(
            following=following,
            run_lists=permissions.run_lists_for(user).only("slug", "name"),
            panels=panels,
            can_change=can_change,
            dashboard_config={
                "samplesUrl": reverse("api:samples"),
                "histogramUrl": reverse("api:histogram"),
                "expressionUrl": reverse("api:expression"),
                "runsUrl": reverse("api:run-list"),
                "timeZone": settings.TIME_ZONE,
            },
            **plotly_context(p["state"]["kind"] for p in panels),
        )
        return context

    def following_run(self) -> dict | None:
        """``?run=<run list>``: every panel follows that list's active run (from its start, live);
        ``?run=<run list>/<run>`` shows that run. None (with a message why) when there is nothing to show."""
        ref = self.request.GET.get("run", "").strip()
        if not ref:
            return None
        slug, _, label = ref.partition("/")
        if not label:
            run_list = permissions.run_lists_for(self.request.user).filter(slug=slug).first()
            active = runs.active_run(run_list) if run_list is not None else None
            if active is None:
                what = "no run is active in it" if run_list is not None else "you may not see it, or it does not exist"
                messages.info(self.request, f"Not following {slug[:100]}: {what}.")
                return None
            state = {"range": "since", "start": active.start.isoformat()}
            return {"run_list": run_list, "run": active, "state": state, "live": True}
        try:
            start, end, found = runs.run_range(self.request.user, ref)
        except ValueError as exc:
            messages.error(self.request, str(exc))
            return None
        state = {"range": PlotRange.CUSTOM, "start": start.isoformat(), "end": end.isoformat()}
        return {"run_list": found[0].run_list, "run": found[0], "state": state, "live": False}


def panel_state(panel: DashboardPanel, channels) -> dict:
    """What the plot script needs to draw a panel: the same state the plot page keeps in its URL."""
    first = first_reading_times([c.pk for c in channels]) if panel.time_range == PlotRange.ALL else {}
    state = {
        "channels": [channel_facts(c, first.get(c.pk)) for c in channels],
        "range": panel.time_range,
        "flagged": panel.include_flagged,
    }
    if panel.time_range == PlotRange.CUSTOM:
        assert panel.start is not None and panel.end is not None  # a custom range has both ends (a check constraint)
        state.update(start=panel.start.isoformat(), end=panel.end.isoformat())
    options = panel.options or {}
    state["kind"] = options.get("view", "series")
    if options.get("heat") in {c.pk for c in channels}:  # else the plot's default: its first channel
        state["heat"] = options["heat"]
    state["exprs"] = options.get("exprs", [])
    # The plot numbers its y axes by the units of its channels, in their order: the saved axes are by unit.
    order = list(dict.fromkeys(c.units or "" for c in channels))
    state["yaxes"] = {
        str(order.index(axis["units"]) + 1): {key: axis[key] for key in ("log", "min", "max", "unit")}
        for axis in options.get("axes", [])
        if axis["units"] in order
    }
    return state


VIEW_WORDS = {"hist": "histogram", "heatmap": "histogram over time"}


def options_summary(options: dict, channels=()) -> list[str]:
    """A panel's saved plot options in words, for the edit page (``channels``: the panel's, to name the
    histogram over time's)."""
    out = [VIEW_WORDS[options["view"]]] if options.get("view") in VIEW_WORDS else []
    heat = next((c.name for c in channels if c.pk == options.get("heat")), None)
    if out and heat:
        out[0] += f" of {heat}"
    for axis in options.get("axes", []):
        parts = ["log"] if axis["log"] else []
        limits = " to ".join("auto" if axis[key] is None else f"{axis[key]:.6g}" for key in ("min", "max"))
        if axis["min"] is not None or axis["max"] is not None:
            parts.append(limits)
        if axis["unit"]:
            parts.append(f"in {axis['unit']}")
        out.append(f"{axis['units'] or 'no unit'} axis: {', '.join(parts)}")
    out += [f"ƒ {expression}" for expression in options.get("exprs", [])]
    return out


def panel_plot_url(panel: DashboardPanel, state: dict) -> str:
    """The plot page showing a panel as saved (the same link the plot page writes), to look closer or to change
    it and save it again."""
    query: list[tuple[str, str]] = [
        ("c", ",".join(str(c["id"]) for c in state["channels"])),
        ("range", panel.time_range),
    ]
    if panel.time_range == PlotRange.CUSTOM:
        query += [("start", state["start"]), ("end", state["end"])]
    if panel.include_flagged:
        query.append(("flagged", "1"))
    if state["kind"] != "series":
        query.append(("view", state["kind"]))
    if state["kind"] == "heatmap" and state.get("heat"):
        query.append(("hc", str(state["heat"])))
    for k, axis in state["yaxes"].items():
        limits = ["" if axis[key] is None else f"{axis[key]:.15g}" for key in ("min", "max")]
        text = "log" if axis["log"] else "lin"
        if any(limits) or axis["unit"]:
            text += ":" + ":".join(limits)
        if axis["unit"]:
            text += ":" + axis["unit"]
        query.append((f"y{k}", text))
    query += [("e", expression) for expression in state["exprs"]]
    return reverse("collection:plot") + "?" + urlencode(query)


class DashboardEditView(DashboardAccessMixin, FormView):
    required_level = permissions.CHANGE
    template_name = "instruments/dashboard_edit.html"
    form_class = DashboardForm

    def dispatch(self, request, *args, **kwargs):
        if request.user.is_authenticated:
            self.object = self.get_object()
        return super().dispatch(request, *args, **kwargs)

    def get_object(self, queryset=None):
        obj = get_object_or_404(self.get_queryset(), pk=self.kwargs["pk"])
        self.check_level(obj)
        return obj

    def get_form_kwargs(self):
        return {**super().get_form_kwargs(), "instance": self.object}

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        user = self.request.user
        panels = []
        for panel in self.object.panels.all():
            channels = dashboards.panel_channels(user, panel)
            state = panel_state(panel, channels)
            panels.append(
                {
                    "panel": panel,
                    "channels": channels,
                    "options": options_summary(panel.options or {}, channels),
                    "plot_url": panel_plot_url(panel, state),
                }
            )
        context.update(
            dashboard=self.object,
            panels=panels,
            panel_form=PanelForm(channels=visible_channels(user)),
        )
        return context

    def form_valid(self, form):
        values = {name: form.cleaned_data[name] for name in dashboards.EDITABLE_FIELDS}
        dashboards.update_dashboard(
            self.request.user, self.object, address=audit.client_address(self.request), **values
        )
        messages.success(self.request, "Dashboard saved.")
        return redirect("instruments:dashboard-edit", pk=self.object.pk)


class DashboardPanelAddView(DashboardAccessMixin, View):
    required_level = permissions.CHANGE

    def post(self, request, pk):
        dashboard = get_object_or_404(self.get_queryset(), pk=pk)
        self.check_level(dashboard)
        if _add_panel_from_post(request, dashboard):
            messages.success(request, f"Plot added to {dashboard.title!r}.")
        return redirect(local_next(request, reverse("instruments:dashboard", args=[dashboard.pk])))


class DashboardPanelView(DashboardAccessMixin, View):
    """Move a panel up or down, or remove it (``action`` in the body)."""

    required_level = permissions.CHANGE

    def post(self, request, pk, panel):
        dashboard = get_object_or_404(self.get_queryset(), pk=pk)
        self.check_level(dashboard)
        panel = get_object_or_404(dashboard.panels, pk=panel)
        action, address = request.POST.get("action"), audit.client_address(request)
        if action == "up":
            dashboards.move_panel(request.user, panel, -1, address=address)
        elif action == "down":
            dashboards.move_panel(request.user, panel, +1, address=address)
        elif action == "remove":
            dashboards.remove_panel(request.user, panel, address=address)
            messages.success(request, "Plot removed.")
        else:
            messages.error(request, "Choose to move the plot up or down, or to remove it.")
        return redirect("instruments:dashboard-edit", pk=dashboard.pk)


class DashboardPanelOptionsView(DashboardAccessMixin, View):
    """A panel's plot options changed on the dashboard (its *Options* menu): what it shows, the histogram over
    time's channel, the y axes and the expression curves, checked by the service as when saved from the plotter.
    The dashboard's script posts with ``Accept: application/json`` and redraws the panel in place from the
    answer; a refusal is a 400 saying why. Without the script: back to the dashboard, with a message."""

    required_level = permissions.CHANGE

    def post(self, request, pk, panel):
        dashboard = get_object_or_404(self.get_queryset(), pk=pk)
        self.check_level(dashboard)
        panel = get_object_or_404(dashboard.panels, pk=panel)
        channels = dashboards.panel_channels(request.user, panel)
        form = PanelOptionsForm(request.POST, channels=channels, state=panel_state(panel, channels))
        wants_json = "application/json" in request.headers.get("Accept", "")
        try:
            if not form.is_valid():
                raise ValidationError(form.error_text())
            dashboards.update_panel_options(request.user, panel, form.options(), address=audit.client_address(request))
        except ValidationError as exc:
            reason = " ".join(exc.messages)
            if wants_json:
                return JsonResponse({"detail": reason}, status=400)
            messages.error(request, "The plot's options were not saved: " + reason)
        else:
            if wants_json:
                state = panel_state(panel, channels)
                options = {key: state.get(key) for key in ("kind", "heat", "yaxes", "exprs")}
                return JsonResponse(
                    {
                        "options": options,
                        "view_words": VIEW_WORDS.get(state["kind"], ""),
                        "plot_url": panel_plot_url(panel, state),
                    }
                )
            messages.success(request, "Plot options saved.")
        return HttpResponseRedirect(reverse("instruments:dashboard", args=[dashboard.pk]) + f"#panel-{panel.pk}")


class DashboardDeleteView(DashboardAccessMixin, View):
    required_level = permissions.CHANGE

    def post(self, request, pk):
        dashboard = get_object_or_404(self.get_queryset(), pk=pk)
        self.check_level(dashboard)
        dashboards.delete_dashboard(request.user, dashboard, address=audit.client_address(request))
        messages.success(request, f"Dashboard {dashboard.title!r} deleted.")
        return redirect("instruments:dashboards")
