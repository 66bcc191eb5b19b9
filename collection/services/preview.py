"""The one source preview: a sample in, the parsed table and proposals out. Used by the "New data source"
page, the admin (through that page) and ``POST /api/v1/sources/preview/``.

A sample is an uploaded file's first lines, the first lines of a file at a server path (a file source's
folder), lines read now from a serial port or TCP instrument ("Test connection"), or the first lines of a
file on an agent's machine, which the agent reads inside its own ``allowed_paths`` and sends when asked
(``accounts.agent_samples``; the preview answers "waiting" until they arrive). Whatever names a path,
an address or a device goes through ``accounts.targets`` with the acting principal *before* anything is
opened: a preview never reads what the person could not point a source at. Every read is bounded: at most
``MAX_SAMPLE_BYTES`` of a file, ``MAX_CONNECTION_LINES`` lines or ``MAX_CONNECTION_SECONDS`` seconds of a
connection, whoever asks; an uploaded sample larger than ``MAX_UPLOAD_BYTES`` is refused by its size.

Proposals come from ``daqbroker_agent.propose`` (units in their canonical spelling,
``instruments.units.check_units``); the table is parsed by the one parser (``daqbroker_agent.parsing``) and
each value judged by ingest's own rules (``collection.services.ingest.judge_value``). Nothing is written.
See docs/source-setup.md.
"""

from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import serial
from django.core.exceptions import ValidationError
from serial.tools import list_ports

from accounts import agent_samples, permissions, targets
from accounts.choices import SampleRequestStatus
from accounts.models import Agent, AgentHealth
from collection.services.protocol_preview import (
    PROTOCOL_KINDS,
    ProtocolPreviewRefused,
    judge_proposed,
    protocol_preview,
)
from daqbroker_agent.config import ConfigError, validate_source_config
from daqbroker_agent.parsing import LineError, LineParser, now_us, us_to_datetime
from daqbroker_agent.propose import propose
from daqbroker_agent.transports import LineSplitter, SerialTransport, TcpTransport, Transport
from instruments.choices import SourceKind
from instruments.units import check_units

MAX_UPLOAD_BYTES = 2 * 1024 * 1024
MAX_SAMPLE_BYTES = 1024 * 1024
MAX_SAMPLE_LINES = 5000
MAX_CONNECTION_LINES = 50
MAX_CONNECTION_SECONDS = 3.0
ROWS_SHOWN = 20
LINE_KINDS = (SourceKind.FILE, SourceKind.SERIAL, SourceKind.TCP)
PREVIEW_KINDS = (*LINE_KINDS, *PROTOCOL_KINDS)
# Stand-ins for the options that say where a source reads, so a partial configuration still parses.
PLACEHOLDERS: dict[str, dict[str, Any]] = {
    SourceKind.FILE: {"path": "/"},
    SourceKind.SERIAL: {"url": "loop://"},
    SourceKind.TCP: {"host": "localhost", "port": 1},
}


class PreviewRefused(Exception):
    """A preview that cannot be given; ``field`` is what is at fault ("sample", "config.path", ...)."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(message)


class SampleWaiting(Exception):
    """The agent has not sent the lines yet: ask again (the page polls)."""

    def __init__(self, request_id: int, message: str):
        self.request_id = request_id
        self.message = message
        super().__init__(message)


@dataclass
class Sample:
    lines: list[str]
    origin: str  # "upload", "file <path>", "connection <where>"
    truncated: bool = False


# --- the sample -------------------------------------------------------------------------------------


def _decode(data: bytes, encoding: str) -> tuple[list[str], bool]:
    """The complete lines of ``data`` (at most MAX_SAMPLE_BYTES / MAX_SAMPLE_LINES), and whether cut."""
    if not data.strip():
        raise PreviewRefused("sample", "The sample is empty: give a file with a few lines of the instrument's output.")
    head = data[:8192]
    if b"\x00" in head and "16" not in encoding and "32" not in encoding:
        raise PreviewRefused(
            "sample", "The sample looks like a binary file (it holds NUL bytes): give the logger's text output."
        )
    truncated = len(data) > MAX_SAMPLE_BYTES
    if truncated:
        data = data[:MAX_SAMPLE_BYTES]
        cut = data.rfind(b"\n")
        data = data[: cut + 1] if cut > 0 else data
    text = data.decode(encoding, errors="replace")
    if text.count("\ufffd") > max(8, len(text) // 20):
        raise PreviewRefused(
            "sample", f"The sample is not {encoding} text (too many bytes that do not decode): is it a binary file?"
        )
    lines = text.splitlines()
    if len(lines) > MAX_SAMPLE_LINES:
        lines, truncated = lines[:MAX_SAMPLE_LINES], True
    return lines, truncated


def sample_from_upload(data: bytes, encoding: str = "utf-8") -> Sample:
    if len(data) > MAX_UPLOAD_BYTES:
        raise PreviewRefused("sample", too_large_message(len(data)))
    lines, truncated = _decode(data, encoding)
    return Sample(lines, "upload", truncated)


def too_large_message(size: int) -> str:
    return (
        f"The sample is {size / 1024 / 1024:.1f} MB; a sample may be at most {MAX_UPLOAD_BYTES // 1024 // 1024} MB. "
        "Upload the first lines of the file (a few hundred are plenty)."
    )


def _refusal(principal: targets.Principal, verdict: targets.Verdict) -> None:
    refusal = verdict.refusal_for(permissions.is_administrator(principal))
    if refusal:
        raise PreviewRefused(f"config.{verdict.field}", refusal)


def sample_from_server_file(principal: targets.Principal, config: dict, file_name: str = "") -> Sample:
    """The first lines of a file in a file source's folder (the newest matching its pattern, or ``file_name``)."""
    folder, pattern = config["path"], config.get("pattern") or "*"
    _refusal(principal, targets.check_folder(folder, pattern))
    if file_name:
        if "/" in file_name or "\\" in file_name or file_name in (".", ".."):
            raise PreviewRefused("file", f"{file_name!r} must be a file name inside the folder")
        candidates = [os.path.join(folder, file_name)]
    else:
        candidates = sorted(glob.glob(os.path.join(glob.escape(folder), pattern)), key=_mtime, reverse=True)
    candidates = [path for path in candidates if os.path.isfile(path)]
    if not candidates:
        raise PreviewRefused("config.path", f"No file in {folder} matches {file_name or pattern!r}.")
    path = candidates[0]
    _refusal(principal, targets.check_file(path))  # where it really is, symlinks followed
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SAMPLE_BYTES + 1)
    except OSError as exc:
        raise PreviewRefused("config.path", f"{path} cannot be read: {exc.strerror}") from None
    lines, truncated = _decode(data, config.get("encoding", "utf-8"))
    return Sample(lines, f"file {Path(path).name}", truncated)


def ask_agent(
    principal: targets.Principal, agent_id: int, config: dict, file_name: str = "", address: str | None = None
) -> SampleWaiting:
    """Ask an agent for the first lines of a file in ``config["path"]``; the answer to give while waiting."""
    agent = agent_samples.agents_for(principal).filter(pk=agent_id).first()
    if agent is None:
        raise PreviewRefused("agent", "No such agent among those whose sources you may set.")
    if "path" not in config:
        raise PreviewRefused("config.path", "path is required: the folder on the agent's machine")
    try:
        request = agent_samples.request_sample(principal, agent, config, file_name=file_name, address=address)
    except ValidationError as exc:
        field, messages = next(iter(exc.message_dict.items()))
        raise PreviewRefused(field, messages[0]) from None
    return SampleWaiting(request.pk, _waiting_message(agent, request.folder))


def _waiting_message(agent: Agent, folder: str) -> str:
    return f"Waiting for the agent {agent.name} to send the first lines of a file in {folder} ({_last_seen(agent)})."


def _last_seen(agent: Agent) -> str:
    health = AgentHealth.objects.filter(agent=agent).first()
    if health is None:
        return "it has never sent a heartbeat"
    return f"its last heartbeat was at {health.last_heartbeat:%Y-%m-%d %H:%M:%S} UTC"


def sample_from_agent(principal: targets.Principal, request_id: int) -> Sample:
    """The lines an agent sent for request ``request_id``; SampleWaiting while it has not, PreviewRefused
    when it timed out or the agent refused (outside its allowed_paths, no file, unreadable)."""
    request = agent_samples.sample_request_for(principal, request_id)
    if request is None:
        raise PreviewRefused("agent_sample", "No such sample request among yours.")
    agent = request.agent
    if request.status == SampleRequestStatus.REFUSED:
        raise PreviewRefused("agent_sample", f"The agent {agent.name} did not read the file: {request.error}")
    if request.timed_out:
        raise PreviewRefused(
            "agent_sample",
            f"The agent {agent.name} did not answer within {request.WAIT_SECONDS} s: is it running and connected "
            f"({_last_seen(agent)})?",
        )
    if request.status == SampleRequestStatus.WAITING:
        raise SampleWaiting(request.pk, _waiting_message(agent, request.folder))
    lines = list(request.lines)
    if not any(line.strip() for line in lines):
        raise PreviewRefused("sample", f"The file {request.origin} on {agent.name} is empty.")
    return Sample(lines, f"agent {agent.name}: file {request.origin}", request.truncated)


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def sample_from_connection(principal: targets.Principal, kind: str, config: dict) -> Sample:
    """Lines read now from a serial port or TCP instrument: bounded in lines, bytes and seconds."""
    verdict = targets.verdict_for(kind, config)
    _refusal(principal, verdict)
    config = targets.pinned(kind, config, verdict)  # the very address that was checked (no second DNS answer)
    config = {**config, "timeout": min(float(config["timeout"]), MAX_CONNECTION_SECONDS)}
    where = config["url"] if kind == SourceKind.SERIAL else f"{config['host']}:{config['port']}"
    try:
        transport: Transport = SerialTransport(config) if kind == SourceKind.SERIAL else TcpTransport(config)
    except (OSError, serial.SerialException, ValueError) as exc:
        raise PreviewRefused("connection", f"Cannot connect to {where}: {exc}") from None
    try:
        lines = read_now(transport, config)
    except (OSError, serial.SerialException) as exc:
        raise PreviewRefused("connection", f"Connected to {where}, but reading failed: {exc}") from None
    finally:
        transport.close()
    return Sample(lines, f"connection {where}")


def read_now(transport: Transport, config: dict) -> list[str]:
    """A few lines, now: the request sent if any, then until a pause of ``timeout`` seconds, at most
    MAX_CONNECTION_LINES lines, MAX_SAMPLE_BYTES bytes or MAX_CONNECTION_SECONDS seconds."""
    if config.get("request"):
        transport.write(config["request"].encode(config["encoding"]))
    deadline = time.monotonic() + MAX_CONNECTION_SECONDS
    splitter = LineSplitter(config["line_terminator"], config["encoding"])
    lines: list[str] = []
    received = 0
    while len(lines) < MAX_CONNECTION_LINES and received < MAX_SAMPLE_BYTES:
        wait = min(float(config["timeout"]), deadline - time.monotonic())
        if wait <= 0:
            break
        chunk = transport.read_some(wait)
        if not chunk:
            break  # closed, or a pause: the instrument has said what it had to say
        received += len(chunk)
        lines.extend(splitter.feed(chunk))
    return lines[:MAX_CONNECTION_LINES]


# --- the preview ------------------------------------------------------------------------------------


def merge(proposed: dict, given: dict) -> dict:
    """The proposal with every option the person gave taking precedence (the timestamp section by option)."""
    merged = {**proposed, **given}
    if isinstance(proposed.get("timestamp"), dict) and isinstance(given.get("timestamp"), dict):
        merged["timestamp"] = {**proposed["timestamp"], **given["timestamp"]}
    return merged


def preview_source(
    principal: targets.Principal,
    kind: str,
    config: dict | None = None,
    *,
    upload: bytes | None = None,
    file_name: str = "",
    connect: bool = False,
    channels: list[dict] | None = None,
    agent_sample: int | None = None,
) -> dict[str, Any]:
    """The preview of a source of ``kind`` configured (partly) as ``config``; raises PreviewRefused.

    The sample: ``upload`` if given; else, with ``agent_sample``, the lines an agent sent for that request
    (SampleWaiting until it has); else, with ``connect``, lines read now from the serial port or TCP
    instrument ``config`` names; else (file sources) the first lines of a file in ``config["path"]``.
    ``channels`` (slug, source_field, kind, valid_min, valid_max, missing_values) are judged on each row;
    without them the proposed channels are.
    """
    if kind not in PREVIEW_KINDS:
        raise PreviewRefused("kind", f"{kind!r} sources cannot be previewed; one of {', '.join(PREVIEW_KINDS)}")
    if not isinstance(config, dict):
        raise PreviewRefused("config", "must be an object of option names and values")
    if kind in PROTOCOL_KINDS:  # live values, not lines: no sample file
        if upload is not None or agent_sample is not None:
            raise PreviewRefused("sample", f"{kind} sources read values, not lines: use Test connection instead")
        try:
            return protocol_preview(principal, kind, dict(config), connect=connect, channels=channels)
        except ProtocolPreviewRefused as exc:
            raise PreviewRefused(exc.field, exc.message) from None
    given = dict(config or {})
    errors: dict[str, str] = {}
    located = _validated(kind, {**PLACEHOLDERS[kind], **given}, errors)
    encoding = located.get("encoding", "utf-8") if located else "utf-8"
    if upload is not None:
        sample = sample_from_upload(upload, encoding)
    elif agent_sample is not None:
        sample = sample_from_agent(principal, agent_sample)
    elif located is None:
        raise PreviewRefused("config", next(iter(errors.values())))
    elif connect and kind in (SourceKind.SERIAL, SourceKind.TCP):
        _require(kind, given)
        sample = sample_from_connection(principal, kind, located)
    elif kind == SourceKind.FILE:
        _require(kind, given)
        sample = sample_from_server_file(principal, located, file_name)
    else:
        raise PreviewRefused("sample", "Give a sample file, or test the connection.")
    zone = (given.get("timestamp") or {}).get("timezone") if isinstance(given.get("timestamp"), dict) else None
    proposal = propose(sample.lines, kind=kind, timezone=zone, normalise_units=check_units)
    effective = merge(proposal.config, given)
    errors = {}
    parse_config = _validated(kind, {**PLACEHOLDERS[kind], **effective}, errors)
    try:
        validate_source_config(kind, effective)
    except ConfigError as exc:
        errors.setdefault(exc.field or "config", exc.message)
    judged = channels if channels is not None else [c.as_dict() for c in proposal.channels]
    rows = _rows(sample.lines, kind, parse_config, judged) if parse_config is not None else []
    return {
        "kind": kind,
        "sample": {"origin": sample.origin, "lines": len(sample.lines), "truncated": sample.truncated},
        "raw": sample.lines[: ROWS_SHOWN + (parse_config or {}).get("header_lines", 0)],
        "proposal": proposal.as_dict(),
        "config": effective,
        "errors": errors,
        "rows": rows,
    }


def _validated(kind: str, raw: dict, errors: dict[str, str]) -> dict | None:
    try:
        return validate_source_config(kind, raw)
    except ConfigError as exc:
        errors[exc.field or "config"] = exc.message
        return None


def _require(kind: str, given: dict) -> None:
    """The options naming the target must be the person's own, never a placeholder."""
    for option in PLACEHOLDERS[kind]:
        if option not in given:
            raise PreviewRefused(f"config.{option}", f"{option} is required to read from the {kind} source itself")


def _rows(lines: list[str], kind: str, config: dict, channels: list[dict]) -> list[dict]:
    parser = LineParser(config)
    skip = config.get("header_lines", 0) if kind == SourceKind.FILE else 0
    zone = ZoneInfo(config["timestamp"]["timezone"])
    received = now_us()
    rows: list[dict] = []
    for number, line in enumerate(lines[skip:], start=skip + 1):
        if len(rows) >= ROWS_SHOWN:
            break
        if not line.strip():
            continue
        row: dict[str, Any] = {"line": number, "text": line[:2000]}
        try:
            parsed = parser.parse(line, received)
        except LineError as exc:
            row["error"] = f"line not parsed: {exc}"
            rows.append(row)
            continue
        moment = us_to_datetime(parsed.ts_us)
        row["time_utc"] = moment.astimezone(UTC).isoformat()
        row["time_local"] = moment.astimezone(zone).isoformat()
        row["values"] = [judge_proposed(channel, parsed.fields, parsed.ts_us) for channel in channels]
        rows.append(row)
    return rows


# --- serial ports -----------------------------------------------------------------------------------


def serial_ports(principal: targets.Principal) -> list[dict[str, str]]:
    """This server's serial ports (pyserial's ``list_ports``) that ``principal`` may point a source at."""
    administrator = permissions.is_administrator(principal)
    found = []
    for port in sorted(list_ports.comports(), key=lambda p: p.device):
        if targets.check_serial(port.device).refusal_for(administrator):
            continue
        found.append({"device": port.device, "description": port.description or "", "hwid": port.hwid or ""})
    return found
