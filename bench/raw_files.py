#!/usr/bin/env python
"""The raw-file archive's two heavy paths, in process, beside plain baselines measured in the same run.

1. Completing an upload: ``raw_files.append`` of 1 MiB chunks (one transaction each) ending in the sha256 check
   and the rename, against a baseline writing the same bytes to a file in 1 MiB writes with one fsync.
2. The zip of a selection: ``raw_files.zip_stream`` (deflated, streamed), against ``zipfile`` writing the
   same files to a file on disk; with the peak of Python memory (tracemalloc) while streaming, which
   stays near a read (256 KB) whatever the files' sizes.

    .venv/bin/python bench/raw_files.py             # 3 files of 32 MiB of logger-like text
    .venv/bin/python bench/raw_files.py --mib 8

No database rows are written: the upload runs against an in-memory SQLite database made for the run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
import tracemalloc
import zipfile
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def logger_text(mib: int, seed: int) -> bytes:
    line = b"2026-12-01T00:00:%02d,%d.%03d,%d\n"
    out = bytearray()
    i = seed
    while len(out) < mib * 1024 * 1024:
        out += line % (i % 60, i % 97, (i * 7919) % 1000, i % 13)
        i += 1
    return bytes(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=32)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-raw-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "daqbroker_site.settings")
    os.environ.update(DAQBROKER_DEBUG="true", DAQBROKER_DATA_DIR=str(tmp / "var"), DATABASE_URL="sqlite:///:memory:")
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    settings.DAQBROKER_ARCHIVE_DIR = tmp / "archive"
    call_command("migrate", verbosity=0)
    from accounts import services
    from collection.models import RawFile
    from collection.services import raw_files
    from instruments.choices import SourceKind
    from instruments.models import DataSource
    from instruments.tests.factories import make_instrument, make_user

    owner = make_user("bench")
    instrument = make_instrument(owner, slug="bench-station")
    agent, _ = services.create_agent(owner=owner, name="bench-pc", instruments=[instrument])
    collect = {"kind": "file", "path": "/data", "archive": True, "columns": ["time", "t"]}
    source = DataSource.objects.create(
        instrument=instrument, name="logger", kind=SourceKind.AGENT, agent=agent, config={"collect": collect}
    )
    contents = [logger_text(args.mib, seed) for seed in (1, 2, 3)]
    total = sum(len(c) for c in contents)
    chunk = raw_files.CHUNK_BYTES

    # Baseline 1: the same bytes written plainly, 1 MiB at a time, one fsync per file.
    start = time.perf_counter()
    for n, content in enumerate(contents):
        with (tmp / f"plain-{n}").open("wb") as handle:
            for offset in range(0, len(content), chunk):
                handle.write(content[offset : offset + chunk])
            handle.flush()
            os.fsync(handle.fileno())
    plain = time.perf_counter() - start

    start = time.perf_counter()
    for n, content in enumerate(contents):
        sha = hashlib.sha256(content).hexdigest()
        raw_files.begin(
            agent, source=source, sha256=sha, size=len(content), name=f"day{n}.csv", path=f"/data/day{n}.csv",
            modified=datetime.now(UTC),
        )  # fmt: skip
        for offset in range(0, len(content), chunk):
            raw_files.append(agent, sha, offset, content[offset : offset + chunk])
    upload = time.perf_counter() - start

    files = list(RawFile.objects.select_related("instrument"))
    start = time.perf_counter()
    with zipfile.ZipFile(tmp / "baseline.zip", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for raw in files:
            archive.write(raw_files.blob_path(raw.sha256), f"{instrument.slug}/{raw.name}")
    baseline_zip = time.perf_counter() - start

    tracemalloc.start()
    start = time.perf_counter()
    size = sum(len(piece) for piece in raw_files.zip_stream(files))
    streamed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    mib = total / 1024 / 1024
    print(f"{len(contents)} files, {mib:.0f} MiB of logger text (the machine is shared: expect ±30 %)")
    print(f"upload (1 MiB chunks, sha256 check, one fsync): {mib / upload:6.1f} MiB/s;"
          f" plain write {mib / plain:6.1f} MiB/s; ratio {plain / upload:.2f}")  # fmt: skip
    print(f"zip streamed: {mib / streamed:7.1f} MiB/s ({size / total:.0%} of the input); zipfile to disk "
          f"{mib / baseline_zip:7.1f} MiB/s; ratio {baseline_zip / streamed:.2f}")  # fmt: skip
    print(f"peak Python memory while streaming the zip: {peak / 1024:.0f} KiB (the files: {total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
