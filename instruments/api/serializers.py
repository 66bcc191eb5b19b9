"""Registry serializers. They run the model's own ``full_clean()``, so the API refuses exactly what the
admin refuses, with the same messages (``config: baudrate: ...``, ``units: 'bananas' ...``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Model
from rest_framework import serializers

from accounts import permissions, targets
from accounts.api.base import PermittedPrimaryKeyRelatedField, PermittedSlugRelatedField
from accounts.models import Agent
from instruments.models import Channel, DataSource, Instrument, LogbookEntry

if TYPE_CHECKING:
    _SerializerBase = serializers.ModelSerializer  # what the mixin extends, for the type checker only
else:
    _SerializerBase = object


class ModelCleanMixin(_SerializerBase):
    """Validate with the model's ``full_clean()`` (field checks, ``clean()``, unique constraints)."""

    # Fields the view sets on save (owner, author); they are filled in before cleaning.
    implicit_fields: tuple[str, ...] = ()

    def validate(self, attrs):
        attrs = super().validate(attrs)
        model: type[Model] = self.Meta.model
        instance = (
            model(**{f.attname: getattr(self.instance, f.attname) for f in model._meta.concrete_fields})
            if (self.instance is not None)
            else model()
        )
        instance._state.adding = self.instance is None
        for name in self.implicit_fields:
            if self.instance is None:
                setattr(instance, name, self.implicit_value(name))
        for name, value in attrs.items():
            setattr(instance, name, value)
        try:
            instance.full_clean()
            extra = self.validate_instance(instance)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(
                exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
            ) from None
        # clean() may normalise values (a source's config gets its defaults filled in).
        return {**{name: getattr(instance, name) for name in attrs}, **extra}

    def validate_instance(self, instance) -> dict:
        """Checks beyond the model's own, on the cleaned instance; returns more fields to save."""
        return {}

    def implicit_value(self, name):
        return self.context["request"].user


class InstrumentSerializer(ModelCleanMixin, serializers.ModelSerializer):
    implicit_fields = ("owner",)
    owner = serializers.CharField(source="owner.get_username", read_only=True)

    class Meta:
        model = Instrument
        fields = [
            "id",
            "slug",
            "name",
            "description",
            "owner",
            "contact_email",
            "location",
            "latitude",
            "longitude",
            "active",
            "raw_retention_days",
            "created",
            "updated",
        ]
        read_only_fields = ["id", "owner", "created", "updated"]
        # full_clean() checks uniqueness, with the admin's messages
        validators: list[Any] = []
        extra_kwargs: dict[str, dict[str, Any]] = {"slug": {"validators": []}}


class DataSourceSerializer(ModelCleanMixin, serializers.ModelSerializer):
    instrument = PermittedSlugRelatedField(queryset=Instrument.objects.all(), level=permissions.CHANGE)
    agent = PermittedPrimaryKeyRelatedField(
        queryset=Agent.objects.all(),
        level=permissions.CHANGE,
        allow_null=True,
        required=False,
        help_text="For sources of kind agent: the id of the agent that collects it (one of yours).",
    )
    state = serializers.CharField(
        source="collection_state",
        read_only=True,
        help_text='In words: "waiting for channels" (no channel takes a field from it: not read, its cursor '
        'does not move), "disabled", "not collected yet", "collecting", "failing" or "pushed by its agent".',
    )
    waiting_for_channels = serializers.BooleanField(read_only=True)
    rereadable = serializers.BooleanField(
        read_only=True, help_text="Whether POST /api/v1/sources/<id>/reread/ applies (file sources only)."
    )

    class Meta:
        model = DataSource
        fields = [
            "id",
            "instrument",
            "name",
            "kind",
            "agent",
            "config",
            "interval_seconds",
            "enabled",
            "last_run_at",
            "last_success_at",
            "last_error",
            "consecutive_failures",
            "state",
            "waiting_for_channels",
            "rereadable",
            "reread_requested_at",
            "created",
            "updated",
        ]
        read_only_fields = [
            "id",
            "last_run_at",
            "last_success_at",
            "last_error",
            "consecutive_failures",
            "state",
            "waiting_for_channels",
            "rereadable",
            "reread_requested_at",
            "created",
            "updated",
        ]
        validators: list[Any] = []

    def validate_instance(self, instance: DataSource) -> dict:
        # The one target check (accounts.targets): where the source reads, given who is asking.
        principal = self.context["request"].user
        if targets.check_source(principal, instance, previous=self.instance):
            return {"target_set_by": principal}
        return {}


class ChannelSerializer(ModelCleanMixin, serializers.ModelSerializer):
    instrument = PermittedSlugRelatedField(queryset=Instrument.objects.all(), level=permissions.CHANGE)
    # The serializer's metaclass moves declared fields out of the class: Field.source is not shadowed.
    source = PermittedPrimaryKeyRelatedField(  # type: ignore[assignment]
        queryset=DataSource.objects.all(),
        level=permissions.CHANGE,
        allow_null=True,
        required=False,
    )
    last_time = serializers.DateTimeField(read_only=True, allow_null=True)

    class Meta:
        model = Channel
        fields = [
            "id",
            "instrument",
            "source",
            "name",
            "slug",
            "kind",
            "units",
            "description",
            "source_field",
            "valid_min",
            "valid_max",
            "missing_values",
            "expression",
            "expected_interval_seconds",
            "last_time",
            "last_value",
            "last_text",
            "last_quality",
            "created",
            "updated",
        ]
        read_only_fields = ["id", "last_value", "last_text", "last_quality", "created", "updated"]
        validators: list[Any] = []


class LogbookEntrySerializer(ModelCleanMixin, serializers.ModelSerializer):
    implicit_fields = ("author",)
    instrument = PermittedSlugRelatedField(queryset=Instrument.objects.all(), level=permissions.CHANGE)
    author = serializers.CharField(source="author.get_username", read_only=True, allow_null=True)
    edited_by = serializers.CharField(source="edited_by.get_username", read_only=True, allow_null=True)

    class Meta:
        model = LogbookEntry
        fields = ["id", "instrument", "author", "occurred_at", "text", "created", "edited_by", "edited_at"]
        read_only_fields = ["id", "author", "created", "edited_by", "edited_at"]
