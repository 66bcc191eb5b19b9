"""The admin's side of the permission module: what a staff Operator reaches, and sharing through the
one sharing service.

``InstrumentScopedAdminMixin`` goes first in the bases of every ModelAdmin over instruments or their
parts: non-administrators list, open and pick (in foreign keys, many-to-many fields, autocompletes and
list filters) only what they may change; deleting an instrument takes the ``share`` level.
``SharingAdminMixin`` replaces django-guardian's free-form object-permission form by one level choice saved with
``accounts.services.share``/``unshare``, so admin sharing is checked and audited like the API's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import NotRelationField, get_fields_from_path, unquote
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured, PermissionDenied
from django.db.models import Q
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse

from accounts import audit, permissions, services
from accounts.choices import ShareLevel
from instruments.models import Channel, DataSource, Instrument

if TYPE_CHECKING:
    # What the mixins extend, for the type checker only: at run time they are plain mixins.
    from guardian.admin import GuardedModelAdminMixin

    _ScopedBase = admin.ModelAdmin
    _InlineBase = admin.options.InlineModelAdmin

    # The two stubs type change_form_template differently (a str, a str or list); guardian's wins at run time.
    class _SharingBase(GuardedModelAdminMixin, admin.ModelAdmin): ...  # type: ignore[misc]
else:
    _ScopedBase = _SharingBase = _InlineBase = object


def _is_scoped(model) -> bool:
    try:
        permissions.instrument_paths(model)
    except ImproperlyConfigured:
        return False
    return True


class InstrumentScopedAdminMixin(_ScopedBase):
    admin_level = permissions.CHANGE
    delete_level = permissions.CHANGE

    def get_queryset(self, request):
        return permissions.restrict(super().get_queryset(request), request.user, self.admin_level)

    def _may(self, request, obj, level) -> bool:
        return obj is None or permissions.has_perm(request.user, level, obj)

    def has_view_permission(self, request, obj=None) -> bool:
        return super().has_view_permission(request, obj) and self._may(request, obj, self.admin_level)

    def has_change_permission(self, request, obj=None) -> bool:
        return super().has_change_permission(request, obj) and self._may(request, obj, self.admin_level)

    def has_delete_permission(self, request, obj=None) -> bool:
        return super().has_delete_permission(request, obj) and self._may(request, obj, self.delete_level)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        related = db_field.related_model
        if "queryset" not in kwargs and _is_scoped(related):
            kwargs["queryset"] = permissions.restrict(related._default_manager.all(), request.user, permissions.CHANGE)
            if related is Instrument and db_field.null and not permissions.is_administrator(request.user):
                # "Any instrument" (an empty instrument) is for administrators: others could not see what
                # they made, and it would reach other people's instruments.
                kwargs["required"] = True
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        related = db_field.related_model
        if "queryset" not in kwargs and _is_scoped(related):
            kwargs["queryset"] = permissions.restrict(related._default_manager.all(), request.user, permissions.CHANGE)
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def get_list_filter(self, request):
        # A plain related filter lists every instrument (or channel, source, rule) in the database, so
        # each one over an instrument-bound model offers only the values in the visible rows.
        return [_only_visible_values(self.model, entry) for entry in super().get_list_filter(request)]


def _only_visible_values(model, entry):
    if not isinstance(entry, str):
        return entry
    try:
        field = get_fields_from_path(model, entry)[-1]
    except (FieldDoesNotExist, NotRelationField):
        return entry
    if field.is_relation and field.related_model in MANY:
        return typed_filter(entry, field.related_model)
    if field.is_relation and _is_scoped(field.related_model):
        return (entry, admin.RelatedOnlyFieldListFilter)
    return entry


# Models a site holds by the thousand: a list filter over them is a search box, never a list of them all.
MANY = {Instrument, Channel, DataSource}


class TypedFilter(admin.SimpleListFilter):
    """A list filter typed into a box (a slug, or a part of the name) instead of a list of every value:
    an instrument filter at 10,000 instruments stays one small form (docs/performance.md#the-admin).
    It narrows the rows the changelist already restricted, so it reveals nothing of hidden objects."""

    template = "admin/typed_filter.html"
    path = ""
    has_slug = False

    def lookups(self, request, model_admin):
        return [("", "")]  # never listed: the template shows a search box

    def queryset(self, request, queryset):
        value = (self.value() or "").strip()[:200]
        if not value:
            return queryset
        match = Q(**{f"{self.path}__name__icontains": value})
        if self.has_slug:
            match |= Q(**{f"{self.path}__slug": value})
        return queryset.filter(match)

    def choices(self, changelist):
        keep = []
        for name, values in changelist.get_filters_params().items():
            if name != self.parameter_name:
                keep += [(name, v) for v in (values if isinstance(values, list) else [values])]
        yield {
            "value": self.value() or "",
            "parameter": self.parameter_name,
            "keep": keep,
            "clear_url": changelist.get_query_string(remove=[self.parameter_name]),
        }


def typed_filter(path: str, model) -> type[TypedFilter]:
    name = model._meta.verbose_name
    return type(
        f"Typed{model.__name__}Filter",
        (TypedFilter,),
        {
            "title": name,
            "parameter_name": f"{path}_q",
            "path": path,
            "has_slug": any(f.name == "slug" for f in model._meta.fields),
        },
    )


NO_ACCESS = ""


def share_level_form(request, kind: str):
    """A guardian object-permission form class (``form(principal, obj, data)``) that sets one level."""

    class ShareLevelForm(forms.Form):
        level = forms.ChoiceField(
            label="Access",
            choices=[(NO_ACCESS, "No access"), *ShareLevel.choices],
            required=False,
            widget=forms.RadioSelect,
            help_text="Each level includes the ones above it.",
        )

        def __init__(self, principal, obj, *args, **kwargs):
            self.principal, self.obj = principal, obj
            super().__init__(*args, **kwargs)
            self.fields["level"].initial = services.level_of(obj, principal) or NO_ACCESS

        def clean(self):
            cleaned = super().clean()
            if kind == "user" and self.principal.pk == self.obj.owner_id:
                raise forms.ValidationError("The owner has every level; change the owner instead.")
            return cleaned

        def save_obj_perms(self) -> None:
            level = self.cleaned_data["level"]
            if level:
                services.share(self.obj, self.principal, level, **audit.origin(request))
            else:
                services.unshare(self.obj, self.principal, **audit.origin(request))

    return ShareLevelForm


class SharingAdminMixin(_SharingBase):
    """For a GuardedModelAdmin of Instrument: sharing pages need the ``share`` level and use the service."""

    def _instrument_for_sharing(self, request, object_pk):
        obj = get_object_or_404(self.get_queryset(request), pk=unquote(object_pk))
        if not permissions.has_instrument_perm(request.user, permissions.SHARE, obj):
            raise PermissionDenied
        return obj

    def obj_perms_manage_view(self, request, object_pk):
        self._instrument_for_sharing(request, object_pk)
        return super().obj_perms_manage_view(request, object_pk)

    def obj_perms_manage_user_view(self, request, object_pk, user_id):
        obj = self._instrument_for_sharing(request, object_pk)
        if str(obj.owner_id) == str(user_id):
            messages.info(request, f"{obj.owner} owns {obj} and has every level on it.")
            return redirect(reverse("admin:instruments_instrument_permissions", args=[obj.pk]))
        get_object_or_404(get_user_model(), pk=user_id)
        return super().obj_perms_manage_user_view(request, object_pk, user_id)

    def obj_perms_manage_group_view(self, request, object_pk, group_id):
        self._instrument_for_sharing(request, object_pk)
        get_object_or_404(Group, pk=group_id)
        return super().obj_perms_manage_group_view(request, object_pk, group_id)

    def get_obj_perms_manage_user_form(self, request):
        return share_level_form(request, "user")

    def get_obj_perms_manage_group_form(self, request):
        return share_level_form(request, "group")


# RelatedOnlyFieldListFilter offers only values present in the (restricted) changelist, so the sidebar
# does not list instruments or owners the staff user may not see.
RelatedOnly = admin.RelatedOnlyFieldListFilter


class FirstRowsInline(_InlineBase):
    """An inline that holds at most ``shown`` related rows, in its ``ordering``, never all of them: an instrument
    may have thousands of channels and years of logbook, a run list thousands of runs, and an inline of all of
    them is a form of all of them (a page of megabytes, queries per row). The rows beyond are edited in their
    own list, which a line under the inline links to, filtered to the object (``more_url``)."""

    shown = 50
    template = "admin/edit_inline/first_rows.html"
    rows_template = "admin/edit_inline/tabular.html"  # the inline's own template, which first_rows.html includes

    def more_url(self, parent) -> str:
        """The admin list of every related row of ``parent``."""
        raise NotImplementedError

    def get_formset(self, request, obj=None, **kwargs):
        formset = super().get_formset(request, obj, **kwargs)
        inline = self

        class FirstRows(formset):  # type: ignore[valid-type,misc]
            def get_queryset(self):
                if not hasattr(self, "_queryset"):
                    self._queryset = super().get_queryset()[: inline.shown]
                return self._queryset

            def more(self) -> dict | None:
                """How many rows there are and where they all are, when the inline does not hold them all."""
                shown = len(self.get_queryset())
                if self.instance.pk is None or shown < inline.shown:
                    return None
                total = self.queryset.count()  # the rows of the object, before the slice
                return (
                    None if total <= shown else {"shown": shown, "total": total, "url": inline.more_url(self.instance)}
                )

        return FirstRows
