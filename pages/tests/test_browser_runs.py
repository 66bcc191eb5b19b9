"""The run-list page end to end in headless Chromium: start a run from the page while readings arrive, see
it drawn live as a band on the plot, pick a past run from "go to run" and export exactly its readings."""

from __future__ import annotations

from pathlib import Path

import pytest

from collection.models import Sample
from daqbroker_agent.parsing import datetime_to_us
from instruments.models import Run
from instruments.tests.page_world import alpha_dashboard
from pages.status import now_us
from pages.tests.browser import ingest, wait_until_drawn

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_run_started_from_the_page_is_drawn_live_and_a_past_run_exports_exactly(site, visitors):
    world = site
    olivia = visitors("olivia")
    olivia.log_in()
    page = olivia.desktop

    # The run-list page: start run 2 with its parameter; run 1 (the world's) ends nothing, none was active.
    olivia.open("/runs/")
    page.get_by_role("link", name="alpha-station-campaign").click()
    page.wait_for_url("**/runs/alpha-station-runs/")
    page.fill("#param-energy", "3.5")
    page.fill("#run-summary", "browser run")
    page.locator("#start-run").click()
    page.wait_for_url("**/runs/alpha-station-runs/")
    assert page.locator("[data-active-run]").inner_text() == "Run 2"
    run = Run.objects.get(run_list=world.alpha_runlist, number=2)
    assert run.end is None and run.parameters == {"energy": 3.5} and run.started_by == "olivia"
    olivia.shoot("runlist")

    # Readings keep arriving (as the demo's collector would write them) while the run is active.
    ingest(world.alpha_channel, [now_us()], [41.0])

    # The run's "Plot" link: the plot over the run's time, live, with the active run drawn as a band.
    page.locator('tr[data-run="2"]').get_by_role("link", name="Plot").click()
    page.wait_for_url("**/plot/**range=custom**")
    wait_until_drawn(page)
    page.get_by_role("button", name="Hour").click()
    page.get_by_label("Live").check()
    page.wait_for_function("() => (DAQPlot.main.runs || []).some(r => r.label === '2' && r.end === null)")
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('.plot .annotation-text'))"
        ".some(a => a.textContent === 'run 2 (active)')"
    )
    ingest(world.alpha_channel, [now_us()], [43.0])
    page.wait_for_function("() => Number(document.getElementById('main-plot').dataset.liveAppended) >= 1")
    shapes = page.evaluate("() => document.querySelector('.plot').layout.shapes.length")
    assert shapes >= 1  # run 2 (run 1 ended an hour before the test began: out of the last hour)
    olivia.shoot("plot-runs")

    # Go to run 1 from the plot's form: the view becomes exactly the run's time ...
    page.get_by_label("Live").uncheck()
    page.select_option("#run-list", "alpha-station-runs")
    page.fill("#run-label", "1")
    page.get_by_role("button", name="Go to run").click()
    page.wait_for_url("**range=custom**")
    wait_until_drawn(page)
    past = world.alpha_experiment_run
    start_ms, end_ms = datetime_to_us(past.start) // 1000, datetime_to_us(past.end) // 1000
    view = page.evaluate("() => DAQPlot.main.view")
    assert view == [start_ms, end_ms]

    # ... and its export holds exactly the readings stored in the run.
    in_run = Sample.objects.filter(
        channel=world.alpha_channel, ts__gte=datetime_to_us(past.start), ts__lt=datetime_to_us(past.end)
    ).count()
    page.locator("summary", has_text="Export").click()
    with page.expect_download() as download:
        page.locator("#export-csv").click()
    rows = Path(download.value.path()).read_text().splitlines()
    assert rows[0] == "time,channel,value" and len(rows) - 1 == in_run > 50

    # A dashboard follows the active run: its plots run from the run's start, live.
    olivia.open(f"/dashboards/{alpha_dashboard(world).pk}/?run=alpha-station-runs")
    assert "Following the active run 2" in page.inner_text("#following-run")
    page.wait_for_function("() => DAQPlot.instances.some(p => p.view && p.state.range === 'since')")
    followed = page.evaluate("() => DAQPlot.instances.filter(p => p.state.range === 'since')[0].view")
    assert followed[0] == datetime_to_us(run.start) // 1000

    # Stop it from the page.
    olivia.open("/runs/alpha-station-runs/")
    page.locator("#stop-run").click()
    page.wait_for_url("**/runs/alpha-station-runs/")
    assert "No run is active." in page.inner_text("#active-run")
    assert Run.objects.get(pk=run.pk).end is not None
