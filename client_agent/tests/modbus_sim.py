"""Modbus devices for tests: pymodbus's own server, in a thread on a free loopback port, and a device that
never answers. The server's register contents are given as plain 16-bit words and bits, so that a test
writes its values independently of the decoding under test (with ``struct``).

``ModbusDevice(framer="rtu")`` speaks Modbus RTU framing over TCP: a client reaches it through pyserial's
``socket://`` URL, as it would reach an RTU device behind a serial-to-Ethernet converter.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Sequence

FUNCTION_CODES = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ModbusDevice:
    """Unit ``unit`` with holding and input registers, coils and discrete inputs from address 0 (reads
    past the given values are answered with "illegal data address"). ``requests`` lists every read the
    server received, as (function, address, count)."""

    def __init__(
        self,
        *,
        holding: Sequence[int] = (),
        input: Sequence[int] = (),
        coils: Sequence[bool] = (),
        discrete: Sequence[bool] = (),
        framer: str = "socket",
        unit: int = 1,
    ):
        from pymodbus import FramerType
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        def block(values, datatype) -> list:
            if not len(values):  # pymodbus wants every table to hold something: one register far away
                return [SimData(65000, values=[0], datatype=datatype)]
            return [SimData(0, values=list(values), datatype=datatype)]

        self.requests: list[tuple[str, int, int]] = []
        self.port = free_port()
        device = SimDevice(
            id=unit,
            simdata=(
                block(coils, DataType.BITS),
                block(discrete, DataType.BITS),
                block(holding, DataType.REGISTERS),
                block(input, DataType.REGISTERS),
            ),
        )
        self.loop: asyncio.AbstractEventLoop | None = None
        started = threading.Event()
        self.failed: BaseException | None = None

        def serve() -> None:
            async def main() -> None:
                self.loop = asyncio.get_running_loop()
                self.server = ModbusTcpServer(  # made in its loop: pymodbus takes the running one
                    [device],
                    framer=FramerType.RTU if framer == "rtu" else FramerType.SOCKET,
                    address=("127.0.0.1", self.port),
                    trace_pdu=self._trace,
                )
                await self.server.serve_forever(background=True)
                started.set()
                await self.server.serving

            try:
                asyncio.run(main())
            except BaseException as exc:
                self.failed = exc
                started.set()

        self.thread = threading.Thread(target=serve, name="modbus device", daemon=True)
        self.thread.start()
        if not started.wait(10) or self.failed:
            raise RuntimeError(f"the Modbus test server did not start: {self.failed}")

    def _trace(self, sending: bool, pdu):
        if not sending and pdu.function_code in FUNCTION_CODES:
            self.requests.append((FUNCTION_CODES[pdu.function_code], pdu.address, pdu.count))
        return pdu

    def close(self) -> None:
        if self.loop is not None and self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(10)
        self.thread.join(10)


class SilentDevice:
    """A device that takes connections and requests and never answers (a dead unit behind a gateway)."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="silent modbus device", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        connections: list[socket.socket] = []
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
                conn.settimeout(0.05)
                connections.append(conn)
            except (TimeoutError, OSError):
                pass
            for conn in connections:
                with contextlib.suppress(TimeoutError, OSError):
                    self.received += len(conn.recv(4096))
        for conn in connections:
            conn.close()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.sock.close()
