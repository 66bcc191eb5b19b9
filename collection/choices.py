from django.db import models


class Quality(models.IntegerChoices):
    """Stored on every reading. A small integer, not text: it is repeated on every row of the largest tables."""

    OK = 0, "OK"
    OUT_OF_RANGE = 1, "Out of range"
    MISSING = 2, "Missing (sentinel)"
    SUSPECT = 3, "Suspect"


class Origin(models.TextChoices):
    """Which path a batch of readings arrived by."""

    API = "api", "REST API"
    AGENT = "agent", "Agent"
    FILE = "file", "File collector"
    SERIAL = "serial", "Serial collector"
    TCP = "tcp", "TCP collector"
    DERIVED = "derived", "Derived channel"
    DEMO = "demo", "Demo"
    INTERNAL = "internal", "Internal"


class RunStatus(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCESS = "success", "Succeeded"
    # Committed, but a person should look (see the run's error): lines were read and nothing was stored, or
    # the readings lie more than a year from their file's modification time (a wrong year?).
    WARNING = "warning", "Warning"
    FAILED = "failed", "Failed"


class RollupTier(models.IntegerChoices):
    """The rollup tiers: the value is the bucket width in seconds. Each width divides the next, so a
    bucket of one tier is made of whole buckets of the tier below (see ``collection.services.rollups``)."""

    S10 = 10, "10s"
    MIN1 = 60, "1min"
    MIN10 = 600, "10min"
    H1 = 3600, "1h"
    D1 = 86400, "1d"
