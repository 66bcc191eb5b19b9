"""The first lines of a file on this machine, when the server asks (the source preview; docs/agent.md).

The server lists what it wants in the configuration (``sample_requests``: a folder, a pattern or one file
name, an encoding, and bounds). The agent reads only inside its own ``allowed_paths``, the way it would for
a file source of the server's configuration (``daqbroker_agent.guard``): the folder and the file it picks,
symlinks followed, must lie inside them. It never runs anything and reads at most ``max_lines`` lines and
``max_bytes`` bytes (never more than ``MAX_LINES`` / ``MAX_BYTES``, whatever the server says). A request
it will not or cannot serve is answered with the reason, so the page says why.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

from daqbroker_agent.guard import refusal, within

MAX_LINES = 200
MAX_BYTES = 64 * 1024


@dataclass
class SampleAnswer:
    lines: list[str] = field(default_factory=list)
    file: str = ""
    truncated: bool = False
    error: str = ""

    def payload(self) -> dict:
        if self.error:
            return {"error": self.error[:1000]}
        return {"lines": self.lines, "file": self.file, "truncated": self.truncated}


def read_sample(request: dict, allowed_paths: tuple[str, ...]) -> SampleAnswer:
    """The first lines of the newest file in ``request["path"]`` matching its pattern (or its ``file``)."""
    folder = str(request.get("path") or "")
    pattern = str(request.get("pattern") or "*")
    file_name = str(request.get("file") or "")
    if not folder:
        return SampleAnswer(error="no folder given")
    why = refusal(
        {"kind": "file", "path": folder, "pattern": pattern}, allow_commands=False, allowed_paths=allowed_paths
    )
    if why:
        return SampleAnswer(error=why)
    if file_name:
        if "/" in file_name or "\\" in file_name or file_name in (".", ".."):
            return SampleAnswer(error=f"{file_name!r} must be a file name inside the folder")
        candidates = [os.path.join(folder, file_name)]
    else:
        candidates = sorted(glob.glob(os.path.join(glob.escape(folder), pattern)), key=_mtime, reverse=True)
    candidates = [path for path in candidates if os.path.isfile(path)]
    if not candidates:
        return SampleAnswer(error=f"no file in {folder} matches {file_name or pattern!r}")
    path = candidates[0]
    if not within(path, allowed_paths):  # a symlink in the folder leading out of it
        return SampleAnswer(error=f"{path} leads outside this agent's allowed_paths")
    max_lines = min(int(request.get("max_lines") or MAX_LINES), MAX_LINES)
    max_bytes = min(int(request.get("max_bytes") or MAX_BYTES), MAX_BYTES)
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        return SampleAnswer(error=f"{path} cannot be read: {exc.strerror}")
    truncated = len(data) > max_bytes
    if truncated:
        data = data[:max_bytes]
        cut = data.rfind(b"\n")
        data = data[: cut + 1] if cut > 0 else data
    if b"\x00" in data[:8192] and "16" not in str(request.get("encoding")) and "32" not in str(request.get("encoding")):
        return SampleAnswer(error=f"{os.path.basename(path)} looks like a binary file (it holds NUL bytes)")
    try:
        text = data.decode(str(request.get("encoding") or "utf-8"), errors="replace")
    except LookupError:
        return SampleAnswer(error=f"unknown encoding {request.get('encoding')!r}")
    lines = text.splitlines()
    if len(lines) > max_lines:
        lines, truncated = lines[:max_lines], True
    # Bytes may grow when decoded with replacements: keep within the bound the server checks.
    kept, size = [], 0
    for line in lines:
        size += len(line.encode("utf-8")) + 1
        if size > max_bytes:
            truncated = True
            break
        kept.append(line)
    return SampleAnswer(lines=kept, file=os.path.basename(path), truncated=truncated)


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0
