"""The machine's health, as the agent reports it in every heartbeat (``docs/agent.md``, "Node health").

Standard library only (the agent installs without psutil): the load average (``os.getloadavg``), memory
from ``/proc/meminfo`` (Linux; elsewhere ``None`` — the figure is left out, never guessed), the disk holding
the spool (``shutil.disk_usage``), and the spool's depth and the age of its oldest waiting reading. Each
figure that cannot be read is ``None``: the server stores what it gets and no more.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

MEMINFO = Path("/proc/meminfo")


def load_average() -> float | None:
    """The 1-minute load average divided by the number of CPUs (1.0: every core busy); None if unknown."""
    try:
        one, _, _ = os.getloadavg()
    except (AttributeError, OSError):  # not on Windows
        return None
    return round(one / (os.cpu_count() or 1), 4)


def memory(meminfo: Path = MEMINFO) -> tuple[int | None, float | None]:
    """(bytes available, percent used) from ``/proc/meminfo``; (None, None) where there is none."""
    try:
        text = meminfo.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None, None
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name.strip()] = int(parts[0]) * 1024  # kB
    total = fields.get("MemTotal")
    available = fields.get("MemAvailable", fields.get("MemFree"))
    if not total or available is None:
        return None, None
    return available, round(100.0 * (total - available) / total, 3)


def disk(directory: Path) -> tuple[int | None, float | None]:
    """(bytes free, percent used) of the file system holding ``directory``; (None, None) if unknown."""
    try:
        usage = shutil.disk_usage(directory)
    except OSError:
        return None, None
    used = 100.0 * (usage.total - usage.free) / usage.total if usage.total else None
    return usage.free, None if used is None else round(used, 3)


def node_health(spool_directory: Path, *, depth: int, oldest_us: int | None, now: float | None = None) -> dict:
    """The figures sent in the heartbeat's ``health`` object (every one may be None)."""
    now = time.time() if now is None else now
    available, memory_used = memory()
    free, disk_used = disk(spool_directory)
    return {
        "cpu_load": load_average(),
        "memory_available_bytes": available,
        "memory_used_percent": memory_used,
        "spool_disk_free_bytes": free,
        "spool_disk_used_percent": disk_used,
        "spool_depth": depth,
        "spool_oldest_age_seconds": None if oldest_us is None else round(max(0.0, now - oldest_us / 1e6), 3),
    }
