"""TCP instruments: a connection to ``host:port`` that streams lines, or answers a request with them."""

from __future__ import annotations

import contextlib
import socket

from collection.collectors.lines import LineCollector, Transport


class TcpTransport(Transport):
    def __init__(self, config: dict):
        self.sock = socket.create_connection((config["host"], config["port"]), timeout=config["timeout"])

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


class TcpCollector(LineCollector):
    def open(self, config: dict) -> Transport:
        return TcpTransport(config)

    def describe(self, config: dict) -> str:
        return f"{config['host']}:{config['port']}"
