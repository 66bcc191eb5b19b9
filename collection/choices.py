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
    MODBUS = "modbus", "Modbus collector"
    MQTT = "mqtt", "MQTT collector"
    OPCUA = "opcua", "OPC UA collector"
    DERIVED = "derived", "Derived channel"
    CORRECTION = "correction", "Correction (replaced on purpose)"
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


class RejectionKind(models.TextChoices):
    """What kind of problem set a reading or line aside: a stable short code, stored beside the message
    (which keeps the detail), so the quarantine can be grouped, filtered and counted by kind."""

    UNPARSED = "unparsed", "Line not parsed"
    BAD_TIME = "bad_time", "Bad timestamp"
    MISSING_FIELD = "missing_field", "Field missing from the line"
    NOT_NUMBER = "not_number", "Not a number"
    NOT_FINITE = "not_finite", "NaN or infinity"
    BAD_TEXT = "bad_text", "Text that cannot be stored"
    EMPTY = "empty", "Empty value"
    OUT_OF_WINDOW = "out_of_window", "Time out of window"
    UNKNOWN_CHANNEL = "unknown_channel", "Unknown channel"
    DERIVED = "derived", "Derived channel written"
    CONFLICT = "conflict", "Conflict with a stored value"
    PARSE_BUDGET = "parse_budget", "Parse budget spent"
    OVER_LIMIT = "over_limit", "Past the quarantine limits"
    OTHER = "other", "Other"
