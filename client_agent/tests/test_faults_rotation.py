"""Fault: files rotated while the agent was stopped (a real ``daqbroker-agent run`` process, real files,
the stand-in server). ``rot.csv`` -> ``rot.csv.1`` with an unread tail, a new ``rot.csv`` of 10,000 lines
-> ``rot.csv.2``, a new ``rot.csv``: after the restart every line is delivered exactly once. A file that
vanished with bytes never read is reported in ``status`` with the byte range.
"""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import sys

from agent_fakes import FakeServer
from test_faults_spool import agent_env, status, until

from daqbroker_agent.config import validate_source_config
from daqbroker_agent.tail import read_new_lines

T0 = 1_700_000_000


class Logger:
    def __init__(self, folder):
        self.folder = folder
        self.written = 0

    def write(self, n: int) -> None:
        with (self.folder / "rot.csv").open("a") as handle:
            handle.write("".join(f"{T0 + i},{i / 10}\n" for i in range(self.written, self.written + n)))
        self.written += n

    def rotate(self, to: str) -> None:
        os.rename(self.folder / "rot.csv", self.folder / to)


def rotating_source(folder) -> dict:
    options = {"path": str(folder), "pattern": "rot.csv", "columns": ["time", "temp"], "max_lines": 3000,
               "timestamp": {"columns": ["time"], "format": "epoch"}}  # fmt: skip
    collect = {"kind": "file", **validate_source_config("file", options)}
    return {"id": 1, "name": "logger", "instrument": "station", "interval_seconds": 0.2, "collect": collect,
            "channels": [{"id": 7, "slug": "temp", "source_field": "temp", "kind": "numeric"}]}  # fmt: skip


def start(env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "daqbroker_agent", "run"], env=env,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-3000:]
    return stderr


def delivered(server: FakeServer, lines) -> bool:
    with server.lock:
        return len(server.stored) == len(lines)


def assert_exactly_once(server: FakeServer, lines) -> None:
    assert sorted(server.stored) == [("7", (T0 + i) * 1_000_000) for i in lines]
    assert all(server.stored[("7", (T0 + i) * 1_000_000)] == i / 10 for i in lines)
    assert sum(result["accepted"] for result in server.batches.values()) == len(lines)


def test_files_rotated_twice_while_the_agent_was_stopped_are_all_delivered_once(tmp_path):
    folder = tmp_path / "logger"
    folder.mkdir()
    logger = Logger(folder)
    logger.write(500)
    with FakeServer() as server:
        server.config["sources"] = [rotating_source(folder)]
        env = agent_env(server, tmp_path / "spool", allowed_paths=[folder])
        proc = start(env)
        try:
            until(lambda: delivered(server, range(500)), proc=proc, what="the first 500 lines")
        finally:
            stop(proc)
        logger.write(700)  # the unread tail of rot.csv
        logger.rotate("rot.csv.1")
        logger.write(10_000)
        logger.rotate("rot.csv.2")
        logger.write(300)
        proc = start(env)
        try:
            until(lambda: delivered(server, range(11_500)), timeout=120, proc=proc, what="every line")
            until(lambda: status(env)["depth"] == 0, proc=proc, what="the spool emptied")
        finally:
            stop(proc)
    assert_exactly_once(server, range(11_500))


def test_a_file_compressed_away_with_unread_bytes_is_reported_in_status(tmp_path):
    folder = tmp_path / "logger"
    folder.mkdir()
    logger = Logger(folder)
    logger.write(50)
    with FakeServer() as server:
        server.config["sources"] = [rotating_source(folder)]
        env = agent_env(server, tmp_path / "spool", allowed_paths=[folder])
        proc = start(env)
        try:
            until(lambda: delivered(server, range(50)), proc=proc, what="the first lines")
        finally:
            stop(proc)
        offset = (folder / "rot.csv").stat().st_size
        logger.write(20)
        logger.rotate("rot.csv.1")
        with (folder / "rot.csv.1").open("rb") as plain, gzip.open(folder / "rot.csv.1.gz", "wb") as packed:
            packed.write(plain.read())
        (folder / "rot.csv.1").unlink()
        logger.written = 1000
        logger.write(5)
        proc = start(env)
        try:
            until(lambda: delivered(server, [*range(50), *range(1000, 1005)]), proc=proc, what="the new lines")
            problems = until(lambda: status(env)["problems"].get("lost station/logger"), proc=proc, what="the loss")
        finally:
            stderr = stop(proc)
    assert problems.startswith(
        f"rot.csv vanished before it was read to its end: anything written after byte {offset:,}"
    )
    assert "compressed into rot.csv.1.gz, which cannot be followed byte by byte" in problems
    assert "rot.csv vanished before it was read to its end" in stderr
    assert_exactly_once(server, [*range(50), *range(1000, 1005)])


# --- the shared plan, file by file (no process) ---------------------------------------------------------


def lines_read(read) -> list[str]:
    return [line.decode() for chunk in read.chunks for line in chunk.lines()]


def test_copytruncate_reads_the_copy_from_its_start_and_warns_of_nothing(tmp_path):
    logger = Logger(tmp_path)
    logger.write(100)
    first = read_new_lines(tmp_path, "rot.csv", None, max_lines=10_000)
    logger.write(50)  # not read before the rotation
    shutil.copyfile(tmp_path / "rot.csv", tmp_path / "rot.csv.1")
    with (tmp_path / "rot.csv").open("r+") as handle:
        handle.truncate(0)
    logger.write(10)
    read = read_new_lines(tmp_path, "rot.csv", first.cursor, max_lines=10_000)
    assert read.warnings == []
    # The copy whole (its first 100 lines again: the server skips readings it already stored), then the rest.
    assert sorted(set(lines_read(read))) == sorted(f"{T0 + i},{i / 10}" for i in range(160))
    again = read_new_lines(tmp_path, "rot.csv", read.cursor, max_lines=10_000)
    assert lines_read(again) == [] and again.warnings == []


def test_a_rotated_file_already_read_and_then_deleted_is_routine(tmp_path):
    logger = Logger(tmp_path)
    logger.write(10)
    cursor = read_new_lines(tmp_path, "rot.csv", None, max_lines=100).cursor
    logger.rotate("rot.csv.1")
    logger.write(10)
    cursor = read_new_lines(tmp_path, "rot.csv", cursor, max_lines=100).cursor
    (tmp_path / "rot.csv.1").unlink()  # retention of old rotations
    read = read_new_lines(tmp_path, "rot.csv", cursor, max_lines=100)
    assert read.warnings == [] and lines_read(read) == []
