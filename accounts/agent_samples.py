"""Lines an agent reports from a file on its machine, for the source preview (docs/source-setup.md).

The flow, all through the API (the agent never opens a port):

1. the agent's owner or an administrator asks (``request_sample``; audited): the folder, the pattern (or
   one file name) and the encoding, as an agent source of kind ``file`` would name them;
2. the agent finds the waiting requests in its configuration (``waiting_for``, listed in
   ``GET /api/v1/agent/config/`` as ``sample_requests``), reads the first lines of the newest matching
   file *only inside its own* ``allowed_paths`` (``daqbroker_agent.samples``), and posts them, or why it
   will not, to ``POST /api/v1/agent/samples/<id>/`` (``deliver_sample``);
3. the preview reads the delivered lines as its sample (``collection.services.preview``), the page
   polling until they arrive or the request times out.

Bounded: at most ``MAX_WAITING_PER_AGENT`` requests wait per agent, a delivery holds at most ``MAX_LINES``
lines and ``MAX_BYTES`` bytes, a request unanswered after ``WAIT_SECONDS`` has timed out, and rows older
than ``KEEP_SECONDS`` are deleted whenever a new request is made.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts import audit, permissions
from accounts.choices import AuditAction, SampleRequestStatus, TokenScope
from accounts.models import Agent, AgentSampleRequest
from accounts.principals import AgentPrincipal
from daqbroker_agent.config import ConfigError, validate_source_config

MAX_LINES = AgentSampleRequest.MAX_LINES
MAX_BYTES = AgentSampleRequest.MAX_BYTES


def agents_for(who) -> QuerySet[Agent]:
    """The agents whose files ``who`` may ask for: all for administrators, their own for others."""
    user, token = permissions.resolve(who)
    if not permissions.is_authenticated(user) or isinstance(user, AgentPrincipal):
        return Agent.objects.none()
    if token is not None and token.scope == TokenScope.READ:
        return Agent.objects.none()  # a read-only token sets up nothing
    if permissions.is_administrator(who):
        return Agent.objects.all()
    return Agent.objects.filter(owner=user)


def request_sample(who, agent: Agent, config: dict, *, file_name: str = "", address: str | None = None):
    """Ask ``agent`` for the first lines of a file; ``config`` is a file source's (``path``, ``pattern``,
    ``encoding``). Raises PermissionDenied (not the agent's owner nor an administrator) or ValidationError."""
    if not agents_for(who).filter(pk=agent.pk).exists():
        raise PermissionDenied("Only the agent's owner or an administrator may read its files.")
    try:
        checked = validate_source_config("file", config)
    except ConfigError as exc:
        raise ValidationError({f"config.{exc.field}" if exc.field else "config": exc.message}) from None
    if file_name and ("/" in file_name or "\\" in file_name or file_name in (".", "..")):
        raise ValidationError({"file": f"{file_name!r} must be a file name inside the folder"})
    user, _ = permissions.resolve(who)
    if not permissions.is_authenticated(user) or isinstance(user, AgentPrincipal):  # for the type checker
        raise PermissionDenied("Only the agent's owner or an administrator may read its files.")
    now = timezone.now()
    with transaction.atomic():
        AgentSampleRequest.objects.filter(created__lt=now - timedelta(seconds=AgentSampleRequest.KEEP_SECONDS)).delete()
        waiting = waiting_requests(agent).count()
        if waiting >= AgentSampleRequest.MAX_WAITING_PER_AGENT:
            raise ValidationError(
                {"agent": f"{waiting} samples are already waiting for {agent.name}; try again when it has answered."}
            )
        request = AgentSampleRequest.objects.create(
            agent=agent,
            requested_by=user,
            folder=checked["path"],
            pattern=checked["pattern"],
            file_name=file_name,
            encoding=checked["encoding"],
            created=now,
        )
        audit.record(
            AuditAction.AGENT_SAMPLE_REQUESTED,
            actor=user,
            obj=agent,
            changes={"folder": request.folder, "pattern": request.pattern, "file": file_name, "request": request.pk},
            address=address,
        )
    return request


def waiting_requests(agent: Agent) -> QuerySet[AgentSampleRequest]:
    since = timezone.now() - timedelta(seconds=AgentSampleRequest.WAIT_SECONDS)
    return AgentSampleRequest.objects.filter(agent=agent, status=SampleRequestStatus.WAITING, created__gte=since)


def waiting_for(agent: Agent) -> list[dict[str, Any]]:
    """What the agent's configuration lists for it to read (oldest first)."""
    return [
        {
            "id": r.pk,
            "path": r.folder,
            "pattern": r.pattern,
            "file": r.file_name,
            "encoding": r.encoding,
            "max_lines": MAX_LINES,
            "max_bytes": MAX_BYTES,
        }
        for r in waiting_requests(agent).order_by("created", "id")
    ]


class NotYours(Exception):
    """No waiting request of this id addressed to this agent (answered 404)."""


def deliver_sample(who, request_id: int, data: dict) -> AgentSampleRequest:
    """Keep what the agent read (``lines``, ``file``, ``truncated``) or why it did not (``error``)."""
    user, _ = permissions.resolve(who)
    if not isinstance(user, AgentPrincipal):
        raise NotYours
    with transaction.atomic():
        request = (
            waiting_requests(user.agent).select_for_update().filter(pk=request_id).first()
            if request_id <= 2**62
            else None
        )
        if request is None:
            raise NotYours
        request.answered = timezone.now()
        if data.get("error"):
            request.status = SampleRequestStatus.REFUSED
            request.error = str(data["error"])[:1000]
        else:
            request.status = SampleRequestStatus.DELIVERED
            request.lines, cut = bounded(data.get("lines") or [])
            request.origin = str(data.get("file") or "")[:300]
            request.truncated = bool(data.get("truncated")) or cut
        request.save(update_fields=["answered", "status", "error", "lines", "origin", "truncated"])
    return request


def bounded(lines: list[str]) -> tuple[list[str], bool]:
    """At most MAX_LINES lines and MAX_BYTES bytes (UTF-8), and whether any were cut."""
    kept: list[str] = []
    size = 0
    for line in lines[:MAX_LINES]:
        size += len(line.encode("utf-8", errors="replace")) + 1
        if size > MAX_BYTES:
            return kept, True
        kept.append(line)
    return kept, len(lines) > MAX_LINES


def sample_request_for(who, request_id: int) -> AgentSampleRequest | None:
    """A request ``who`` made (administrators: any) on an agent they may still ask, or None."""
    found = AgentSampleRequest.objects.filter(pk=request_id, agent__in=agents_for(who)).select_related("agent")
    if not permissions.is_administrator(who):
        user, _ = permissions.resolve(who)
        found = found.filter(requested_by=user)  # type: ignore[misc]
    return found.first()
