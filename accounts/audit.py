"""The audit trail's one writer, ``record``, and what it needs to know about a request.

Services call ``record(action, actor=..., obj=..., changes=..., address=...)``; views pass
``**audit.origin(request)`` to a service to say who is acting and from where. Deletions that cascade
(a channel's readings going with the channel) are recorded by the receivers in ``accounts.signals``,
which find the current request through ``AuditContextMiddleware``.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import decimal
import ipaddress
import uuid
from collections.abc import Mapping

from django.conf import settings
from django.db.models import Model

from accounts.choices import AuditAction
from accounts.models import AuditEvent
from accounts.principals import AgentPrincipal

_current_request: contextvars.ContextVar = contextvars.ContextVar("daqbroker_audit_request", default=None)


def client_address(request) -> str | None:
    """The client's IP address: REMOTE_ADDR, or behind our reverse proxy (DAQBROKER_BEHIND_PROXY) the
    address that proxy appended to X-Forwarded-For, which the client cannot forge. Used alike by the
    audit trail, the tokens' last-seen address and the login lockout (AXES_CLIENT_IP_CALLABLE)."""
    meta = getattr(request, "META", {})
    address = meta.get("REMOTE_ADDR")
    if getattr(settings, "DAQBROKER_BEHIND_PROXY", False):
        forwarded = [part.strip() for part in meta.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
        if forwarded:
            address = forwarded[-1]
    try:
        return str(ipaddress.ip_address(address)) if address else None
    except ValueError:
        return None


def actor_of(request):
    """The acting user (or AgentPrincipal) of a request, None when anonymous."""
    user = getattr(request, "user", None)
    return user if user is not None and getattr(user, "is_authenticated", False) else None


def origin(request) -> dict:
    """``actor`` and ``address`` keyword arguments for a service called on behalf of ``request``."""
    return {"actor": actor_of(request), "address": client_address(request)}


def current_origin() -> dict:
    """``origin`` of the request being served on this thread/task, or the system's (no actor)."""
    request = _current_request.get()
    return origin(request) if request is not None else {"actor": None, "address": None}


class AuditContextMiddleware:
    """Makes the request known to audit receivers for deletions that happen by cascade."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        reset = _current_request.set(request)
        try:
            return self.get_response(request)
        finally:
            _current_request.reset(reset)


def _actor_fields(actor) -> dict:
    if actor is None:
        return {"actor": None, "actor_label": "system"}
    if isinstance(actor, AgentPrincipal):
        return {"actor": actor.owner, "actor_label": str(actor)[:200]}
    return {"actor": actor, "actor_label": actor.get_username()[:200]}


def jsonable(value):
    """A value as it can be stored in the ``changes`` JSON."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Model):
        return {"id": value.pk, "repr": str(value)[:200]}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    return str(value)


def record(
    action: str,
    *,
    actor=None,
    obj: Model | None = None,
    object_type: str = "",
    object_id: str | int = "",
    object_repr: str = "",
    changes: Mapping | None = None,
    address: str | None = None,
) -> AuditEvent:
    """Append one event to the audit trail (inside the caller's transaction)."""
    if action not in AuditAction.values:
        raise ValueError(f"{action!r} is not an audit action")
    if obj is not None:
        object_type = object_type or obj._meta.label_lower
        object_id = object_id or obj.pk
        object_repr = object_repr or str(obj)
    return AuditEvent.objects.create(
        action=action,
        object_type=object_type,
        object_id="" if object_id is None else str(object_id),
        object_repr=object_repr[:200],
        changes=jsonable(dict(changes or {})),
        address=address,
        **_actor_fields(actor),
    )


def diff(before: Mapping, after: Mapping) -> dict:
    """``{field: [old, new]}`` for the fields whose value changed."""
    return {
        key: [jsonable(before.get(key)), jsonable(after.get(key))]
        for key in sorted(set(before) | set(after))
        if jsonable(before.get(key)) != jsonable(after.get(key))
    }
