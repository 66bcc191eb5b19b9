"""In a real Chromium: an agent's node health plotted and alarmed, and its raw files browsed and downloaded."""

from __future__ import annotations

import hashlib
import io
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from accounts import services
from accounts.tests.personas import build_world
from collection.alarms import evaluate
from collection.models import RawFile
from collection.services import raw_files
from instruments.choices import SourceKind
from instruments.models import DataSource
from pages.tests.browser import PASSWORD, SCREENSHOTS, wait_until_drawn

pytestmark = pytest.mark.django_db(transaction=True)

RAW = b"time,temp\n" + b"".join(b"2026-12-01T00:%02d:00Z,%d.25\n" % (i, i) for i in range(60)) + b"\xff end\n"


def test_node_health_is_plotted_and_alarmed_and_raw_files_download(live_server, visitors, settings, tmp_path):
    settings.DAQBROKER_ARCHIVE_DIR = tmp_path / "archive"
    world = build_world()
    olivia_user = world.users["olivia"]
    olivia_user.set_password(PASSWORD)
    olivia_user.save()
    agent, token = services.create_agent(owner=olivia_user, name="roof-pc", instruments=[world.alpha])
    beat = APIClient()
    beat.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    for used in (40.0, 70.0, 96.0):  # the spool's disk filling up over three heartbeats
        health = {"cpu_load": 0.3, "memory_used_percent": 55.0, "spool_disk_used_percent": used, "spool_depth": 5}
        assert (
            beat.post("/api/v1/agent/heartbeat/", {"spool_depth": 5, "health": health}, format="json").status_code
            == 200
        )
    agent.refresh_from_db()
    health_instrument = agent.health_instrument
    disk = health_instrument.channels.get(slug="spool_disk_used")
    evaluate.evaluate_channels([disk.pk])

    # The agent ships a raw file of alpha's logger.
    source = DataSource.objects.create(
        instrument=world.alpha,
        name="roof-logger",
        kind=SourceKind.AGENT,
        agent=agent,
        config={"collect": {"kind": "file", "path": "/data", "archive": True, "columns": ["time", "temp"]}},
    )
    sha = hashlib.sha256(RAW).hexdigest()
    modified = datetime(2026, 12, 1, 23, 59, tzinfo=UTC)
    raw_files.begin(
        agent, source=source, sha256=sha, size=len(RAW), name="day1.csv", path="/data/day1.csv", modified=modified
    )
    raw_files.append(agent, sha, 0, RAW)

    olivia = visitors("olivia")
    olivia.log_in()
    page = olivia.desktop

    # Node health plotted: the spool disk and the CPU load of the agent, from its heartbeats.
    cpu = health_instrument.channels.get(slug="cpu_load")
    olivia.open(f"/plot/?c={disk.pk},{cpu.pk}&range=1h")
    page.wait_for_function("() => DAQPlot.main.drawCount >= 1 && DAQPlot.main.series.length == 2")
    counts = page.evaluate("() => DAQPlot.main.series.map(s => [s.channel, s.t.length])")
    assert sorted(counts) == sorted([[disk.pk, 3], [cpu.pk, 3]])
    assert page.locator(".plot .main-svg path.js-line").count() >= 1
    page.screenshot(path=str(SCREENSHOTS / "node-health-plot-desktop.png"), full_page=True)

    # ... and alarmed: the default rule warns of the nearly full spool disk.
    olivia.open("/alarms/")
    assert "spool disk nearly full" in page.inner_text("main")

    # The raw files page: reached from the instrument, one file downloaded, then a zip of the ticked files.
    olivia.open(f"/instruments/{world.alpha.slug}/")
    page.get_by_role("link", name="Raw files").click()
    page.wait_for_url(f"**/instruments/{world.alpha.slug}/raw-files/")
    wait_until_drawn(page)
    olivia.shoot("raw-files")
    with page.expect_download() as one:
        page.get_by_role("link", name="day1.csv").click()
    assert Path(one.value.path()).read_bytes() == RAW
    page.get_by_role("checkbox", name="Choose day1.csv").check()
    with page.expect_download() as many:
        page.get_by_role("button", name="Download ticked as zip").click()
    with zipfile.ZipFile(io.BytesIO(Path(many.value.path()).read_bytes())) as archive:
        assert archive.read(f"{world.alpha.slug}/day1.csv") == RAW
    assert RawFile.objects.count() == 1
