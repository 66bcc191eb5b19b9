"""Fault: files rotated while the server's file collector was not running (real files, real collection
runs). ``rot.csv`` -> ``rot.csv.1`` (with an unread tail), later a new ``rot.csv`` of 10,000 lines ->
``rot.csv.2``, and a new ``rot.csv``: after the restart every line of every file is stored exactly once.
A file that vanished with bytes never read is reported on the run with the byte range lost.
"""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

import pytest

from collection.choices import RunStatus
from collection.models import CollectionRun, Sample
from collection.services.collect import collect_source
from instruments.models import Channel, DataSource
from instruments.tests.factories import make_channel, make_instrument, make_source

pytestmark = pytest.mark.django_db

# s since 1970: line i is at T0 + i s, value i / 10. Recent: a file's readings lie near its modification time.
T0 = (int(time.time()) // 86_400 - 2) * 86_400


class Logger:
    """An instrument's logger writing ``rot.csv`` in a folder, and the source that collects it."""

    def __init__(self, folder: Path, **config):
        self.folder = folder
        self.written = 0
        instrument = make_instrument()
        self.source = make_source(instrument, config={
            "path": str(folder), "pattern": "rot.csv", "columns": ["time", "temp"],
            "timestamp": {"columns": ["time"], "format": "epoch"}, **config,
        })  # fmt: skip
        self.temp = make_channel(instrument, slug="temp", source=self.source, source_field="temp")

    def write(self, n: int, name: str = "rot.csv") -> None:
        with (self.folder / name).open("a") as handle:
            handle.write("".join(f"{T0 + i},{i / 10}\n" for i in range(self.written, self.written + n)))
        self.written += n

    def rotate(self, to: str) -> None:
        os.rename(self.folder / "rot.csv", self.folder / to)

    def collect_all(self) -> list[CollectionRun]:
        """Collection runs until the source has nothing more to read (as the dispatcher would run them)."""
        runs = []
        while True:
            DataSource.objects.filter(pk=self.source.pk).update(next_run_at=None)
            run = collect_source(self.source.pk)
            assert run is not None and run.status == RunStatus.SUCCESS, run and run.error
            runs.append(run)
            self.source.refresh_from_db()
            if self.source.next_run_at is None or not run.accepted:
                return runs
            assert len(runs) < 50, "collection never caught up"

    def assert_exactly_once(self, lines: range) -> None:
        stored = list(Sample.objects.filter(channel=self.temp).order_by("ts").values_list("ts", "value"))
        assert len(stored) == len(lines)
        assert stored == [((T0 + i) * 1_000_000, i / 10) for i in lines]


def test_files_rotated_twice_while_the_collector_was_down_are_all_read_once(tmp_path):
    logger = Logger(tmp_path, max_lines=4000)
    logger.write(500)
    logger.collect_all()
    # The collector is down: the live file grows and is rotated, a new one is written and rotated too.
    logger.write(700)  # an unread tail of rot.csv
    logger.rotate("rot.csv.1")
    logger.write(10_000)
    logger.rotate("rot.csv.2")
    logger.write(300)  # the new live file
    runs = logger.collect_all()
    logger.assert_exactly_once(range(11_500))
    assert sum(run.accepted for run in runs) == 11_000
    assert sum(run.duplicates for run in runs) == 0  # no line was read twice
    assert all(not run.error for run in runs)
    # And the next run finds nothing new, then follows the live file as usual.
    assert logger.collect_all()[-1].accepted == 0
    logger.write(5)
    assert logger.collect_all()[0].accepted == 5
    logger.assert_exactly_once(range(11_505))


def test_rotated_files_there_before_following_began_are_not_read(tmp_path):
    logger = Logger(tmp_path)
    logger.write(100, name="rot.csv.3")  # history from before this source existed
    logger.written = 1000
    logger.write(10)
    runs = logger.collect_all()
    assert sum(run.accepted for run in runs) == 10
    assert not Sample.objects.filter(channel=logger.temp, ts__lt=(T0 + 1000) * 1_000_000).exists()
    logger.rotate("rot.csv.1")
    logger.write(10)
    assert sum(run.accepted for run in logger.collect_all()) == 10
    logger.assert_exactly_once(range(1000, 1020))


def test_a_custom_rotated_pattern_finds_dated_names(tmp_path):
    logger = Logger(tmp_path, rotated_pattern="archive-*.csv")
    logger.write(10)
    logger.collect_all()
    logger.write(10)
    logger.rotate("archive-20261206.csv")
    logger.write(20)
    logger.rotate("archive-20261207.csv")
    logger.collect_all()
    logger.assert_exactly_once(range(40))


def test_a_file_that_vanished_with_unread_bytes_is_reported_on_the_run(tmp_path):
    logger = Logger(tmp_path, max_lines=100)
    logger.write(150)
    first = collect_source(logger.source.pk)  # one run: 100 lines read, 50 left for the next one
    assert first.status == RunStatus.SUCCESS and first.accepted == 100
    path = tmp_path / "rot.csv"
    offset = source_offset(logger)
    size = path.stat().st_size
    logger.write(20)  # never read either
    # While the collector is down the file is rotated and compressed (logrotate's compress, no delaycompress).
    logger.rotate("rot.csv.1")
    with (tmp_path / "rot.csv.1").open("rb") as plain, gzip.open(tmp_path / "rot.csv.1.gz", "wb") as packed:
        packed.write(plain.read())
    (tmp_path / "rot.csv.1").unlink()
    logger.written = 1000
    logger.write(10)
    [run, *_] = logger.collect_all()
    assert run.status == RunStatus.SUCCESS and run.accepted == 10
    assert run.error.startswith(
        f"warning: rot.csv vanished before it was read to its end: bytes {offset:,} to {size:,} never read; "
        "it was probably compressed into rot.csv.1.gz, which cannot be followed byte by byte"
    )
    logger.assert_exactly_once([*range(100), *range(1000, 1010)])  # the loss is what the warning names
    assert logger.collect_all()[0].error == ""  # said once


def test_a_live_file_deleted_while_the_collector_was_down_is_reported(tmp_path):
    logger = Logger(tmp_path)
    logger.write(30)
    logger.collect_all()
    offset = source_offset(logger)
    (tmp_path / "rot.csv").unlink()
    logger.write(5)
    [run] = logger.collect_all()[:1]
    assert run.accepted == 5
    assert run.error == (
        f"warning: rot.csv vanished before it was read to its end: anything written after byte {offset:,} "
        "(it was the live file when last read) never read"
    )


def source_offset(logger: Logger) -> int:
    logger.source.refresh_from_db()
    return logger.source.cursor["files"]["rot.csv"]["offset"]


def test_a_bad_rotated_pattern_is_refused_at_save_time():
    config = {"path": "/data", "pattern": "rot.csv", "rotated_pattern": "../elsewhere/*"}
    source = DataSource(instrument=make_instrument(), name="logger", kind="file", config=config)
    with pytest.raises(Exception) as refused:
        source.full_clean()
    assert "must name files inside the folder" in str(refused.value)
    assert Channel.objects.count() == 0
