"""What the data source and channel admin pages gain from collection: "collect now", "validate now", and
the recent collection runs shown beside each source (``instruments.admin`` uses these)."""

from __future__ import annotations

from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from collection.choices import RunStatus
from collection.models import CollectionRun
from instruments.choices import SourceKind

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
    from collection.tasks import collect_source

    sources = list(queryset.exclude(kind=SourceKind.AGENT).values_list("pk", flat=True))
    queued = sum(_queue(collect_source, [pk]) for pk in sources)
    skipped = queryset.count() - len(sources)
    message = f"Collection queued for {queued} data source(s)."
    if skipped:
        message += f" {skipped} agent source(s) skipped: agents push their readings."
    if queued < len(sources):
        modeladmin.message_user(request, "The task queue is unreachable: is Redis running?", messages.ERROR)
    modeladmin.message_user(request, message, messages.SUCCESS if queued else messages.WARNING)


@admin.action(description="Validate now (flags, spike checks, derived channels, alarms)")
def validate_sources_now(modeladmin, request, queryset):
    from collection.alarms.tasks import validate_source

    sources = list(queryset.values_list("pk", flat=True))
    queued = sum(_queue(validate_source, [pk]) for pk in sources)
    modeladmin.message_user(
        request,
        f"Validation queued for the channels of {queued} data source(s).",
        messages.SUCCESS if queued == len(sources) else messages.ERROR,
    )


@admin.action(description="Validate now (flags, spike checks, derived channels, alarms)")
def validate_channels_now(modeladmin, request, queryset):
    from collection.alarms.tasks import validate_channels_task

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
    colour = {RunStatus.SUCCESS: "#070", RunStatus.FAILED: "#b00", RunStatus.RUNNING: "#555"}
    rows = format_html_join(
        "",
        '<tr><td>{}</td><td>{}</td><td style="color:{}">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>'
        "<td>{}</td></tr>",
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
            )
            for run in runs
        ),
    )
    link = reverse("admin:collection_collectionrun_changelist") + f"?source__id__exact={source.pk}"
    return format_html(
        "<table><thead><tr><th>Started (UTC)</th><th>Took</th><th>Status</th><th>Accepted</th><th>Duplicates</th>"
        "<th>Conflicts</th><th>Rejected</th><th>Error</th></tr></thead><tbody>{}</tbody></table>"
        '<p><a href="{}">All runs of this source</a></p>',
        rows,
        link,
    )
