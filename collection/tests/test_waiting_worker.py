"""Issue 15's first complaint, end to end with real processes (Celery beat -> Redis -> Celery worker ->
ingest_samples -> database): a file source saved before its channels is left alone by the worker, its
cursor unmoved, and once its channels exist every line of the file is stored once, the last one (a
logger's, without a newline) included when the file has gone quiet."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
from django.db.models import Sum

from collection.choices import RunStatus
from collection.models import CollectionRun, RejectedSample, Sample
from conftest import celery_argv, wait_for
from instruments.models import DataSource
from instruments.tests.factories import make_channel, make_instrument, make_source

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

LINES = 50


def test_a_source_saved_before_its_channels_gets_every_line_once_they_exist(
    settings, tmp_path, service_env, start_process
):
    settings.DATA_DIR = tmp_path / "var"
    settings.DATA_DIR.mkdir(exist_ok=True)
    folder = tmp_path / "logger"
    folder.mkdir()
    day = datetime.now(UTC).date() - timedelta(days=2)  # recent: the readings lie near the file's modification time
    rows = [f"{day}T07:{i // 60:02d}:{i % 60:02d}Z,{i / 10:.1f}" for i in range(LINES)]
    (folder / "station.csv").write_text("\n".join(rows))  # the logger left its last line without a newline
    (folder / "busy.csv").write_text(f"{day}T07:00:00Z,1.0\n")
    instrument = make_instrument()
    config = {"path": str(folder), "columns": ["time", "temp"], "final_line_after": 1}
    waiting = make_source(instrument, name="station", config={**config, "pattern": "station.csv"}, interval_seconds=1)
    busy = make_source(instrument, name="busy", config={**config, "pattern": "busy.csv"}, interval_seconds=1)
    make_channel(instrument, slug="busy", source=busy, source_field="temp")

    start_process("worker", celery_argv("worker", "--concurrency", "1", "--loglevel", "INFO"), service_env)
    start_process("beat", celery_argv("beat", "--loglevel", "INFO"), service_env)

    # The worker is collecting (three runs of the other source), and the waiting source is left alone.
    wait_for(
        lambda: CollectionRun.objects.filter(source=busy, status=RunStatus.SUCCESS).count() >= 3,
        timeout=90,
        message="three runs of the source with a channel",
    )
    waiting.refresh_from_db()
    assert waiting.cursor == {} and waiting.last_run_at is None
    assert not CollectionRun.objects.filter(source=waiting).exists()
    assert waiting.collection_state == "waiting for channels"

    temp = make_channel(instrument, slug="temp", source=waiting, source_field="temp")
    wait_for(
        lambda: Sample.objects.filter(channel=temp).count() == LINES,
        timeout=90,
        message=f"all {LINES} lines stored",
    )
    runs = CollectionRun.objects.filter(source=waiting)
    first_done = runs.count()
    wait_for(lambda: runs.count() >= first_done + 2, timeout=60, message="two more runs of the source")
    assert Sample.objects.filter(channel=temp).count() == LINES
    assert runs.aggregate(n=Sum("accepted"))["n"] == LINES  # each line stored once, none read twice
    assert not runs.filter(status__in=[RunStatus.FAILED, RunStatus.WARNING]).exists()
    assert not RejectedSample.objects.filter(source_id=waiting.pk).exists()
    values = list(Sample.objects.filter(channel=temp).order_by("ts").values_list("value", flat=True))
    assert values == [pytest.approx(i / 10) for i in range(LINES)]
    assert all(run.worker.split(":")[1] != str(os.getpid()) for run in runs)  # the worker's, not ours
    state = DataSource.objects.get(pk=waiting.pk).cursor["files"]["station.csv"]
    assert state["offset"] == (folder / "station.csv").stat().st_size
