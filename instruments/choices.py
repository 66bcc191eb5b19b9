from django.db import models


class SourceKind(models.TextChoices):
    FILE = "file", "File"
    SERIAL = "serial", "Serial port"
    TCP = "tcp", "TCP instrument"
    AGENT = "agent", "Remote agent"


class ChannelKind(models.TextChoices):
    NUMERIC = "numeric", "Numeric"
    TEXT = "text", "Text"
    DERIVED = "derived", "Derived (computed from other channels)"
