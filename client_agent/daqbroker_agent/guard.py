"""What this agent lets the server's configuration make it do on this machine.

The server decides who may configure an agent's sources (its owner and administrators); the machine's
owner decides, in the agent's own configuration file, what any configuration may do here:

* ``allow_commands = true`` lets the server assign ``command`` sources (off by default);
* ``allowed_paths`` lists the folders file sources may read and the serial devices serial (and Modbus RTU)
  sources may open (empty by default: no file or serial-device source from the server). Paths are compared after
  following symlinks, so a link inside an allowed folder does not lead out of it.

Sources written in the agent's own configuration file are the machine owner's own choice and are not
limited. A refused source is not run, and the agent reports it in its heartbeat (``refused_sources``), so
the server's admin shows why.
"""

from __future__ import annotations

import os
from pathlib import Path


def within(path: str | os.PathLike, allowed: tuple[str, ...] | list[str]) -> bool:
    """Whether ``path``, symlinks followed, is one of ``allowed`` or inside one of them."""
    real = Path(os.path.realpath(path))
    for entry in allowed:
        root = Path(os.path.realpath(entry))
        if real == root or root in real.parents:
            return True
    return False


def refusal(collect: dict, *, allow_commands: bool, allowed_paths: tuple[str, ...]) -> str:
    """Why this agent will not collect ``collect`` (a source's validated ``collect`` settings), or ""."""
    kind = collect.get("kind")
    listed = ", ".join(allowed_paths) or "none"
    if kind == "command" and not allow_commands:
        return "commands are not enabled on this host (allow_commands in the agent's configuration file)"
    if kind == "file":
        pattern = str(collect.get("pattern") or "*")
        if os.path.isabs(pattern) or ".." in Path(pattern).parts:
            return f"the pattern {pattern!r} may not be absolute or contain '..'"
        if not within(collect["path"], allowed_paths):
            return f"the folder {collect['path']} is not under this agent's allowed_paths ({listed})"
    serial = kind == "serial" or (kind == "modbus" and collect.get("transport") == "rtu")
    if serial and "://" not in collect["url"] and not within(collect["url"], allowed_paths):
        return f"the serial device {collect['url']} is not in this agent's allowed_paths ({listed})"
    return ""
