from django.db import models


class ShareLevel(models.TextChoices):
    """How much of an instrument a user or group is given. Each level includes every level above it here.

    The levels are a ladder so that a grant is one word and "change implies view" holds by construction:
    an editor may also push readings and see the instrument; a user with ``share`` may do everything the
    owner may, including sharing and deleting it.
    """

    VIEW = "view", "View: see the instrument, its channels and data"
    COLLECT = "collect", "Collect: view, and push readings to it"
    CHANGE = "change", "Change: collect, and edit its configuration"
    SHARE = "share", "Share: change, and manage who else may see it"


class TokenScope(models.TextChoices):
    """What a request authenticated by an API token may do."""

    READ = "read", "Read only (personal)"
    READ_WRITE = "read_write", "Read and write (personal)"
    AGENT = "agent", "Push readings (agent)"


class AuditAction(models.TextChoices):
    SHARE_SET = "share.set", "Shared or share changed"
    SHARE_REMOVED = "share.removed", "Share removed"
    TOKEN_CREATED = "token.created", "API token created"
    TOKEN_REVOKED = "token.revoked", "API token revoked"
    AGENT_CREATED = "agent.created", "Agent created"
    AGENT_REVOKED = "agent.revoked", "Agent revoked"
    AGENT_TOKEN_REPLACED = "agent.token_replaced", "Agent given a new token"
    CONFIG_CREATED = "config.created", "Configuration created"
    CONFIG_CHANGED = "config.changed", "Configuration changed"
    CONFIG_DELETED = "config.deleted", "Configuration deleted"
    SAMPLES_DELETED = "samples.deleted", "Readings deleted"
    SAMPLES_REPLACED = "samples.replaced", "Readings replaced (corrected)"
    SOURCE_REREAD = "source.reread", "Source re-read requested"
    CONFLICT_ACCEPTED = "conflict.accepted", "Quarantined conflict's value accepted"
    QUARANTINE_REPLAYED = "quarantine.replayed", "Quarantine replayed"
    QUARANTINE_DELETED = "quarantine.deleted", "Quarantine deleted (retention)"
    RUN_STARTED = "run.started", "Run started"
    RUN_STOPPED = "run.stopped", "Run stopped"
    RUN_CHANGED = "run.changed", "Run changed"
    RUN_COMMENTED = "run.commented", "Comment on a run"
    PASSWORD_CHANGED = "password.changed", "Password changed"
    PASSWORD_LOCKED_OUT = "password.locked_out", "Password change locked out (wrong old passwords)"
    AGENT_SAMPLE_REQUESTED = "agent.sample_requested", "Agent asked for a sample of its files"
    RAW_FILES_DELETED = "raw_files.deleted", "Raw files deleted (retention)"


class SampleRequestStatus(models.TextChoices):
    WAITING = "waiting", "Waiting for the agent"
    DELIVERED = "delivered", "Lines delivered"
    REFUSED = "refused", "Refused by the agent"
