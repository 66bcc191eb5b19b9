"""Fixtures for the collection, validation and alarm tests: real files, a real HTTP receiver, simulated
instruments on real TCP sockets and pseudo-terminals, and Celery workers in their own process group (so a
test can SIGKILL a worker with all its children, as a crash or an OOM kill would)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

# --- a webhook receiver -------------------------------------------------------------------------------


class Recorder:
    """A local HTTP server that records every request and answers from a script of status codes."""

    def __init__(self, statuses: list[int] | None = None):
        self.requests: list[dict] = []
        self.statuses = list(statuses or [])
        self.lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with recorder.lock:
                    status = recorder.statuses.pop(0) if recorder.statuses else 200
                    recorder.requests.append(
                        {
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                            "status": status,
                        }
                    )
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def payloads(self) -> list[dict]:
        with self.lock:
            return [json.loads(r["body"]) for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_recorder():
    recorders: list[Recorder] = []

    def make(statuses: list[int] | None = None) -> Recorder:
        recorder = Recorder(statuses)
        recorders.append(recorder)
        return recorder

    yield make
    for recorder in recorders:
        recorder.close()


# --- simulated instruments -----------------------------------------------------------------------------


class TcpInstrument:
    """A TCP instrument: ``reply(request_line) -> lines`` answers requests; with ``stream`` it writes those
    lines to every client as soon as it connects, then closes (or keeps quiet, with ``linger``)."""

    def __init__(self, reply: Callable[[bytes], list[str]], *, stream: bool = False, terminator: bytes = b"\n"):
        self.reply, self.stream, self.terminator = reply, stream, terminator
        self.requests: list[bytes] = []
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            if self.stream:
                try:
                    for line in self.reply(b""):
                        conn.sendall(line.encode() + self.terminator)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the reader took what it wanted and hung up, as a bounded reader does
                return
            buffer = b""
            try:
                while True:
                    data = conn.recv(1024)
                    if not data:
                        return
                    buffer += data
                    while self.terminator in buffer:
                        request, buffer = buffer.split(self.terminator, 1)
                        self.requests.append(request)
                        for line in self.reply(request):
                            conn.sendall(line.encode() + self.terminator)
            except OSError:
                return

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()


@pytest.fixture
def tcp_instrument():
    made: list[TcpInstrument] = []

    def make(reply, **kwargs) -> TcpInstrument:
        instrument = TcpInstrument(reply, **kwargs)
        made.append(instrument)
        return instrument

    yield make
    for instrument in made:
        instrument.close()


class PtyInstrument:
    """A serial instrument on a pseudo-terminal pair: collectors open ``path`` like /dev/ttyUSB0; this side
    answers each request line with ``reply(request)``."""

    def __init__(self, reply: Callable[[bytes], list[str]]):
        import tty

        self.reply = reply
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo, no line editing: bytes pass as on a serial line
        self.path = os.ttyname(self.slave)
        self.requests: list[bytes] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import select

        buffer = b""
        while not self.stopped.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if not ready:
                continue
            try:
                buffer += os.read(self.master, 1024)
            except OSError:
                return
            while b"\n" in buffer:
                request, buffer = buffer.split(b"\n", 1)
                request = request.rstrip(b"\r")
                self.requests.append(request)
                for line in self.reply(request):
                    os.write(self.master, line.encode() + b"\r\n")

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=2)
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture
def pty_instrument():
    made: list[PtyInstrument] = []

    def make(reply) -> PtyInstrument:
        instrument = PtyInstrument(reply)
        made.append(instrument)
        return instrument

    yield make
    for instrument in made:
        instrument.close()


# --- workers that can be killed --------------------------------------------------------------------------
