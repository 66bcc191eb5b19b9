from django.contrib import admin, messages

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
from collection.services import corrections
from instruments.admin import ChannelAdmin, DataSourceAdmin
from instruments.models import Channel, DataSource


@admin.register(RejectedSample)
class RejectedSampleAdmin(admin.ModelAdmin):
    """Quarantine: what could not be stored and why. Read-only: it is evidence, not configuration."""

    list_display = (
        "received_at",
        "origin",
        "sender",
        "channel_ref",
        "channel",
        "raw_time",
        "short_value",
        "count",
        "reason",
    )
    list_filter = ("origin", "reason", "source")
    search_fields = ("channel_ref", "raw_value", "reason", "batch_id")
    date_hierarchy = "received_at"
    list_select_related = ("channel", "channel__instrument", "source", "sender_user", "sender_agent")

    @admin.display(description="Sender")
    def sender(self, rejected: RejectedSample) -> str:
        """The user or agent that uploaded it; a server collector's data source otherwise."""
        if rejected.sender_agent is not None:
            return f"agent {rejected.sender_agent}"
        if rejected.sender_user is not None:
            return str(rejected.sender_user)
        return f"source {rejected.source}" if rejected.source is not None else ""

    @admin.display(description="Raw value")
    def short_value(self, rejected: RejectedSample) -> str:
        return rejected.raw_value if len(rejected.raw_value) <= 60 else rejected.raw_value[:57] + "..."

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    actions = ("accept_conflicts",)

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
