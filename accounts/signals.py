"""Audit receivers for deletions that happen by cascade, whichever surface started them."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete
from django.dispatch import receiver

from accounts import tokens
from accounts.audit import current_origin, record
from accounts.choices import AuditAction
from accounts.models import Agent, ApiToken
from instruments.models import Channel

# The verified-token cache forgets everything when a token, its user or agent, or the user's groups change
# through this process (accounts.tokens).
for _model in (ApiToken, User, Agent):
    post_save.connect(tokens.forget_all, sender=_model, dispatch_uid=f"accounts.tokens_forget_save_{_model.__name__}")
    post_delete.connect(tokens.forget_all, sender=_model, dispatch_uid=f"accounts.tokens_forget_del_{_model.__name__}")
m2m_changed.connect(tokens.forget_all, sender=User.groups.through, dispatch_uid="accounts.tokens_forget_groups")


@receiver(pre_delete, sender=Agent, dispatch_uid="accounts.agent_token_deleted_first")
def delete_the_agents_token_first(sender, instance: Agent, using: str, **kwargs) -> None:
    """An agent's token goes before the agent (alone, or with its owner). Django deletes it by cascade anyway,
    but on MariaDB, which cannot defer constraint checks, it first sets the nullable ``agent`` of the rows it
    cascades to NULL once those rows are no longer fast-deleted (the token cache's receivers above make them
    so), and an agent token without its agent breaks ``apitoken_agent_scope_iff_agent``. Deleted here, the
    token is gone before that update, which then touches no row."""
    ApiToken.objects.using(using).filter(agent_id=instance.pk).delete()


@receiver(pre_delete, sender=Channel, dispatch_uid="accounts.audit_channel_readings_deleted")
def channel_readings_deleted(sender, instance: Channel, **kwargs) -> None:
    """Deleting a channel (alone or with its instrument) deletes all its readings: say so, and by whom."""
    if instance.last_ts is None:
        return  # never received a reading: nothing was deleted
    record(
        AuditAction.SAMPLES_DELETED,
        obj=instance,
        changes={
            "reason": "channel deleted",
            "instrument": instance.instrument.slug,
            "channel": instance.slug,
            "range": "all",
            "last_ts": instance.last_ts,
        },
        **current_origin(),
    )
