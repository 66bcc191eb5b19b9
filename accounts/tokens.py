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
from django.db import connections
from django.db.models import Model, Q
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
    found = _read_token(match["key_id"])
    if not hmac.compare_digest(presented, found.token["digest"] if found else _NO_DIGEST) or found is None:
        raise TokenRejected("Invalid token.")
    token = _built(found)
    _check_usable(token)
    _remember(presented, found)
    return token


# --- the verification read: one statement, its SQL text built once per database -------------------------
#
# A token is verified when a process has not remembered it (its first request there, then every
# DAQBROKER_TOKEN_CACHE_SECONDS): with many agents, a fifth of a web worker's time went there, three quarters
# of it Django building the same query again (1.0 ms of CPU a verification on SQLite, 1.3-1.7 on PostgreSQL).
# The text is written out from the models' own columns and the values go through the same converters as the
# ORM's (backend, then field); ``accounts/tests/test_tokens.py`` compares what it reads with the ORM's.


@dataclass(frozen=True)
class _Found:
    token: dict
    user: dict
    agent: dict | None
    administrator: bool


_verification_sql: dict[str, tuple[str, list[tuple]]] = {}


def _columns(model: type[Model], alias: str, connection) -> list[tuple]:
    """(model, attname, SQL column, column expression, converters) of each concrete field of ``model``."""
    quote = connection.ops.quote_name
    out = []
    for field in model._meta.concrete_fields:
        column = field.get_col(alias)
        converters = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
        out.append((model, field.attname, f"{alias}.{quote(field.column)}", column, converters))
    return out


def _verification(connection) -> tuple[str, list[tuple]]:
    """The verification's SQL (parameters: the administrators' group name, the key id) and its columns."""
    cached = _verification_sql.get(connection.alias)
    if cached is not None:
        return cached
    quote = connection.ops.quote_name
    columns = [
        *_columns(ApiToken, "t", connection),
        *_columns(User, "u", connection),
        *_columns(Agent, "a", connection),
    ]
    groups = User.groups.through
    group_table = groups._meta.get_field("group").related_model._meta.db_table
    sql = (
        f"SELECT {', '.join(column for _, _, column, _, _ in columns)}, "
        f"EXISTS (SELECT 1 FROM {quote(groups._meta.db_table)} ug JOIN {quote(group_table)} g "
        f"ON g.{quote('id')} = ug.{quote('group_id')} WHERE ug.{quote('user_id')} = t.{quote('user_id')} "
        f"AND g.{quote('name')} = %s) "
        f"FROM {quote(ApiToken._meta.db_table)} t "
        f"JOIN {quote(User._meta.db_table)} u ON u.{quote('id')} = t.{quote('user_id')} "
        f"LEFT JOIN {quote(Agent._meta.db_table)} a ON a.{quote('id')} = t.{quote('agent_id')} "
        f"WHERE t.{quote('key_id')} = %s"
    )
    _verification_sql[connection.alias] = (sql, columns)
    return sql, columns


def _read_token(key_id: str, using: str = "default") -> _Found | None:
    """The token of ``key_id`` with its user, its agent (if any) and whether that user is an administrator
    (a superuser or in the Administrators group), as field dicts; None if there is no such token."""
    connection = connections[using]
    sql, columns = _verification(connection)
    with connection.cursor() as cursor:
        cursor.execute(sql, [ADMINISTRATORS, key_id])
        row = cursor.fetchone()
    if row is None:
        return None
    fields: dict[type[Model], dict] = {ApiToken: {}, User: {}, Agent: {}}
    for (model, attname, _, column, converters), value in zip(columns, row, strict=False):
        for converter in converters:
            value = converter(value, column, connection)
        fields[model][attname] = value
    user = fields[User]
    return _Found(
        token=fields[ApiToken],
        user=user,
        agent=fields[Agent] if fields[ApiToken]["agent_id"] is not None else None,
        administrator=bool(user["is_superuser"] or row[-1]),
    )


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
    found: _Found  # what the verification read (its dicts are this entry's own)


_cache: dict[str, _Remembered] = {}
_cache_lock = threading.Lock()


def _instance(model: type[M], fields: dict, using: str) -> M:
    return model.from_db(using, list(fields), list(fields.values()))


def _remember(presented: str, found: _Found) -> None:
    lifetime = settings.DAQBROKER_TOKEN_CACHE_SECONDS
    if lifetime <= 0:
        return
    # The administrator flag of the token's user (an agent's owner) is remembered with it: a property of
    # the principal too (accounts.permissions.is_administrator).
    entry = _Remembered(until=time.monotonic() + lifetime, found=found)
    with _cache_lock:
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[presented] = entry


def _remembered(presented: str) -> ApiToken | None:
    """A fresh ``ApiToken`` (with its user and agent) built from the cache, or None."""
    entry = _cache.get(presented)
    if entry is None or entry.until <= time.monotonic():
        return None
    return _built(entry.found)


def _built(found: _Found) -> ApiToken:
    """An ``ApiToken`` with its user (carrying the administrator flag) and agent, fresh instances."""
    using = "default"
    token = _instance(ApiToken, found.token, using)
    user = _instance(User, found.user, using)
    setattr(user, "_daqbroker_is_administrator", found.administrator)  # noqa: B010 -- see permissions
    token.user = user
    token.agent = _instance(Agent, found.agent, using) if found.agent is not None else None
    return token


def _note_use(token: ApiToken, now, address: str | None) -> None:
    with _cache_lock:
        for entry in _cache.values():
            if entry.found.token["id"] == token.pk:
                entry.found.token["last_used"] = now
                if address is not None:
                    entry.found.token["last_address"] = address


def forget_all(**kwargs) -> None:
    """Forget every remembered token (a receiver of saves and deletions of tokens, users, agents, groups)."""
    with _cache_lock:
        _cache.clear()
