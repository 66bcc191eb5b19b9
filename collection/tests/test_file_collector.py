"""The file collector, run in-process through ``collect_source`` (the same call the Celery task makes), on
real files that grow, rotate, get truncated or replaced: exactly the expected readings, never twice."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from collection.choices import Quality, RunStatus
from collection.collectors.file import archive_path
from collection.models import CollectionRun, RejectedSample, Sample, TextSample
from collection.services.collect import collect_source
from daqbroker_agent.parsing import datetime_to_us
from instruments.choices import ChannelKind
from instruments.models import DataSource
from instruments.tests.factories import make_channel, make_instrument, make_source

pytestmark = pytest.mark.django_db

# Recent: a file's readings lie near its modification time (else the run is a warning: a wrong year?).
T0 = (datetime.now(UTC) - timedelta(days=2)).replace(hour=7, minute=0, second=0, microsecond=0)
HEADER = "time,temp,rh,status"


def stamp(i: int) -> str:
    return (T0 + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")


def us(i: int) -> int:
    return datetime_to_us(T0 + timedelta(seconds=i))


def line(i: int) -> str:
    return f"{stamp(i)},{20 + i / 10:.1f},{40 + i},OK{i}"


def write(path: Path, lines: list[str], mode: str = "a", newline: str = "\n") -> None:
    with path.open(mode, encoding="utf-8", newline="") as handle:
        handle.write("".join(text + newline for text in lines))


@pytest.fixture
def station(tmp_path):
    folder = tmp_path / "logger"
    folder.mkdir()
    instrument = make_instrument()

    def make(**config):
        config = {
            "path": str(folder),
            "pattern": "weather*.csv",
            "header_lines": 1,
            "columns": ["time", "temp", "rh", "status"],
            "timestamp": {"columns": ["time"]},
            **config,
        }
        source = make_source(instrument, config=config)
        channels = {
            "temp": make_channel(instrument, slug=f"temp{source.pk}", source=source, source_field="temp"),
            "rh": make_channel(
                instrument, slug=f"rh{source.pk}", source=source, source_field="rh", missing_values=[-9999]
            ),
            "status": make_channel(
                instrument, slug=f"status{source.pk}", source=source, source_field="status", kind=ChannelKind.TEXT
            ),
        }
        return source, channels

    make.folder = folder
    return make


def collect(source: DataSource) -> CollectionRun:
    run = collect_source(source.pk)
    assert run is not None
    assert run.status == RunStatus.SUCCESS, run.error
    source.refresh_from_db()
    return run


def temps(channel) -> list[tuple[int, float]]:
    return list(Sample.objects.filter(channel=channel).order_by("ts").values_list("ts", "value"))


def expected_temps(indices) -> list[tuple[int, float]]:
    return [(us(i), round(20 + i / 10, 1)) for i in indices]


def test_a_growing_file_is_read_line_by_line_as_it_grows(station):
    source, ch = station()
    path = station.folder / "weather.csv"
    write(path, [HEADER, line(0), line(1), line(2)])
    run = collect(source)
    assert (run.accepted, run.duplicates, run.rejected) == (9, 0, 0)
    assert temps(ch["temp"]) == expected_temps(range(3))
    assert list(TextSample.objects.filter(channel=ch["status"]).order_by("ts").values_list("value", flat=True)) == [
        "OK0",
        "OK1",
        "OK2",
    ]

    # Two more lines and half of a third: the half line waits for its end.
    with path.open("a") as handle:
        handle.write(line(3) + "\n" + line(4) + "\n" + line(5)[:12])
    run = collect(source)
    assert run.accepted == 6
    assert temps(ch["temp"]) == expected_temps(range(5))
    assert source.cursor["files"]["weather.csv"]["lines"] == 6  # the header and five lines

    with path.open("a") as handle:
        handle.write(line(5)[12:] + "\n")
    collect(source)
    assert temps(ch["temp"]) == expected_temps(range(6))

    run = collect(source)  # nothing new
    assert (run.accepted, run.duplicates, run.rejected) == (0, 0, 0)
    assert Sample.objects.filter(channel__in=[ch["temp"], ch["rh"]]).count() == 12


def test_a_rotated_file_has_its_tail_read_before_the_new_file(station):
    source, ch = station()
    path = station.folder / "weather.csv"
    write(path, [HEADER, line(0), line(1)])
    collect(source)
    write(path, [line(2), line(3)])  # written just before rotation, not yet collected
    path.rename(station.folder / "weather.csv.1")  # no longer matches weather*.csv
    write(path, [HEADER, line(4), line(5)], mode="w")
    run = collect(source)
    assert (run.accepted, run.duplicates) == (12, 0)
    assert temps(ch["temp"]) == expected_temps(range(6))
    assert set(source.cursor["files"]) == {"weather.csv", "weather.csv.1"}

    (station.folder / "weather.csv.1").unlink()  # logrotate's last step: forgotten with the file
    write(path, [line(6)])
    collect(source)
    assert set(source.cursor["files"]) == {"weather.csv"}
    assert temps(ch["temp"]) == expected_temps(range(7))


def test_a_truncated_file_is_read_again_from_its_start(station):
    source, ch = station()
    path = station.folder / "weather.csv"
    write(path, [HEADER, *(line(i) for i in range(5))])
    collect(source)
    write(path, [HEADER, line(10)], mode="w")  # truncated in place, shorter than the offset
    assert path.stat().st_size < source.cursor["files"]["weather.csv"]["offset"]
    run = collect(source)
    assert (run.accepted, run.duplicates) == (3, 0)
    assert temps(ch["temp"]) == expected_temps([0, 1, 2, 3, 4, 10])


def test_a_file_rewritten_in_place_beyond_the_old_offset_is_recognised_by_its_first_bytes(station):
    source, ch = station()
    path = station.folder / "weather.csv"
    write(path, [HEADER, line(0), line(1)])
    collect(source)
    inode = path.stat().st_ino
    # Truncated and refilled between two runs: same inode, larger than the old offset.
    write(path, [HEADER, *(line(i) for i in range(20, 30))], mode="w")
    assert path.stat().st_ino == inode
    collect(source)
    assert temps(ch["temp"]) == expected_temps([0, 1, *range(20, 30)])


def test_a_replaced_file_is_read_from_its_start_and_known_lines_are_not_stored_twice(station):
    source, ch = station()
    path = station.folder / "weather.csv"
    write(path, [HEADER, line(0), line(1)])
    collect(source)
    replacement = station.folder / "incoming.tmp"
    write(replacement, [HEADER, line(0), line(1), line(2)])
    os.replace(replacement, path)  # a new file (new inode) under the old name, repeating two lines
    run = collect(source)
    assert (run.accepted, run.duplicates) == (3, 6)
    assert temps(ch["temp"]) == expected_temps(range(3))


def test_a_file_rewritten_with_a_corrected_column_reports_the_corrections_as_conflicts(station):
    """A logger file whose temperature column was wrong is rewritten corrected and read again: the
    corrected values are conflicts (quarantined with the stored value), not swallowed as duplicates."""
    source, ch = station()
    path = station.folder / "weather.csv"
    write(path, [HEADER, line(0), line(1), line(2)])
    collect(source)
    corrected = [f"{stamp(i)},{30 + i / 10:.1f},{40 + i},OK{i}" for i in range(3)]  # temp fixed; rh, status same
    replacement = station.folder / "incoming.tmp"
    write(replacement, [HEADER, *corrected, line(3)])
    os.replace(replacement, path)  # a new file under the old name: read from its start
    run = collect(source)
    assert (run.accepted, run.duplicates, run.conflicts, run.rejected) == (3, 6, 3, 0)
    assert temps(ch["temp"]) == expected_temps(range(4)), "the stored values stay until corrected on purpose"
    kept = RejectedSample.objects.filter(source=source, channel=ch["temp"]).order_by("raw_time")
    assert [(r.raw_value, r.context["stored_value"], r.context["line"]) for r in kept] == [
        ("30.0", 20.0, 2),
        ("30.1", 20.1, 3),
        ("30.2", 20.2, 4),
    ]
    assert kept[0].reason == f"conflict: 30.0 differs from the stored 20.0 at {T0.isoformat()}"
    assert kept[0].context["file"] == str(path)


def test_several_files_share_the_run_budget_and_the_rest_waits_for_the_next_run(station):
    source, ch = station(max_lines=5)
    older, newer = station.folder / "weather-1.csv", station.folder / "weather-2.csv"
    write(older, [HEADER, *(line(i) for i in range(4))])
    write(newer, [HEADER, *(line(i) for i in range(4, 8))])
    an_hour_ago = time.time() - 3600
    os.utime(older, (an_hour_ago, an_hour_ago))
    run = collect(source)
    assert run.accepted == 5 * 3  # the four lines of the older file, then one of the newer (headers do not count)
    assert source.next_run_at <= run.finished_at  # more is waiting: due again at once
    collect(source)
    assert temps(ch["temp"]) == expected_temps(range(8))
    assert source.cursor["files"]["weather-2.csv"]["lines"] == 5


def test_lines_that_do_not_parse_are_quarantined_with_file_and_line_and_the_rest_is_stored(station):
    source, ch = station()
    path = station.folder / "weather.csv"
    write(path, [HEADER, line(0), "ERR sensor bus timeout", "", f"{stamp(1)},abc,41,OK", line(2), "garbage,1,2,3"])
    run = collect(source)
    assert temps(ch["temp"]) == expected_temps([0, 2])
    assert run.rejected == 3
    rejected = {(r.context.get("line"), r.reason) for r in RejectedSample.objects.filter(source=source)}
    assert rejected == {
        (3, "line not parsed: timestamp 'ERR sensor bus timeout' is not an ISO 8601 time"),
        (7, "line not parsed: timestamp 'garbage' is not an ISO 8601 time"),
        (5, "value is not a number, and the channel is numeric"),  # found by ingest, with its line too
    }
    assert RejectedSample.objects.filter(context__line=3, context__file=str(path)).exists()
    assert RejectedSample.objects.get(context__line=5, context__file=str(path)).raw_value == "abc"
    # The good fields of the line with a bad temperature are kept.
    assert Sample.objects.filter(channel=ch["rh"], ts=us(1), value=41).exists()


def test_nul_bytes_in_a_file_are_quarantined_and_the_run_goes_on(station):
    """Line noise with NUL bytes (which PostgreSQL cannot store) must not stall the source."""
    source, ch = station()
    path = station.folder / "weather.csv"
    write(path, [HEADER, line(0), "\x00\x00\x00", f"{stamp(1)},21.0,41,ST\x00UCK", line(2)])
    run = collect(source)
    assert temps(ch["temp"]) == sorted([*expected_temps([0, 2]), (us(1), 21.0)])
    assert run.rejected == 2
    assert source.cursor["files"]["weather.csv"]["lines"] == 5  # read past the noise: nothing to retry
    kept = {r.raw_value: r.reason for r in RejectedSample.objects.filter(source=source)}
    assert kept["\\x00\\x00\\x00"].startswith("line not parsed")
    assert kept["ST\\x00UCK"] == "text value contains a NUL character (shown as \\x00)"
    stuck = RejectedSample.objects.get(raw_value="ST\\x00UCK")
    assert stuck.context == {"file": str(path), "line": 4}
    assert [
        t for _, t in TextSample.objects.filter(channel=ch["status"]).order_by("ts").values_list("ts", "value")
    ] == [
        "OK0",
        "OK2",
    ]


def test_sentinels_and_valid_ranges_flag_readings(station):
    source, ch = station()
    ch["temp"].valid_max = 20.05
    ch["temp"].save()
    write(station.folder / "weather.csv", [HEADER, line(0), line(1), f"{stamp(2)},19.9,-9999,OK"])
    collect(source)
    assert list(Sample.objects.filter(channel=ch["temp"]).order_by("ts").values_list("quality", flat=True)) == [
        Quality.OK,
        Quality.OUT_OF_RANGE,
        Quality.OK,
    ]
    assert Sample.objects.get(channel=ch["rh"], ts=us(2)).quality == Quality.MISSING


def test_fixed_width_file_with_a_sentinel(station):
    source, ch = station(
        pattern="*.dat",
        header_lines=0,
        format="fixed_width",
        colspecs=[[0, 20], [20, 28], [28, 36], [36, 44]],
        columns=["time", "temp", "rh", "status"],
    )
    rows = [
        f"{stamp(0)}{'21.50':>8}{'40.00':>8}{'OK':>8}",
        f"{stamp(1)}{'21.60':>8}{'-9999':>8}{'OK':>8}",
        f"{stamp(2)}{'21.70':>8}",  # short: rh and status missing
    ]
    write(station.folder / "met.dat", rows)
    run = collect(source)
    assert temps(ch["temp"]) == [(us(0), 21.5), (us(1), 21.6), (us(2), 21.7)]
    assert list(Sample.objects.filter(channel=ch["rh"]).order_by("ts").values_list("value", "quality")) == [
        (40.0, Quality.OK),
        (-9999.0, Quality.MISSING),
    ]
    assert run.rejected == 2  # rh and status missing from the short line


def test_year_day_of_year_and_hhmm_columns(station):
    source, ch = station(
        pattern="*.dat",
        header_lines=0,
        columns=["id", "year", "doy", "hhmm", "temp"],
        timestamp={"format": "year_doy_hhmm", "columns": ["year", "doy", "hhmm"], "timezone": "Etc/GMT+1"},
    )
    ch["rh"].delete()
    ch["status"].delete()
    year, doy = T0.year, T0.timetuple().tm_yday
    write(station.folder / "array.dat", [f"101,{year},{doy},1430,21.5", f"101,{year},{doy},2400,21.0"])
    collect(source)
    day = T0.replace(hour=0)
    assert temps(ch["temp"]) == [
        (datetime_to_us(day + timedelta(hours=15, minutes=30)), 21.5),  # 14:30 at UTC-1
        (datetime_to_us(day + timedelta(days=1, hours=1)), 21.0),
    ]


def test_crlf_lines_and_a_header_are_handled(station):
    source, ch = station()
    write(station.folder / "weather.csv", [HEADER, line(0), line(1)], newline="\r\n")
    collect(source)
    assert temps(ch["temp"]) == expected_temps(range(2))
    assert list(TextSample.objects.filter(channel=ch["status"]).values_list("value", flat=True)) == ["OK0", "OK1"]


def test_raw_files_are_archived_as_read(station, settings, tmp_path):
    settings.DAQBROKER_ARCHIVE_DIR = tmp_path / "archive"
    source, _ = station(archive=True)
    path = station.folder / "weather.csv"
    write(path, [HEADER, line(0)])
    collect(source)
    with path.open("a") as handle:
        handle.write(line(1) + "\nhalf a li")
    collect(source)
    stat = path.stat()
    copy = archive_path(source, "weather.csv", f"{stat.st_dev}:{stat.st_ino}")
    assert copy.read_bytes() == f"{HEADER}\n{line(0)}\n{line(1)}\n".encode()


def test_a_channel_naming_an_unknown_column_fails_the_run_and_backs_off(station):
    source, ch = station()
    ch["rh"].source_field = "humidity"
    ch["rh"].save()
    write(station.folder / "weather.csv", [HEADER, line(0)])
    run = collect_source(source.pk)
    assert run.status == RunStatus.FAILED
    assert f"channel {ch['rh'].slug}: field 'humidity' is neither a column name" in run.error
    source.refresh_from_db()
    assert source.consecutive_failures == 1
    assert source.cursor == {}  # nothing was committed
    first_delay = source.next_run_at - run.finished_at
    run = collect_source(source.pk)
    source.refresh_from_db()
    assert source.consecutive_failures == 2
    assert source.next_run_at - run.finished_at > first_delay


def test_a_missing_folder_fails_the_run_with_a_message(station, tmp_path):
    missing = tmp_path / "nonexistent" / "logger"
    source, _ = station(path=str(missing))
    run = collect_source(source.pk)
    assert run.status == RunStatus.FAILED
    assert run.error == f"FileNotFoundError: folder {missing} does not exist or is not a folder"
