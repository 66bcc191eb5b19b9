"""Queueing follow-up work when the broker (Redis) may be down.

Work queued after an ingest (a rollup refresh, the spike checks, derived channels and alarm rules for the
new readings) must never fail the ingest that already committed, and must never be lost: each caller keeps
what the task needs in the database (``RollupBacklog``, ``FollowUpBacklog``) and a periodic task picks it
up. After a failed enqueue this process does not try the broker again for ``BROKER_RETRY_SECONDS`` (each
failed attempt costs kombu's publish retries); it says so once per outage in the log, and once when the
broker answers again. See docs/operations.md.

``enqueue_soon`` wakes a worker for work that is already in the database (the backlogs written by
``ingest_samples`` in its transaction) at most once every ``WAKE_EVERY_SECONDS`` per process and task,
instead of once per request: a thousand small senders posting every second cost one message a second, not
a thousand. Every caller still gets a task that runs after its own commit (see ``enqueue_soon``).
"""

from __future__ import annotations

import logging
import threading
import time

from celery import Task, current_app

logger = logging.getLogger(__name__)

BROKER_RETRY_SECONDS = 5.0

WAKE_EVERY_SECONDS = 1.0

_lock = threading.Lock()
_down_until = 0.0  # monotonic time before which this process does not try the broker
_outage_logged = False
_due_at: dict[str, float] = {}  # per task name: monotonic time the last wake-up sent is due to run


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


def enqueue_soon(task: Task | str, *, what: str, every: float = WAKE_EVERY_SECONDS, **options) -> bool:
    """Queue ``task`` (no arguments: its work is in the database, committed before this is called) unless
    one queued by this process is still due to run later than now: that one will see this caller's rows.
    Otherwise queue one due ``every`` seconds after the last one (or now, when that is past). So at most
    one task per ``every`` seconds per process, and each caller is followed by a task that starts after it
    called. False when the broker cannot be reached (the periodic sweep then does the work)."""
    name = task if isinstance(task, str) else task.name
    now = time.monotonic()
    with _lock:
        due = _due_at.get(name, 0.0)
        if now < due:
            return True
        countdown = max(0.0, due + every - now)
        _due_at[name] = now + countdown
    if countdown:
        options["countdown"] = countdown
    queued = try_enqueue(task, what=what, **options)
    if not queued:
        with _lock:
            _due_at[name] = 0.0  # nothing is due: the next caller tries again (after the retry pause)
    return queued
