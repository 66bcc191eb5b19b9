"""The collaborators' quarantine page: what was set aside from the instruments one may see, why, and
(for those who may change an instrument) replaying it once the cause is fixed, or accepting a conflict's new
value in place of the stored one. docs/quarantine.md.

Every view goes through the page mixin and the one gate (``collection.services.quarantine.selection``
narrows to what the user may see, or change): a record of an instrument one may not see answers 404,
one that may be seen but not changed 403 on replay or accept.
"""

from __future__ import annotations

import json

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, StreamingHttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.http import urlencode
from django.views.generic import DetailView, ListView, View

from accounts import audit, permissions
from accounts.mixins import local_next
from collection.choices import RejectionKind
from collection.models import RejectedSample
from collection.services import corrections, quarantine
from collection.tasks import replay_selection
from instruments.models import DataSource
from pages.views import PageMixin


class QuarantineFilters:
    """The page's filters (instrument slug, kind, source id) from a query string or a form, checked:
    an instrument or source the user may not see is a 404, like its page would be."""

    def __init__(self, request, data):
        self.user = request.user
        self.instrument_slug = (data.get("instrument") or "").strip()
        self.kind = data.get("kind") or ""
        if self.kind not in RejectionKind.values:
            self.kind = ""
        self.instrument = None
        if self.instrument_slug:
            self.instrument = permissions.instruments_visible_to(self.user).filter(slug=self.instrument_slug).first()
            if self.instrument is None:
                raise Http404("No such instrument.")
        self.source = None
        raw_source = data.get("source") or ""
        if raw_source:
            if not str(raw_source).isdigit():
                raise Http404("No such data source.")
            self.source = permissions.restrict(DataSource.objects.all(), self.user).filter(pk=int(raw_source)).first()
            if self.source is None:
                raise Http404("No such data source.")

    def as_selection(self) -> dict:
        return {
            "kind": self.kind,
            "source": self.source.pk if self.source else None,
            "instrument": self.instrument.pk if self.instrument else None,
        }

    def query(self, **changes) -> str:
        values = {
            "instrument": self.instrument_slug,
            "kind": self.kind,
            "source": str(self.source.pk) if self.source else "",
            **changes,
        }
        return urlencode({k: v for k, v in values.items() if v})


def _changeable_instrument_ids(user) -> set[int]:
    return set(permissions.instruments_for(user, permissions.CHANGE).values_list("pk", flat=True))


def _instrument_id(record: RejectedSample) -> int | None:
    if record.source is not None:
        return record.source.instrument_id
    return record.channel.instrument_id if record.channel is not None else None


class QuarantineView(PageMixin, ListView):
    """The quarantine of the instruments the user may see: by kind, by source, by day; newest first."""

    model = RejectedSample
    template_name = "collection/quarantine.html"
    paginate_by = 50

    def get_queryset(self):
        self.filters = QuarantineFilters(self.request, self.request.GET)
        return (
            quarantine.selection(self.request.user, self.filters.as_selection())
            .select_related("source", "source__instrument", "channel", "channel__instrument", "sender_agent")
            .order_by("-received_at", "-pk")
        )

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        user = self.request.user
        filters = self.filters
        everything = quarantine.selection(user, {**filters.as_selection(), "kind": ""})
        changeable = _changeable_instrument_ids(user)
        rows = [
            {"record": r, "changeable": _instrument_id(r) in changeable or permissions.is_administrator(user)}
            for r in context["object_list"]
        ]
        context.update(
            filters=filters,
            rows=rows,
            any_changeable=any(r["changeable"] for r in rows),
            any_conflict_changeable=any(r["changeable"] and r["record"].kind == RejectionKind.CONFLICT for r in rows),
            kinds=quarantine.kind_counts(everything),
            sources=quarantine.source_counts(quarantine.selection(user, filters.as_selection())),
            days=quarantine.daily_counts(quarantine.selection(user, filters.as_selection())),
            instruments=permissions.instruments_visible_to(user).order_by("name"),
            kind_choices=RejectionKind.choices,
            total=context["paginator"].count if context.get("paginator") else len(rows),
            query=filters.query(),
            query_without_source=filters.query(source=""),
            replay_batch=settings.DAQBROKER_QUARANTINE_REPLAY_BATCH,
            may_replay_all=bool(
                filters.kind
                and filters.source is not None
                and (filters.source.instrument_id in changeable or permissions.is_administrator(user))
            ),
        )
        return context


class QuarantineDetailView(PageMixin, DetailView):
    """One record: the raw line (as kept, and with blanks and control characters shown), where it came
    from, why, how the source's configuration reads it now, and replay for those who may change."""

    model = RejectedSample
    template_name = "collection/quarantine_detail.html"
    context_object_name = "record"

    def get_queryset(self):
        return (
            super()
            .get_queryset()
            .select_related("source", "source__instrument", "channel", "sender_agent", "config_snapshot")
        )

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        record = self.object
        source = record.source
        then = quarantine.config_when_set_aside(record)
        context.update(
            can_replay=permissions.has_perm(self.request.user, permissions.CHANGE, record),
            is_conflict=record.kind == RejectionKind.CONFLICT,
            stored_value=record.context.get("stored_value") if isinstance(record.context, dict) else None,
            why_not=quarantine.why_not_replayable(record),
            parsed=quarantine.parse_preview(record),
            visible=record.preview(limit=4000),
            config=json.dumps(source.config, indent=2, sort_keys=True) if source else "",
            config_then=json.dumps(then, indent=2, sort_keys=True) if then is not None else "",
            config_changed=bool(source and then is not None and then != source.config),
            context_json=json.dumps(record.context, indent=2, sort_keys=True),
        )
        return context


class QuarantineReplayView(PageMixin, View):
    """Replay the ticked records (``id``), or all of a kind and source (``all``), or a dry run of either
    (``dry_run``). Up to ``DAQBROKER_QUARANTINE_REPLAY_BATCH`` at once; the rest by a background task."""

    http_method_names = ["post"]

    def post(self, request):
        filters = QuarantineFilters(request, request.POST)
        back = local_next(
            request, reverse("collection:quarantine") + (f"?{filters.query()}" if filters.query() else "")
        )
        dry_run = bool(request.POST.get("dry_run"))
        ids = request.POST.getlist("id")
        if ids:
            if not all(i.isdigit() for i in ids) or len(ids) > settings.DAQBROKER_QUARANTINE_REPLAY_BATCH:
                messages.error(
                    request,
                    f"Select at most {settings.DAQBROKER_QUARANTINE_REPLAY_BATCH:,} records "
                    "(or replay all of a kind and source).",
                )
                return redirect(back)
            selection = {"ids": sorted({int(i) for i in ids})}
        elif request.POST.get("all") and filters.kind and filters.source:
            selection = filters.as_selection()
        else:
            messages.info(request, "Nothing was selected to replay.")
            return redirect(back)
        visible = quarantine.selection(request.user, selection).count()
        if "ids" in selection and visible < len(selection["ids"]):
            raise Http404("No such quarantine record.")
        changeable = quarantine.selection(request.user, selection, permissions.CHANGE).count()
        if changeable < visible or (
            filters.source and not permissions.has_perm(request.user, permissions.CHANGE, filters.source)
        ):
            raise PermissionDenied
        outcome = replay_selection(request.user, selection, dry_run=dry_run, address=audit.origin(request)["address"])
        text = outcome.summary()
        if len(outcome.per_record) == 1:
            (reasons,) = outcome.per_record.values()
            if reasons:
                text += " It " + ("would be" if dry_run else "was") + " set aside again: " + "; ".join(reasons[:3])
        level = messages.INFO if dry_run else (messages.SUCCESS if outcome.records else messages.WARNING)
        messages.add_message(request, level, ("Dry run: " if dry_run else "") + text)
        replayed_one = not dry_run and len(selection.get("ids") or []) == 1
        if replayed_one and back.startswith(reverse("collection:quarantine-detail", args=[selection["ids"][0]])):
            back = reverse("collection:quarantine")  # the record itself is gone (replayed): back to the list
        return redirect(back)


class QuarantineAcceptView(PageMixin, View):
    """Accept the new value of the ticked conflicts (``id``): each replaces the reading stored at its time
    and leaves the quarantine (``corrections.accept_conflicts``, audited with the value it replaced).
    Needs *change* on every ticked record's instrument; at most ``DAQBROKER_QUARANTINE_REPLAY_BATCH`` at
    once. Ticked records that are not conflicts are left alone, and the message says how many."""

    http_method_names = ["post"]

    def post(self, request):
        filters = QuarantineFilters(request, request.POST)
        back = local_next(
            request, reverse("collection:quarantine") + (f"?{filters.query()}" if filters.query() else "")
        )
        ids = request.POST.getlist("id")
        if not ids:
            messages.info(request, "No conflict was selected.")
            return redirect(back)
        if not all(i.isdigit() for i in ids) or len(ids) > settings.DAQBROKER_QUARANTINE_REPLAY_BATCH:
            messages.error(request, f"Select at most {settings.DAQBROKER_QUARANTINE_REPLAY_BATCH:,} records.")
            return redirect(back)
        selection = {"ids": sorted({int(i) for i in ids})}
        records = quarantine.selection(request.user, selection)
        visible = records.count()
        if visible < len(selection["ids"]):
            raise Http404("No such quarantine record.")
        if quarantine.selection(request.user, selection, permissions.CHANGE).count() < visible:
            raise PermissionDenied
        accepted, skipped = corrections.accept_conflicts(records.order_by("pk"), **audit.origin(request))
        text = f"{accepted} conflict(s) accepted: the new value replaces the one stored at its time."
        if skipped:
            text += f" {skipped} record(s) left alone (not a conflict, or its channel is gone)."
        messages.add_message(request, messages.SUCCESS if accepted else messages.WARNING, text)
        accepted_one = accepted and len(selection["ids"]) == 1
        if accepted_one and back.startswith(reverse("collection:quarantine-detail", args=[selection["ids"][0]])):
            back = reverse("collection:quarantine")  # the record itself is gone (accepted): back to the list
        return redirect(back)


class QuarantineExportView(PageMixin, View):
    """The filtered quarantine as CSV (what the user may see), streamed in chunks."""

    def get(self, request):
        filters = QuarantineFilters(request, request.GET)
        records = quarantine.selection(request.user, filters.as_selection())
        response = StreamingHttpResponse(quarantine.export_csv(records), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="quarantine.csv"'
        return response
