"""Filter fields that are safe on every engine."""

from __future__ import annotations

from datetime import UTC

import django_filters
from django import forms
from django_filters.fields import IsoDateTimeField


class UtcIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 time, converted to UTC before it reaches the database.

    ISO 8601 allows offsets up to ±23:59; PostgreSQL refuses offsets beyond ±15:59 in a literal, so a
    time like ``2026-01-01T00:00+18:30`` would fail in the query instead of meaning what it says.
    """

    def to_python(self, value):
        value = super().to_python(value)
        if value is None:
            return value
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise forms.ValidationError("The time is outside the range that can be stored.") from None


class UtcIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UtcIsoDateTimeField
