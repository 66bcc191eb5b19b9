from django.db import models


class SourceKind(models.TextChoices):
    FILE = "file", "File"
    SERIAL = "serial", "Serial port"
    TCP = "tcp", "TCP instrument"
    MODBUS = "modbus", "Modbus device (TCP or RTU)"
    AGENT = "agent", "Remote agent"


class ChannelKind(models.TextChoices):
    NUMERIC = "numeric", "Numeric"
    TEXT = "text", "Text"
    DERIVED = "derived", "Derived (computed from other channels)"


class ColumnKind(models.TextChoices):
    """The type of a run list's parameter column: what a run's value in it must be."""

    NUMBER = "number", "Number (with units)"
    TEXT = "text", "Text"
    BOOLEAN = "boolean", "Yes/no"
    CHOICE = "choice", "Choice from a list"
