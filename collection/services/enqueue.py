"""Queueing follow-up work when the broker (Redis) may be down.

Work queued after an ingest (a rollup refresh, the spike checks, derived channels and alarm rules for the
new readings) must never fail the ingest that already committed, and must never be lost: each caller keeps
what the task needs in the database (``RollupBacklog``, ``FollowUpBacklog``) and a periodic task picks it
up. After a failed enqueue this process does not try the broker again for ``BROKER_RETRY_SECONDS`` (each
failed attempt costs kombu's publish retries); it says so once per outage in the log, and once when the
broker answers again. See docs/operations.md.
"""

from __future__ import annotations

import logging
import threading
import time

from celery import Task, current_app

logger = logging.getLogger(__name__)

BROKER_RETRY_SECONDS = 5.0

_lock = threading.Lock()
_down_until = 0.0  # monotonic time before which this process does not try the broker
_outage_logged = False


def try_enqueue(task: Task | str, *, what: str, args: list | None = None, **options) -> bool:
    """Queue ``task`` (a task, or a registered task's name where importing it would be a cycle); False when
    the broker cannot be reached now (nothing raised)."""
    global _down_until, _outage_logged
    if time.monotonic() < _down_until:
        return False
    try:
        if isinstance(task, str):
            current_app.send_task(task, args=args or [], **options)
        else:
            task.apply_async(args=tuple(args or ()), **options)
    except Exception as exc:  # any broker or transport error (kombu wraps most in OperationalError)
        with _lock:
            _down_until = time.monotonic() + BROKER_RETRY_SECONDS
            first = not _outage_logged
            _outage_logged = True
        if first:
            logger.warning(
                "the task broker is unreachable (%s: %s); %s and later follow-up work stay in the database and "
                "are picked up by the periodic sweep; the broker is tried again every %.0f s",
                type(exc).__name__,
                exc,
                what,
                BROKER_RETRY_SECONDS,
            )
        return False
    if _outage_logged:
        with _lock:
            _outage_logged = False
        logger.warning("the task broker answers again; follow-up work is queued as usual")
    return True
