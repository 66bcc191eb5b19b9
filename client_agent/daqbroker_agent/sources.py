"""What the agent reads beside the instruments: files, serial ports, TCP line streams, commands.

Every source turns lines into readings with the shared parser (:class:`daqbroker_agent.parsing.LineParser`,
the one the server's collectors use) and puts them in the spool before anything else happens. Each runs
in its own thread until stopped; a failure (port gone, folder missing, command failing) is logged and
retried, never fatal to the agent.

* **file**: every ``interval`` seconds, the new complete lines of the folder's files (``daqbroker_agent.tail``);
  the file offsets are committed in the same spool transaction as the readings.
* **serial** / **tcp**: a connection kept open. With a ``request``, it is sent every ``interval`` seconds
  and ``response_lines`` lines are read back; without one the instrument streams and every line is read
  as it comes (spooled at least every half second).
* **command**: run every ``interval`` seconds; its standard output is parsed line by line.
* **modbus**: the register map polled every ``interval`` seconds over a connection kept open
  (``daqbroker_agent.modbus``); a register that could not be read is kept, with its reason, for the
  server's quarantine (when first seen, then every ``MODBUS_REPORT_SECONDS`` while it lasts) and shown
  in the heartbeat's problems.
* **mqtt**: a broker's topics, subscribed on a persistent session (``daqbroker_agent.mqtt``); each message
  is acknowledged to the broker only once its readings are in the spool.
* **opcua**: an OPC UA server's nodes, subscribed (``daqbroker_agent.opcua``); each data change is spooled at
  the server's source time. Uncertain and Bad values go to the server's quarantine with the node id and the
  status name (an upload carries no quality flag; the server's own collector stores Uncertain flagged).

A channel is found among a line's fields by its ``source_field`` (else its slug), as on the server.
Numeric channels' values are sent as numbers when they read as one, else as the text found, so that the
server refuses the reading with its reason and keeps it in quarantine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daqbroker_agent.modbus import ModbusReader, describe_target
from daqbroker_agent.parsing import LineError, LineParser, now_us
from daqbroker_agent.spool import Reading, Spool, SpoolFull, SpoolUnavailable, Unparsed
from daqbroker_agent.state import AgentState, RateLimitedLog
from daqbroker_agent.tail import DEFAULT_FINAL_LINE_AFTER, read_header_lines, read_new_lines
from daqbroker_agent.transports import LineSplitter, Transport, open_transport

log = logging.getLogger("daqbroker_agent.sources")
STREAM_FLUSH_SECONDS = 0.5
STREAM_FLUSH_LINES = 5000
SPOOL_RETRY_SECONDS = 1.0  # a spool that cannot be written (disk full, locked) is tried again this often
SPOOL_AREA = "spool storage"  # as ``daqbroker_agent.uploader.SPOOL_AREA``
MODBUS_REPORT_SECONDS = 600.0  # a register failing the same way is reported to the quarantine this often
HELD_LINES = 100_000  # lines a stream or command source keeps in memory while the spool cannot be written


@dataclass(frozen=True)
class ChannelSpec:
    ref: str  # as the server is told: a channel id ("17") or "instrument-slug/channel-slug"
    field: str
    text: bool = False


@dataclass(frozen=True)
class SourceSpec:
    key: str  # "server:12" or "local:rooftop-logger": names the source's cursor in the spool
    name: str
    interval: float
    collect: dict
    channels: tuple[ChannelSpec, ...]

    @property
    def kind(self) -> str:
        return self.collect["kind"]

    @property
    def fingerprint(self) -> str:
        """Changes when anything that matters to reading the source changes (a restart is then needed)."""
        content = json.dumps(
            [self.name, self.interval, self.collect, [c.__dict__ for c in self.channels]], sort_keys=True
        )
        return hashlib.sha256(content.encode()).hexdigest()

    def describe(self) -> str:
        c = self.collect
        where = {
            "file": lambda: f"files {c['pattern']} in {c['path']}",
            "serial": lambda: f"serial {c['url']} at {c['baudrate']} baud",
            "tcp": lambda: f"tcp {c['host']}:{c['port']}",
            "modbus": lambda: describe_target(c),
            "command": lambda: "command " + " ".join(c["command"]),
            "mqtt": lambda: (
                f"mqtt {c['host']}:{c['port']} " + ", ".join(dict.fromkeys(f["topic"] for f in c["fields"]))
            ),
            "opcua": lambda: f"opcua {c['host']}:{c['port']}{c['path']} " + ", ".join(n["node"] for n in c["nodes"]),
        }[self.kind]()
        fields = ", ".join(f"{ch.field}->{ch.ref}" for ch in self.channels) or "no channels"
        return f"{self.name} ({where}, every {self.interval:g} s; {fields})"


def spec_from_server(source: dict) -> SourceSpec:
    """A source of the server's central configuration (``GET /api/v1/agent/config/``)."""
    channels = tuple(
        ChannelSpec(str(ch["id"]), ch.get("source_field") or ch["slug"], ch.get("kind") == "text")
        for ch in source.get("channels", [])
    )
    name = f"{source['instrument']}/{source['name']}"
    return SourceSpec(f"server:{source['id']}", name, float(source["interval_seconds"]), source["collect"], channels)


def spec_from_local(source) -> SourceSpec:
    """A source defined in the agent's own configuration file (``settings.LocalSource``)."""
    channels = tuple(ChannelSpec(ch.channel, ch.field, ch.kind == "text") for ch in source.channels)
    return SourceSpec(f"local:{source.name}", source.name, source.interval_seconds, source.collect, channels)


class LineMapper:
    """Lines to readings for one source. A line that does not parse is logged, and kept in ``unparsed``
    (taken with ``take_unparsed``, spooled with the readings) so the server can keep it in quarantine."""

    def __init__(self, spec: SourceSpec, state: AgentState | None = None):
        self.spec = spec
        self.parser = LineParser(spec.collect)
        self.state = state
        self.noisy = RateLimitedLog(log, every=60.0)
        self.problems = 0
        self.unparsed: list[Unparsed] = []

    def readings(
        self,
        lines: Iterable[tuple[str, int]],
        where: str = "",
        *,
        file: str = "",
        first_line: int | None = None,
        year: int | None = None,
    ) -> list[Reading]:
        """Readings of ``lines``; a line that does not parse is logged and reported until a later call
        parses cleanly. ``file`` and ``first_line`` (the number of the first of ``lines``) say where the
        lines came from, for the quarantine; ``year`` is the file's, when its times carry none."""
        out: list[Reading] = []
        self.problems = 0
        for number, (text, received_us) in enumerate(lines):
            if not text.strip():
                continue
            try:
                parsed = self.parser.parse(text, received_us, year)
            except LineError as exc:
                self._problem(f"line not parsed: {exc}", where, text, received_us, file, first_line, number)
                continue
            for channel in self.spec.channels:
                raw = parsed.fields.get(channel.field)
                if raw is None:
                    reason = f"field {channel.field!r} is missing from the line"
                    self._problem(reason, where, text, received_us, file, first_line, number)
                    continue
                out.append((channel.ref, parsed.ts_us, raw if channel.text else as_number(raw)))
        if not self.problems and self.state is not None:
            self.state.resolved(f"lines {self.spec.name}")
        return out

    def take_unparsed(self) -> list[Unparsed]:
        taken, self.unparsed = self.unparsed, []
        return taken

    def _problem(self, reason, where, text, received_us, file, first_line, number) -> None:
        self.problems += 1
        message = f"{reason}{where}: {text[:200]!r}"
        self.noisy.log(logging.WARNING, "parse", "%s: %s (kept for the server's quarantine)", self.spec.name, message)
        if self.state is not None and self.problems == 1:
            self.state.problem(f"lines {self.spec.name}", message)
        context: dict = {"received": received_us}
        if file:
            context["file"] = file
        if first_line is not None:
            context["line"] = first_line + number
        self.unparsed.append(Unparsed(self.spec.key, self.spec.name, text, reason, context))


def as_number(raw: str) -> float | str:
    try:
        value = float(raw)
    except ValueError:
        return raw  # the server says why it is not a number, and keeps it
    return value if math.isfinite(value) else raw


class SourceRunner(threading.Thread):
    """The thread reading one source; ``stop()`` ends it within about a second."""

    def __init__(self, spec: SourceSpec, spool: Spool, state: AgentState):
        super().__init__(name=f"source {spec.name}", daemon=True)
        self.spec, self.spool, self.state = spec, spool, state
        self.mapper = LineMapper(spec, state)
        self.stopping = threading.Event()
        self.noisy = RateLimitedLog(log, every=60.0)
        self.cursor_key = f"cursor:{spec.key}"
        self.error = ""  # why the thread ended, if it did without being stopped
        self.held: list[tuple[str, int]] = []  # lines read and not yet spooled (the spool could not be written)
        self.lost = 0  # lines of ``held`` given up (more than HELD_LINES), counted in the spool when it works

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        log.info("collecting %s", self.spec.describe())
        failures = 0
        try:
            while not self.stopping.is_set():
                try:
                    self.collect_forever()
                    failures = 0
                except SpoolUnavailable as exc:  # not the source's fault: try again soon, without backing off
                    self.spool_trouble(exc)
                    self.stopping.wait(min(max(self.spec.interval, 0.1), SPOOL_RETRY_SECONDS))
                except Exception as exc:  # a source failing must never stop the agent
                    failures += 1
                    message = f"{type(exc).__name__}: {exc}"
                    self.state.problem(f"source {self.spec.name}", message)
                    self.noisy.log(logging.WARNING, "fail", "%s failed: %s (retrying)", self.spec.name, message)
                    self.stopping.wait(min(60.0, max(self.spec.interval, 1.0) * min(failures, 10)))
        except BaseException as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("%s: the source's thread died", self.spec.name)
        finally:
            self.spool.close()

    def collect_forever(self) -> None:
        raise NotImplementedError

    def spool_trouble(self, exc: SpoolUnavailable) -> None:
        what = "waits (nothing is lost)" if self.spec.kind == "file" else "keeps what it reads in memory"
        self.state.problem(SPOOL_AREA, str(exc))
        message = f"{exc}; {self.spec.name} {what} until it can be written"
        self.noisy.log(logging.ERROR, f"spool-{exc.kind}", "%s", message)

    def spool_lines(self, lines: list[tuple[str, int]]) -> bool:
        """Readings of ``lines``, and of any held back before, into the spool. When the spool cannot be
        written they are held in memory (at most HELD_LINES, the oldest given up and counted) for next time."""
        lines = self.held + lines
        self.held = []
        try:
            stored = self.spool_readings(self.mapper.readings(lines))
            if self.lost:
                self.spool.add_to_counter("dropped", self.lost)
                self.lost = 0
        except SpoolUnavailable as exc:
            self.spool_trouble(exc)
            self.lost += max(0, len(lines) - HELD_LINES)
            self.held = lines[-HELD_LINES:]
            return False
        return stored

    def spool_readings(self, readings: list[Reading], cursor: Any = None, *, all_or_nothing: bool = False) -> bool:
        """Put readings (and the cursor) in the spool. When it is full: False if ``all_or_nothing``
        (the caller keeps its position and tries again later), else store what fits and count the rest.
        The lines that did not parse go with them, in the same transaction."""
        unparsed = self.mapper.take_unparsed()  # when all_or_nothing fails, reading again makes them again
        position = (self.cursor_key, cursor) if cursor is not None else None
        try:
            self.spool.add(readings, cursor=position, unparsed=unparsed)
        except SpoolFull as full:
            self._full(full)
            if all_or_nothing:
                return False
            kept = readings[: full.room]
            self.spool.add(kept, cursor=position, unparsed=unparsed)
            self.spool.add_to_counter("dropped", len(readings) - len(kept))
            return True
        if self.state.resolved("spool"):
            log.warning("the spool has room again: %s collects normally", self.spec.name)
        if self.state.resolved(SPOOL_AREA):
            log.warning("the spool can be written again: %s collects normally", self.spec.name)
        return True

    def _full(self, full: SpoolFull) -> None:
        what = "waits (nothing is lost)" if self.spec.kind == "file" else "loses new readings"
        message = (
            f"the spool is full ({full.capacity:,} readings, max_spool_readings): {self.spec.name} {what} "
            "until uploads catch up. Is the server reachable, and the token valid?"
        )
        self.state.problem("spool", message)
        self.noisy.log(logging.WARNING, "full", "%s", message)


class FileSource(SourceRunner):
    def collect_forever(self) -> None:
        config = self.spec.collect
        folder = Path(config["path"])
        header = config["header_lines"]
        encoding = config["encoding"]
        if not self.spec.channels:
            # Nothing read could be stored: the files are not read (the cursor stays) until the server's
            # configuration gives this source a channel, which restarts it.
            self.state.problem(
                f"waiting {self.spec.name}", "waiting for channels: no channel takes a field from it, nothing is read"
            )
            self.stopping.wait()
            return
        self.state.resolved(f"waiting {self.spec.name}")
        while not self.stopping.is_set():
            room = self.spool.room()
            channels = max(1, len(self.spec.channels))
            budget = min(config["max_lines"], room // channels)
            if budget <= 0:
                self._full(SpoolFull(channels, room, self.spool.max_readings))
                self.stopping.wait(self.spec.interval)
                continue
            read = read_new_lines(
                folder,
                config["pattern"],
                self.spool.get(self.cursor_key),
                max_lines=budget,
                rotated_pattern=config.get("rotated_pattern", ""),
                final_line_after=config.get("final_line_after", DEFAULT_FINAL_LINE_AFTER),
            )
            for warning in read.warnings:  # once each: the file leaves the cursor with these readings
                log.warning("%s: %s", self.spec.name, warning)
                self.state.problem(f"lost {self.spec.name}", warning)
            readings: list[Reading] = []
            received = now_us()
            for chunk in read.chunks:
                lines = chunk.lines()
                skip = max(0, header - (chunk.first_line - 1))
                numbered = [(line.decode(encoding, errors="replace").rstrip("\r"), received) for line in lines[skip:]]
                # A file whose times carry no year: the year its header lines give (timestamp.year_pattern).
                year = (
                    self.mapper.parser.year_from_header(read_header_lines(chunk.path, header, encoding))
                    if self.mapper.parser.year_pattern
                    else None
                )
                readings.extend(
                    self.mapper.readings(
                        numbered,
                        f" ({chunk.path.name})",
                        file=str(chunk.path),
                        first_line=chunk.first_line + skip,
                        year=year,
                    )
                )
            if not self.spool_readings(readings, read.cursor, all_or_nothing=True):
                self.stopping.wait(self.spec.interval)
                continue
            if read.chunks:
                log.debug("%s: %s lines, %s readings spooled", self.spec.name, read.n_lines, len(readings))
                self.state.resolved(f"source {self.spec.name}")
            if not read.more:
                self.stopping.wait(self.spec.interval)


class StreamSource(SourceRunner):
    """Serial and TCP: lines from a connection kept open (reopened after a failure)."""

    def collect_forever(self) -> None:
        config = self.spec.collect
        transport = open_transport(config)
        log.info("%s: connected", self.spec.name)
        self.state.resolved(f"source {self.spec.name}")
        self.splitter = LineSplitter(config["line_terminator"], config["encoding"])
        self.pending: list[tuple[str, int]] = []
        try:
            if config["request"]:
                self._poll(transport, config)
            else:
                self._stream(transport, config)
        finally:
            transport.close()

    def _lines_from(self, chunk: bytes) -> None:
        received = now_us()
        self.pending.extend((text, received) for text in self.splitter.feed(chunk))

    def _flush(self) -> None:
        if self.pending or self.held:
            lines, self.pending = self.pending, []
            self.spool_lines(lines)

    def _stream(self, transport: Transport, config: dict) -> None:
        last_flush = time.monotonic()
        while not self.stopping.is_set():
            chunk = transport.read_some(min(config["timeout"], STREAM_FLUSH_SECONDS))
            if chunk is None:
                self._flush()  # what arrived before the instrument hung up
                raise ConnectionError("the instrument closed the connection")
            if chunk:
                self._lines_from(chunk)
            if len(self.pending) >= STREAM_FLUSH_LINES or time.monotonic() - last_flush >= STREAM_FLUSH_SECONDS:
                self._flush()
                last_flush = time.monotonic()
        self._flush()

    def _poll(self, transport: Transport, config: dict) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            transport.write(config["request"].encode(config["encoding"]))
            wanted = config["response_lines"] or config["max_lines"]
            deadline = started + config["timeout"]
            while len(self.pending) < wanted and not self.stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                chunk = transport.read_some(min(left, 0.5))
                if chunk is None:
                    self._flush()
                    raise ConnectionError("the instrument closed the connection")
                if chunk:
                    self._lines_from(chunk)
                    deadline = time.monotonic() + config["timeout"]  # a pause of `timeout` ends the answer
            if not self.pending:
                self.noisy.log(
                    logging.WARNING,
                    "silent",
                    "%s: no answer to the request within %s s",
                    self.spec.name,
                    config["timeout"],
                )
            self._flush()
            self.stopping.wait(max(0.0, self.spec.interval - (time.monotonic() - started)))


class CommandSource(SourceRunner):
    def collect_forever(self) -> None:
        config = self.spec.collect
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                done = subprocess.run(  # noqa: S603 (the command is the operator's configuration)
                    config["command"], capture_output=True, timeout=config["timeout"], check=False
                )
            except subprocess.TimeoutExpired:
                raise TimeoutError(f"the command did not finish within {config['timeout']} s") from None
            received = now_us()
            if done.returncode != 0:
                stderr = done.stderr.decode(errors="replace").strip()[-300:]
                self.noisy.log(
                    logging.WARNING,
                    "exit",
                    "%s: the command exited with %s: %s",
                    self.spec.name,
                    done.returncode,
                    stderr,
                )
            text = done.stdout.decode(config.get("encoding", "utf-8"), errors="replace")
            lines = [(line.rstrip("\r"), received) for line in text.split("\n") if line.strip()]
            if self.spool_lines(lines) and done.returncode == 0:
                self.state.resolved(f"source {self.spec.name}")
            self.stopping.wait(max(0.0, self.spec.interval - (time.monotonic() - started)))


class ModbusSource(SourceRunner):
    """Polls a Modbus device's register map every ``interval`` seconds (``daqbroker_agent.modbus``)."""

    def collect_forever(self) -> None:
        by_field: dict[str, list[ChannelSpec]] = {}
        for channel in self.spec.channels:
            by_field.setdefault(channel.field, []).append(channel)
        mapped = {entry["field"] for entry in self.spec.collect["registers"]}
        unknown = sorted(set(by_field) - mapped)
        if unknown:
            log.warning("%s: no register-map entry has the field(s) %s", self.spec.name, ", ".join(unknown))
        if not set(by_field) & mapped:
            waiting = "waiting for channels: no channel takes a register's field, nothing is read"
            self.state.problem(f"waiting {self.spec.name}", waiting)
            self.stopping.wait()
            return
        self.state.resolved(f"waiting {self.spec.name}")
        reported: dict[str, float] = {}  # failure -> when it was last kept for the quarantine
        with ModbusReader(self.spec.collect, by_field) as reader:
            while not self.stopping.is_set():
                started = time.monotonic()
                poll = reader.poll()  # ModbusUnavailable: the device answered nothing (retried with backoff)
                readings: list[Reading] = [
                    (channel.ref, poll.ts_us, repr(value) if channel.text else value)
                    for field, value in poll.values.items()
                    for channel in by_field[field]
                ]
                now = time.monotonic()
                for failure in poll.failures:
                    message = f"{failure.register}: {failure.reason}"
                    self.noisy.log(logging.WARNING, f"register {failure.register}", "%s: %s", self.spec.name, message)
                    # Reported when first seen and again every MODBUS_REPORT_SECONDS while it lasts: a register
                    # missing from the device must not fill the quarantine with a record every poll.
                    if now - reported.get(message, -math.inf) < MODBUS_REPORT_SECONDS:
                        continue
                    reported[message] = now
                    context = {"received": poll.ts_us, "register": failure.register, "field": failure.field}
                    text = failure.raw or f"{failure.field} ({failure.register})"
                    self.mapper.unparsed.append(Unparsed(self.spec.key, self.spec.name, text, message, context))
                if poll.failures:
                    self.state.problem(f"source {self.spec.name}", f"{len(poll.failures)} register(s) not read")
                else:
                    self.state.resolved(f"source {self.spec.name}")
                self.spool_readings(readings)
                self.stopping.wait(max(0.0, self.spec.interval - (time.monotonic() - started)))


class MqttSource(SourceRunner):
    """An MQTT broker's topics (``daqbroker_agent.mqtt``): a persistent session, messages acknowledged once
    their readings (and the payloads that could not be read) are in the spool. While the spool cannot be
    written nothing is acknowledged and the session is dropped: the broker keeps the messages. The first
    receipt times of recent messages (``Receipts``) are the source's cursor, spooled with their readings: a
    redelivery keeps its first time (an exact duplicate at the server)."""

    def collect_forever(self) -> None:
        from daqbroker_agent.mqtt import MessageMapper, MqttSession, Receipts, default_client_id

        config = self.spec.collect
        mapper = MessageMapper(config)
        filters_key = f"mqtt-filters:{self.spec.key}"
        session = MqttSession(
            config,
            config["client_id"] or default_client_id(f"agent-{self.spec.key}"),
            stale_filters=self.spool.get(filters_key) or [],
        )
        by_field: dict[str, list[ChannelSpec]] = {}
        for channel in self.spec.channels:
            by_field.setdefault(channel.field, []).append(channel)
        receipts = Receipts(self.spool.get(self.cursor_key))
        session.start()
        reported = ""
        try:
            if self.spool.get(filters_key) != mapper.topic_filters:
                self.spool.put(filters_key, mapper.topic_filters)
            while not self.stopping.is_set():
                messages = session.take(STREAM_FLUSH_SECONDS)
                if not messages:
                    if session.connected.is_set():
                        if reported:
                            reported = ""
                            self.state.resolved(f"source {self.spec.name}")
                    elif session.last_error and session.last_error != reported:
                        reported = session.last_error
                        self.state.problem(f"source {self.spec.name}", session.last_error)
                        self.noisy.log(logging.WARNING, "mqtt", "%s: %s (reconnecting)", self.spec.name, reported)
                    continue
                stamped = receipts.stamp(messages)
                readings = self._readings_of(mapper, by_field, stamped)
                # Not acknowledged unless spooled (SpoolUnavailable, or a full spool): the session is dropped
                # and the broker sends them again on the next one (the receipts read again from the spool).
                if not self.spool_readings(readings, receipts.as_json(), all_or_nothing=True):
                    self.stopping.wait(max(self.spec.interval, 1.0))
                    return
                session.ack(messages)
        finally:
            session.stop()

    def _readings_of(self, mapper, by_field: dict[str, list[ChannelSpec]], messages: list) -> list[Reading]:
        """The messages' readings; what could not be read goes with them to the spool, for the quarantine."""
        readings: list[Reading] = []
        for message in messages:
            found, problems = mapper.map(message)
            for name, ts, value in found:
                readings.extend((channel.ref, ts, value) for channel in by_field.get(name, ()))
            for problem in problems:
                self.noisy.log(
                    logging.WARNING,
                    "payload",
                    "%s: %s (topic %s; kept for the server's quarantine)",
                    self.spec.name,
                    problem.reason,
                    problem.topic,
                )
                context = {**problem.context, "connection": f"mqtt {problem.topic}"}
                self.mapper.unparsed.append(
                    Unparsed(self.spec.key, self.spec.name, problem.payload, problem.reason, context)
                )
        return readings


class OpcUaSource(SourceRunner):
    """An OPC UA server's nodes (``daqbroker_agent.opcua``): data changes spooled as they arrive; Uncertain
    and Bad values, and values that are not a number or text, spooled for the server's quarantine with the
    node id and the reason. The session reconnects by itself (backing off) while the server is away."""

    def collect_forever(self) -> None:
        from daqbroker_agent.opcua import ChangeMapper, OpcUaSession

        mapper = ChangeMapper(self.spec.collect)
        # Each node's latest time spooled (the cursor, spooled with the readings): history is read from there.
        latest = self.spool.get(self.cursor_key)
        latest = {str(k): int(v) for k, v in latest.items() if isinstance(v, int)} if isinstance(latest, dict) else {}
        session = OpcUaSession(self.spec.collect, since=latest)
        by_field: dict[str, list[ChannelSpec]] = {}
        for channel in self.spec.channels:
            by_field.setdefault(channel.field, []).append(channel)
        session.start()
        reported = ""
        try:
            while not self.stopping.is_set():
                changes = session.take(STREAM_FLUSH_SECONDS)
                if not changes:
                    if session.subscribed.is_set() and not session.last_error:
                        if reported:
                            reported = ""
                            self.state.resolved(f"source {self.spec.name}")
                    elif session.last_error and session.last_error != reported:
                        reported = session.last_error
                        self.state.problem(f"source {self.spec.name}", session.last_error)
                        self.noisy.log(logging.WARNING, "opcua", "%s: %s (reconnecting)", self.spec.name, reported)
                    continue
                readings: list[Reading] = []
                for change in changes:
                    found, problems = mapper.map(change)
                    for name, ts, value, uncertain in found:
                        if uncertain:
                            context = {
                                "node": change.node,
                                "received": change.received_us,
                                "connection": f"opcua {change.node}",
                            }
                            reason = mapper.uncertain_reason(change) + ": not stored by an agent (no quality flag)"
                            self.mapper.unparsed.append(
                                Unparsed(self.spec.key, self.spec.name, str(value), reason, context)
                            )
                            continue
                        readings.extend((channel.ref, ts, value) for channel in by_field.get(name, ()))
                    for problem in problems:
                        self.noisy.log(logging.WARNING, "status", "%s: %s", self.spec.name, problem.reason)
                        context = {**problem.context, "connection": f"opcua {problem.node}"}
                        self.mapper.unparsed.append(
                            Unparsed(self.spec.key, self.spec.name, problem.value, problem.reason, context)
                        )
                # OPC UA has no acknowledgement to hold back: a full spool keeps what fits and counts the rest
                # as dropped (as for serial and TCP streams). Each node's latest time goes with them.
                for change in changes:
                    if change.ts > latest.get(change.node, 0):
                        latest[change.node] = change.ts
                self.spool_readings(readings, dict(latest))
        finally:
            session.stop()


RUNNERS = {
    "file": FileSource,
    "serial": StreamSource,
    "tcp": StreamSource,
    "modbus": ModbusSource,
    "command": CommandSource,
    "mqtt": MqttSource,
    "opcua": OpcUaSource,
}


def start_source(spec: SourceSpec, spool: Spool, state: AgentState) -> SourceRunner:
    runner = RUNNERS[spec.kind](spec, spool, state)
    runner.start()
    return runner
