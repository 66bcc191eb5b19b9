"""Uploading the spool to ``POST /api/v1/ingest/``: batches with ids, backoff with jitter, clear failures.

What each answer means for a batch:

==========================  ====================================================================
200                         stored (or recognised: ``"replayed": true``): acknowledged and deleted
                            from the spool; readings the server refused are listed with their
                            reason, logged, and not sent again (the server keeps them in quarantine)
401 / 403                   the token is refused (revoked, expired, wrong): nothing is lost, the
                            spool keeps filling; the token is read again (token file or
                            configuration file) and the batch retried as soon as it changes
429 / 503                   busy: wait ``Retry-After`` seconds (or back off) and send it again
400 / 413 / 415             the body as a whole is refused: the batch is split in two and each half
                            sent on its own, down to single readings; a single reading still
                            refused is moved to the spool's dead letters and logged as an error
no answer, 5xx, other       back off (exponential, with jitter, up to ``retry_max_seconds``) and
                            send the same batch, with the same id, again
==========================  ====================================================================

Lines that did not parse are reported to ``POST /api/v1/agent/unparsed/`` by ``report_unparsed`` (after
each heartbeat, and by ``flush``), a thousand at a time with a batch id, and deleted from the spool once
the server keeps them in its quarantine. A 400 marks them refused (kept in the spool, shown by
``status``); anything else leaves them for the next try.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from daqbroker_agent.auth import AuthWatch
from daqbroker_agent.client import ApiClient, Reply, ServerUnreachable
from daqbroker_agent.parsing import us_to_datetime
from daqbroker_agent.spool import Batch, Spool, SpoolUnavailable, Unparsed
from daqbroker_agent.state import AgentState, RateLimitedLog

log = logging.getLogger("daqbroker_agent.upload")
INGEST_PATH = "/api/v1/ingest/"
UNPARSED_PATH = "/api/v1/agent/unparsed/"
UNPARSED_BATCH_LINES = 1000
LISTED_REJECTIONS = 5
PROGRESS_EVERY = 10.0
AUTH_RETRY_SECONDS = 15.0  # how often the token (file) is read again while the server refuses it
SPOOL_RETRY_SECONDS = 1.0  # how often a spool that cannot be written (disk full, locked) is tried again
SPOOL_AREA = "spool storage"  # the agent state's problem area for a spool that cannot be written


class Backoff:
    """Exponential backoff with "equal jitter": the n-th wait is between half and all of
    ``min(maximum, initial * 2**n)``, so agents that failed together do not retry together.
    A server's ``Retry-After`` is honoured as given, plus up to 10% (at most one second) of jitter."""

    def __init__(self, initial: float, maximum: float, rng: Callable[[], float] = random.random):
        self.initial, self.maximum, self.rng = initial, maximum, rng
        self.failures = 0

    def next(self, retry_after: float | None = None) -> float:
        self.failures += 1
        if retry_after is not None:
            return retry_after + self.rng() * min(1.0, 0.1 * retry_after)
        ceiling = min(self.maximum, self.initial * 2 ** min(self.failures - 1, 60))
        return ceiling / 2 + self.rng() * ceiling / 2

    def reset(self) -> None:
        self.failures = 0


def ingest_payload(batch: Batch) -> tuple[dict, list[tuple[str, int, object]]]:
    """The JSON-columns body for ``batch`` and its readings in the body's order (for rejection indices).

    Times are sent as integer microseconds (``time_unit: us``), exact; values as the spool holds them.
    """
    groups: dict[str, tuple[list, list]] = {}
    for _, channel, ts, value in batch.readings:
        group = groups.get(channel)
        if group is None:
            group = groups[channel] = ([], [])
        group[0].append(ts)
        group[1].append(value)
    order = [
        (channel, ts, value)
        for channel, (times, values) in groups.items()
        for ts, value in zip(times, values, strict=True)
    ]
    body = {
        "batch_id": batch.id,
        "time_unit": "us",
        "channels": {channel: {"t": times, "v": values} for channel, (times, values) in groups.items()},
    }
    return body, order


@dataclass(frozen=True)
class Prepared:
    """A claimed batch, encoded once for every attempt."""

    batch: Batch
    body: bytes
    order: list  # the readings in the body's order, to name the ones the server refuses


def prepare(batch: Batch) -> Prepared:
    payload, order = ingest_payload(batch)
    return Prepared(batch, json.dumps(payload, separators=(",", ":"), allow_nan=False).encode(), order)


@dataclass
class Progress:
    """Readings uploaded since the last progress line, for the operator's log."""

    readings: int = 0
    batches: int = 0
    rejected: int = 0
    replayed: int = 0
    conflicts: int = 0
    since: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, readings: int, rejected: int, replayed: bool, conflicts: int = 0) -> None:
        with self.lock:
            self.readings += readings
            self.rejected += rejected
            self.conflicts += conflicts
            self.batches += 1
            self.replayed += int(replayed)

    def report(self, spool: Spool, force: bool = False) -> None:
        with self.lock:
            elapsed = time.monotonic() - self.since
            if not self.batches or (elapsed < PROGRESS_EVERY and not force):
                return
            readings, batches, rejected, replayed = self.readings, self.batches, self.rejected, self.replayed
            conflicts = self.conflicts
            self.readings = self.batches = self.rejected = self.replayed = self.conflicts = 0
            self.since = time.monotonic()
        extra = f", {rejected:,} refused by the server" if rejected else ""
        extra += f", {replayed} already stored (retries)" if replayed else ""
        extra += f", {conflicts:,} in conflict with other values stored at their times" if conflicts else ""
        log.info(
            "uploaded %s readings in %s batches over %.0f s (%s/s)%s; %s waiting in the spool",
            f"{readings:,}",
            batches,
            elapsed,
            f"{readings / max(elapsed, 1e-9):,.0f}",
            extra,
            f"{spool.depth():,}",
        )


class Uploader:
    """Sends the spool's batches, from the threads ``start`` starts."""

    def __init__(
        self,
        spool: Spool,
        client: ApiClient,
        state: AgentState,
        *,
        batch_size: int,
        backoff: Callable[[], Backoff],
        auth: AuthWatch | None = None,
    ):
        self.spool, self.client, self.state = spool, client, state
        self.auth = auth or AuthWatch(client, state)
        self.batch_size = batch_size
        self.make_backoff = backoff
        self.progress = Progress()
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self._noisy = RateLimitedLog(log, every=60.0)
        self._stop: threading.Event | None = None

    # -- the threads ----------------------------------------------------------------------------------
    # One thread claims and encodes batches ahead (up to one per sender), ``senders`` threads send them:
    # the spool's reading and writing stays off the path between one request and the next.

    def targets(
        self, stop: threading.Event, *, senders: int, idle_wait: float = 0.2
    ) -> list[tuple[str, Callable[[], None]]]:
        """The preparing thread's and the ``senders`` sending threads' functions, by thread name (for a
        supervisor that starts them, and starts again one that died); they return soon after ``stop``."""
        self._ready: queue.Queue[Prepared] = queue.Queue(maxsize=senders)
        self._stop = stop
        found: list[tuple[str, Callable[[], None]]] = [("upload-prepare", lambda: self._prepare(stop, idle_wait))]
        found += [(f"upload-{i + 1}", lambda: self._send(stop)) for i in range(senders)]
        return found

    def start(self, stop: threading.Event, *, senders: int, idle_wait: float = 0.2) -> list[threading.Thread]:
        """Start the preparing thread and ``senders`` sending threads; they end soon after ``stop`` is set."""
        threads = [
            threading.Thread(target=target, name=name, daemon=True)
            for name, target in self.targets(stop, senders=senders, idle_wait=idle_wait)
        ]
        for thread in threads:
            thread.start()
        return threads

    def spool_trouble(self, exc: SpoolUnavailable) -> None:
        """The spool cannot be written: say so (status, heartbeat, log) and let the caller wait and retry."""
        self.state.problem(SPOOL_AREA, str(exc))
        self._noisy.log(logging.ERROR, f"spool-{exc.kind}", "%s; uploading waits until it can be written", exc)

    def spool_works(self) -> None:
        if self.state.resolved(SPOOL_AREA):
            log.warning("the spool can be written again: uploading goes on")

    def _prepare(self, stop: threading.Event, idle_wait: float) -> None:
        try:
            self.spool.relax_durability()
            while not stop.is_set():
                try:
                    batch = self.next_batch()
                    if batch is None:
                        self.progress.report(self.spool)
                except SpoolUnavailable as exc:
                    self.spool_trouble(exc)
                    stop.wait(SPOOL_RETRY_SECONDS)
                    continue
                if batch is None:
                    stop.wait(idle_wait)
                    continue
                try:
                    prepared = prepare(batch)
                    while not stop.is_set():
                        try:
                            self._ready.put(prepared, timeout=0.2)
                            break
                        except queue.Full:
                            continue
                except BaseException:  # this thread dies (and is started again): the batch is free to claim
                    with self._lock:
                        self._in_flight.discard(batch.id)
                    raise
        finally:
            self.spool.close()

    def _send(self, stop: threading.Event) -> None:
        try:
            self.spool.relax_durability()
            while not stop.is_set():
                try:
                    prepared = self._ready.get(timeout=0.2)
                except queue.Empty:
                    continue
                try:
                    self.deliver(prepared, stop)
                finally:
                    with self._lock:
                        self._in_flight.discard(prepared.batch.id)
                try:
                    self.progress.report(self.spool)
                except SpoolUnavailable as exc:
                    self.spool_trouble(exc)
        finally:
            self.client.close()
            self.spool.close()

    def next_batch(self) -> Batch | None:
        if not self.spool.depth():
            return None
        with self._lock:
            batch = self.spool.claim(self.batch_size, exclude=self._in_flight)
            if batch is not None:
                self._in_flight.add(batch.id)
            return batch

    def deliver(self, prepared: Prepared, stop: threading.Event) -> bool:
        """Send a batch until the server has it (True), or ``stop`` is set, or it was split or buried."""
        batch = prepared.batch
        backoff = self.make_backoff()
        if batch.resent:
            log.info("sending batch %s again (%s readings, claimed before and not acknowledged)", batch.id, len(batch))
        while not stop.is_set():
            try:
                wait = self._attempt(prepared, backoff)
            except SpoolUnavailable as exc:  # splitting or burying it: the same batch again, later
                self.spool_trouble(exc)
                wait = SPOOL_RETRY_SECONDS
            if wait is None:
                return True
            if wait < 0:
                return False  # split or buried: the batch as such is gone
            stop.wait(wait)
        return False

    # -- one attempt ----------------------------------------------------------------------------------

    def _attempt(self, prepared: Prepared, backoff: Backoff) -> float | None:
        """Send once. None: done; a negative number: the batch was split or buried; else seconds to wait."""
        batch = prepared.batch
        try:
            reply = self.client.request("POST", INGEST_PATH, body=prepared.body)
        except ServerUnreachable as exc:
            message = f"cannot reach {self.client.url}: {exc}"
            self.state.problem("upload", message)
            self._noisy.log(
                logging.WARNING,
                "unreachable",
                "%s; %s readings wait in the spool, retrying",
                message,
                f"{self.spool.depth():,}",
            )
            self._note_attempt(batch.id, message)
            return backoff.next()
        if reply.status == 200:
            self._delivered(batch, reply, prepared.order)
            return None
        if reply.status in (401, 403):
            return self._refused_token(batch, reply, backoff)
        self.auth.accepted()
        if reply.status in (429, 503):
            wait = backoff.next(reply.retry_after)
            message = f"the server is busy ({reply.explain()}); sending again in {wait:.1f} s"
            self.state.problem("upload", message)
            self._noisy.log(logging.INFO, f"busy-{reply.status}", "%s", message)
            return wait
        if reply.status in (400, 413, 415):
            return self._refused_body(batch, reply)
        message = f"the server answered an upload with {reply.explain()}"
        if reply.status == 404:
            message += f" (is the url right? it is {self.client.url})"
        self.state.problem("upload", message)
        self._noisy.log(logging.WARNING, f"status-{reply.status}", "%s; retrying", message)
        self._note_attempt(batch.id, message)
        return backoff.next()

    def _note_attempt(self, batch_id: str, message: str) -> None:
        """Count the attempt in the spool, for ``status``; a spool that cannot be written only loses the count."""
        try:
            self.spool.note_attempt(batch_id, message)
        except SpoolUnavailable as exc:
            self.spool_trouble(exc)

    def _delivered(self, batch: Batch, reply: Reply, order: list) -> None:
        result = reply.json() or {}
        rejected = int(result.get("rejected", 0))
        conflicts = int(result.get("conflicts", 0))  # absent from older servers' answers
        replayed = bool(result.get("replayed"))
        while True:
            try:
                removed = self.spool.ack(batch, rejected=rejected, conflicts=conflicts)
                break
            except SpoolUnavailable as exc:
                # The server has the batch; the spool cannot forget it yet. Try again (not the upload): if
                # the agent stops first, the batch is sent again with its id, and the server recognises it.
                self.spool_trouble(exc)
                if self._stop is None:
                    raise
                if self._stop.wait(SPOOL_RETRY_SECONDS):
                    return
        self.spool_works()
        if rejected:
            self._log_rejections(batch, result, order)
        if conflicts and not replayed:
            log.warning(
                "%s readings of batch %s came with another value than the server already stores at their times: "
                'it keeps its values and quarantines these (Rejected samples, reason "conflict: ...")',
                conflicts,
                batch.id,
            )
        if replayed:
            log.info("the server already had batch %s (%s readings): it answered from its memory", batch.id, removed)
        self.progress.add(removed, rejected, replayed, conflicts)
        self.state.update(last_upload=time.time())
        self.auth.accepted()
        if self.state.resolved("upload"):
            log.info("uploads work again")

    def _log_rejections(self, batch: Batch, result: dict, order: list) -> None:
        listed = result.get("rejections") or []
        for rejection in listed[:LISTED_REJECTIONS]:
            index = rejection.get("index")
            if isinstance(index, int) and 0 <= index < len(order):
                channel, ts, value = order[index]
                what = f"channel {channel} at {us_to_datetime(ts).isoformat()} (value {value!r})"
            else:
                what = f"channel {rejection.get('channel')}"
            log.warning(
                "the server refused a reading of %s: %s. It keeps it in its quarantine (Rejected samples); "
                "the agent does not send it again",
                what,
                rejection.get("reason", "no reason given"),
            )
        more = int(result.get("rejected", 0)) - min(len(listed), LISTED_REJECTIONS)
        if more > 0:
            log.warning(
                "... and %s more readings of batch %s refused (see Rejected samples on the server)", more, batch.id
            )

    def _refused_token(self, batch: Batch, reply: Reply, backoff: Backoff) -> float:
        self._note_attempt(batch.id, f"{reply.status}: {reply.detail()}")
        if self.auth.refused(reply, self.spool.depth()):
            return 0.0
        return min(backoff.next(), AUTH_RETRY_SECONDS)

    def _refused_body(self, batch: Batch, reply: Reply) -> float:
        reason = f"{reply.status}: {reply.detail()}"
        if len(batch) > 1:
            log.warning("the server refused a batch of %s readings as a whole (%s); splitting it", len(batch), reason)
            self.spool.split(batch)
            return -1.0
        self.spool.bury(batch, reason)
        _, channel, ts, value = batch.readings[0]
        message = (
            f"the server refuses a reading of channel {channel} at {us_to_datetime(ts).isoformat()} "
            f"(value {value!r}) whatever is done ({reason}); it was moved to the spool's dead letters"
        )
        self.state.problem("upload", message)
        log.error("%s", message)
        return -1.0


# --- lines that did not parse ---------------------------------------------------------------------


def unparsed_item(line: Unparsed) -> dict:
    """One line as ``POST /api/v1/agent/unparsed/`` takes it."""
    kind, _, key = line.source_key.partition(":")
    item = {
        "text": line.text,
        "reason": line.reason,
        "source": int(key) if kind == "server" and key.isdigit() else None,
        "source_name": line.source_name,
    }
    if line.context.get("file"):
        item["file"] = line.context["file"]
    if line.context.get("line"):
        item["line"] = line.context["line"]
    if line.context.get("topic"):
        item["topic"] = line.context["topic"]
    if line.context.get("node"):
        item["node"] = line.context["node"]
    if line.context.get("received"):
        item["received"] = us_to_datetime(line.context["received"]).isoformat()
    return item


def report_unparsed(
    spool: Spool, client: ApiClient, auth: AuthWatch | None = None, stop: threading.Event | None = None
) -> str:
    """Send the spool's unparsed lines until none wait; '' when all were delivered, else why not (yet)."""
    while stop is None or not stop.is_set():
        batch = spool.claim_unparsed(UNPARSED_BATCH_LINES)
        if batch is None:
            return ""
        try:
            reply = client.post_json(
                UNPARSED_PATH, {"batch_id": batch.id, "lines": [unparsed_item(u) for u in batch.lines]}
            )
        except ServerUnreachable as exc:
            return f"unparsed lines not reported: {exc}"
        if reply.status == 200:
            spool.ack_unparsed(batch)
            log.info("%s lines that did not parse reported to the server's quarantine", len(batch.lines))
            continue
        reason = f"the server answered {UNPARSED_PATH} with {reply.explain()}"
        if reply.status in (401, 403):
            if auth is not None:
                auth.refused(reply, spool.depth())
            return reason
        if reply.status == 400:
            spool.refuse_unparsed(batch, reason)
            log.error("%s; %s lines kept in the spool, not sent again", reason, len(batch.lines))
            continue
        return reason  # 404 (a server without the endpoint), 429, 5xx: the next time
    return "stopping"
