"""OPC UA sources: one implementation for the agent (``daqbroker_agent.sources.OpcUaSource``) and the server's
stream collector (``manage.py run_stream_collectors``, ``collection.streams``).

A source's configuration (validated by ``daqbroker_agent.config``, kind ``opcua``) names a server
(``opc.tcp://host:port/path``) and a list of **nodes**: each has a ``node`` id (``ns=2;i=7``,
``ns=3;s=Boiler.Temperature``) and a ``name`` (what a channel's source field picks). The client subscribes
to the nodes' values (one subscription, ``publishing_interval`` ms) and every data change becomes a reading
at the server's **source timestamp** (else its server timestamp, else the time it was received).

Status codes: **Good** values are readings; **Uncertain** values are readings marked uncertain (the server's
collector stores them flagged *suspect*; the agent, whose upload carries no quality, sends them to the
quarantine with the reason); **Bad** values are never stored: they are reported with the node id and the
status name (``BadSensorFailure``) for the quarantine. A value that is not a number or text (an array, a
structure) is reported likewise. Never a crash.

The connection is watched (the server's current time is read every few seconds); when the server goes away
the client reconnects, backing off from 1 s to a minute, and subscribes again. OPC UA keeps no data for a
client that is away: what changed meanwhile is not delivered (the value on reconnection is).

asyncua is imported only when a connection is opened: the agent needs it only for OPC UA sources
(``pip install daqbroker-agent[opcua]``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import queue
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from daqbroker_agent.parsing import now_us

log = logging.getLogger("daqbroker_agent.opcua")

DEFAULT_PORT = 4840
PASSWORD_ENV = re.compile(r"OPCUA_PASSWORD_[A-Z0-9_]{1,64}")
NODE_ID = re.compile(
    r"(?:(?:ns=\d{1,5}|nsu=[^;]{1,500});)?"
    r"(?:i=\d{1,10}|s=.{1,1000}|g=[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|b=[A-Za-z0-9+/]{1,1000}={0,2})",
    re.DOTALL,
)
MAX_QUEUED = 50_000  # data changes received and not yet stored
RECONNECT_MIN, RECONNECT_MAX = 1.0, 60.0
MAX_HISTORY_VALUES = 10_000  # values read back per node and connection (HistoryRead)
WATCH_SECONDS = 2.0  # how often the connection is checked

GOOD, UNCERTAIN, BAD = "good", "uncertain", "bad"


class OpcUaUnavailable(RuntimeError):
    """asyncua is not installed."""


def node_id_problem(node: str) -> str:
    """Why ``node`` is not an OPC UA node id in its text form, or ""."""
    if not NODE_ID.fullmatch(node):
        return (
            f"{node!r} is not a node id: write it as ns=<namespace>;i=<number>, ns=<namespace>;s=<name>, "
            "g=<guid> or b=<base64> (e.g. ns=2;i=7 or ns=3;s=Boiler.Temperature)"
        )
    return ""


def path_problem(path: str) -> str:
    if path and (not path.startswith("/") or any(c.isspace() for c in path)):
        return f"{path!r}: the path on the server starts with / and has no spaces (e.g. /freeopcua/server/)"
    return ""


def endpoint_url(config: dict) -> str:
    host = config.get("connect_address") or config["host"]
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"opc.tcp://{host}:{int(config['port'])}{config.get('path', '')}"


def severity(status: int) -> str:
    """good, uncertain or bad, from a status code's two top bits (OPC UA part 4, 7.34)."""
    top = (status >> 30) & 0b11
    return GOOD if top == 0 else UNCERTAIN if top == 1 else BAD


def status_name(status: int) -> str:
    """``BadSensorFailure`` for 0x808B0000 (asyncua's table), else the code in hex."""
    try:
        from asyncua.ua.status_codes import code_to_name_doc

        name = code_to_name_doc.get(status & 0xFFFF0000, ("",))[0]
    except Exception:  # asyncua missing
        name = ""
    return name or f"0x{status:08X}"


@dataclass(frozen=True)
class Change:
    """One data change of a monitored node, as the server reported it."""

    node: str
    value: Any
    status: int
    source_us: int | None
    server_us: int | None
    received_us: int

    @property
    def ts(self) -> int:
        return self.source_us or self.server_us or self.received_us


@dataclass(frozen=True)
class Problem:
    """A data change that gave no reading: why, with the node id and the value as text."""

    reason: str
    node: str
    field: str
    value: str
    received_us: int

    @property
    def context(self) -> dict:
        return {"node": self.node, "received": self.received_us, "field": self.field}


def to_us(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    stamp = int(moment.timestamp() * 1_000_000)
    return stamp if stamp > 0 else None  # OPC UA's "no time" is 1601-01-01


class ChangeMapper:
    """Data changes to readings ``(field name, µs, value, uncertain)`` and :class:`Problem` s."""

    def __init__(self, config: dict):
        self.nodes: list[dict] = config["nodes"]
        self.name_of = {n["node"]: n["name"] for n in self.nodes}

    def map(self, change: Change) -> tuple[list[tuple[str, int, Any, bool]], list[Problem]]:
        name = self.name_of.get(change.node)
        if name is None:
            return [], []

        def problem(reason: str) -> Problem:
            shown = change.value if isinstance(change.value, str) else repr(change.value)
            return Problem(f"{change.node}: {reason}", change.node, name, shown[:2000], change.received_us)

        level = severity(change.status)
        if level == BAD:
            return [], [problem(f"status {status_name(change.status)} (bad): not stored")]
        value = change.value
        if isinstance(value, bool):
            value = 1.0 if value else 0.0
        elif isinstance(value, int | float):
            value = float(value)
            if not math.isfinite(value):
                return [], [problem(f"value {change.value!r} is not a finite number")]
        elif isinstance(value, str):
            pass
        elif isinstance(value, datetime):
            value = value.isoformat()
        else:
            what = "no value" if value is None else f"a {type(value).__name__}"
            return [], [problem(f"{what}, not a number or text")]
        return [(name, change.ts, value, level == UNCERTAIN)], []

    def uncertain_reason(self, change: Change) -> str:
        return f"{change.node}: status {status_name(change.status)} (uncertain)"


def password_from_environment(config: dict) -> str | None:
    """The server password, from the collecting process's environment (``password_env``): never stored."""
    name = config.get("password_env") or ""
    if not name:
        return None
    value = os.environ.get(name)
    if value is None:
        raise ConnectionError(f"the environment variable {name} (password_env) is not set for this process")
    return value


class OpcUaSession:
    """A client kept connected to the server in a thread of its own (an asyncio loop), subscribed to the
    nodes; data changes wait in a queue for :meth:`take`. Reconnects, backing off from 1 s to a minute.

    With ``history`` on, each connection also reads, once subscribed, each node's history (OPC UA
    HistoryRead, raw values) since the latest change known of it: ``since`` (the source time, µs, of the
    latest value stored, from the caller's cursor) or the latest this session received. Changes made while
    no client was connected are so delivered too, in order, at most ``MAX_HISTORY_VALUES`` per node and
    connection; those already stored come again as exact duplicates. A node without a known time is not
    read back (the whole archive is not wanted), nor is one whose server keeps no history (said in
    ``last_error``)."""

    def __init__(self, config: dict, since: dict[str, int] | None = None):
        try:
            import asyncua  # noqa: F401
        except ImportError as exc:
            raise OpcUaUnavailable(
                "OPC UA sources need asyncua: pip install 'daqbroker-agent[opcua]' "
                "(on the server it is in requirements.txt)"
            ) from exc
        self.config = config
        self.url = endpoint_url(config)
        self.shown = f"opc.tcp://{config['host']}:{config['port']}{config.get('path', '')}"
        self.changes: queue.Queue[Change] = queue.Queue(maxsize=MAX_QUEUED)
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.last_error = ""
        self.connections = 0
        self._stopping = threading.Event()
        self.latest: dict[str, int] = {node: int(ts) for node, ts in (since or {}).items()}
        self._thread = threading.Thread(target=self._run, name=f"opcua {self.shown}", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._connect_forever())
        finally:
            loop.close()

    async def _connect_forever(self) -> None:
        delay = RECONNECT_MIN
        while not self._stopping.is_set():
            try:
                await self._one_connection()
                delay = RECONNECT_MIN
            except Exception as exc:
                self.last_error = f"{self.shown}: {type(exc).__name__}: {exc}"[:2000]
                log.warning("%s (reconnecting in %g s)", self.last_error, delay)
            finally:
                self.connected.clear()
                self.subscribed.clear()
            await self._sleep(delay)
            delay = min(RECONNECT_MAX, delay * 2)

    async def _sleep(self, seconds: float) -> None:
        end = asyncio.get_running_loop().time() + seconds
        while not self._stopping.is_set() and asyncio.get_running_loop().time() < end:
            await asyncio.sleep(0.1)

    async def _one_connection(self) -> None:
        from asyncua import Client, ua

        client = Client(self.url, timeout=float(self.config["timeout"]))
        policy = self.config.get("security_policy") or "None"
        if policy != "None":
            from asyncua.crypto import security_policies

            await client.set_security(
                getattr(security_policies, f"SecurityPolicy{policy.replace('_', '')}"),
                certificate=self.config["certificate"],
                private_key=self.config["private_key"],
                server_certificate=self.config.get("server_certificate") or None,
                mode=getattr(ua.MessageSecurityMode, self.config.get("security_mode") or "SignAndEncrypt"),
            )
        if self.config.get("username"):
            client.set_user(self.config["username"])
            client.set_password(password_from_environment(self.config) or "")
        await client.connect()
        try:
            self.connections += 1
            self.connected.set()
            handler = _Handler(self)
            known = dict(self.latest)  # before the subscription's first values move it
            subscription = await client.create_subscription(float(self.config["publishing_interval"]), handler)
            nodes = [client.get_node(n["node"]) for n in self.config["nodes"]]
            for node, wanted in zip(nodes, self.config["nodes"], strict=True):
                handler.ids[node.nodeid] = wanted["node"]  # as the configuration writes it
            results = await subscription.subscribe_data_change(
                nodes, sampling_interval=ua.Double(float(self.config["publishing_interval"]))
            )
            refused = [
                f"{n['node']}: {status_name(r.value)}"
                for n, r in zip(self.config["nodes"], results if isinstance(results, list) else [results], strict=False)
                if isinstance(r, ua.StatusCode)
            ]
            self.last_error = f"{self.shown}: nodes refused: {'; '.join(refused)}"[:2000] if refused else ""
            if refused:
                log.warning("%s", self.last_error)
            if self.config.get("history"):
                await self._read_history(nodes, known)
            self.subscribed.set()
            log.info(
                "connected to %s; subscribed to %s", self.shown, ", ".join(n["node"] for n in self.config["nodes"])
            )
            clock = client.get_node(ua.ObjectIds.Server_ServerStatus_CurrentTime)
            while not self._stopping.is_set():
                await self._sleep(WATCH_SECONDS)
                if self._stopping.is_set():
                    break
                await asyncio.wait_for(clock.read_value(), timeout=float(self.config["timeout"]))
        finally:
            try:
                await asyncio.wait_for(client.disconnect(), timeout=5)
            except Exception:
                log.debug("disconnect from %s", self.shown, exc_info=True)

    async def _read_history(self, nodes: list, known: dict[str, int]) -> None:
        unread: list[str] = []
        for node, wanted in zip(nodes, self.config["nodes"], strict=True):
            since = known.get(wanted["node"])
            if since is None:
                continue
            start = datetime.fromtimestamp((since + 1) / 1_000_000, tz=UTC)
            try:
                # No end: every value from the start on (a device clock a little ahead of ours included).
                values = await node.read_raw_history(starttime=start, numvalues=MAX_HISTORY_VALUES, return_bounds=False)
            except Exception as exc:  # BadHistoryOperationUnsupported, a node without history...
                unread.append(f"{wanted['node']}: {type(exc).__name__}: {exc}"[:300])
                continue
            for value in sorted(values, key=lambda v: to_us(v.SourceTimestamp) or to_us(v.ServerTimestamp) or 0):
                status = value.StatusCode
                code = int(getattr(status, "value", status or 0))
                change = Change(
                    wanted["node"],
                    value.Value.Value if value.Value is not None else None,
                    code,
                    to_us(value.SourceTimestamp),
                    to_us(value.ServerTimestamp),
                    now_us(),
                )
                self.remember(change)
                self.changes.put(change)
            if values:
                log.info("%s: %s value(s) of %s read from its history", self.shown, len(values), wanted["node"])
        if unread:
            self.last_error = f"{self.shown}: history not read: {'; '.join(unread)}"[:2000]
            log.warning("%s", self.last_error)

    def remember(self, change: Change) -> None:
        if change.ts > self.latest.get(change.node, 0):
            self.latest[change.node] = change.ts

    def take(self, wait: float, *, limit: int = 5000, settle: float = 0.02) -> list[Change]:
        """Data changes received: waits up to ``wait`` s for the first, then takes those arriving within
        ``settle`` s of each other (at most ``limit``)."""
        try:
            first = self.changes.get(timeout=wait)
        except queue.Empty:
            return []
        taken = [first]
        while len(taken) < limit:
            try:
                taken.append(self.changes.get(timeout=settle))
            except queue.Empty:
                break
        return taken


class _Handler:
    def __init__(self, session: OpcUaSession):
        self.session = session
        self.ids: dict[Any, str] = {}

    def datachange_notification(self, node, val, data) -> None:
        value = data.monitored_item.Value
        status = value.StatusCode
        code = int(getattr(status, "value", status or 0))
        change = Change(
            self.ids.get(node.nodeid) or node.nodeid.to_string(),
            val,
            code,
            to_us(value.SourceTimestamp),
            to_us(value.ServerTimestamp),
            now_us(),
        )
        self.session.remember(change)
        try:
            self.session.changes.put_nowait(change)
        except queue.Full:
            log.warning(
                "%s: %s changes waiting to be stored; dropped one of %s", self.session.shown, MAX_QUEUED, change.node
            )

    def status_change_notification(self, status) -> None:
        log.info("%s: subscription status %s", self.session.shown, status)
