from django.db import models


class RuleKind(models.TextChoices):
    ABOVE = "above", "Above a threshold"
    BELOW = "below", "Below a threshold"
    RATE = "rate", "Rate of change (per second) beyond a threshold"
    STALE = "stale", "Stale: no reading for N x the expected interval"


class Severity(models.TextChoices):
    INFO = "info", "Information"
    WARNING = "warning", "Warning"
    CRITICAL = "critical", "Critical"


class Transition(models.TextChoices):
    RAISED = "raised", "Raised"
    CLEARED = "cleared", "Cleared"


class Medium(models.TextChoices):
    EMAIL = "email", "Email"
    WEBHOOK = "webhook", "Webhook"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENDING = "sending", "Sending"
    RETRYING = "retrying", "Waiting to retry"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"
    SKIPPED = "skipped", "Nobody to tell"
