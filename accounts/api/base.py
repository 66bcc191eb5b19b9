"""The base of every API view: visibility, token scopes, object levels, pagination, permitted fields.

Protecting a new endpoint is one line: derive the viewset from ``ScopedModelViewSet`` (or
``ScopedReadOnlyModelViewSet`` / ``ScopedGenericViewSet`` with the mixins you need)::

    class ChannelViewSet(ScopedModelViewSet):
        queryset = Channel.objects.select_related("instrument")
        serializer_class = ChannelSerializer

What the base guarantees, whatever the subclass overrides:

* every queryset is narrowed by ``accounts.permissions.restrict`` to what the requester may see, so a
  hidden object answers 404 (never 403: its existence is not revealed);
* a visible object needs the level of the action: ``view`` to read, ``change`` to write (override per
  action with ``action_levels = {"push": "collect"}``); lacking it answers 403;
* a read-only token may not write, an agent token may only call views with ``agent_access = True``
  (the ingest endpoint), and ``session_only_actions`` refuse tokens altogether (minting tokens);
* creates, updates and deletes are recorded in the audit trail (``config.*`` events).

For nested routes (``/instruments/<slug>/...``) use ``instrument_or_404(request, slug, level)``; for
related fields use ``PermittedSlugRelatedField`` / ``PermittedPrimaryKeyRelatedField``, which only accept
objects the requester has the level on (anything else reads "does not exist").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.http import Http404
from rest_framework import exceptions, mixins, serializers, viewsets

from accounts import audit, permissions
from accounts.api.access import (
    BASE_PERMISSIONS,
    LEVEL_FOR_METHOD,
    ObjectLevelPermission,
    Pagination,
    TokenScopePermission,
    VisibilityFilter,
    required_level,
)
from accounts.choices import AuditAction
from instruments.models import Instrument

if TYPE_CHECKING:
    # What the mixins extend, for the type checker only: at run time they are plain mixins.
    from rest_framework.generics import GenericAPIView

    _ViewBase = GenericAPIView
    _FieldBase = serializers.RelatedField
else:
    _ViewBase = _FieldBase = object


class ScopedViewMixin(_ViewBase):
    """For any API view: the base permissions always apply, whatever ``permission_classes`` says."""

    agent_access: bool | tuple[str, ...] = False  # True, or the actions agent tokens may call
    session_only_actions: tuple[str, ...] = ()
    action_levels: dict[str, str] = {}

    def get_permissions(self):
        extra = [p for p in self.permission_classes if p not in BASE_PERMISSIONS]
        return [p() for p in (*BASE_PERMISSIONS, *extra)]


class ScopedGenericViewSet(ScopedViewMixin, viewsets.GenericViewSet):
    """A generic viewset whose every queryset is narrowed to what the requester may see."""

    pagination_class: type[Pagination] | None = Pagination
    audited = True  # record create/update/delete in the audit trail

    def filter_queryset(self, queryset):
        queryset = VisibilityFilter().filter_queryset(self.request, queryset, self)
        for backend in self.filter_backends:
            if backend is not VisibilityFilter:
                queryset = backend().filter_queryset(self.request, queryset, self)
        return queryset

    # --- audit of configuration edits made through the API ---------------------------------------

    def perform_create(self, serializer) -> None:
        with transaction.atomic():  # the change and its audit event stand or fall together
            instance = self._save(serializer)
            if self.audited:
                audit.record(
                    AuditAction.CONFIG_CREATED, obj=instance, changes=serializer.data, **audit.origin(self.request)
                )

    def perform_update(self, serializer) -> None:
        before = serializer.to_representation(serializer.instance) if self.audited else {}
        with transaction.atomic():
            instance = self._save(serializer)
            if self.audited:
                changes = audit.diff(before, serializer.to_representation(instance))
                if changes:
                    audit.record(
                        AuditAction.CONFIG_CHANGED, obj=instance, changes=changes, **audit.origin(self.request)
                    )

    def perform_destroy(self, instance) -> None:
        with transaction.atomic():
            if self.audited:
                audit.record(
                    AuditAction.CONFIG_DELETED,
                    obj=instance,
                    changes=self.get_serializer(instance).data,
                    **audit.origin(self.request),
                )
            instance.delete()

    @staticmethod
    def _save(serializer):
        try:
            return serializer.save()
        except DjangoValidationError as exc:
            raise exceptions.ValidationError(as_drf_detail(exc)) from None


# ScopedGenericViewSet comes first so that its audited perform_create/update/destroy are not shadowed by
# the plain ones of DRF's mixins.
class ScopedReadOnlyModelViewSet(ScopedGenericViewSet, mixins.RetrieveModelMixin, mixins.ListModelMixin):
    pass


class ScopedModelViewSet(
    ScopedGenericViewSet,
    mixins.CreateModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    mixins.ListModelMixin,
):
    pass


def as_drf_detail(exc: DjangoValidationError):
    return exc.message_dict if hasattr(exc, "error_dict") else exc.messages


def instrument_or_404(request, slug: str, level: str = permissions.VIEW) -> Instrument:
    """The instrument ``slug`` for a nested route: 404 if the requester may not see it (for an agent:
    may not push to it), 403 if they see it but lack ``level``."""
    if permissions.is_agent(request):
        candidates = permissions.instruments_for(request, permissions.COLLECT)
    else:
        candidates = permissions.instruments_visible_to(request)
    instrument = candidates.filter(slug=slug).first()
    if instrument is None:
        raise Http404("No such instrument.")
    if level != permissions.VIEW and not permissions.has_instrument_perm(request, level, instrument):
        raise exceptions.PermissionDenied(f"You need the {level} level on this instrument.")
    return instrument


class _Permitted(_FieldBase):
    """Mixin for related fields: only objects the requester has ``level`` on can be chosen.

    The error never echoes the value: "hidden" and "does not exist" must read the same.
    """

    def __init__(self, *, level: str = permissions.CHANGE, **kwargs):
        self.level = level
        super().__init__(**kwargs)
        self.error_messages["does_not_exist"] = "Unknown, or not one you may use."
        self.error_messages["invalid"] = "Unknown, or not one you may use."

    def to_internal_value(self, data):
        if isinstance(data, str) and "\x00" in data:
            self.fail("does_not_exist")  # a database cannot even look a NUL byte up
        return super().to_internal_value(data)

    def get_queryset(self):
        queryset = super().get_queryset()
        assert queryset is not None  # a writable related field always has one (DRF asserts it at construction)
        request = self.context.get("request")
        return permissions.restrict(queryset, request, self.level) if request is not None else queryset.none()


class PermittedSlugRelatedField(_Permitted, serializers.SlugRelatedField):
    def __init__(self, **kwargs):
        kwargs.setdefault("slug_field", "slug")
        super().__init__(**kwargs)


class PermittedPrimaryKeyRelatedField(_Permitted, serializers.PrimaryKeyRelatedField):
    pass


__all__ = [
    "BASE_PERMISSIONS",
    "LEVEL_FOR_METHOD",
    "ObjectLevelPermission",
    "Pagination",
    "PermittedPrimaryKeyRelatedField",
    "PermittedSlugRelatedField",
    "ScopedGenericViewSet",
    "ScopedModelViewSet",
    "ScopedReadOnlyModelViewSet",
    "ScopedViewMixin",
    "TokenScopePermission",
    "VisibilityFilter",
    "instrument_or_404",
    "required_level",
]
