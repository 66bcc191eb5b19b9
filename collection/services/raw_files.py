"""The raw-file archive for agents: content-addressed, resumable, deduplicated (docs/raw-files.md).

An agent ships a finished file it follows in three steps, each a small request:

1. ``begin``: the file's sha256, size, name, path and modification time. If the server holds that content
   already (from any agent, any source), the file is recorded at once and nothing is sent: ``stored``.
   Otherwise the answer says how many bytes the server has of it (0, or what an interrupted upload left).
2. ``append``: the next chunk (at most ``CHUNK_BYTES``) at the offset the server named, written to the
   upload's own part file. A chunk at another offset is refused with the offset wanted (409), so an agent
   that lost an answer simply asks again.
3. When the last byte arrives the part is hashed; the content must match the sha256 announced (else it is
   discarded and the upload starts again), and is moved into place by one atomic rename.

Contents live at ``DAQBROKER_ARCHIVE_DIR/sha256/<ab>/<sha256>``, beside the server's own raw copies
(``collection.collectors.file.archive_path``); parts at ``DAQBROKER_ARCHIVE_DIR/uploads/agent-<id>/``.
Every request's memory is bounded by a chunk; hashing and downloads stream the files.
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts import audit
from accounts.choices import AuditAction
from accounts.models import Agent
from collection.models import RawFile, RawUpload
from instruments.choices import SourceKind
from instruments.models import DataSource, Instrument

CHUNK_BYTES = 1024 * 1024  # the largest chunk accepted (below Django's 2.5 MB body limit)
READ_BYTES = 256 * 1024  # hashing and zipping read this much at a time
MAX_ZIP_FILES = 1000
ABANDONED_AFTER = timedelta(days=7)  # an upload untouched this long is forgotten (its part deleted)
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class RawFileRefused(Exception):
    """The request cannot be honoured; ``status`` is the HTTP status that says why."""

    def __init__(self, message: str, status: int = 400, **extra):
        super().__init__(message)
        self.status = status
        self.extra = extra


@dataclass(frozen=True)
class UploadState:
    stored: bool
    received: int
    size: int
    raw_file: RawFile | None = None

    def payload(self) -> dict:
        body: dict = {
            "status": "stored" if self.stored else "partial",
            "offset": self.received,
            "size": self.size,
            "chunk_bytes": CHUNK_BYTES,
        }
        if self.raw_file is not None:
            body["id"] = self.raw_file.pk
        return body


def archive_root() -> Path:
    return Path(settings.DAQBROKER_ARCHIVE_DIR)


def blob_path(sha256: str) -> Path:
    if not SHA256.match(sha256):
        raise ValueError(f"not a sha256: {sha256!r}")
    return archive_root() / "sha256" / sha256[:2] / sha256


def part_path(agent_id: int, sha256: str) -> Path:
    return archive_root() / "uploads" / f"agent-{agent_id}" / f"{sha256}.part"


def agent_source(agent: Agent, source_id: int, collectable: QuerySet[Instrument]) -> DataSource | None:
    """The agent's own source of kind agent, on an instrument it may collect to; None for anything else."""
    return (
        DataSource.objects.filter(pk=source_id, agent=agent, kind=SourceKind.AGENT, instrument__in=collectable)
        .select_related("instrument")
        .first()
    )


def _record(upload_like: RawUpload, instrument_id: int, source_id: int | None, agent_id: int) -> RawFile:
    try:
        with transaction.atomic():
            raw_file, _ = RawFile.objects.get_or_create(
                instrument_id=instrument_id,
                path=upload_like.path,
                sha256=upload_like.sha256,
                defaults={
                    "source_id": source_id,
                    "agent_id": agent_id,
                    "name": upload_like.name,
                    "size": upload_like.size,
                    "modified": upload_like.modified,
                },
            )
    except IntegrityError:  # recorded by a concurrent request meanwhile
        raw_file = RawFile.objects.get(instrument_id=instrument_id, path=upload_like.path, sha256=upload_like.sha256)
    return raw_file


def begin(
    agent: Agent,
    *,
    source: DataSource,
    sha256: str,
    size: int,
    name: str,
    path: str,
    modified: datetime,
    collectable: QuerySet[Instrument] | None = None,
) -> UploadState:
    """Announce a file; ``stored`` at once when its content is already here and the agent may know it.

    A sha256 is not proof that the agent has the bytes (it may have read it somewhere): the upload is
    skipped only when the content is already recorded on an instrument the agent collects to
    (``collectable``; default: the source's). Otherwise the bytes are sent and checked, and still kept
    once: the rename replaces a content by the same bytes."""
    sha256 = sha256.lower()
    if not SHA256.match(sha256):
        raise RawFileRefused("sha256 must be 64 hexadecimal digits.")
    limit = settings.DAQBROKER_RAW_FILE_MAX_BYTES
    if size > limit:
        raise RawFileRefused(f"The file has {size} bytes; this server keeps raw files up to {limit} bytes.", status=413)
    _forget_abandoned(agent)
    fields = {"source": source, "size": size, "name": name, "path": path, "modified": modified}
    if collectable is None:
        collectable = Instrument.objects.filter(pk=source.instrument_id)
    known = RawFile.objects.filter(sha256=sha256, size=size, instrument__in=collectable).exists()
    if known and blob_path(sha256).exists():
        done = RawUpload(agent=agent, sha256=sha256, **fields)
        raw_file = _record(done, source.instrument_id, source.pk, agent.pk)
        # Still there now that a file names it? The archive's clean-up may have set it aside just before
        # (clean_archive): then the bytes are sent again, as for a content the server never had.
        if blob_path(sha256).exists():
            RawUpload.objects.filter(agent=agent, sha256=sha256).delete()
            part_path(agent.pk, sha256).unlink(missing_ok=True)
            return UploadState(True, size, size, raw_file)
    with transaction.atomic():
        upload = RawUpload.objects.select_for_update().filter(agent=agent, sha256=sha256).first()
        if upload is None or upload.size != size:
            RawUpload.objects.filter(agent=agent, sha256=sha256).delete()
            part_path(agent.pk, sha256).unlink(missing_ok=True)
            try:
                with transaction.atomic():
                    upload = RawUpload.objects.create(agent=agent, sha256=sha256, **fields)
            except IntegrityError:  # the same content announced twice at once: the other goes on
                raise RawFileRefused("This content is being announced by another request: ask again.", 409) from None
        else:
            # The same content under a newer name, path or source: the latest announcement wins.
            for key, value in fields.items():
                setattr(upload, key, value)
            upload.received = _part_size(agent.pk, sha256)
            upload.save()
    return UploadState(False, upload.received, size)


def _part_size(agent_id: int, sha256: str) -> int:
    try:
        return part_path(agent_id, sha256).stat().st_size
    except FileNotFoundError:
        return 0


def append(agent: Agent, sha256: str, offset: int, data: bytes) -> UploadState:
    """Write ``data`` at ``offset`` of the upload; when complete, verify and keep it."""
    sha256 = sha256.lower()
    if len(data) > CHUNK_BYTES:
        raise RawFileRefused(f"A chunk holds at most {CHUNK_BYTES} bytes.", status=413)
    with transaction.atomic():
        upload = RawUpload.objects.select_for_update().filter(agent=agent, sha256=sha256).first()
        if upload is None:
            raise RawFileRefused("No upload of this content is in progress for this agent: begin it first.", status=404)
        part = part_path(agent.pk, sha256)
        have = _part_size(agent.pk, sha256)
        if offset != have:
            raise RawFileRefused(f"Expected the chunk at offset {have}.", status=409, offset=have)
        if have + len(data) > upload.size:
            raise RawFileRefused(f"The file was announced with {upload.size} bytes.", status=413, offset=have)
        if not data and have < upload.size:
            raise RawFileRefused("An empty chunk.", offset=have)
        part.parent.mkdir(parents=True, exist_ok=True)
        # No fsync per chunk: the offset is the part's size on disk, and the sha256 check at the end
        # catches a part a crash left short or damaged (it is then sent again); one fsync before the rename.
        with part.open("ab") as handle:
            handle.write(data)
        upload.received = have + len(data)
        upload.save(update_fields=["received", "updated"])
        if upload.received < upload.size:
            return UploadState(False, upload.received, upload.size)
        done = _complete(agent, upload, part)
    if done is None:  # raised only now: the upload's row is deleted with its part
        raise RawFileRefused(
            "The bytes received do not have the sha256 announced: discarded, send the file again.", status=422
        )
    return done


def _complete(agent: Agent, upload: RawUpload, part: Path) -> UploadState | None:
    digest = hashlib.sha256()
    with part.open("rb") as handle:
        while chunk := handle.read(READ_BYTES):
            digest.update(chunk)
        os.fsync(handle.fileno())
    if digest.hexdigest() != upload.sha256:
        part.unlink(missing_ok=True)
        upload.delete()
        return None
    target = blob_path(upload.sha256)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, target)  # atomic: a content is either whole under its name or absent
    source = upload.source
    raw_file = _record(upload, source.instrument_id, source.pk, agent.pk)
    upload.delete()
    return UploadState(True, upload.size, upload.size, raw_file)


def _forget_abandoned(agent: Agent) -> None:
    for old in RawUpload.objects.filter(agent=agent, updated__lt=timezone.now() - ABANDONED_AFTER):
        part_path(agent.pk, old.sha256).unlink(missing_ok=True)
        old.delete()


# -- reading back ------------------------------------------------------------------------------------


def open_content(raw_file: RawFile):
    """The file's bytes (a binary file object); FileNotFoundError if the archive lost them."""
    return blob_path(raw_file.sha256).open("rb")


class _Sink:
    """A write-only, unseekable file object whose writes are handed out in pieces (zipfile writes into it)."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []

    def write(self, data: bytes, /) -> int:
        self.pieces.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.pieces)
        self.pieces.clear()
        return out


def zip_stream(raw_files: Iterable[RawFile]) -> Iterator[bytes]:
    """A zip of the files, produced piece by piece: memory is bounded by a read, whatever the sizes.

    Names are ``<instrument>/<name>``; the same name twice gets ``-<sha256 prefix>`` before its suffix.
    """
    sink = _Sink()
    seen: set[str] = set()
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        for raw_file in raw_files:
            name = f"{raw_file.instrument.slug}/{raw_file.name}"
            if name in seen:
                stem, dot, suffix = raw_file.name.rpartition(".")
                tagged = f"{stem}-{raw_file.sha256[:8]}.{suffix}" if dot else f"{raw_file.name}-{raw_file.sha256[:8]}"
                name = f"{raw_file.instrument.slug}/{tagged}"
            seen.add(name)
            stamp = max(timezone.localtime(raw_file.modified).timetuple()[:6], (1980, 1, 1, 0, 0, 0))  # zip's epoch
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.file_size = raw_file.size
            with open_content(raw_file) as source, archive.open(info, mode="w", force_zip64=True) as entry:
                while chunk := source.read(READ_BYTES):
                    entry.write(chunk)
                    if sink.pieces:
                        yield sink.take()
            yield sink.take()
    yield sink.take()


# -- the server's own raw copies ---------------------------------------------------------------------


@dataclass(frozen=True)
class ServerCopy:
    """A raw copy the server keeps of a file one of its own file sources reads (``"archive": true``), at
    ``DAQBROKER_ARCHIVE_DIR/<instrument>/source-<id>/<tag>-<name>`` (``collection.collectors.file``): it
    grows as the file is read, so it has no content address; it is named by its source and file name."""

    source: DataSource
    name: str
    path: Path
    size: int
    modified: datetime


def _copy_folders(source: DataSource) -> list[Path]:
    # Under the instrument's slug when the copy was written: a renamed instrument's older copies are under
    # its old slug. A source id names one source, whichever folder holds it.
    root = archive_root()
    try:
        return [p for p in root.glob(f"*/source-{source.pk}") if p.is_dir() and not p.is_symlink()]
    except OSError:
        return []


def server_copies(instrument: Instrument, query: str = "") -> list[ServerCopy]:
    """The instrument's sources' raw copies on this server, newest first (``query``: in the name)."""
    found: list[ServerCopy] = []
    for source in DataSource.objects.filter(instrument=instrument).order_by("pk"):
        for folder in _copy_folders(source):
            with os.scandir(folder) as entries:
                for entry in entries:
                    if not entry.is_file(follow_symlinks=False) or (query and query.lower() not in entry.name.lower()):
                        continue
                    stat = entry.stat(follow_symlinks=False)
                    modified = datetime.fromtimestamp(stat.st_mtime, tz=timezone.get_current_timezone())
                    found.append(ServerCopy(source, entry.name, Path(entry.path), stat.st_size, modified))
    found.sort(key=lambda copy: (copy.modified, copy.name), reverse=True)
    return found


def server_copy(instrument: Instrument, source_id: int, name: str) -> ServerCopy | None:
    """One raw copy of the instrument's source ``source_id`` named ``name``; None for anything else (another
    instrument's source, a name with a folder in it, a symbolic link, a file that is not there)."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
        return None
    source = DataSource.objects.filter(instrument=instrument, pk=source_id).first()
    if source is None:
        return None
    for folder in _copy_folders(source):
        path = folder / name
        try:
            stat = path.lstat()
        except OSError:
            continue
        if path.is_symlink() or not path.is_file():
            continue
        modified = datetime.fromtimestamp(stat.st_mtime, tz=timezone.get_current_timezone())
        return ServerCopy(source, name, path, stat.st_size, modified)
    return None


def has_server_copies(instrument: Instrument) -> bool:
    return any(
        any(folder.iterdir())
        for source in DataSource.objects.filter(instrument=instrument)
        for folder in _copy_folders(source)
    )


# -- the archive's clean-up --------------------------------------------------------------------------

GRACE = timedelta(hours=1)  # a content or copy written this recently is never removed (an upload finishing)
COLLECTING = ".collecting"  # a content set aside while the clean-up checks nothing names it
DELETE_BATCH = 1000


@dataclass
class CleanUp:
    files_deleted: int = 0  # RawFile rows past the retention
    contents_removed: int = 0  # blobs no RawFile names, nor an upload in progress
    bytes_freed: int = 0
    copies_removed: int = 0  # the server's own raw copies past the retention
    uploads_forgotten: int = 0  # uploads untouched for ABANDONED_AFTER (their parts deleted)


def _in_use(sha256: str) -> bool:
    return RawFile.objects.filter(sha256=sha256).exists() or RawUpload.objects.filter(sha256=sha256).exists()


def clean_archive(now: datetime | None = None) -> CleanUp:
    """Keep the archive to what is named (docs/raw-files.md#clean-up); safe to run twice, and beside uploads.

    1. Raw files received more than ``DAQBROKER_RAW_FILE_DAYS`` ago (when set) are deleted, audited per
       instrument, and so are the server's own copies not written to for as long.
    2. Uploads untouched for ``ABANDONED_AFTER`` are forgotten (row and part).
    3. A content (``sha256/<ab>/<sha256>``) is removed only when no raw file names it, no upload of it is in
       progress, and it was not written within ``GRACE``: it is first renamed aside, then checked again, and
       put back if anything named it meanwhile. ``begin`` checks a known content is still there after
       naming it (else the bytes are sent again), so a file is never left naming removed bytes.
    """

    now = now or timezone.now()
    result = CleanUp()
    days = settings.DAQBROKER_RAW_FILE_DAYS
    if days:
        cutoff = now - timedelta(days=days)
        for instrument_id in (
            RawFile.objects.filter(received__lt=cutoff).values_list("instrument_id", flat=True).distinct()
        ):
            instrument = Instrument.objects.get(pk=instrument_id)
            while ids := list(
                RawFile.objects.filter(instrument=instrument, received__lt=cutoff).values_list("pk", flat=True)[
                    :DELETE_BATCH
                ]
            ):
                with transaction.atomic():
                    deleted, _ = RawFile.objects.filter(pk__in=ids).delete()
                    audit.record(
                        AuditAction.RAW_FILES_DELETED,
                        obj=instrument,
                        changes={"reason": "retention", "retention_days": days, "deleted": deleted},
                    )
                result.files_deleted += deleted
        result.copies_removed = _expire_server_copies(cutoff.timestamp())
    for old in RawUpload.objects.filter(updated__lt=now - ABANDONED_AFTER):
        part_path(old.agent_id, old.sha256).unlink(missing_ok=True)
        old.delete()
        result.uploads_forgotten += 1
    _sweep_contents(now - GRACE, result)
    return result


def _sweep_contents(written_before: datetime, result: CleanUp) -> None:
    root = archive_root() / "sha256"
    if not root.is_dir():
        return
    latest = written_before.timestamp()
    for shard in sorted(root.iterdir()):
        if not shard.is_dir() or shard.is_symlink():
            continue
        for path in sorted(shard.iterdir()):
            name = path.name
            aside = name.endswith(COLLECTING)
            sha256 = name.removesuffix(COLLECTING)
            if not SHA256.match(sha256) or sha256[:2] != shard.name or not path.is_file():
                continue  # not a content (someone else's file): left alone
            if aside:  # a clean-up stopped between setting aside and deciding: decide now
                _decide(path, shard / sha256, result)
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if stat.st_mtime >= latest or _in_use(sha256):
                continue
            held = shard / (sha256 + COLLECTING)
            try:
                os.rename(path, held)  # from now on begin() sees the content missing
            except FileNotFoundError:
                continue
            _decide(held, path, result)


def _decide(held: Path, path: Path, result: CleanUp) -> None:
    sha256 = path.name
    if _in_use(sha256):  # named meanwhile (begin, or an upload that finished): put back
        if not path.exists():
            os.rename(held, path)
        else:
            held.unlink(missing_ok=True)  # an upload finished meanwhile wrote the same bytes
        return
    size = held.stat().st_size
    held.unlink(missing_ok=True)
    result.contents_removed += 1
    result.bytes_freed += size


def _expire_server_copies(written_before: float) -> int:
    """The server's own raw copies not written to since ``written_before`` (a POSIX time): removed."""
    removed = 0
    root = archive_root()
    if not root.is_dir():
        return 0
    for folder in root.glob("*/source-*"):
        if not folder.is_dir() or folder.is_symlink() or folder.parent.name in ("sha256", "uploads"):
            continue
        for path in folder.iterdir():
            try:
                if path.is_file() and not path.is_symlink() and path.stat().st_mtime < written_before:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
    return removed
