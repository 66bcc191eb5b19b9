"""API token format, hashing, look-up and use tracking.

A token reads ``dbk_<key id>_<secret>``: the recognisable prefix (so secret scanners and people can tell
what leaked), a 12-character key id stored in clear and indexed, and 43 characters (256 bits) of secret.
The database keeps only the key id and the SHA-256 digest of the whole token. Nothing here logs a token.

A token found usable is remembered in this process for DAQBROKER_TOKEN_CACHE_SECONDS (default 10), keyed
by its digest (never the clear token), with its user, agent and the user's administrator flag: a sender
posting every second then costs no authentication query. Each request gets its own fresh instances, and
expiry is checked against the clock on every request. A change made through this process (revoking,
replacing, saving a token, a user or an agent, changing a user's groups) forgets the whole cache at once;
one made by another process (another gunicorn worker or host) takes effect there within the cache's
lifetime. 0 turns the cache off. See docs/security.md.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import Exists, Model, OuterRef, Q
from django.utils import timezone

from accounts.models import TOKEN_PREFIX, Agent, ApiToken
from accounts.roles import ADMINISTRATORS

KEY_ID_LENGTH = 12
_KEY_ALPHABET = string.ascii_lowercase + string.digits
TOKEN_PATTERN = re.compile(rf"^{TOKEN_PREFIX}(?P<key_id>[a-z0-9]{{{KEY_ID_LENGTH}}})_(?P<secret>[A-Za-z0-9_-]{{43}})$")
LAST_USED_EVERY = timedelta(minutes=1)
# Compared against when the key id is unknown, so a miss costs the same work as a wrong secret.
_NO_DIGEST = "0" * 64


class TokenRejected(Exception):
    """The presented token cannot be used. The message is safe to show: it never contains the token."""


def new_key_id() -> str:
    return "".join(secrets.choice(_KEY_ALPHABET) for _ in range(KEY_ID_LENGTH))


def new_token(key_id: str) -> str:
    return f"{TOKEN_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def looks_like_token(raw: str) -> bool:
    return TOKEN_PATTERN.match(raw) is not None


def find_token(raw: str) -> ApiToken:
    """The usable ``ApiToken`` for a presented token string, or ``TokenRejected``."""
    match = TOKEN_PATTERN.match(raw)
    if match is None:
        raise TokenRejected("Malformed token: expected dbk_ followed by the key id and the secret.")
    presented = digest(raw)
    cached = _remembered(presented)
    if cached is not None:
        _check_usable(cached)  # expiry, against the clock now
        return cached
    # The user's administrator flag comes with the token (one query, not two): remembered with it.
    administrators = User.groups.through.objects.filter(user_id=OuterRef("user_id"), group__name=ADMINISTRATORS)
    token = (
        ApiToken.objects.select_related("user", "agent")
        .annotate(user_in_administrators=Exists(administrators))
        .filter(key_id=match["key_id"])
        .first()
    )
    if not hmac.compare_digest(presented, token.digest if token else _NO_DIGEST) or token is None:
        raise TokenRejected("Invalid token.")
    _check_usable(token)
    administrator = token.user.is_superuser or token.user_in_administrators
    setattr(token.user, "_daqbroker_is_administrator", administrator)  # noqa: B010 -- see permissions
    _remember(presented, token, administrator)
    return token


def _check_usable(token: ApiToken) -> None:
    if token.revoked_at is not None:
        raise TokenRejected("Token revoked.")
    if token.is_expired:
        raise TokenRejected("Token expired.")
    if not token.user.is_active:
        raise TokenRejected("The token's user is inactive.")


def touch(token: ApiToken, address: str | None) -> bool:
    """Record use at most once a minute per token, whatever the number of processes (compare-and-set)."""
    now = timezone.now()
    if token.last_used is not None and now - token.last_used < LAST_USED_EVERY:
        return False
    stale = Q(last_used__isnull=True) | Q(last_used__lte=now - LAST_USED_EVERY)
    written = ApiToken.objects.filter(pk=token.pk).filter(stale).update(last_used=now, last_address=address)
    if written:
        token.last_used, token.last_address = now, address
    # Not written: another process recorded a use within the minute. Either way this process's copy need
    # not try again for a minute.
    _note_use(token, now, address if written else None)
    return bool(written)


# --- the verified-token cache (see the module docstring) ---------------------------------------------

M = TypeVar("M", bound=Model)
_CACHE_MAX = 10_000  # tokens remembered per process; past it the cache starts over


@dataclass
class _Remembered:
    until: float  # time.monotonic() after which the database is asked again
    token: dict
    user: dict
    agent: dict | None
    administrator: bool


_cache: dict[str, _Remembered] = {}
_cache_lock = threading.Lock()


def _fields(instance: Model) -> dict:
    return {f.attname: getattr(instance, f.attname) for f in instance._meta.concrete_fields}


def _instance(model: type[M], fields: dict, using: str) -> M:
    return model.from_db(using, list(fields), list(fields.values()))


def _remember(presented: str, token: ApiToken, administrator: bool) -> None:
    lifetime = settings.DAQBROKER_TOKEN_CACHE_SECONDS
    if lifetime <= 0:
        return
    # The administrator flag of the token's user (an agent's owner) is remembered with it: a property of
    # the principal too (accounts.permissions.is_administrator).
    entry = _Remembered(
        until=time.monotonic() + lifetime,
        token=_fields(token),
        user=_fields(token.user),
        agent=_fields(token.agent) if token.agent is not None else None,
        administrator=administrator,
    )
    with _cache_lock:
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[presented] = entry


def _remembered(presented: str) -> ApiToken | None:
    """A fresh ``ApiToken`` (with its user and agent) built from the cache, or None."""
    entry = _cache.get(presented)
    if entry is None or entry.until <= time.monotonic():
        return None
    using = "default"
    token = _instance(ApiToken, entry.token, using)
    user = _instance(User, entry.user, using)
    setattr(user, "_daqbroker_is_administrator", entry.administrator)  # noqa: B010 -- see permissions
    token.user = user
    token.agent = _instance(Agent, entry.agent, using) if entry.agent is not None else None
    return token


def _note_use(token: ApiToken, now, address: str | None) -> None:
    with _cache_lock:
        for entry in _cache.values():
            if entry.token["id"] == token.pk:
                entry.token["last_used"] = now
                if address is not None:
                    entry.token["last_address"] = address


def forget_all(**kwargs) -> None:
    """Forget every remembered token (a receiver of saves and deletions of tokens, users, agents, groups)."""
    with _cache_lock:
        _cache.clear()
