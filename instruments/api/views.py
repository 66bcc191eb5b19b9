"""Registry API: instruments, data sources, channels, logbook. Visibility and levels come from the
accounts base viewset: a hidden object answers 404, a visible one you may not change answers 403."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import django_filters
import django_filters.rest_framework
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.utils import timezone
from rest_framework.filters import BaseFilterBackend, OrderingFilter, SearchFilter

from accounts import permissions
from accounts.api.base import ScopedModelViewSet
from accounts.principals import AgentPrincipal
from instruments.api.filters import UtcIsoDateTimeFilter
from instruments.api.serializers import (
    ChannelSerializer,
    DataSourceSerializer,
    InstrumentSerializer,
    LogbookEntrySerializer,
)
from instruments.choices import ChannelKind, SourceKind
from instruments.models import Channel, DataSource, Instrument, LogbookEntry, with_channel_counts

if TYPE_CHECKING:
    from rest_framework.generics import BaseFilterProtocol  # in the stubs only

FILTERS: list[type[BaseFilterBackend] | type[BaseFilterProtocol[Any]]] = [
    django_filters.rest_framework.DjangoFilterBackend,
    SearchFilter,
    OrderingFilter,
]


class InstrumentFilter(django_filters.FilterSet):
    owner = django_filters.CharFilter(field_name="owner__username")

    class Meta:
        model = Instrument
        fields = ["active", "owner"]


class InstrumentViewSet(ScopedModelViewSet):
    """Instruments you may see. Operators and administrators may create them; deleting one (with all its
    data) needs the share level, which owners have."""

    queryset = Instrument.objects.select_related("owner")
    serializer_class = InstrumentSerializer
    lookup_field = "slug"
    filter_backends = FILTERS
    filterset_class = InstrumentFilter
    search_fields = ["name", "slug", "description", "location"]
    ordering_fields = ["name", "slug", "created", "updated"]
    ordering = ["name"]
    action_levels = {"destroy": permissions.SHARE}

    def perform_create(self, serializer):
        # Who may create instruments at all is checked by the base permissions.
        serializer.validated_data["owner"] = self.request.user
        super().perform_create(serializer)


class DataSourceFilter(django_filters.FilterSet):
    instrument = django_filters.CharFilter(field_name="instrument__slug")
    kind = django_filters.ChoiceFilter(choices=SourceKind.choices)

    class Meta:
        model = DataSource
        fields = ["instrument", "kind", "enabled"]


class DataSourceViewSet(ScopedModelViewSet):
    """Data sources of the instruments you may see; the configuration is checked when saved."""

    queryset = with_channel_counts(DataSource.objects.select_related("instrument"))
    serializer_class = DataSourceSerializer
    filter_backends = FILTERS
    filterset_class = DataSourceFilter
    search_fields = ["name", "instrument__slug"]
    ordering_fields = ["name", "kind", "last_success_at"]
    ordering = ["instrument__slug", "name"]


class ChannelFilter(django_filters.FilterSet):
    instrument = django_filters.CharFilter(field_name="instrument__slug")
    kind = django_filters.ChoiceFilter(choices=ChannelKind.choices)

    class Meta:
        model = Channel
        fields = ["instrument", "kind", "units", "source"]


class ChannelViewSet(ScopedModelViewSet):
    """Channels of the instruments you may see, with their last reading."""

    queryset = Channel.objects.select_related("instrument")
    serializer_class = ChannelSerializer
    filter_backends = FILTERS
    filterset_class = ChannelFilter
    search_fields = ["name", "slug", "description", "instrument__slug"]
    ordering_fields = ["name", "slug", "last_ts"]
    ordering = ["instrument__slug", "slug"]


class LogbookEntryFilter(django_filters.FilterSet):
    instrument = django_filters.CharFilter(field_name="instrument__slug")
    after = UtcIsoDateTimeFilter(field_name="occurred_at", lookup_expr="gte")
    before = UtcIsoDateTimeFilter(field_name="occurred_at", lookup_expr="lt")

    class Meta:
        model = LogbookEntry
        fields = ["instrument", "after", "before"]


def person_of(
    principal: AbstractBaseUser | AnonymousUser | AgentPrincipal,
) -> AbstractBaseUser | AnonymousUser:
    """The user acting: an agent acts for its owner."""
    return principal.owner if isinstance(principal, AgentPrincipal) else principal


class LogbookEntryViewSet(ScopedModelViewSet):
    """Logbook entries of the instruments you may see; writing one needs the change level."""

    queryset = LogbookEntry.objects.select_related("instrument", "author")
    serializer_class = LogbookEntrySerializer
    filter_backends = FILTERS
    filterset_class = LogbookEntryFilter
    search_fields = ["text"]
    ordering_fields = ["occurred_at", "created"]
    ordering = ["-occurred_at"]

    def perform_create(self, serializer):
        serializer.validated_data["author"] = self.request.user
        super().perform_create(serializer)

    def perform_update(self, serializer):
        # The author is kept; the editor and when are recorded (and the diff audited by the base class).
        serializer.validated_data["edited_by"] = person_of(self.request.user)
        serializer.validated_data["edited_at"] = timezone.now()
        super().perform_update(serializer)
