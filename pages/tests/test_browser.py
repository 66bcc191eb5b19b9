"""End to end, in a real headless Chromium (Debian's, driven by Playwright) against a live server.

What a collaborator does: log in, open an instrument, plot it (real points from the database), zoom
(a new downsampled request for the zoomed range), live mode (a reading ingested during the test shows
up without a reload), save the plot to a dashboard, share the instrument with a second user who then
sees it while a third still gets 404, acknowledge an alarm, change a password, and get locked out
kindly. Every page is photographed at desktop (1280 px) and phone (390 px) width into
``test-artifacts/screenshots/`` (see docs/development.md).

One browser for the whole session (the machine is small); pages are reused.
"""

from __future__ import annotations

import math
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import xarray as xr
from django.urls import reverse

from collection.alarms.models import AlarmEvent
from collection.choices import Quality
from collection.models import Sample
from instruments.tests.page_world import alpha_alarm
from pages.status import now_us
from pages.tests.browser import (
    SCREENSHOTS,
    drawn_again,
    draws,
    ingest,
    wait_until_drawn,
)

pytestmark = pytest.mark.django_db(transaction=True)


def plot_state(page) -> dict:
    return page.evaluate(
        """() => {
          const plot = DAQPlot.main;
          return {
            draws: plot.drawCount,
            requests: plot.requests.map(r => r.url),
            series: plot.series.map(s => ({channel: s.channel, source: s.source, n: s.t.length,
                                            max: Math.max(...(s.max || s.y).filter(v => v !== null))})),
            view: plot.view,
            live: Number(document.getElementById('main-plot').dataset.liveAppended || 0),
          };
        }"""
    )


def test_a_collaborator_plots_zooms_watches_live_and_saves_a_dashboard(site, visitors):
    world = site
    olivia = visitors("olivia")
    login = olivia.desktop
    login.goto("/login/")
    login.screenshot(path=str(SCREENSHOTS / "login-desktop.png"), full_page=True)
    olivia.phone.goto("/login/")
    olivia.phone.screenshot(path=str(SCREENSHOTS / "login-phone.png"), full_page=True)
    olivia.log_in()

    # Home: alpha and its status.
    olivia.open("/")
    card = olivia.desktop.locator('[data-instrument="alpha-station"]')
    assert card.locator(".dot-ok").count() == 1
    assert "Last reading" in card.inner_text()
    olivia.shoot("home")

    # The instrument page, reached by clicking.
    card.get_by_role("link", name="Alpha-Station instrument").click()
    olivia.desktop.wait_for_url("**/instruments/alpha-station/")
    assert olivia.desktop.locator("svg.sparkline").count() == 1
    assert olivia.desktop.get_by_role("button", name="Add entry").is_visible()
    olivia.shoot("instrument")

    # Plot the last week: real points from the database, downsampled with the spike kept.
    olivia.desktop.get_by_role("link", name="Plot channels").click()
    olivia.desktop.wait_for_url("**/plot/**")
    wait_until_drawn(olivia.desktop)
    before = draws(olivia.desktop)
    olivia.desktop.get_by_role("button", name="Week").click()
    drawn_again(olivia.desktop, before)
    state = plot_state(olivia.desktop)
    assert state["series"][0]["channel"] == world.alpha_channel.pk
    assert 0 < state["series"][0]["n"] <= 4000
    assert state["series"][0]["max"] == pytest.approx(95.0)
    assert "range=7d" in olivia.desktop.url
    assert olivia.desktop.locator(".plot .main-svg path.js-line").count() >= 1
    olivia.shoot("plot")

    # Zoom by dragging across an hour or so of the plot: a new request for the zoomed range.
    box = olivia.desktop.locator(".plot .nsewdrag").first.bounding_box()
    y = box["y"] + box["height"] / 2
    x0 = box["x"] + box["width"] * 0.90
    olivia.desktop.mouse.move(x0, y)
    olivia.desktop.mouse.down()
    olivia.desktop.mouse.move(x0 + 20, y, steps=5)
    olivia.desktop.mouse.move(x0 + 40, y, steps=5)
    olivia.desktop.mouse.up()
    drawn_again(olivia.desktop, state["draws"])
    zoomed = plot_state(olivia.desktop)
    assert len(zoomed["requests"]) > len(state["requests"])
    last = zoomed["requests"][-1]
    assert "max_points=" in last and last != state["requests"][-1]
    assert zoomed["view"][1] - zoomed["view"][0] < (state["view"][1] - state["view"][0]) / 10
    assert zoomed["series"][0]["source"] in ("raw", "lttb")  # an hour or so holds few readings: every one
    assert "range=custom" in olivia.desktop.url and "start=" in olivia.desktop.url
    olivia.desktop.screenshot(path=str(SCREENSHOTS / "plot-zoomed-desktop.png"), full_page=True)

    # Export the zoomed view: its readings as CSV (every one the plot shows in view), the plot as PNG and SVG.
    # Some readings in view are flagged (a logger's sentinels): left out, as the plot leaves them out, until
    # the plot shows flagged readings; then the export has them too, with their quality.
    page = olivia.desktop
    start_us, end_us = math.floor(zoomed["view"][0] * 1000), math.ceil(zoomed["view"][1] * 1000)
    in_view = Sample.objects.filter(channel=world.alpha_channel, ts__gte=start_us, ts__lt=end_us)
    flagged = list(in_view.order_by("ts").values_list("ts", flat=True)[::4])
    Sample.objects.filter(channel=world.alpha_channel, ts__in=flagged).update(quality=Quality.MISSING)
    page.locator("summary", has_text="Export").click()
    with page.expect_download() as csv_download:
        page.locator("#export-csv").click()
    rows = Path(csv_download.value.path()).read_text().splitlines()
    assert rows[0] == "time,channel,value" and len(rows) - 1 == in_view.count() - len(flagged) > 0
    page.keyboard.press("Escape")
    drawn = plot_state(page)["draws"]
    page.get_by_label("Flagged readings").check()
    drawn_again(page, drawn)
    if not page.locator("#export-csv").is_visible():
        page.locator("summary", has_text="Export").click()
    with page.expect_download() as csv_download:
        page.locator("#export-csv").click()
    rows = Path(csv_download.value.path()).read_text().splitlines()
    link = parse_qs(urlsplit(page.locator("#export-csv").get_attribute("href")).query)
    assert link["include_flagged"] == ["true"] and (link["start"], link["end"]) == ([str(start_us)], [str(end_us)])
    assert rows[0] == "time,channel,value,quality" and len(rows) - 1 == in_view.count()
    assert sum(1 for row in rows[1:] if row.endswith(f",{int(Quality.MISSING)}")) == len(flagged)
    # The same view as NetCDF: the flagged readings' instants are kept, their values the fill (NaN).
    if not page.locator("#export-netcdf").is_visible():
        page.locator("summary", has_text="Export").click()
    with page.expect_download() as nc_download:
        page.locator("#export-netcdf").click()
    assert nc_download.value.suggested_filename.endswith(".nc")
    with xr.open_dataset(nc_download.value.path(), engine="h5netcdf") as ds:
        values = ds[next(name for name in ds.data_vars if name.endswith(world.alpha_channel.slug))].values
    assert len(values) == in_view.count() and int(np.isnan(values).sum()) == len(flagged)
    matlab = parse_qs(urlsplit(page.locator("#export-csv-matlab").get_attribute("href")).query)
    assert matlab["time_format"] == ["matlab"] and matlab["format"] == ["csv"]
    page.get_by_label("Flagged readings").uncheck()
    for button, magic in (("#image-png", b"\x89PNG"), ("#image-svg", b"<svg")):
        if not page.locator(button).is_visible():  # the menu closes after a download
            page.locator("summary", has_text="Export").click()
        with page.expect_download() as image:
            page.locator(button).click()
        assert Path(image.value.path()).read_bytes().lstrip()[: len(magic)] == magic, button

    # Live: a reading ingested now appears without a reload.
    before = draws(olivia.desktop)
    olivia.desktop.get_by_role("button", name="Hour").click()
    drawn_again(olivia.desktop, before)
    olivia.desktop.get_by_label("Live").check()
    assert "live=1" in olivia.desktop.url
    ingest(world.alpha_channel, [now_us()], [42.5])
    olivia.desktop.wait_for_function("() => Number(document.getElementById('main-plot').dataset.liveAppended) >= 1")
    live = plot_state(olivia.desktop)
    assert live["live"] >= 1 and live["series"][0]["max"] >= 42.5
    assert olivia.desktop.locator(".live-on").is_visible()

    # Save this view to a new dashboard, and look at it.
    olivia.desktop.get_by_label("Live").uncheck()
    olivia.desktop.locator("#save-menu summary").click()
    olivia.desktop.fill("#save-title", "Alpha overview")
    olivia.desktop.fill("#save-panel-title", "Temperature, last hour")
    olivia.desktop.locator("#save-form button[type=submit]").click()
    olivia.desktop.wait_for_url("**/dashboards/*/")
    wait_until_drawn(olivia.desktop)
    assert olivia.desktop.get_by_role("heading", name="Temperature, last hour").is_visible()
    olivia.shoot("dashboard")
    olivia.open(olivia.desktop.url + "edit/")
    olivia.shoot("dashboard-edit")
    olivia.open("/dashboards/")
    olivia.shoot("dashboards")


def test_sharing_alarms_and_accounts(site, visitors):
    world = site
    olivia, stan, zed = visitors("olivia"), visitors("stan"), visitors("zed")
    for visitor in (olivia, stan, zed):
        visitor.log_in()
    alpha_url = reverse("instruments:detail", args=["alpha-station"])

    # Before: stan gets 404 on alpha (the friendly page), and sees no instrument.
    assert stan.open(alpha_url).status == 404
    assert "not been shared with you" in stan.desktop.inner_text("main")
    stan.shoot("not-found")
    stan.open("/")
    assert stan.desktop.locator("[data-instrument]").count() == 0

    # Olivia shares alpha with stan through the sharing page.
    olivia.open(reverse("instruments:sharing", args=["alpha-station"]))
    olivia.desktop.fill("#id_name", "stan")
    olivia.desktop.select_option("#id_level", "view")
    olivia.desktop.get_by_role("button", name="Share", exact=True).click()
    olivia.desktop.wait_for_selector(".message-success")
    assert "stan now has view access" in olivia.desktop.inner_text(".messages")
    olivia.shoot("sharing")

    # After: stan sees it (without edit controls); zed still gets 404.
    stan.open("/")
    assert stan.desktop.locator('[data-instrument="alpha-station"]').count() == 1
    assert stan.open(alpha_url).status == 200
    assert stan.desktop.get_by_role("button", name="Add entry").count() == 0
    assert stan.desktop.get_by_role("link", name="Sharing").count() == 0
    assert zed.open(alpha_url).status == 404

    # An alarm: olivia acknowledges it from the alarms page.
    event = alpha_alarm(world)
    olivia.open("/alarms/")
    row = olivia.desktop.locator("tr", has_text="alpha-too-hot")
    assert row.locator(".dot-bad").count() == 1
    olivia.shoot("alarms")
    row.get_by_role("button", name="Acknowledge").click()
    olivia.desktop.wait_for_selector(".message-success")
    assert "acknowledged by olivia" in olivia.desktop.locator("tr", has_text="alpha-too-hot").inner_text()
    event.refresh_from_db()
    assert AlarmEvent.objects.get(pk=event.pk).acknowledged_by == world.users["olivia"]
    # Stan (view only) sees the alarm but no button.
    stan.open("/alarms/")
    assert stan.desktop.get_by_role("button", name="Acknowledge").count() == 0

    # Accounts: the password page, and the lockout page after too many wrong passwords.
    olivia.open(reverse("password_change"))
    olivia.shoot("password-change")
    stranger = visitors("nobody")
    for _ in range(6):
        stranger.desktop.goto("/login/")
        stranger.desktop.fill("#id_username", "zed")
        stranger.desktop.fill("#id_password", "not the password")
        stranger.desktop.click("button[type=submit]")
    assert "too many login attempts" in stranger.desktop.inner_text("main")
    stranger.desktop.screenshot(path=str(SCREENSHOTS / "locked-out-desktop.png"), full_page=True)
    stranger.phone.goto("/login/")
    stranger.phone.fill("#id_username", "zed")
    stranger.phone.fill("#id_password", "still not the password")
    stranger.phone.click("button[type=submit]")
    stranger.phone.screenshot(path=str(SCREENSHOTS / "locked-out-phone.png"), full_page=True)


def test_plots_follow_the_site_time_zone(site, visitors, settings):
    """Instants stay UTC inside; the axis, the custom range and saved panels are in the site's zone."""
    settings.TIME_ZONE = "Asia/Kolkata"  # UTC+05:30 all year
    world = site
    olivia = visitors("olivia")
    olivia.log_in()
    page = olivia.desktop
    olivia.open(f"/plot/?c={world.alpha_channel.pk}&range=7d")
    assert page.evaluate("DAQPlot.zone()") == "Asia/Kolkata"
    assert page.locator("label[for=range-start]").inner_text() == "From (Asia/Kolkata)"
    shift = page.evaluate(
        """() => {
          const start = document.querySelector('#main-plot .plot')._fullLayout.xaxis.range[0];
          const shown = typeof start === 'number' ? start : Date.parse(start.replace(' ', 'T') + 'Z');
          return shown - DAQPlot.main.view[0];
        }"""
    )
    assert shift == 5.5 * 3600 * 1000  # the axis starts at the view's start, as a clock in Kolkata reads it

    # A custom range typed in Kolkata time is that instant.
    before = draws(page)
    page.get_by_role("button", name="Custom…").click()
    page.fill("#range-start", "2026-11-25T10:00")
    page.fill("#range-end", "2026-11-25T12:00")
    page.locator("#custom-range button[type=submit]").click()
    drawn_again(page, before)
    view = page.evaluate("DAQPlot.main.view")
    assert view == [
        page.evaluate("Date.UTC(2026, 10, 25, 4, 30)"),
        page.evaluate("Date.UTC(2026, 10, 25, 6, 30)"),
    ]
    assert "start=2026-11-25T04%3A30%3A00Z" in page.url or "start=2026-11-25T04:30:00Z" in page.url

    # A zone with summer time: the offset follows the date, and shifting there and back is exact.
    settings.TIME_ZONE = "Europe/Lisbon"
    olivia.open(f"/plot/?c={world.alpha_channel.pk}&range=1d")
    offsets = page.evaluate(
        """() => [Date.UTC(2026, 0, 15, 12), Date.UTC(2026, 6, 15, 12), Date.UTC(2026, 2, 29, 0, 59, 59),
                  Date.UTC(2026, 2, 29, 1, 0, 0)]
                 .map(t => [DAQPlot.wall(t) - t, DAQPlot.unwall(DAQPlot.wall(t)) - t])"""
    )
    assert offsets == [[0, 0], [3_600_000, 0], [0, 0], [3_600_000, 0]]  # summer time from 01:00 UTC on 29 March
