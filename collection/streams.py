"""The stream collector: sources read over a connection kept open (MQTT, OPC UA), in a long-lived process.

A streaming source cannot be collected by the periodic dispatcher (whatever arrives between two runs would
be missed), so ``manage.py run_stream_collectors`` runs a :class:`StreamSupervisor`: every
``DAQBROKER_STREAM_RELOAD_SECONDS`` it looks up the enabled streaming sources (of active instruments, with
at least one channel), starts a :class:`StreamRunner` thread for each new one, restarts one whose
configuration or channels changed, and stops one removed or disabled.

Each runner:

* holds the source's **lease** (the same compare-and-set lease as a collection run, renewed while it runs),
  so two collector processes never read one source (they would share one broker session); a second
  process waits and takes over when the first stops (at once if it is on the same host and gone);
* checks the source's target again (``accounts.targets.check_at_run``) and connects to the checked address;
* writes what arrives through the one write path, ``ingest_samples``, in batches (the messages that came
  within a moment of each other), with the source's cursor and bookkeeping in the same transaction, and
  acknowledges the messages to the broker only after that transaction committed: a collector killed, or a
  database gone, loses nothing the broker had (it sends the unacknowledged messages again);
* records a collection run per connection (its counts brought up to date with every batch), and a failure
  (broker unreachable, refused, database gone) on the source, backing off from 1 s to a minute.

The protocols themselves (subscriptions, topic and payload mapping, status codes) are the agent's:
``daqbroker_agent.mqtt`` and ``daqbroker_agent.opcua``. OPC UA has no acknowledgement: a data change is
stored when it arrives; what changes while no collector is connected is read back from the server's
history on reconnection when the source has ``history`` on (from each node's latest time, in the cursor).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from accounts import targets
from collection.choices import Origin, RunStatus
from collection.collectors import opcua as opcua_batches
from collection.collectors.mqtt import to_batch
from collection.models import CollectionRun
from collection.services.collect import (
    EXPECTED_FAILURES,
    _failure_message,
    _new_owner,
    _release_lease,
    _take_lease,
    collection_transaction,
    worker_name,
)
from collection.services.ingest import IngestResult, ingest_samples
from daqbroker_agent.mqtt import MessageMapper, MqttSession, Receipts, default_client_id
from daqbroker_agent.opcua import ChangeMapper, OpcUaSession
from instruments.choices import STREAMING_KINDS, ChannelKind, SourceKind
from instruments.models import Channel, DataSource

logger = logging.getLogger(__name__)

TAKE_WAIT = 0.5  # seconds a runner waits for messages before looking at its lease and its stop flag
MAX_BACKOFF = 60.0


def streaming_sources():
    """The sources a stream collector should be reading now."""
    return DataSource.objects.filter(kind__in=STREAMING_KINDS, enabled=True, instrument__active=True).filter(
        Exists(Channel.objects.filter(source=OuterRef("pk")).exclude(kind=ChannelKind.DERIVED))
    )


def fingerprint(source: DataSource, channels: list[tuple]) -> str:
    """Changes when anything that matters to reading the source changes (its runner is then restarted)."""
    content = json.dumps(
        [source.kind, source.config, source.target_set_by_id, sorted(channels)], sort_keys=True, default=str
    )
    return hashlib.sha256(content.encode()).hexdigest()


def wanted_sources() -> dict[int, str]:
    """{source id: fingerprint} of the sources to read."""
    sources = list(streaming_sources())
    rows = Channel.objects.filter(source__in=sources).exclude(kind=ChannelKind.DERIVED)
    by_source: dict[int, list[tuple]] = {}
    for source_id, pk, slug, source_field, kind in rows.values_list("source_id", "pk", "slug", "source_field", "kind"):
        by_source.setdefault(source_id, []).append((pk, slug, source_field, kind))
    return {s.pk: fingerprint(s, by_source.get(s.pk, [])) for s in sources}


@dataclass
class Tally:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    conflicts: int = 0
    messages: int = 0


def store_messages(
    source_id: int,
    owner: str,
    run_id: int,
    mapper: MessageMapper | ChangeMapper,
    by_field: dict[str, list[int]],
    messages: list,
    cursor: dict,
) -> IngestResult:
    """Store one batch of a streaming source's messages (MQTT) or data changes (OPC UA) in one transaction
    with the source's cursor (updated in place) and its run's counts; LeaseLost (nothing stored) when
    ``owner`` no longer holds the source. MQTT messages first take their first receipt time when they are a
    broker's redelivery (``daqbroker_agent.mqtt.Receipts``, kept in the cursor): an exact duplicate."""
    now = timezone.now()
    if isinstance(mapper, ChangeMapper):
        batch, rejections = opcua_batches.to_batch(mapper, by_field, messages)
        origin = Origin.OPCUA
        # Each node's latest time seen, where its history is read back from after a reconnection.
        latest = dict(cursor.get("latest") or {})
        for change in messages:
            if change.ts > latest.get(change.node, 0):
                latest[change.node] = change.ts
        cursor["latest"] = latest
    else:
        receipts = Receipts(cursor.get("receipts"))
        messages = receipts.stamp(messages)
        batch, rejections = to_batch(mapper, by_field, messages)
        origin = Origin.MQTT
        cursor["filters"] = mapper.topic_filters
        cursor["receipts"] = receipts.as_json()
    cursor.update(
        messages=int(cursor.get("messages", 0)) + len(messages),
        last_message_at_us=messages[-1].received_us,
    )
    with collection_transaction():
        result = ingest_samples(batch, origin=origin, source_id=source_id, rejections=rejections)
        ours = DataSource.objects.filter(pk=source_id, lease_owner=owner).update(
            cursor=cursor,
            last_run_at=now,
            last_success_at=now,
            last_error="",
            consecutive_failures=0,
            lease_expires=now + timedelta(seconds=settings.DAQBROKER_COLLECT_LEASE_SECONDS),
        )
        if not ours:
            raise LeaseLost(f"the lease on source {source_id} was lost; nothing of this batch was stored")
        CollectionRun.objects.filter(pk=run_id).update(
            accepted=F("accepted") + result.accepted,
            duplicates=F("duplicates") + result.duplicates,
            rejected=F("rejected") + result.rejected_count,
            conflicts=F("conflicts") + result.conflicts,
        )
    return result


class StreamRunner(threading.Thread):
    """Reads one streaming source until stopped; see the module docstring."""

    def __init__(self, source_id: int, fingerprint: str):
        super().__init__(name=f"stream source {source_id}", daemon=True)
        self.source_id, self.fingerprint = source_id, fingerprint
        self.stopping = threading.Event()
        self.owner = _new_owner()
        self.failures = 0

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                close_old_connections()
                try:
                    self.read_source()
                    self.failures = 0
                except Exception as exc:
                    self.failures += 1
                    logger.warning(
                        "stream source %s failed: %s (retrying)",
                        self.source_id,
                        _failure_message(exc),
                        exc_info=not isinstance(exc, EXPECTED_FAILURES),
                    )
                    self._record_failure(exc)
                self.stopping.wait(min(MAX_BACKOFF, 2 ** min(self.failures, 6) - 1))
        finally:
            connection.close()

    # -- one connection ------------------------------------------------------------------------------

    def read_source(self) -> None:
        lease = _take_lease(self.source_id, self.owner, timezone.now())
        if not lease.taken:
            logger.info("stream source %s not read by this process: %s", self.source_id, lease.why_not)
            self.stopping.wait(min(settings.DAQBROKER_COLLECT_LEASE_SECONDS / 3, 10))
            return
        try:
            self._read_with_lease()
        finally:
            _release_lease(self.source_id, self.owner)

    def _read_with_lease(self) -> None:
        self.renewed = time.monotonic()
        source = DataSource.objects.select_related("instrument", "target_set_by").get(pk=self.source_id)
        config = targets.check_at_run(source, source.validated_config())
        channels = list(source.channels.exclude(kind=ChannelKind.DERIVED))
        by_field: dict[str, list[int]] = {}
        for channel in channels:
            by_field.setdefault(channel.source_field or channel.slug, []).append(channel.pk)
        cursor = dict(source.cursor or {})
        session: MqttSession | OpcUaSession
        mapper: MessageMapper | ChangeMapper
        if source.kind == SourceKind.OPCUA:
            mapper = ChangeMapper(config)
            session = OpcUaSession(config, since=cursor.get("latest") or {})
            reading = ", ".join(n["node"] for n in config["nodes"])
        else:
            mapper = MessageMapper(config)
            session = MqttSession(
                config,
                config["client_id"] or default_client_id(f"server:{source.pk}"),
                stale_filters=cursor.get("filters", []),
            )
            reading = ", ".join(mapper.topic_filters)
        where = f"{config['host']}:{config['port']}"
        run = CollectionRun.objects.create(
            source=source, started_at=timezone.now(), worker=worker_name(), note=f"connection to {where}"
        )
        tally = Tally()
        session.start()
        logger.info("stream source %s: reading %s from %s", source.pk, reading, where)
        reported = ""
        try:
            while not self.stopping.is_set():
                self._renew_lease()
                messages = session.take(TAKE_WAIT)
                if messages:
                    self._store(source, run, session, mapper, by_field, messages, tally, cursor)
                    reported = ""  # the source's last_error was cleared with the batch
                elif session.last_error and session.last_error != reported and not session.connected.is_set():
                    reported = session.last_error
                    DataSource.objects.filter(pk=source.pk, lease_owner=self.owner).update(
                        last_run_at=timezone.now(), last_error=session.last_error[:2000]
                    )
                    logger.warning("stream source %s: %s (reconnecting)", source.pk, session.last_error)
            run.status = RunStatus.SUCCESS
        except Exception as exc:
            run.status, run.error = RunStatus.FAILED, _failure_message(exc)
            raise
        finally:
            session.stop()  # unacknowledged messages stay with the broker, sent again next time
            run.finished_at = timezone.now()
            try:
                CollectionRun.objects.filter(pk=run.pk).update(
                    status=run.status, error=run.error, finished_at=run.finished_at
                )
            except Exception:
                logger.debug("run of stream source %s not recorded", self.source_id, exc_info=True)

    def _renew_lease(self) -> None:
        if time.monotonic() - self.renewed < settings.DAQBROKER_COLLECT_LEASE_SECONDS / 3:
            return
        expires = timezone.now() + timedelta(seconds=settings.DAQBROKER_COLLECT_LEASE_SECONDS)
        if not DataSource.objects.filter(pk=self.source_id, lease_owner=self.owner).update(lease_expires=expires):
            raise LeaseLost(f"the lease on source {self.source_id} was lost")
        self.renewed = time.monotonic()

    def _store(
        self,
        source: DataSource,
        run: CollectionRun,
        session: MqttSession | OpcUaSession,
        mapper: MessageMapper | ChangeMapper,
        by_field: dict[str, list[int]],
        messages: list,
        tally: Tally,
        cursor: dict,
    ) -> None:
        result = store_messages(source.pk, self.owner, run.pk, mapper, by_field, messages, cursor)
        self.renewed = time.monotonic()
        if isinstance(session, MqttSession):
            session.ack(messages)  # only now: a crash before this leaves them with the broker
        tally.messages += len(messages)
        if result.rejected_count:
            logger.info(
                "stream source %s: %s stored, %s quarantined", source.pk, result.accepted, result.rejected_count
            )

    def _record_failure(self, exc: Exception) -> None:
        try:
            DataSource.objects.filter(pk=self.source_id).update(
                last_run_at=timezone.now(),
                last_error=_failure_message(exc),
                consecutive_failures=F("consecutive_failures") + 1,
            )
        except Exception:
            logger.debug("failure of stream source %s not recorded", self.source_id, exc_info=True)
            connection.close()


class LeaseLost(RuntimeError):
    pass


class StreamSupervisor:
    """Keeps one :class:`StreamRunner` per streaming source to read (see the module docstring)."""

    def __init__(self, reload_seconds: float | None = None):
        self.reload_seconds = reload_seconds or settings.DAQBROKER_STREAM_RELOAD_SECONDS
        self.runners: dict[int, StreamRunner] = {}
        self.stop_event = threading.Event()

    def reconcile(self) -> None:
        try:
            wanted = wanted_sources()
        except Exception as exc:  # the database is away: keep what runs, look again later
            logger.warning("cannot look up the streaming sources: %s", _failure_message(exc))
            connection.close()
            return
        for source_id, runner in list(self.runners.items()):
            if wanted.get(source_id) != runner.fingerprint or not runner.is_alive():
                runner.stop()
                runner.join(timeout=15)
                del self.runners[source_id]
                logger.info(
                    "stream source %s stopped (%s)",
                    source_id,
                    "changed" if source_id in wanted else "removed, disabled or without channels",
                )
        for source_id, print_ in wanted.items():
            if source_id not in self.runners:
                runner = StreamRunner(source_id, print_)
                self.runners[source_id] = runner
                runner.start()

    def run(self) -> None:
        logger.info("stream collector %s started", worker_name())
        try:
            while not self.stop_event.is_set():
                self.reconcile()
                self.stop_event.wait(self.reload_seconds)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        for runner in self.runners.values():
            runner.stop()
        for runner in self.runners.values():
            runner.join(timeout=15)
        self.runners.clear()
        connection.close()
        logger.info("stream collector %s stopped", worker_name())
