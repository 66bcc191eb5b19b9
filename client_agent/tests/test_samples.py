"""The first lines of a file, read when the server asks: only inside allowed_paths, bounded, never a command."""

from __future__ import annotations

import os

from daqbroker_agent.samples import MAX_BYTES, MAX_LINES, read_sample


def test_the_newest_matching_file_is_read(tmp_path):
    (tmp_path / "old.csv").write_text("old,1\n")
    os.utime(tmp_path / "old.csv", (1_600_000_000, 1_600_000_000))
    (tmp_path / "new.csv").write_text("time,temp\n2026-01-01T00:00:00,1.5\n")
    (tmp_path / "newer.txt").write_text("not matched\n")
    answer = read_sample({"id": 1, "path": str(tmp_path), "pattern": "*.csv"}, (str(tmp_path),))
    assert answer.error == ""
    assert answer.file == "new.csv"
    assert answer.lines == ["time,temp", "2026-01-01T00:00:00,1.5"]
    assert not answer.truncated


def test_a_folder_outside_allowed_paths_is_refused_and_not_read(tmp_path):
    allowed, secret = tmp_path / "logger", tmp_path / "secret"
    allowed.mkdir()
    secret.mkdir()
    (secret / "key.csv").write_text("SECRET\n")
    answer = read_sample({"id": 1, "path": str(secret), "pattern": "*"}, (str(allowed),))
    assert "is not under this agent's allowed_paths" in answer.error
    assert answer.payload() == {"error": answer.error}
    assert "SECRET" not in str(answer.payload())


def test_nothing_is_readable_by_default(tmp_path):
    (tmp_path / "a.csv").write_text("x\n")
    assert "(none)" in read_sample({"id": 1, "path": str(tmp_path)}, ()).error


def test_a_symlink_in_an_allowed_folder_leading_out_is_refused(tmp_path):
    allowed, secret = tmp_path / "logger", tmp_path / "secret"
    allowed.mkdir()
    secret.mkdir()
    (secret / "key.txt").write_text("SECRET\n")
    (allowed / "link.csv").symlink_to(secret / "key.txt")
    for request in ({"pattern": "*.csv"}, {"file": "link.csv"}):
        answer = read_sample({"id": 1, "path": str(allowed), **request}, (str(allowed),))
        assert "leads outside this agent's allowed_paths" in answer.error, request
        assert answer.lines == []


def test_a_pattern_or_file_name_climbing_out_is_refused(tmp_path):
    allowed = tmp_path / "logger"
    allowed.mkdir()
    (tmp_path / "x.csv").write_text("SECRET\n")
    assert (
        "may not be absolute or contain '..'"
        in read_sample({"id": 1, "path": str(allowed), "pattern": "../*.csv"}, (str(allowed),)).error
    )
    assert (
        "must be a file name inside the folder"
        in read_sample({"id": 1, "path": str(allowed), "file": "../x.csv"}, (str(allowed),)).error
    )


def test_reads_are_bounded_whatever_the_server_asks(tmp_path):
    (tmp_path / "big.csv").write_text("".join(f"{i},{'x' * 10}\n" for i in range(10_000)))
    answer = read_sample({"id": 1, "path": str(tmp_path), "max_lines": 10**9, "max_bytes": 10**9}, (str(tmp_path),))
    assert len(answer.lines) == MAX_LINES
    assert answer.truncated
    (tmp_path / "big.csv").write_text("".join(f"{i},{'x' * 2000}\n" for i in range(100)))
    answer = read_sample({"id": 1, "path": str(tmp_path)}, (str(tmp_path),))
    assert sum(len(line) + 1 for line in answer.lines) <= MAX_BYTES
    assert answer.truncated and answer.lines[0].startswith("0,")


def test_a_binary_file_or_an_empty_folder_is_answered_with_the_reason(tmp_path):
    assert "no file in" in read_sample({"id": 1, "path": str(tmp_path)}, (str(tmp_path),)).error
    (tmp_path / "data.bin").write_bytes(b"\x00\x01\x02" * 10)
    assert "binary" in read_sample({"id": 1, "path": str(tmp_path)}, (str(tmp_path),)).error
