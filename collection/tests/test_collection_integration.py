"""Collection, validation and alarms end to end with real processes: Celery beat dispatching, real
``celery worker`` processes on the real Redis broker collecting files, a pseudo-terminal serial device and
TCP instruments, evaluating alarms and posting webhooks to a local HTTP server; and a worker SIGKILLed in
the middle of a large file. The test process only writes files, simulates instruments and watches the
database."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
from django.db.models import Count, Sum

from collection.alarms.choices import DeliveryStatus, Medium, RuleKind, Transition
from collection.alarms.models import AlarmEvent, AlarmNotification, AlarmRule
from collection.choices import Quality, RunStatus
from collection.models import CollectionRun, Sample, TextSample
from conftest import celery_argv, wait_for
from daqbroker_agent.parsing import datetime_to_us
from instruments.choices import ChannelKind, SourceKind
from instruments.tests.factories import make_channel, make_instrument, make_source, make_user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

# Recent: a file's readings lie near its modification time (else the run is a warning: a wrong year?).
T0 = (datetime.now(UTC) - timedelta(days=2)).replace(hour=7, minute=0, second=0, microsecond=0)


@pytest.fixture
def service_env(service_env):
    """The shared child-process environment, with its data folder (beat keeps its schedule there)."""
    os.makedirs(service_env["DAQBROKER_DATA_DIR"], exist_ok=True)
    return service_env


def stamp(i: int, base: datetime = T0) -> str:
    return (base + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")


def append(path, lines, mode="a") -> None:
    with path.open(mode, encoding="utf-8") as handle:
        handle.write("".join(f"{line}\n" for line in lines))


def worker_argv(concurrency: int = 2) -> list[str]:
    return celery_argv("worker", "--concurrency", str(concurrency), "--loglevel", "INFO", "--without-heartbeat")


def count(channel) -> int:
    return Sample.objects.filter(channel=channel).count()


def runs_total(source) -> dict:
    return CollectionRun.objects.filter(source=source, status=RunStatus.SUCCESS).aggregate(
        accepted=Sum("accepted"), duplicates=Sum("duplicates")
    )


def test_file_sources_follow_growth_rotation_and_truncation_through_the_worker(tmp_path, service_env, start_process):
    instrument = make_instrument()
    csv_dir, dat_dir = tmp_path / "csv", tmp_path / "dat"
    csv_dir.mkdir()
    dat_dir.mkdir()
    csv_source = make_source(
        instrument,
        interval_seconds=1,
        config={
            "path": str(csv_dir),
            "pattern": "weather*.csv",
            "header_lines": 1,
            "columns": ["time", "temp", "status"],
            "timestamp": {"columns": ["time"]},
        },
    )
    temp = make_channel(instrument, slug="temp", source=csv_source, source_field="temp")
    status = make_channel(instrument, slug="status", source=csv_source, source_field="status", kind=ChannelKind.TEXT)
    dat_source = make_source(
        instrument,
        interval_seconds=1,
        config={
            "path": str(dat_dir),
            "pattern": "gauge*.dat",
            "format": "fixed_width",
            "widths": [20, 10],
            "columns": ["time", "level"],
            "timestamp": {"columns": ["time"]},
        },
    )
    level = make_channel(instrument, slug="level", source=dat_source, source_field="level", missing_values=[-9999])

    start_process("worker", worker_argv(), service_env)
    start_process("beat", celery_argv("beat", "--loglevel", "INFO"), service_env)

    csv, dat = csv_dir / "weather.csv", dat_dir / "gauge.dat"

    def csv_lines(numbers, header=False):
        return ["time,temp,status"] * header + [f"{stamp(i)},{i}.5,OK{i}" for i in numbers]

    def dat_lines(numbers):  # fixed width; every tenth reading is the -9999 sentinel
        return [f"{stamp(i)}{(-9999 if i % 10 == 0 else i * 2):>10}" for i in numbers]

    def stored_once(csv_count, dat_count, what):
        wait_for(lambda: count(temp) == csv_count and count(level) == dat_count, timeout=60, message=what)

    append(csv, csv_lines(range(100), header=True))
    append(dat, dat_lines(range(50)))
    stored_once(100, 50, "the first lines of the growing files")

    append(csv, csv_lines(range(100, 150)))  # the files grow ...
    append(dat, dat_lines(range(50, 75)))
    csv.rename(csv_dir / "weather.csv.1")  # ... are rotated away before being read again ...
    dat.rename(dat_dir / "gauge.dat.1")
    append(csv, csv_lines(range(150, 200), header=True))  # ... and new files start
    append(dat, dat_lines(range(75, 100)))
    stored_once(200, 100, "the rotated files' tails and the new files")

    append(csv, csv_lines(range(200, 210), header=True), mode="w")  # truncated, and rewritten shorter
    append(dat, dat_lines(range(100, 105)), mode="w")
    stored_once(210, 105, "the truncated files, read again from their start")

    assert list(Sample.objects.filter(channel=temp).order_by("ts").values_list("ts", "value")) == [
        (datetime_to_us(T0 + timedelta(seconds=i)), i + 0.5) for i in range(210)
    ]
    assert TextSample.objects.filter(channel=status).count() == 210
    levels = list(Sample.objects.filter(channel=level).order_by("ts").values_list("ts", "value", "quality"))
    assert levels == [
        (datetime_to_us(T0 + timedelta(seconds=i)), *((-9999.0, Quality.MISSING) if i % 10 == 0 else (i * 2.0, 0)))
        for i in range(105)
    ]
    # Every line was read exactly once: no run met a reading already stored.
    wait_for(
        lambda: runs_total(csv_source)["accepted"] == 420 and runs_total(dat_source)["accepted"] == 105,
        timeout=30,
        message="the runs' records",
    )
    assert runs_total(csv_source) == {"accepted": 420, "duplicates": 0}
    assert runs_total(dat_source) == {"accepted": 105, "duplicates": 0}


def test_serial_and_tcp_instruments_through_the_worker(service_env, start_process, pty_instrument, tcp_instrument):
    counter = iter(range(10_000))

    def answer(request: bytes) -> list[str]:
        return [f"{stamp(next(counter))},{1.25}"] if request in (b"READ?", b"READ?\r") else ["ERR"]

    serial_device = pty_instrument(answer)  # a serial port, as /dev/ttyUSB0 would be
    networked = tcp_instrument(answer)  # a serial-over-TCP converter, through pyserial's socket://
    streaming = tcp_instrument(lambda request: [f"{stamp(1000 + i)},{i}" for i in range(5)], stream=True)

    instrument = make_instrument()
    sources = {
        "pty": make_source(
            instrument,
            kind=SourceKind.SERIAL,
            interval_seconds=1,
            config={"url": serial_device.path, "baudrate": 115200, "request": "READ?\r\n", "line_terminator": "\r\n"},
        ),
        "socket": make_source(
            instrument,
            kind=SourceKind.SERIAL,
            interval_seconds=1,
            config={"url": f"socket://127.0.0.1:{networked.port}", "request": "READ?\n"},
        ),
        "tcp": make_source(
            instrument,
            kind=SourceKind.TCP,
            interval_seconds=1,
            config={"host": "127.0.0.1", "port": streaming.port, "timeout": 0.5},
        ),
    }
    channels = {
        name: make_channel(instrument, slug=name, source=source, source_field="1") for name, source in sources.items()
    }

    start_process("worker", worker_argv(concurrency=3), service_env)
    start_process("beat", celery_argv("beat", "--loglevel", "INFO"), service_env)
    wait_for(
        lambda: all(count(channels[name]) >= 3 for name in ("pty", "socket")) and count(channels["tcp"]) == 5,
        timeout=60,
        message="readings from the pty, socket:// and TCP instruments",
    )
    assert serial_device.requests[:3] == [b"READ?"] * 3
    assert networked.requests[:3] == [b"READ?"] * 3
    assert set(Sample.objects.filter(channel=channels["pty"]).values_list("value", flat=True)) == {1.25}
    assert list(Sample.objects.filter(channel=channels["tcp"]).order_by("ts").values_list("value", flat=True)) == [
        0.0,
        1.0,
        2.0,
        3.0,
        4.0,
    ]
    run = CollectionRun.objects.filter(source=sources["pty"], status=RunStatus.SUCCESS).first()
    assert int(run.worker.rsplit(":", 1)[1]) != os.getpid()


@pytest.mark.engine_dependent  # what the engine keeps of a transaction whose worker is killed mid-file
def test_a_worker_killed_mid_file_loses_and_duplicates_nothing(tmp_path, service_env, start_process):
    lines = 200_000
    folder = tmp_path / "big"
    folder.mkdir()
    with (folder / "big.csv").open("w") as handle:
        for i in range(lines):
            handle.write(f"{stamp(i)},{i},{-i}\n")
    instrument = make_instrument()
    source = make_source(
        instrument, interval_seconds=1, config={"path": str(folder), "pattern": "*.csv", "max_lines": 20_000}
    )
    a = make_channel(instrument, slug="a", source=source, source_field="1")
    b = make_channel(instrument, slug="b", source=source, source_field="2")
    env = {**service_env, "DAQBROKER_COLLECT_LEASE_SECONDS": "6"}

    start_process("beat", celery_argv("beat", "--loglevel", "INFO"), env)
    worker = start_process("worker-1", worker_argv(concurrency=1), env, group=True)
    wait_for(
        lambda: count(a) >= 20_000 and CollectionRun.objects.filter(source=source, status=RunStatus.RUNNING).exists(),
        timeout=90,
        message="some readings stored and a run in progress",
    )
    worker.kill()  # SIGKILL to the worker and its pool: mid-run, mid-transaction
    stored_at_kill = count(a)
    assert 0 < stored_at_kill < lines
    # (The run seen running could, in the millisecond before the kill, have committed: rare, and then the
    # rest of the test still checks that every line is stored exactly once.)
    killed_mid_run = CollectionRun.objects.filter(source=source, status=RunStatus.RUNNING).exists()

    start_process("worker-2", worker_argv(concurrency=1), env, group=True)
    wait_for(lambda: count(a) == lines and count(b) == lines, timeout=120, message="every line after the restart")

    assert Sample.objects.filter(channel__in=[a, b]).aggregate(n=Count("ts"), total=Sum("value")) == {
        "n": 2 * lines,
        "total": 0.0,  # a's i and b's -i: any reading lost or doubled would unbalance the sum
    }
    assert Sample.objects.filter(channel=a, value=lines - 1, ts=datetime_to_us(T0 + timedelta(seconds=lines - 1)))
    wait_for(lambda: runs_total(source)["accepted"] == 2 * lines, timeout=30, message="the last run's record")
    assert runs_total(source) == {"accepted": 2 * lines, "duplicates": 0}  # the killed run committed nothing
    if killed_mid_run:
        lost = wait_for(
            lambda: CollectionRun.objects.filter(source=source, status=RunStatus.FAILED).first(),
            timeout=30,
            message="the killed run recorded as lost",
        )
        assert lost.error.startswith("the worker stopped during this run")
    source.refresh_from_db()
    assert source.cursor["files"]["big.csv"]["lines"] == lines


def test_alarms_raise_clear_notify_and_detect_staleness_through_the_worker(
    tmp_path, service_env, start_process, http_recorder
):
    receiver = http_recorder([500, 500])  # the first two webhook calls fail
    owner = make_user("owner", email="owner@example.org")
    instrument = make_instrument(owner, contact_email="ops@example.org")
    folder = tmp_path / "logger"
    folder.mkdir()
    source = make_source(
        instrument, interval_seconds=1, config={"path": str(folder), "pattern": "*.csv", "columns": ["time", "temp"]}
    )
    make_channel(instrument, slug="temp", units="degC", source=source, source_field="temp", expected_interval_seconds=1)
    hot = AlarmRule.objects.create(
        name="hot", instrument=instrument, threshold=30, hysteresis=2, webhook_url=receiver.url
    )
    quiet = AlarmRule.objects.create(name="quiet", units="degC", kind=RuleKind.STALE, stale_factor=4)
    env = {
        **service_env,
        "DAQBROKER_WEBHOOK_RETRY_SECONDS": "1",
        "DAQBROKER_ALARM_CHECK_SECONDS": "1",
        "DAQBROKER_EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",
    }
    start_process("worker", worker_argv(concurrency=2), env)
    start_process("beat", celery_argv("beat", "--loglevel", "INFO"), env)

    now = datetime.now(UTC).replace(microsecond=0)
    path = folder / "temp.csv"
    append(path, [f"{stamp(-4, now)},25", f"{stamp(-3, now)},31", f"{stamp(-2, now)},29.5"])
    event = wait_for(lambda: AlarmEvent.objects.filter(rule=hot).first(), timeout=60, message="the alarm raised")
    assert (event.raised_value, event.cleared_at) == (31.0, None)
    wait_for(lambda: len(receiver.requests) == 3, timeout=30, message="the webhook, retried twice")
    assert [r["status"] for r in receiver.requests] == [500, 500, 200]

    append(path, [f"{stamp(-1, now)},28", f"{stamp(0, now)},27"])
    wait_for(
        lambda: AlarmEvent.objects.filter(rule=hot, cleared_at__isnull=False).exists(),
        timeout=60,
        message="the alarm cleared by hysteresis",
    )
    event.refresh_from_db()
    assert event.cleared_value == 28.0  # 29.5 was not enough (30 - 2)
    wait_for(lambda: len(receiver.requests) == 4, timeout=30, message="the clear webhook")
    assert [p["transition"] for p in receiver.payloads()] == ["raised"] * 3 + ["cleared"]

    # Silence: no reading for 4 x 1 s, then the periodic check raises "stale"; a new line clears it.
    stale = wait_for(lambda: AlarmEvent.objects.filter(rule=quiet).first(), timeout=60, message="stale detected")
    append(path, [f"{stamp(0, datetime.now(UTC))},26"])
    wait_for(
        lambda: AlarmEvent.objects.filter(pk=stale.pk, cleared_at__isnull=False).exists(),
        timeout=60,
        message="staleness cleared by a new reading",
    )

    def all_sent():
        rows = AlarmNotification.objects.all()
        return rows.count() == 6 and all(n.status == DeliveryStatus.SENT for n in rows)

    wait_for(all_sent, timeout=60, message="every notification sent")
    emails = AlarmNotification.objects.filter(medium=Medium.EMAIL)
    # One email per raise and per clear of each alarm, to the contact address and the owner.
    assert sorted((n.event.rule.name, n.transition) for n in emails) == [
        ("hot", Transition.CLEARED),
        ("hot", Transition.RAISED),
        ("quiet", Transition.CLEARED),
        ("quiet", Transition.RAISED),
    ]
    assert all(n.recipients == ["ops@example.org", "owner@example.org"] for n in emails)
    assert AlarmEvent.objects.count() == 2
