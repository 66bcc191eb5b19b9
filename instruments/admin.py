from typing import Any, ClassVar
from urllib.parse import quote_plus

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Q
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.text import smart_split, unescape_string_literal
from guardian.admin import GuardedModelAdmin

from accounts import audit, permissions
from accounts.admin_mixins import FirstRowsInline, InstrumentScopedAdminMixin, RelatedOnly, SharingAdminMixin
from accounts.choices import AuditAction
from accounts.models import Agent
from instruments import runs, search
from instruments.forms import DataSourceForm
from instruments.models import (
    WAITING_FOR_CHANNELS,
    Channel,
    DataSource,
    Instrument,
    LogbookEntry,
    Run,
    RunColumn,
    RunList,
    channel_count_subquery,
    with_channel_counts,
)

COLLECTION_STATE = ("last_run_at", "last_success_at", "consecutive_failures", "next_run_at", "last_error", "cursor")


def agents_offered_to(user):
    """Agents a remote-agent source may name: the user's own, and any allowed to push to an instrument the
    user may change (so a co-editor keeps the owner's agent). ``DataSource.clean`` checks the instrument."""
    changeable = permissions.instruments_for(user, permissions.CHANGE)
    own = permissions.restrict(Agent.objects.all(), user, permissions.VIEW)
    return Agent.objects.filter(Q(pk__in=own.values("pk")) | Q(instruments__in=changeable)).distinct()


class DataSourceInline(FirstRowsInline, admin.StackedInline):
    model = DataSource
    extra = 0
    ordering = ("name",)
    rows_template = "admin/edit_inline/stacked.html"
    fields = (
        "name",
        "kind",
        "agent",
        "config",
        "interval_seconds",
        "enabled",
        "last_success_at",
        "consecutive_failures",
    )
    readonly_fields = ("last_success_at", "consecutive_failures")
    show_change_link = True
    form = DataSourceForm

    def more_url(self, parent) -> str:
        return f"{reverse('admin:instruments_datasource_changelist')}?instrument_q={quote_plus(parent.slug)}"

    def get_formset(self, request, obj=None, **kwargs):
        # Each source is checked by the one target check, for the person editing (accounts.targets).
        kwargs["form"] = DataSourceForm.for_principal(request.user, kwargs.get("form", self.form))
        return super().get_formset(request, obj, **kwargs)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "agent":
            kwargs["queryset"] = agents_offered_to(request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class ChannelInline(FirstRowsInline, admin.TabularInline):
    model = Channel
    extra = 0
    ordering = ("name",)
    shown = 25  # a row is a form of 4 KB here; the channel list shows 100 to a page
    fields = ("name", "slug", "kind", "units", "source", "source_field", "valid_min", "valid_max", "last_reading")
    readonly_fields = ("last_reading",)
    prepopulated_fields = {"slug": ("name",)}
    show_change_link = True

    @admin.display(description="Last reading")
    def last_reading(self, channel: Channel) -> str:
        return last_reading_text(channel)

    def more_url(self, parent) -> str:
        return f"{reverse('admin:instruments_channel_changelist')}?instrument_q={quote_plus(parent.slug)}"

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("instrument")  # each row's permission check reads it

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        # Offer only the sources of the instrument being edited, read once for every row (a field's queryset
        # is otherwise read again by each row's form).
        if db_field.name == "source":
            instrument_id = request.resolver_match.kwargs.get("object_id") if request.resolver_match else None
            kwargs["queryset"] = DataSource.objects.filter(instrument=instrument_id).select_related("instrument")
            field = super().formfield_for_foreignkey(db_field, request, **kwargs)
            if field is not None:
                field.choices = list(field.iterator(field))
            return field
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class LogbookInline(FirstRowsInline, admin.TabularInline):
    model = LogbookEntry
    extra = 0
    fields = ("occurred_at", "author", "text")
    ordering = ("-occurred_at", "-id")  # the newest

    def more_url(self, parent) -> str:
        return f"{reverse('admin:instruments_logbookentry_changelist')}?instrument_q={quote_plus(parent.slug)}"


def last_reading_text(channel: Channel) -> str:
    if channel.last_ts is None:
        return "never"
    value = channel.last_text if channel.kind == "text" else channel.last_value
    age = timezone.now() - channel.last_time
    return f"{value} {channel.units} ({int(age.total_seconds())} s ago)".replace("  ", " ")


@admin.register(Instrument)
# The ignore: django-stubs and guardian type change_form_template differently (str, str or list).
class InstrumentAdmin(InstrumentScopedAdminMixin, SharingAdminMixin, GuardedModelAdmin):  # type: ignore[misc]
    """Operators reach the instruments they may change; "Object permissions" shares through the service."""

    delete_level = permissions.SHARE
    ordering = ("name",)  # the channel count's GROUP BY drops the model's ordering (autocomplete pages)
    show_full_result_count = False
    list_display = ("name", "slug", "owner", "location", "active", "channel_count", "updated")
    list_filter = ("active", ("owner", RelatedOnly))
    search_fields = search.INSTRUMENT_FIELDS
    prepopulated_fields = {"slug": ("name",)}
    readonly_fields = ("created", "updated")
    autocomplete_fields = ("owner",)
    inlines = (DataSourceInline, ChannelInline, LogbookInline)
    actions = ("enable_collection", "disable_collection")
    fieldsets = (
        (None, {"fields": ("name", "slug", "owner", "active", "description")}),
        ("Where and who", {"fields": ("location", "latitude", "longitude", "contact_email")}),
        ("Data", {"fields": ("raw_retention_days",)}),
        ("History", {"fields": ("created", "updated"), "classes": ("collapse",)}),
    )

    def get_search_results(self, request, queryset, search_term):
        """The admin's search (each word in any of search_fields) through the engine's substring index
        (instruments.search): the channel form's instrument autocomplete asks it at every keystroke."""
        words = []
        for bit in smart_split(search_term):
            if bit.startswith(('"', "'")) and bit[0] == bit[-1]:
                bit = unescape_string_literal(bit)
            if bit:
                words.append(bit)
        if not words:
            return queryset, False
        return queryset.filter(search.instruments_matching(words, self.search_fields)), False

    def get_queryset(self, request):
        # A subquery per shown row, not a GROUP BY over every channel (the list's total count leaves it out).
        channels = channel_count_subquery("instrument")
        return super().get_queryset(request).select_related("owner").annotate(_channels=channels)

    def get_readonly_fields(self, request, obj=None):
        # Only administrators give an instrument to someone else; an Operator's new instrument is theirs.
        readonly = super().get_readonly_fields(request, obj)
        return readonly if permissions.is_administrator(request.user) else (*readonly, "owner")

    def save_model(self, request, obj, form, change):
        if not change and not permissions.is_administrator(request.user):
            obj.owner = request.user
        super().save_model(request, obj, form, change)

    @admin.display(description="Channels", ordering="_channels")
    def channel_count(self, instrument: Instrument) -> int:
        return instrument._channels  # type: ignore[attr-defined]  # annotated by get_queryset (a count)

    @admin.action(description="Enable collection of the selected instruments' sources")
    def enable_collection(self, request, queryset):
        count = DataSource.objects.filter(instrument__in=queryset).update(enabled=True, next_run_at=None)
        queryset.update(active=True)
        self.message_user(request, f"Collection enabled for {count} data source(s).", messages.SUCCESS)

    @admin.action(description="Disable collection of the selected instruments' sources")
    def disable_collection(self, request, queryset):
        count = DataSource.objects.filter(instrument__in=queryset).update(enabled=False)
        self.message_user(request, f"Collection disabled for {count} data source(s).", messages.SUCCESS)


@admin.register(DataSource)
class DataSourceAdmin(InstrumentScopedAdminMixin, admin.ModelAdmin):
    list_display = ("name", "instrument", "kind", "enabled", "interval_seconds", "health", "last_success_at")
    list_filter = ("kind", "enabled", "instrument")  # typed, not listed (accounts.admin_mixins.TypedFilter)
    search_fields = ("name", "instrument__name", "instrument__slug")
    list_select_related = ("instrument",)
    show_full_result_count = False
    # Typed as open tuples: collection.admin extends them.
    readonly_fields: ClassVar[tuple[str, ...]] = (
        "guided_setup",
        "collection_state",
        *COLLECTION_STATE,
        "created",
        "updated",
    )
    autocomplete_fields = ("instrument",)
    form = DataSourceForm
    actions: tuple[Any, ...] = ("enable_collection", "disable_collection")
    fieldsets: ClassVar[tuple[Any, ...]] = (
        (None, {"fields": ("guided_setup",)}),
        (None, {"fields": ("instrument", "name", "kind", "agent", "config", "interval_seconds", "enabled")}),
        ("Collection state", {"fields": ("collection_state", *COLLECTION_STATE)}),
        ("History", {"fields": ("created", "updated"), "classes": ("collapse",)}),
    )

    def get_form(self, request, obj=None, change=False, **kwargs):
        # Checked by the one target check, for the person editing (accounts.targets).
        form = super().get_form(request, obj, change=change, **kwargs)
        return DataSourceForm.for_principal(request.user, form)

    def get_queryset(self, request):
        # The instrument too: a source's name (in autocompletes, selects and lists) says its instrument's slug.
        return with_channel_counts(super().get_queryset(request)).select_related("instrument")

    @admin.display(description="Set up from a sample")
    def guided_setup(self, source: DataSource) -> str:
        """The "New data source" page: the same flow from the admin (docs/source-setup.md)."""
        if source.pk is None:
            return "Open the instrument's page and choose “New data source”: options and channels are proposed "
            "from a sample of the instrument's output, with a preview."
        if source.kind == "agent":
            return "-"
        url = reverse("instruments:source-edit", args=[source.instrument.slug, source.pk])
        return format_html('<a href="{}">Edit this source and its channels from a sample, with a preview</a>', url)

    @admin.display(description="State")
    def collection_state(self, source: DataSource) -> str:
        if source.pk is None:
            return "-"
        if source.waiting_for_channels:
            return format_html(
                '<span style="color:#a60">{}</span>: no channel takes a field from this source yet, so it is not '
                "read and its cursor does not move. Add its channels (Channel: source = this source); the next "
                "run reads the files from where they were.",
                WAITING_FOR_CHANNELS,
            )
        return source.collection_state

    @admin.display(description="Health")
    def health(self, source: DataSource) -> str:
        if not source.enabled:
            return "disabled"
        if source.waiting_for_channels:
            return format_html('<span style="color:#a60">{}</span>', WAITING_FOR_CHANNELS)
        if source.consecutive_failures:
            return format_html(
                '<span style="color:#b00" title="{}">failing x{}</span>',
                source.last_error[:500],
                source.consecutive_failures,
            )
        if source.last_success_at is None:
            return "not collected yet"
        return "ok"

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "agent":
            kwargs["queryset"] = agents_offered_to(request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.action(description="Enable collection")
    def enable_collection(self, request, queryset):
        count = queryset.update(enabled=True, next_run_at=None)
        self.message_user(request, f"Collection enabled for {count} data source(s).", messages.SUCCESS)

    @admin.action(description="Disable collection")
    def disable_collection(self, request, queryset):
        count = queryset.update(enabled=False)
        self.message_user(request, f"Collection disabled for {count} data source(s).", messages.SUCCESS)


@admin.register(Channel)
class ChannelAdmin(InstrumentScopedAdminMixin, admin.ModelAdmin):
    list_display = ("name", "instrument", "kind", "units", "source", "last_reading")
    # The instrument typed, not listed; units are searched (a filter would list every distinct unit, found by
    # reading every channel on each page view).
    list_filter = ("kind", "instrument")
    search_fields = ("name", "slug", "units", "description", "instrument__name", "instrument__slug")
    list_select_related = ("instrument", "source__instrument")  # a source's name says its instrument's slug
    # No second COUNT(*) over every channel for "n of N" beside a search or filter (docs/performance.md#the-admin).
    show_full_result_count = False
    prepopulated_fields = {"slug": ("name",)}
    readonly_fields = ("last_reading", "created", "updated")
    # Searched as one types: a select of every source would hold 10,000 of them.
    autocomplete_fields = ("instrument", "source")
    actions: tuple[Any, ...] = ("bulk_edit",)  # collection.admin extends it
    fieldsets = (
        (None, {"fields": ("instrument", "name", "slug", "kind", "units", "description")}),
        ("Where it comes from", {"fields": ("source", "source_field", "expression", "expected_interval_seconds")}),
        ("Validation", {"fields": ("valid_min", "valid_max", "missing_values")}),
        ("State", {"fields": ("last_reading", "created", "updated")}),
    )

    @admin.display(description="Last reading")
    def last_reading(self, channel: Channel) -> str:
        return last_reading_text(channel)

    @admin.action(description="Set units, valid range or sentinels of the selected channels")
    def bulk_edit(self, request, queryset):
        """One form for many channels; each is checked like its own form (units in one spelling, range ordered)
        and saved in one transaction, or none is; every change is in the audit trail."""
        form = ChannelBulkEditForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            fields = ("units", "valid_min", "valid_max", "missing_values")
            changes = {name: form.cleaned_data[name] for name in fields if form.cleaned_data.get(f"set_{name}")}
            if not changes:
                self.message_user(request, "Tick at least one field to set.", messages.WARNING)
            else:
                errors = self._apply_bulk(request, queryset, changes)
                if not errors:
                    self.message_user(request, f"{queryset.count()} channel(s) changed.", messages.SUCCESS)
                    return None
                for error in errors:
                    self.message_user(request, error, messages.ERROR)
        context = {
            **self.admin_site.each_context(request),
            "title": "Set units, valid range or sentinels",
            "channels": queryset,
            "form": form,
            "opts": self.model._meta,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/instruments/channel/bulk_edit.html", context)

    def _apply_bulk(self, request, queryset, changes: dict) -> list[str]:
        errors: list[str] = []
        with transaction.atomic():
            # Locked without the changelist's joins (PostgreSQL refuses FOR UPDATE on an outer join's side).
            for channel in Channel.objects.filter(
                pk__in=list(queryset.values_list("pk", flat=True))
            ).select_for_update():
                before = {name: getattr(channel, name) for name in changes}
                for name, value in changes.items():
                    setattr(channel, name, value)
                try:
                    channel.full_clean()
                except ValidationError as exc:
                    errors += [f"{channel}: {field}: {' '.join(m)}" for field, m in exc.message_dict.items()]
                    continue
                channel.save()
                diff = audit.diff(before, {name: getattr(channel, name) for name in changes})
                if diff:
                    audit.record(AuditAction.CONFIG_CHANGED, obj=channel, changes=diff, **audit.origin(request))
            if errors:
                transaction.set_rollback(True)
        return errors


class ChannelBulkEditForm(forms.Form):
    """The fields the bulk edit sets: only those ticked are changed (an empty value clears it)."""

    set_units = forms.BooleanField(required=False, label="Set units")
    units = forms.CharField(required=False, max_length=64, help_text='e.g. "degC"; empty for none')
    set_valid_min = forms.BooleanField(required=False, label="Set valid minimum")
    valid_min = forms.FloatField(required=False)
    set_valid_max = forms.BooleanField(required=False, label="Set valid maximum")
    valid_max = forms.FloatField(required=False)
    set_missing_values = forms.BooleanField(required=False, label="Set missing-value sentinels")
    missing_values = forms.CharField(required=False, help_text="comma-separated, e.g. -9999, -7999; empty for none")

    def clean_missing_values(self) -> list[float]:
        text = self.cleaned_data.get("missing_values") or ""
        try:
            return [float(part) for part in text.replace(";", ",").split(",") if part.strip()]
        except ValueError:
            raise ValidationError("Give numbers separated by commas, e.g. -9999, -7999.") from None


@admin.register(LogbookEntry)
class LogbookEntryAdmin(InstrumentScopedAdminMixin, admin.ModelAdmin):
    list_display = ("occurred_at", "instrument", "author", "short_text")
    list_filter = ("instrument",)  # typed, not listed
    search_fields = ("text", "instrument__name")
    date_hierarchy = "occurred_at"
    list_select_related = ("instrument", "author")
    autocomplete_fields = ("instrument",)

    @admin.display(description="Text")
    def short_text(self, entry: LogbookEntry) -> str:
        return entry.text if len(entry.text) <= 80 else entry.text[:77] + "..."

    readonly_fields = ("edited_by", "edited_at")

    def get_readonly_fields(self, request, obj=None):
        # Who wrote an entry is not for an editor to change.
        return (*self.readonly_fields, "author") if obj is not None else self.readonly_fields

    def save_model(self, request, obj, form, change):
        if not change and obj.author_id is None:
            obj.author = request.user
        if not change:
            super().save_model(request, obj, form, change)
            return
        before = {name: form.initial.get(name) for name in form.changed_data}
        obj.edited_by, obj.edited_at = request.user, timezone.now()
        with transaction.atomic():  # the change and its audit event stand or fall together
            super().save_model(request, obj, form, change)
            changes = audit.diff(before, {name: form.cleaned_data.get(name) for name in form.changed_data})
            audit.record(AuditAction.CONFIG_CHANGED, obj=obj, changes=changes, **audit.origin(request))


# --- run lists (docs/runs.md) ---------------------------------------------------------------------------


class RunColumnInline(admin.TabularInline):
    model = RunColumn
    extra = 0
    fields = ("position", "name", "kind", "units", "choices", "required")


class RunInline(FirstRowsInline, admin.TabularInline):
    """The latest runs, read-only: runs start and stop through the actions (and the page, API, agent)."""

    model = Run
    extra = 0
    max_num = 0
    can_delete = False
    fields = ("label", "start", "end", "parameters", "summary", "started_by")
    readonly_fields = fields
    show_change_link = True

    def get_queryset(self, request):
        return super().get_queryset(request).order_by("-number", "-stage")

    def more_url(self, parent) -> str:
        return f"{reverse('admin:instruments_run_changelist')}?run_list__id__exact={parent.pk}"


class RunListAdmin(InstrumentScopedAdminMixin, admin.ModelAdmin):
    """Operators reach the run lists they may change; starting and stopping runs are actions here."""

    delete_level = permissions.SHARE
    list_display = ("name", "slug", "owner", "active_run", "updated")
    list_filter = (("owner", RelatedOnly),)
    search_fields = ("name", "slug", "description")
    prepopulated_fields = {"slug": ("name",)}
    readonly_fields = ("created", "updated")
    filter_horizontal = ("instruments",)
    inlines = (RunColumnInline, RunInline)
    actions = ("start_next_run", "stop_active_run")

    def get_readonly_fields(self, request, obj=None):
        readonly = super().get_readonly_fields(request, obj)
        return readonly if permissions.is_administrator(request.user) else (*readonly, "owner")

    def save_model(self, request, obj, form, change):
        if not change and not permissions.is_administrator(request.user):
            obj.owner = request.user
        before = {name: form.initial.get(name) for name in form.changed_data}
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            after = {name: form.cleaned_data.get(name) for name in form.changed_data}
            action = AuditAction.CONFIG_CHANGED if change else AuditAction.CONFIG_CREATED
            audit.record(action, obj=obj, changes=audit.diff(before, after), **audit.origin(request))

    def save_related(self, request, form, formsets, change):
        # The form offers only the instruments this user may change; keep the others attached.
        kept = list(form.instance.instruments.exclude(pk__in=form.fields["instruments"].queryset)) if change else []
        super().save_related(request, form, formsets, change)
        if kept:
            form.instance.instruments.add(*kept)

    def save_formset(self, request, form, formset, change):
        # The columns (inline) are configuration too: their changes are audited with the run list.
        if formset.model is not RunColumn:
            return super().save_formset(request, form, formset, change)
        before = [(c.name, c.kind, c.units, c.choices, c.required) for c in form.instance.columns.all()]
        with transaction.atomic():
            result = super().save_formset(request, form, formset, change)
            after = [(c.name, c.kind, c.units, c.choices, c.required) for c in form.instance.columns.all()]
            if before != after:
                audit.record(
                    AuditAction.CONFIG_CHANGED,
                    obj=form.instance,
                    changes={"columns": [before, after]},
                    **audit.origin(request),
                )
        return result

    @admin.display(description="Active run")
    def active_run(self, run_list: RunList) -> str:
        run = runs.active_run(run_list)
        return run.label if run else "—"

    @admin.action(description="Start the next run of the selected run lists (the last run's parameters)")
    def start_next_run(self, request, queryset):
        for run_list in queryset:
            last = Run.objects.filter(run_list=run_list).order_by("-start").first()
            try:
                run, _ = runs.start_run(run_list, parameters=last.parameters if last else {}, **audit.origin(request))
            except (ValidationError, PermissionDenied) as exc:
                self.message_user(request, f"{run_list}: {'; '.join(_messages(exc))}", messages.ERROR)
            else:
                self.message_user(request, f"{run_list}: run {run.label} started.", messages.SUCCESS)

    @admin.action(description="Stop the active run of the selected run lists")
    def stop_active_run(self, request, queryset):
        for run_list in queryset:
            try:
                run = runs.stop_run(run_list, **audit.origin(request))
            except (ValidationError, PermissionDenied) as exc:
                self.message_user(request, f"{run_list}: {'; '.join(_messages(exc))}", messages.ERROR)
                continue
            text = f"run {run.label} stopped" if run else "no run was active"
            self.message_user(request, f"{run_list}: {text}.", messages.SUCCESS if run else messages.INFO)


def _messages(exc: Exception) -> list[str]:
    if isinstance(exc, ValidationError):
        return (
            [f"{k}: {', '.join(v)}" for k, v in exc.message_dict.items()]
            if hasattr(exc, "error_dict")
            else exc.messages
        )
    return [str(exc)]


class RunAdminForm(forms.ModelForm):
    """Checks what ``update_run`` checks, so a refusal is a form error rather than a failed save."""

    class Meta:
        model = Run
        fields = ("start", "end", "parameters", "summary")

    def clean_parameters(self):
        try:
            return runs.parse_parameters(self.instance.run_list, self.cleaned_data.get("parameters") or {})
        except ValidationError as exc:
            raise ValidationError(_messages(exc)) from None

    def clean(self):
        cleaned = super().clean() or {}
        if (
            "end" in cleaned
            and cleaned["end"] is None
            and Run.objects.filter(run_list=self.instance.run_list, end__isnull=True)
            .exclude(pk=self.instance.pk)
            .exists()
        ):
            self.add_error("end", "Another run of this list is active; only one may be.")
        return cleaned


class RunAdmin(InstrumentScopedAdminMixin, admin.ModelAdmin):
    """Editing a past run's times, parameters or summary goes through ``instruments.runs.update_run`` (audited)."""

    list_display = ("run_list", "label", "start", "end", "started_by")
    list_filter = (("run_list", RelatedOnly),)
    search_fields = ("summary", "run_list__name")
    list_select_related = ("run_list",)
    form = RunAdminForm
    fields = ("run_list", "number", "stage", "start", "end", "parameters", "summary", "started_by")
    readonly_fields = ("run_list", "number", "stage", "started_by")

    def has_add_permission(self, request) -> bool:
        return False  # runs are started (actions, pages, API, agent), never typed in

    def save_model(self, request, obj, form, change):
        changes = {name: form.cleaned_data[name] for name in form.changed_data if name in runs.EDITABLE}
        stored = Run.objects.get(pk=obj.pk)
        runs.update_run(stored, changes, **audit.origin(request))


admin.site.register(RunList, RunListAdmin)
admin.site.register(Run, RunAdmin)
