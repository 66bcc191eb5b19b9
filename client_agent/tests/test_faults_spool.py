"""Faults of the agent's spool: its disk fills (a real tmpfs), its database breaks. The agent keeps running,
says why in ``status`` and its heartbeat, and delivers every reading exactly once when space comes back;
threads that die are started again, and an agent that cannot recover exits non-zero for systemd.

Small disks need root (``mount -t tmpfs``): skipped with the reason otherwise; under CI=true as root they run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from agent_fakes import FakeServer

from daqbroker_agent.client import ApiClient
from daqbroker_agent.config import validate_source_config
from daqbroker_agent.runtime import CannotRecover, Supervisor
from daqbroker_agent.sources import ChannelSpec, SourceSpec, start_source
from daqbroker_agent.spool import Spool, SpoolUnavailable
from daqbroker_agent.state import AgentState
from daqbroker_agent.uploader import INGEST_PATH, SPOOL_AREA, Backoff, Uploader

T0 = 1_764_237_600_000_000
CHUNK = 1000


def until(condition, timeout: float = 30.0, proc: subprocess.Popen | None = None, what: str = ""):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the agent exited with {proc.returncode} while waiting for {what}")
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.05)


def fill_until_full(spool: Spool, start: int = 0) -> int:
    """Add readings (value i at T0 + i s) CHUNK at a time until the disk refuses; how many were stored."""
    n = start
    while True:
        try:
            spool.add(
                [("7", T0 + i * 1_000_000, float(i)) for i in range(n, n + CHUNK)], cursor=("cursor:x", n + CHUNK)
            )
        except SpoolUnavailable as exc:
            assert exc.kind == "disk full"
            return n
        n += CHUNK


def test_a_full_disk_refuses_whole_transactions_says_how_full_and_resumes_when_freed(small_disk):
    disk = small_disk("spooldisk", 8 << 20)
    spool = Spool(disk.path / "spool")
    disk.fill(leave=1 << 20)
    stored = fill_until_full(spool)
    assert stored > 0
    with pytest.raises(SpoolUnavailable) as refused:
        spool.add([("7", T0, 1.0)], cursor=("cursor:x", -1))
    message = str(refused.value)
    assert message.startswith("spool disk full: ") and f"bytes free on {disk.path / 'spool'}" in message
    # Nothing half-stored, no cursor moved past what was refused; reading still works.
    assert spool.depth() == stored == spool.counters()["spooled"]
    assert spool.get("cursor:x") == stored

    disk.release()
    spool.add([("7", T0 + i * 1_000_000, float(i)) for i in range(stored, stored + CHUNK)], cursor=("cursor:x", -2))
    assert spool.get("cursor:x") == -2
    values = [row[0] for row in spool.connection().execute("SELECT value FROM readings ORDER BY id")]
    assert values == [float(i) for i in range(stored + CHUNK)]


def test_the_uploader_waits_out_a_full_disk_then_delivers_every_reading_once(small_disk):
    disk = small_disk("spooldisk", 8 << 20)
    spool = Spool(disk.path / "spool")
    disk.fill(leave=1 << 20)
    n = fill_until_full(spool)
    with FakeServer() as server:
        client = ApiClient(server.url, lambda: "dbk_good", timeout=5)
        state = AgentState(spool)
        uploader = Uploader(spool, client, state, batch_size=2000, backoff=lambda: Backoff(0.01, 0.05))
        stop = threading.Event()
        threads = uploader.start(stop, senders=2, idle_wait=0.01)
        try:
            until(lambda: SPOOL_AREA in state.current_problems(), what="the spool's problem reported")
            assert state.current_problems()[SPOOL_AREA].startswith("spool disk full: ")
            assert all(thread.is_alive() for thread in threads)
            disk.release()
            until(lambda: spool.depth() == 0, timeout=60, what="the spool emptied")
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=10)
        accepted = sum(result["accepted"] for result in server.batches.values())
    assert sorted(server.stored) == [("7", T0 + i * 1_000_000) for i in range(n)]
    assert all(server.stored[("7", T0 + i * 1_000_000)] == float(i) for i in range(n))
    assert accepted == n  # each reading stored by exactly one batch
    assert SPOOL_AREA not in state.current_problems()


def test_a_dead_thread_is_started_again_and_too_many_deaths_give_up():
    stop = threading.Event()
    runs: list[int] = []

    def flaky() -> None:
        runs.append(1)
        if len(runs) <= 2:
            raise sqlite_like_error()
        stop.wait()

    supervisor = Supervisor(stop, max_restarts=3, window=60)
    supervisor.start("flaky", flaky)
    try:
        until(lambda: (supervisor.check(), len(runs) >= 3)[1], what="two restarts")
        assert supervisor.restarts == 2
        supervisor.check()
        assert supervisor.restarts == 2  # alive now: left alone
    finally:
        stop.set()
        supervisor.join(timeout=5)

    stop = threading.Event()
    always = Supervisor(stop, max_restarts=3, window=60)
    always.start("broken", lambda: (_ for _ in ()).throw(sqlite_like_error()))
    with pytest.raises(CannotRecover, match="4 threads died within 60 s, the last thread broken"):
        until(lambda: always.check() and False, what="giving up")
    stop.set()


def sqlite_like_error() -> Exception:
    return sqlite3.DatabaseError("database disk image is malformed")


# --- the agent as systemd runs it -----------------------------------------------------------------------


def agent_env(server: FakeServer, spool, allowed_paths=(), **extra: str) -> dict:
    """The agent's environment; ``allowed_paths`` go in its local file (the only place they may be set)."""
    local = Path(spool).parent / "agent-local.toml"
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_text("allowed_paths = [" + ", ".join(f'"{path}"' for path in allowed_paths) + "]\n")
    return {
        **os.environ,
        "DAQBROKER_AGENT_CONFIG": str(local),
        "PYTHONPATH": os.pathsep.join(sys.path),
        "DAQBROKER_AGENT_URL": server.url,
        "DAQBROKER_AGENT_TOKEN": "dbk_good",
        "DAQBROKER_AGENT_SPOOL": str(spool),
        "DAQBROKER_AGENT_RETRY_INITIAL_SECONDS": "0.05",
        "DAQBROKER_AGENT_RETRY_MAX_SECONDS": "0.5",
        "DAQBROKER_AGENT_HEARTBEAT_SECONDS": "1",
        "DAQBROKER_AGENT_CONFIG_POLL_SECONDS": "1",
        **extra,
    }


def file_source(folder) -> dict:
    options = {"path": str(folder), "pattern": "*.csv", "columns": ["time", "temp"],
               "timestamp": {"columns": ["time"], "format": "epoch"}}  # fmt: skip
    collect = {"kind": "file", **validate_source_config("file", options)}
    return {"id": 1, "name": "logger", "instrument": "station", "interval_seconds": 0.2, "collect": collect,
            "channels": [{"id": 7, "slug": "temp", "source_field": "temp", "kind": "numeric"}]}  # fmt: skip


def status(env: dict) -> dict:
    done = subprocess.run([sys.executable, "-m", "daqbroker_agent", "status", "--json"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_running_agent_on_a_full_disk_tells_the_truth_and_delivers_everything_once(small_disk, tmp_path):
    disk = small_disk("spooldisk", 6 << 20)
    folder = tmp_path / "logger"
    folder.mkdir()
    lines = 0

    def write(n: int) -> None:
        nonlocal lines
        with (folder / "data.csv").open("a") as handle:
            handle.write("".join(f"{T0 // 1_000_000 + i},{i}\n" for i in range(lines, lines + n)))
        lines += n

    with FakeServer() as server:
        server.config["sources"] = [file_source(folder)]
        server.answer(INGEST_PATH, 503, {"detail": "maintenance"}, times=100_000)  # "down" for uploads
        env = agent_env(server, disk.path / "spool", allowed_paths=[folder])
        proc = subprocess.Popen([sys.executable, "-m", "daqbroker_agent", "run"], env=env,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            until(lambda: server.heartbeats, proc=proc, what="a first heartbeat")
            disk.fill(leave=512 << 10)
            while SPOOL_AREA not in (status(env).get("problems") or {}):
                write(5000)
                until(
                    lambda: status(env)["spooled_total"] == lines or SPOOL_AREA in status(env)["problems"],
                    proc=proc, what="lines spooled or the disk full",
                )  # fmt: skip
            info = status(env)
            assert info["running"]
            assert info["problems"][SPOOL_AREA].startswith("spool disk full: ")
            assert f"bytes free on {disk.path / 'spool'}" in info["problems"][SPOOL_AREA]
            write(3000)  # more while full: it waits in the file
            until(lambda: "spool disk full" in server.heartbeats[-1]["last_error"], proc=proc, what="the heartbeat")

            with server.lock:
                server.script[INGEST_PATH].clear()  # the server is back
            disk.release()  # and space comes back
            until(lambda: len(server.stored) == lines, timeout=120, proc=proc, what="every reading delivered")
            until(lambda: SPOOL_AREA not in status(env)["problems"], proc=proc, what="the problem cleared")
        finally:
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-3000:]
    assert sorted(server.stored) == [("7", T0 + i * 1_000_000) for i in range(lines)]
    assert all(server.stored[("7", T0 + i * 1_000_000)] == float(i) for i in range(lines))
    assert sum(r["accepted"] for r in server.batches.values()) == lines
    assert "spool disk full: " in stderr and "Traceback" not in stderr
    assert "cannot rollback" not in stderr


def test_an_agent_whose_spool_is_broken_beyond_repair_exits_non_zero(tmp_path):
    with FakeServer() as server:
        env = agent_env(server, tmp_path / "spool")
        proc = subprocess.Popen([sys.executable, "-m", "daqbroker_agent", "run"], env=env,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            until(lambda: server.heartbeats, proc=proc, what="a first heartbeat")
            Spool(tmp_path / "spool").add([("7", T0, 1.0)])
            until(lambda: server.stored, proc=proc, what="a first upload")
            # The database's pages overwritten (a failing disk, a stray dd): every thread reading it dies.
            with (tmp_path / "spool" / "spool.sqlite3").open("r+b") as handle:
                handle.write(b"\xff" * 65536)
            with (tmp_path / "spool" / "spool.sqlite3-wal").open("r+b") as handle:
                handle.write(b"\xff" * 65536)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
            _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1, stderr[-3000:]
    assert "the agent cannot recover by itself and exits for its service manager to restart it" in stderr
    assert "started again" in stderr


def test_a_streaming_instrument_read_while_the_disk_is_full_is_held_and_spooled_once_space_returns(small_disk):
    """A TCP instrument streaming one line per request of the test: lines read while the spool cannot be
    written are held in memory and spooled, each once, when space comes back."""
    disk = small_disk("spooldisk", 8 << 20)
    spool = Spool(disk.path / "spool")
    state = AgentState(spool)
    listener = socket.create_server(("127.0.0.1", 0))
    collect = {"kind": "tcp", **validate_source_config("tcp", {"host": "127.0.0.1", "port": listener.getsockname()[1],
               "columns": ["time", "temp"], "timestamp": {"columns": ["time"], "format": "epoch"}})}  # fmt: skip
    runner = start_source(SourceSpec("local:tcp", "tcp", 0.1, collect, (ChannelSpec("7", "temp"),)), spool, state)
    conn, _ = listener.accept()
    sent = 0

    def send(n: int) -> None:
        nonlocal sent
        conn.sendall("".join(f"{T0 // 1_000_000 + i},{i}\n" for i in range(sent, sent + n)).encode())
        sent += n

    try:
        send(100)
        until(lambda: spool.depth() == 100, what="the first lines spooled")
        disk.fill(leave=0)
        fill_until_full(spool, start=1_000_000)  # what space was left: taken by other readings
        stored_before = spool.depth()
        send(500)
        until(lambda: SPOOL_AREA in state.current_problems(), what="the spool's problem reported")
        assert state.current_problems()[SPOOL_AREA].startswith("spool disk full: ")
        send(500)  # more while full
        until(lambda: len(runner.held) == 1000, what="the lines held in memory")
        disk.release()
        until(lambda: spool.depth() == stored_before + 1000, what="the held lines spooled")
        until(lambda: SPOOL_AREA not in state.current_problems(), what="the problem cleared")
    finally:
        runner.stop()
        runner.join(timeout=10)
        conn.close()
        listener.close()
    rows = spool.connection().execute("SELECT ts, value FROM readings WHERE channel = '7' ORDER BY id").fetchall()
    from_stream = [(ts, value) for ts, value in rows if ts < T0 + 1_000_000 * 1_000_000 and value < 1_000_000]
    assert from_stream == [(T0 + i * 1_000_000, float(i)) for i in range(1100)]
    assert spool.counters()["dropped"] == 0
