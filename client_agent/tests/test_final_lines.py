"""The last line of a finished file (issue 15, point 2), as the agent reads it through the shared tail:
never the half-written line of a file still being written; once for a quiet or rotated file; read again
whole, never broken nor twice, when the file grows afterwards. And a file source without channels waits."""

from __future__ import annotations

import os
import time

import pytest
from test_sources import T, spec, spooled, wait_until

from daqbroker_agent.config import ConfigError, validate_source_config
from daqbroker_agent.sources import start_source
from daqbroker_agent.spool import Spool
from daqbroker_agent.state import AgentState
from daqbroker_agent.tail import DEFAULT_FINAL_LINE_AFTER, read_new_lines


def lines_of(read) -> list[str]:
    return [line.decode() for chunk in read.chunks for line in chunk.lines()]


def quiet(path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def read(folder, cursor, **options):
    return read_new_lines(folder, "*.csv", cursor, max_lines=100, **options)


def test_a_file_still_being_written_keeps_its_last_line(tmp_path):
    log = tmp_path / "a.csv"
    log.write_text("1,a\n2,b")
    first = read(tmp_path, None, final_line_after=300)
    assert lines_of(first) == ["1,a"]
    quiet(log, 290)
    assert lines_of(read(tmp_path, first.cursor, final_line_after=300)) == []


def test_a_quiet_files_last_line_is_read_once(tmp_path):
    log = tmp_path / "a.csv"
    log.write_text("1,a\n2,b")
    quiet(log, 301)
    first = read(tmp_path, None, final_line_after=300)
    assert lines_of(first) == ["1,a", "2,b"]
    assert first.cursor["files"]["a.csv"]["final_from"] == 4
    assert first.cursor["files"]["a.csv"]["offset"] == 7
    again = read(tmp_path, first.cursor, final_line_after=300)
    assert lines_of(again) == []
    assert again.cursor["files"]["a.csv"]["final_from"] == 4  # still remembered, for a file that grows


def test_a_file_growing_again_is_read_from_the_start_of_its_final_line(tmp_path):
    log = tmp_path / "a.csv"
    log.write_text("1,a\n2,b")
    quiet(log, 301)
    first = read(tmp_path, None)
    with log.open("a") as handle:
        handle.write("\n3,c\n4,")  # the line was whole after all; then a new one, half written
    second = read(tmp_path, first.cursor)
    assert lines_of(second) == ["2,b", "3,c"]  # "2,b" again, whole: the server counts it as a duplicate
    assert second.chunks[0].first_line == 2  # line numbers stay right
    assert "final_from" not in second.cursor["files"]["a.csv"]
    with log.open("a") as handle:
        handle.write("d")
    assert lines_of(read(tmp_path, second.cursor)) == []  # "4,d" is being written
    quiet(log, 301)
    third = read(tmp_path, second.cursor)
    assert lines_of(third) == ["4,d"]
    assert third.chunks[0].first_line == 4


def test_a_final_line_that_grows_without_a_newline_is_read_again_only_when_quiet(tmp_path):
    log = tmp_path / "a.csv"
    log.write_text("1,a")
    quiet(log, 301)
    first = read(tmp_path, None)
    assert lines_of(first) == ["1,a"]
    with log.open("a") as handle:
        handle.write("b")
    assert lines_of(read(tmp_path, first.cursor)) == []
    quiet(log, 301)
    assert lines_of(read(tmp_path, first.cursor)) == ["1,ab"]


def test_the_last_line_of_a_rotated_file_is_read_once_it_is_left_alone(tmp_path):
    log = tmp_path / "a.csv"
    log.write_text("1,a\n2,b")
    first = read_new_lines(tmp_path, "a.csv", None, max_lines=100)
    assert lines_of(first) == ["1,a"]
    log.rename(tmp_path / "a.csv.1")
    log.write_text("3,c\n")
    just_rotated = read_new_lines(tmp_path, "a.csv", first.cursor, max_lines=100)
    assert lines_of(just_rotated) == ["3,c"]  # its writer may not have reopened yet: "2,b" waits
    quiet(tmp_path / "a.csv.1", 11)
    later = read_new_lines(tmp_path, "a.csv", just_rotated.cursor, max_lines=100)
    assert lines_of(later) == ["2,b"]
    assert lines_of(read_new_lines(tmp_path, "a.csv", later.cursor, max_lines=100)) == []


def test_zero_turns_final_lines_off(tmp_path):
    log = tmp_path / "a.csv"
    log.write_text("1,a\n2,b")
    quiet(log, 86400)
    assert lines_of(read(tmp_path, None, final_line_after=0)) == ["1,a"]


def test_the_budget_leaves_the_final_line_for_the_next_read(tmp_path):
    log = tmp_path / "a.csv"
    log.write_text("1,a\n2,b")
    quiet(log, 301)
    first = read_new_lines(tmp_path, "*.csv", None, max_lines=1)
    assert lines_of(first) == ["1,a"]
    assert lines_of(read_new_lines(tmp_path, "*.csv", first.cursor, max_lines=1)) == ["2,b"]


def test_final_line_after_is_validated_with_a_documented_default():
    config = validate_source_config("file", {"path": "/data"})
    assert config["final_line_after"] == DEFAULT_FINAL_LINE_AFTER == 300
    assert validate_source_config("file", {"path": "/data", "final_line_after": 0})["final_line_after"] == 0
    for bad in (-1, "soon", 31 * 86400):
        with pytest.raises(ConfigError) as caught:
            validate_source_config("file", {"path": "/data", "final_line_after": bad})
        assert caught.value.field == "final_line_after"


def test_the_agents_file_source_reads_a_quiet_files_last_line_once(tmp_path):
    folder = tmp_path / "logger"
    folder.mkdir()
    data = folder / "a.csv"
    data.write_text(f"{T},1.0,OK\n2026-11-27T10:00:01Z,2.0,DONE")
    quiet(data, 301)
    spool = Spool(tmp_path / "spool")
    source = spec({"kind": "file", "path": str(folder), "columns": ["time", "temp", "state"]})
    runner = start_source(source, spool, AgentState(spool))
    try:
        wait_until(lambda: spool.depth() == 4)
        # Another file, written after: once its line is spooled, every read of a.csv before it is too, and
        # the final line of a.csv, unchanged, was not taken again by any of them.
        (folder / "b.csv").write_text("2026-11-27T10:00:02Z,3.0,NEXT\n")
        wait_until(lambda: spool.depth() >= 6)
    finally:
        runner.stop()
        runner.join(timeout=5)
    assert [r[2] for r in spooled(spool)] == [1.0, "OK", 2.0, "DONE", 3.0, "NEXT"]


def test_the_agents_file_source_without_channels_reads_nothing(tmp_path):
    folder = tmp_path / "logger"
    folder.mkdir()
    (folder / "a.csv").write_text(f"{T},1.0,OK\n")
    spool = Spool(tmp_path / "spool")
    state = AgentState(spool)
    source = spec({"kind": "file", "path": str(folder), "columns": ["time", "temp", "state"]}, channels=())
    runner = start_source(source, spool, state)
    try:
        wait_until(lambda: "waiting for channels" in state.data["problems"].get("waiting test", ""))
    finally:
        runner.stop()
        runner.join(timeout=5)
    assert spool.depth() == 0 and spool.get(source.key) is None
