"""The preview of a Modbus, MQTT or OPC UA source: a few live values read now, through the one target check.

Called by ``collection.services.preview.preview_source`` (the "New data source" page and
``POST /api/v1/sources/preview/``) for the protocol kinds. The configuration is checked by the agent's
validation (each error keyed by its option: ``registers[1].type``, ``fields[0].topic``, ``nodes[0].node``);
the channels proposed are one per register-map entry, field or node. With ``connect``, the address (and an
MQTT or OPC UA password from the server's environment, administrators only) goes through
``accounts.targets`` with the acting principal **before** anything is opened, and the preview connects to
the very address checked; then, bounded in time and messages:

* **Modbus**: one poll of the register map (the answer's timeout at most ``MAX_CONNECTION_SECONDS``, no
  retry), each entry's value or the reason it was not read (the register named);
* **MQTT**: a *clean* session under a client id of its own (never the source's persistent session, whose
  queued messages belong to the collector), subscribed to the fields' topics for ``MAX_CONNECTION_SECONDS``
  (retained messages arrive at once; otherwise what is published meanwhile), at most
  ``MAX_PROTOCOL_MESSAGES`` messages;
* **OPC UA**: a subscription to the nodes: the server sends each node's current value at once; at most
  ``MAX_OPCUA_SECONDS`` to connect and hear them.

Each value is judged by ingest's own rules as the channel would take it. Nothing is written, no message
acknowledged for the source. See docs/source-setup.md#instruments-that-speak-a-protocol.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC
from typing import Any
from zoneinfo import ZoneInfo

from accounts import permissions, targets
from collection.services.ingest import judge_value
from daqbroker_agent.config import ConfigError, validate_source_config
from daqbroker_agent.parsing import us_to_datetime
from instruments.choices import SourceKind

PROTOCOL_KINDS = (SourceKind.MODBUS, SourceKind.MQTT, SourceKind.OPCUA)
MAX_CONNECTION_SECONDS = 3.0
MAX_OPCUA_SECONDS = 15.0  # an OPC UA session's handshake alone can take seconds
MAX_PROTOCOL_MESSAGES = 50
ROWS_SHOWN = 20


class ProtocolPreviewRefused(Exception):
    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(message)


def entry_names(kind: str, config: dict) -> list[str]:
    """The names a channel's source field may take, in the configuration's order."""
    if kind == SourceKind.MODBUS:
        return [str(e.get("field", "")) for e in config.get("registers") or [] if isinstance(e, dict)]
    if kind == SourceKind.MQTT:
        return [str(f.get("name", "")) for f in config.get("fields") or [] if isinstance(f, dict)]
    return [str(n.get("name", "")) for n in config.get("nodes") or [] if isinstance(n, dict)]


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-_")
    return slug[:50] or "channel"


def proposed_channels(kind: str, config: dict) -> list[dict]:
    """One numeric channel per entry (MQTT and OPC UA text values: set the channel to text)."""
    return [
        {"slug": _slug(name), "name": name, "source_field": name, "kind": "numeric", "units": "", "missing_values": []}
        for name in entry_names(kind, config)
        if name
    ]


def protocol_preview(
    principal: targets.Principal, kind: str, given: dict, *, connect: bool, channels: list[dict] | None
) -> dict[str, Any]:
    errors: dict[str, str] = {}
    try:
        config = validate_source_config(kind, given)
    except ConfigError as exc:
        config = None
        errors[exc.field or "config"] = exc.message
    judged = channels if channels is not None else proposed_channels(kind, given)
    answer: dict[str, Any] = {
        "kind": kind,
        "sample": None,
        "raw": [],
        "proposal": {
            "config": {},
            "channels": proposed_channels(kind, given),
            "questions": [],
            "notes": ["One channel per entry is proposed; Test connection reads a few live values."],
        },
        "config": given,
        "errors": errors,
        "rows": [],
    }
    if not connect:
        return answer
    if config is None:
        field, message = next(iter(errors.items()))
        raise ProtocolPreviewRefused(f"config.{field}", message)
    verdict = targets.verdict_for(kind, config)
    refusal = verdict.refusal_for(permissions.is_administrator(principal))
    if refusal:
        raise ProtocolPreviewRefused(f"config.{verdict.field}", refusal)
    config = targets.pinned(kind, config, verdict)  # the very address checked (no second DNS answer)
    readers: dict[str, Callable[[dict], tuple[str, list[Event]]]] = {
        SourceKind.MODBUS: _modbus,
        SourceKind.MQTT: _mqtt,
        SourceKind.OPCUA: _opcua,
    }
    where, events = readers[kind](config)
    zone = ZoneInfo((config.get("timestamp") or {}).get("timezone") or "UTC")
    rows: list[dict] = []
    for number, (text, ts_us, values, problems) in enumerate(events[:ROWS_SHOWN], start=1):
        row: dict[str, Any] = {"line": number, "text": text[:2000]}
        if ts_us is not None:
            moment = us_to_datetime(ts_us)
            row["time_utc"] = moment.astimezone(UTC).isoformat()
            row["time_local"] = moment.astimezone(zone).isoformat()
            fields = {name: str(value) for name, value in values.items()}
            row["values"] = [judge_proposed(channel, fields, ts_us) for channel in judged]
        if problems:
            row["error"] = "; ".join(problems)[:2000]
        rows.append(row)
    answer.update(
        sample={"origin": f"connection {where}", "lines": len(events), "truncated": len(events) > ROWS_SHOWN},
        raw=[event[0][:2000] for event in events[:ROWS_SHOWN]],
        config={k: v for k, v in config.items() if k not in ("connect_address", "connect_url")},
        rows=rows,
    )
    if not events:
        answer["proposal"]["notes"] = [f"Connected to {where}; nothing arrived within {MAX_CONNECTION_SECONDS:g} s."]
    return answer


# Each reader answers (where, events): an event is (text shown, µs or None, {field: value}, [problems]).
Event = tuple[str, int | None, dict[str, Any], list[str]]


def _modbus(config: dict) -> tuple[str, list[Event]]:
    from daqbroker_agent.modbus import ModbusReader, ModbusUnavailable, describe_target

    config = {**config, "timeout": min(float(config["timeout"]), MAX_CONNECTION_SECONDS), "retries": 0}
    where = describe_target(config)
    try:
        with ModbusReader(config) as reader:
            poll = reader.poll()
    except ModbusUnavailable as exc:
        raise ProtocolPreviewRefused("connection", str(exc)) from None
    except (OSError, ValueError) as exc:
        raise ProtocolPreviewRefused("connection", f"Cannot connect to {where}: {exc}") from None
    problems = [f"{f.field} ({f.register}): {f.reason}" for f in poll.failures]
    shown = ", ".join(f"{name}={value:g}" for name, value in poll.values.items())
    return where, [(f"poll of {len(poll.values)} value(s): {shown}", poll.ts_us, dict(poll.values), problems)]


def _mqtt(config: dict) -> tuple[str, list[Event]]:
    from daqbroker_agent.mqtt import MessageMapper, MqttSession, MqttUnavailable, payload_text

    where = f"{config['host']}:{config['port']}"
    mapper = MessageMapper(config)
    try:
        session = MqttSession(config, f"daqbroker-preview-{uuid.uuid4().hex[:12]}", clean_session=True)
    except (MqttUnavailable, ConnectionError) as exc:
        raise ProtocolPreviewRefused("connection", str(exc)) from None
    deadline = time.monotonic() + MAX_CONNECTION_SECONDS
    events: list[Event] = []
    session.start()
    try:
        while not session.subscribed.is_set():
            if time.monotonic() >= deadline or (session.last_error and not session.connected.is_set()):
                why = session.last_error or "no answer"
                raise ProtocolPreviewRefused("connection", f"Cannot connect to the broker at {where}: {why}")
            session.subscribed.wait(0.05)
        while len(events) < MAX_PROTOCOL_MESSAGES and (left := deadline - time.monotonic()) > 0:
            for message in session.take(left, limit=MAX_PROTOCOL_MESSAGES - len(events)):
                readings, problems = mapper.map(message)
                text = f"{message.topic}: {payload_text(message.payload, config.get('encoding', 'utf-8'))}"
                values = {name: value for name, _, value in readings}
                ts = readings[0][1] if readings else message.received_us
                events.append((text, ts, values, [p.reason for p in problems]))
    finally:
        session.stop()
    return where, events


def _opcua(config: dict) -> tuple[str, list[Event]]:
    from daqbroker_agent.opcua import ChangeMapper, OpcUaSession, OpcUaUnavailable

    try:
        session = OpcUaSession(config)
    except (OpcUaUnavailable, ConnectionError) as exc:
        raise ProtocolPreviewRefused("connection", str(exc)) from None
    where = session.shown
    mapper = ChangeMapper(config)
    deadline = time.monotonic() + MAX_OPCUA_SECONDS
    events: list[Event] = []
    heard: set[str] = set()
    session.start()
    try:
        while not session.subscribed.is_set():
            if time.monotonic() >= deadline or (session.last_error and not session.connected.is_set()):
                why = session.last_error or "no answer"
                raise ProtocolPreviewRefused("connection", f"Cannot connect to {where}: {why}")
            session.subscribed.wait(0.05)
        wanted = {n["node"] for n in config["nodes"]}
        # Each node's current value comes at once after subscribing; a moment more for a slow server.
        settle = time.monotonic() + MAX_CONNECTION_SECONDS
        while heard < wanted and len(events) < MAX_PROTOCOL_MESSAGES and (left := settle - time.monotonic()) > 0:
            for change in session.take(min(left, 0.5)):
                heard.add(change.node)
                readings, problems = mapper.map(change)
                values = {name: value for name, _, value, _ in readings}
                notes = [p.reason for p in problems]
                notes += [mapper.uncertain_reason(change) for *_, uncertain in readings if uncertain]
                events.append((f"{change.node}: {change.value!r}", change.ts, values, notes))
    finally:
        session.stop()
    return where, events


def judge_proposed(channel: dict, fields: dict[str, str], ts_us: int) -> dict[str, Any]:
    """A proposed channel's value in a previewed line or message, judged as ingest would (one judging for
    line previews and protocol previews alike)."""
    key = str(channel.get("source_field") or channel.get("slug") or "")
    raw = fields.get(key)
    if raw is None:
        return {"slug": channel.get("slug"), "raw": None, "stored": False, "reason": f"field {key!r} is missing"}
    verdict = judge_value(
        text=channel.get("kind") == "text",
        raw=raw,
        ts_us=ts_us,
        valid_min=_float_or_none(channel.get("valid_min")),
        valid_max=_float_or_none(channel.get("valid_max")),
        missing_values=[float(v) for v in channel.get("missing_values") or [] if _float_or_none(v) is not None],
    )
    return {
        "slug": channel.get("slug"),
        "raw": raw,
        "stored": verdict.stored,
        "value": verdict.value,
        "quality": verdict.quality,
        "reason": verdict.reason,
    }


def _float_or_none(value: object) -> float | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
