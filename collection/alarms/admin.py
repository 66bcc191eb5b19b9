"""Admin pages for spike checks, alarm rules, events (with acknowledgement), subscriptions, the
notification outbox and collection runs. Instrument-bound pages show each operator only what they may
change (``accounts.admin_mixins``)."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.utils.html import format_html

from accounts import permissions
from accounts.admin_mixins import InstrumentScopedAdminMixin
from collection.alarms.evaluate import acknowledge
from collection.alarms.models import (
    AlarmEvent,
    AlarmNotification,
    AlarmRule,
    AlarmSubscription,
    ChannelSelection,
    SpikeCheck,
)
from collection.models import CollectionRun

SELECTION = ("instrument", "channel_pattern", "units", "channels")


class SelectionForm(forms.ModelForm):
    """Refuses a rule that selects no channel (the channels list is only known here, before it is saved)."""

    def clean(self):
        cleaned = super().clean()
        assert cleaned is not None  # a ModelForm's clean() returns its cleaned_data
        if not any(cleaned.get(name) for name in SELECTION):
            raise forms.ValidationError(ChannelSelection.NO_SELECTOR)
        return cleaned


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(AlarmRule)
class AlarmRuleAdmin(InstrumentScopedAdminMixin, admin.ModelAdmin):
    form = SelectionForm
    list_display = ("name", "kind", "severity", "condition", "selection", "enabled", "active_events")
    list_filter = ("enabled", "kind", "severity", "instrument")
    search_fields = ("name", "channel_pattern", "units", "instrument__name")
    autocomplete_fields = ("instrument",)
    filter_horizontal = ("channels",)
    actions = ("enable", "disable")
    fieldsets = (
        (None, {"fields": ("name", "enabled", "kind", "severity")}),
        ("Condition", {"fields": ("threshold", "hysteresis", "min_duration_seconds", "stale_factor")}),
        (
            "Channels (all selectors given must match)",
            {"fields": SELECTION},
        ),
        ("Notifications", {"fields": ("notify_contacts", "extra_emails", "webhook_url", "webhook_secret")}),
    )

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "webhook_url":
            kwargs["assume_scheme"] = "https"
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    @admin.display(description="Condition")
    def condition(self, rule: AlarmRule) -> str:
        return rule.describe() if rule.kind == "stale" or rule.threshold is not None else "-"

    @admin.display(description="Applies to")
    def selection(self, rule: AlarmRule) -> str:
        return rule.selection_text()

    @admin.display(description="Active")
    def active_events(self, rule: AlarmRule) -> int:
        return rule.events.filter(cleared_at__isnull=True).count()

    @admin.action(description="Enable the selected rules")
    def enable(self, request, queryset):
        self.message_user(request, f"{queryset.update(enabled=True)} rule(s) enabled.", messages.SUCCESS)

    @admin.action(description="Disable the selected rules")
    def disable(self, request, queryset):
        self.message_user(request, f"{queryset.update(enabled=False)} rule(s) disabled.", messages.SUCCESS)


@admin.register(SpikeCheck)
class SpikeCheckAdmin(InstrumentScopedAdminMixin, admin.ModelAdmin):
    form = SelectionForm
    list_display = ("name", "threshold", "selection", "enabled")
    list_filter = ("enabled", "instrument")
    autocomplete_fields = ("instrument",)
    filter_horizontal = ("channels",)
    fields = ("name", "enabled", "threshold", *SELECTION)

    @admin.display(description="Applies to")
    def selection(self, check: SpikeCheck) -> str:
        return check.selection_text()


class ActiveFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("cleared", "Cleared"), ("unacknowledged", "Not acknowledged")]

    def queryset(self, request, queryset):
        if self.value() == "active":
            return queryset.filter(cleared_at__isnull=True)
        if self.value() == "cleared":
            return queryset.filter(cleared_at__isnull=False)
        if self.value() == "unacknowledged":
            return queryset.filter(acknowledged_at__isnull=True)
        return queryset


class NotificationInline(admin.TabularInline):
    model = AlarmNotification
    extra = 0
    can_delete = False
    fields = ("transition", "medium", "recipients", "status", "attempts", "sent_at", "last_error")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(AlarmEvent)
class AlarmEventAdmin(InstrumentScopedAdminMixin, ReadOnlyAdmin):
    """Raised and cleared alarms. Read-only but for acknowledgement (the action)."""

    admin_level = permissions.VIEW
    list_display = ("raised_at", "state", "severity", "channel", "rule", "raised_value", "cleared_at", "acknowledged")
    list_filter = (ActiveFilter, "severity", "kind", "rule", "channel__instrument")
    search_fields = ("message", "channel__name", "channel__slug", "rule__name")
    date_hierarchy = "raised_at"
    list_select_related = ("channel", "channel__instrument", "rule", "acknowledged_by")
    readonly_fields = (
        "message",
        "rule",
        "channel",
        "kind",
        "severity",
        "condition_since",
        "raised_at",
        "raised_value",
        "cleared_at",
        "cleared_value",
        "acknowledged_at",
        "acknowledged_by",
    )
    fields = readonly_fields
    inlines = (NotificationInline,)
    actions = ("acknowledge",)

    @admin.display(description="State")
    def state(self, event: AlarmEvent) -> str:
        if event.active:
            return format_html('<strong style="color:#b00">{}</strong>', "active")
        return "cleared"

    @admin.display(description="Acknowledged", boolean=False)
    def acknowledged(self, event: AlarmEvent) -> str:
        if event.acknowledged_at is None:
            return "-"
        return f"{event.acknowledged_by or 'someone'} at {event.acknowledged_at:%Y-%m-%d %H:%M}"

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def get_actions(self, request):
        # Actions need a change permission in Django's admin; acknowledging needs only to see the event.
        actions = super().get_actions(request)
        if "acknowledge" not in actions:
            actions["acknowledge"] = self.get_action("acknowledge")
        return actions

    @admin.action(description="Acknowledge the selected alarms")
    def acknowledge(self, request, queryset):
        count = acknowledge(list(queryset), request.user)
        self.message_user(request, f"{count} alarm(s) acknowledged.", messages.SUCCESS)


@admin.register(AlarmSubscription)
class AlarmSubscriptionAdmin(InstrumentScopedAdminMixin, admin.ModelAdmin):
    admin_level = permissions.VIEW
    list_display = ("user", "instrument", "created")
    list_filter = ("instrument",)
    autocomplete_fields = ("instrument", "user")

    def get_changeform_initial_data(self, request):
        return {"user": request.user.pk, **super().get_changeform_initial_data(request)}


@admin.register(AlarmNotification)
class AlarmNotificationAdmin(ReadOnlyAdmin):
    """The notification outbox: what was sent to whom, or why not. Administrators only."""

    list_display = ("created", "event", "transition", "medium", "status", "attempts", "sent_at", "last_error")
    list_filter = ("status", "medium", "transition")
    list_select_related = ("event", "event__rule", "event__channel")

    def has_module_permission(self, request) -> bool:
        return permissions.is_administrator(request.user)

    def has_view_permission(self, request, obj=None) -> bool:
        return permissions.is_administrator(request.user)


@admin.register(CollectionRun)
class CollectionRunAdmin(InstrumentScopedAdminMixin, ReadOnlyAdmin):
    """Every collection run: when, how long, what it stored, and why it failed."""

    admin_level = permissions.VIEW
    list_display = (
        "started_at",
        "source",
        "status",
        "took",
        "accepted",
        "duplicates",
        "conflicts",
        "rejected",
        "short_error",
        "short_note",
    )
    list_filter = ("status", "source__kind", "source")
    search_fields = ("source__name", "source__instrument__name", "error", "note", "worker")
    date_hierarchy = "started_at"
    list_select_related = ("source", "source__instrument")
    readonly_fields = (
        "source",
        "started_at",
        "finished_at",
        "status",
        "accepted",
        "duplicates",
        "conflicts",
        "rejected",
        "worker",
        "error",
        "note",
    )

    @admin.display(description="Took")
    def took(self, run: CollectionRun) -> str:
        return f"{(run.finished_at - run.started_at).total_seconds():.1f} s" if run.finished_at else "-"

    @admin.display(description="Error")
    def short_error(self, run: CollectionRun) -> str:
        return run.error if len(run.error) <= 80 else run.error[:77] + "..."

    @admin.display(description="Note")
    def short_note(self, run: CollectionRun) -> str:
        return run.note if len(run.note) <= 80 else run.note[:77] + "..."
