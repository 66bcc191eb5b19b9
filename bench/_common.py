"""Small helpers the benchmark scripts share (they import it as ``_common``: ``bench/`` is on their path)."""

from __future__ import annotations

import socket
import sys
import time


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60, what: str = "gunicorn") -> None:
    """Return once something accepts connections on ``port``; exit with a message after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not start within {timeout:.0f} s")
