"""The collaborators' pages over readings and alarms: the plot page, the alarms list and acknowledging.

The plot page is a shell: its script reads the readings from ``/api/v1/samples/`` (the query service,
behind the API's permission gate) and exports through ``/api/v1/export/``. Access checks are the page
mixin's (``accounts.mixins.InstrumentAccessMixin``): a channel the user may not see answers 404.
"""

from __future__ import annotations

from datetime import UTC, timedelta

from django.conf import settings
from django.contrib import messages
from django.db.models import Case, IntegerField, Q, Value, When
from django.http import Http404, JsonResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.generic import ListView, TemplateView, View
from django.views.generic.detail import SingleObjectMixin

from accounts import permissions
from accounts.mixins import local_next
from accounts.paging import BoundedPaginationMixin, bounded_count
from collection.alarms.evaluate import acknowledge
from collection.alarms.models import AlarmEvent
from instruments import dashboards, runs
from instruments.choices import ChannelKind
from instruments.models import Instrument, PlotRange
from instruments.search import channels_matching
from pages.context_processors import BADGE_LIMIT
from pages.links import RowLink
from pages.plotly_bundle import plotly_context
from pages.readings import channel_facts, first_reading_times
from pages.views import PageMixin, visible_channels

MAX_PLOT_CHANNELS = 12


def parse_channel_refs(request) -> list[str]:
    """``?c=3,4&c=demo-weather/pressure`` -> ["3", "4", "demo-weather/pressure"] (order kept, no repeats).

    A channel is its id (what the page writes) or ``instrument-slug/channel-slug`` (what people type).
    """
    refs: list[str] = []
    for part in request.GET.getlist("c"):
        for piece in part.split(","):
            piece = piece.strip()
            if piece and piece not in refs:
                refs.append(piece)
    return refs[:MAX_PLOT_CHANNELS]


def resolve_channels(refs: list[str], channels) -> list:
    """The channels ``refs`` name among ``channels`` (a queryset of those the user may see; only the named
    ones are read); any other is a 404."""
    if not refs:
        return []
    wanted = Q(pk__in=[int(ref) for ref in refs if ref.isdigit()])
    for ref in refs:
        if "/" in ref:
            instrument_slug, channel_slug = ref.split("/", 1)
            wanted |= Q(instrument__slug=instrument_slug, slug=channel_slug)
    named = list(channels.filter(wanted))
    by_id = {str(c.pk): c for c in named}
    by_ref = {f"{c.instrument.slug}/{c.slug}": c for c in named}
    found = []
    for ref in refs:
        channel = by_id.get(ref) or by_ref.get(ref)
        if channel is None:
            raise Http404("No such channel.")  # hidden and missing channels look the same
        if channel not in found:
            found.append(channel)
    return found


SEARCH_LIMIT = 20
MAX_QUERY_LENGTH = 200
MAX_RECENT = 20
PICKER_CHANNELS = 50


def search_channels(user, query: str = "", *, instrument_slug: str = "", recent: list[int] | None = None):
    """The plottable channels ``user`` may see matching every word of ``query`` (in the channel's or its
    instrument's name or slug, or its units), the recently used ones first, then the current instrument's,
    then by instrument and name. A lazy queryset through the permission gate: slice it."""
    rank = Case(
        When(pk__in=recent or [], then=Value(0)),
        When(instrument__slug=instrument_slug or None, then=Value(1)),
        default=Value(2),
        output_field=IntegerField(),
    )
    return matching_channels(user, query).annotate(rank=rank).order_by("rank", "instrument__name", "name", "pk")


def matching_channels(user, query: str = ""):
    """The plottable channels ``user`` may see matching every word of ``query``, in no order."""
    channels = visible_channels(user).exclude(kind=ChannelKind.TEXT)
    # Each word through the engine's substring index (instruments.search).
    return channels.filter(channels_matching(query.split()[:8]))


def first_channels(user, query: str = "", *, instrument_slug: str = "", recent: list[int] | None = None, limit: int):
    """The first ``limit`` channels of ``search_channels``, in two index-friendly queries instead of one that
    ranks every visible channel before taking the first: the recent and current instrument's channels
    (found by id and slug), then the others in the instruments' and channels' name order, which the database
    reads through its indexes and stops once it has enough (docs/performance.md#many-things)."""
    channels = matching_channels(user, query)
    first: list = []
    if recent or instrument_slug:
        favoured = Q(pk__in=recent or [])
        if instrument_slug:  # by the instrument's id, not a filter across the join: each side has its index
            favoured |= Q(instrument_id__in=Instrument.objects.filter(slug=instrument_slug).values("pk"))
        first = list(
            search_channels(user, query, instrument_slug=instrument_slug, recent=recent).filter(favoured)[:limit]
        )
    if len(first) < limit:
        rest = channels.exclude(pk__in=[c.pk for c in first]).order_by("instrument__name", "name", "pk")
        first += list(rest[: limit - len(first)])
    return first


class ChannelSearchView(PageMixin, View):
    """The plot page's channel picker asks here as one types: at most SEARCH_LIMIT channels, as JSON.

    ``q`` (words to match), ``instrument`` (the current instrument's slug: its channels come first),
    ``recent`` (ids the browser used lately, comma-separated: first of all)."""

    def get(self, request):
        query = request.GET.get("q", "").strip()
        if len(query) > MAX_QUERY_LENGTH:
            return JsonResponse({"detail": f"The search is at most {MAX_QUERY_LENGTH} characters."}, status=400)
        recent_text = [part.strip() for part in request.GET.get("recent", "").split(",") if part.strip()]
        if not all(part.isdigit() and len(part) < 19 for part in recent_text):
            return JsonResponse({"detail": "recent is a comma-separated list of channel ids."}, status=400)
        recent = [int(part) for part in recent_text][:MAX_RECENT]
        slug = request.GET.get("instrument", "")[:100]
        found = first_channels(request.user, query, instrument_slug=slug, recent=recent, limit=SEARCH_LIMIT + 1)
        return JsonResponse(
            {"results": [channel_facts(c) for c in found[:SEARCH_LIMIT]], "more": len(found) > SEARCH_LIMIT}
        )


class PlotView(PageMixin, TemplateView):
    """Pick channels and a range; zoom, pan, live mode and exports happen in the page's script.

    ``?run=<run list>/<run>`` (or ``<first>-<last>``) is "the time of run N": the page answers with the
    same view over that run's start and end (now, for an active run).

    The page holds the selected channels and the current instrument's first PICKER_CHANNELS; the picker
    finds any other through ``ChannelSearchView`` as one types (never a list of every channel)."""

    template_name = "collection/plot.html"

    def get(self, request, *args, **kwargs):
        if "run" in request.GET:
            return self.go_to_run(request)
        return super().get(request, *args, **kwargs)

    def go_to_run(self, request):
        query = request.GET.copy()
        ref = query.pop("run")[-1]
        try:
            start, end, _ = runs.run_range(request.user, ref)
        except ValueError as exc:
            messages.error(request, str(exc))
        else:
            if end <= start:
                end = start + timedelta(seconds=1)
            for key in ("range", "start", "end", "live"):
                query.pop(key, None)
            query["range"] = PlotRange.CUSTOM
            query["start"] = start.astimezone(UTC).isoformat().replace("+00:00", "Z")
            query["end"] = end.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return redirect(f"{reverse('collection:plot')}?{query.urlencode(safe=',/:')}")

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        user = self.request.user
        selected = resolve_channels(parse_channel_refs(self.request), visible_channels(user))
        first = first_reading_times([c.pk for c in selected])
        slug = self.request.GET.get("instrument", "")[:100] or (selected[0].instrument.slug if selected else "")
        current = []
        if slug:
            current = list(
                search_channels(user, instrument_slug=slug)
                .filter(instrument__slug=slug)
                .exclude(pk__in=[c.pk for c in selected])[:PICKER_CHANNELS]
            )
        slug = slug if current or selected else ""  # a hidden instrument's slug is not repeated
        context.update(
            selected=[c for c in selected if c.kind != ChannelKind.TEXT],
            current_channels=current,
            current_slug=slug,
            selected_ids={c.pk for c in selected},
            plot_config={
                "channels": [channel_facts(c, first.get(c.pk)) for c in selected],
                "samplesUrl": reverse("api:samples"),
                "histogramUrl": reverse("api:histogram"),
                "annotationsUrl": reverse("api:annotations"),
                "expressionUrl": reverse("api:expression"),
                "exportUrl": reverse("api:export"),
                "searchUrl": reverse("collection:plot-channels"),
                "instrument": slug,
                "ranges": [[value, label] for value, label in PlotRange.choices if value != PlotRange.CUSTOM],
                "timeZone": settings.TIME_ZONE,
                "runsUrl": reverse("api:run-list"),
            },
            run_lists=permissions.run_lists_for(user).only("slug", "name"),
            my_dashboards=dashboards.dashboards_visible_to(user).filter(owner=user.pk),  # signed in (PageMixin)
            range_choices=[(v, label) for v, label in PlotRange.choices],
            **plotly_context([self.request.GET.get("view", "series")]),
        )
        return context


class AlarmListView(PageMixin, BoundedPaginationMixin, ListView):
    """Active and past alarm events of the instruments the user may see, filterable by instrument."""

    model = AlarmEvent
    template_name = "collection/alarms.html"
    paginate_by = 50
    STATES = (("active", "Active"), ("past", "Cleared"), ("all", "All"))

    def get_queryset(self):
        queryset = super().get_queryset().select_related("channel__instrument", "rule", "acknowledged_by")
        self.state = self.request.GET.get("state", "active")
        if self.state not in dict(self.STATES):
            self.state = "active"
        if self.state == "active":
            queryset = queryset.filter(cleared_at__isnull=True)
        elif self.state == "past":
            queryset = queryset.filter(cleared_at__isnull=False)
        self.instrument_slug = self.request.GET.get("instrument", "").strip()[:200]
        if self.instrument_slug:
            queryset = queryset.filter(self.instrument_filter())
        return queryset.order_by("-raised_at", "-id")

    def instrument_filter(self) -> Q:
        """The instrument typed in the filter: its slug, or a part of its name."""
        return Q(channel__instrument__slug=self.instrument_slug) | Q(
            channel__instrument__name__icontains=self.instrument_slug
        )

    def counted_rows(self):
        return self.active_count if self.state == "active" else None  # the page lists the active ones counted

    def get_context_data(self, **kwargs):
        counts = super().get_queryset()
        if self.instrument_slug:
            counts = counts.filter(self.instrument_filter())
        self.active_count = bounded_count(counts.filter(cleared_at__isnull=True))
        context = super().get_context_data(**kwargs)
        user = self.request.user
        events = context["object_list"]
        instrument_link, acknowledge_link = RowLink("instruments:detail"), RowLink("collection:alarm-acknowledge")
        for event in events:
            event.instrument_url = instrument_link(event.channel.instrument.slug)
            event.acknowledge_url = acknowledge_link(event.pk)
        instrument_ids = {e.channel.instrument_id for e in events}
        changeable = set(
            permissions.instruments_for(user, permissions.CHANGE)
            .filter(pk__in=instrument_ids)
            .values_list("pk", flat=True)
        )
        context.update(
            states=self.STATES,
            state=self.state,
            # Echoed only when it names an instrument the user may see (a stranger's slug is not repeated).
            instrument_slug=self.instrument_slug
            if self.instrument_slug
            and permissions.instruments_visible_to(user)
            .filter(Q(slug=self.instrument_slug) | Q(name__icontains=self.instrument_slug))
            .exists()
            else "",
            changeable=changeable,
            active_count=self.active_count,
            # The badge's count, when this one says as much (all alarms, counted at least as far as the badge).
            **(
                {"nav_active_alarms": self.active_count.within(BADGE_LIMIT)}
                if not self.instrument_slug and self.active_count.limit >= BADGE_LIMIT
                else {}
            ),
            query=self.request.GET.urlencode(),
        )
        return context


class AlarmAcknowledgeView(PageMixin, SingleObjectMixin, View):
    """Acknowledge one event: needs the change level on its instrument (a viewer may only look)."""

    model = AlarmEvent
    required_level = permissions.CHANGE

    def post(self, request, pk):
        event = self.get_object()  # 404 if hidden, 403 without change
        if acknowledge([event], request.user):
            messages.success(request, f"Acknowledged: {event.message}")
        else:
            messages.info(request, "That alarm was already acknowledged.")
        return redirect(local_next(request, reverse("collection:alarms")))
