"""Incremental reading of delimited or regex-described text files that instruments write.

The cursor remembers, per file, its identity (device and inode), the byte offset just after the last
complete line read, and the number of lines read so far (for line numbers in quarantine). Only whole
lines are read: a line still being written is left for the next run. A file whose identity changed
(rotated or replaced) or that shrank (truncated) is read again from its start.
"""

from __future__ import annotations

from pathlib import Path

from collection.collectors.base import Collected, RawLine, lines_to_readings
from daqbroker_agent.parsing import LineParser
from instruments.models import Channel, DataSource

MAX_BYTES_PER_RUN = 32 * 1024 * 1024


class FileCollector:
    def collect(self, source: DataSource, config: dict, channels: list[Channel]) -> Collected:
        folder = Path(config["path"])
        if not folder.is_dir():
            raise FileNotFoundError(f"folder {folder} does not exist or is not a folder")
        previous = (source.cursor or {}).get("files", {})
        files = sorted(folder.glob(config["pattern"]), key=lambda p: (p.stat().st_mtime, p.name))
        parser = LineParser(config)
        budget = MAX_BYTES_PER_RUN
        lines: list[RawLine] = []
        cursor_files: dict[str, dict] = {}
        more = False
        for path in files:
            if not path.is_file():
                continue
            state, new_lines, exhausted = self._read_new_lines(path, previous.get(path.name), config, budget)
            cursor_files[path.name] = state
            lines.extend(new_lines)
            budget -= sum(len(line.text) + 1 for line in new_lines)
            more = more or not exhausted
            if budget <= 0:
                more = True
                break
        # Files that vanished are forgotten; files not reached this run keep their state.
        for name, state in previous.items():
            if name not in cursor_files and (folder / name).exists():
                cursor_files[name] = state
        batch, rejections = lines_to_readings(lines, parser, channels)
        return Collected(batch=batch, rejections=rejections, cursor={"files": cursor_files}, more=more)

    def _read_new_lines(self, path: Path, state: dict | None, config: dict, budget: int):
        stat = path.stat()
        identity = f"{stat.st_dev}:{stat.st_ino}"
        offset, line_no = 0, 0
        if state and state.get("identity") == identity and stat.st_size >= state.get("offset", 0):
            offset, line_no = state["offset"], state.get("lines", 0)
        # else: new, rotated, replaced or truncated: from the start
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read(max(budget, 0))
        exhausted = len(data) < budget  # reached the end of the file (a partial last line waits for its end)
        end = data.rfind(b"\n")
        if end < 0:
            return {"identity": identity, "offset": offset, "lines": line_no}, [], exhausted
        chunk = data[: end + 1]
        encoding = config.get("encoding", "utf-8")
        header_lines = config.get("header_lines", 0)
        lines = []
        for raw in chunk.split(b"\n")[:-1]:
            line_no += 1
            if line_no <= header_lines:
                continue
            text = raw.decode(encoding, errors="replace").rstrip("\r")
            if text.strip():
                lines.append(RawLine(text, {"file": str(path), "line": line_no}))
        return {"identity": identity, "offset": offset + len(chunk), "lines": line_no}, lines, exhausted
