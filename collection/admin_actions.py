"""What the data source and channel admin pages gain from collection: "collect now", "validate now", the
recent collection runs shown beside each source, re-reading a source and deleting a channel's readings in a
range (``collection.admin`` adds them to the registry's admin)."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from accounts import audit, permissions
from collection.alarms.tasks import validate_channels_task, validate_source
from collection.choices import RunStatus
from collection.models import CollectionRun
from collection.services import corrections
from collection.tasks import collect_source
from instruments.choices import STREAMING_KINDS, SourceKind
from instruments.models import with_channel_counts

RECENT_RUNS = 10


def _queue(task, args) -> bool:
    try:
        task.apply_async(args=args)
    except Exception:  # the broker is unreachable
        return False
    return True


@admin.action(description="Collect now")
def collect_now(modeladmin, request, queryset):
    """Queue a collection of each selected source at once (a source being collected is left to finish)."""
    collected = list(with_channel_counts(queryset.exclude(kind__in=[SourceKind.AGENT, *STREAMING_KINDS])))
    waiting = [source.name for source in collected if source.waiting_for_channels]
    sources = [source.pk for source in collected if not source.waiting_for_channels]
    queued = sum(_queue(collect_source, [pk]) for pk in sources)
    skipped = queryset.count() - len(sources) - len(waiting)
    message = f"Collection queued for {queued} data source(s)."
    if skipped:
        message += (
            f" {skipped} agent or streaming source(s) skipped: agents push their readings, and streaming "
            "(MQTT, OPC UA) sources are read continuously by the stream collector."
        )
    if waiting:
        message += (
            f" {len(waiting)} source(s) not collected, waiting for channels (no channel takes a field from them, "
            f"so their files are left where they are): {', '.join(waiting[:10])}."
        )
    if queued < len(sources):
        modeladmin.message_user(request, "The task queue is unreachable: is Redis running?", messages.ERROR)
    modeladmin.message_user(request, message, messages.SUCCESS if queued else messages.WARNING)


@admin.action(description="Validate now (flags, spike checks, derived channels, alarms)")
def validate_sources_now(modeladmin, request, queryset):
    sources = list(queryset.values_list("pk", flat=True))
    queued = sum(_queue(validate_source, [pk]) for pk in sources)
    modeladmin.message_user(
        request,
        f"Validation queued for the channels of {queued} data source(s).",
        messages.SUCCESS if queued == len(sources) else messages.ERROR,
    )


@admin.action(description="Validate now (flags, spike checks, derived channels, alarms)")
def validate_channels_now(modeladmin, request, queryset):
    channels = list(queryset.values_list("pk", flat=True))
    ok = _queue(validate_channels_task, [channels]) if channels else True
    modeladmin.message_user(
        request,
        f"Validation queued for {len(channels)} channel(s)." if ok else "The task queue is unreachable.",
        messages.SUCCESS if ok else messages.ERROR,
    )


def recent_runs_html(source) -> str:
    """The source's latest collection runs as a small table, with a link to all of them."""
    if source.pk is None:
        return "-"
    runs = list(CollectionRun.objects.filter(source=source)[:RECENT_RUNS])
    if not runs:
        return "no runs yet"
    colour: dict[str, str] = {
        RunStatus.SUCCESS: "#070",
        RunStatus.WARNING: "#a60",
        RunStatus.FAILED: "#b00",
        RunStatus.RUNNING: "#555",
    }
    rows = format_html_join(
        "",
        '<tr><td>{}</td><td>{}</td><td style="color:{}">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>'
        "<td>{}</td><td>{}</td></tr>",
        (
            (
                f"{run.started_at:%Y-%m-%d %H:%M:%S}",
                f"{(run.finished_at - run.started_at).total_seconds():.1f} s" if run.finished_at else "",
                colour.get(run.status, "#555"),
                run.get_status_display(),
                run.accepted,
                run.duplicates,
                run.conflicts,
                run.rejected,
                run.error[:300],
                run.note[:300],
            )
            for run in runs
        ),
    )
    link = reverse("admin:collection_collectionrun_changelist") + f"?source__id__exact={source.pk}"
    return format_html(
        "<table><thead><tr><th>Started (UTC)</th><th>Took</th><th>Status</th><th>Accepted</th><th>Duplicates</th>"
        "<th>Conflicts</th><th>Rejected</th><th>Error</th><th>Note</th></tr></thead><tbody>{}</tbody></table>"
        '<p><a href="{}">All runs of this source</a></p>',
        rows,
        link,
    )


# --- undoing mistakes: re-read a source, delete a channel's readings in a range (collection.services.corrections)


class RereadForm(forms.Form):
    start = forms.DateTimeField(
        required=False,
        label="From (UTC)",
        help_text="Empty: from the start of the files. Else each file from its first line stamped at or after it.",
        widget=forms.DateTimeInput(attrs={"placeholder": "2026-12-01 00:00:00"}),
    )
    replace = forms.BooleanField(
        required=False,
        label="Replace differing values",
        help_text="A value that differs from the one stored at its time replaces it (audited with the old value); "
        "unticked, it is kept in quarantine as a conflict.",
    )


def _changeable(request, queryset):
    """The selected objects the user may change (the admin lists what they may change already; checked again)."""
    return [obj for obj in queryset if permissions.has_perm(request.user, permissions.CHANGE, obj)]


def _reread(modeladmin, request, sources, start=None, replace=False) -> None:
    done, refused = [], []
    for source in sources:
        try:
            corrections.request_reread(source, start=start, replace=replace, **audit.origin(request))
        except corrections.CorrectionRefused as exc:
            refused.append(str(exc))
            continue
        done.append(source)
    queued = sum(_queue(collect_source, [s.pk]) for s in done if not s.waiting_for_channels)
    if done:
        since = "from the start" if start is None else f"from {start:%Y-%m-%d %H:%M:%S} UTC"
        how = ", replacing differing values" if replace else ""
        when = "queued now" if queued else "done by the next run"
        modeladmin.message_user(
            request,
            f"Re-read of {len(done)} source(s) asked for ({since}{how}): {when}. "
            "Readings already stored are counted as duplicates.",
            messages.SUCCESS,
        )
    for why in refused:
        modeladmin.message_user(request, why, messages.ERROR)


@admin.action(description="Re-read from the start")
def reread_from_start(modeladmin, request, queryset):
    """One click: every file of each selected source read again from its start (stored readings are duplicates)."""
    _reread(modeladmin, request, _changeable(request, queryset))


@admin.action(description="Re-read from a time, or replacing values…")
def reread_from_time(modeladmin, request, queryset):
    """A page asking from when, and whether differing values replace the stored ones; then the re-read."""
    sources = _changeable(request, queryset)
    form = RereadForm(request.POST if "apply" in request.POST else None)
    if "apply" in request.POST and form.is_valid():
        start = form.cleaned_data["start"]
        _reread(modeladmin, request, sources, start=start, replace=form.cleaned_data["replace"])
        return None
    return TemplateResponse(
        request,
        "admin/collection/reread.html",
        {
            **modeladmin.admin_site.each_context(request),
            "title": "Re-read data sources",
            "opts": modeladmin.model._meta,
            "form": form,
            "objects": sources,
            "refused": {s.pk: corrections.why_not_rereadable(s) for s in sources},
            "action": "reread_from_time",
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        },
    )


class DeleteReadingsForm(forms.Form):
    start = forms.DateTimeField(label="From (UTC, included)")
    end = forms.DateTimeField(label="To (UTC, excluded)")
    reason = forms.CharField(required=False, max_length=300, help_text="Kept in the audit trail.")

    def clean(self):
        data = super().clean() or {}
        if data.get("start") and data.get("end") and data["end"] <= data["start"]:
            raise forms.ValidationError("The end of the range must be after its start.")
        return data


@admin.action(description="Delete readings in a time range…")
def delete_readings_in_range(modeladmin, request, queryset):
    """Three steps on one page: the range; the count of what would go (nothing deleted yet); the deletion."""
    channels = _changeable(request, queryset)
    submitted = "range" in request.POST or "confirm" in request.POST
    form = DeleteReadingsForm(request.POST if submitted else None)
    plans = []
    if submitted and form.is_valid():
        start, end, reason = form.cleaned_data["start"], form.cleaned_data["end"], form.cleaned_data["reason"]
        if "confirm" in request.POST:
            deleted = 0
            for channel in channels:
                try:
                    plan = corrections.delete_channel_readings(
                        channel, start, end, reason=reason, **audit.origin(request)
                    )
                except corrections.CorrectionRefused as exc:
                    modeladmin.message_user(request, str(exc), messages.ERROR)
                    continue
                deleted += plan.count
            modeladmin.message_user(
                request,
                f"{deleted:,} reading(s) deleted from {len(channels)} channel(s) between {start:%Y-%m-%d %H:%M:%S} and "
                f"{end:%Y-%m-%d %H:%M:%S} UTC; tiers and derived channels are recomputed there.",
                messages.SUCCESS,
            )
            return None
        plans = [corrections.plan_deletion(channel, start, end) for channel in channels]
    return TemplateResponse(
        request,
        "admin/collection/delete_readings.html",
        {
            **modeladmin.admin_site.each_context(request),
            "title": "Delete readings in a time range",
            "opts": modeladmin.model._meta,
            "form": form,
            "objects": channels,
            "plans": plans,
            "total": sum(p.count for p in plans),
            "too_many": any(p.too_many for p in plans),
            "limit": settings.DAQBROKER_CORRECTION_MAX_READINGS,
            "action": "delete_readings_in_range",
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        },
    )


def reread_offer_html(source) -> str:
    """On a source's admin page: the channels added since it started reading, and the re-read in one click
    (a button that runs the "Re-read from the start" action on this source)."""
    if source.pk is None:
        return "-"
    if source.reread_requested_at is not None:
        return f"Re-read asked for at {source.reread_requested_at:%Y-%m-%d %H:%M:%S} UTC: done by the next run."
    if not source.rereadable:
        return corrections.why_not_rereadable(source).capitalize() + "."
    added = source.channels_added_since_read()
    changelist = reverse("admin:instruments_datasource_changelist")
    button = format_html(
        '<input type="hidden" name="index" value="0"><input type="hidden" name="{}" value="{}">'
        '<button type="submit" class="button" formaction="{}" name="action" value="reread_from_start">{}</button>',
        helpers.ACTION_CHECKBOX_NAME,
        source.pk,
        changelist,
        "Re-read from the start",
    )
    if added:
        return format_html(
            '<p style="color:#a60">{} channel(s) added after this source started reading ({}) have none of the lines '
            "read before. Re-read its files to give them those readings (stored readings count as duplicates).</p>{}",
            len(added),
            ", ".join(c.slug for c in added[:10]),
            button,
        )
    return format_html(
        "<p>Every file read again from its start (readings already stored count as duplicates). From a time, or "
        "replacing differing values: the action in the list.</p>{}",
        button,
    )
