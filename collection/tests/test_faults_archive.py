"""Fault: the disk of the raw-file archive (``DAQBROKER_ARCHIVE_DIR``) fills during a file collection run
(a real tmpfs). The run is recorded as failed with a plain message, nothing is stored and the cursor does
not move; once space is freed the next run stores every reading exactly once and completes the copy.

Needs root for the small disk (``mount -t tmpfs``): skipped with the reason otherwise, run under CI=true.
"""

from __future__ import annotations

import pytest

from collection.choices import RunStatus
from collection.collectors.file import archive_path
from collection.models import Sample
from collection.services.collect import collect_source
from collection.tests.test_file_collector import HEADER, expected_temps, line, station, temps, write  # noqa: F401

pytestmark = pytest.mark.django_db

LINES = 20_000  # about 1 MB of CSV


def test_a_full_archive_disk_fails_the_run_plainly_and_loses_nothing(station, settings, small_disk):  # noqa: F811
    disk = small_disk("archive", 4 << 20)
    settings.DAQBROKER_ARCHIVE_DIR = disk.path
    source, ch = station(archive=True, max_lines=100_000)
    path = station.folder / "weather.csv"
    write(path, [HEADER] + [line(i) for i in range(LINES)])
    disk.fill(leave=64 << 10)

    run = collect_source(source.pk)
    assert run.status == RunStatus.FAILED
    assert run.error.startswith("ArchiveWriteFailed: cannot keep the raw copy of weather.csv in ")
    assert "no space left on device; nothing of this run was stored and its cursor did not move" in run.error
    source.refresh_from_db()
    assert source.cursor == {} and source.consecutive_failures == 1
    assert not Sample.objects.filter(channel__in=[ch["temp"], ch["rh"]]).exists()

    disk.release()
    source.next_run_at = None
    source.save(update_fields=["next_run_at"])
    run = collect_source(source.pk)
    assert run.status == RunStatus.SUCCESS, run.error
    assert (run.accepted, run.duplicates) == (3 * LINES, 0)  # temp, rh and status of every line, once
    assert temps(ch["temp"]) == expected_temps(range(LINES))
    stat = path.stat()
    assert archive_path(source, "weather.csv", f"{stat.st_dev}:{stat.st_ino}").read_bytes() == path.read_bytes()
