"""At most N heavy requests (exports, percentile statistics) at once per user: slots in the shared cache.

A slot is a cache key ``daqbroker:heavy:<who>:<i>`` taken with an atomic ``add`` (Redis ``SET NX`` when
Redis is configured, so every web worker and host agrees; the local in-process cache otherwise, where
the limit then holds per web process). A request that finds all N slots taken is answered 429 with
``Retry-After``. A slot is released when its request ends (a streamed export: when the download ends
or the connection is dropped); its lease, renewed while an export streams, frees it after a crash.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

from django.conf import settings
from django.core.cache import cache

LEASE_SECONDS = 600  # gunicorn's own timeout is shorter: a slot outlives no live request by much
RETRY_AFTER_SECONDS = 10


class Slot:
    def __init__(self, key: str, token: str):
        self.key, self.token = key, token
        self.released = False

    def renew(self) -> None:
        cache.touch(self.key, LEASE_SECONDS)

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if cache.get(self.key) == self.token:  # not a slot whose lease ran out and went to another request
            cache.delete(self.key)


def acquire(who: str, limit: int | None = None) -> Slot | None:
    """A free slot of ``who``'s (e.g. ``user:12``), or None when all of them are taken."""
    limit = settings.DAQBROKER_HEAVY_REQUESTS_PER_USER if limit is None else limit
    token = secrets.token_hex(8)
    for i in range(limit):
        key = f"daqbroker:heavy:{who}:{i}"
        if cache.add(key, token, timeout=LEASE_SECONDS):
            return Slot(key, token)
    return None


class HeldStream:
    """A streamed body that holds ``slot`` until it is exhausted or closed (Django closes it when the
    response ends, whether or not the client read it all), renewing the slot's lease as it goes."""

    RENEW_EVERY = 64

    def __init__(self, stream: Iterator[bytes], slot: Slot):
        self.stream, self.slot = stream, slot
        self.pieces = 0

    def __iter__(self) -> HeldStream:
        return self

    def __next__(self) -> bytes:
        try:
            piece = next(self.stream)
        except BaseException:
            self.close()
            raise
        self.pieces += 1
        if self.pieces % self.RENEW_EVERY == 0:
            self.slot.renew()
        return piece

    def close(self) -> None:
        try:
            close = getattr(self.stream, "close", None)
            if close is not None:
                close()
        finally:
            self.slot.release()
