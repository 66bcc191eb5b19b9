import json

from django.contrib import admin, messages
from django.http import StreamingHttpResponse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from accounts import audit
from collection.admin_actions import (
    collect_now,
    delete_readings_in_range,
    recent_runs_html,
    reread_from_start,
    reread_from_time,
    reread_offer_html,
    validate_channels_now,
    validate_sources_now,
)
from collection.models import RejectedSample
from collection.services import corrections, quarantine
from instruments.admin import ChannelAdmin, DataSourceAdmin
from instruments.models import Channel, DataSource


class _CountedFilter(admin.SimpleListFilter):
    """A list filter whose choices carry their number of records (within the other filters chosen)."""

    field = ""

    def choices_with_counts(self, request, model_admin) -> list[tuple[str, str]]:
        raise NotImplementedError

    def lookups(self, request, model_admin):
        return self.choices_with_counts(request, model_admin)

    def queryset(self, request, queryset):
        return queryset.filter(**{self.field: self.value()}) if self.value() else queryset


class KindFilter(_CountedFilter):
    title = "kind"
    parameter_name = "kind"
    field = "kind"

    def choices_with_counts(self, request, model_admin):
        records = model_admin.get_queryset(request)
        return [(k["kind"], f"{k['label']} ({k['records']:,})") for k in quarantine.kind_counts(records)]


class SourceFilter(_CountedFilter):
    title = "data source"
    parameter_name = "source"
    field = "source_id"

    def choices_with_counts(self, request, model_admin):
        records = model_admin.get_queryset(request)
        totals: dict[int | None, list] = {}
        for row in quarantine.source_counts(records):
            name = f"{row['instrument_name']} · {row['source_name']}" if row["instrument_name"] else row["source_name"]
            totals.setdefault(row["source"], [name, 0])[1] += row["records"]
        return [(str(pk), f"{name} ({n:,})") for pk, (name, n) in totals.items() if pk is not None]


@admin.action(description="Replay through the source's current configuration")
def replay_selected(modeladmin, request, queryset):
    outcome = quarantine.replay(queryset, actor=request.user, address=audit.origin(request)["address"])
    modeladmin.message_user(request, outcome.summary(), messages.SUCCESS if outcome.records else messages.WARNING)


@admin.action(description="Dry run: what a replay would do (nothing is changed)")
def dry_run_selected(modeladmin, request, queryset):
    outcome = quarantine.replay(queryset, actor=request.user, dry_run=True)
    modeladmin.message_user(request, outcome.summary(), messages.INFO)


@admin.action(description="Export the selected records as CSV")
def export_selected(modeladmin, request, queryset):
    response = StreamingHttpResponse(quarantine.export_csv(queryset), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="quarantine.csv"'
    return response


@admin.register(RejectedSample)
class RejectedSampleAdmin(admin.ModelAdmin):
    """Quarantine: what could not be stored and why. Read-only evidence; replayed (through the source's
    current configuration and the one write path) once the cause is fixed. docs/quarantine.md."""

    # Three columns, so the reason and the raw line have room beside the admin's navigation and filters.
    list_display = ("kind_and_time", "source_and_where", "reason_shown")
    list_display_links = ("kind_and_time",)
    list_filter = (KindFilter, SourceFilter, "origin")
    search_fields = ("channel_ref", "raw_value", "reason", "batch_id")
    date_hierarchy = "received_at"
    list_select_related = (
        "channel",
        "channel__instrument",
        "source",
        "source__instrument",
        "sender_user",
        "sender_agent",
    )
    actions = (replay_selected, dry_run_selected, export_selected, "accept_conflicts")
    fieldsets = (
        (None, {"fields": ("kind_shown", "reason", "received_at", "origin", "count")}),
        (
            "Where it came from",
            {"fields": ("source_shown", "where_shown", "channel", "channel_ref", "sender", "batch_id")},
        ),
        ("As received", {"fields": ("raw_time", "raw_block", "config_then")}),
        ("With the source's configuration now", {"fields": ("parsed_now", "config_now", "replayable")}),
        ("Context", {"fields": ("context_block",)}),
    )
    readonly_fields = (
        "kind_shown",
        "source_shown",
        "where_shown",
        "sender",
        "raw_block",
        "parsed_now",
        "config_then",
        "config_now",
        "replayable",
        "context_block",
    )

    class Media:
        css = {"all": ("css/quarantine_admin.css",)}

    @admin.display(description="Kind, received", ordering="-received_at")
    def kind_and_time(self, rejected: RejectedSample) -> str:
        when = timezone.localtime(rejected.received_at).strftime("%Y-%m-%d %H:%M:%S")
        return format_html('{}<div class="q-when">{}</div>', self.kind_shown(rejected), when)

    @admin.display(description="Source, file and line (or sender)")
    def source_and_where(self, rejected: RejectedSample) -> str:
        return format_html('{}<div class="q-where">{}</div>', self.source_shown(rejected), self.where_shown(rejected))

    @admin.display(description="Kind", ordering="kind")
    def kind_shown(self, rejected: RejectedSample) -> str:
        return format_html('<span class="q-kind q-kind-{}">{}</span>', rejected.kind, rejected.get_kind_display())

    @admin.display(description="Source")
    def source_shown(self, rejected: RejectedSample) -> str:
        if rejected.source is not None:
            return f"{rejected.source.instrument.name} · {rejected.source.name}"
        if rejected.channel is not None:
            return f"{rejected.channel.instrument.name} · {rejected.channel.name}"
        return "(none)"

    @admin.display(description="File and line, or sender")
    def where_shown(self, rejected: RejectedSample) -> str:
        where = rejected.where()
        sender = self.sender(rejected)
        if sender and not rejected.source_id:
            return f"{where} ({sender})" if where else sender
        return where

    @admin.display(description="Sender")
    def sender(self, rejected: RejectedSample) -> str:
        """The user or agent that uploaded it; a server collector's data source otherwise."""
        if rejected.sender_agent is not None:
            return f"agent {rejected.sender_agent}"
        if rejected.sender_user is not None:
            return str(rejected.sender_user)
        return ""

    @admin.display(description="Raw line or value (blanks and control characters shown)")
    def preview_shown(self, rejected: RejectedSample) -> str:
        return format_html('<code class="q-preview" title="{}">{}</code>', rejected.preview(400), rejected.preview(80))

    @admin.display(description="Reason; raw line or value")
    def reason_shown(self, rejected: RejectedSample) -> str:
        short = rejected.reason if len(rejected.reason) <= 120 else rejected.reason[:119] + "…"
        count = f" ({rejected.count:,} readings)" if rejected.count != 1 else ""
        return format_html(
            '<span title="{}">{}{}</span><div>{}</div>', rejected.reason, short, count, self.preview_shown(rejected)
        )

    @admin.display(description="Raw")
    def raw_block(self, rejected: RejectedSample) -> str:
        return format_html(
            '<pre class="q-raw q-line">{}</pre><div class="help">Shown visibly ({} characters):</div>'
            '<pre class="q-raw">{}</pre>',
            rejected.raw_value,
            f"{len(rejected.raw_value):,}",
            rejected.preview(limit=4000),
        )

    @admin.display(description="Parsed now")
    def parsed_now(self, rejected: RejectedSample) -> str:
        preview = quarantine.parse_preview(rejected)
        if not preview:
            return "(a single reading, not a line: replayed at its time with its value)"
        if "error" in preview:
            return preview["error"]
        rows = format_html_join("", "<tr><th>{}</th><td><code>{}</code></td></tr>", preview["fields"].items())
        return format_html('<table class="q-fields"><tr><th>time</th><td>{}</td></tr>{}</table>', preview["time"], rows)

    @admin.display(description="Source configuration now")
    def config_now(self, rejected: RejectedSample) -> str:
        source = rejected.source
        if source is None:
            return "(no data source)"
        then = quarantine.config_when_set_aside(rejected)
        changed = (
            " (unchanged since this was set aside)"
            if then == source.config
            else " (changed since this was set aside)"
            if then is not None
            else ""
        )
        text = json.dumps(source.config, indent=2, sort_keys=True)
        return format_html('<pre class="q-raw">{}</pre><div class="help">{}{}</div>', text, source.name, changed)

    @admin.display(description="Source configuration when set aside")
    def config_then(self, rejected: RejectedSample) -> str:
        then = quarantine.config_when_set_aside(rejected)
        if then is None:
            return "(not kept: set aside before configurations were kept, or not from a data source)"
        return format_html('<pre class="q-raw">{}</pre>', json.dumps(then, indent=2, sort_keys=True))

    @admin.display(description="Replay")
    def replayable(self, rejected: RejectedSample) -> str:
        return quarantine.why_not_replayable(rejected) or "can be replayed (select it in the list, then the action)"

    @admin.display(description="Context")
    def context_block(self, rejected: RejectedSample) -> str:
        return format_html('<pre class="q-raw">{}</pre>', json.dumps(rejected.context, indent=2, sort_keys=True))

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(description="Accept the new value of selected conflicts (it replaces the stored one)")
    def accept_conflicts(self, request, queryset):
        """A quarantined conflict's value replaces the stored one (audited with the value it replaces), and
        the record leaves the quarantine. Records that are not conflicts are left alone."""
        accepted, skipped = corrections.accept_conflicts(queryset, **audit.origin(request))
        message = f"{accepted} conflict(s) accepted: their values replace the stored ones."
        if skipped:
            message += f" {skipped} record(s) left alone (not a conflict, or their channel is gone)."
        self.message_user(request, message, messages.SUCCESS if accepted else messages.WARNING)


# The registry's source and channel admin pages, with what collection adds to them: "collect now", "validate now" and
# the recent collection runs. Registered here, not in instruments.admin, because the registry never imports collection.
admin.site.unregister(DataSource)
admin.site.unregister(Channel)


@admin.register(DataSource)
class CollectedDataSourceAdmin(DataSourceAdmin):
    readonly_fields = (*DataSourceAdmin.readonly_fields, "recent_runs", "reread")
    actions = (*DataSourceAdmin.actions, collect_now, validate_sources_now, reread_from_start, reread_from_time)
    fieldsets = (
        *DataSourceAdmin.fieldsets[:-1],
        ("Recent collection runs", {"fields": ("recent_runs",)}),
        ("Re-read", {"fields": ("reread",)}),
        DataSourceAdmin.fieldsets[-1],
    )

    @admin.display(description="Runs")
    def recent_runs(self, source: DataSource) -> str:
        return recent_runs_html(source)

    @admin.display(description="Re-read")
    def reread(self, source: DataSource) -> str:
        return reread_offer_html(source)


@admin.register(Channel)
class CollectedChannelAdmin(ChannelAdmin):
    actions = (*ChannelAdmin.actions, validate_channels_now, delete_readings_in_range)


# Alarm rules and events, spike checks, subscriptions, the notification outbox and collection runs.
from collection.alarms import admin as alarms_admin  # noqa: E402, F401
