"""What the agent knows about how it is doing, shared by its threads and kept in the spool for ``status``."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from daqbroker_agent.spool import Spool

STATE_KEY = "state"


class AgentState:
    """Last upload, last error (with what it concerned) and the clock offset; written through to the spool.

    ``problems`` holds the current error per area ("upload", "auth", "config", "source:<name>", "spool"),
    so a problem that went away is cleared while the others stay; ``last_error`` is the most recent one.
    """

    def __init__(self, spool: Spool):
        self.spool = spool
        self._lock = threading.Lock()
        self._saved_at = -1e18
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

    def _save(self) -> None:
        self._saved_at = time.monotonic()
        try:
            self.spool.put(STATE_KEY, self.data)
        except Exception:  # the state is informative: never let saving it stop an upload
            logging.getLogger("daqbroker_agent").debug("could not save the agent state", exc_info=True)

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
