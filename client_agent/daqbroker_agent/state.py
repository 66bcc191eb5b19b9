"""What the agent knows about how it is doing, shared by its threads and kept in the spool for ``status``."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from daqbroker_agent.spool import Spool

STATE_KEY = "state"
STATUS_FILE = "agent-status.json"
STATUS_FILE_BYTES = 16384  # written in place, padded with spaces: a full disk never refuses it


class AgentState:
    """Last upload, last error (with what it concerned) and the clock offset; written through to the spool.

    ``problems`` holds the current error per area ("upload", "auth", "config", "source:<name>", "spool"),
    so a problem that went away is cleared while the others stay; ``last_error`` is the most recent one.
    """

    def __init__(self, spool: Spool):
        self.spool = spool
        self._lock = threading.Lock()
        self._saved_at = -1e18
        self._mirror: int | None = None  # the status file's descriptor, once ``mirror_to_file`` made it
        saved = spool.get(STATE_KEY, {}) or {}
        self.data: dict[str, Any] = {
            "last_upload": saved.get("last_upload"),
            "last_error": saved.get("last_error", ""),
            "last_error_at": saved.get("last_error_at"),
            "clock_offset": saved.get("clock_offset"),
            "last_heartbeat": saved.get("last_heartbeat"),
            "problems": {},
            "pid": None,
            "started": None,
        }

    SAVE_EVERY = 1.0  # seconds: routine updates (each upload) are written at most this often

    def mirror_to_file(self) -> None:
        """Also write the state to ``agent-status.json`` beside the spool, a file of fixed size made now and
        rewritten in place: when the spool's disk is full and its database refuses every write, ``status``
        still reads the truth there (the agent alive, and why it cannot spool)."""
        path = self.spool.directory / STATUS_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return
        try:
            if os.fstat(fd).st_size < STATUS_FILE_BYTES:
                os.pwrite(fd, b" " * STATUS_FILE_BYTES, 0)  # allocated now, while there is room
        except OSError:
            os.close(fd)
            return
        self._mirror = fd

    def close(self) -> None:
        if self._mirror is not None:
            os.close(self._mirror)
            self._mirror = None

    def _save(self) -> None:
        self._saved_at = time.monotonic()
        self.data["saved_at"] = time.time()
        try:
            self.spool.put(STATE_KEY, self.data)
        except Exception:  # the state is informative: never let saving it stop an upload
            logging.getLogger("daqbroker_agent").debug("could not save the agent state", exc_info=True)
        if self._mirror is not None:
            payload = json.dumps(self.data, default=str).encode()
            if len(payload) <= STATUS_FILE_BYTES:
                with suppress(OSError):
                    os.pwrite(self._mirror, payload.ljust(STATUS_FILE_BYTES), 0)

    def update(self, **values: Any) -> None:
        with self._lock:
            self.data.update(values)
            if time.monotonic() - self._saved_at >= self.SAVE_EVERY:
                self._save()

    def flush(self) -> None:
        with self._lock:
            self._save()

    def problem(self, area: str, message: str) -> None:
        with self._lock:
            self.data["problems"][area] = message
            self.data["last_error"] = f"{area}: {message}"
            self.data["last_error_at"] = time.time()
            self._save()

    def resolved(self, area: str) -> bool:
        """Forget the problem of ``area``; True if there was one."""
        with self._lock:
            had = self.data["problems"].pop(area, None) is not None
            if had:
                if not self.data["problems"]:
                    self.data["last_error"] = ""
                self._save()
            return had

    def current_problems(self) -> dict[str, str]:
        with self._lock:
            return dict(self.data["problems"])

    def get(self, key: str) -> Any:
        with self._lock:
            return self.data.get(key)


def read_state(spool: Spool) -> dict:
    """The agent's state as last saved: from the spool, or from the status file when that is newer (the
    spool's database could not be written)."""
    try:
        saved = spool.get(STATE_KEY, {}) or {}
    except Exception:
        saved = {}
    try:
        mirrored = json.loads(Path(spool.directory, STATUS_FILE).read_bytes() or b"{}")
    except (OSError, ValueError):
        mirrored = {}
    if isinstance(mirrored, dict) and (mirrored.get("saved_at") or 0) > (saved.get("saved_at") or 0):
        return mirrored
    return saved


class RateLimitedLog:
    """Logs a repeated message at most once per ``every`` seconds, saying how often it was suppressed."""

    def __init__(self, logger: logging.Logger, every: float = 60.0):
        self.logger, self.every = logger, every
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def log(self, level: int, key: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -1e18) < self.every:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += f" ({suppressed} more like this since the last message)"
        self.logger.log(level, message, *args)
