"""Incremental reading of the text files in a folder: whole new lines since the last read, per file.

The cursor has the same shape and meaning as the server's file collector's (``collection.collectors.file``)::

    {"files": {"weather.csv": {"identity": "dev:inode", "offset": 1234, "lines": 56, "head": sha1, "head_len": n}}}

* only complete lines are read: a line still being written waits for its newline, except the **final
  line** of a finished file (see :func:`final_line_allowed`): a file that has not changed for
  ``final_line_after`` seconds, or that was rotated away (and has not changed for ``ROTATED_QUIET_SECONDS``),
  has its last unterminated line read once. The cursor remembers where that line began (``final_from``):
  should the file grow again, reading resumes from the start of that line, so a line that was completed
  later is read whole (the server counts an unchanged line as a duplicate) and never as a broken fragment;
* a file **renamed** (rotated) keeps its identity, and its unread tail is still read, even when the new
  name no longer matches the pattern;
* a file **replaced** (new identity, or the same inode with different first bytes) or **truncated** is
  read again from its start (the server skips readings it already stored);
* several files are read oldest first, sharing the ``max_lines`` budget of one read;
* a file that appeared **and** was renamed while nobody was reading (``rot.csv`` -> ``rot.csv.2``, both
  while the collector was down) is found among the rotated names (``rotated_pattern``; by default the
  pattern followed by ``.1``, ``.2``… or ``-20260101``…) by its unknown identity, and read from its start;
  rotated files already there when following began are remembered as they were (not read);
* a file with unread bytes that vanished (deleted, or compressed: a ``.gz`` cannot be followed byte by
  byte) is reported in ``warnings``, with the byte range lost.

:func:`plan_files` decides which files to read, in which order and from where: the agent (here) and the
server's file collector (``collection.collectors.file``) both follow files through it.

Nothing here imports Django or numpy: the agent uses it, with :class:`daqbroker_agent.parsing.LineParser`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

FINGERPRINT_BYTES = 1024
READ_SIZE = 4 * 1024 * 1024
ROTATION_SUFFIXES = (".[0-9]*", "-[0-9]*")  # logrotate's numbered and dated names (rot.csv.1, rot.csv-20260101)
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".z", ".zip", ".lz4")
CURSOR_VERSION = 2  # cursors of this version know every rotated file that was there when last read
DEFAULT_FINAL_LINE_AFTER = 300.0  # seconds a file must stay unchanged before its unterminated last line is read
ROTATED_QUIET_SECONDS = 10.0  # a rotated file may still be written by a writer that has not reopened yet


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
    warnings: list[str] = field(default_factory=list)  # files that vanished with bytes never read

    @property
    def n_lines(self) -> int:
        return sum(chunk.data.count(b"\n") for chunk in self.chunks)


def read_new_lines(
    folder: Path,
    pattern: str,
    cursor: dict | None,
    *,
    max_lines: int,
    max_bytes: int = 256 << 20,
    rotated_pattern: str = "",
    final_line_after: float = DEFAULT_FINAL_LINE_AFTER,
    now: float | None = None,
) -> TailRead:
    """The lines written since ``cursor`` in the files of ``folder`` matching ``pattern``, and the new cursor.

    The caller commits the new cursor together with what it made of the lines (the agent: in the same
    spool transaction as the readings), so a crash never skips nor repeats a line.
    """
    plan = plan_files(folder, pattern, cursor, rotated_pattern)
    result = TailRead(warnings=plan.warnings)
    files: dict[str, dict] = dict(plan.kept)
    lines_left, bytes_left = max_lines, max_bytes
    for c in plan.to_read:
        if lines_left <= 0 or bytes_left <= 0:
            result.more = result.more or c.state is None or c.state["offset"] < c.stat.st_size
            if c.state is not None:
                files[c.name] = remembered(c.state, c)
            continue
        final_ok = final_line_allowed(c, final_line_after, now)
        chunk, new_state, reached_end = _read_file(c.path, c.stat, c.state, lines_left, bytes_left, final_ok)
        files[c.name] = remembered(new_state, c)
        result.more = result.more or not reached_end
        if chunk.data:
            result.chunks.append(chunk)
            lines_left -= chunk.data.count(b"\n")
            bytes_left -= len(chunk.data)
    result.cursor = new_cursor(files)
    return result


# --- which files to read: shared with the server's file collector -------------------------------------


@dataclass
class Candidate:
    """A file to read now: from ``state``'s offset, or from its start when ``state`` is None."""

    path: Path
    name: str  # relative to the folder, as the cursor names it
    stat: os.stat_result
    state: dict | None
    matches: bool  # matches the pattern (else: a rotated name)


@dataclass
class FilePlan:
    to_read: list[Candidate]  # oldest first
    kept: dict[str, dict]  # cursor entries of files with nothing to read now (fully read, or there before)
    warnings: list[str]  # files that vanished with bytes never read, or that cannot be followed


def rotated_patterns(pattern: str, rotated_pattern: str = "") -> list[str]:
    """The globs of rotated names: ``rotated_pattern`` (comma-separated), or the pattern plus
    ``.[0-9]*`` and ``-[0-9]*``."""
    if rotated_pattern.strip():
        return [p.strip() for p in rotated_pattern.split(",") if p.strip()]
    return [pattern + suffix for suffix in ROTATION_SUFFIXES]


def final_line_allowed(candidate: Candidate, final_line_after: float, now: float | None = None) -> bool:
    """Whether the last line of ``candidate`` may be read although it has no newline: the file has not
    changed for ``final_line_after`` seconds, or it was rotated away (no longer matches the pattern) and has
    not changed for ``ROTATED_QUIET_SECONDS`` (a writer may not have reopened its file yet). Never for a file
    still being written. ``final_line_after`` 0 turns final lines off."""
    if not final_line_after:
        return False
    quiet_for = (time.time() if now is None else now) - candidate.stat.st_mtime
    needed = final_line_after if candidate.matches else min(final_line_after, ROTATED_QUIET_SECONDS)
    return quiet_for >= needed


def resume_point(state: dict | None, size: int) -> tuple[int, int]:
    """Where to read ``state``'s file from, as (byte offset, lines before it): where the last read ended or,
    when that read took a final line without its newline and the file has grown since, the start of that
    line, read again whole (an unchanged line is then an exact duplicate)."""
    if state is None:
        return 0, 0
    offset, lines = state["offset"], state.get("lines", 0)
    if "final_from" in state and size > offset:
        return state["final_from"], lines
    return offset, lines


def final_part(whole: bytes, tail: bytes, start: int, size: int, allowed: bool, lines_left: int) -> bytes:
    """The unterminated last line to read with ``whole`` (the complete lines read from ``start``), or b"":
    only when allowed (:func:`final_line_allowed`), when ``tail`` runs to the size the file had when judged
    quiet (not a byte more, in case a writer just woke up), and when the line budget has room for it."""
    if not allowed or not tail or start + len(whole) + len(tail) != size:
        return b""
    return tail if whole.count(b"\n") < lines_left else b""


def after_read(state: dict | None, start: int, line_no: int, whole: bytes, final: bytes) -> dict:
    """The cursor fields after reading ``whole`` (complete lines) and ``final`` (a last line without its
    newline, or b"") from ``start``; ``lines`` counts complete lines only. Nothing read: ``state``'s own
    (a final line read before stays remembered, to be read again whole once it is completed)."""
    if state is not None and not whole and not final:
        return {key: state[key] for key in ("offset", "lines", "final_from") if key in state}
    state = {"offset": start + len(whole) + len(final), "lines": line_no + whole.count(b"\n")}
    if final:
        state["final_from"] = start + len(whole)
    return state


def is_compressed(name: str) -> bool:
    return name.lower().endswith(COMPRESSED_SUFFIXES)


def new_cursor(files: dict[str, dict]) -> dict:
    return {"files": files, "version": CURSOR_VERSION}


def remembered(state: dict, candidate: Candidate) -> dict:
    """A file's cursor entry with what ``plan_files`` needs next time: its size when read, and whether it
    was the live file (matching the pattern), to tell a rotation from a loss."""
    return {**state, "size": candidate.stat.st_size, "live": candidate.matches}


def plan_files(folder: Path, pattern: str, cursor: dict | None, rotated_pattern: str = "") -> FilePlan:
    """Which files of ``folder`` to read now, oldest first, and from where (see the module's docstring)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {folder} does not exist or is not a folder")
    cursor = cursor or {}
    previous: dict[str, dict] = cursor.get("files", {})
    # A cursor written before rotated names were tracked (or none): rotated files there now predate it.
    knows_rotations = cursor.get("version", 1) >= CURSOR_VERSION
    rotated = rotated_patterns(pattern, rotated_pattern)
    plan = FilePlan([], {}, [])
    seen: set[str] = set()
    rewritten: set[str] = set()  # identities now holding other content (truncated and rewritten, or re-used)
    copied = False  # a rotated file new to us is read from its start (where a copytruncate's copy goes)
    compressed: list[str] = []
    for path, name, stat, matches in candidate_files(folder, pattern, previous, rotated):
        known = known_state(name, stat, previous)
        if known is not None and same_start(path, known):
            seen.add(known["identity"])  # the file read before (an inode re-used by a new file is not)
            state = known if stat.st_size >= known.get("offset", 0) else None  # else truncated: from the start
        else:
            state = None
            if known is not None:
                rewritten.add(known["identity"])
        if is_compressed(name) and not matches:  # a rotation compressed: cannot be followed byte by byte
            if known is None:
                compressed.append(name)
            continue
        candidate = Candidate(path, name, stat, state, matches)
        if matches:
            plan.to_read.append(candidate)
        elif state is not None:
            if state["offset"] < stat.st_size:
                plan.to_read.append(candidate)  # rotated away with an unread tail
            else:
                plan.kept[name] = remembered(state, candidate)  # fully read: remembered while it is there
        elif knows_rotations:
            plan.to_read.append(candidate)  # appeared and was rotated since the last read: all of it
            copied = True
        else:
            plan.kept[name] = remembered(baseline(path, stat), candidate)
    for name, state in previous.items():
        if state.get("identity") in seen:
            continue
        unread = state.get("size", 0) > state.get("offset", 0)
        if state.get("identity") in rewritten and copied and not unread:
            continue  # copytruncate: what it held is in the copy, read above
        lost = vanished(name, state, compressed)
        if lost:
            plan.warnings.append(lost)
    return plan


MAX_HEADER_BYTES = 1024 * 1024


def read_header_lines(path: Path, count: int, encoding: str) -> list[str]:
    """The first ``count`` lines of a file as text (at most MAX_HEADER_BYTES of them), for the year a
    header line gives (``timestamp.year_pattern``); [] when the file cannot be read."""
    header: list[str] = []
    try:
        with path.open("rb") as handle:
            size = 0
            for _ in range(count):
                line = handle.readline(MAX_HEADER_BYTES - size)
                if not line:
                    break
                size += len(line)
                header.append(line.decode(encoding, errors="replace").rstrip("\r\n"))
    except OSError:
        return []
    return header


def baseline(path: Path, stat: os.stat_result) -> dict:
    """The cursor entry of a rotated file that was there before following began: read up to its end."""
    lines = 0
    with path.open("rb") as handle:
        for piece in iter(lambda: handle.read(READ_SIZE), b""):
            lines += piece.count(b"\n")
        handle.seek(0)
        head_len = min(FINGERPRINT_BYTES, stat.st_size)
        head = hashlib.sha1(handle.read(head_len), usedforsecurity=False).hexdigest()
    return {"identity": file_identity(stat), "offset": stat.st_size, "lines": lines, "head": head,
            "head_len": head_len}  # fmt: skip


def vanished(name: str, state: dict, compressed: list[str]) -> str:
    """Why a file of the cursor that is gone may have taken bytes with it ('' when nothing was lost: a
    rotated file read to its end, then deleted or compressed, is routine)."""
    offset, size = state.get("offset", 0), state.get("size")
    unread = size is not None and size > offset
    if not unread and not state.get("live"):
        return ""
    where = f"bytes {offset:,} to {size:,}" if unread else f"anything written after byte {offset:,}"
    if not unread:
        where += " (it was the live file when last read)"
    hint = ""
    stem = name.rsplit("/", 1)[-1]
    packed = [c for c in compressed if c.rsplit("/", 1)[-1].startswith(stem)]
    if packed:
        hint = (
            f"; it was probably compressed into {', '.join(packed[:3])}, which cannot be followed "
            "byte by byte: read it by hand, or rotate with delaycompress"
        )
    return f"{name} vanished before it was read to its end: {where} never read{hint}"


def file_identity(stat: os.stat_result) -> str:
    return f"{stat.st_dev}:{stat.st_ino}"


def candidate_files(folder: Path, pattern: str, previous: dict[str, dict], rotated: Sequence[str] = ()):
    """Files matching ``pattern`` or one of the ``rotated`` globs, and files of known identity whatever
    their name now; as (path, name, stat, matches the pattern), oldest first."""
    known = {state.get("identity") for state in previous.values()}
    found: dict[str, tuple[Path, os.stat_result, bool]] = {}
    for glob, matching in [(pattern, True)] + [(r, False) for r in rotated]:
        for path in folder.glob(glob):
            name = path.relative_to(folder).as_posix()
            if name in found:
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if path.is_file():
                found[name] = (path, stat, matching or fnmatch.fnmatch(name, pattern))
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


def same_start(path: Path, state: dict) -> bool:
    """The file still begins with the bytes fingerprinted in ``state`` (its identity alone may be a re-used inode)."""
    head_len = state.get("head_len", 0)
    if not head_len:
        return True
    try:
        with path.open("rb") as handle:
            return hashlib.sha1(handle.read(head_len), usedforsecurity=False).hexdigest() == state.get("head")
    except FileNotFoundError:
        return False


def _read_file(
    path: Path, stat: os.stat_result, state: dict | None, lines_left: int, bytes_left: int, final_ok: bool = False
):
    offset, line_no = resume_point(state, stat.st_size)
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
        whole = data[: data.rfind(b"\n") + 1]
        tail = data[len(whole) :] if reached_end else b""
        if whole.count(b"\n") > lines_left:
            cut = -1
            for _ in range(lines_left):
                cut = whole.index(b"\n", cut + 1)
            whole, reached_end, tail = whole[: cut + 1], False, b""
        final = final_part(whole, tail, offset, stat.st_size, final_ok, lines_left)
        new_state = {"identity": file_identity(stat), **after_read(state, offset, line_no, whole, final)}
        if head_len < FINGERPRINT_BYTES and (whole or final):
            handle.seek(0)
            head_len = min(FINGERPRINT_BYTES, new_state["offset"])
            head = hashlib.sha1(handle.read(head_len), usedforsecurity=False).hexdigest()
    new_state.update(head=head, head_len=head_len)
    # The final line is handed on terminated, like every other line.
    return FileLines(path, whole + final + b"\n" if final.strip() else whole, line_no + 1), new_state, reached_end
