"""Connections to line-oriented instruments (serial ports and TCP), and cutting their bytes into lines.

One copy for both readers: the agent's stream sources (a connection kept open) and the server's serial
and TCP collectors (a connection per run). ``open_transport`` takes a source's validated settings
(``daqbroker_agent.config``): ``url``, ``baudrate``, ``bytesize``, ``parity``, ``stopbits`` for serial;
``host``, ``port``, ``timeout`` for TCP. pyserial is imported only when a serial port is opened.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Protocol

SERIAL_POLL_SECONDS = 0.05


class Transport(Protocol):
    def write(self, data: bytes) -> None: ...

    def read_some(self, timeout: float) -> bytes | None:
        """Bytes that arrived within ``timeout`` seconds: b"" if none did, None when the other end closed."""

    def close(self) -> None: ...


class SerialTransport:
    """A serial device (``/dev/ttyUSB0``) or a pyserial URL (``loop://``, ``socket://``, ``rfc2217://``)."""

    def __init__(self, config: dict):
        import serial  # pyserial: only needed for serial sources

        self._serial = serial
        self.port = serial.serial_for_url(
            # connect_url: the same URL with the address the server's target check approved (no DNS again)
            config.get("connect_url") or config["url"],
            baudrate=config["baudrate"],
            bytesize=config["bytesize"],
            parity=config["parity"],
            stopbits=_stopbits(serial, config["stopbits"]),
            timeout=SERIAL_POLL_SECONDS,  # set once: changing it reconfigures the port, which some drivers refuse
        )
        if config.get("request"):
            self.port.reset_input_buffer()  # an answer must not be mistaken for what was waiting before

    def write(self, data: bytes) -> None:
        self.port.write(data)
        self.port.flush()

    def read_some(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        try:
            while True:
                data = self.port.read(max(1, self.port.in_waiting))  # waits at most SERIAL_POLL_SECONDS
                if data or time.monotonic() >= deadline:
                    return data
        except self._serial.SerialException as exc:
            if "disconnected" in str(exc) or "closed" in str(exc):
                return None  # socket:// and rfc2217:// peers that hang up, a USB adapter pulled out
            raise

    def close(self) -> None:
        self.port.close()


def _stopbits(serial, value: float):
    return {1.0: serial.STOPBITS_ONE, 1.5: serial.STOPBITS_ONE_POINT_FIVE, 2.0: serial.STOPBITS_TWO}[float(value)]


class TcpTransport:
    """A TCP connection to ``host:port``."""

    def __init__(self, config: dict):
        # connect_address: the address the server's target check approved (so DNS is not asked again)
        host = config.get("connect_address") or config["host"]
        self.sock = socket.create_connection((host, config["port"]), timeout=config["timeout"])

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_some(self, timeout: float) -> bytes | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return b""
        return data or None  # b"" from recv: the instrument closed the connection

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


MAX_LISTED_PORTS = 64


def list_serial_ports() -> list[dict[str, str]]:
    """This machine's serial ports (pyserial's ``list_ports``): sent in the heartbeat, so the server's
    "New data source" page can offer them. At most MAX_LISTED_PORTS; [] where pyserial cannot look."""
    try:
        from serial.tools import list_ports  # pyserial: only needed where serial ports are read or listed

        found = sorted(list_ports.comports(), key=lambda port: port.device)
    except (ImportError, OSError):
        return []
    return [
        {"device": str(port.device)[:255], "description": str(port.description or "")[:255]}
        for port in found[:MAX_LISTED_PORTS]
    ]


def open_transport(config: dict) -> Transport:
    """The connection a serial or TCP source's settings describe."""
    kind = config["kind"]
    if kind == "serial":
        return SerialTransport(config)
    if kind == "tcp":
        return TcpTransport(config)
    raise ValueError(f"{kind!r} sources are not read over a connection")


class LineSplitter:
    """Bytes in, complete lines out: cut at ``terminator``, decoded (bad bytes replaced), blank ones skipped.

    A line still incomplete waits in the buffer for the next ``feed``.
    """

    def __init__(self, terminator: str, encoding: str):
        self.terminator = terminator.encode()
        self.encoding = encoding
        self.buffer = bytearray()

    def feed(self, chunk: bytes) -> list[str]:
        self.buffer += chunk
        lines: list[str] = []
        while True:
            end = self.buffer.find(self.terminator)
            if end < 0:
                return lines
            raw = bytes(self.buffer[:end])
            del self.buffer[: end + len(self.terminator)]
            text = raw.decode(self.encoding, errors="replace").strip("\r\n")
            if text.strip():
                lines.append(text)
