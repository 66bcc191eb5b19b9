"""Sharing and API tokens: the one implementation the admin, the pages and the API all call.

Each function takes the acting user (``actor``, None for the system) and the client ``address``, checks
that the actor may do it (so no surface can forget), does it in one transaction and records it in the
audit trail. Views pass ``**accounts.audit.origin(request)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.models import Group, Permission, User
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts import permissions, tokens
from accounts.audit import record
from accounts.choices import AuditAction, TokenScope
from accounts.models import Agent, ApiToken
from instruments.models import Instrument, RunList

# What may be shared: an instrument or a run list (each with an owner, a slug and its own grant tables).
Shareable = Instrument | RunList


def _check_actor(actor, level: str, instrument: Shareable) -> None:
    if actor is not None and not permissions.has_perm(actor, level, instrument):
        raise PermissionDenied(f"You may not {level} {instrument.slug}.")


# --- sharing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Share:
    kind: str  # "user" or "group"
    principal: User | Group
    level: str | None

    @property
    def name(self) -> str:
        return self.principal.name if isinstance(self.principal, Group) else self.principal.get_username()


def _grants(instrument: Shareable, principal):
    user_grants, group_grants, _ = permissions.grant_models(instrument)
    if isinstance(principal, Group):
        return group_grants.objects.filter(content_object=instrument, group=principal), "group"
    return user_grants.objects.filter(content_object=instrument, user=principal), "user"


def _level_of(codenames: Iterable[str], suffix: str = "instrument") -> str | None:
    held = [level for level in permissions.LEVELS if f"{level}_{suffix}" in set(codenames)]
    return held[-1] if held else None


def share(instrument: Shareable, principal, level: str, *, actor=None, address: str | None = None) -> bool:
    """Give ``principal`` (a user or a group) exactly ``level`` on ``instrument`` (or a run list), and lower levels.

    Replaces whatever it had. Returns whether anything changed (sharing again at the same level is a
    no-op and records nothing).
    """
    if level not in permissions.LEVELS:
        raise ValidationError(f"{level!r} is not a level; use one of {', '.join(permissions.LEVELS)}")
    if not isinstance(principal, Group) and principal.pk == instrument.owner_id:
        raise ValidationError(f"{principal.get_username()} owns {instrument.slug} and has every level already.")
    _check_actor(actor, permissions.SHARE, instrument)
    suffix = permissions.grant_models(instrument)[2]
    wanted = {f"{rung}_{suffix}" for rung in permissions.levels_up_to(level)}
    with transaction.atomic():
        type(instrument).objects.select_for_update().filter(pk=instrument.pk).first()  # serialise concurrent shares
        grants, kind = _grants(instrument, principal)
        held = set(grants.values_list("permission__codename", flat=True))
        if held == wanted:
            return False
        by_codename = {
            p.codename: p
            for p in Permission.objects.filter(
                content_type__app_label="instruments",
                content_type__model=suffix,
                codename__in=permissions.codenames_implying(permissions.VIEW, suffix),
            )
        }
        grants.exclude(permission__codename__in=wanted).delete()
        model = grants.model
        model.objects.bulk_create(
            [
                model(content_object=instrument, permission=by_codename[codename], **{kind: principal})
                for codename in sorted(wanted - held)
            ]
        )
        record(
            AuditAction.SHARE_SET,
            actor=actor,
            obj=instrument,
            changes={kind: Share(kind, principal, level).name, "from": _level_of(held, suffix), "to": level},
            address=address,
        )
    return True


def unshare(instrument: Shareable, principal, *, actor=None, address: str | None = None) -> bool:
    """Take every level on ``instrument`` away from ``principal``. Returns whether it had any."""
    _check_actor(actor, permissions.SHARE, instrument)
    with transaction.atomic():
        grants, kind = _grants(instrument, principal)
        suffix = permissions.grant_models(instrument)[2]
        held = set(grants.values_list("permission__codename", flat=True))
        if not held:
            return False
        grants.delete()
        record(
            AuditAction.SHARE_REMOVED,
            actor=actor,
            obj=instrument,
            changes={kind: Share(kind, principal, "").name, "from": _level_of(held, suffix), "to": None},
            address=address,
        )
    return True


def level_of(instrument: Shareable, principal) -> str | None:
    """The level ``principal`` (a user or a group) was given on ``instrument``, not counting ownership."""
    grants, _ = _grants(instrument, principal)
    return _level_of(grants.values_list("permission__codename", flat=True), permissions.grant_models(instrument)[2])


def shares_of(instrument: Shareable) -> list[Share]:
    """Who else has which level on ``instrument`` (or a run list; not its owner), users first, by name."""
    found: list[Share] = []
    user_grants, group_grants, suffix = permissions.grant_models(instrument)
    for kind, model, field in (
        ("user", user_grants, "user"),
        ("group", group_grants, "group"),
    ):
        held: dict[int, tuple[User | Group, set[str]]] = {}
        for grant in model.objects.filter(content_object=instrument).select_related(field, "permission"):
            principal = getattr(grant, field)
            held.setdefault(principal.pk, (principal, set()))[1].add(grant.permission.codename)
        shares = [Share(kind, principal, _level_of(codenames, suffix)) for principal, codenames in held.values()]
        found.extend(sorted((s for s in shares if s.level), key=lambda s: s.name.lower()))
    return found


# --- tokens and agents ----------------------------------------------------------------------------


def _check_expiry(expires: datetime | None) -> None:
    if expires is not None and expires <= timezone.now():
        raise ValidationError("The expiry must be in the future.")


def _with_new_key(save: Callable[[str, str], object]) -> tuple[str, str]:
    """``save(key_id, clear token)`` with a fresh key id, again if that id is taken; (key id, clear token).
    The clear token is returned to be shown once, and kept nowhere."""
    for _ in range(5):
        key_id = tokens.new_key_id()
        clear = tokens.new_token(key_id)
        try:
            with transaction.atomic():
                save(key_id, clear)
            return key_id, clear
        except IntegrityError:
            if not ApiToken.objects.filter(key_id=key_id).exists():
                raise
    raise RuntimeError("could not find a free token key id")  # 36**12 ids: never in practice


def _issue(**fields) -> tuple[ApiToken, str]:
    """Save a new token row and return it with the clear token."""
    created: list[ApiToken] = []
    _, clear = _with_new_key(
        lambda key_id, clear: created.append(
            ApiToken.objects.create(key_id=key_id, digest=tokens.digest(clear), **fields)
        )
    )
    return created[0], clear


def _check_owner(actor, owner) -> None:
    if actor is None:
        return
    if permissions.is_agent(actor):
        raise PermissionDenied("An agent cannot manage tokens.")
    if not (permissions.is_administrator(actor) or actor.pk == owner.pk):
        raise PermissionDenied("Only an administrator may act for another user.")


@transaction.atomic
def create_personal_token(
    *, user, name: str, scope: str = TokenScope.READ, expires: datetime | None = None, actor=None, address=None
) -> tuple[ApiToken, str]:
    """A personal token carrying ``user``'s access (read-only or read-write). Returns (row, clear token)."""
    if scope not in (TokenScope.READ, TokenScope.READ_WRITE):
        raise ValidationError("A personal token is read-only or read-write.")
    _check_owner(actor, user)
    _check_expiry(expires)
    token, clear = _issue(user=user, name=name, scope=scope, expires=expires)
    record(
        AuditAction.TOKEN_CREATED,
        actor=actor,
        obj=token,
        changes={"user": user.get_username(), "scope": scope, "expires": expires, "key_id": token.key_id},
        address=address,
    )
    return token, clear


@transaction.atomic
def create_agent(
    *,
    owner,
    name: str,
    instruments: Iterable[Instrument] = (),
    description: str = "",
    expires: datetime | None = None,
    actor=None,
    address=None,
) -> tuple[Agent, str]:
    """An agent that may push readings to ``instruments`` (each one ``owner`` may collect to), with its
    token. Returns (agent, clear token)."""
    _check_owner(actor, owner)
    _check_expiry(expires)
    instruments = list(instruments)
    allowed = set(permissions.instruments_for(owner, permissions.COLLECT).filter(pk__in=[i.pk for i in instruments]))
    refused = [i.slug for i in instruments if i not in allowed]
    if refused:
        raise ValidationError(f"{owner.get_username()} may not collect to: {', '.join(sorted(refused))}")
    if Agent.objects.filter(owner=owner, name=name).exists():
        raise ValidationError(f"{owner.get_username()} already has an agent called {name!r}.")
    agent = Agent.objects.create(owner=owner, name=name, description=description)
    agent.instruments.set(instruments)
    token, clear = _issue(user=owner, agent=agent, name=name, scope=TokenScope.AGENT, expires=expires)
    record(
        AuditAction.AGENT_CREATED,
        actor=actor,
        obj=agent,
        changes={
            "owner": owner.get_username(),
            "instruments": sorted(i.slug for i in instruments),
            "expires": expires,
            "key_id": token.key_id,
        },
        address=address,
    )
    return agent, clear


@transaction.atomic
def revoke_token(token: ApiToken, *, actor=None, address=None) -> bool:
    """Revoke a token (an agent's token revokes the agent). Returns False if it was already revoked."""
    _check_owner(actor, token.user)
    now = timezone.now()
    if not ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now):
        return False
    # This process stops accepting it at once (and again at commit, past requests that read the row
    # meanwhile); other processes within DAQBROKER_TOKEN_CACHE_SECONDS.
    tokens.forget_all()
    transaction.on_commit(tokens.forget_all)
    token.revoked_at = now
    if token.agent_id is not None:
        record(
            AuditAction.AGENT_REVOKED, actor=actor, obj=token.agent, changes={"key_id": token.key_id}, address=address
        )
    else:
        record(AuditAction.TOKEN_REVOKED, actor=actor, obj=token, changes={"key_id": token.key_id}, address=address)
    return True


_KEEP = object()


@transaction.atomic
def replace_agent_token(agent: Agent, *, expires=_KEEP, actor=None, address=None) -> str:
    """Give ``agent`` a new token and return it (clear, once). The old one stops working at once.

    For a token that leaked, expired or was revoked: the agent keeps its name, sources, instruments and
    health; only the secret changes (the agent reads it again from its token file, no restart).
    ``expires`` replaces the expiry (None: never); by default an expiry still in the future is kept.
    """
    token = ApiToken.objects.select_for_update().get(agent=agent)
    _check_owner(actor, token.user)
    if expires is _KEEP:
        expires = token.expires if token.expires and not token.is_expired else None
    else:
        _check_expiry(expires)
    old_key_id, was_revoked = token.key_id, token.revoked_at is not None
    key_id, clear = _with_new_key(
        lambda key_id, clear: ApiToken.objects.filter(pk=token.pk).update(
            key_id=key_id,
            digest=tokens.digest(clear),
            expires=expires,
            revoked_at=None,
            last_used=None,
            last_address=None,
        )
    )
    tokens.forget_all()  # the old secret stops working here at once (elsewhere: DAQBROKER_TOKEN_CACHE_SECONDS)
    transaction.on_commit(tokens.forget_all)
    record(
        AuditAction.AGENT_TOKEN_REPLACED,
        actor=actor,
        obj=agent,
        changes={"old_key_id": old_key_id, "key_id": key_id, "was_revoked": was_revoked, "expires": expires},
        address=address,
    )
    return clear


def revoke_agent(agent: Agent, *, actor=None, address=None) -> bool:
    token = ApiToken.objects.filter(agent=agent).first()
    return revoke_token(token, actor=actor, address=address) if token else False
