"""Who may do what: object permissions on instruments and run lists, agents and their API tokens, the audit trail."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

from accounts.choices import AuditAction, SampleRequestStatus, TokenScope

TOKEN_PREFIX = "dbk_"  # noqa: S105  (a public marker, not a secret)


# --- Object permissions -------------------------------------------------------------------------
# Direct foreign keys to Instrument instead of guardian's generic (content type, text id) tables: the
# visibility subqueries join on an indexed integer, and deleting an instrument cascades its grants.


class InstrumentUserPermission(UserObjectPermissionBase):
    content_object = models.ForeignKey("instruments.Instrument", on_delete=models.CASCADE, related_name="user_grants")

    class Meta(UserObjectPermissionBase.Meta):
        verbose_name = "instrument permission of a user"


class InstrumentGroupPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey("instruments.Instrument", on_delete=models.CASCADE, related_name="group_grants")

    class Meta(GroupObjectPermissionBase.Meta):
        verbose_name = "instrument permission of a group"


class RunListUserPermission(UserObjectPermissionBase):
    content_object = models.ForeignKey("instruments.RunList", on_delete=models.CASCADE, related_name="user_grants")

    class Meta(UserObjectPermissionBase.Meta):
        verbose_name = "run list permission of a user"


class RunListGroupPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey("instruments.RunList", on_delete=models.CASCADE, related_name="group_grants")

    class Meta(GroupObjectPermissionBase.Meta):
        verbose_name = "run list permission of a group"


# --- Agents and API tokens ----------------------------------------------------------------------


class Agent(models.Model):
    """A remote ``daqbroker-agent`` installation. It authenticates with its own API token and may only
    push readings to the instruments listed here that its owner may also collect to."""

    name = models.CharField(max_length=100)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="agents")
    instruments = models.ManyToManyField(
        "instruments.Instrument", blank=True, related_name="agents", help_text="The instruments it may push to."
    )
    description = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    # Where the server keeps the figures of its heartbeats as readings (collection.services.node_health):
    # created at the first heartbeat, owned by the agent's owner. Kept (with its history) if the agent goes.
    health_instrument = models.OneToOneField(
        "instruments.Instrument",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        editable=False,
        related_name="health_of_agent",
        help_text="The instrument holding this agent's health readings (load, memory, spool disk, clock).",
    )

    class Meta:
        ordering = ["name", "id"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="agent_unique_name_per_owner")]

    def __str__(self) -> str:
        return self.name

    def _token_attr(self, name: str):
        token = getattr(self, "token", None) if self.pk else None
        return getattr(token, name, None)

    @property
    def expires(self):
        return self._token_attr("expires")

    @property
    def revoked_at(self):
        return self._token_attr("revoked_at")

    @property
    def last_used(self):
        return self._token_attr("last_used")

    @property
    def last_address(self):
        return self._token_attr("last_address")

    @property
    def is_active(self) -> bool:
        token = getattr(self, "token", None) if self.pk else None
        return bool(token and token.is_usable)


class AgentHealth(models.Model):
    """What an agent last said about itself in its heartbeat (``POST /api/v1/agent/heartbeat/``).

    Kept apart from :class:`Agent` so that heartbeats every few seconds never write the row the admin
    edits. ``clock_offset_seconds`` is the agent's clock minus the server's (positive: the agent is ahead).
    """

    STALE_AFTER_INTERVALS = 3

    agent = models.OneToOneField(Agent, on_delete=models.CASCADE, primary_key=True, related_name="health")
    last_heartbeat = models.DateTimeField(help_text="When the server received the last heartbeat.")
    heartbeat_seconds = models.PositiveIntegerField(default=30, help_text="How often the agent says it beats.")
    version = models.CharField(max_length=40, blank=True)
    hostname = models.CharField(max_length=255, blank=True)
    address = models.GenericIPAddressField(null=True, blank=True)
    spool_depth = models.PositiveBigIntegerField(default=0, help_text="Readings waiting in the agent's spool.")
    spool_capacity = models.PositiveBigIntegerField(null=True, blank=True)
    last_upload = models.DateTimeField(null=True, blank=True, help_text="The agent's last acknowledged upload.")
    last_error = models.TextField(blank=True)
    clock_offset_seconds = models.FloatField(null=True, blank=True)
    refused_sources = models.JSONField(
        default=list,
        blank=True,
        help_text='Sources the agent will not run, as it said: [{"id": ..., "name": ..., "reason": ...}].',
    )
    serial_ports = models.JSONField(
        default=list,
        blank=True,
        help_text='The agent machine\'s serial ports, as it said: [{"device": ..., "description": ...}].',
    )

    class Meta:
        verbose_name = "agent health"
        verbose_name_plural = "agent health"

    def __str__(self) -> str:
        return f"{self.agent} at {self.last_heartbeat:%Y-%m-%d %H:%M:%S}"

    @property
    def is_stale(self) -> bool:
        limit = max(90, self.STALE_AFTER_INTERVALS * self.heartbeat_seconds)
        return (timezone.now() - self.last_heartbeat).total_seconds() > limit


class AgentSampleRequest(models.Model):
    """A request that an agent read the first lines of a file on its machine, for the source preview.

    Made by the agent's owner or an administrator (``accounts.agent_samples``); the agent finds the waiting
    ones in its configuration, reads the newest file in ``folder`` matching ``pattern`` (only inside its
    own ``allowed_paths``) and posts the lines back. Bounded (``MAX_LINES`` lines, ``MAX_BYTES`` bytes) and
    short-lived: a request the agent has not answered in ``WAIT_SECONDS`` has timed out, and rows older
    than ``KEEP_SECONDS`` are deleted when the next request is made.
    """

    MAX_LINES = 200
    MAX_BYTES = 64 * 1024
    WAIT_SECONDS = 120
    KEEP_SECONDS = 900
    MAX_WAITING_PER_AGENT = 5

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="sample_requests")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="agent_sample_requests"
    )
    folder = models.CharField(max_length=1000, help_text="The folder on the agent's machine.")
    pattern = models.CharField(max_length=200, default="*", help_text="Which files (a glob); the newest is read.")
    file_name = models.CharField(max_length=255, blank=True, help_text="Or this file in the folder.")
    encoding = models.CharField(max_length=40, default="utf-8")
    created = models.DateTimeField(default=timezone.now, db_index=True)
    status = models.CharField(max_length=16, choices=SampleRequestStatus.choices, default=SampleRequestStatus.WAITING)
    answered = models.DateTimeField(null=True, blank=True)
    lines = models.JSONField(default=list, blank=True, help_text="The lines the agent read (at most MAX_LINES).")
    origin = models.CharField(max_length=300, blank=True, help_text="The file the agent read.")
    truncated = models.BooleanField(default=False)
    error = models.CharField(max_length=1000, blank=True, help_text="Why the agent did not read it.")

    class Meta:
        ordering = ["-created", "-id"]

    def __str__(self) -> str:
        return f"sample of {self.folder}/{self.file_name or self.pattern} from {self.agent}"

    @property
    def timed_out(self) -> bool:
        waited = (timezone.now() - self.created).total_seconds()
        return self.status == SampleRequestStatus.WAITING and waited > self.WAIT_SECONDS


class ApiToken(models.Model):
    """One API token: a personal one (read or read-write) or an agent's.

    The clear token, ``dbk_<key id>_<secret>``, is shown once when created and never stored: the row
    keeps the key id (to find the row with an indexed look-up) and a SHA-256 digest of the whole token
    (compared in constant time). A slow password hash would add nothing: the secret is 256 random bits.
    """

    key_id = models.CharField(max_length=16, unique=True, editable=False)
    digest = models.CharField(max_length=64, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="api_tokens",
        help_text="Whose access the token carries (for an agent: the agent's owner).",
    )
    agent = models.OneToOneField(Agent, on_delete=models.CASCADE, null=True, blank=True, related_name="token")
    name = models.CharField(max_length=100)
    scope = models.CharField(max_length=16, choices=TokenScope.choices)
    created = models.DateTimeField(auto_now_add=True)
    expires = models.DateTimeField(null=True, blank=True, help_text="Empty: never expires.")
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Written at most once a minute (accounts.tokens.touch), with the address the request came from.
    last_used = models.DateTimeField(null=True, blank=True, editable=False)
    last_address = models.GenericIPAddressField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created", "-id"]
        verbose_name = "API token"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(scope=TokenScope.AGENT, agent__isnull=False)
                | (~models.Q(scope=TokenScope.AGENT) & models.Q(agent__isnull=True)),
                name="apitoken_agent_scope_iff_agent",
            )
        ]
        indexes = [models.Index(fields=["user", "-created"], name="apitoken_user_created")]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def prefix(self) -> str:
        """What may be shown of a token: enough to recognise it, useless to use it."""
        return f"{TOKEN_PREFIX}{self.key_id}"

    @property
    def is_expired(self) -> bool:
        return self.expires is not None and self.expires <= timezone.now()

    @property
    def is_usable(self) -> bool:
        return self.revoked_at is None and not self.is_expired


# --- Audit trail --------------------------------------------------------------------------------


class AuditTrailIsAppendOnly(Exception):
    """Raised on any attempt to change or delete an audit event."""


class AuditEventQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AuditTrailIsAppendOnly("audit events cannot be changed")

    def delete(self):
        raise AuditTrailIsAppendOnly("audit events cannot be deleted")


class AuditEvent(models.Model):
    """Who did what to which object, when and from where. Written only by ``accounts.audit.record``."""

    at = models.DateTimeField(default=timezone.now, db_index=True, editable=False)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        editable=False,
        help_text="The user (for an agent: its owner); empty for the system.",
    )
    actor_label = models.CharField(max_length=200, editable=False, help_text="Who, as they were called then.")
    action = models.CharField(max_length=32, choices=AuditAction.choices, editable=False)
    object_type = models.CharField(max_length=100, editable=False, help_text='For example "instruments.instrument".')
    object_id = models.CharField(max_length=64, blank=True, editable=False)
    object_repr = models.CharField(max_length=200, blank=True, editable=False)
    changes = models.JSONField(default=dict, blank=True, editable=False)
    address = models.GenericIPAddressField(null=True, blank=True, editable=False)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [
            models.Index(fields=["object_type", "object_id", "-at"], name="auditevent_object"),
            models.Index(fields=["actor", "-at"], name="auditevent_actor"),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_label} {self.action} {self.object_repr}"

    def save(self, *args, **kwargs) -> None:
        if not self._state.adding:
            raise AuditTrailIsAppendOnly("audit events cannot be changed")
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AuditTrailIsAppendOnly("audit events cannot be deleted")
