"""What the data source and channel admin pages gain from collection: "collect now", "validate now", and
the recent collection runs shown beside each source (``collection.admin`` adds them to the registry's admin)."""

from __future__ import annotations

from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from collection.alarms.tasks import validate_channels_task, validate_source
from collection.choices import RunStatus
from collection.models import CollectionRun
from collection.tasks import collect_source
from instruments.choices import SourceKind
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
    collected = list(with_channel_counts(queryset.exclude(kind=SourceKind.AGENT)))
    waiting = [source.name for source in collected if source.waiting_for_channels]
    sources = [source.pk for source in collected if not source.waiting_for_channels]
    queued = sum(_queue(collect_source, [pk]) for pk in sources)
    skipped = queryset.count() - len(sources) - len(waiting)
    message = f"Collection queued for {queued} data source(s)."
    if skipped:
        message += f" {skipped} agent source(s) skipped: agents push their readings."
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
