from django.contrib import admin

from accounts.admin_mixins import typed_filter
from collection.admin_actions import collect_now, recent_runs_html, validate_channels_now, validate_sources_now
from collection.models import RejectedSample
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
    list_filter = ("origin", "reason", typed_filter("source", DataSource))  # typed: 10,000 sources are no list
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


# The registry's source and channel admin pages, with what collection adds to them: "collect now", "validate now" and
# the recent collection runs. Registered here, not in instruments.admin, because the registry never imports collection.
admin.site.unregister(DataSource)
admin.site.unregister(Channel)


@admin.register(DataSource)
class CollectedDataSourceAdmin(DataSourceAdmin):
    readonly_fields = (*DataSourceAdmin.readonly_fields, "recent_runs")
    actions = (*DataSourceAdmin.actions, collect_now, validate_sources_now)
    fieldsets = (
        *DataSourceAdmin.fieldsets[:-1],
        ("Recent collection runs", {"fields": ("recent_runs",)}),
        DataSourceAdmin.fieldsets[-1],
    )

    @admin.display(description="Runs")
    def recent_runs(self, source: DataSource) -> str:
        return recent_runs_html(source)


@admin.register(Channel)
class CollectedChannelAdmin(ChannelAdmin):
    actions = (*ChannelAdmin.actions, validate_channels_now)


# Alarm rules and events, spike checks, subscriptions, the notification outbox and collection runs.
from collection.alarms import admin as alarms_admin  # noqa: E402, F401
