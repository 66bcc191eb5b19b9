"""Reading only the new complete lines of growing, rotated and replaced files."""

from __future__ import annotations

import os

from daqbroker_agent.tail import read_new_lines


def lines_of(read) -> list[str]:
    return [line.decode() for chunk in read.chunks for line in chunk.lines()]


def test_only_complete_new_lines_are_read(tmp_path):
    log = tmp_path / "a.csv"
    log.write_text("1,a\n2,b\n3,c")
    first = read_new_lines(tmp_path, "*.csv", None, max_lines=100)
    assert lines_of(first) == ["1,a", "2,b"]
    assert first.chunks[0].first_line == 1
    with log.open("a") as handle:
        handle.write("x\n4,d\n")
    second = read_new_lines(tmp_path, "*.csv", first.cursor, max_lines=100)
    assert lines_of(second) == ["3,cx", "4,d"]
    assert second.chunks[0].first_line == 3
    assert read_new_lines(tmp_path, "*.csv", second.cursor, max_lines=100).chunks == []


def test_the_budget_is_shared_and_the_rest_waits(tmp_path):
    (tmp_path / "a.csv").write_text("".join(f"a{i}\n" for i in range(5)))
    (tmp_path / "b.csv").write_text("".join(f"b{i}\n" for i in range(5)))
    os.utime(tmp_path / "a.csv", (1, 1))  # a is older: read first
    read = read_new_lines(tmp_path, "*.csv", None, max_lines=7)
    assert lines_of(read) == ["a0", "a1", "a2", "a3", "a4", "b0", "b1"]
    assert read.more
    rest = read_new_lines(tmp_path, "*.csv", read.cursor, max_lines=7)
    assert lines_of(rest) == ["b2", "b3", "b4"]
    assert not rest.more


def test_a_rotated_file_is_finished_under_its_new_name(tmp_path):
    log = tmp_path / "weather.csv"
    log.write_text("1\n2\n")
    cursor = read_new_lines(tmp_path, "weather.csv", None, max_lines=100).cursor
    with log.open("a") as handle:
        handle.write("3\n")
    log.rename(tmp_path / "weather.csv.1")
    (tmp_path / "weather.csv").write_text("new-1\n")
    read = read_new_lines(tmp_path, "weather.csv", cursor, max_lines=100)
    assert sorted(lines_of(read)) == ["3", "new-1"]


def test_a_replaced_or_truncated_file_is_read_from_its_start(tmp_path):
    log = tmp_path / "a.csv"
    log.write_text("1\n2\n3\n")
    cursor = read_new_lines(tmp_path, "*.csv", None, max_lines=100).cursor
    log.write_text("9\n")  # truncated in place, same inode
    assert lines_of(read_new_lines(tmp_path, "*.csv", cursor, max_lines=100)) == ["9"]
    cursor = read_new_lines(tmp_path, "*.csv", None, max_lines=100).cursor
    with log.open("r+") as handle:  # rewritten in place, longer, different start
        handle.write("8\n7\n6\n5\n")
    assert lines_of(read_new_lines(tmp_path, "*.csv", cursor, max_lines=100)) == ["8", "7", "6", "5"]
