"""Incremental reading of the delimited or fixed-width text files that instruments and loggers write.

The cursor remembers, per file, its identity (device and inode), a fingerprint of its first bytes, the
byte offset just after the last complete line read, and the number of lines read so far (for line numbers
in quarantine). Only whole lines are read: a line still being written is left for the next run; the
last line of a finished file (unchanged for ``final_line_after`` seconds, or rotated away) is read once
without its newline, and read again whole should the file grow after all (see ``daqbroker_agent.tail``).

* A file **renamed** (rotated, ``weather.csv`` -> ``weather.csv.1``) keeps its identity: its unread tail is
  still read, even when the new name no longer matches the pattern.
* A file **replaced** (new identity, or the same inode with different first bytes) or **truncated**
  (shorter than the offset) is read again from its start. ``ingest_samples`` skips readings already
  stored, so reading a line twice never stores it twice.
* Several files matching the pattern are read oldest first, sharing the run's ``max_lines``.

Blocks of lines are parsed with pandas (``daqbroker_agent.parsing.BlockParser``); any line it cannot read
in bulk goes through the line-by-line parser, which says why it failed, and lands in quarantine with its
file and line number. With ``archive`` on, every byte read is also copied, at the same offset, into a
file under ``DAQBROKER_ARCHIVE_DIR`` (idempotent: a retried run rewrites the same bytes).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from django.conf import settings

from accounts import targets
from collection.collectors.base import (
    Collected,
    RawLine,
    channel_key,
    concat_batches,
    is_text,
    lines_to_readings,
    parse_deadline,
)
from collection.services.corrections import REREAD_KEY, reread_in_progress
from collection.services.ingest import Rejection, SampleBatch
from daqbroker_agent.parsing import NUMBER, TEXT, BlockParser, FieldNotFound, LineParser, now_us

# Following files through rotation and truncation: the same code, and cursor format, as the agent's tail.
from daqbroker_agent.tail import (
    DEFAULT_FINAL_LINE_AFTER,
    after_read,
    file_identity,
    final_line_allowed,
    final_part,
    new_cursor,
    plan_files,
    read_header_lines,
    remembered,
    resume_point,
)
from instruments.models import Channel, DataSource

MAX_BYTES_PER_RUN = 256 * 1024 * 1024
# A run whose readings lie further than this from their file's modification time is marked a warning.
MTIME_DOUBT_US = 365 * 86_400 * 1_000_000
READ_SIZE = 16 * 1024 * 1024
FINGERPRINT_BYTES = 1024


class FileCollector:
    def collect(self, source: DataSource, config: dict, channels: list[Channel]) -> Collected:
        folder = Path(config["path"])
        rereading = reread_in_progress(source.cursor)  # a re-read asked for: files from their start
        run = _Run(source, config, channels, reread_from=rereading.get("from") if rereading else None)
        # Which files, in which order, from where: the agent's own plan (one implementation for both).
        plan = plan_files(folder, config["pattern"], source.cursor, config.get("rotated_pattern", ""))
        cursor: dict[str, dict] = dict(plan.kept)
        for c in plan.to_read:
            # A symlink in the folder may lead anywhere: each file is checked where it really is.
            targets.check_file_at_run(source, c.path)
            if run.lines_left <= 0 or run.bytes_left <= 0:
                run.more = run.more or c.state is None or c.state["offset"] < c.stat.st_size
                if c.state is not None:
                    cursor[c.name] = remembered(c.state, c)
                continue
            final_ok = final_line_allowed(c, config.get("final_line_after", DEFAULT_FINAL_LINE_AFTER))
            cursor[c.name] = remembered(run.read_file(c.path, c.stat, c.state, final_ok), c)
        collected = run.result(cursor, plan.warnings)
        if rereading and collected.more:  # the re-read goes on next run (files not started yet among them)
            collected.cursor[REREAD_KEY] = rereading
        return collected


@dataclass
class _Run:
    source: DataSource
    config: dict
    channels: list[Channel]
    more: bool = False
    lines_read: int = 0
    numeric: list[SampleBatch] = field(default_factory=list)
    objects: list[SampleBatch] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    reread_from: int | None = None  # a re-read from a time: files read from their start skip lines before it
    doubts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lines_left = self.config["max_lines"]
        self.bytes_left = MAX_BYTES_PER_RUN
        self.line_parser = LineParser(self.config)
        self.deadline = parse_deadline()
        self.block_parser = None
        if BlockParser.supports(self.config) and self.config["timestamp"]["format"] != "receipt":
            wanted = {channel_key(c): (TEXT if is_text(c) else NUMBER) for c in self.channels}
            try:
                self.block_parser = BlockParser(self.config, wanted)
            except FieldNotFound as exc:
                bad = next((c for c in self.channels if self.line_parser.position_of(channel_key(c)) is None), None)
                raise FieldNotFound(f"channel {bad.slug if bad else '?'}: {exc}") from None

    def result(self, cursor: dict, warnings: list[str]) -> Collected:
        return Collected(
            warnings=warnings,
            batches=[
                b
                for b in (concat_batches(self.numeric, numeric=True), concat_batches(self.objects, numeric=False))
                if len(b)
            ],
            rejections=self.rejections,
            cursor=new_cursor(cursor),
            more=self.more,
            lines_read=self.lines_read,
            doubts=self.doubts,
        )

    def read_file(self, path: Path, stat: os.stat_result, state: dict | None, final_ok: bool = False) -> dict:
        offset, line_no = resume_point(state, stat.st_size)
        head, head_len = (state.get("head", ""), state.get("head_len", 0)) if state else ("", 0)
        with path.open("rb") as handle:
            handle.seek(offset)
            header = self._read_header(handle, line_no)
            header_lines = header.count(b"\n")
            header_done = line_no + header_lines >= self.config["header_lines"]
            per_line = offset / line_no if line_no else None
            data, n_lines, reached_end, tail = self._read_lines(handle, offset + len(header), per_line)
            if head_len < FINGERPRINT_BYTES:
                handle.seek(0)
                first = handle.read(min(FINGERPRINT_BYTES, offset + len(header) + len(data) + len(tail)))
        if n_lines > self.lines_left:
            cut = int(np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)[self.lines_left - 1]) + 1
            data, n_lines, reached_end, tail = data[:cut], self.lines_left, False, b""
        # A finished file's last line, read without its newline (once: the cursor remembers where it began).
        final = final_part(header + data, tail, offset, stat.st_size, final_ok and header_done, self.lines_left)
        position = after_read(state, offset, line_no, header + data, final)
        self.more = self.more or not reached_end
        self.lines_left -= n_lines + (1 if final else 0)
        self.bytes_left -= len(header) + len(data) + len(final)
        consumed = len(header) + len(data) + len(final)
        if head_len < FINGERPRINT_BYTES and consumed:
            head_len = min(FINGERPRINT_BYTES, offset + consumed)
            head = hashlib.sha1(first[:head_len], usedforsecurity=False).hexdigest()
        if consumed and self.config["archive"]:
            _archive(self.source, path, stat, offset, header + data + final)
        if final.strip():  # (a final "line" of blanks is passed over: nothing to read in it)
            data, n_lines = data + final + b"\n", n_lines + 1
        self.lines_read += n_lines
        # A re-read from a time: this file's lines before its first line stamped at or after it are passed
        # over (remembered in the file's cursor entry until that line is found).
        skip_before = state.get("skip_before") if state is not None else self.reread_from
        if n_lines:
            marks = (len(self.numeric), len(self.objects), len(self.rejections))
            year = self._file_year(path) if self.line_parser.year_pattern else None
            times = self._parse(path, data, n_lines, first_line_no=line_no + header_lines + 1, year=year)
            self._check_dates(path, stat, times)
            if skip_before is not None and self._skip_before(marks, skip_before, line_no + header_lines + 1, n_lines):
                skip_before = None
        return {
            "identity": file_identity(stat),
            **position,
            "head": head,
            "head_len": head_len,
            **({"skip_before": skip_before} if skip_before is not None else {}),
        }

    def _skip_before(self, marks: tuple[int, int, int], start: int, first_line_no: int, n_lines: int) -> bool:
        """Drop what the lines just parsed gave before the first line holding a reading stamped at or after
        ``start`` (µs); True when that line was among them (reading goes on normally from it)."""
        parts = [(self.numeric, marks[0]), (self.objects, marks[1])]
        lines = {id(b): _line_numbers(b) for target, mark in parts for b in target[mark:]}
        found = [int(lines[id(b)][b.ts >= start].min()) for t, m in parts for b in t[m:] if (b.ts >= start).any()]
        first = min(found) if found else None
        for target, mark in parts:
            kept = [] if first is None else [_subset(b, np.flatnonzero(lines[id(b)] >= first)) for b in target[mark:]]
            target[mark:] = [b for b in kept if len(b)]
        self.rejections[marks[2] :] = [
            r for r in self.rejections[marks[2] :] if first is not None and r.context.get("line", first) >= first
        ]
        self.lines_read -= n_lines if first is None else first - first_line_no
        return first is not None

    def _read_header(self, handle, line_no: int) -> bytes:
        """The header lines still to skip at the start of a file (only whole ones)."""
        header = b""
        for _ in range(max(0, self.config["header_lines"] - line_no)):
            line = handle.readline()
            if not line.endswith(b"\n"):
                handle.seek(-len(line), os.SEEK_CUR)  # unfinished: read it again next time
                break
            header += line
        return header

    def _read_lines(self, handle, offset: int, per_line: float | None) -> tuple[bytes, int, bool, bytes]:
        """Whole lines from ``offset`` (the handle is there), as many as the run's budget allows and a few
        more; their count; whether the end of the file was reached; and, when it was, the bytes after the
        last newline (a partial last line, which waits for its newline unless the file is finished). One
        read in the usual case, sized from the file's bytes per line so far."""
        remaining = max(os.fstat(handle.fileno()).st_size - offset, 0)
        want = min(remaining, self.bytes_left)
        if want and per_line is None:
            probe = os.pread(handle.fileno(), min(want, 65536), offset)
            per_line = len(probe) / max(probe.count(b"\n"), 1)
        if per_line:
            want = min(want, int(self.lines_left * per_line * 1.25) + 65536)
        pieces = [handle.read(want)] if want else []
        lines = pieces[0].count(b"\n") if pieces else 0
        size = len(pieces[0]) if pieces else 0
        while lines < self.lines_left and size < min(remaining, self.bytes_left):  # the estimate fell short
            piece = handle.read(min(READ_SIZE, self.bytes_left - size))
            if not piece:
                break
            pieces.append(piece)
            size += len(piece)
            lines += piece.count(b"\n")
        reached_end = size >= remaining
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        whole = data[: data.rfind(b"\n") + 1]
        return whole, lines, reached_end, (data[len(whole) :] if reached_end else b"")

    def _file_year(self, path: Path) -> int | None:
        """The year in the file's header lines (``timestamp.year_pattern``), or None: its lines are then
        quarantined with that reason by the parser, never dated 1900."""
        header = read_header_lines(path, self.config["header_lines"], self.config["encoding"])
        return self.line_parser.year_from_header(header)

    def _parse(self, path: Path, data: bytes, n_lines: int, first_line_no: int, year: int | None = None) -> list:
        """Readings of the lines, added to the run; returns the arrays of their times."""
        irregular = np.arange(n_lines)
        times = []
        if self.block_parser is not None:
            block = self.block_parser.parse(data, n_lines=n_lines, year=year)
            irregular = block.irregular
            self._add_block(block, str(path), first_line_no)
            times.append(block.ts_us)
        if len(irregular):
            times.append(self._add_lines(path, data, irregular, first_line_no, year))
        return times

    def _check_dates(self, path: Path, stat: os.stat_result, times: list) -> None:
        """A doubt when the file's readings lie more than a year from its modification time: a wrong year
        (timestamp.year), or day and month swapped, is stored but the run says so."""
        times = [t for t in times if len(t)]
        if not times:
            return
        first, last = min(int(t.min()) for t in times), max(int(t.max()) for t in times)
        modified = stat.st_mtime_ns // 1000
        if modified - first > MTIME_DOUBT_US or last - modified > MTIME_DOUBT_US:

            def day(ts_us: int) -> str:
                return datetime.fromtimestamp(ts_us / 1e6, UTC).date().isoformat()

            far = first if modified - first >= last - modified else last
            self.doubts.append(
                f"{path.name}: readings from {day(first)} to {day(last)} lie more than a year from the file's "
                f"modification time ({day(modified)}, {abs(modified - far) // 86_400_000_000:,} days from "
                f"{day(far)}): is the year right (timestamp.year, timestamp.year_pattern, the time format)?"
            )

    def _add_block(self, block, path: str, first_line_no: int) -> None:
        numeric = [c for c in self.channels if not is_text(c)]
        text = [c for c in self.channels if is_text(c)]
        n = len(block.rows)
        if not n:
            return
        for group, target, dtype in ((numeric, self.numeric, np.float64), (text, self.objects, object)):
            if not group:
                continue
            # Channel by channel: each channel's readings for every row, written straight into place.
            channel = np.empty((len(group), n), dtype=np.int64)
            ts = np.empty((len(group), n), dtype=np.int64)
            value = np.empty((len(group), n), dtype=dtype)
            for i, c in enumerate(group):
                channel[i] = c.id
                ts[i] = block.ts_us
                value[i] = block.values[channel_key(c)]
            rows = block.rows  # reading i is row i % n of the block: nothing to store per reading

            def where(i: int, rows=rows, n=n) -> dict:
                return {"file": path, "line": first_line_no + int(rows[i % n])}

            target.append(SampleBatch(channel.reshape(-1), ts.reshape(-1), value.reshape(-1), where=where))

    def _add_lines(
        self, path: Path, data: bytes, indices: np.ndarray, first_line_no: int, year: int | None = None
    ) -> np.ndarray:
        encoding = self.config["encoding"]
        # Usually a few of many lines: where each line ends, found by numpy (bytes.split is 4x slower).
        ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10).tolist()
        received = now_us()
        raw_lines = []
        for i in indices.tolist():
            start = ends[i - 1] + 1 if i else 0
            text = data[start : ends[i]].decode(encoding, errors="replace").rstrip("\r")
            if text.strip():
                raw_lines.append(RawLine(text, {"file": str(path), "line": first_line_no + i}, received))
        batch, rejections = lines_to_readings(raw_lines, self.line_parser, self.channels, self.deadline, year)
        self.objects.append(batch)
        self.rejections.extend(rejections)
        return batch.ts


def _line_numbers(batch: SampleBatch) -> np.ndarray:
    """The file line each reading of a collector's batch came from."""
    where = batch.where
    if where is None:
        return np.zeros(len(batch), dtype=np.int64)
    return np.fromiter((where(i).get("line", 0) for i in range(len(batch))), dtype=np.int64, count=len(batch))


def _subset(batch: SampleBatch, keep: np.ndarray) -> SampleBatch:
    where = batch.where
    return SampleBatch(
        batch.channel[keep],
        batch.ts[keep],
        batch.value[keep],
        where=None if where is None else (lambda j: where(int(keep[j]))),
    )


def archive_path(source: DataSource, name: str, identity: str) -> Path:
    """Where the raw copy of a file read by ``source`` is kept: one copy per file identity."""
    tag = hashlib.sha1(identity.encode(), usedforsecurity=False).hexdigest()[:10]
    return Path(settings.DAQBROKER_ARCHIVE_DIR) / source.instrument.slug / f"source-{source.pk}" / f"{tag}-{name}"


class ArchiveWriteFailed(OSError):
    """The raw copy could not be written (disk full, I/O error): the run fails and commits nothing."""


def _archive(source: DataSource, path: Path, stat: os.stat_result, offset: int, data: bytes) -> None:
    """Copy ``data`` (read at ``offset`` of ``path``) into the archive; a disk error there fails the run
    with a plain message, before anything is stored, so its cursor never moves past uncopied lines."""
    target = archive_path(source, path.name, file_identity(stat))
    try:
        _write_archive(target, path, offset, data)
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        failed = ArchiveWriteFailed(
            f"cannot keep the raw copy of {path.name} in {target.parent}: {why.lower()}; nothing of this run was "
            "stored and its cursor did not move: the next run reads these lines again"
        )
        failed.errno = exc.errno
        raise failed from exc


def _write_archive(target: Path, path: Path, offset: int, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("r+b" if target.exists() else "wb") as copy:
        size = copy.seek(0, os.SEEK_END)
        if size < offset:  # archiving was turned on part-way through the file: copy its start too
            with path.open("rb") as original:
                original.seek(size)
                copy.write(original.read(offset - size))
        copy.seek(offset)
        copy.write(data)
