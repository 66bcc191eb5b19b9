"""Issue 15, point 5 (wrong dates) on a corpus of logger-style files (``collection/tests/corpus/``), through
real collection runs (``collect_source``, the call the Celery task makes): a CR1000-style array CSV with
year / day-of-year / unpadded hhmm and -7999 sentinels (one line with 1,600 leading blanks, the last line
without a newline), a TOA5 file with four header lines, a fixed-width 5-minute file, a daily file whose
year is only in its header, and the CR1000 file rewritten with a corrected column.

Each file is copied into the source's folder with its modification time set to when its logger wrote it
(the last reading's time), as a real logger's file has, unless a test says otherwise."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from collection.choices import Quality, RunStatus
from collection.models import CollectionRun, RejectedSample, Sample
from collection.services import collect
from daqbroker_agent.parsing import datetime_to_us
from instruments.models import DataSource
from instruments.tests.factories import make_channel, make_instrument, make_source

pytestmark = pytest.mark.django_db

CORPUS = Path(__file__).parent / "corpus"
MAY6 = datetime(2024, 5, 6, tzinfo=UTC)  # day 127 of 2024


def at(hours: float = 0, minutes: float = 0, days: int = 0) -> int:
    return datetime_to_us(MAY6 + timedelta(days=days, hours=hours, minutes=minutes))


def copy(name: str, folder: Path, *, as_name: str | None = None, written: datetime | None = None) -> Path:
    """Copy a corpus file into ``folder``; its modification time is ``written`` (default: 7 May 2024)."""
    target = folder / (as_name or name)
    shutil.copyfile(CORPUS / name, target)
    moment = (written or MAY6 + timedelta(days=1, minutes=5)).timestamp()
    os.utime(target, (moment, moment))
    return target


@pytest.fixture
def folder(tmp_path) -> Path:
    path = tmp_path / "logger"
    path.mkdir()
    return path


def source_with(folder: Path, channels: dict[str, dict], **config) -> tuple[DataSource, dict]:
    source = make_source(make_instrument(), config={"path": str(folder), **config})
    made = {
        slug: make_channel(source.instrument, slug=slug, source=source, source_field=field.pop("field", slug), **field)
        for slug, field in channels.items()
    }
    return source, made


def run(source: DataSource) -> CollectionRun:
    done = collect.collect_source(source.pk)
    assert done is not None and done.status in (RunStatus.SUCCESS, RunStatus.WARNING), done and done.error
    return done


def stored(channel) -> list[tuple[int, float, int]]:
    return list(Sample.objects.filter(channel=channel).order_by("ts").values_list("ts", "value", "quality"))


def reasons(source: DataSource) -> list[str]:
    return list(RejectedSample.objects.filter(source_id=source.pk).order_by("pk").values_list("reason", flat=True))


CR1000 = {
    "pattern": "CR1000_*.dat",
    "columns": ["id", "year", "doy", "hhmm", "airtc", "rh"],
    "timestamp": {"columns": ["year", "doy", "hhmm"], "format": "year_doy_hhmm"},
}
CR1000_TIMES = [at(0, 0), at(0, 10), at(1, 0), at(10, 0), at(14, 30), at(days=1)]  # 2400: midnight ending the day


def test_cr1000_array_csv_unpadded_hhmm_sentinels_blanks_and_a_last_line_without_newline(folder):
    copy("CR1000_Table1.dat", folder)
    source, ch = source_with(folder, {"airtc": {}, "rh": {"missing_values": [-7999]}}, **CR1000)
    first = run(source)
    assert first.status == RunStatus.SUCCESS, first.error
    assert (first.accepted, first.rejected, first.duplicates, first.conflicts) == (12, 0, 0, 0)
    assert [ts for ts, _, _ in stored(ch["airtc"])] == CR1000_TIMES  # 10 is 00:10 and 100 is 01:00
    assert [v for _, v, _ in stored(ch["airtc"])] == [12.5, 12.4, 12.1, 18.5, 21.5, 13.0]
    ok, missing = Quality.OK, Quality.MISSING
    assert [q for _, _, q in stored(ch["rh"])] == [ok, missing, ok, ok, missing, ok]
    assert run(source).accepted == 0  # the unterminated last line is read once


def test_a_cr1000_file_rewritten_with_a_corrected_column_keeps_the_stored_values_and_quarantines_the_others(folder):
    copy("CR1000_Table1.dat", folder)
    source, ch = source_with(folder, {"airtc": {}, "rh": {"missing_values": [-7999]}}, **CR1000)
    run(source)
    copy("CR1000_Table1.corrected.dat", folder, as_name="CR1000_Table1.dat")  # a new file: read from its start
    again = run(source)
    assert (again.accepted, again.duplicates, again.conflicts) == (0, 10, 2)
    assert [v for _, v, _ in stored(ch["airtc"])] == [12.5, 12.4, 12.1, 18.5, 21.5, 13.0]
    assert sorted(r for r in reasons(source) if r.startswith("conflict")) == [
        "conflict: 12.3 differs from the stored 12.1 at 2024-05-06T01:00:00+00:00",
        "conflict: 21.9 differs from the stored 21.5 at 2024-05-06T14:30:00+00:00",
    ]


def test_toa5_with_four_header_lines(folder):
    copy("TOA5_Table1.dat", folder)
    source, ch = source_with(
        folder,
        {"airtc": {"field": "AirTC_Avg"}, "rh": {"field": "RH"}},
        pattern="TOA5_*.dat",
        header_lines=4,
        columns=["TIMESTAMP", "RECORD", "AirTC_Avg", "RH", "BP_mbar"],
        timestamp={"columns": ["TIMESTAMP"], "format": "%Y-%m-%d %H:%M:%S"},
    )
    done = run(source)
    assert done.status == RunStatus.SUCCESS, done.error
    assert [(ts, v) for ts, v, _ in stored(ch["airtc"])] == [(at(10, 0), 18.52), (at(10, 1), 18.61), (at(10, 2), 18.7)]
    assert [(ts, v) for ts, v, _ in stored(ch["rh"])] == [(at(10, 0), 62.1), (at(10, 2), 61.7)]
    assert reasons(source) == ["value is not a finite number (NaN or infinity)"]  # "NAN", kept with its reason


def test_fixed_width_five_minute_file(folder):
    copy("CRN05_2024.txt", folder, written=MAY6 + timedelta(minutes=25))
    source, ch = source_with(
        folder,
        {"t_calc": {"field": "t", "missing_values": [-9999]}},
        pattern="CRN05_*.txt",
        format="fixed_width",
        colspecs=[[0, 5], [6, 14], [15, 19], [19, 27]],
        columns=["wbanno", "date", "time", "t"],
        timestamp={"columns": ["date", "time"], "format": "%Y%m%d %H%M"},
    )
    done = run(source)
    assert done.status == RunStatus.SUCCESS, done.error
    assert stored(ch["t_calc"]) == [
        (at(0, 5), 14.2, Quality.OK),
        (at(0, 10), 14.3, Quality.OK),
        (at(0, 15), -9999.0, Quality.MISSING),
        (at(0, 20), 14.6, Quality.OK),
    ]


DAILY = {
    "pattern": "daily_*.txt",
    "header_lines": 2,
    "delimiter": " ",
    "columns": ["doy", "hhmm", "temp"],
    "timestamp": {"columns": ["doy", "hhmm"], "format": "doy_hhmm", "year_pattern": r"Year:\s*(\d{4})"},
}


def test_a_daily_file_whose_year_is_only_in_its_header(folder):
    copy("daily_127.txt", folder)
    source, ch = source_with(folder, {"temp": {}}, **DAILY)
    done = run(source)
    assert done.status == RunStatus.SUCCESS, done.error
    assert [ts for ts, _, _ in stored(ch["temp"])] == [at(0, 10), at(1, 0), at(days=1)]  # never 1900


def test_a_daily_file_without_its_year_is_quarantined_with_the_reason_never_dated_1900(folder):
    copy("daily_noyear.txt", folder)
    source, ch = source_with(folder, {"temp": {}}, **DAILY)
    done = run(source)
    assert done.status == RunStatus.WARNING and "nothing stored" in done.error
    assert stored(ch["temp"]) == []
    assert reasons(source) == [
        "line not parsed: the time has no year and none is known: no header line of the file matches "
        "timestamp.year_pattern"
    ]


def test_a_fixed_year_for_day_of_year_files(folder):
    copy("daily_noyear.txt", folder)
    config = {**DAILY, "timestamp": {"columns": ["doy", "hhmm"], "format": "doy_hhmm", "year": 2024}}
    source, ch = source_with(folder, {"temp": {}}, **config)
    assert run(source).accepted == 1
    assert stored(ch["temp"]) == [(at(0, 10), 12.4, Quality.OK)]


def test_readings_outside_the_plausible_window_are_quarantined_with_the_reason(folder):
    copy("CR1000_Table1.dat", folder)
    source, ch = source_with(folder, {"airtc": {}}, **CR1000, not_before="2024-05-06T01:00:00", not_after="2024-05-06")
    done = run(source)
    assert done.accepted == 3 and done.rejected == 3
    assert [ts for ts, _, _ in stored(ch["airtc"])] == [at(1, 0), at(10, 0), at(14, 30)]
    assert reasons(source) == [
        "line not parsed: time 2024-05-06T00:00:00+00:00 is before this source's not_before (2024-05-06T01:00:00)",
        "line not parsed: time 2024-05-06T00:10:00+00:00 is before this source's not_before (2024-05-06T01:00:00)",
        "line not parsed: time 2024-05-07T00:00:00+00:00 is after this source's not_after (2024-05-06)",
    ]
    kept = RejectedSample.objects.filter(source_id=source.pk).order_by("pk").first()
    assert kept.context["file"].endswith("CR1000_Table1.dat") and kept.context["line"] == 1


def test_a_year_1900_is_refused_by_the_default_window(folder):
    (folder / "old.csv").write_text("1900 127 1430,21.5\n2024 127 1430,21.5\n")
    source, _ = source_with(folder, {"temp": {"field": "1"}}, pattern="*.csv", timestamp={"format": "%Y %j %H%M"})
    done = run(source)
    assert (done.accepted, done.rejected) == (1, 1)
    assert reasons(source) == [
        "line not parsed: time 1900-05-07T14:30:00+00:00 is before this source's not_before (1970-01-01)"
    ]


def test_a_run_whose_readings_lie_more_than_a_year_from_the_files_modification_time_is_a_warning(folder):
    path = copy("CR1000_Table1.dat", folder, written=datetime.now(UTC))  # 2024 readings in a file written now
    source, _ = source_with(folder, {"airtc": {}}, **CR1000)
    done = run(source)
    assert done.status == RunStatus.WARNING
    # Stored: the warning asks a person to look, it loses nothing (the unterminated last line of a file
    # written just now waits for final_line_after).
    assert done.accepted == 5
    assert "CR1000_Table1.dat: readings from 2024-05-06 to 2024-05-06 lie more than a year from the file's " in (
        done.error
    )
    assert "is the year right" in done.error
    # The same readings in a file written when they were taken: no doubt.
    os.utime(path, (MAY6.timestamp() + 86_400, MAY6.timestamp() + 86_400))
    other, _ = source_with(folder, {"airtc2": {"field": "airtc"}}, **CR1000)
    assert run(other).status == RunStatus.SUCCESS
