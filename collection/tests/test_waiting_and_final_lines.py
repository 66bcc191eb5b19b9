"""Issue 15, points 1 and 2, on real files and real collection runs (``collect_source``, the call the Celery
task makes): a source no channel takes a field from is not read and waits (its cursor stays); a run that
read lines and stored nothing is a warning; the last line of a finished file is read once, never the
half-written line of a file still being written, and read again whole if the file grows after all."""

from __future__ import annotations

import os
import select
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from collection.choices import Quality, RunStatus
from collection.models import CollectionRun, RejectedSample, Sample
from collection.services import collect
from daqbroker_agent.parsing import datetime_to_us
from instruments.choices import SourceKind
from instruments.models import DataSource
from instruments.tests.factories import make_channel, make_instrument, make_source

pytestmark = pytest.mark.django_db

# Recent: a file's readings lie near its modification time (else the run is a warning: a wrong year?).
T0 = (datetime.now(UTC) - timedelta(days=2)).replace(hour=7, minute=0, second=0, microsecond=0)


def stamp(i: int) -> str:
    return (T0 + timedelta(minutes=i)).isoformat().replace("+00:00", "Z")


def us(i: int) -> int:
    return datetime_to_us(T0 + timedelta(minutes=i))


def quiet(path: Path, seconds: float) -> None:
    """Make ``path`` look unchanged for ``seconds`` (its modification time moved back)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.fixture
def folder(tmp_path) -> Path:
    path = tmp_path / "logger"
    path.mkdir()
    return path


def file_source(folder: Path, **config) -> DataSource:
    config = {"path": str(folder), "pattern": "*.csv", "columns": ["time", "temp"], **config}
    return make_source(make_instrument(), config=config)


def add_temp(source: DataSource, field: str = "temp"):
    return make_channel(source.instrument, slug=f"temp{source.pk}", source=source, source_field=field)


def run_once(source: DataSource) -> CollectionRun:
    run = collect.collect_source(source.pk)
    assert run is not None
    assert run.status in (RunStatus.SUCCESS, RunStatus.WARNING), run.error
    source.refresh_from_db()
    return run


def stored(channel) -> list[tuple[int, float]]:
    return list(Sample.objects.filter(channel=channel).order_by("ts").values_list("ts", "value"))


# --- point 1: a source never reads past what it cannot store ---------------------------------------


def test_a_source_without_channels_is_not_read_and_its_cursor_stays(folder):
    (folder / "a.csv").write_text("".join(f"{stamp(i)},{i}.5\n" for i in range(5)))
    source = file_source(folder)
    assert source.waiting_for_channels
    assert source.pk not in collect.due_sources().values_list("pk", flat=True)
    for _ in range(3):
        assert collect.collect_source(source.pk) is None
    source.refresh_from_db()
    assert source.cursor == {}
    assert not CollectionRun.objects.filter(source=source).exists()
    assert (source.lease_owner, source.lease_expires, source.last_success_at) == ("", None, None)


def test_every_line_is_stored_once_the_channels_exist(folder):
    (folder / "a.csv").write_text("".join(f"{stamp(i)},{i}.5\n" for i in range(5)))
    source = file_source(folder)
    collect.collect_source(source.pk)  # waits
    temp = add_temp(source)
    assert not DataSource.objects.get(pk=source.pk).waiting_for_channels
    assert source.pk in collect.due_sources().values_list("pk", flat=True)
    run = run_once(source)
    assert (run.status, run.accepted) == (RunStatus.SUCCESS, 5)
    assert stored(temp) == [(us(i), i + 0.5) for i in range(5)]


def test_a_derived_channel_alone_does_not_end_the_wait(folder):
    source = file_source(folder)
    temp = add_temp(source)
    derived = make_channel(source.instrument, slug="twice", kind="derived", expression=f"2 * {temp.slug}")
    temp.delete()
    assert derived.source_id is None
    assert DataSource.objects.get(pk=source.pk).waiting_for_channels


def test_the_waiting_state_is_in_the_api(folder):
    source = file_source(folder)
    client = APIClient()
    client.force_authenticate(source.instrument.owner)
    body = client.get(f"/api/v1/sources/{source.pk}/").json()
    assert (body["state"], body["waiting_for_channels"]) == ("waiting for channels", True)
    listed = client.get("/api/v1/sources/").json()["results"]
    assert [(s["id"], s["state"]) for s in listed] == [(source.pk, "waiting for channels")]
    add_temp(source)
    body = client.get(f"/api/v1/sources/{source.pk}/").json()
    assert (body["state"], body["waiting_for_channels"]) == ("not collected yet", False)


def test_the_waiting_state_is_in_the_admin(folder, admin_client):
    source = file_source(folder)
    listing = admin_client.get(reverse("admin:instruments_datasource_changelist")).content.decode()
    assert "waiting for channels" in listing
    page = admin_client.get(reverse("admin:instruments_datasource_change", args=[source.pk])).content.decode()
    assert "waiting for channels" in page and "its cursor does not move" in page
    add_temp(source)
    listing = admin_client.get(reverse("admin:instruments_datasource_changelist")).content.decode()
    assert "waiting for channels" not in listing


def test_collect_now_says_a_waiting_source_is_not_collected(folder, admin_client):
    source = file_source(folder)
    response = admin_client.post(
        reverse("admin:instruments_datasource_changelist"),
        {"action": "collect_now", "_selected_action": [source.pk]},
        follow=True,
    )
    page = response.content.decode()
    assert "Collection queued for 0 data source(s)." in page
    assert "1 source(s) not collected, waiting for channels" in page and source.name in page
    source.refresh_from_db()
    assert source.cursor == {} and source.next_run_at is None


def test_the_waiting_state_is_on_the_instrument_page(folder, client):
    source = file_source(folder)
    client.force_login(source.instrument.owner)
    page = client.get(reverse("instruments:detail", args=[source.instrument.slug])).content.decode()
    assert "waiting for channels" in page
    add_temp(source)
    page = client.get(reverse("instruments:detail", args=[source.instrument.slug])).content.decode()
    assert "waiting for channels" not in page


def test_a_run_whose_lines_all_land_in_quarantine_is_a_warning(folder):
    # The channel's column is missing from every line: kept in quarantine, and the run says so.
    (folder / "a.csv").write_text("".join(f"{stamp(i)}\n" for i in range(4)))
    source = file_source(folder)
    add_temp(source)
    run = run_once(source)
    assert run.status == RunStatus.WARNING
    assert run.error.startswith("warning: 4 lines read and nothing stored: 4 reading(s) or line(s) were quarantined")
    assert RejectedSample.objects.filter(source_id=source.pk).count() == 4


def test_a_run_whose_lines_map_to_nothing_is_a_warning(folder):
    (folder / "a.csv").write_text("  \n \n")
    source = file_source(folder)
    add_temp(source)
    run = run_once(source)
    assert run.status == RunStatus.WARNING
    assert "2 lines read and nothing stored: no field of these lines maps to a channel" in run.error


def test_a_run_that_reads_nothing_or_only_duplicates_is_a_success(folder):
    path = folder / "a.csv"
    path.write_text(f"{stamp(0)},1.0\n")
    source = file_source(folder)
    add_temp(source)
    assert run_once(source).status == RunStatus.SUCCESS
    assert (run_once(source).status, source.last_error) == (RunStatus.SUCCESS, "")  # nothing new
    source.cursor = {}
    source.save(update_fields=["cursor"])
    again = run_once(source)  # read again from the start: a duplicate is not "nothing stored"
    assert (again.status, again.duplicates) == (RunStatus.SUCCESS, 1)


def test_a_tcp_source_without_channels_is_not_even_connected():
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        port = listener.getsockname()[1]
        config = {"host": "127.0.0.1", "port": port, "columns": ["time", "temp"], "timeout": 0.2}
        source = make_source(make_instrument(), kind=SourceKind.TCP, config=config)
        assert collect.collect_source(source.pk) is None
        # collect_source has returned: a connection it made would be waiting in the listener's backlog.
        assert select.select([listener], [], [], 0)[0] == []
        source.refresh_from_db()
        assert source.cursor == {}
    finally:
        listener.close()


# --- point 2: final lines -----------------------------------------------------------------------------


def test_the_last_line_of_a_file_still_being_written_is_not_read(folder):
    path = folder / "a.csv"
    path.write_text(f"{stamp(0)},1.0\n{stamp(1)},2.0")
    source = file_source(folder, final_line_after=300)
    temp = add_temp(source)
    run_once(source)
    assert stored(temp) == [(us(0), 1.0)]
    quiet(path, 299)  # changed 299 s ago: not yet finished
    run_once(source)
    assert stored(temp) == [(us(0), 1.0)]
    assert "final_from" not in source.cursor["files"]["a.csv"]


def test_the_last_line_of_a_quiet_file_is_read_once(folder):
    path = folder / "a.csv"
    path.write_text(f"{stamp(0)},1.0\n{stamp(1)},2.0")
    source = file_source(folder, final_line_after=300)
    temp = add_temp(source)
    quiet(path, 301)
    run = run_once(source)
    assert (run.status, run.accepted) == (RunStatus.SUCCESS, 2)
    assert stored(temp) == [(us(0), 1.0), (us(1), 2.0)]
    state = source.cursor["files"]["a.csv"]
    assert (state["offset"], state["final_from"], state["lines"]) == (path.stat().st_size, len(f"{stamp(0)},1.0\n"), 1)
    again = run_once(source)
    assert (again.accepted, again.duplicates, again.rejected) == (0, 0, 0)  # once: not read a second time


def test_a_final_line_completed_later_is_read_again_whole_as_a_duplicate(folder):
    path = folder / "a.csv"
    path.write_text(f"{stamp(0)},1.0\n{stamp(1)},2.0")
    source = file_source(folder, final_line_after=60)
    temp = add_temp(source)
    quiet(path, 61)
    run_once(source)
    with path.open("a") as handle:  # the writer wakes up: ends the line and goes on
        handle.write(f"\n{stamp(2)},3.0\n{stamp(3)},4")
    run = run_once(source)
    assert (run.accepted, run.duplicates, run.rejected) == (1, 1, 0)
    assert stored(temp) == [(us(0), 1.0), (us(1), 2.0), (us(2), 3.0)]  # no broken line, nothing twice
    assert "final_from" not in source.cursor["files"]["a.csv"]
    quiet(path, 61)
    assert run_once(source).accepted == 1
    assert stored(temp)[-1] == (us(3), 4.0)


def test_a_file_growing_again_without_a_newline_waits_for_its_line(folder):
    path = folder / "a.csv"
    path.write_text(f"{stamp(0)},1.0")
    source = file_source(folder, final_line_after=60)
    temp = add_temp(source)
    quiet(path, 61)
    run_once(source)
    with path.open("a") as handle:  # more bytes, still no newline, written just now
        handle.write("5")
    run = run_once(source)
    assert (run.accepted, run.duplicates, run.rejected) == (0, 0, 0)
    assert source.cursor["files"]["a.csv"]["final_from"] == 0  # remembered: read again from there
    with path.open("a") as handle:
        handle.write(f"\n{stamp(1)},2.0\n")
    run = run_once(source)
    # The line, read again whole, now says 1.05: another value at a stored time, so a conflict (kept in
    # quarantine with both values, the stored 1.0 stays); nothing is read broken or twice, and the next line is.
    assert (run.accepted, run.duplicates, run.conflicts, run.rejected) == (1, 0, 1, 0)
    assert stored(temp)[0] == (us(0), 1.0)
    assert stored(temp)[-1] == (us(1), 2.0)


def test_a_final_line_of_blanks_is_passed_over_without_a_warning(folder):
    path = folder / "a.csv"
    path.write_text(f"{stamp(0)},1.0\n  ")
    source = file_source(folder, final_line_after=60)
    temp = add_temp(source)
    run_once(source)
    quiet(path, 61)
    run = run_once(source)
    assert (run.status, run.error, run.rejected) == (RunStatus.SUCCESS, "", 0)
    assert stored(temp) == [(us(0), 1.0)]
    assert source.cursor["files"]["a.csv"]["offset"] == path.stat().st_size


def test_final_line_after_zero_never_reads_an_unterminated_line(folder):
    path = folder / "a.csv"
    path.write_text(f"{stamp(0)},1.0\n{stamp(1)},2.0")
    source = file_source(folder, final_line_after=0)
    temp = add_temp(source)
    quiet(path, 10 * 86400)
    run_once(source)
    assert stored(temp) == [(us(0), 1.0)]


def test_the_last_line_of_a_rotated_file_is_read(folder):
    path = folder / "a.csv"
    path.write_text(f"{stamp(0)},1.0\n{stamp(1)},2.0")
    source = file_source(folder, pattern="a.csv", final_line_after=3600)
    temp = add_temp(source)
    run_once(source)
    assert stored(temp) == [(us(0), 1.0)]
    path.rename(folder / "a.csv.1")  # rotated away: it will not grow under this name again
    quiet(folder / "a.csv.1", 11)
    (folder / "a.csv").write_text(f"{stamp(2)},3.0\n")
    run = run_once(source)
    assert run.accepted == 2
    assert stored(temp) == [(us(0), 1.0), (us(1), 2.0), (us(2), 3.0)]
    assert run_once(source).accepted == 0


def test_a_rotated_file_still_being_written_keeps_its_last_line(folder):
    path = folder / "a.csv"
    path.write_text(f"{stamp(0)},1.0\n{stamp(1)},2.")
    source = file_source(folder, pattern="a.csv", final_line_after=3600)
    temp = add_temp(source)
    run_once(source)
    path.rename(folder / "a.csv.1")  # just rotated: its writer may still hold it open
    (folder / "a.csv").write_text("")
    run_once(source)
    assert stored(temp) == [(us(0), 1.0)]


def test_a_cr1000_style_file_whose_last_line_has_no_newline(folder):
    # Campbell CR1000 array CSV: id, year, day of year, hhmm, air temperature, RH with -7999 sentinels,
    # CRLF line ends, the logger closed the file without ending its last line.
    year, doy = T0.year, T0.timetuple().tm_yday
    rows = [(105, year, doy, 1000 + 10 * i, 21.5 + i, -7999 if i == 2 else 60 + i) for i in range(4)]
    text = "\r\n".join(",".join(str(v) for v in row) for row in rows)  # no CRLF after the last row
    path = folder / "CR1000_Table1.dat"
    path.write_bytes(text.encode())
    config = {
        "pattern": "CR1000_*.dat",
        "columns": ["id", "year", "doy", "hhmm", "airtc", "rh"],
        "timestamp": {"columns": ["year", "doy", "hhmm"], "format": "year_doy_hhmm"},
        "final_line_after": 120,
    }
    source = file_source(folder, **config)
    airtc = make_channel(source.instrument, slug="airtc", source=source, source_field="airtc")
    rh = make_channel(source.instrument, slug="rh", source=source, source_field="rh", missing_values=[-7999])
    first = run_once(source)
    assert first.accepted == 6  # three whole rows; the last row waits: the file may still be written
    quiet(path, 121)
    last = run_once(source)
    assert (last.accepted, last.rejected) == (2, 0)
    day = T0.replace(hour=10)
    stamps = [datetime_to_us(day + timedelta(minutes=10 * i)) for i in range(4)]
    assert stored(airtc) == [(stamps[i], 21.5 + i) for i in range(4)]
    assert [ts for ts, _ in stored(rh)] == stamps
    assert Sample.objects.filter(channel=rh, ts=stamps[2]).get().quality == Quality.MISSING
    assert run_once(source).accepted == 0


def test_the_final_line_is_archived_at_its_offset(folder, settings, tmp_path):
    settings.DAQBROKER_ARCHIVE_DIR = tmp_path / "archive"
    path = folder / "a.csv"
    content = f"{stamp(0)},1.0\n{stamp(1)},2.0"
    path.write_text(content)
    source = file_source(folder, final_line_after=60, archive=True)
    add_temp(source)
    quiet(path, 61)
    run_once(source)
    copies = list((tmp_path / "archive").rglob("*a.csv"))
    assert [c.read_text() for c in copies] == [content]
