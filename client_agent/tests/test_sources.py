"""The agent's sources, each reading a real thing (files, a TCP server, a pseudo-terminal through pyserial,
a command) into a real spool."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

import pytest

from daqbroker_agent.config import validate_source_config
from daqbroker_agent.sources import ChannelSpec, LineMapper, SourceSpec, spec_from_server, start_source
from daqbroker_agent.spool import Spool
from daqbroker_agent.state import AgentState

T = "2026-11-27T10:00:00Z"
T_US = 1_795_773_600_000_000  # T in µs since 1970
CHANNELS = (ChannelSpec("11", "temp"), ChannelSpec("12", "state", text=True))


def spec(collect: dict, channels=CHANNELS, interval=0.1):
    kind = collect.pop("kind")
    validated = validate_source_config(kind, collect)
    return SourceSpec("local:test", "test", interval, {"kind": kind, **validated}, tuple(channels))


def spooled(spool: Spool) -> list[tuple[str, int, object]]:
    rows = spool.connection().execute("SELECT channel, ts, value FROM readings ORDER BY id").fetchall()
    return [tuple(row) for row in rows]


def wait_until(condition, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def spool(tmp_path):
    return Spool(tmp_path / "spool")


def test_lines_become_readings_with_the_shared_parser():
    mapper = LineMapper(spec({"kind": "command", "command": ["x"], "columns": ["time", "temp", "state"]}))
    readings = mapper.readings([(f"{T},21.5,OK", 0), (f"{T},n/a,OK", 0), (f"{T},1e400,", 0), ("garbage", 0)])
    assert readings == [
        ("11", T_US, 21.5),
        ("12", T_US, "OK"),
        ("11", T_US, "n/a"),  # sent as found: the server refuses it with its reason and keeps it
        ("12", T_US, "OK"),
        ("11", T_US, "1e400"),
        ("12", T_US, ""),
    ]


def test_a_channel_is_found_by_its_source_field_or_else_its_slug():
    server_source = {
        "id": 4,
        "name": "logger",
        "instrument": "roof",
        "interval_seconds": 5,
        "collect": {"kind": "tcp", **validate_source_config("tcp", {"host": "h", "port": 1})},
        "channels": [
            {"id": 1, "slug": "temp", "source_field": "2", "kind": "numeric"},
            {"id": 2, "slug": "state", "source_field": "", "kind": "text"},
        ],
    }
    made = spec_from_server(server_source)
    assert made.key == "server:4" and made.name == "roof/logger" and made.interval == 5.0
    assert made.channels == (ChannelSpec("1", "2"), ChannelSpec("2", "state", text=True))


def test_file_source_reads_new_lines_once_even_across_restarts(tmp_path, spool):
    folder = tmp_path / "logger"
    folder.mkdir()
    data = folder / "a.csv"
    data.write_text(f"time,temp,state\n{T},1.0,OK\n")
    source = spec({"kind": "file", "path": str(folder), "header_lines": 1, "columns": ["time", "temp", "state"]})
    state = AgentState(spool)
    runner = start_source(source, spool, state)
    wait_until(lambda: spool.depth() == 2)
    with data.open("a") as handle:
        handle.write("2026-11-27T10:00:01Z,2.0,OK\n2026-11-27T10:00:02Z,3.")  # the last line is still being written
    wait_until(lambda: spool.depth() == 4)
    runner.stop()
    runner.join(timeout=5)
    with data.open("a") as handle:
        handle.write("5,BUSY\n")
    again = start_source(source, spool, state)  # a restarted agent resumes from the committed offset
    wait_until(lambda: spool.depth() == 6)
    again.stop()
    again.join(timeout=5)
    assert [r[2] for r in spooled(spool)] == [1.0, "OK", 2.0, "OK", 3.5, "BUSY"]


def test_file_source_takes_each_files_year_from_its_header(tmp_path, spool):
    """Daily files of day-of-year and unpadded hhmm: the year is only in the header (issue 15)."""
    folder = tmp_path / "daily"
    folder.mkdir()
    (folder / "d2023.txt").write_text("STATION 7 DAILY  YEAR 2023\ndoy hhmm temp state\n365 2400 1.5 OK\n")
    (folder / "d2024.txt").write_text("STATION 7 DAILY  YEAR 2024\ndoy hhmm temp state\n60 10 2.5 OK\n")
    (folder / "nohdr.txt").write_text("STATION 7 DAILY\ndoy hhmm temp state\n60 100 3.5 OK\n")
    os.utime(folder / "d2024.txt", (time.time() + 1, time.time() + 1))  # read after d2023.txt
    os.utime(folder / "nohdr.txt", (time.time() + 2, time.time() + 2))
    source = spec(
        {
            "kind": "file",
            "path": str(folder),
            "header_lines": 2,
            "delimiter": " ",
            "columns": ["doy", "hhmm", "temp", "state"],
            "timestamp": {"format": "doy_hhmm", "columns": ["doy", "hhmm"], "year_pattern": r"YEAR\s+(\d{4})"},
        }
    )
    runner = start_source(source, spool, AgentState(spool))
    wait_until(lambda: spool.depth() == 4)
    runner.stop()
    runner.join(timeout=5)
    jan1_2024, feb29_2024_0010 = 1_704_067_200_000_000, 1_709_165_400_000_000
    assert [r[1:] for r in spooled(spool)] == [
        (jan1_2024, 1.5),
        (jan1_2024, "OK"),
        (feb29_2024_0010, 2.5),
        (feb29_2024_0010, "OK"),
    ]
    # The file whose header has no year: its line is kept for the server's quarantine, with the reason.
    kept = spool.connection().execute("SELECT text, reason FROM unparsed").fetchall()
    assert kept == [
        (
            "60 100 3.5 OK",
            "line not parsed: the time has no year and none is known: no header line of the file matches "
            "timestamp.year_pattern",
        )
    ]


def test_a_full_spool_makes_a_file_source_wait_without_losing_lines(tmp_path):
    spool = Spool(tmp_path / "spool", max_readings=1000)
    spool.add([("x", i, 0.0) for i in range(995)])
    folder = tmp_path / "logger"
    folder.mkdir()
    (folder / "a.csv").write_text("".join(f"2026-11-27T10:00:{i:02d}Z,{i},OK\n" for i in range(10)))
    source = spec({"kind": "file", "path": str(folder), "columns": ["time", "temp", "state"]})
    state = AgentState(spool)
    runner = start_source(source, spool, state)
    wait_until(lambda: "spool" in state.current_problems())
    assert "the spool is full (1,000 readings" in state.current_problems()["spool"]
    assert "waits (nothing is lost)" in state.current_problems()["spool"]
    batch = spool.claim(995)
    spool.ack(batch)  # uploads caught up
    wait_until(lambda: spool.depth() == 20)
    runner.stop()
    runner.join(timeout=5)
    assert spool.counters()["dropped"] == 0
    assert [r[2] for r in spooled(spool)][::2] == [float(i) for i in range(10)]


class LineServer:
    """An instrument on TCP: sends ``lines`` to whoever connects (and answers "R" with a reading)."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.sendall("".join(line + "\r\n" for line in self.lines).encode())
                time.sleep(0.3)  # then the instrument hangs up: the agent reconnects


def test_tcp_stream_lines_are_spooled_and_the_connection_reopened(spool):
    server = LineServer([f"{T},7.5,OK", "2026-11-27T10:00:01Z,8.5,OK"])
    source = spec({"kind": "tcp", "host": "127.0.0.1", "port": server.port, "line_terminator": "\r\n",
                   "columns": ["time", "temp", "state"]}, interval=0.1)  # fmt: skip
    runner = start_source(source, spool, AgentState(spool))
    wait_until(lambda: server.connections >= 2)
    runner.stop()
    runner.join(timeout=5)
    readings = spooled(spool)
    assert readings[:4] == [
        ("11", T_US, 7.5),
        ("12", T_US, "OK"),
        ("11", T_US + 1_000_000, 8.5),
        ("12", T_US + 1_000_000, "OK"),
    ]


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a POSIX pseudo-terminal")
def test_serial_instrument_through_pyserial(spool):
    """The instrument is the controller side of a pseudo-terminal; the agent opens the other side as a
    serial port with pyserial, sends the request and reads the answer."""
    import tty

    controller, device = os.openpty()
    tty.setraw(controller)
    path = os.ttyname(device)
    answered = threading.Event()

    def instrument() -> None:
        buffer = b""
        while not answered.is_set():
            buffer += os.read(controller, 100)
            if b"R\r\n" in buffer:
                os.write(controller, f"{T} 19.25 OK\r\n".encode())
                answered.set()

    threading.Thread(target=instrument, daemon=True).start()
    source = spec({"kind": "serial", "url": path, "baudrate": 19200, "request": "R\r\n", "line_terminator": "\r\n",
                   "delimiter": " ", "columns": ["time", "temp", "state"], "timeout": 1}, interval=0.2)  # fmt: skip
    runner = start_source(source, spool, AgentState(spool))
    wait_until(lambda: spool.depth() >= 2)
    runner.stop()
    runner.join(timeout=5)
    os.close(controller)
    os.close(device)
    assert spooled(spool)[:2] == [("11", T_US, 19.25), ("12", T_US, "OK")]


def test_command_output_is_parsed_every_interval(spool):
    code = f"print('{T},3.25,OK'); print('not a line')"
    source = spec({"kind": "command", "command": [sys.executable, "-c", code], "columns": ["time", "temp", "state"]})
    state = AgentState(spool)
    runner = start_source(source, spool, state)
    wait_until(lambda: spool.depth() >= 4)  # two runs
    runner.stop()
    runner.join(timeout=5)
    assert spooled(spool)[:2] == [("11", T_US, 3.25), ("12", T_US, "OK")]
    assert "line not parsed" in state.current_problems()["lines test"]


def test_a_failing_source_is_retried_and_reported(tmp_path, spool):
    source = spec({"kind": "file", "path": str(tmp_path / "not-yet"), "columns": ["time", "temp", "state"]})
    state = AgentState(spool)
    runner = start_source(source, spool, state)
    wait_until(lambda: "source test" in state.current_problems())
    assert "does not exist" in state.current_problems()["source test"]
    (tmp_path / "not-yet").mkdir()
    (tmp_path / "not-yet" / "a.csv").write_text(f"{T},1,OK\n")
    wait_until(lambda: spool.depth() == 2, timeout=15)
    runner.stop()
    runner.join(timeout=5)
