"""Modbus TCP and RTU: reading a source's register map, the one implementation the agent and the server use.

A source's validated settings (``daqbroker_agent.config``, kind ``modbus``) name the device (``host`` and
``port`` for Modbus TCP; ``url`` and the serial framing for Modbus RTU, through pyserial, so ``socket://``
reaches an RTU device behind a serial-to-Ethernet converter) and a register map: one entry per channel
field, with its address, function (holding or input registers, coils, discrete inputs), data type, word
and byte order, scale and offset.

A poll reads the entries the channels want in as few requests as the protocol allows: entries of the same
function whose registers touch or overlap are read together, at most ``max_registers`` registers (125)
or 2,000 bits per request. Each request that fails (an exception response such as an illegal address, no
answer within ``timeout``, a garbled frame) fails only the entries it carried; they come back as
:class:`Failure` s naming the register and the reason, to be quarantined by the server. A poll where no
request was answered raises :class:`ModbusUnavailable` (the device is not there).

Word order ``big`` puts the most significant register first, byte order ``big`` each register's high byte
first (the Modbus standard: ``ABCD`` for the bytes of a 32-bit value). ``little`` word order gives
``CDAB``, ``little`` byte order ``BADC``, both ``DCBA``.

pymodbus is an optional dependency of the agent (``pip install 'daqbroker-agent[modbus]'``); it is imported
when a Modbus source is first read.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from daqbroker_agent.config import MODBUS_MAX_BITS, MODBUS_WORDS

log = logging.getLogger("daqbroker_agent.modbus")

STRUCT_CODES = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f", "float64": "d"}
FUNCTION_NAMES = {
    "holding": "holding register",
    "input": "input register",
    "coil": "coil",
    "discrete": "discrete input",
}


class ModbusUnavailable(ConnectionError):
    """The device could not be reached, or answered none of a poll's requests."""


@dataclass(frozen=True)
class Entry:
    """One register-map entry (a validated ``registers`` item)."""

    field: str
    address: int
    function: str
    type: str
    word_order: str = "big"
    byte_order: str = "big"
    scale: float = 1.0
    offset: float = 0.0

    @property
    def size(self) -> int:
        return MODBUS_WORDS[self.type]

    def describe(self) -> str:
        span = f"{self.address}" if self.size == 1 else f"{self.address}-{self.address + self.size - 1}"
        return f"{FUNCTION_NAMES[self.function]} {span} ({self.type})"


@dataclass
class Block:
    """One read request: ``count`` registers (or bits) of ``function`` from ``start``, feeding ``entries``."""

    function: str
    start: int
    count: int
    entries: list[Entry] = field(default_factory=list)

    def describe(self) -> str:
        if self.count == 1:
            return f"{FUNCTION_NAMES[self.function]} {self.start}"
        return f"{FUNCTION_NAMES[self.function]}s {self.start}-{self.start + self.count - 1}"


@dataclass(frozen=True)
class Failure:
    """An entry whose value could not be read or used: quarantined with the register and the reason."""

    field: str
    register: str  # "holding register 40-41 (float32)"
    reason: str
    raw: str = ""  # the register words or bits as read, when they were


@dataclass
class Poll:
    """What one poll read: values by field, failures, and when the poll began (µs since 1970)."""

    ts_us: int
    values: dict[str, float] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    requests: int = 0


def entries_of(config: dict, fields: Iterable[str] | None = None) -> list[Entry]:
    """The register map's entries, or only those of ``fields`` (the ones a channel takes)."""
    wanted = None if fields is None else set(fields)
    return [Entry(**item) for item in config["registers"] if wanted is None or item["field"] in wanted]


def plan_reads(entries: Sequence[Entry], max_registers: int = 125) -> list[Block]:
    """The read requests covering ``entries``: per function, entries whose registers touch or overlap are read
    in one request, never more than ``max_registers`` registers (or MODBUS_MAX_BITS bits) at a time."""
    blocks: list[Block] = []
    for function in FUNCTION_NAMES:
        limit = MODBUS_MAX_BITS if function in ("coil", "discrete") else max_registers
        current: Block | None = None
        for entry in sorted((e for e in entries if e.function == function), key=lambda e: e.address):
            end = entry.address + entry.size
            if current is not None and entry.address <= current.start + current.count and end - current.start <= limit:
                current.count = max(current.count, end - current.start)
                current.entries.append(entry)
                continue
            current = Block(function, entry.address, entry.size, [entry])
            blocks.append(current)
    return blocks


def decode(words: Sequence[int], entry: Entry) -> float:
    """The number ``words`` (the entry's registers as read, 16-bit each) hold, before scale and offset."""
    ordered = list(words) if entry.word_order == "big" else list(reversed(words))
    data = b"".join(word.to_bytes(2, "big") for word in ordered)
    if entry.byte_order == "little":
        data = b"".join(data[i : i + 2][::-1] for i in range(0, len(data), 2))
    return float(struct.unpack(">" + STRUCT_CODES[entry.type], data)[0])


def scaled(raw: float, entry: Entry) -> float:
    return raw * entry.scale + entry.offset


def describe_target(config: dict) -> str:
    where = f"{config['host']}:{config['port']}" if config["transport"] == "tcp" else config["url"]
    return f"Modbus {config['transport'].upper()} {where} unit {config['unit']}"


def open_client(config: dict) -> Any:
    """A connected pymodbus client for the source's settings, or ModbusUnavailable."""
    try:
        from pymodbus import FramerType
        from pymodbus.client import ModbusSerialClient, ModbusTcpClient
    except ImportError:  # the agent installed without its [modbus] extra
        raise ModbusUnavailable(
            "pymodbus is not installed: install the agent with its Modbus extra, pip install 'daqbroker-agent[modbus]'"
        ) from None
    common = {"timeout": config["timeout"], "retries": config["retries"], "reconnect_delay": 0}
    client: ModbusTcpClient | ModbusSerialClient
    if config["transport"] == "tcp":
        # connect_address: the address the server's target check approved (so DNS is not asked again)
        host = config.get("connect_address") or config["host"]
        client = ModbusTcpClient(host, port=config["port"], **common)
    else:
        stopbits = float(config["stopbits"])
        client = ModbusSerialClient(
            config.get("connect_url") or config["url"],
            framer=FramerType.RTU,
            baudrate=config["baudrate"],
            bytesize=config["bytesize"],
            parity=config["parity"],
            stopbits=int(stopbits) if stopbits.is_integer() else stopbits,  # type: ignore[arg-type]
            **common,
        )
    if not client.connect():
        client.close()
        device = config["url"] if config["transport"] == "rtu" and "://" not in config["url"] else ""
        why = ": no such serial device" if device and not os.path.exists(device) else ""
        raise ModbusUnavailable(f"cannot connect to {describe_target(config)}{why}")
    return client


class ModbusReader:
    """Polls a source's register map over one connection (opened on first use, reopened after a failure)."""

    def __init__(self, config: dict, fields: Iterable[str] | None = None):
        self.config = config
        self.entries = entries_of(config, fields)
        self.blocks = plan_reads(self.entries, config["max_registers"])
        self.client: Any = None
        self.lost = False  # the connection dropped during this poll

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def __enter__(self) -> ModbusReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def poll(self) -> Poll:
        """Read every block once. Failed blocks fail their entries; none answered: ModbusUnavailable."""
        if self.client is None:
            self.client = open_client(self.config)
        self.lost = False
        poll = Poll(ts_us=time.time_ns() // 1000)
        answered = 0
        silent: list[str] = []
        for block in self.blocks:
            poll.requests += 1
            try:
                data = self._read(block)
            except _NoAnswer as exc:
                silent.append(f"{block.describe()}: {exc}")
                poll.failures.extend(Failure(e.field, e.describe(), str(exc)) for e in block.entries)
                continue
            except _Refused as exc:
                answered += 1
                poll.failures.extend(Failure(e.field, e.describe(), str(exc)) for e in block.entries)
                continue
            answered += 1
            for entry in block.entries:
                at = entry.address - block.start
                self._use(poll, entry, data[at : at + entry.size])
        if self.lost:
            self.close()
        if self.blocks and not answered:
            self.close()  # reconnect next time: a half-open connection may be why
            raise ModbusUnavailable(f"{describe_target(self.config)} did not answer: {'; '.join(silent)}"[:2000])
        return poll

    def _use(self, poll: Poll, entry: Entry, data: Sequence[Any]) -> None:
        if entry.type == "bool":
            poll.values[entry.field] = scaled(1.0 if data[0] else 0.0, entry)
            return
        raw = " ".join(f"0x{word:04X}" for word in data)
        value = scaled(decode(data, entry), entry)
        if not math.isfinite(value):
            reason = f"the value is not a finite number ({value})"
            poll.failures.append(Failure(entry.field, entry.describe(), reason, raw))
            return
        poll.values[entry.field] = value

    def _read(self, block: Block) -> list[Any]:
        from pymodbus.exceptions import ModbusException

        read = {
            "holding": self.client.read_holding_registers,
            "input": self.client.read_input_registers,
            "coil": self.client.read_coils,
            "discrete": self.client.read_discrete_inputs,
        }[block.function]
        try:
            response = read(block.start, count=block.count, device_id=self.config["unit"])
        except ModbusException as exc:  # no answer within the timeout, a garbled or CRC-failed frame
            raise _NoAnswer(_no_answer_reason(exc, self.config)) from None
        except OSError as exc:  # the connection dropped: reopened at the next poll
            self.lost = True
            raise _NoAnswer(f"connection lost: {exc}") from None
        if response.isError():
            code = getattr(response, "exception_code", None)
            reason = EXCEPTION_REASONS.get(code, f"exception code {code}") if isinstance(code, int) else str(response)
            raise _Refused(f"the device refused the read: {reason}")
        values = response.bits if block.function in ("coil", "discrete") else response.registers
        if len(values) < block.count:
            raise _Refused(f"the device answered {len(values)} value(s) where {block.count} were asked for")
        return list(values[: block.count])


class _NoAnswer(Exception):
    pass


class _Refused(Exception):
    pass


EXCEPTION_REASONS = {
    1: "illegal function (exception 1): the device does not support this function",
    2: "illegal data address (exception 2): no such register on the device",
    3: "illegal data value (exception 3)",
    4: "device failure (exception 4)",
    5: "acknowledge (exception 5): the device is busy with a long request",
    6: "device busy (exception 6)",
    10: "gateway path unavailable (exception 10)",
    11: "gateway target failed to respond (exception 11): the unit behind the gateway did not answer",
}


def _no_answer_reason(exc: Exception, config: dict) -> str:
    text = str(exc)
    if "CRC" in text.upper():
        return f"garbled answer (CRC check failed): {text}"[:500]
    silent = f"no answer from unit {config['unit']} within {config['timeout']:g} s"
    if "no response" in text.lower():
        return silent
    return f"{silent} ({type(exc).__name__}: {text})"[:500]
