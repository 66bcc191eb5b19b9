"""Issue 15, point 4: undoing mistakes, on logger-style files and real collection runs (``collect_source``,
the call the Celery task makes). A source is re-read from its start or from a time (every file it
follows, rotated ones too), safely (stored readings are duplicates, differing ones conflicts, or replaced on
purpose); a channel's readings are deleted in a range (counted first, bounded); readings are replaced on
purpose through the one write path. Each is audited, recomputes tiers and derived channels, and never
raises an alarm for old data. Who may do each: here and in ``accounts/tests/test_permission_matrix.py``."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from django.contrib.admin import helpers
from django.contrib.auth.models import Group
from django.dispatch import receiver
from django.urls import reverse
from rest_framework.test import APIClient

from accounts import roles
from accounts import services as sharing
from accounts.choices import AuditAction
from accounts.models import AuditEvent
from collection.alarms import tasks as follow_ups
from collection.alarms.choices import RuleKind
from collection.alarms.models import AlarmEvent, AlarmRule
from collection.choices import Origin, RunStatus
from collection.models import CollectionRun, FollowUpBacklog, RejectedSample, Rollup, Sample, TextSample
from collection.services import SampleBatch, collect, corrections, ingest_samples, pending, rollups
from collection.services.ingest import REPLACE, follow_up_payload, samples_ingested
from collection.services.retention import AFTER_DELETION
from daqbroker_agent.parsing import datetime_to_us
from instruments.choices import ChannelKind, SourceKind
from instruments.models import Channel, DataSource
from instruments.tests.factories import make_channel, make_instrument, make_source, make_user

pytestmark = pytest.mark.django_db

# Two days ago: a file written now holding readings of years ago would make its run a warning (the year check).
T0 = (datetime.now(UTC) - timedelta(days=2)).replace(hour=10, minute=0, second=0, microsecond=0)
TOA5_HEADER = (
    '"TOA5","CR1000_station","CR1000","12345","CR1000.Std.32","CPU:met.CR1","4321","Met1min"\n'
    '"TIMESTAMP","RECORD","AirTC_Avg","RH","Batt_volt"\n'
    '"TS","RN","Deg C","%","Volts"\n'
    '"","","Avg","Smp","Smp"\n'
)


def at(i: int) -> datetime:
    return T0 + timedelta(minutes=i)


def iso(i: int) -> str:
    """Minute ``i`` as the API writes it."""
    return f"{at(i):%Y-%m-%dT%H:%M:%SZ}"


def local(i: int) -> str:
    """Minute ``i`` as typed in the admin (the site's zone is UTC in the tests)."""
    return f"{at(i):%Y-%m-%d %H:%M:%S}"


def us(i: int) -> int:
    return datetime_to_us(at(i))


def toa5(rows: range, temp=lambda i: 20 + i / 10, rh=lambda i: 50 + i) -> str:
    """A Campbell TOA5 file: four header lines, quoted timestamps, a record number, -7999 for a bad reading."""
    lines = [f'"{at(i):%Y-%m-%d %H:%M:%S}",{i},{temp(i)},{rh(i)},12.6\n' for i in rows]
    return TOA5_HEADER + "".join(lines)


def quiet(path: Path, seconds: float = 3600) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.fixture
def folder(tmp_path) -> Path:
    path = tmp_path / "logger"
    path.mkdir()
    return path


def toa5_source(folder: Path, **config) -> DataSource:
    config = {
        "path": str(folder),
        "pattern": "met.dat",
        "header_lines": 4,
        "columns": ["TIMESTAMP", "RECORD", "AirTC_Avg", "RH", "Batt_volt"],
        "timestamp": {"columns": ["TIMESTAMP"], "format": "%Y-%m-%d %H:%M:%S"},
        **config,
    }
    return make_source(make_instrument(), config=config)


def channel_for(source: DataSource, field: str, **extra) -> Channel:
    return make_channel(
        source.instrument, slug=f"{field.lower()}{source.pk}", source=source, source_field=field, **extra
    )


def run_once(source: DataSource) -> CollectionRun:
    run = collect.collect_source(source.pk)
    assert run is not None
    assert run.status == RunStatus.SUCCESS, run.error
    source.refresh_from_db()
    return run


def stored(channel) -> list[tuple[int, float]]:
    return list(Sample.objects.filter(channel=channel).order_by("ts").values_list("ts", "value"))


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


# --- re-read ----------------------------------------------------------------------------------------


def test_a_channel_added_later_gets_every_line_by_a_reread_and_nothing_is_stored_twice(folder):
    (folder / "met.dat").write_text(toa5(range(30)))
    source = toa5_source(folder)
    temp = channel_for(source, "AirTC_Avg", units="degC")
    first = run_once(source)
    assert first.accepted == 30 and source.cursor_started_at is not None
    assert source.channels_added_since_read() == []

    rh = channel_for(source, "RH")  # the channel someone forgot
    assert source.channels_added_since_read() == [rh]
    assert run_once(source).accepted == 0  # the lines were read before: rh gets nothing from a plain run

    corrections.request_reread(source)
    assert DataSource.objects.get(pk=source.pk).reread_requested_at is not None
    run = run_once(source)
    assert (run.accepted, run.duplicates, run.conflicts) == (30, 30, 0)  # rh's 30 new, temp's 30 duplicates
    # Progress, not a fault: said in the run's note; a successful re-read has no error.
    assert run.note.startswith("re-read from the start") and run.error == ""
    assert [v for _, v in stored(rh)] == [50 + i for i in range(30)]
    assert len(stored(temp)) == 30
    assert source.reread_requested_at is None and source.channels_added_since_read() == []
    assert source.cursor["files"]["met.dat"]["offset"] == (folder / "met.dat").stat().st_size
    event = events(AuditAction.SOURCE_REREAD)[-1]
    assert event.changes["from"] == "the start" and event.changes["cursor_before"]["files"]

    corrections.request_reread(source)  # safe to repeat: everything is a duplicate now
    again = run_once(source)
    assert (again.accepted, again.duplicates, again.conflicts) == (0, 60, 0)
    assert Sample.objects.filter(channel__in=[temp, rh]).count() == 60


def test_a_reread_from_a_time_reads_every_file_from_its_first_line_at_or_after_it(folder):
    (folder / "met.dat.1").write_text(toa5(range(0, 10)))  # rotated away, older
    quiet(folder / "met.dat.1", 7200)
    (folder / "met.dat").write_text(toa5(range(10, 20)))
    source = toa5_source(folder)
    temp = channel_for(source, "AirTC_Avg")
    run_once(source)
    assert len(stored(temp)) == 10  # the rotated file was there before following began: not read
    Sample.objects.filter(channel=temp).delete()

    corrections.request_reread(source, start=at(6) - timedelta(seconds=30))  # between lines 5 and 6
    run = run_once(source)
    assert run.accepted == 14 and not RejectedSample.objects.filter(source=source).exists()
    assert [ts for ts, _ in stored(temp)] == [us(i) for i in range(6, 20)]
    entries = source.cursor["files"]
    assert set(entries) == {"met.dat", "met.dat.1"} and not any("skip_before" in e for e in entries.values())


def test_a_reread_from_a_time_goes_on_over_several_runs_without_warnings(folder):
    (folder / "met.dat").write_text(toa5(range(20)))
    source = toa5_source(folder, max_lines=6)
    temp = channel_for(source, "AirTC_Avg")
    while Sample.objects.filter(channel=temp).count() < 20:
        run_once(source)
    Sample.objects.filter(channel=temp).delete()
    corrections.request_reread(source, start=at(15))
    runs = [run_once(source)]
    while source.cursor.get("reread"):
        runs.append(run_once(source))
    assert len(runs) == 4  # 6 + 6 lines passed over, then 6 (3 kept), then the last 2
    assert [r.status for r in runs] == [RunStatus.SUCCESS] * 4  # lines passed over are not "nothing stored"
    assert [ts for ts, _ in stored(temp)] == [us(i) for i in range(15, 20)]
    assert runs[0].note.endswith("continues next run") and not runs[-1].note.endswith("continues next run")
    assert [r.error for r in runs] == [""] * 4


def test_a_file_rewritten_with_a_corrected_column_conflicts_then_is_replaced_by_a_reread(folder):
    path = folder / "met.dat"
    path.write_text(toa5(range(12), temp=lambda i: -7999 if i == 4 else 30 + i))  # the wrong sensor's column
    source = toa5_source(folder)
    temp = channel_for(source, "AirTC_Avg", missing_values=[-7999])
    run_once(source)
    path.write_text(toa5(range(12), temp=lambda i: 20 + i / 4))  # the logger program fixed, file rewritten
    plain = collect.collect_source(source.pk)  # a changed file is read again from its start: stored values stay
    assert (plain.status, plain.accepted, plain.conflicts) == (RunStatus.WARNING, 0, 12)
    assert "12 reading(s) differ from the values already stored" in plain.error
    assert stored(temp)[0][1] == 30
    assert RejectedSample.objects.filter(source=source, context__conflict=True).count() == 12

    corrections.request_reread(source, replace=True)
    run = run_once(source)
    assert (run.accepted, run.duplicates, run.conflicts) == (0, 0, 0)
    assert "12 stored value(s) replaced" in run.note and run.error == ""
    assert [v for _, v in stored(temp)] == [20 + i / 4 for i in range(12)]
    temp.refresh_from_db()
    assert (temp.last_ts, temp.last_value, temp.last_quality) == (us(11), 20 + 11 / 4, 0)
    event = events(AuditAction.SAMPLES_REPLACED)[-1]
    assert event.changes["replaced"] == 12 and event.changes["origin"] == SourceKind.FILE
    old_values = [old for _when, old, _new in event.changes["readings"]]
    assert old_values == [-7999.0 if i == 4 else 30.0 + i for i in range(12)]


def test_a_corrected_file_is_stored_by_deleting_the_range_then_rereading(folder):
    path = folder / "met.dat"
    path.write_text(toa5(range(10), rh=lambda i: 5))
    source = toa5_source(folder)
    rh = channel_for(source, "RH")
    run_once(source)
    path.write_text(toa5(range(10), rh=lambda i: 60 + i))
    deletion = corrections.delete_channel_readings(rh, at(0), at(10), reason="wrong column")
    assert deletion.count == 10 and stored(rh) == []
    rh.refresh_from_db()
    assert rh.last_ts is None
    corrections.request_reread(source)
    run = run_once(source)
    assert (run.accepted, run.conflicts) == (10, 0)
    assert [v for _, v in stored(rh)] == [60 + i for i in range(10)]
    assert events(AuditAction.SAMPLES_DELETED)[-1].changes["reason"] == "wrong column"


@pytest.mark.parametrize("kind", [SourceKind.SERIAL, SourceKind.TCP])
def test_a_live_stream_cannot_be_reread_and_says_why(kind):
    config = {"url": "/dev/pts/9"} if kind == SourceKind.SERIAL else {"host": "127.0.0.1", "port": 4001}
    source = make_source(kind=kind, config=config)
    with pytest.raises(corrections.CorrectionRefused, match="live stream"):
        corrections.request_reread(source)
    assert DataSource.objects.get(pk=source.pk).reread_requested_at is None
    assert not events(AuditAction.SOURCE_REREAD)


def test_a_reread_raises_no_alarm_for_old_readings(folder, django_capture_on_commit_callbacks):
    (folder / "met.dat").write_text(toa5(range(10), rh=lambda i: 99))
    source = toa5_source(folder)
    channel_for(source, "AirTC_Avg")
    run_once(source)
    rh = channel_for(source, "RH")
    AlarmRule.objects.create(instrument=source.instrument, name="humid", kind=RuleKind.ABOVE, threshold=90.0)
    sent = []

    @receiver(samples_ingested, weak=False)
    def keep(sender, spans, origin, alarm_spans=None, **kwargs):
        sent.append((spans, alarm_spans))

    try:
        corrections.request_reread(source)
        with django_capture_on_commit_callbacks(execute=True):
            run_once(source)
    finally:
        samples_ingested.disconnect(keep)
    spans, alarm_spans = sent[-1]
    assert rh.pk in spans and alarm_spans == {}  # every reading is older than the request
    follow_ups.process(spans, Origin.FILE, alarm_spans)
    assert not AlarmEvent.objects.filter(channel=rh).exists()
    follow_ups.process(spans, Origin.FILE)  # the same readings as new ones would have raised it
    assert AlarmEvent.objects.filter(channel=rh).exists()


def test_follow_ups_kept_while_the_broker_is_down_still_leave_old_data_alone():
    channel = make_channel(slug="humidity")
    AlarmRule.objects.create(instrument=channel.instrument, name="humid", kind=RuleKind.ABOVE, threshold=90.0)
    spans = ingest_samples(numeric_batch(channel, range(5), [99.0] * 5)).spans
    pending.take_pending()  # the ingest's own work (on SQLite and MariaDB noted on the channel's row) ...
    FollowUpBacklog.objects.all().delete()  # ... goes: these readings play the parts below
    # What the follow-up rows hold for a re-read's readings (alarm spans left out) ...
    FollowUpBacklog.objects.create(spans=follow_up_payload(spans, {}), origin=Origin.FILE)
    assert follow_ups.replay_follow_ups() == 1
    assert not AlarmEvent.objects.exists()
    # ... and for the same readings arriving new.
    FollowUpBacklog.objects.create(spans=follow_up_payload(spans, None), origin=Origin.FILE)
    assert follow_ups.replay_follow_ups() == 1
    assert AlarmEvent.objects.filter(channel=channel).exists()


# --- replacing and deleting -------------------------------------------------------------------------


def numeric_batch(channel, minutes, values) -> SampleBatch:
    return SampleBatch(np.full(len(minutes), channel.pk), [us(m) for m in minutes], np.asarray(values, dtype=float))


def test_on_conflict_replace_replaces_stored_values_and_keeps_the_old_ones_in_the_audit_trail():
    channel, text = make_channel(), None
    text = make_channel(channel.instrument, kind=ChannelKind.TEXT)
    ingest_samples(numeric_batch(channel, [0, 1, 2], [1.0, 2.0, 3.0]))
    ingest_samples(SampleBatch([text.pk], [us(0)], np.array(["ok"], dtype=object)))
    user = make_user()
    result = ingest_samples(
        numeric_batch(channel, [1, 2, 3, 3], [2.0, 30.0, 4.0, 5.0]),
        on_conflict=REPLACE,
        audit_origin={"actor": user, "address": "10.0.0.7"},
    )
    assert result.as_dict() == {
        "received": 4, "accepted": 1, "duplicates": 1, "conflicts": 1, "flagged": 0, "rejected": 0, "replaced": 1,
    }  # fmt: skip
    assert stored(channel) == [(us(0), 1.0), (us(1), 2.0), (us(2), 30.0), (us(3), 4.0)]
    assert RejectedSample.objects.get().context["stored_value"] == 4.0  # two values for one time in the batch
    event = events(AuditAction.SAMPLES_REPLACED)[-1]
    assert (event.actor, event.address) == (user, "10.0.0.7")
    assert event.changes["readings"] == [[at(2).isoformat(), 3.0, 30.0]]
    text_result = ingest_samples(
        SampleBatch([text.pk], [us(0)], np.array(["fault"], dtype=object)), on_conflict=REPLACE
    )
    assert text_result.as_dict()["replaced"] == 1
    assert TextSample.objects.get(channel=text).value == "fault"
    text.refresh_from_db()
    assert text.last_text == "fault"


def test_replacing_recomputes_tiers_and_derived_channels_but_raises_no_alarm(django_capture_on_commit_callbacks):
    instrument = make_instrument()
    t1, t2 = make_channel(instrument, slug="t1"), make_channel(instrument, slug="t2")
    mean = make_channel(instrument, slug="mean", kind=ChannelKind.DERIVED, expression="(t1 + t2) / 2")
    AlarmRule.objects.create(instrument=instrument, name="hot", kind=RuleKind.ABOVE, threshold=50.0)
    spans = {**ingest_samples(numeric_batch(t1, [0, 1], [10, 20])).spans}
    spans.update(ingest_samples(numeric_batch(t2, [0, 1], [30, 40])).spans)
    follow_ups.process(spans, Origin.API)
    rollups.refresh_rollups()
    assert stored(mean) == [(us(0), 20.0), (us(1), 30.0)]
    sent = []

    @receiver(samples_ingested, weak=False)
    def keep(sender, spans, origin, alarm_spans=None, **kwargs):
        sent.append((spans, alarm_spans))

    try:
        with django_capture_on_commit_callbacks(execute=True):
            corrections.replace_readings(t1, [(at(1), 200.0)], reason="spike typed by hand")
    finally:
        samples_ingested.disconnect(keep)
    spans, alarm_spans = sent[-1]
    assert alarm_spans == {}  # the replaced reading is old data for alarm rules
    follow_ups.process(spans, Origin.CORRECTION, alarm_spans)
    assert stored(mean) == [(us(0), 20.0), (us(1), 120.0)]  # the derived value follows its corrected input
    assert not AlarmEvent.objects.exists()
    rollups.refresh_rollups()
    bucket = Rollup.objects.get(channel=t1, tier=60, bucket=us(1))
    assert bucket.max_value == 200.0
    reasons = [e.changes["reason"] for e in events(AuditAction.SAMPLES_REPLACED)]
    assert reasons == ["spike typed by hand", "recomputed"]


def test_deleting_inputs_deletes_the_derived_readings_there_and_recomputes_the_tiers():
    instrument = make_instrument()
    t1, t2 = make_channel(instrument, slug="t1"), make_channel(instrument, slug="t2")
    mean = make_channel(instrument, slug="mean", kind=ChannelKind.DERIVED, expression="(t1 + t2) / 2")
    spans = {**ingest_samples(numeric_batch(t1, range(5), [10] * 5)).spans}
    spans.update(ingest_samples(numeric_batch(t2, range(5), [30] * 5)).spans)
    follow_ups.process(spans, Origin.API)
    rollups.rebuild_rollups([t1.pk, mean.pk])
    assert Rollup.objects.get(channel=mean, tier=86400).count == 5
    assert len(stored(mean)) == 5
    deletion = corrections.delete_channel_readings(t1, at(1), at(3))
    assert deletion.count == 2
    # What the follow-up queued on commit does (kept in the backlog when no broker answers):
    follow_ups.process({t1.pk: (us(1), us(2))}, AFTER_DELETION)
    assert [ts for ts, _ in stored(mean)] == [us(0), us(3), us(4)]
    rollups.refresh_rollups()
    assert Rollup.objects.get(channel=t1, tier=86400).count == 3
    assert Rollup.objects.get(channel=mean, tier=86400).count == 3


def test_a_deletion_larger_than_the_limit_is_refused_before_anything_goes(settings):
    settings.DAQBROKER_CORRECTION_MAX_READINGS = 4
    channel = make_channel()
    ingest_samples(numeric_batch(channel, range(6), range(6)))
    plan = corrections.plan_deletion(channel, at(0), at(6))
    assert plan.count == 5 and plan.too_many  # counted up to the limit + 1 only
    with pytest.raises(corrections.CorrectionRefused, match="more than 4 readings"):
        corrections.delete_channel_readings(channel, at(0), at(6))
    assert len(stored(channel)) == 6
    assert corrections.delete_channel_readings(channel, at(0), at(4)).count == 4


# --- the API ----------------------------------------------------------------------------------------


@pytest.fixture
def people(folder):
    """A file source of olivia's, shared with eddie (change), vera (view) and cole (collect)."""
    olivia, eddie, vera, cole = (make_user(username=n) for n in ("olivia", "eddie", "vera", "cole"))
    (folder / "met.dat").write_text(toa5(range(5)))
    source = toa5_source(folder)
    source.instrument.owner = olivia
    source.instrument.save()
    sharing.share(source.instrument, eddie, "change", actor=olivia)
    sharing.share(source.instrument, vera, "view", actor=olivia)
    sharing.share(source.instrument, cole, "collect", actor=olivia)
    temp = channel_for(source, "AirTC_Avg")
    return {"olivia": olivia, "eddie": eddie, "vera": vera, "cole": cole, "source": source, "temp": temp}


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def test_the_reread_api_asks_for_a_reread_from_a_time(people):
    source = people["source"]
    response = client_for(people["eddie"]).post(
        reverse("api:source-reread", args=[source.pk]),
        {"start": iso(2), "on_conflict": "replace"},
        format="json",
    )
    assert response.status_code == 202, response.content
    assert response.json()["start"] == iso(2) and response.json()["on_conflict"] == "replace"
    source.refresh_from_db()
    assert (source.reread_from, source.reread_replace) == (us(2), True)
    assert events(AuditAction.SOURCE_REREAD)[-1].actor == people["eddie"]
    shown = client_for(people["eddie"]).get(reverse("api:source-detail", args=[source.pk])).json()
    assert shown["rereadable"] is True and shown["reread_requested_at"] is not None
    refused = client_for(people["vera"]).post(reverse("api:source-reread", args=[source.pk]), {}, format="json")
    assert refused.status_code == 403


def test_the_reread_api_answers_400_with_the_reason_for_a_serial_source(people):
    serial = make_source(people["source"].instrument, kind=SourceKind.SERIAL, config={"url": "/dev/pts/9"})
    response = client_for(people["olivia"]).post(reverse("api:source-reread", args=[serial.pk]), {}, format="json")
    assert response.status_code == 400 and "live stream" in response.json()["detail"]
    bad_time = client_for(people["olivia"]).post(
        reverse("api:source-reread", args=[people["source"].pk]), {"start": "yesterday"}, format="json"
    )
    assert bad_time.status_code == 400 and "start" in bad_time.json()


def test_the_delete_api_counts_first_then_deletes_and_audits(people, settings):
    temp, client = people["temp"], client_for(people["eddie"])
    run_once(people["source"])
    url = reverse("api:channel-delete-readings", args=[temp.pk])
    body = {"start": iso(1), "end": iso(3), "reason": "sensor serviced"}
    counted = client.post(url, {**body, "dry_run": True}, format="json")
    assert counted.status_code == 200 and counted.json()["readings"] == 2
    assert len(stored(temp)) == 5
    deleted = client.post(url, body, format="json")
    assert deleted.status_code == 200 and deleted.json()["deleted"] == 2
    assert [ts for ts, _ in stored(temp)] == [us(0), us(3), us(4)]
    event = events(AuditAction.SAMPLES_DELETED)[-1]
    assert event.actor == people["eddie"] and event.changes["deleted"] == 2
    backwards = client.post(url, {**body, "end": iso(0)}, format="json")
    assert backwards.status_code == 400 and "after its start" in backwards.json()["detail"]
    settings.DAQBROKER_CORRECTION_MAX_READINGS = 2
    too_many = client.post(
        url,
        {
            "start": f"{T0 - timedelta(days=200):%Y-%m-%dT%H:%M:%SZ}",
            "end": f"{T0 + timedelta(days=1):%Y-%m-%dT%H:%M:%SZ}",
        },
        format="json",
    )
    assert too_many.status_code == 400 and "shorter ranges" in too_many.json()["detail"]
    assert len(stored(temp)) == 3


def test_ingest_with_on_conflict_replace_needs_the_change_level(people):
    run_once(people["source"])
    reading = {"readings": [{"channel": f"{people['source'].instrument.slug}/{people['temp'].slug}",
                             "t": at(0).isoformat(), "v": 99.5}]}  # fmt: skip
    url = reverse("api:ingest") + "?on_conflict=replace"
    as_collector = client_for(people["cole"]).post(url, reading, format="json")
    assert as_collector.status_code == 200 and as_collector.json()["rejected"] == 1  # may add, not replace
    assert stored(people["temp"])[0][1] == 20.0
    as_editor = client_for(people["eddie"]).post(url, reading, format="json")
    assert as_editor.status_code == 200 and as_editor.json()["replaced"] == 1
    assert stored(people["temp"])[0][1] == 99.5
    kept = client_for(people["eddie"]).post(reverse("api:ingest"), {**reading, "batch_id": "b2"}, format="json")
    assert "replaced" not in kept.json()
    unknown = client_for(people["eddie"]).post(reverse("api:ingest") + "?on_conflict=overwrite", reading, format="json")
    assert unknown.status_code == 400 and "on_conflict" in unknown.json()["detail"]


# --- the admin and the pages ------------------------------------------------------------------------


def admin_client(user):
    """``user`` as an Operator: staff, with the registry's admin pages (roles.OPERATORS)."""
    user.is_staff = True
    user.save()
    user.groups.add(Group.objects.get(name=roles.OPERATORS))
    client = APIClient()
    client.force_login(user)
    return client


def test_the_admin_offers_the_reread_in_one_click_when_channels_were_added(people):
    source = people["source"]
    run_once(source)
    client = admin_client(people["olivia"])
    page = client.get(reverse("admin:instruments_datasource_change", args=[source.pk])).content.decode()
    assert "channel(s) added after" not in page
    channel_for(source, "RH")
    page = client.get(reverse("admin:instruments_datasource_change", args=[source.pk])).content.decode()
    assert "1 channel(s) added after this source started reading" in page and 'value="reread_from_start"' in page
    response = client.post(
        reverse("admin:instruments_datasource_changelist"),
        {"action": "reread_from_start", "index": "0", helpers.ACTION_CHECKBOX_NAME: [source.pk]},
    )
    assert response.status_code == 302
    assert DataSource.objects.get(pk=source.pk).reread_requested_at is not None


def test_an_admin_reread_of_a_source_the_user_may_not_change_does_nothing(people, folder):
    other = toa5_source(folder)  # someone else's instrument
    client = admin_client(people["olivia"])
    client.post(
        reverse("admin:instruments_datasource_changelist"),
        {"action": "reread_from_start", "index": "0", helpers.ACTION_CHECKBOX_NAME: [other.pk]},
    )
    assert DataSource.objects.get(pk=other.pk).reread_requested_at is None


def test_the_admin_reread_from_a_time_asks_then_does_it(people):
    source = people["source"]
    client = admin_client(people["olivia"])
    url = reverse("admin:instruments_datasource_changelist")
    form = {"action": "reread_from_time", "index": "0", helpers.ACTION_CHECKBOX_NAME: [source.pk]}
    page = client.post(url, form)
    assert page.status_code == 200 and "Replace differing values" in page.content.decode()
    done = client.post(url, {**form, "apply": "1", "start": local(3), "replace": "on"})
    assert done.status_code == 302
    source.refresh_from_db()
    assert (source.reread_from, source.reread_replace) == (us(3), True)


def test_the_admin_delete_action_shows_the_count_before_deleting(people):
    temp = people["temp"]
    run_once(people["source"])
    client = admin_client(people["olivia"])
    url = reverse("admin:instruments_channel_changelist")
    form = {"action": "delete_readings_in_range", "index": "0", helpers.ACTION_CHECKBOX_NAME: [temp.pk]}
    rng = {"start": local(0), "end": local(2), "reason": "test run"}
    counted = client.post(url, {**form, **rng, "range": "1"})
    assert counted.status_code == 200 and "Yes, delete 2 reading(s)" in counted.content.decode()
    assert len(stored(temp)) == 5  # nothing deleted yet
    done = client.post(url, {**form, **rng, "confirm": "1"})
    assert done.status_code == 302 and len(stored(temp)) == 3
    assert events(AuditAction.SAMPLES_DELETED)[-1].changes["reason"] == "test run"


def test_accepting_a_quarantined_conflict_replaces_the_stored_value(people):
    temp = people["temp"]
    ingest_samples(numeric_batch(temp, [0], [1.0]))
    ingest_samples(numeric_batch(temp, [0], [2.0]))
    conflict = RejectedSample.objects.get(context__conflict=True)
    admin = make_user(username="ada", is_staff=True, is_superuser=True)
    client = APIClient()
    client.force_login(admin)
    response = client.post(
        reverse("admin:collection_rejectedsample_changelist"),
        {"action": "accept_conflicts", "index": "0", helpers.ACTION_CHECKBOX_NAME: [conflict.pk]},
    )
    assert response.status_code == 302
    assert stored(temp) == [(us(0), 2.0)]
    assert not RejectedSample.objects.filter(pk=conflict.pk).exists()
    assert events(AuditAction.SAMPLES_REPLACED)[-1].changes["readings"] == [[at(0).isoformat(), 1.0, 2.0]]
    assert events(AuditAction.CONFLICT_ACCEPTED)[-1].actor == admin


def test_the_instrument_page_offers_the_reread_to_editors_only(people):
    source = people["source"]
    run_once(source)
    channel_for(source, "RH")
    page = reverse("instruments:detail", args=[source.instrument.slug])
    reread = reverse("instruments:source-reread", args=[source.instrument.slug, source.pk])
    viewer = APIClient()
    viewer.force_login(people["vera"])
    assert reread not in viewer.get(page).content.decode()
    assert viewer.post(reread).status_code == 403
    editor = APIClient()
    editor.force_login(people["eddie"])
    assert reread in editor.get(page).content.decode()
    assert editor.post(reread).status_code == 302
    assert DataSource.objects.get(pk=source.pk).reread_requested_at is not None
    assert "Re-read asked for" in editor.get(page).content.decode()
