"""The agent's durable queue: every reading is committed to a local SQLite file (WAL) before anything else.

Tables::

    readings  (id, channel, ts, value)       id grows; channel is what the server is told ("17" or "inst/chan")
    batches   (id, first_id, last_id, ...)   claimed id ranges, each with the batch id sent to the server
    counters  (name, value)                  depth, claimed_to (high-water mark), totals for ``status``
    meta      (key, value)                   JSON: cached central configuration, sources' cursors, state
    dead_letters                             readings the server refused as a body (never as readings)
    unparsed  (id, source_key, text, ...)    lines that did not parse, until the server keeps them in its
                                             quarantine (``claim_unparsed``/``ack_unparsed``); bounded

How a reading travels:

1. ``add`` inserts readings (and, in the same transaction, the source's cursor, e.g. a file offset),
   so a crash either keeps both or neither.
2. ``claim`` hands an uploader a batch: first any batch claimed earlier and not acknowledged (after a
   crash or a restart: same readings, same batch id, so the server recognises the retry), otherwise the
   next ``size`` readings above the high-water mark, recorded as a new batch with a new id.
3. ``ack`` deletes the batch's readings and the batch in one transaction, once the server has answered
   that it stored (or recognised) the batch.

New readings are committed with ``synchronous=FULL`` (``spool_sync``): once ``add`` returns they survive
a power cut. Claims and acknowledgements need not (see ``relax_durability``).

At-least-once delivery from here, plus the server's idempotent ingest (readings already stored are
skipped, a known batch id is answered from memory), is exactly-once storage.

The spool is bounded (``max_readings``): ``room()`` says how many more fit, and ``add`` refuses what
does not fit (raising :class:`SpoolFull`), so the sources decide what to do (a file tail waits; a
stream drops and counts).

A spool that cannot be written (disk full, locked past the busy timeout, I/O error) raises
:class:`SpoolUnavailable` from every operation, with a message that says which and where ("spool disk
full: 0 bytes free on /var/lib/…"); the transaction is rolled back whole, so nothing is half-stored and
no cursor moves. The agent's threads wait and try again; see ``daqbroker_agent.runtime``.

Every thread uses its own connection (``sqlite3`` connections are not shared across threads); several
processes may open the same spool (``run`` and ``status``), SQLite's locking keeps them consistent.
"""

from __future__ import annotations

import errno
import functools
import json
import math
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

SPOOL_FILE = "spool.sqlite3"
Reading = tuple[str, int, Any]  # (channel reference, µs since 1970 UTC, float or str)

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never re-used: batches are ranges above a high-water mark
    channel TEXT NOT NULL,
    ts INTEGER NOT NULL,
    value
);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    first_id INTEGER NOT NULL,
    last_id INTEGER NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    ts INTEGER NOT NULL,
    value,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS unparsed (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source_key TEXT NOT NULL,   -- "server:12" or "local:<name>", as SourceSpec.key
    source_name TEXT NOT NULL,
    text TEXT NOT NULL,
    reason TEXT NOT NULL,
    context TEXT NOT NULL,      -- JSON: file, line, received
    refused TEXT NOT NULL DEFAULT ''  -- why the server refused them (kept here, never sent again)
);
INSERT OR IGNORE INTO counters (name, value) VALUES
    ('depth', 0), ('claimed_to', 0), ('spooled', 0), ('uploaded', 0), ('rejected', 0), ('dropped', 0),
    ('dead', 0), ('unparsed', 0), ('unparsed_sent', 0), ('unparsed_dropped', 0), ('conflicts', 0);
"""
MAX_UNPARSED_LINES = 20_000  # lines waiting to be reported (at most 2,000 characters each)
MAX_LINE_CHARS = 2_000
UNPARSED_BATCH_KEY = "unparsed_batch"


class SpoolFull(Exception):
    """There is no room for these readings; ``room`` says how many would have fitted."""

    def __init__(self, wanted: int, room: int, capacity: int):
        self.wanted, self.room, self.capacity = wanted, room, capacity
        super().__init__(f"the spool is full: {wanted:,} readings do not fit ({room:,} of {capacity:,} free)")


class SpoolUnavailable(Exception):
    """The spool's database cannot be used right now (disk full, locked, I/O error): nothing was changed.

    ``kind`` is "disk full", "locked" or "I/O error" (else "error"); the message names the spool's folder
    and, for a full disk, the bytes free there.
    """

    def __init__(self, message: str, kind: str):
        self.kind = kind
        super().__init__(message)


def free_bytes(directory: Path) -> int | None:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def spool_error(exc: BaseException, directory: Path) -> SpoolUnavailable:
    """``exc`` (sqlite3's or the file system's) as the operator should read it."""
    text = str(exc)
    lowered = text.lower()
    if "disk is full" in lowered or getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(directory)
        where = f"{free:,} bytes free on {directory}" if free is not None else f"on {directory}"
        return SpoolUnavailable(f"spool disk full: {where} ({text})", "disk full")
    if "locked" in lowered or "busy" in lowered:
        return SpoolUnavailable(f"spool locked: {directory / SPOOL_FILE} is held by another process ({text})", "locked")
    if "i/o" in lowered or isinstance(exc, OSError):
        return SpoolUnavailable(f"spool I/O error on {directory}: {text}", "I/O error")
    return SpoolUnavailable(f"spool error on {directory / SPOOL_FILE}: {text}", "error")


P = ParamSpec("P")
R = TypeVar("R")


def _guarded(method: Callable[P, R]) -> Callable[P, R]:
    """Turn sqlite3's ``OperationalError`` (and file system errors) of a spool method into SpoolUnavailable."""

    @functools.wraps(method)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (sqlite3.OperationalError, OSError) as exc:
            raise spool_error(exc, args[0].directory) from exc  # type: ignore[attr-defined]

    return guarded


@dataclass(frozen=True)
class Unparsed:
    """A line a source read and could not turn into readings."""

    source_key: str
    source_name: str
    text: str
    reason: str
    context: dict  # {"file": ..., "line": ...} where known, and "received" (µs since 1970)


@dataclass(frozen=True)
class UnparsedBatch:
    id: str
    last_id: int
    lines: list[Unparsed]


@dataclass(frozen=True)
class Batch:
    id: str
    first_id: int
    last_id: int
    attempts: int
    readings: list[tuple[int, str, int, Any]]  # (spool id, channel, ts, value)
    resent: bool = False  # claimed before (by a process that stopped, or split) and not acknowledged

    def __len__(self) -> int:
        return len(self.readings)


def storable(value: Any) -> Any:
    """A value as the spool keeps it: finite floats as REAL, everything else as text.

    SQLite stores NaN as NULL, so non-finite numbers become text ("nan", "inf"): the server then refuses
    that one reading with its reason and keeps it in quarantine, rather than the agent losing it.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value) if abs(value) < 2**53 else str(value)
    return value if isinstance(value, str) else str(value)


class Spool:
    def __init__(self, directory: Path | str, *, max_readings: int = 5_000_000, synchronous: str = "FULL"):
        self.directory = Path(directory)
        self.path = self.directory / SPOOL_FILE
        self.max_readings = max_readings
        self.synchronous = synchronous.upper()
        if self.synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA, not {synchronous!r}")
        self._local = threading.local()
        self._create()

    @_guarded
    def _create(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.connection().executescript(SCHEMA)

    # -- connections ----------------------------------------------------------------------------------

    def connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=True)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(f"PRAGMA synchronous={self.synchronous}")
                db.execute("PRAGMA busy_timeout=60000")
            except sqlite3.Error:
                db.close()  # opened on a full disk, say: try again from scratch next time
                raise
            self._local.db = db
        return db

    @_guarded
    def relax_durability(self) -> None:
        """For this thread's connection (an uploader's): commit without waiting for the disk.

        Claims and acknowledgements need no fsync: one lost to a power cut only means readings are sent
        again, which the server's idempotent ingest absorbs; and a later durable commit (new readings)
        syncs the write-ahead log up to it anyway. New readings always wait for the disk (``spool_sync``).
        """
        self.connection().execute("PRAGMA synchronous=NORMAL")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    @contextmanager
    def _write(self):
        """One write transaction. On any error it is rolled back whole (SQLite may have rolled it back
        already, on a full disk: then there is nothing to roll back) and sqlite3's error is re-raised as
        SpoolUnavailable."""
        try:
            db = self.connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    with suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
        except (sqlite3.OperationalError, OSError) as exc:
            raise spool_error(exc, self.directory) from exc

    def free_bytes(self) -> int | None:
        """Bytes free on the spool's file system (None if it cannot be asked)."""
        return free_bytes(self.directory)

    # -- counters and metadata ------------------------------------------------------------------------

    @_guarded
    def counters(self) -> dict[str, int]:
        return dict(self.connection().execute("SELECT name, value FROM counters").fetchall())

    @_guarded
    def depth(self) -> int:
        return self.connection().execute("SELECT value FROM counters WHERE name = 'depth'").fetchone()[0]

    @_guarded
    def room(self) -> int:
        return max(0, self.max_readings - self.depth())

    def count(self, db: sqlite3.Connection, name: str, delta: int) -> None:
        db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (delta, name))

    @_guarded
    def add_to_counter(self, name: str, delta: int) -> None:
        with self._write() as db:
            self.count(db, name, delta)

    @_guarded
    def get(self, key: str, default: Any = None) -> Any:
        row = self.connection().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    @_guarded
    def put(self, key: str, value: Any, db: sqlite3.Connection | None = None) -> None:
        sql = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        if db is not None:
            db.execute(sql, (key, json.dumps(value)))
            return
        with self._write() as own:
            own.execute(sql, (key, json.dumps(value)))

    # -- readings in ----------------------------------------------------------------------------------

    @_guarded
    def add(
        self, readings: Sequence[Reading], *, cursor: tuple[str, Any] | None = None, unparsed: Sequence[Unparsed] = ()
    ) -> int:
        """Store ``readings`` (and a source's cursor, and the lines that did not parse) in one transaction;
        SpoolFull if the readings do not fit (then nothing is stored).

        ``cursor`` is ``(meta key, value)``: the position the source has read up to, committed with the
        readings it produced so that a crash never loses readings nor reads them twice into the spool.
        """
        n = len(readings)
        with self._write() as db:
            self._add_unparsed(db, unparsed)
            depth = db.execute("SELECT value FROM counters WHERE name = 'depth'").fetchone()[0]
            if n and depth + n > self.max_readings:
                raise SpoolFull(n, max(0, self.max_readings - depth), self.max_readings)
            if n:
                db.executemany(
                    "INSERT INTO readings (channel, ts, value) VALUES (?, ?, ?)",
                    ((channel, int(ts), storable(value)) for channel, ts, value in readings),
                )
                self.count(db, "depth", n)
                self.count(db, "spooled", n)
            if cursor is not None:
                self.put(cursor[0], cursor[1], db)
        return n

    def _add_unparsed(self, db: sqlite3.Connection, lines: Sequence[Unparsed]) -> None:
        if not lines:
            return
        waiting = db.execute("SELECT count(*) FROM unparsed WHERE refused = ''").fetchone()[0]
        kept = list(lines[: max(0, MAX_UNPARSED_LINES - waiting)])
        db.executemany(
            "INSERT INTO unparsed (source_key, source_name, text, reason, context) VALUES (?, ?, ?, ?, ?)",
            [
                (u.source_key, u.source_name, u.text[:MAX_LINE_CHARS], u.reason[:300], json.dumps(u.context))
                for u in kept
            ],
        )
        self.count(db, "unparsed", len(kept))
        self.count(db, "unparsed_dropped", len(lines) - len(kept))

    @_guarded
    def claim_unparsed(self, size: int = 1000) -> UnparsedBatch | None:
        """The next lines to report, with their batch id; the same ones and id again until acknowledged."""
        with self._write() as db:
            claimed = db.execute("SELECT value FROM meta WHERE key = ?", (UNPARSED_BATCH_KEY,)).fetchone()
            if claimed is not None:
                batch_id, last = json.loads(claimed[0])
                rows = db.execute(
                    "SELECT source_key, source_name, text, reason, context FROM unparsed "
                    "WHERE id <= ? AND refused = '' ORDER BY id",
                    (last,),
                ).fetchall()
            else:
                rows = db.execute(
                    "SELECT id, source_key, source_name, text, reason, context FROM unparsed "
                    "WHERE refused = '' ORDER BY id LIMIT ?",
                    (size,),
                ).fetchall()
                if not rows:
                    return None
                batch_id, last = f"lines-{uuid.uuid4().hex}", rows[-1][0]
                rows = [row[1:] for row in rows]
                self.put(UNPARSED_BATCH_KEY, [batch_id, last], db)
        if not rows:
            self.ack_unparsed(UnparsedBatch(batch_id, last, []))
            return None
        lines = [Unparsed(key, name, text, reason, json.loads(context)) for key, name, text, reason, context in rows]
        return UnparsedBatch(batch_id, last, lines)

    @_guarded
    def ack_unparsed(self, batch: UnparsedBatch) -> None:
        """The server keeps these lines now: forget them."""
        with self._write() as db:
            db.execute("DELETE FROM unparsed WHERE id <= ? AND refused = ''", (batch.last_id,))
            db.execute("DELETE FROM meta WHERE key = ?", (UNPARSED_BATCH_KEY,))
            self.count(db, "unparsed_sent", len(batch.lines))

    @_guarded
    def refuse_unparsed(self, batch: UnparsedBatch, reason: str) -> None:
        """The server refuses these lines whatever is done: keep them here, marked, and never send them again."""
        with self._write() as db:
            db.execute(
                "UPDATE unparsed SET refused = ? WHERE id <= ? AND refused = ''",
                (reason[:1000] or "refused", batch.last_id),
            )
            db.execute("DELETE FROM meta WHERE key = ?", (UNPARSED_BATCH_KEY,))

    @_guarded
    def unparsed_waiting(self) -> tuple[int, int]:
        """(lines waiting to be reported, lines the server refused and kept here)."""
        row = (
            self.connection()
            .execute("SELECT coalesce(sum(refused = ''), 0), coalesce(sum(refused != ''), 0) FROM unparsed")
            .fetchone()
        )
        return row[0], row[1]

    # -- batches out ----------------------------------------------------------------------------------

    @_guarded
    def claim(self, size: int, *, exclude: Iterable[str] = ()) -> Batch | None:
        """The next batch to upload, or None when there is nothing to send.

        A batch claimed before and not acknowledged comes first, with its readings and id unchanged;
        ``exclude`` names the batches other threads of this process are sending right now.
        """
        excluded = list(exclude)
        with self._write() as db:
            placeholders = ",".join("?" * len(excluded))
            where = f"WHERE id NOT IN ({placeholders})" if excluded else ""
            row = db.execute(
                f"SELECT id, first_id, last_id, attempts FROM batches {where} ORDER BY first_id LIMIT 1", excluded
            ).fetchone()
            resent = row is not None
            if resent:
                batch_id, first, last, attempts = row
                readings = db.execute(
                    "SELECT id, channel, ts, value FROM readings WHERE id BETWEEN ? AND ? ORDER BY id", (first, last)
                ).fetchall()
            else:
                claimed_to = db.execute("SELECT value FROM counters WHERE name = 'claimed_to'").fetchone()[0]
                readings = db.execute(
                    "SELECT id, channel, ts, value FROM readings WHERE id > ? ORDER BY id LIMIT ?", (claimed_to, size)
                ).fetchall()
                if not readings:
                    return None
                batch_id, first, last, attempts = new_batch_id(), readings[0][0], readings[-1][0], 0
                db.execute(
                    "INSERT INTO batches (id, first_id, last_id, size, created) VALUES (?, ?, ?, ?, ?)",
                    (batch_id, first, last, len(readings), time.time()),
                )
                db.execute("UPDATE counters SET value = ? WHERE name = 'claimed_to'", (last,))
        return Batch(batch_id, first, last, attempts, readings, resent)

    @_guarded
    def note_attempt(self, batch_id: str, error: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE batches SET attempts = attempts + 1, last_error = ? WHERE id = ?", (error[:1000], batch_id)
            )

    @_guarded
    def ack(self, batch: Batch, *, uploaded: int | None = None, rejected: int = 0, conflicts: int = 0) -> int:
        """The server has the batch: forget its readings. Returns how many readings were removed.

        ``rejected``: readings the server refused; ``conflicts``: readings whose time already held another
        value there (it kept its value and quarantined these). Both are kept by the server, not stored."""
        with self._write() as db:
            removed = db.execute(
                "DELETE FROM readings WHERE id BETWEEN ? AND ?", (batch.first_id, batch.last_id)
            ).rowcount
            db.execute("DELETE FROM batches WHERE id = ?", (batch.id,))
            self.count(db, "depth", -removed)
            self.count(db, "uploaded", removed - rejected - conflicts if uploaded is None else uploaded)
            self.count(db, "rejected", rejected)
            self.count(db, "conflicts", conflicts)
        return removed

    @_guarded
    def split(self, batch: Batch) -> None:
        """Cut a batch the server refused as a whole (too large, unreadable) into two halves with new ids.

        Neither half was stored (the server refused the body before storing anything), so new ids are safe.
        """
        if len(batch.readings) < 2:
            raise ValueError("a batch of one reading cannot be split")
        middle = batch.readings[len(batch.readings) // 2 - 1][0]
        after = batch.readings[len(batch.readings) // 2][0]
        now = time.time()
        with self._write() as db:
            db.execute("DELETE FROM batches WHERE id = ?", (batch.id,))
            for first, last, size in (
                (batch.first_id, middle, len(batch.readings) // 2),
                (after, batch.last_id, len(batch.readings) - len(batch.readings) // 2),
            ):
                db.execute(
                    "INSERT INTO batches (id, first_id, last_id, size, created) VALUES (?, ?, ?, ?, ?)",
                    (new_batch_id(), first, last, size, now),
                )

    @_guarded
    def bury(self, batch: Batch, reason: str) -> None:
        """Move a batch the server refuses whatever is done (a single unreadable reading) to dead letters."""
        now = time.time()
        with self._write() as db:
            db.executemany(
                "INSERT INTO dead_letters (channel, ts, value, reason, at) VALUES (?, ?, ?, ?, ?)",
                [(channel, ts, value, reason[:1000], now) for _, channel, ts, value in batch.readings],
            )
            removed = db.execute(
                "DELETE FROM readings WHERE id BETWEEN ? AND ?", (batch.first_id, batch.last_id)
            ).rowcount
            db.execute("DELETE FROM batches WHERE id = ?", (batch.id,))
            self.count(db, "depth", -removed)
            self.count(db, "dead", removed)

    @_guarded
    def pending_batches(self) -> int:
        return self.connection().execute("SELECT count(*) FROM batches").fetchone()[0]

    @_guarded
    def first_waiting(self) -> int | None:
        """The time (µs) of the reading spooled first among those still waiting."""
        row = self.connection().execute("SELECT ts FROM readings ORDER BY id LIMIT 1").fetchone()
        return row[0] if row else None


def new_batch_id() -> str:
    """Unique across restarts and spools: the server remembers batch ids per token."""
    return f"agent-{uuid.uuid4().hex}"
