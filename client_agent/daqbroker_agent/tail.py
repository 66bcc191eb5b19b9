"""Incremental reading of the text files in a folder: whole new lines since the last read, per file.

The cursor has the same shape and meaning as the server's file collector's (``collection.collectors.file``)::

    {"files": {"weather.csv": {"identity": "dev:inode", "offset": 1234, "lines": 56, "head": sha1, "head_len": n}}}

* only complete lines are read: a line still being written waits for its newline;
* a file **renamed** (rotated) keeps its identity, and its unread tail is still read, even when the new
  name no longer matches the pattern;
* a file **replaced** (new identity, or the same inode with different first bytes) or **truncated** is
  read again from its start (the server skips readings it already stored);
* several files are read oldest first, sharing the ``max_lines`` budget of one read.

Nothing here imports Django or numpy: the agent uses it, with :class:`daqbroker_agent.parsing.LineParser`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

FINGERPRINT_BYTES = 1024
READ_SIZE = 4 * 1024 * 1024


@dataclass
class FileLines:
    """Complete lines read from one file: ``data`` ends with a newline; ``first_line`` is 1-based."""

    path: Path
    data: bytes
    first_line: int

    def lines(self) -> list[bytes]:
        return self.data.split(b"\n")[:-1]


@dataclass
class TailRead:
    chunks: list[FileLines] = field(default_factory=list)
    cursor: dict = field(default_factory=dict)
    more: bool = False  # lines were left for the next read (the budget ran out)

    @property
    def n_lines(self) -> int:
        return sum(chunk.data.count(b"\n") for chunk in self.chunks)


def read_new_lines(
    folder: Path, pattern: str, cursor: dict | None, *, max_lines: int, max_bytes: int = 256 << 20
) -> TailRead:
    """The lines written since ``cursor`` in the files of ``folder`` matching ``pattern``, and the new cursor.

    The caller commits the new cursor together with what it made of the lines (the agent: in the same
    spool transaction as the readings), so a crash never skips nor repeats a line.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {folder} does not exist or is not a folder")
    previous: dict[str, dict] = (cursor or {}).get("files", {})
    result = TailRead()
    files: dict[str, dict] = {}
    lines_left, bytes_left = max_lines, max_bytes
    for path, name, stat, matches in candidate_files(folder, pattern, previous):
        state = still_valid(path, stat, known_state(name, stat, previous))
        if not matches and (state is None or state["offset"] >= stat.st_size):
            if state is not None:
                files[name] = state  # rotated away and fully read: remembered while it is there
            continue
        if lines_left <= 0 or bytes_left <= 0:
            result.more = result.more or state is None or state["offset"] < stat.st_size
            if state is not None:
                files[name] = state
            continue
        chunk, new_state, reached_end = _read_file(path, stat, state, lines_left, bytes_left)
        files[name] = new_state
        result.more = result.more or not reached_end
        if chunk.data:
            result.chunks.append(chunk)
            lines_left -= chunk.data.count(b"\n")
            bytes_left -= len(chunk.data)
    result.cursor = {"files": files}
    return result


def file_identity(stat: os.stat_result) -> str:
    return f"{stat.st_dev}:{stat.st_ino}"


def candidate_files(folder: Path, pattern: str, previous: dict[str, dict]):
    known = {state.get("identity") for state in previous.values()}
    found: dict[str, tuple[Path, os.stat_result, bool]] = {}
    for path in folder.glob(pattern):
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        if path.is_file():
            found[path.relative_to(folder).as_posix()] = (path, stat, True)
    if known:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name in found or not entry.is_file():
                    continue
                try:
                    stat = entry.stat()
                except FileNotFoundError:
                    continue
                if file_identity(stat) in known:
                    found[entry.name] = (Path(entry.path), stat, fnmatch.fnmatch(entry.name, pattern))
    ordered = sorted(found.items(), key=lambda item: (item[1][1].st_mtime, item[0]))
    return [(path, name, stat, matches) for name, (path, stat, matches) in ordered]


def known_state(name: str, stat: os.stat_result, previous: dict[str, dict]) -> dict | None:
    identity = file_identity(stat)
    state = previous.get(name)
    if state and state.get("identity") == identity:
        return dict(state)
    for other in previous.values():
        if other.get("identity") == identity:
            return dict(other)
    return None


def still_valid(path: Path, stat: os.stat_result, state: dict | None) -> dict | None:
    if state is None or stat.st_size < state.get("offset", 0):
        return None
    head_len = state.get("head_len", 0)
    if head_len:
        with path.open("rb") as handle:
            if hashlib.sha1(handle.read(head_len), usedforsecurity=False).hexdigest() != state.get("head"):
                return None
    return state


def _read_file(path: Path, stat: os.stat_result, state: dict | None, lines_left: int, bytes_left: int):
    offset, line_no = (state["offset"], state.get("lines", 0)) if state else (0, 0)
    head, head_len = (state.get("head", ""), state.get("head_len", 0)) if state else ("", 0)
    with path.open("rb") as handle:
        handle.seek(offset)
        pieces, size, lines, reached_end = [], 0, 0, False
        while lines < lines_left and size < bytes_left:
            piece = handle.read(min(READ_SIZE, bytes_left - size))
            if not piece:
                reached_end = True
                break
            pieces.append(piece)
            size += len(piece)
            lines += piece.count(b"\n")
        data = b"".join(pieces)
        data = data[: data.rfind(b"\n") + 1]
        if data.count(b"\n") > lines_left:
            cut = -1
            for _ in range(lines_left):
                cut = data.index(b"\n", cut + 1)
            data, reached_end = data[: cut + 1], False
        if head_len < FINGERPRINT_BYTES and data:
            handle.seek(0)
            head_len = min(FINGERPRINT_BYTES, offset + len(data))
            head = hashlib.sha1(handle.read(head_len), usedforsecurity=False).hexdigest()
    n_lines = data.count(b"\n")
    new_state = {
        "identity": file_identity(stat),
        "offset": offset + len(data),
        "lines": line_no + n_lines,
        "head": head,
        "head_len": head_len,
    }
    return FileLines(path, data, line_no + 1), new_state, reached_end
