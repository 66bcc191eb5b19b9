"""What collection writes to the log: one line per failed run with its reason (a traceback only for an
unexpected exception), a routine run at DEBUG, and at INFO only what a person wants to know. Captured from
real runs: in-process through ``collect_source`` (as the Celery task calls it) with ``caplog``, and from a
real Celery worker and beat on the real broker, whose whole output is read back."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from collection.choices import RunStatus
from collection.collectors import COLLECTORS
from collection.models import CollectionRun
from collection.services.collect import collect_source
from conftest import celery_argv, wait_for
from instruments.models import DataSource
from instruments.tests.factories import make_channel, make_instrument, make_source

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def _lines(count: int, *, bad: int = 0) -> str:
    rows = [f"{(T0 + timedelta(seconds=i)).isoformat()},{20 + i / 10:.1f}" for i in range(count)]
    rows += [f"{(T0 + timedelta(seconds=count + i)).isoformat()},not-a-number" for i in range(bad)]
    return "time,temp\n" + "".join(row + "\n" for row in rows)


def _file_source(folder: Path, content: str) -> DataSource:
    folder.mkdir(exist_ok=True)
    (folder / "station.csv").write_text(content)
    config = {
        "path": str(folder),
        "pattern": "*.csv",
        "header_lines": 1,
        "columns": ["time", "temp"],
        "timestamp": {"columns": ["time"]},
    }
    source = make_source(make_instrument(), config=config)
    make_channel(source.instrument, slug=f"temp{source.pk}", source=source, source_field="temp")
    return source


def _break_config(source: DataSource) -> None:
    # Saved behind the admin's back (an older release, a hand-edited row): the run must refuse it.
    DataSource.objects.filter(pk=source.pk).update(config={**source.config, "max_lines": -3})


def _collection_records(caplog, level: int = logging.DEBUG) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("collection") and r.levelno >= level]


@pytest.mark.django_db
def test_a_configuration_error_is_one_warning_line_without_traceback(tmp_path, caplog):
    source = _file_source(tmp_path / "logger", _lines(3))
    _break_config(source)
    caplog.set_level(logging.DEBUG)
    run = collect_source(source.pk)
    assert run is not None and run.status == RunStatus.FAILED
    records = _collection_records(caplog, logging.INFO)
    assert [r.getMessage() for r in records] == [
        f"collection of source {source.pk} failed: configuration: max_lines: must be at least 1"
    ]
    assert records[0].levelno == logging.WARNING
    assert not records[0].exc_info


@pytest.mark.django_db
def test_a_missing_folder_is_one_warning_line_without_traceback(tmp_path, caplog):
    source = _file_source(tmp_path / "logger", _lines(3))
    DataSource.objects.filter(pk=source.pk).update(config={**source.config, "path": str(tmp_path / "gone")})
    caplog.set_level(logging.DEBUG)
    run = collect_source(source.pk)
    assert run is not None and run.status == RunStatus.FAILED
    records = _collection_records(caplog, logging.INFO)
    assert len(records) == 1, [r.getMessage() for r in records]
    assert records[0].getMessage().startswith(f"collection of source {source.pk} failed: ")
    assert run.error in records[0].getMessage()
    assert not records[0].exc_info


class _BrokenCollector:
    """A collector with a bug in it: what nobody expected, so its traceback must be logged."""

    def collect(self, source, config, channels):
        return {}["no such key"]


@pytest.mark.django_db
def test_an_unexpected_exception_is_logged_with_its_traceback(tmp_path, caplog, monkeypatch):
    source = _file_source(tmp_path / "logger", _lines(3))
    monkeypatch.setitem(COLLECTORS, source.kind, _BrokenCollector())
    caplog.set_level(logging.DEBUG)
    run = collect_source(source.pk)
    assert run is not None and run.status == RunStatus.FAILED
    records = _collection_records(caplog, logging.INFO)
    assert len(records) == 1
    assert records[0].getMessage() == f"collection of source {source.pk} failed: KeyError: 'no such key'"
    assert records[0].exc_info is not None and records[0].exc_info[0] is KeyError


@pytest.mark.django_db
def test_a_routine_run_logs_at_debug_only(tmp_path, caplog):
    source = _file_source(tmp_path / "logger", _lines(3))
    caplog.set_level(logging.DEBUG)
    run = collect_source(source.pk)
    assert run.status == RunStatus.SUCCESS and run.accepted == 3
    assert _collection_records(caplog, logging.INFO) == []
    assert [r.getMessage() for r in _collection_records(caplog)] == [
        f"source {source.pk} collected: 3 stored, 0 duplicate(s), 0 quarantined"
    ]


@pytest.mark.django_db
def test_quarantined_readings_are_info(tmp_path, caplog):
    source = _file_source(tmp_path / "logger", _lines(2, bad=1))
    caplog.set_level(logging.DEBUG)
    run = collect_source(source.pk)
    assert run.status == RunStatus.SUCCESS and (run.accepted, run.rejected) == (2, 1)
    assert [(r.levelno, r.getMessage()) for r in _collection_records(caplog)] == [
        (logging.INFO, f"source {source.pk}: 2 stored, 0 duplicate(s), 1 quarantined (see Rejected samples)")
    ]


@pytest.mark.django_db
def test_a_source_working_again_says_so_at_info(tmp_path, caplog):
    source = _file_source(tmp_path / "logger", _lines(3))
    good_config = dict(source.config)
    _break_config(source)
    assert collect_source(source.pk).status == RunStatus.FAILED
    DataSource.objects.filter(pk=source.pk).update(config=good_config, next_run_at=None)
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    assert collect_source(source.pk).status == RunStatus.SUCCESS
    assert [(r.levelno, r.getMessage()) for r in _collection_records(caplog)] == [
        (
            logging.INFO,
            f"source {source.pk} collected again after 1 failed run(s): 3 stored, 0 duplicate(s), 0 quarantined",
        )
    ]


# --- a real worker and beat ------------------------------------------------------------------------------

CHATTER = re.compile(r"Task .* received|succeeded in [0-9.]+s|Sending due task|Traceback")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_worker_and_beat_log_one_line_per_failed_run_and_nothing_per_routine_run(tmp_path, service_env, start_process):
    broken = _file_source(tmp_path / "broken", _lines(3))
    _break_config(broken)
    good = _file_source(tmp_path / "good", _lines(5))
    DataSource.objects.filter(pk__in=[broken.pk, good.pk]).update(interval_seconds=1)
    (tmp_path / "var").mkdir()
    env = {**service_env, "DAQBROKER_LOG_LEVEL": "INFO"}
    # --loglevel is Celery's own knob; the LOGGING setting (DAQBROKER_LOG_LEVEL) must rule regardless.
    worker = start_process("worker", celery_argv("worker", "--concurrency", "1", "--loglevel", "DEBUG"), env)
    beat = start_process("beat", celery_argv("beat", "--loglevel", "DEBUG"), env)

    def good_runs() -> int:
        return CollectionRun.objects.filter(source=good, status=RunStatus.SUCCESS).count()

    wait_for(
        lambda: good_runs() >= 3 and CollectionRun.objects.filter(source=broken, status=RunStatus.FAILED).exists(),
        timeout=120,
        message="three runs of the good source and a failed run of the broken one",
    )
    worker.stop()
    beat.stop()
    failed = CollectionRun.objects.filter(source=broken, status=RunStatus.FAILED).count()
    worker_log, beat_log = worker.log_path.read_text(), beat.log_path.read_text()
    failure_lines = [line for line in worker_log.splitlines() if f"collection of source {broken.pk} failed" in line]
    assert len(failure_lines) == failed, worker_log
    assert failure_lines[0].endswith(
        f"WARNING collection.services.collect: collection of source {broken.pk} failed: "
        "configuration: max_lines: must be at least 1"
    )
    assert CHATTER.findall(worker_log) == [], worker_log
    assert CHATTER.findall(beat_log) == [], beat_log
    assert f"source {good.pk}" not in worker_log  # routine runs are DEBUG
