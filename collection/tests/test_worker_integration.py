"""The demo instrument collected end to end by real processes: simulator -> file -> Celery beat ->
Redis -> Celery worker -> ingest_samples -> database, with this test only watching the database."""

import os
import sys

import pytest

from collection import demo
from collection.choices import RunStatus
from collection.models import CollectionRun, Rollup, Sample
from conftest import celery_argv, wait_for
from instruments.tests.factories import make_user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_demo_readings_arrive_through_the_worker(settings, tmp_path, service_env, start_process):
    settings.DATA_DIR = tmp_path / "var"
    settings.DATA_DIR.mkdir(exist_ok=True)  # beat keeps its schedule there: it must exist before beat starts
    instrument, source = demo.register(make_user("operator"))
    source.interval_seconds = 1
    source.save()

    worker = start_process("worker", celery_argv("worker", "--concurrency", "1", "--loglevel", "INFO"), service_env)
    start_process("beat", celery_argv("beat", "--loglevel", "INFO"), service_env)
    start_process(
        "simulator",
        [sys.executable, "manage.py", "demo_instrument", "--interval", "0.2", "--lines", "200"],
        service_env,
    )

    air = instrument.channels.get(slug="air_temperature")
    wait_for(
        lambda: Sample.objects.filter(channel=air).count() >= 5,
        timeout=90,
        message="five air-temperature readings collected by the worker",
    )
    run = CollectionRun.objects.filter(source=source, status=RunStatus.SUCCESS, accepted__gt=0).first()
    assert run is not None
    host_pid = run.worker.rsplit(":", 1)
    assert int(host_pid[1]) != os.getpid(), "the readings must be collected by the worker process, not the test"
    assert worker.process.poll() is None, worker.log()
    air.refresh_from_db()
    assert air.last_ts is not None
    source.refresh_from_db()
    assert source.cursor["files"]["weather.csv"]["offset"] > 0
    assert source.consecutive_failures == 0, source.last_error
    # A rollup refresh, queued by the task's name (by the ingest's wake-up or beat's sweep), ran in the worker.
    wait_for(
        lambda: Rollup.objects.filter(channel=air).exists(),
        timeout=90,
        message="the air temperature's rollups refreshed by the worker",
    )
