"""Issue 15, point 4, end to end with real processes (Celery beat -> Redis -> Celery worker -> ingest_samples
-> database): a channel added after its file source has read gets every line once the source is re-read
through the API, from the live file and from a rotated one, and no line is stored twice."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.db.models import Sum
from django.urls import reverse
from rest_framework.test import APIClient

from collection.choices import RunStatus
from collection.models import CollectionRun, RejectedSample, Sample
from conftest import celery_argv, wait_for
from instruments.models import DataSource
from instruments.tests.factories import make_channel, make_instrument, make_source, make_user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ROTATED, LIVE = 20, 40


# Two days ago: a file written now holding readings of years ago would make its run a warning (the year check).
DAY = (datetime.now(UTC) - timedelta(days=2)).date().isoformat()


def rows(first: int, count: int) -> str:
    return "".join(
        f"{DAY}T07:{i // 60:02d}:{i % 60:02d}Z,{i / 10:.1f},{50 + i % 40}\n" for i in range(first, first + count)
    )


def test_a_reread_through_a_real_worker_stores_every_line_once(settings, tmp_path, service_env, start_process):
    settings.DATA_DIR = tmp_path / "var"
    settings.DATA_DIR.mkdir(exist_ok=True)
    folder = tmp_path / "logger"
    folder.mkdir()
    (folder / "station.csv.1").write_text(rows(0, ROTATED))  # rotated before the source was set up
    then = time.time() - 3600
    os.utime(folder / "station.csv.1", (then, then))
    (folder / "station.csv").write_text(rows(ROTATED, LIVE))
    owner = make_user()
    instrument = make_instrument(owner=owner)
    config = {"path": str(folder), "pattern": "station.csv", "columns": ["time", "temp", "rh"]}
    source = make_source(instrument, name="station", config=config, interval_seconds=1)
    temp = make_channel(instrument, slug="temp", source=source, source_field="temp")

    start_process("worker", celery_argv("worker", "--concurrency", "1", "--loglevel", "INFO"), service_env)
    start_process("beat", celery_argv("beat", "--loglevel", "INFO"), service_env)
    wait_for(lambda: Sample.objects.filter(channel=temp).count() == LIVE, timeout=90, message="the live file read")

    rh = make_channel(instrument, slug="rh", source=source, source_field="rh")  # added after the source read
    assert [c.slug for c in DataSource.objects.get(pk=source.pk).channels_added_since_read()] == ["rh"]
    client = APIClient()
    client.force_login(owner)
    response = client.post(reverse("api:source-reread", args=[source.pk]), {}, format="json")
    assert response.status_code == 202, response.content

    wait_for(
        lambda: (
            Sample.objects.filter(channel=rh).count() == ROTATED + LIVE
            and DataSource.objects.get(pk=source.pk).reread_requested_at is None
        ),
        timeout=90,
        message="every line of both files stored for the channel added later",
    )
    runs = CollectionRun.objects.filter(source=source)
    seen = runs.count()
    wait_for(lambda: runs.count() >= seen + 2, timeout=60, message="two more runs of the source")
    assert Sample.objects.filter(channel=temp).count() == ROTATED + LIVE  # the rotated file's lines too
    totals = runs.aggregate(accepted=Sum("accepted"), duplicates=Sum("duplicates"), conflicts=Sum("conflicts"))
    # Each line once per channel: temp's live lines twice read (the second time duplicates), nothing else.
    assert totals == {"accepted": 2 * (ROTATED + LIVE), "duplicates": LIVE, "conflicts": 0}
    assert not runs.filter(status__in=[RunStatus.FAILED, RunStatus.WARNING]).exists()
    assert not RejectedSample.objects.filter(source_id=source.pk).exists()
    assert runs.filter(note__startswith="re-read from the start").count() == 1
    assert not runs.exclude(error="").exists()
    assert all(run.worker.split(":")[1] != str(os.getpid()) for run in runs)  # the worker's, not ours
    assert DataSource.objects.get(pk=source.pk).channels_added_since_read() == []
