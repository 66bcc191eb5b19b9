from django.contrib import admin

from collection.models import RejectedSample


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


# Alarm rules and events, spike checks, subscriptions, the notification outbox and collection runs.
from collection.alarms import admin as alarms_admin  # noqa: E402, F401
