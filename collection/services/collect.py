"""Scheduling and running collection: which sources are due, and one safe run of one source.

Safe with any number of workers on any number of hosts: the dispatcher claims the due sources in one
locking update of ``next_run_at`` (so each is enqueued once; ``claim_due_sources``), and a run holds a lease taken by
compare-and-set on ``lease_owner``/``lease_expires`` (so a source is never collected twice at once).
The readings and the source's new cursor are committed in one transaction, guarded by the lease: a
worker killed mid-run commits nothing, and the next run starts again from the old cursor.

The lease lasts ``DAQBROKER_COLLECT_LEASE_SECONDS``; the collection task's hard time limit is shorter, so a
run ends (or is killed) before its lease can pass to another worker, and a lease left by a killed worker
frees the source within that time. A run found still "running" after its lease ran out is recorded as
lost.

Faults (docs/operations.md):
- the database goes away during a run: the run's failure is recorded and its lease released as soon as the
  database answers again (retried with backoff within the task, until the lease would run out anyway);
- a lease whose holder provably stopped (same host, process gone) is taken over at once, not after the lease;
- a frozen peer (stopped process, hung host) never makes anyone wait: claims and leases skip rows another
  transaction holds, collection transactions carry a lock timeout, and the database ends a transaction left
  idle longer than ``DAQBROKER_DB_IDLE_TRANSACTION_TIMEOUT`` (its locks go with it);
- a run whose readings and cursor committed stays recorded as committed, whatever is raised afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import DateTimeField, Exists, F, Func, OuterRef, Q, Value
from django.db.models.functions import Coalesce
from django.db.models.sql import UpdateQuery
from django.utils import timezone

from accounts import targets
from collection.choices import RunStatus
from collection.collectors import COLLECTORS
from collection.models import CollectionRun
from collection.services import corrections
from collection.services.ingest import KEEP, REPLACE, IngestResult, SampleBatch, ingest_samples
from daqbroker_agent.config import ConfigError
from daqbroker_agent.parsing import FieldNotFound, us_to_datetime
from instruments.choices import STREAMING_KINDS, ChannelKind, SourceKind
from instruments.models import WAITING_FOR_CHANNELS, Channel, DataSource

logger = logging.getLogger(__name__)

MAX_BACKOFF = timedelta(hours=1)
COMMITTED = (RunStatus.SUCCESS, RunStatus.WARNING)
# Failures whose message says all there is to say (a configuration mistake, a file or port that cannot be
# opened, a refused target, a run that ran out of time): logged as one line. Anything else is a bug or a
# surprise, and its traceback is logged with it.
EXPECTED_FAILURES: tuple[type[BaseException], ...] = (
    ValidationError,
    ConfigError,
    FieldNotFound,
    PermissionDenied,
    NotImplementedError,
    OSError,
    SoftTimeLimitExceeded,
    targets.TargetRefused,
)
RUN_HISTORY = timedelta(days=7)


def due_sources(now=None):
    now = now or timezone.now()
    return (
        DataSource.objects.filter(enabled=True, instrument__active=True)
        # Agents push; streaming sources are read by the stream collector (collection.streams), not polled.
        .exclude(kind__in=[SourceKind.AGENT, *STREAMING_KINDS])
        # A source no channel takes a field from waits (and stays due): see collect_source.
        .filter(Exists(Channel.objects.filter(source=OuterRef("pk")).exclude(kind=ChannelKind.DERIVED)))
        .filter(_still_due(now))
    )


def _oldest_first(due):
    """The longest due first, in ``next_run_at``'s index order (no tie-breaker: a tie-breaker would make the
    database sort every row of a tie before taking the first). Never-run sources (``next_run_at`` empty) come
    last on PostgreSQL and first on SQLite and MariaDB, each engine's own order for empty values: either way
    they are claimed by this pass or the next ones, which follow at once while batches are full."""
    return due.order_by("next_run_at")


def _still_due(now) -> Q:
    return Q(next_run_at__isnull=True) | Q(next_run_at__lte=now)


def bound_lock_waits() -> None:
    """Inside a collection transaction: never wait on a peer's row lock for long, and let the database end
    this transaction (and free its locks) if it is left idle, e.g. by a frozen worker.

    PostgreSQL: ``SET LOCAL lock_timeout`` and ``idle_in_transaction_session_timeout`` (this transaction
    only). MariaDB: ``innodb_lock_wait_timeout`` and ``idle_transaction_timeout`` for the session (they only
    ever apply inside transactions). SQLite has one writer and no row locks: its busy timeout bounds the wait.
    """
    lock_timeout = settings.DAQBROKER_DB_LOCK_TIMEOUT
    idle_timeout = settings.DAQBROKER_DB_IDLE_TRANSACTION_TIMEOUT
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('lock_timeout', %s, true), "
                "set_config('idle_in_transaction_session_timeout', %s, true)",
                [f"{lock_timeout}s", f"{idle_timeout}s"],
            )
    elif connection.vendor == "mysql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SET SESSION innodb_lock_wait_timeout = %s, SESSION idle_transaction_timeout = %s",
                [lock_timeout, idle_timeout],
            )


@contextlib.contextmanager
def collection_transaction() -> Iterator[None]:
    """``transaction.atomic()`` with the waits bounded (``bound_lock_waits``). On MariaDB, where the bounds
    are session variables, the connection gets the server's defaults back afterwards, so that other work
    sharing it (another task in the same worker) is not cut short by them."""
    try:
        with transaction.atomic():
            bound_lock_waits()
            yield
    finally:
        if connection.vendor == "mysql" and connection.connection is not None:
            with contextlib.suppress(Exception), connection.cursor() as cursor:
                cursor.execute(
                    "SET SESSION innodb_lock_wait_timeout = DEFAULT, SESSION idle_transaction_timeout = DEFAULT"
                )


def _locking(queryset):
    """``queryset`` locking its rows for this transaction, skipping rows a peer holds (never waiting)."""
    if not connection.features.has_select_for_update_skip_locked:
        return queryset  # SQLite: one writer at a time, nothing to skip
    of = ("self",) if connection.features.has_select_for_update_of else ()
    return queryset.select_for_update(skip_locked=True, of=of)


class PlusSeconds(Func):
    """``when + seconds`` (an integer expression) in each engine's own date arithmetic; Django's duration
    expressions cannot multiply an integer column into an interval on SQLite."""

    output_field = DateTimeField()

    def as_postgresql(self, compiler, connection, **extra_context):
        return self.as_sql(compiler, connection, template="(%(expressions)s))", arg_joiner=" + make_interval(secs => ")

    def as_mysql(self, compiler, connection, **extra_context):
        return self.as_sql(compiler, connection, template="DATE_ADD(%(expressions)s SECOND)", arg_joiner=", INTERVAL ")

    def as_sqlite(self, compiler, connection, **extra_context):
        # Django's own SQLite function for date arithmetic: it writes the text form Django stores.
        when, seconds = (compiler.compile(e) for e in self.get_source_expressions())
        return f"django_format_dtdelta('+', {when[0]}, ({seconds[0]}) * 1000000)", [*when[1], *seconds[1]]


def next_run_after(now: datetime) -> PlusSeconds:
    """``now`` plus each row's own interval, computed by the database."""
    return PlusSeconds(Value(now, output_field=DateTimeField()), F("interval_seconds"))


def claim_due_sources(now=None, limit: int | None = None) -> list[int]:
    """Ids of the due sources this caller claimed; each is claimed by exactly one concurrent caller.

    At most ``limit`` (``DISPATCH_BATCH``) of them, the longest due first (``_oldest_first``): the
    pass's own cost is bounded whatever the number of sources due, and a backlog is drained by further
    passes (``collection.tasks.dispatch_due_sources`` queues the next one at once when a batch is full).

    A fixed number of statements whatever the number of sources (docs/performance.md#scheduling):

    * PostgreSQL and SQLite: one ``UPDATE … RETURNING``, which moves every due source's ``next_run_at`` an
      interval on and returns the ids it moved. On PostgreSQL the due rows are chosen by a subquery that locks
      them ``FOR UPDATE SKIP LOCKED`` (a row a peer holds is skipped, not waited for) and the outer ``WHERE``
      checks again that the row is still due once locked, so two dispatchers never both claim a row. SQLite
      has one writer at a time: the statement is atomic.
    * MariaDB (no ``UPDATE … RETURNING``, no ``FOR UPDATE OF``): the batch read without locks, then
      ``SELECT … FOR UPDATE SKIP LOCKED`` of those rows of the source table alone (no instrument or channel
      row is locked), then one ``UPDATE`` of the rows it locked, in one transaction with the waits bounded
      (``collection_transaction``).

    Rows another transaction holds (a run committing, or a frozen worker) are skipped, not waited for: they
    are claimed by a later dispatch once free."""
    now = now or timezone.now()
    limit = limit or settings.DISPATCH_BATCH
    if connection.vendor == "mysql":
        with collection_transaction():
            # MariaDB has no FOR UPDATE OF: a locking read of the due query would lock (and skip sources for)
            # the joined instrument rows too. So the batch is chosen by a plain read, then locked on the source
            # table alone (no ordering either: the model's orders by its instrument's name, a join), checked
            # again that each is still due.
            batch = list(_oldest_first(due_sources(now))[:limit].values_list("id", flat=True))
            locked = _locking(DataSource.objects.filter(_still_due(now), pk__in=batch, enabled=True).order_by())
            ids = list(locked.values_list("id", flat=True)) if batch else []
            if ids:
                DataSource.objects.filter(pk__in=ids).update(next_run_at=next_run_after(now))
        return sorted(ids)
    due = _oldest_first(due_sources(now))[:limit]
    locking = connection.features.has_select_for_update_skip_locked
    if locking:
        due = due.select_for_update(skip_locked=True, of=("self",))
    # Built by the ORM (so the date arithmetic is each engine's own), sent with RETURNING added. A transaction
    # for the row locks only (no savepoint when nested: one statement applies or not), entered before the
    # statement is compiled (Django refuses to compile FOR UPDATE outside one); SQLite locks nothing and runs
    # the statement alone.
    with transaction.atomic(savepoint=False) if locking else contextlib.nullcontext():
        update = UpdateQuery(DataSource)
        update.add_q(Q(pk__in=due.values("pk")) & _still_due(now))
        update.add_update_values({"next_run_at": next_run_after(now)})
        sql, params = update.get_compiler(connection=connection).as_sql()
        table, pk = (connection.ops.quote_name(name) for name in (DataSource._meta.db_table, "id"))
        with connection.cursor() as cursor:
            cursor.execute(f"{sql} RETURNING {table}.{pk}", params)
            return sorted(row[0] for row in cursor.fetchall())


def worker_name() -> str:
    """This process, as runs record it: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _new_owner() -> str:
    # host:pid:nonce (at most 64 characters): lets a peer on the same host see that the holder is gone.
    return f"{socket.gethostname()[:38]}:{os.getpid()}:{uuid.uuid4().hex[:16]}"


def holder_is_gone(owner: str) -> bool:
    """True only when the lease holder provably stopped: it ran on this host and its process is gone.
    A holder on another host, or a stopped (frozen) process, is never assumed gone."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname()[:38] or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


@dataclass
class Lease:
    taken: bool
    why_not: str = ""
    taken_from: str = ""  # the previous holder, when its lease was taken over because it is gone


def _take_lease(source_id: int, owner: str, now: datetime) -> Lease:
    expires = now + timedelta(seconds=settings.DAQBROKER_COLLECT_LEASE_SECONDS)
    with collection_transaction():
        row = _locking(DataSource.objects.filter(pk=source_id)).values_list("lease_owner", "lease_expires").first()
        if row is None:
            if DataSource.objects.filter(pk=source_id).exists():
                return Lease(
                    False,
                    "its row is locked by another worker's unfinished transaction (a run committing, or a frozen "
                    "worker); not waiting, the next dispatch tries again",
                )
            return Lease(False, "it no longer exists")
        holder, until = row
        taken_from = ""
        if until is not None and until >= now:
            if not (holder and holder_is_gone(holder)):
                return Lease(
                    False, f"it is being collected by worker {holder or '?'} (lease until {until:%H:%M:%S} UTC)"
                )
            taken_from = holder
        won = DataSource.objects.filter(pk=source_id, lease_owner=holder, lease_expires=until).update(
            lease_owner=owner, lease_expires=expires
        )
        if not won:
            return Lease(False, "another worker took its lease a moment ago")
        return Lease(True, taken_from=taken_from)


def _release_lease(source_id: int, owner: str) -> None:
    DataSource.objects.filter(pk=source_id, lease_owner=owner).update(lease_owner="", lease_expires=None)


def collect_source(source_id: int) -> CollectionRun | None:
    """Collect one source once. Returns the recorded run, or None when the source is gone or busy."""
    now = timezone.now()
    owner = _new_owner()
    lease = _take_lease(source_id, owner, now)
    if not lease.taken:
        logger.debug("source %s not collected now: %s", source_id, lease.why_not)
        return None
    if lease.taken_from:
        logger.warning(
            "source %s: its lease holder %s is gone (its process no longer exists); lease taken over",
            source_id,
            lease.taken_from,
        )
    run: CollectionRun | None = None
    try:
        try:
            source = DataSource.objects.select_related("instrument", "target_set_by").get(pk=source_id)
        except DataSource.DoesNotExist:
            return None
        if source.kind in STREAMING_KINDS:
            # Read continuously by the stream collector (collection.streams), which holds its lease: not by runs.
            logger.info("source %s not collected by a run: the stream collector reads it", source_id)
            _release_lease(source_id, owner)
            return None
        if source.waiting_for_channels:
            # Nothing could be stored: the source is not read at all, so its cursor stays where it is and
            # every line is there for the first run once a channel maps one of its fields.
            logger.debug("source %s not collected: %s", source_id, WAITING_FOR_CHANNELS)
            _release_lease(source_id, owner)
            return None
        _record_lost_runs(source_id, now, lease.taken_from)
        run = CollectionRun.objects.create(source=source, started_at=now, worker=worker_name())
        reread_asked = source.reread_requested_at if source.rereadable else None
        if reread_asked is not None:  # a re-read was asked for: start over from a fresh cursor
            source.cursor = corrections.reread_cursor(source)
        collector = COLLECTORS.get(source.kind)
        if collector is None:
            raise NotImplementedError(f"no collector for {source.get_kind_display()} sources yet")
        # The rules may have changed since the source was saved: the one target check again, at run time.
        config = targets.check_at_run(source, source.validated_config())
        channels = list(source.channels.exclude(kind=ChannelKind.DERIVED))
        collected = collector.collect(source, config, channels)
        rereading = corrections.reread_in_progress(source.cursor)
        with collection_transaction():
            result = IngestResult()
            # Rejected lines go with the first batch; a run that read nothing still records them.
            for i, batch in enumerate(
                collected.batches or [SampleBatch(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0))]
            ):
                part = ingest_samples(
                    batch,
                    origin=source.kind,
                    source_id=source.id,
                    rejections=collected.rejections if i == 0 else (),
                    # A re-read: old data. Alarm rules leave it alone; with "replace", differing values replace.
                    on_conflict=REPLACE if rereading and rereading.get("replace") else KEEP,
                    old_until=rereading.get("requested") if rereading else None,
                    reason=f"re-read of source {source} with replace",
                )
                result.accepted += part.accepted
                result.duplicates += part.duplicates
                result.replaced.extend(part.replaced)
                result.conflicted.extend(part.conflicted)
                result.rejected.extend(part.rejected)
            finished = timezone.now()
            still_ours = DataSource.objects.filter(pk=source.id, lease_owner=owner).update(
                cursor=collected.cursor,
                last_run_at=now,
                last_success_at=finished,
                last_error="",
                consecutive_failures=0,
                lease_owner="",
                lease_expires=None,
                **({"next_run_at": finished} if collected.more else {}),
                # When reading from this position began: channels added later missed the lines before it.
                cursor_started_at=now if reread_asked is not None else Coalesce(F("cursor_started_at"), Value(now)),
            )
            if not still_ours:
                raise LeaseLost(f"the lease on source {source.id} expired during the run; nothing was committed")
            if reread_asked is not None:  # done (unless asked again meanwhile: then the next run starts over)
                DataSource.objects.filter(pk=source.id, reread_requested_at=reread_asked).update(
                    reread_requested_at=None, reread_from=None, reread_replace=False
                )
            run.status = RunStatus.SUCCESS
            notes = list(collected.warnings)  # input lost before it could be read (a file that vanished)
            for warning in collected.warnings:
                logger.warning("source %s: %s", source.id, warning)
            stored_nothing = nothing_stored(collected.lines_read, result)
            if stored_nothing:
                run.status = RunStatus.WARNING
                notes.insert(0, stored_nothing)
                logger.warning("source %s: %s", source.id, stored_nothing)
            if collected.doubts or collected.faults:  # readings stored, but dates look wrong or parts failed
                run.status = RunStatus.WARNING
                for doubt in (*collected.faults, *collected.doubts):
                    notes.append(doubt)
                    logger.warning("source %s: %s", source.id, doubt)
            if notes:  # said on the run, where the admin sees it
                run.error = "warning: " + "; ".join(notes)[:1990]
            if rereading:
                said = f"re-read from {_reread_start(rereading)}"
                if rereading.get("replace"):
                    said += f", {len(result.replaced):,} stored value(s) replaced"
                if collected.more:
                    said += "; continues next run"
                run.note = said  # progress, not a fault: a successful re-read has no error
            run.accepted, run.duplicates, run.rejected = result.accepted, result.duplicates, result.rejected_count
            run.conflicts = result.conflicts
            run.finished_at = finished
            run.save()
        _log_success(source, run, source.consecutive_failures)
        return run
    except Exception as exc:
        if run is not None and _committed(run):
            # Raised after the commit (a soft time limit, a follow-up hook): the readings, the cursor and the
            # run's success are stored; recording a failure now would be a lie and push the next run back.
            logger.warning(
                "source %s: %s raised after its run committed; the run stays recorded as committed",
                source_id,
                type(exc).__name__,
                exc_info=True,
            )
            run.refresh_from_db()
            return run
        # One line per failed run, with its reason; a traceback only for what nobody expected.
        logger.warning(
            "collection of source %s failed: %s",
            source_id,
            _failure_message(exc),
            exc_info=not isinstance(exc, (*EXPECTED_FAILURES, LeaseLost)),
        )
        return _record_failure(source_id, run, owner, now, exc)


def _reread_start(note: dict) -> str:
    start = note.get("from")
    return "the start" if start is None else us_to_datetime(int(start)).isoformat()


def nothing_stored(lines_read: int, result: IngestResult) -> str:
    """Why a run that read lines stored nothing ('' when it stored something, or read nothing)."""
    if not lines_read or result.accepted or result.duplicates or result.replaced:
        return ""
    read = f"{lines_read:,} line{'s' if lines_read != 1 else ''} read and nothing stored"
    if result.conflicts and not result.rejected_count:
        return (
            f"{read}: {result.conflicts:,} reading(s) differ from the values already stored at their times "
            "(conflicts, kept in quarantine with both values; a re-read with replace stores them)"
        )
    if result.rejected_count or result.conflicts:
        quarantined = result.rejected_count + result.conflicts
        return f"{read}: {quarantined:,} reading(s) or line(s) were quarantined, see the quarantine for why"
    return f"{read}: no field of these lines maps to a channel of this source (check the channels' source fields)"


class LeaseLost(RuntimeError):
    pass


def _log_success(source: DataSource, run: CollectionRun, failures_before: int) -> None:
    """A run that went as expected is chatter (DEBUG); what a person wants to know is INFO: a source that
    works again after failing, and readings sent to quarantine."""
    summary = f"{run.accepted} stored, {run.duplicates} duplicate(s), {run.rejected} quarantined"
    if failures_before:
        logger.info("source %s collected again after %d failed run(s): %s", source.id, failures_before, summary)
    elif run.rejected:
        logger.info("source %s: %s (see Rejected samples)", source.id, summary)
    else:
        logger.debug("source %s collected: %s", source.id, summary)


LOST_RUN = (
    "the worker stopped during this run (killed, or its host lost); nothing of it was committed, "
    "and the next run read the same input again"
)


def _record_lost_runs(source_id: int, now: datetime, gone_holder: str = "") -> None:
    """Runs of this source still "running" after their lease ran out, or whose worker is provably gone:
    their worker died (killed, lost its host). Nothing of them was committed; say so beside the source."""
    stale = Q(started_at__lt=now - timedelta(seconds=settings.DAQBROKER_COLLECT_LEASE_SECONDS))
    if gone_holder:
        stale |= Q(worker=":".join(gone_holder.split(":")[:2]))
    CollectionRun.objects.filter(stale, source_id=source_id, status=RunStatus.RUNNING).update(
        status=RunStatus.FAILED, finished_at=now, error=LOST_RUN
    )


def _committed(run: CollectionRun) -> bool:
    """Whether this run's transaction committed (its row says success), asked of the database itself so
    that an exception raised at any instant after the commit is told apart from one before it."""
    return bool(_retrying_database(lambda: CollectionRun.objects.filter(pk=run.pk, status__in=COMMITTED).exists()))


def _failure_message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "configuration: " + "; ".join(exc.messages)
    if isinstance(exc, targets.TargetRefused):
        return f"refused by the target rules ({exc.field}): {exc.reason}"[:2000]
    return f"{type(exc).__name__}: {exc}"[:2000]


def _record_failure(
    source_id: int, run: CollectionRun | None, owner: str, now: datetime, exc: Exception
) -> CollectionRun | None:
    """Record the failed run, count the failure, back the source off and release the lease, in one
    transaction, retried until the database answers (a failure caused by a database outage is recorded
    as soon as it is over). Only the lease holder touches the source's state."""
    message = _failure_message(exc)

    def record() -> CollectionRun | None:
        with collection_transaction():
            source = DataSource.objects.filter(pk=source_id, lease_owner=owner).first()
            if source is not None:
                failures = source.consecutive_failures + 1
                backoff = min(timedelta(seconds=source.interval_seconds * 2 ** min(failures, 12)), MAX_BACKOFF)
                DataSource.objects.filter(pk=source_id, lease_owner=owner).update(
                    last_run_at=now,
                    last_error=message,
                    consecutive_failures=failures,
                    next_run_at=timezone.now() + backoff,
                    lease_owner="",
                    lease_expires=None,
                )
            if run is None:
                if not DataSource.objects.filter(pk=source_id).exists():
                    return None
                return CollectionRun.objects.create(
                    source_id=source_id,
                    started_at=now,
                    worker=worker_name(),
                    status=RunStatus.FAILED,
                    error=message,
                    finished_at=timezone.now(),
                )
            run.status, run.error, run.finished_at = RunStatus.FAILED, message, timezone.now()
            CollectionRun.objects.filter(pk=run.pk).update(
                status=run.status, error=run.error, finished_at=run.finished_at
            )
            return run

    return _retrying_database(record, source_id=source_id, lease_until=now + _lease())


def _lease() -> timedelta:
    return timedelta(seconds=settings.DAQBROKER_COLLECT_LEASE_SECONDS)


def _retrying_database(work, *, source_id: int | None = None, lease_until: datetime | None = None):
    """``work()``, tried again with backoff (0.5 s doubling to 2 s) while the database cannot be reached,
    until the lease would run out anyway (then the lease frees the source by itself)."""
    until = lease_until or timezone.now() + _lease()
    delay = 0.5
    attempt = 0
    while True:
        try:
            result = work()
        except (OperationalError, InterfaceError) as exc:
            attempt += 1
            if timezone.now() + timedelta(seconds=delay) >= until:
                logger.error("the database is still unreachable (%s); giving up, the lease ends at %s", exc, until)
                raise
            if attempt == 1:
                logger.warning(
                    "the database is unreachable (%s); the bookkeeping of source %s is retried until it answers",
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                    source_id,
                )
            with contextlib.suppress(Exception):
                connection.close()  # a broken connection is not reused; the next attempt connects afresh
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
            continue
        if attempt:
            logger.warning(
                "the database answers again after %d attempt(s); source %s's run recorded", attempt, source_id
            )
        return result


def prune_run_history(keep: timedelta = RUN_HISTORY, batch: int = 5000) -> int:
    """Delete collection runs older than ``keep``, in bounded batches."""
    cutoff = timezone.now() - keep
    ids = list(CollectionRun.objects.filter(started_at__lt=cutoff).values_list("id", flat=True)[:batch])
    return CollectionRun.objects.filter(id__in=ids).delete()[0] if ids else 0
