"""MQTT sources: one implementation for the agent (``daqbroker_agent.sources.MqttSource``) and the server's
stream collector (``manage.py run_stream_collectors``, ``collection.streams``).

A source's configuration (validated by ``daqbroker_agent.config``, kind ``mqtt``) names a broker and a list
of **fields**: each has a ``name`` (what a channel's source field picks), a topic filter (``+`` and ``#``
wildcards allowed) and optionally a ``path`` into a JSON payload (``data.temperature``, ``values.0``);
without a path the whole payload is the value (a plain number such as ``21.5``, or text for text channels).
The time of each message comes from the payload (``timestamp.path`` read in ``timestamp.format``) or, by
default, is the time it was received.

Delivery: the client subscribes with QoS 1 (by default) on a **persistent session** (``clean_session``
false, a client id that stays the same across restarts), and acknowledges a message only once its readings
are stored (the server's database, or the agent's spool): what the broker sent before a crash and was not
stored is sent again on reconnection, and what was published while the collector was away is kept for it by
the broker (within the broker's limits: mosquitto's ``max_queued_messages``, ``persistent_client_expiration``).
A message delivered twice stores nothing twice: when its time comes from the payload the same time and value
is an exact duplicate; with receipt times, :class:`Receipts` remembers when each recent QoS 1/2 message was
first received (by its packet id, topic and payload), committed with its readings, and a redelivery (the
broker's DUP flag, the same packet id) takes that first time again, so it too is an exact duplicate.

A payload that cannot be read (not JSON, a path that is missing, a value that is an object, a time that does
not parse) is reported with its topic and the reason, for the quarantine: never a crash.

paho-mqtt is imported only when a connection is opened: the agent needs it only for MQTT sources
(``pip install daqbroker-agent[mqtt]``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import queue
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from daqbroker_agent.parsing import LineError, TimestampParser, now_us

log = logging.getLogger("daqbroker_agent.mqtt")

DEFAULT_PORT = 1883
PASSWORD_ENV = re.compile(r"MQTT_PASSWORD_[A-Z0-9_]{1,64}")
MAX_TOPIC_BYTES = 65535
MAX_KEPT_PAYLOAD = 2000  # characters of a malformed payload kept with its reason
MAX_QUEUED = 50_000  # messages received and not yet stored: the broker's flow control holds the rest
RECONNECT_MIN, RECONNECT_MAX = 1, 60  # seconds between connection attempts (doubling)
# Receipts remembered for redeliveries: only messages in flight (sent, not acknowledged) come again with the
# DUP flag, and brokers keep few in flight (mosquitto's max_inflight_messages 20, EMQX 32, HiveMQ 10).
RECEIPTS_KEPT = 256


class _QuietAfterDisconnect(logging.Filter):
    """paho 2.2 logs an ERROR from its network thread after every deliberate disconnect; drop that one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


logging.getLogger("paho.mqtt.client").addFilter(_QuietAfterDisconnect())


class MqttUnavailable(RuntimeError):
    """paho-mqtt is not installed."""


def topic_filter_problem(topic: str) -> str:
    """Why ``topic`` is not a valid MQTT topic filter, or ""."""
    if not topic:
        return "a topic filter cannot be empty"
    if len(topic.encode()) > MAX_TOPIC_BYTES:
        return "a topic filter is at most 65535 bytes"
    if "\x00" in topic:
        return "a topic filter cannot contain a NUL character"
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return f"{topic!r}: '#' must be a whole level, and the last one (e.g. sensors/#)"
        if "+" in level and level != "+":
            return f"{topic!r}: '+' must be a whole level (e.g. sensors/+/temperature)"
    return ""


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` (a message's topic) matches ``topic_filter`` (MQTT 3.1.1, section 4.7)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False  # wildcards at the first level do not match $SYS/... topics
    wanted, got = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(wanted):
        if level == "#":
            return True
        if i >= len(got) or (level != "+" and level != got[i]):
            return False
    return len(wanted) == len(got)


def path_problem(path: str) -> str:
    """Why ``path`` is not a path into a JSON payload (``a.b.0.c``), or ""."""
    if path and any(not part for part in path.split(".")):
        return f"{path!r}: a path is names (and list positions) joined by dots, e.g. data.temperature or values.0"
    return ""


_NOT_FOUND = object()


def follow(document: Any, path: str) -> Any:
    """The value at ``path`` in a decoded JSON document, or ``_NOT_FOUND``."""
    here = document
    for part in path.split("."):
        if isinstance(here, dict):
            here = here.get(part, _NOT_FOUND)
        elif isinstance(here, list) and part.isdigit() and int(part) < len(here):
            here = here[int(part)]
        else:
            return _NOT_FOUND
        if here is _NOT_FOUND:
            return here
    return here


def default_client_id(key: str) -> str:
    """A stable client id for a source (``server:12`` -> ``daqbroker-server-12``): the broker keeps the
    session (subscriptions, and messages for them) under it while the collector is away."""
    return "daqbroker-" + re.sub(r"[^A-Za-z0-9_-]", "-", key)[:60]


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    received_us: int
    mid: int = 0
    qos: int = 0
    dup: bool = False  # the broker's DUP flag: sent before, on this session, and not acknowledged


@dataclass(frozen=True)
class Problem:
    """A message (or one field of it) that gave no reading: why, with the topic and the payload."""

    reason: str
    topic: str
    payload: str
    received_us: int
    field: str = ""  # the field that could not be read; "" when the whole message could not

    @property
    def context(self) -> dict:
        context: dict[str, Any] = {"topic": self.topic, "received": self.received_us}
        if self.field:
            context["field"] = self.field
        return context


class Receipts:
    """When each of the last ``RECEIPTS_KEPT`` QoS 1/2 messages was first received, by packet id.

    A broker sends a message it had in flight again, after a reconnection or its own restart, with its packet
    id and the DUP flag: when it was stored and the acknowledgement lost (a crash, the broker stopping), it
    must keep its first receipt time, or it would be a second reading. :meth:`stamp` gives such a
    redelivery the remembered time (same packet id, topic and payload); any other message is remembered
    under its packet id (a broker reuses an id only once its message was acknowledged). The memory is
    :meth:`as_json`, kept with the readings in the same transaction (the server's source cursor, the agent's
    spool): a message whose readings were not stored is not remembered, and its redelivery is new."""

    def __init__(self, kept: object = None):
        self.by_mid: dict[int, tuple[str, int]] = {}
        if isinstance(kept, dict):
            for mid, entry in kept.items():
                try:
                    digest, received = entry
                    self.by_mid[int(mid)] = (str(digest), int(received))
                except (TypeError, ValueError):
                    continue  # a damaged entry: that message's redelivery, if any, counts as new

    @staticmethod
    def digest(message: Message) -> str:
        return hashlib.blake2b(message.topic.encode() + b"\0" + message.payload, digest_size=8).hexdigest()

    def stamp(self, messages: Sequence[Message]) -> list[Message]:
        stamped: list[Message] = []
        for message in messages:
            if not message.qos or not message.mid:
                stamped.append(message)  # QoS 0: never sent again
                continue
            digest = self.digest(message)
            known = self.by_mid.get(message.mid)
            if message.dup and known is not None and known[0] == digest:
                stamped.append(replace(message, received_us=known[1]))
                continue
            self.by_mid.pop(message.mid, None)
            self.by_mid[message.mid] = (digest, message.received_us)
            while len(self.by_mid) > RECEIPTS_KEPT:
                del self.by_mid[next(iter(self.by_mid))]
            stamped.append(message)
        return stamped

    def as_json(self) -> dict[str, list]:
        return {str(mid): [digest, received] for mid, (digest, received) in self.by_mid.items()}


def payload_text(payload: bytes, encoding: str = "utf-8") -> str:
    return payload.decode(encoding, errors="replace")[:MAX_KEPT_PAYLOAD]


class MessageMapper:
    """Messages to readings ``(field name, µs, value)``: numbers as floats, other scalars as text (a numeric
    channel's write path then refuses it with the reason), and a :class:`Problem` for what cannot be read."""

    def __init__(self, config: dict):
        self.fields: list[dict] = config["fields"]
        self.encoding = config.get("encoding", "utf-8")
        stamp = config["timestamp"]
        self.time_path = stamp["path"]
        self.time_parser = TimestampParser(stamp["format"], stamp["timezone"]) if self.time_path else None

    @property
    def topic_filters(self) -> list[str]:
        return list(dict.fromkeys(f["topic"] for f in self.fields))

    def map(self, message: Message) -> tuple[list[tuple[str, int, Any]], list[Problem]]:
        wanted = [f for f in self.fields if topic_matches(f["topic"], message.topic)]
        if not wanted:
            return [], []  # a topic no field takes (a subscription left from an older configuration)

        def problem(reason: str, field: str = "") -> Problem:
            kept = payload_text(message.payload, self.encoding)
            return Problem(reason, message.topic, kept, message.received_us, field)

        try:
            text = message.payload.decode(self.encoding)
        except UnicodeDecodeError as exc:
            return [], [problem(f"payload is not {self.encoding} text: {exc.reason} at byte {exc.start}")]
        document: Any = _NOT_FOUND
        if self.time_path or any(f["path"] for f in wanted):
            try:
                document = json.loads(text)
            except (ValueError, RecursionError) as exc:
                return [], [problem(f"payload is not JSON: {str(exc)[:200]}")]
        ts = message.received_us
        if self.time_path:
            raw_time = follow(document, self.time_path)
            if raw_time is _NOT_FOUND or isinstance(raw_time, dict | list | bool) or raw_time is None:
                shown = "missing from the payload" if raw_time is _NOT_FOUND else f"not a time: {raw_time!r}"[:200]
                return [], [problem(f"timestamp.path {self.time_path!r} is {shown}")]
            try:
                assert self.time_parser is not None
                ts = self.time_parser(str(raw_time))
            except (LineError, ValueError, OverflowError) as exc:
                return [], [problem(f"timestamp: {exc}")]
        readings: list[tuple[str, int, Any]] = []
        problems: list[Problem] = []
        for field in wanted:
            name, path = field["name"], field["path"]
            if not path:
                value: Any = text.strip()
                try:
                    number = float(value)
                except ValueError:
                    pass
                else:
                    value = number if math.isfinite(number) else value
                if value == "":
                    problems.append(problem("payload is empty", name))
                    continue
                readings.append((name, ts, value))
                continue
            value = follow(document, path)
            if value is _NOT_FOUND:
                problems.append(problem(f"field {name!r}: path {path!r} is missing from the payload", name))
            elif value is None or isinstance(value, dict | list):
                what = "null" if value is None else ("an object" if isinstance(value, dict) else "a list")
                problems.append(problem(f"field {name!r}: path {path!r} holds {what}, not a value", name))
            elif isinstance(value, bool):
                readings.append((name, ts, 1.0 if value else 0.0))
            elif isinstance(value, int | float):
                readings.append((name, ts, float(value)))
            else:
                readings.append((name, ts, str(value)))
        return readings, problems


def password_from_environment(config: dict) -> str | None:
    """The broker password, read from the collecting process's environment (``password_env``): a password
    is never stored in a source's configuration. A missing variable is an error (ConnectionError)."""
    name = config.get("password_env") or ""
    if not name:
        return None
    value = os.environ.get(name)
    if value is None:
        raise ConnectionError(f"the environment variable {name} (password_env) is not set for this process")
    return value


class MqttSession:
    """A client kept connected to the broker (paho's network thread reconnects, backing off from 1 to 60 s),
    subscribed to the fields' topic filters; received messages wait in a queue for :meth:`take`, and are
    acknowledged with :meth:`ack` once stored.

    ``stale_filters``: filters subscribed by an earlier configuration of the same session, unsubscribed on
    connection (the broker keeps a persistent session's subscriptions). ``clean_session``: a session the
    broker forgets on disconnection (a preview's; never a source's)."""

    def __init__(self, config: dict, client_id: str, *, stale_filters: Iterable[str] = (), clean_session: bool = False):
        try:
            import paho.mqtt.client as paho
        except ImportError as exc:
            raise MqttUnavailable(
                "MQTT sources need paho-mqtt: pip install 'daqbroker-agent[mqtt]' "
                "(on the server it is in requirements.txt)"
            ) from exc
        self._paho = paho
        self.config = config
        self.filters = MessageMapper(config).topic_filters
        self.stale = [f for f in stale_filters if f not in self.filters]
        self.qos = int(config["qos"])
        self.messages: queue.Queue[Message] = queue.Queue(maxsize=MAX_QUEUED)
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.last_error = ""
        self.connections = 0
        self.client = paho.Client(
            callback_api_version=paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=paho.MQTTv311,
            manual_ack=True,
        )
        self.client.reconnect_delay_set(RECONNECT_MIN, RECONNECT_MAX)
        if config.get("username"):
            self.client.username_pw_set(config["username"], password_from_environment(config))
        if config.get("tls"):
            self.client.tls_set(ca_certs=config.get("ca_file") or None)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self._subscribe_mid: int | None = None

    def start(self) -> None:
        host = self.config.get("connect_address") or self.config["host"]
        self.client.connect_async(host, int(self.config["port"]), keepalive=int(self.config["keepalive"]))
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.last_error = f"the broker refused the connection: {reason_code}"
            log.warning("%s:%s %s", self.config["host"], self.config["port"], self.last_error)
            return
        self.connections += 1
        self.last_error = ""
        if self.stale:
            client.unsubscribe(self.stale)
            self.stale = []
        _, mid = client.subscribe([(f, self.qos) for f in self.filters])
        self._subscribe_mid = mid
        self.connected.set()
        log.info(
            "connected to %s:%s (%s session); subscribed to %s",
            self.config["host"],
            self.config["port"],
            "resumed" if flags.session_present else "new",
            ", ".join(self.filters),
        )

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = [str(code) for code in reason_codes if code.is_failure]
        if refused:
            self.last_error = f"the broker refused a subscription: {', '.join(refused)}"
            log.warning("%s", self.last_error)
        if mid == self._subscribe_mid:
            self.subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if reason_code.is_failure or reason_code.value:
            self.last_error = f"disconnected from the broker: {reason_code}"

    def _on_message(self, client, userdata, msg) -> None:
        # Blocks paho's network thread when the queue is full: the broker then holds the messages.
        self.messages.put(Message(msg.topic, bytes(msg.payload), now_us(), msg.mid, msg.qos, bool(msg.dup)))

    def take(self, wait: float, *, limit: int = 5000, settle: float = 0.02) -> list[Message]:
        """Messages received: waits up to ``wait`` s for the first, then takes those arriving within
        ``settle`` s of each other (at most ``limit``)."""
        try:
            first = self.messages.get(timeout=wait)
        except queue.Empty:
            return []
        taken = [first]
        while len(taken) < limit:
            try:
                taken.append(self.messages.get(timeout=settle))
            except queue.Empty:
                break
        return taken

    def ack(self, messages: Iterable[Message]) -> None:
        """Acknowledge stored messages (QoS 1 and 2): the broker forgets them."""
        for message in messages:
            if message.qos:
                self.client.ack(message.mid, message.qos)


def wait_connected(session: MqttSession, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if session.subscribed.wait(0.1):
            return True
    return False
