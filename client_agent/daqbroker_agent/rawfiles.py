"""Shipping the raw files an agent follows into the server's archive (docs/raw-files.md).

For each source of the server's configuration that reads files with ``"archive": true``, every file
matching its pattern that has stayed unchanged for the source's ``final_line_after`` seconds (a logger done
with it) is shipped once per content: its sha256 is announced (``POST /api/v1/agent/raw-files/``), and
unless the server already holds that content (from any agent: nothing is sent twice) its bytes follow in
chunks (``PUT /api/v1/agent/raw-files/<sha256>/?offset=N``) from the offset the server names. An upload
cut short (the server or the agent stopped, the network gone) resumes from what the server has, never
from the start. A file that changes while it is sent is left for the next round; one that changes after
it was shipped is shipped again as a new content. What was shipped is remembered in the spool, so a
restarted agent does not hash every file again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from daqbroker_agent.client import ApiClient, ServerUnreachable
from daqbroker_agent.sources import SourceSpec
from daqbroker_agent.spool import Spool
from daqbroker_agent.tail import DEFAULT_FINAL_LINE_AFTER

log = logging.getLogger("daqbroker_agent.rawfiles")
ANNOUNCE_PATH = "/api/v1/agent/raw-files/"
CHUNK_PATH = "/api/v1/agent/raw-files/{sha256}/?offset={offset}"
SHIPPED_KEY = "raw_shipped:{key}"
READ_BYTES = 256 * 1024
MAX_CHUNK = 1024 * 1024  # never more per request, whatever the server says
FILES_PER_ROUND = 100  # per source: a folder of thousands of files is shipped over several rounds


class ShipFailed(Exception):
    pass


def archived_sources(specs: Iterable[SourceSpec]) -> list[tuple[int, SourceSpec]]:
    """(server source id, spec) of the server's file sources configured with ``archive``."""
    found = []
    for spec in specs:
        if spec.kind == "file" and spec.collect.get("archive") and spec.key.startswith("server:"):
            found.append((int(spec.key.removeprefix("server:")), spec))
    return found


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(READ_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


class RawShipper:
    def __init__(self, spool: Spool, client: ApiClient, stop: threading.Event | None = None):
        self.spool, self.client = spool, client
        self.stop = stop or threading.Event()

    def ship_round(self, specs: Iterable[SourceSpec], now: float | None = None) -> int:
        """Ship every settled, not yet shipped file of the archived sources; how many were shipped."""
        shipped = 0
        for source_id, spec in archived_sources(specs):
            shipped += self.ship_source(source_id, spec, time.time() if now is None else now)
        return shipped

    def ship_source(self, source_id: int, spec: SourceSpec, now: float) -> int:
        config = spec.collect
        folder = Path(config["path"])
        settle = config.get("final_line_after") or DEFAULT_FINAL_LINE_AFTER
        key = SHIPPED_KEY.format(key=spec.key)
        done: dict[str, list] = self.spool.get(key) or {}
        try:
            candidates = sorted(p for p in folder.glob(config.get("pattern", "*")) if p.is_file())
        except OSError as exc:
            log.warning("%s: cannot list %s for the raw archive: %s", spec.name, folder, exc)
            return 0
        shipped = 0
        seen: dict[str, list] = {}
        for path in candidates:
            if self.stop.is_set() or shipped >= FILES_PER_ROUND:
                break
            try:
                stat = path.stat()
            except OSError:
                continue
            mark = [stat.st_size, stat.st_mtime_ns]
            previous = done.get(str(path))
            if previous and previous[:2] == mark:
                seen[str(path)] = previous
                continue
            if now - stat.st_mtime < settle:
                continue  # still being written
            try:
                digest = self.ship(source_id, path, stat.st_size, stat.st_mtime)
            except ShipFailed as exc:
                log.warning("%s: raw file %s not shipped (tried again later): %s", spec.name, path.name, exc)
                continue
            except ServerUnreachable as exc:
                log.info("raw files: server unreachable (tried again later): %s", exc)
                break
            if digest is not None:
                seen[str(path)] = [*mark, digest]
                shipped += 1
                done[str(path)] = seen[str(path)]
                self.spool.put(key, done)
        # Forget files that are gone (the map stays as large as the folder); keep those not reached this round.
        kept = {p: v for p, v in done.items() if p in seen or Path(p).exists()}
        if kept != done:
            self.spool.put(key, kept)
        return shipped

    def ship(self, source_id: int, path: Path, size: int, mtime: float) -> str | None:
        """Ship one file; its sha256 once the server holds it, None if it changed while being sent."""
        digest = sha256_of(path)
        announce = {
            "source": source_id,
            "sha256": digest,
            "size": size,
            "name": path.name,
            "path": str(path),
            "modified": datetime.fromtimestamp(mtime, UTC).isoformat(),
        }
        reply = self.client.request(
            "POST", ANNOUNCE_PATH, json.dumps(announce).encode(), {"Content-Type": "application/json"}
        )
        if reply.status != 200:
            raise ShipFailed(f"the server answered {reply.explain()}")
        state = reply.json()
        chunk = max(1, min(int(state.get("chunk_bytes") or MAX_CHUNK), MAX_CHUNK))
        with path.open("rb") as handle:
            while state.get("status") != "stored":
                if self.stop.is_set():
                    return None  # resumed from the server's offset next time
                offset = int(state["offset"])
                handle.seek(offset)
                data = handle.read(chunk)
                if not data:
                    return None  # shorter than announced: it changed; hashed again next round
                reply = self.client.request(
                    "PUT",
                    CHUNK_PATH.format(sha256=digest, offset=offset),
                    data,
                    {"Content-Type": "application/octet-stream"},
                )
                if reply.status == 409:  # the server has another offset (an answer lost): go on from there
                    state = {"status": "partial", "offset": reply.json()["offset"]}
                    continue
                if reply.status == 422:
                    return None  # the bytes changed while being sent: hashed again next round
                if reply.status != 200:
                    raise ShipFailed(f"the server answered {reply.explain()}")
                state = reply.json()
        log.info("raw file %s (%s bytes) is in the server's archive", path.name, f"{size:,}")
        return digest
