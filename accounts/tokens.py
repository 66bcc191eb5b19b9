"""API token format, hashing, look-up and use tracking.

A token reads ``dbk_<key id>_<secret>``: the recognisable prefix (so secret scanners and people can tell
what leaked), a 12-character key id stored in clear and indexed, and 43 characters (256 bits) of secret.
The database keeps only the key id and the SHA-256 digest of the whole token. Nothing here logs a token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from accounts.models import TOKEN_PREFIX, ApiToken

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
    token = ApiToken.objects.select_related("user", "agent").filter(key_id=match["key_id"]).first()
    presented = digest(raw)
    if not hmac.compare_digest(presented, token.digest if token else _NO_DIGEST) or token is None:
        raise TokenRejected("Invalid token.")
    if token.revoked_at is not None:
        raise TokenRejected("Token revoked.")
    if token.is_expired:
        raise TokenRejected("Token expired.")
    if not token.user.is_active:
        raise TokenRejected("The token's user is inactive.")
    return token


def touch(token: ApiToken, address: str | None) -> bool:
    """Record use at most once a minute per token, whatever the number of processes (compare-and-set)."""
    now = timezone.now()
    if token.last_used is not None and now - token.last_used < LAST_USED_EVERY:
        return False
    stale = Q(last_used__isnull=True) | Q(last_used__lte=now - LAST_USED_EVERY)
    written = ApiToken.objects.filter(pk=token.pk).filter(stale).update(last_used=now, last_address=address)
    if written:
        token.last_used, token.last_address = now, address
    return bool(written)
