"""``daqbroker-agent run``: the sources, the uploaders, the configuration poll and the heartbeat, as threads.

Startup never needs the server: the central configuration last received is kept in the spool, so an
agent restarted while the server is down collects what it collected before. Sources of the server's
configuration are started, stopped and restarted as the configuration changes (polled every
``config_poll_seconds`` with ``If-None-Match``); sources of the local file run for the agent's lifetime.

No thread dies silently: each spool operation that fails (disk full, locked, I/O error) is waited out and
tried again, every second or so, with the reason in ``status`` and the heartbeat; and a supervisor (the
main thread, every second) starts again any thread that died anyway, logging why. A thread dying more
than ``MAX_RESTARTS`` times within ``RESTART_WINDOW`` seconds means the agent cannot recover by itself:
it stops and exits non-zero (1), so that systemd (``Restart=always``/``on-failure``) starts it afresh.

SIGTERM or SIGINT stops collection, lets uploads in flight finish (or be abandoned, to be re-sent with
the same batch id next time) and exits. SIGKILL loses nothing either: see ``daqbroker_agent.spool``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from daqbroker_agent import __version__
from daqbroker_agent.auth import AuthWatch
from daqbroker_agent.client import ApiClient, ServerUnreachable
from daqbroker_agent.guard import refusal
from daqbroker_agent.health import node_health
from daqbroker_agent.rawfiles import RawShipper, archived_sources
from daqbroker_agent.samples import read_sample
from daqbroker_agent.settings import Settings
from daqbroker_agent.sources import SourceRunner, SourceSpec, spec_from_local, spec_from_server, start_source
from daqbroker_agent.spool import Spool, SpoolUnavailable
from daqbroker_agent.state import AgentState, RateLimitedLog
from daqbroker_agent.transports import list_serial_ports
from daqbroker_agent.uploader import SPOOL_AREA, Backoff, Uploader, report_unparsed

log = logging.getLogger("daqbroker_agent")
CONFIG_PATH = "/api/v1/agent/config/"
HEARTBEAT_PATH = "/api/v1/agent/heartbeat/"
SAMPLE_PATH = "/api/v1/agent/samples/{id}/"
WHOAMI_PATH = "/api/v1/whoami/"
CENTRAL_CONFIG_KEY = "central_config"
CLOCK_WARNING_SECONDS = 2.0
MAX_CLOCK_ROUND_TRIP = 1.0  # seconds: heartbeats answered slower do not update the clock offset
LOCK_FILE = "agent.lock"
MAX_RESTARTS = 5  # thread deaths within RESTART_WINDOW seconds before the agent gives up and exits 1
RESTART_WINDOW = 300.0


class AlreadyRunning(Exception):
    pass


class CannotRecover(Exception):
    """Threads keep dying: the process exits non-zero, for its service manager to start it again."""


class Supervisor:
    """Runs named threads and starts again any that ended while the agent was not stopping.

    ``check`` (called every second by the main thread) logs each death with its error, restarts the
    thread, and raises :class:`CannotRecover` when more than ``max_restarts`` happened within ``window``.
    """

    def __init__(self, stop: threading.Event, *, max_restarts: int = MAX_RESTARTS, window: float = RESTART_WINDOW):
        self.stop = stop
        self.max_restarts, self.window = max_restarts, window
        self.threads: dict[str, tuple[Callable[[], None], threading.Thread]] = {}
        self.errors: dict[str, str] = {}
        self.deaths: deque[float] = deque()
        self.restarts = 0

    def start(self, name: str, target: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=self._guard, args=(name, target), name=name, daemon=True)
        self.threads[name] = (target, thread)
        thread.start()
        return thread

    def _guard(self, name: str, target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # logged here, and the thread started again by ``check``
            self.errors[name] = f"{type(exc).__name__}: {exc}"
            log.exception("thread %s died", name)

    def died(self, what: str, why: str) -> None:
        """Count a death (of a thread, or of a source's runner); CannotRecover when there were too many."""
        now = time.monotonic()
        self.deaths.append(now)
        while self.deaths and self.deaths[0] < now - self.window:
            self.deaths.popleft()
        if len(self.deaths) > self.max_restarts:
            raise CannotRecover(
                f"{len(self.deaths)} threads died within {self.window:.0f} s, the last {what} ({why}): "
                "the agent cannot recover by itself and exits for its service manager to restart it"
            )
        self.restarts += 1
        log.error("%s stopped (%s): started again", what, why)

    def check(self) -> None:
        for name, (target, thread) in list(self.threads.items()):
            if thread.is_alive() or self.stop.is_set():
                continue
            self.died(f"thread {name}", self.errors.pop(name, "it returned"))
            self.start(name, target)

    def join(self, timeout: float) -> None:
        for _, thread in self.threads.values():
            thread.join(timeout=timeout)


class SpoolLock:
    """One ``run`` per spool: two would read the same files into it twice (harmless, but wasteful)."""

    def __init__(self, directory: Path):
        self.path = directory / LOCK_FILE
        self.handle: TextIO | None = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        handle = self.handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise AlreadyRunning(
                f"another daqbroker-agent (pid {holder}) is running on the spool {self.path.parent}"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def open_spool(settings: Settings) -> Spool:
    return Spool(settings.spool, max_readings=settings.max_spool_readings, synchronous=settings.spool_sync)


def make_client(settings: Settings) -> ApiClient:
    settings.require_server()
    return ApiClient(settings.url, settings.current_token, timeout=settings.request_timeout, ca_file=settings.ca_file)


class AgentRuntime:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.spool = open_spool(settings)
        self.lock = SpoolLock(self.spool.directory)
        self.state = AgentState(self.spool)
        self.client = make_client(settings)
        self.auth = AuthWatch(self.client, self.state)
        self.stop = threading.Event()
        self.uploader = Uploader(
            self.spool,
            self.client,
            self.state,
            batch_size=settings.batch_size,
            backoff=lambda: Backoff(settings.retry_initial_seconds, settings.retry_max_seconds),
            auth=self.auth,
        )
        self.sources: dict[str, SourceRunner] = {}
        self._sources_lock = threading.Lock()  # the configuration thread and shutdown both change them
        self.noisy = RateLimitedLog(log, every=300.0)
        # Sources of the server's configuration this agent will not run (daqbroker_agent.guard), by id,
        # with the reason: sent in every heartbeat.
        self.refused: dict[int, dict] = {}
        self.hostname = socket.gethostname()
        self.supervisor = Supervisor(self.stop)
        self._depth = 0  # the spool's depth when last read (sent in heartbeats if it cannot be read now)
        self.answered_samples: deque[int] = deque(maxlen=100)  # sample requests answered (the server drops them)

    # -- lifecycle -------------------------------------------------------------------------------------

    def run(self) -> None:
        self.lock.acquire()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        counters = self.spool.counters()
        log.info(
            "daqbroker-agent %s starting: server %s, spool %s (%s readings waiting, room for %s)",
            __version__,
            self.settings.url,
            self.spool.path,
            f"{counters['depth']:,}",
            f"{self.spool.room():,}",
        )
        self.state.mirror_to_file()
        self.state.update(pid=os.getpid(), started=time.time(), alive_at=time.time())
        for source in self.settings.sources:
            self._start(spec_from_local(source))
        cached = self.spool.get(CENTRAL_CONFIG_KEY)
        if cached:
            log.info("starting with the server's configuration received before (version %s)", cached.get("version"))
            self.apply_central(cached)
        supervisor = self.supervisor
        for name, target in self.uploader.targets(self.stop, senders=self.settings.uploaders):
            supervisor.start(name, target)
        supervisor.start("config", self.poll_config)
        supervisor.start("heartbeat", self.beat)
        supervisor.start("raw-files", self.ship_raw_files)
        try:
            while not self.stop.wait(1.0):
                self.state.update(alive_at=time.time())
                supervisor.check()
                self._check_sources()
        except CannotRecover as exc:
            log.critical("%s", exc)
            self.state.problem("agent", str(exc))
            self.stop.set()
            raise
        finally:
            log.info("stopping: collection first, then uploads in flight")
            with self._sources_lock:
                runners = list(self.sources.values())
                self.sources.clear()
            for runner in runners:
                runner.stop()
            for runner in runners:
                runner.join(timeout=10)
            supervisor.join(timeout=self.settings.request_timeout + 5)
            with suppress(Exception):  # informative only; a broken spool must not hide why we stop
                self.uploader.progress.report(self.spool, force=True)
            self.state.update(pid=None)
            self.state.flush()
            self.state.close()
            with suppress(Exception):
                log.info("stopped; %s readings wait in the spool", f"{self.spool.depth():,}")
            self.spool.close()
            self.lock.release()

    def _on_signal(self, signum, frame) -> None:
        log.info("received %s", signal.Signals(signum).name)
        self.stop.set()

    # -- sources ---------------------------------------------------------------------------------------

    def _start(self, spec: SourceSpec) -> None:
        self.sources[spec.key] = start_source(spec, self.spool, self.state)

    def _check_sources(self) -> None:
        """Start again a source whose thread ended without being stopped (its own loop retries failures,
        so this is the second line)."""
        with self._sources_lock:
            for runner in list(self.sources.values()):
                if runner.is_alive() or runner.stopping.is_set() or self.stop.is_set():
                    continue
                self.supervisor.died(f"source {runner.spec.name}", runner.error or "it returned")
                self._start(runner.spec)

    def apply_central(self, config: dict) -> None:
        """Start, stop and restart the server's sources to match ``config``."""
        with self._sources_lock:
            if not self.stop.is_set():
                self._apply_central(config)

    def _apply_central(self, config: dict) -> None:
        wanted: dict[str, SourceSpec] = {}
        refused: dict[int, dict] = {}
        for source in config.get("sources", []):
            try:
                spec = spec_from_server(source)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("cannot use source %s of the server's configuration: %s", source.get("name"), exc)
                continue
            why = refusal(
                spec.collect,
                allow_commands=self.settings.allow_commands,
                allowed_paths=self.settings.allowed_paths,
            )
            if why:
                refused[source["id"]] = {"id": source["id"], "name": spec.name, "reason": why}
                log.error("refused source %s of the server's configuration: %s", spec.name, why)
                continue
            wanted[spec.key] = spec
        self.refused = refused
        for key, runner in list(self.sources.items()):
            if not key.startswith("server:"):
                continue
            wanted_spec = wanted.get(key)
            if wanted_spec is None or wanted_spec.fingerprint != runner.spec.fingerprint:
                runner.stop()
                runner.join(timeout=10)
                del self.sources[key]
                log.info(
                    "stopped %s: %s in the server's configuration",
                    runner.spec.name,
                    "changed" if wanted_spec else "removed",
                )
        for key, spec in wanted.items():
            if key not in self.sources:
                self._start(spec)
        for skipped in config.get("skipped", []):
            self.noisy.log(
                logging.ERROR,
                f"skipped-{skipped.get('id')}",
                "the server cannot send source %s: its settings no longer validate (%s); fix it in the admin",
                skipped.get("name"),
                skipped.get("error"),
            )

    # -- the server's configuration --------------------------------------------------------------------

    def poll_config(self) -> None:
        cached = self.spool.get(CENTRAL_CONFIG_KEY) or {}
        etag = f'"{cached["version"]}"' if cached.get("version") else ""
        try:
            while not self.stop.is_set():
                try:
                    etag = self.fetch_config(etag)
                except SpoolUnavailable as exc:  # the configuration is applied; it is kept when the spool works
                    self.uploader.spool_trouble(exc)
                    etag = ""
                self.stop.wait(self.settings.config_poll_seconds)
        finally:
            self.client.close()
            self.spool.close()

    def fetch_config(self, etag: str) -> str:
        try:
            reply = self.client.get_json(CONFIG_PATH, headers={"If-None-Match": etag} if etag else None)
        except ServerUnreachable as exc:
            self.noisy.log(logging.INFO, "config-unreachable", "cannot fetch the configuration: %s", exc)
            return etag
        if reply.status == 304:
            self.auth.accepted()
            return etag
        if reply.status == 200:
            self.auth.accepted()
            self.state.resolved("config")
            config = reply.json()
            try:
                self.spool.put(CENTRAL_CONFIG_KEY, config)
            except SpoolUnavailable:
                self.apply_central(config)  # in use now; kept for the next start once the spool can be written
                raise
            log.info(
                "configuration from the server (version %s): %s source(s)%s",
                config.get("version"),
                len(config.get("sources", [])),
                "".join(f"\n  {spec_from_server(s).describe()}" for s in config.get("sources", [])),
            )
            self.apply_central(config)
            if not self.answer_sample_requests(config.get("sample_requests") or []):
                return ""  # a sample not delivered: fetch the whole configuration again next time, to retry
            return reply.headers.get("etag", "")
        if reply.status in (401, 403):
            if self.auth.refused(reply, self.spool.depth()):
                return self.fetch_config(etag)
            return etag
        message = f"the server answered {CONFIG_PATH} with {reply.explain()}"
        if reply.status == 404:
            message += " (is the server older than the agent, or the url wrong?)"
        self.state.problem("config", message)
        self.noisy.log(logging.WARNING, f"config-{reply.status}", "%s", message)
        return etag

    def answer_sample_requests(self, requests: list) -> bool:
        """Read the first lines the server asks for (inside allowed_paths only) and send them, or why not;
        whether every request was answered.

        Only from a configuration just received, never from the cached one: a request is short-lived."""
        for request in requests:
            if not isinstance(request, dict) or not isinstance(request.get("id"), int):
                continue
            if request["id"] in self.answered_samples:
                continue
            answer = read_sample(request, self.settings.allowed_paths)
            if answer.error:
                log.warning("sample of %s refused: %s", request.get("path"), answer.error)
            else:
                log.info("sending the first %d lines of %s as a sample", len(answer.lines), answer.file)
            try:
                reply = self.client.post_json(SAMPLE_PATH.format(id=request["id"]), answer.payload())
            except ServerUnreachable as exc:
                log.info("sample not delivered (tried again with the next configuration): %s", exc)
                return False
            if reply.status in (204, 404):  # kept, or no longer wanted (timed out): either way, done
                self.answered_samples.append(request["id"])
            else:
                log.warning("sample answered %s (tried again with the next configuration)", reply.explain())
                return False
        return True

    # -- raw files -------------------------------------------------------------------------------------

    def ship_raw_files(self) -> None:
        """Every heartbeat interval: ship the settled files of sources with ``archive`` (daqbroker_agent.rawfiles)."""
        shipper = RawShipper(self.spool, self.client, self.stop)
        try:
            while not self.stop.is_set():
                with self._sources_lock:
                    specs = [runner.spec for runner in self.sources.values()]
                if archived_sources(specs):
                    try:
                        shipper.ship_round(specs)
                    except SpoolUnavailable as exc:
                        self.uploader.spool_trouble(exc)
                self.stop.wait(self.settings.heartbeat_seconds)
        finally:
            self.client.close()
            self.spool.close()

    # -- heartbeat -------------------------------------------------------------------------------------

    def beat(self) -> None:
        try:
            while not self.stop.is_set():
                self.send_heartbeat()
                try:
                    why = report_unparsed(self.spool, self.client, self.auth, self.stop)
                except SpoolUnavailable as exc:
                    self.uploader.spool_trouble(exc)
                    why = ""
                if why:
                    self.noisy.log(logging.INFO, "unparsed", "%s (tried again after the next heartbeat)", why)
                self.stop.wait(self.settings.heartbeat_seconds)
        finally:
            self.client.close()
            self.spool.close()

    def problems_now(self) -> str:
        """Every current problem on one line, the spool's first (it explains the others)."""
        problems = self.state.current_problems()
        first = [SPOOL_AREA] if SPOOL_AREA in problems else []
        return "; ".join(f"{area}: {problems[area]}" for area in first + [a for a in problems if a not in first])

    def spool_depth(self) -> int:
        """Readings waiting in the spool; the last known count when the spool cannot be read now."""
        try:
            self._depth = self.spool.depth()
        except SpoolUnavailable as exc:
            self.uploader.spool_trouble(exc)
        return self._depth

    def health(self, depth: int) -> dict:
        """The machine's figures (daqbroker_agent.health); the oldest reading's age is left out when the
        spool cannot be read now."""
        try:
            oldest = self.spool.first_waiting() if depth else None
        except SpoolUnavailable:
            oldest = None
        return node_health(self.spool.directory, depth=depth, oldest_us=oldest)

    def send_heartbeat(self) -> None:
        last_upload = self.state.get("last_upload")
        depth = self.spool_depth()
        payload = {
            "version": __version__,
            "hostname": self.hostname,
            "spool_depth": depth,
            "spool_capacity": self.settings.max_spool_readings,
            "last_error": self.problems_now()[:2000],
            "last_upload": datetime.fromtimestamp(last_upload, UTC).isoformat() if last_upload else None,
            "clock_offset": self.state.get("clock_offset"),
            "heartbeat_seconds": max(1, round(self.settings.heartbeat_seconds)),
            "refused_sources": list(self.refused.values()),
            "serial_ports": list_serial_ports(),
            "health": self.health(depth),
        }
        sent = time.time()
        payload["agent_time"] = sent
        try:
            reply = self.client.post_json(HEARTBEAT_PATH, payload)
        except ServerUnreachable as exc:
            self.noisy.log(logging.INFO, "beat-unreachable", "heartbeat not delivered: %s", exc)
            return
        received = time.time()
        if reply.status in (401, 403):
            self.auth.refused(reply, payload["spool_depth"])
            return
        if reply.status != 200:
            self.noisy.log(logging.WARNING, f"beat-{reply.status}", "heartbeat answered %s", reply.explain())
            return
        self.auth.accepted()
        self.state.update(last_heartbeat=received)
        round_trip = received - sent
        if round_trip > MAX_CLOCK_ROUND_TRIP:
            return  # a slow answer (a server starting, a queue) says little about the clocks
        with suppress(KeyError, TypeError, ValueError):
            # As NTP does: the server read its clock halfway through the round trip, give or take half of it.
            offset = (sent + received) / 2 - float(reply.json()["server_time"])
            self.state.update(clock_offset=offset)
            if abs(offset) - round_trip / 2 > CLOCK_WARNING_SECONDS:
                self.noisy.log(
                    logging.WARNING,
                    "clock",
                    "this machine's clock is %.1f s %s the server's: readings timestamped here (receipt times, and "
                    "instruments set from it) are off by as much; synchronise it (NTP, chrony)",
                    abs(offset),
                    "ahead of" if offset > 0 else "behind",
                )
