"""The quarantine for people: kinds, replay after fixing the cause (server files and agent lines),
retention and export. Real files through the real collector, real agent parsing, every engine."""

from __future__ import annotations

import csv
import io
import re
import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import roles, services
from accounts.choices import AuditAction
from accounts.models import AuditEvent
from collection.choices import Origin, RejectionKind, RunStatus
from collection.models import RejectedSample, Sample
from collection.reasons import classify_reason, visible_text
from collection.services import SampleBatch, ingest_samples
from collection.services import quarantine as q
from collection.services.collect import collect_source
from collection.tasks import expire_quarantine_task, replay_quarantine_task, replay_selection
from conftest import celery_argv, wait_for
from daqbroker_agent.parsing import datetime_to_us
from daqbroker_agent.sources import LineMapper, spec_from_server
from daqbroker_agent.uploader import unparsed_item
from daqbroker_site.celery import app as celery_app
from instruments.choices import ChannelKind, SourceKind
from instruments.models import DataSource
from instruments.tests.factories import make_channel, make_instrument, make_source, make_user

pytestmark = pytest.mark.django_db

# Two days ago: a file written now holding readings of years ago would make its run a warning (the year check).
T0 = (datetime.now(UTC) - timedelta(days=2)).replace(hour=7, minute=0, second=0, microsecond=0)
N = 40


def stamp(i: int) -> str:
    """A day-first time, which the default ISO format cannot read: the cause to fix."""
    return (T0 + timedelta(minutes=i)).strftime("%d/%m/%Y %H:%M:%S")


def logger_lines(n: int = N) -> list[str]:
    return [f"{stamp(i)},{20 + i / 10:.1f},{40 + i}" for i in range(n)]


@pytest.fixture
def station(tmp_path, settings):
    settings.DAQBROKER_FILE_ROOTS = [tmp_path]
    folder = tmp_path / "logger"
    folder.mkdir()
    instrument = make_instrument()
    source = make_source(
        instrument,
        config={
            "path": str(folder),
            "pattern": "*.csv",
            "columns": ["time", "temp", "rh"],
            "timestamp": {"columns": ["time"]},  # ISO by default: the wrong format for this logger
        },
    )
    temp = make_channel(instrument, slug="temp", source=source, source_field="temp")
    rh = make_channel(instrument, slug="rh", source=source, source_field="rh")
    return folder, instrument, source, temp, rh


def fix_timestamp_format(source: DataSource) -> None:
    source.config = {**source.config, "timestamp": {"columns": ["time"], "format": "%d/%m/%Y %H:%M:%S"}}
    source.save()


def stored(*channels) -> dict[tuple[int, int], float]:
    return {(c, t): v for c, t, v in Sample.objects.filter(channel__in=channels).values_list("channel", "ts", "value")}


def expected(temp, rh, n: int = N) -> dict[tuple[int, int], float]:
    out = {}
    for i in range(n):
        t = datetime_to_us(T0 + timedelta(minutes=i))
        out[(temp.pk, t)] = round(20 + i / 10, 1)
        out[(rh.pk, t)] = 40.0 + i
    return out


def test_a_fixed_timestamp_format_replays_every_quarantined_line_exactly_once(station):
    folder, instrument, source, temp, rh = station
    (folder / "day.csv").write_text("\n".join(logger_lines()) + "\n")
    run = collect_source(source.pk)
    assert run is not None and run.status == RunStatus.WARNING  # lines read, nothing stored
    kept = RejectedSample.objects.filter(source=source)
    assert kept.count() == N and not Sample.objects.exists()
    assert set(kept.values_list("kind", flat=True)) == {RejectionKind.BAD_TIME}
    first = kept.order_by("id").first()
    assert first.is_line and first.where().endswith("day.csv, line 1")

    # A dry run through the same path says what would happen, and changes nothing.
    fix_timestamp_format(source)
    owner = instrument.owner
    dry = q.replay(q.visible_to(owner, q.permissions.CHANGE), actor=owner, dry_run=True)
    assert (dry.records, dry.stored, dry.still_rejected) == (N, 2 * N, 0)
    assert kept.count() == N and not Sample.objects.exists()
    assert not AuditEvent.objects.filter(action=AuditAction.QUARANTINE_REPLAYED).exists()

    done = q.replay(q.visible_to(owner, q.permissions.CHANGE), actor=owner)
    assert (done.records, done.stored, done.duplicates, done.still_rejected) == (N, 2 * N, 0, 0)
    assert stored(temp, rh) == expected(temp, rh)
    assert not RejectedSample.objects.exists()
    event = AuditEvent.objects.get(action=AuditAction.QUARANTINE_REPLAYED)
    assert event.object_id == str(source.pk) and event.changes["stored"] == 2 * N

    # Safe to repeat: nothing is left to replay, nothing is stored twice; the collector read the file once.
    again = q.replay(q.visible_to(owner, q.permissions.CHANGE), actor=owner)
    assert again.records == 0
    assert collect_source(source.pk).accepted == 0
    assert stored(temp, rh) == expected(temp, rh)


def test_what_still_fails_stays_with_its_new_reason_and_the_rest_is_stored(station):
    folder, instrument, source, temp, _rh = station
    lines = logger_lines(5)
    lines[2] = f"{stamp(2)},warm,42"  # a bad value: its temp reading fails after the fix, its rh is stored
    lines[3] = f"{' ' * 1600}{stamp(3)}"  # a corrupted line: 1,600 leading blanks and no values
    (folder / "day.csv").write_text("\n".join(lines) + "\n")
    collect_source(source.pk)
    assert RejectedSample.objects.filter(source=source).count() == 5
    fix_timestamp_format(source)
    owner = instrument.owner
    outcome = q.replay(q.visible_to(owner, q.permissions.CHANGE), actor=owner)
    assert outcome.records == 5
    assert outcome.stored == 2 * 3 + 1  # three good lines, and the bad line's rh
    kinds = sorted(RejectedSample.objects.values_list("kind", flat=True))
    assert kinds == [RejectionKind.MISSING_FIELD, RejectionKind.MISSING_FIELD, RejectionKind.NOT_NUMBER]
    bad = RejectedSample.objects.get(kind=RejectionKind.NOT_NUMBER)
    assert (bad.channel_id, bad.raw_value, bad.context["line"]) == (temp.pk, "warm", 3)
    assert bad.context["replay_of"] and bad.context["first_received"]
    corrupted = RejectedSample.objects.filter(kind=RejectionKind.MISSING_FIELD).first()
    assert corrupted.preview().startswith("⟨1,600 blanks⟩")
    assert corrupted.context["line"] == 4


def test_a_conflict_replayed_is_a_conflict_again_and_the_stored_value_stays(station):
    _, _instrument, source, temp, _ = station
    t = datetime_to_us(T0)
    ingest_samples(SampleBatch.from_rows([(temp.pk, t, 1.0)]), origin=Origin.FILE, source_id=source.pk)
    ingest_samples(SampleBatch.from_rows([(temp.pk, t, 2.0)]), origin=Origin.FILE, source_id=source.pk)
    conflict = RejectedSample.objects.get()
    assert conflict.kind == RejectionKind.CONFLICT and not conflict.is_line
    outcome = q.replay(RejectedSample.objects.all(), actor=None)
    assert (outcome.records, outcome.stored, outcome.conflicts) == (1, 0, 1)
    again = RejectedSample.objects.get()
    assert again.kind == RejectionKind.CONFLICT and again.context["replay_of"] == conflict.pk
    assert stored(temp) == {(temp.pk, t): 1.0}


def test_a_reading_refused_for_its_channel_kind_is_stored_after_the_channel_is_fixed(station):
    _, _, source, temp, _ = station
    t = datetime_to_us(T0)
    ingest_samples(SampleBatch.from_rows([(temp.pk, t, "OK")]), origin=Origin.FILE, source_id=source.pk)
    assert RejectedSample.objects.get().kind == RejectionKind.NOT_NUMBER
    temp.kind = ChannelKind.TEXT
    temp.save()
    outcome = q.replay(RejectedSample.objects.all(), actor=None)
    assert (outcome.records, outcome.stored, outcome.still_rejected) == (1, 1, 0)
    assert temp.text_samples.get().value == "OK"


def test_aggregate_records_are_not_replayed_and_say_why(station):
    _, _, source, temp, _ = station
    RejectedSample.objects.create(
        origin=Origin.API, channel=temp, source=source, reason="3 rejected readings past the quarantine limits", count=3
    )
    outcome = q.replay(RejectedSample.objects.all(), actor=None)
    assert outcome.records == 0 and outcome.skipped == {q.NOT_REPLAYABLE_AGGREGATE: 1}
    assert RejectedSample.objects.count() == 1


def test_replay_is_bounded_per_call_and_a_task_replays_the_rest(station, settings):
    folder, instrument, source, temp, rh = station
    settings.DAQBROKER_QUARANTINE_REPLAY_BATCH = 15
    (folder / "day.csv").write_text("\n".join(logger_lines()) + "\n")
    collect_source(source.pk)
    fix_timestamp_format(source)
    owner = instrument.owner
    filters = {"source": source.pk, "kind": RejectionKind.BAD_TIME}
    outcome = replay_selection(owner, filters)
    assert (outcome.records, outcome.queued) == (15, N - 15)
    assert RejectedSample.objects.count() == N - 15
    # The task the request queued (after its commit): batch by batch, up to the ids there were.
    replay_quarantine_task(owner.pk, filters, outcome.last_pk, RejectedSample.objects.order_by("-pk")[0].pk)
    assert not RejectedSample.objects.exists()
    assert stored(temp, rh) == expected(temp, rh)
    assert AuditEvent.objects.filter(action=AuditAction.QUARANTINE_REPLAYED).count() == 3


def test_a_viewer_cannot_replay_and_a_stranger_sees_nothing(station):
    folder, instrument, source, *_ = station
    (folder / "day.csv").write_text("\n".join(logger_lines(3)) + "\n")
    collect_source(source.pk)
    viewer, stranger = make_user("vic"), make_user("stan")
    services.share(instrument, viewer, "view")
    assert q.visible_to(viewer).count() == 3
    assert q.visible_to(viewer, q.permissions.CHANGE).count() == 0
    assert q.visible_to(stranger).count() == 0
    assert replay_selection(viewer, {}).records == 0
    assert RejectedSample.objects.count() == 3


# --- agent lines ----------------------------------------------------------------------------------


@pytest.fixture
def agent_station():
    owner = make_user("olga", is_staff=True)
    owner.groups.add(Group.objects.get(name=roles.OPERATORS))
    instrument = make_instrument(owner, slug="roof-station")
    agent, token = services.create_agent(owner=owner, name="roof-pc", instruments=[instrument])
    collect = {"kind": "file", "path": "/data", "pattern": "*.csv", "columns": ["time", "temp"]}
    source = DataSource.objects.create(
        instrument=instrument,
        name="logger",
        kind=SourceKind.AGENT,
        agent=agent,
        config={"collect": collect},
        interval_seconds=5,
    )
    temp = make_channel(instrument, slug="temp", source=source, source_field="temp")
    return owner, instrument, token, source, temp


def test_lines_an_agent_could_not_parse_replay_once_the_source_is_fixed(agent_station):
    owner, _instrument, token, source, temp = agent_station
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    config = client.get("/api/v1/agent/config/").json()
    spec = spec_from_server(config["sources"][0])
    # The agent's own parser, with the configuration the server sent: every line fails on its time.
    mapper = LineMapper(spec)
    lines = [(f"{stamp(i)},{20 + i}", datetime_to_us(T0)) for i in range(N)]
    assert mapper.readings(lines, file="/data/day.csv", first_line=1) == []
    items = [unparsed_item(u) for u in mapper.take_unparsed()]
    response = client.post("/api/v1/agent/unparsed/", {"batch_id": "b-1", "lines": items}, format="json")
    assert response.status_code == 200, response.content
    kept = RejectedSample.objects.filter(source=source)
    assert kept.count() == N and set(kept.values_list("kind", flat=True)) == {RejectionKind.BAD_TIME}
    assert kept.order_by("id")[0].where() == "/data/day.csv, line 1"

    source.config = {
        "collect": {**source.config["collect"], "timestamp": {"columns": ["time"], "format": "%d/%m/%Y %H:%M:%S"}}
    }
    source.save()
    outcome = q.replay(q.visible_to(owner, q.permissions.CHANGE), actor=owner)
    assert (outcome.records, outcome.stored, outcome.still_rejected) == (N, N, 0)
    values = dict(Sample.objects.filter(channel=temp).values_list("ts", "value"))
    assert values == {datetime_to_us(T0 + timedelta(minutes=i)): 20.0 + i for i in range(N)}
    assert q.replay(q.visible_to(owner, q.permissions.CHANGE), actor=owner).records == 0


def test_agent_lines_without_a_server_source_are_not_replayable(agent_station):
    RejectedSample.objects.create(origin=Origin.AGENT, reason="line not parsed: empty line", raw_value=" ")
    outcome = q.replay(RejectedSample.objects.all(), actor=None)
    assert outcome.skipped == {q.NOT_REPLAYABLE_NO_SOURCE: 1}


# --- kinds, preview, retention, export ------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("line not parsed: timestamp '1 1' is not a time in the format %Y", RejectionKind.BAD_TIME),
        ("line not parsed: empty timestamp", RejectionKind.BAD_TIME),
        ("line not parsed: line does not match the configured regular expression", RejectionKind.UNPARSED),
        ("field 'temp' is missing from the line", RejectionKind.MISSING_FIELD),
        ("value is not a number, and the channel is numeric", RejectionKind.NOT_NUMBER),
        ("conflict: 2.0 differs from the stored 1.0 at 2024-05-06T07:00:00+00:00", RejectionKind.CONFLICT),
        ("timestamp outside the accepted window (after 1900 and at most 86400 s in the future)", "out_of_window"),
        ("unknown channel, or not one the sender may write to", RejectionKind.UNKNOWN_CHANNEL),
        ("line not parsed: the collection run's parse budget was spent", RejectionKind.PARSE_BUDGET),
        ("something new", RejectionKind.OTHER),
    ],
)
def test_reasons_are_classified_into_stable_kinds(reason, kind):
    assert classify_reason(reason) == kind


def test_whitespace_and_control_characters_are_shown():
    assert visible_text("  a\tb\x00c\r ") == "··a⇥b␀c␍·"
    assert visible_text(" " * 1600 + "x") == "⟨1,600 blanks⟩x"
    assert visible_text("a b") == "a b"
    assert len(visible_text("x" * 500, 100)) == 100


def test_retention_deletes_old_records_in_batches_and_is_audited(station, settings, monkeypatch):
    _, _, source, _temp, _ = station
    settings.DAQBROKER_QUARANTINE_DAYS = 30
    monkeypatch.setattr(q, "RETENTION_BATCH_ROWS", 3)
    for _ in range(7):
        RejectedSample.objects.create(origin=Origin.FILE, source=source, reason="old")
    RejectedSample.objects.update(received_at=timezone.now() - timedelta(days=31))
    recent = RejectedSample.objects.create(origin=Origin.FILE, source=source, reason="new")
    assert expire_quarantine_task() == 7
    assert list(RejectedSample.objects.all()) == [recent]
    assert AuditEvent.objects.get(action=AuditAction.QUARANTINE_DELETED).changes["deleted"] == 7
    settings.DAQBROKER_QUARANTINE_DAYS = 0
    RejectedSample.objects.update(received_at=timezone.now() - timedelta(days=3650))
    assert expire_quarantine_task() == 0


def test_export_is_csv_with_file_line_and_formulas_defused(station):
    _, _, source, _temp, _ = station
    RejectedSample.objects.create(
        origin=Origin.FILE,
        source=source,
        reason="line not parsed: empty timestamp",
        kind=RejectionKind.BAD_TIME,
        raw_value="=HYPERLINK(1)",
        context={"file": "/srv/day.csv", "line": 7},
    )
    text = "".join(q.export_csv(RejectedSample.objects.all()))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 1
    assert (rows[0]["kind"], rows[0]["file"], rows[0]["line"]) == ("bad_time", "/srv/day.csv", "7")
    assert rows[0]["raw_value"] == "'=HYPERLINK(1)"
    assert rows[0]["source"] == source.name


def test_the_quarantine_export_defuses_every_formula_start_and_keeps_numbers(station):
    _, _, source, _temp, _ = station
    for raw in ("=1+1", "+1+cmd|' /C calc'!A0", "-1+cmd|' /C calc'!A0", "@SUM(A1)", "-7.5"):
        RejectedSample.objects.create(
            origin=Origin.FILE,
            source=source,
            reason="value is not a number",
            kind=RejectionKind.NOT_NUMBER,
            raw_value=raw,
        )
    rows = list(csv.DictReader(io.StringIO("".join(q.export_csv(RejectedSample.objects.all())))))
    assert sorted(r["raw_value"] for r in rows) == sorted(
        ["'=1+1", "'+1+cmd|' /C calc'!A0", "'-1+cmd|' /C calc'!A0", "'@SUM(A1)", "-7.5"]
    )


def test_grouping_counts_by_kind_source_and_day(station):
    _, _, source, _temp, _ = station
    for kind, n in ((RejectionKind.BAD_TIME, 3), (RejectionKind.NOT_NUMBER, 1)):
        for _ in range(n):
            RejectedSample.objects.create(origin=Origin.FILE, source=source, reason="x", kind=kind)
    records = RejectedSample.objects.all()
    assert [(k["kind"], k["records"]) for k in q.kind_counts(records)] == [("bad_time", 3), ("not_number", 1)]
    assert [(s["source"], s["kind"], s["records"]) for s in q.source_counts(records)] == [
        (source.pk, "bad_time", 3),
        (source.pk, "not_number", 1),
    ]
    days = q.daily_counts(records, days=7)
    assert len(days) == 7 and days[-1]["records"] == 4 and days[-1]["height"] == 100


# --- concurrency and the migration ----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_replays_of_the_same_records_at_once_store_each_line_once(station):
    folder, instrument, source, temp, rh = station
    (folder / "day.csv").write_text("\n".join(logger_lines()) + "\n")
    collect_source(source.pk)
    fix_timestamp_format(source)
    owner = instrument.owner
    outcomes: list[q.ReplayOutcome] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def replay_all() -> None:
        try:
            start.wait(timeout=30)
            outcomes.append(q.replay(q.visible_to(owner, q.permissions.CHANGE), actor=owner))
        except BaseException as exc:  # reported below, with the other thread's result
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=replay_all) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert sorted(o.records for o in outcomes) == [0, N]  # one consumed them all, the other found none
    assert sum(o.stored for o in outcomes) == 2 * N
    assert stored(temp, rh) == expected(temp, rh)
    assert not RejectedSample.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_migration_gives_rows_kept_before_kinds_their_kind():
    before = [("collection", "0010_correction_origin")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps.get_model("collection", "RejectedSample")
    reasons = {
        "line not parsed: timestamp '1 1' is not a time in the format %Y": RejectionKind.BAD_TIME,
        "conflict: 2.0 differs from the stored 1.0 at 2024-05-06T07:00:00+00:00": RejectionKind.CONFLICT,
        "value is not a number, and the channel is numeric": RejectionKind.NOT_NUMBER,
        "something only an old agent says": RejectionKind.UNPARSED,  # a whole line (no time kept)
    }
    for reason in reasons:
        raw_time = "" if "agent" in reason or "line" in reason else "2024-05-06T07:00:00+00:00"
        old.objects.create(origin="file", reason=reason, raw_time=raw_time, raw_value="x", context={})
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
    assert dict(RejectedSample.objects.values_list("reason", "kind")) == reasons


@pytest.mark.django_db(transaction=True)
def test_the_migration_makes_rows_of_a_nan_time_bad_time():
    """Rows that 0011 classified before the rule order was fixed: a NaN epoch time was "not_finite"."""
    before = [("collection", "0013_source_config_snapshot")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps.get_model("collection", "RejectedSample")
    wrong = old.objects.create(
        origin="file", reason="line not parsed: timestamp 'nan' is not finite", kind="not_finite", raw_value="x"
    )
    value = old.objects.create(
        origin="file", reason="value is not a finite number (NaN or infinity)", kind="not_finite", raw_time="t"
    )
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
    kinds = dict(RejectedSample.objects.values_list("pk", "kind"))
    assert (kinds[wrong.pk], kinds[value.pk]) == (RejectionKind.BAD_TIME, RejectionKind.NOT_FINITE)


@pytest.mark.django_db(transaction=True)
def test_a_large_replay_is_finished_by_a_real_worker(station, settings, service_env, start_process, monkeypatch):
    """The request replays one batch and queues the rest; a Celery worker process (real Redis) replays it."""
    folder, instrument, source, temp, rh = station
    settings.DAQBROKER_QUARANTINE_REPLAY_BATCH = 7
    service_env["DAQBROKER_QUARANTINE_REPLAY_BATCH"] = "7"
    service_env["DAQBROKER_LOG_LEVEL"] = "DEBUG"  # where a task's "succeeded" line is logged
    service_env["DAQBROKER_FILE_ROOTS"] = str(folder.parent)
    (folder / "day.csv").write_text("\n".join(logger_lines()) + "\n")
    collect_source(source.pk)
    fix_timestamp_format(source)
    # This process queues to the worker's broker and queue, as the web process would.
    monkeypatch.setitem(celery_app.conf, "broker_url", service_env["CELERY_BROKER_URL"])
    monkeypatch.setitem(celery_app.conf, "task_default_queue", service_env["DAQBROKER_CELERY_QUEUE"])
    # Celery caches its connection pool, producer pool and routing from the first message this process sent
    # (an earlier test's, to another broker or queue): start them afresh for this broker and queue.
    monkeypatch.setattr(celery_app, "_pool", None)
    monkeypatch.setattr(celery_app.amqp, "_producer_pool", None)
    for cached in ("queues", "router", "_rtable"):
        monkeypatch.delitem(celery_app.amqp.__dict__, cached, raising=False)
    worker = start_process("worker", celery_argv("worker", "--concurrency", "1", "--loglevel", "INFO"), service_env)

    outcome = replay_selection(instrument.owner, {"source": source.pk, "kind": RejectionKind.BAD_TIME})
    assert (outcome.records, outcome.queued) == (7, N - 7)
    wait_for(lambda: not RejectedSample.objects.exists(), timeout=90, message="the worker replayed the rest")
    assert worker.process.poll() is None, worker.log()
    # The task logs "succeeded" after its last batch has committed: wait for the line (the whole log, not its tail).
    wait_for(
        lambda: re.search(r"collection\.tasks\.replay_quarantine_task\[[^]]+\] succeeded", worker.log_path.read_text()),
        timeout=30,
        message="the worker's 'succeeded' line for the replay task",
    )
    assert stored(temp, rh) == expected(temp, rh)
    assert AuditEvent.objects.filter(action=AuditAction.QUARANTINE_REPLAYED).count() == 6  # 40 in batches of 7


def test_each_record_keeps_the_configuration_it_was_refused_under(station, client):
    folder, instrument, source, _temp, _rh = station
    lines = logger_lines(4)
    lines[2] = f"{stamp(2)},warm,42"  # still refused once the format is fixed: its temp is not a number
    (folder / "day.csv").write_text("\n".join(lines) + "\n")
    collect_source(source.pk)
    kept = RejectedSample.objects.filter(source=source)
    assert kept.count() == 4
    # One snapshot for the run's configuration, shared by every record made under it.
    assert kept.values("config_snapshot").distinct().count() == 1
    first = kept.order_by("id").first()
    source.refresh_from_db()
    assert q.config_when_set_aside(first) == source.config  # the configuration as validated and saved

    fix_timestamp_format(source)
    source.refresh_from_db()
    assert q.config_when_set_aside(first) != source.config
    assert q.config_when_set_aside(first)["timestamp"]["format"] == "iso"

    owner = instrument.owner
    outcome = q.replay(q.visible_to(owner, q.permissions.CHANGE), actor=owner)
    assert outcome.still_rejected == 1
    again = RejectedSample.objects.get(source=source)
    assert q.config_when_set_aside(again) == source.config  # refused again, under the fixed configuration
    assert again.config_snapshot_id != first.config_snapshot_id

    client.force_login(owner)
    detail = client.get(reverse("collection:quarantine-detail", args=[again.pk])).content.decode()
    assert "Source configuration when this was set aside" in detail and "(the same)" in detail
