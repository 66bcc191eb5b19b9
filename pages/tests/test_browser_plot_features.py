"""The plot page's question-answering features in headless Chromium, on imported history (2018 readings
with a gap and a -9999 sentinel): the range it opens on, "All", flagged markers that do not drive the
autoscale, the band's polygons broken at gaps, per-axis log scale and limits kept in the link, the
histogram and the histogram over time counted by the server. Screenshots at 1280 and 390 px."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from collection.alarms.models import AlarmEvent, AlarmRule
from collection.choices import Quality
from collection.models import Sample
from daqbroker_agent.parsing import datetime_to_us
from instruments.models import Dashboard, DashboardPanel, LogbookEntry, PlotRange
from instruments.tests.factories import make_channel
from pages.tests.browser import SCREENSHOTS, drawn_again, draws, ingest, wait_until_drawn

pytestmark = pytest.mark.django_db(transaction=True)
FIVE_MINUTES = 300_000_000
# The plotly.js bundles the page has loaded, by name (the basic one for time series and histograms, the
# cartesian one besides or instead for a histogram over time).
BUNDLES = "() => Array.from(document.scripts, s => s.src.split('/').pop()).filter(n => n.startsWith('plotly-')).sort()"


def test_history_opens_on_its_data_with_flagged_markers_log_axes_and_histograms(site, visitors):
    world = site
    old = make_channel(world.alpha, slug="pressure-2018", name="Pressure 2018", units="hPa", valid_min=-1000)
    start = datetime_to_us(datetime(2018, 3, 1, tzinfo=UTC))
    stamps = start + np.arange(288) * FIVE_MINUTES  # one day, every 5 minutes ...
    stamps = stamps[(stamps < start + 8 * 3600e6) | (stamps >= start + 14 * 3600e6)]  # ... with a 6 h gap
    values = 1000 + 10 * np.sin(np.arange(len(stamps)) / 20)
    values[40] = -9999.0  # a missing-value sentinel: flagged out of range
    ingest(old, stamps.tolist(), values.tolist())
    LogbookEntry.objects.create(
        instrument=world.alpha, occurred_at=datetime(2018, 3, 1, 2, tzinfo=UTC), text="pump <b>restarted</b>"
    )
    rule = AlarmRule.objects.create(name="pressure-low", instrument=world.alpha, kind="below", threshold=991.0)
    AlarmEvent.objects.create(  # an alarm of that day, raised and cleared: a red band with a warning sign
        rule=rule, channel=old, kind=rule.kind, severity=rule.severity, message="pressure-2018: 990.1 (below 991)",
        raised_at=datetime(2018, 3, 1, 16, tzinfo=UTC), cleared_at=datetime(2018, 3, 1, 17, tzinfo=UTC),
    )  # fmt: skip
    assert Sample.objects.filter(channel=old).exclude(quality=Quality.OK).count() == 1
    first_ms, last_ms = int(stamps[0]) // 1000, int(stamps[-1]) // 1000

    olivia = visitors("olivia")
    olivia.log_in()
    page = olivia.desktop

    # Nothing in the last day: the plot opens on the latest day that has readings, and says so.
    olivia.open(f"/plot/?c={old.pk}&range=1d")
    assert page.evaluate(BUNDLES) == ["plotly-basic.min.js"]  # a time series: the smaller plotly.js
    view = page.evaluate("() => DAQPlot.main.view")
    assert page.evaluate("() => DAQPlot.main.shifted") is True
    assert view[0] == last_ms - 86_400_000 and last_ms < view[1] < last_ms + 900_000 + 1000
    assert "the latest readings shown" in page.locator(".plot-status").inner_text()
    assert not page.locator(".plot-overlay").is_visible()

    # "All" spans the first to the last reading (1% each side), not up to now.
    before = draws(page)
    page.get_by_role("button", name="All").click()
    drawn_again(page, before)
    view = page.evaluate("() => DAQPlot.main.view")
    pad = (last_ms - first_ms) * 0.01
    assert view == pytest.approx([first_ms - pad, last_ms + pad], abs=2)

    # Flagged readings shown: markers, not joined, and the axis follows the good readings only.
    before = draws(page)
    page.get_by_label("Flagged readings").check()
    drawn_again(page, before)
    traces = page.evaluate("() => document.querySelector('#main-plot .plot').data.map(t => [t.mode, t.y.length])")
    assert ["markers", 1] in traces
    line = page.evaluate("() => document.querySelector('#main-plot .plot').data[0].y")
    assert -9999 not in line and None in line  # the gap breaks the line
    y_range = page.evaluate("() => document.querySelector('#main-plot .plot').layout.yaxis.range")
    assert 980 < y_range[0] < 991 and 1009 < y_range[1] < 1020
    olivia.shoot("plot-history-flagged")

    # The band (tier answers) is one closed polygon per stretch without a gap.
    band = page.evaluate(
        "() => DAQPlot.Plot.bandPolygons({t: [0, 1, 2, 10, 11], y: [1, 2, null, 4, 5], min: [0, 1, null, 3, 4],"
        " max: [2, 3, null, 5, 6]})"
    )
    assert band == {
        "x": [0, 1, 1, 0, 0, None, 10, 11, 11, 10, 10, None],
        "y": [2, 3, 1, 0, 2, None, 5, 6, 4, 3, 5, None],
    }

    # Log scale and limits for the axis, kept in the link (and there after a reload).
    page.locator("#yaxes-menu summary").click()
    row = page.locator('.yaxis-row[data-axis="1"]')
    row.get_by_label("Log scale").check()
    row.locator("[name=min]").fill("900")
    row.locator("[name=max]").fill("1100")
    before = draws(page)
    page.locator("#yaxes-apply").click()
    drawn_again(page, before)
    assert "y1=log:900:1100" in page.url
    page.reload()
    wait_until_drawn(page)
    axis = page.evaluate("() => document.querySelector('#main-plot .plot').layout.yaxis")
    assert axis["type"] == "log" and axis["range"] == pytest.approx([np.log10(900), np.log10(1100)])
    # The logbook entry (a dotted line, ✎) and the alarm (a band from raised to cleared, ⚠) of the view.
    page.wait_for_function(
        "() => ['✎', '⚠'].every(s => document.querySelector('#main-plot .plot')"
        ".layout.annotations.some(a => a.text === s))"
    )
    bands = page.evaluate(
        "() => document.querySelector('#main-plot .plot').layout.shapes.filter(s => s.type === 'rect')"
        ".map(s => [DAQPlot.unwall(s.x0), DAQPlot.unwall(s.x1)])"
    )
    raised, cleared = (int(datetime(2018, 3, 1, h, tzinfo=UTC).timestamp() * 1000) for h in (16, 17))
    assert bands == [[raised, cleared]]
    olivia.shoot("plot-log-axis-limits-annotations")

    # Histogram of the channel over the view, counted by the server: every good reading once.
    page.get_by_label("Flagged readings").uncheck()
    wait_until_drawn(page)
    page.locator("#yaxes-menu summary").click()
    before = draws(page)
    page.get_by_role("button", name="All automatic").click()
    drawn_again(page, before)
    before = draws(page)
    page.select_option("#view-kind", "hist")
    drawn_again(page, before)
    histogram = page.evaluate("() => DAQPlot.main.histograms[0]")
    good = np.delete(values, 40)
    assert histogram["total"] == len(good) and sum(histogram["counts"]) == len(good)
    assert histogram["counts"] == np.histogram(good, bins=80)[0].tolist()
    assert page.evaluate("() => document.querySelector('#main-plot .plot').data[0].type") == "bar"
    assert "view=hist" in page.url
    assert page.evaluate(BUNDLES) == ["plotly-basic.min.js"]  # bars of the server's counts: still the basic one
    olivia.shoot("plot-histogram")

    # Two channels of two units: a histogram each (a panel per unit), the second counted in the unit its
    # axis shows (degF: edges converted by the server, the counts those of the readings as stored).
    temp = make_channel(world.alpha, slug="temp-2018", name="Temp 2018", units="degC")
    celsius = 15 + 3 * np.cos(np.arange(len(stamps)) / 30)
    ingest(temp, stamps.tolist(), celsius.tolist())
    olivia.open(f"/plot/?c={old.pk},{temp.pk}&range=all&view=hist&y2=lin:::degF")
    page.wait_for_function("() => DAQPlot.main.histograms && DAQPlot.main.histograms.length === 2")
    pressure_h, temp_h = page.evaluate("() => DAQPlot.main.histograms")
    assert pressure_h["counts"] == np.histogram(good, bins=80)[0].tolist()
    counts, edges = np.histogram(celsius, bins=80)
    assert temp_h["units"] == "degF" and temp_h["counts"] == counts.tolist()
    assert temp_h["edges"] == pytest.approx((edges * 9 / 5 + 32).tolist())
    figure = page.evaluate(
        "() => { const gd = document.querySelector('#main-plot .plot');"
        " return {types: gd.data.map(t => t.type + ':' + t.yaxis), title: gd.layout.xaxis2.title.text}; }"
    )
    assert figure == {"types": ["bar:y", "bar:y2"], "title": "degF"}
    olivia.shoot("plot-histograms")

    # ... and over time: a heatmap of time slices, of the channel chosen (the first by default).
    before = draws(page)
    page.select_option("#view-kind", "heatmap")
    drawn_again(page, before)
    page.wait_for_function(
        "() => document.querySelector('#main-plot .plot').data[0].type === 'heatmap'"
        " && Array.isArray(DAQPlot.main.histograms[0].counts[0])"
    )
    assert page.evaluate("() => DAQPlot.main.histograms.map(h => h.channel)") == [old.pk]
    assert page.evaluate(BUNDLES) == ["plotly-basic.min.js", "plotly-cartesian.min.js"]  # fetched for it
    assert sum(map(sum, page.evaluate("() => DAQPlot.main.histograms[0].counts"))) == len(good)
    before = draws(page)
    page.select_option("#heat-channel", str(temp.pk))
    drawn_again(page, before)
    heat = page.evaluate("() => DAQPlot.main.histograms[0]")
    assert heat["channel"] == temp.pk and heat["units"] == "degF" and sum(map(sum, heat["counts"])) == len(celsius)
    assert f"hc={temp.pk}" in page.url
    olivia.shoot("plot-heatmap")

    # Back to the time series: the logbook entry of the day is drawn, and an expression curve across
    # channels is computed by the server (a bad one says why in the menu).
    before = draws(page)
    page.select_option("#view-kind", "series")
    drawn_again(page, before)
    page.wait_for_function(  # drawn when the annotations arrive (they never hold up the readings)
        "() => document.querySelector('#main-plot .plot').layout.annotations.some(a => a.text === '✎')"
    )
    # The second axis (degF, on the right) picks its own round ticks: multiples of 1, 2, 2.5 or 5 x 10^n.
    right = page.evaluate(
        "() => { const a = document.querySelector('#main-plot .plot')._fullLayout.yaxis2;"
        " return {side: a.side, dtick: a.dtick, ticks: a._vals.map(v => v.x)}; }"
    )
    mantissa = right["dtick"] / 10 ** np.floor(np.log10(right["dtick"]))
    assert right["side"] == "right" and round(mantissa, 9) in (1, 2, 2.5, 5) and len(right["ticks"]) >= 3
    assert all(abs(t / right["dtick"] - round(t / right["dtick"])) < 1e-6 for t in right["ticks"])
    # Drawn again by the cartesian bundle that replaced the basic one, a zoom still asks for its range.
    before = draws(page)
    page.evaluate(
        "() => { const p = DAQPlot.main, v = p.view, hours = 3 * 3600e3;"
        " return Plotly.relayout(p.gd, {'xaxis.range': [DAQPlot.wall(v[0] + hours), DAQPlot.wall(v[1] - hours)]}); }"
    )
    drawn_again(page, before)
    assert page.evaluate("() => DAQPlot.main.requests.at(-1).reason") == "zoom"
    olivia.shoot("plot-right-axis")
    page.locator("#expr-menu summary").click()
    page.fill("#expr-input", "alpha-station/pressure-2018 - 1000")
    before = draws(page)
    page.get_by_role("button", name="Add curve").click()
    drawn_again(page, before)
    curve = page.evaluate("() => DAQPlot.main.curves[0]")
    assert "error" not in curve and len(curve["y"]) > 10 and all(-11 < v < 11 for v in curve["y"])
    page.fill("#expr-input", "nowhere/nothing + 1")
    before = draws(page)
    page.get_by_role("button", name="Add curve").click()
    drawn_again(page, before)
    assert "no channel 1 of the expression" in page.locator(".expr-error").inner_text()
    assert page.url.count("&e=") == 2
    olivia.shoot("plot-expression")

    # Saved to a new dashboard, the panel keeps the axes (degF on the right) and the expressions.
    page.locator("#save-menu summary").click()
    page.fill("#save-title", "History")
    page.fill("#save-panel-title", "2018")
    page.locator("#save-form button[type=submit]").click()
    page.wait_for_url("**/dashboards/*/")
    wait_until_drawn(page)
    page.wait_for_function(
        "() => document.querySelector('.daq-panel .plot').data.some(t => (t.name || '').startsWith('ƒ'))"
    )
    panel = page.evaluate(
        "() => { const gd = document.querySelector('.daq-panel .plot');"
        " return {names: gd.data.map(t => t.name), unit: gd.layout.yaxis2.title.text}; }"
    )
    assert panel["unit"] == "degF" and "Temp 2018 (degF)" in panel["names"]
    assert "ƒ alpha-station/pressure-2018 - 1000" in panel["names"]
    olivia.shoot("dashboard-saved-options")

    # The histogram over time of the second channel, saved to that dashboard: the panel keeps its channel.
    board = Dashboard.objects.get(title="History")
    olivia.open(f"/plot/?c={old.pk},{temp.pk}&range=all&view=heatmap&hc={temp.pk}")
    assert page.evaluate(BUNDLES) == ["plotly-cartesian.min.js"]  # opened on a heatmap: that one only
    page.locator("#save-menu summary").click()
    page.select_option("#save-target", f"/dashboards/{board.pk}/panels/")
    page.fill("#save-panel-title", "Heat")
    page.locator("#save-form button[type=submit]").click()
    page.wait_for_url(f"**/dashboards/{board.pk}/")
    wait_until_drawn(page)
    assert board.panels.get(title="Heat").options == {"view": "heatmap", "heat": temp.pk}
    page.wait_for_function(
        "() => DAQPlot.instances.some(p => p.histograms && p.histograms.length"
        f" && p.histograms[0].channel === {temp.pk})"
    )

    # The channel picker's list scrolls inside its card.
    olivia.open("/plot/")
    assert page.evaluate("() => getComputedStyle(document.querySelector('.picker-list')).maxHeight") != "none"


def test_a_dashboard_panels_options_are_changed_in_place_by_its_owner(site, visitors):
    """The panel's Options menu: the histogram over time of a chosen channel, then the time series with a log
    axis, limits, another unit shown and an expression curve, each saved and drawn again in place (the page
    not reloaded), kept after a reload; a refusal says why and changes nothing; a viewer has no menu."""
    world = site
    alpha = world.alpha_channel  # three days of minute readings (degC, 20..25 and one spike of 95)
    pressure = make_channel(
        world.alpha, slug="pressure", name="station pressure", units="hPa"
    )  # after alpha-station-temp
    stamps = Sample.objects.filter(channel=alpha).order_by("ts").values_list("ts", flat=True)[::10]
    ingest(pressure, list(stamps), [1000.0 + (i % 50) for i in range(len(stamps))])
    board = Dashboard.objects.create(owner=world.users["olivia"], title="Station", shared=True)
    panel = DashboardPanel.objects.create(dashboard=board, title="Both", time_range=PlotRange.WEEK)
    panel.channels.set([alpha, pressure])
    plot = ".daq-panel"

    olivia = visitors("olivia")
    olivia.log_in()
    page = olivia.desktop
    olivia.open(f"/dashboards/{board.pk}/")
    assert page.evaluate("() => DAQPlot.instances[0].state.kind") == "series"

    # The histogram over time, of the second channel: saved, drawn in place (no navigation), kept.
    page.evaluate("() => { window.notReloaded = true; }")
    page.locator(".panel-options-menu summary").click()
    menu = page.locator("form.panel-options")
    assert not menu.locator(".heat-choice").is_visible()  # the channel is asked for with that view only
    menu.get_by_label("Show", exact=True).select_option("heatmap")
    menu.locator(".heat-choice select").select_option(str(pressure.pk))
    before = draws(page, plot)
    menu.get_by_role("button", name="Apply and save").click()
    drawn_again(page, before, plot)
    heat = page.evaluate("() => DAQPlot.instances[0].histograms[0]")
    assert heat["channel"] == pressure.pk and sum(map(sum, heat["counts"])) == len(stamps)
    assert page.evaluate("() => window.notReloaded") is True
    assert (
        not page.locator(".panel-options-menu").get_attribute("open")
        and "histogram over time" in page.locator(".card-header").inner_text()
    )
    panel.refresh_from_db()
    assert panel.options == {"view": "heatmap", "heat": pressure.pk}
    assert f"hc={pressure.pk}" in page.locator("a.panel-open").get_attribute("href")
    page.reload()
    wait_until_drawn(page)
    page.wait_for_function("() => DAQPlot.instances[0].histograms && DAQPlot.instances[0].histograms.length")
    assert page.evaluate("() => DAQPlot.instances[0].histograms[0].channel") == pressure.pk

    # A refusal says why, in the menu; nothing is saved and the plot is left as it was.
    page.locator(".panel-options-menu summary").click()
    row = menu.locator('.yaxis-row[data-axis="1"]')
    row.get_by_label("Axis 1 (degC) from").fill("5")
    row.get_by_label("Axis 1 (degC) to").fill("1")
    drawn = draws(page, plot)
    menu.get_by_role("button", name="Apply and save").click()
    page.wait_for_function("() => document.querySelector('.panel-options-error').textContent.length > 0")
    assert "the top must be above the bottom" in menu.locator(".panel-options-error").inner_text()
    assert draws(page, plot) == drawn and page.locator(".panel-options-menu").get_attribute("open") is not None
    panel.refresh_from_db()
    assert panel.options == {"view": "heatmap", "heat": pressure.pk}

    # The time series again: a log degC axis from 60 to 110 shown in degF, and an expression curve.
    menu.get_by_label("Show", exact=True).select_option("series")
    row.get_by_label("Axis 1 (degC) log").check()
    row.get_by_label("Axis 1 (degC) from").fill("60")
    row.get_by_label("Axis 1 (degC) to").fill("110")
    row.get_by_label("Axis 1 (degC) shown in").select_option("degF")
    menu.get_by_label("Expression curves").fill(f"alpha-station/{pressure.slug} - 1000")
    olivia.desktop.screenshot(path=str(SCREENSHOTS / "dashboard-options-menu-desktop.png"), full_page=True)
    before = draws(page, plot)
    menu.get_by_role("button", name="Apply and save").click()
    drawn_again(page, before, plot)
    page.wait_for_function(
        "() => document.querySelector('.daq-panel .plot').data.some(t => (t.name || '').startsWith('ƒ'))"
    )
    figure = page.evaluate(
        "() => { const gd = document.querySelector('.daq-panel .plot');"
        " return {type: gd.layout.yaxis.type, range: gd.layout.yaxis.range, unit: gd.layout.yaxis.title.text,"
        " names: gd.data.map(t => t.name)}; }"
    )
    assert figure["type"] == "log" and figure["range"] == pytest.approx([np.log10(60), np.log10(110)])
    assert figure["unit"] == "degF" and f"ƒ alpha-station/{pressure.slug} - 1000" in figure["names"]
    panel.refresh_from_db()
    assert panel.options == {
        "axes": [{"units": "degC", "log": True, "min": 60.0, "max": 110.0, "unit": "degF"}],
        "exprs": [f"alpha-station/{pressure.slug} - 1000"],
    }
    olivia.shoot("dashboard-options-in-place")
    phone = olivia.phone
    phone.locator(".panel-options-menu summary").click()
    box = phone.locator(".panel-options-panel").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390  # the menu fits a phone's screen
    phone.screenshot(path=str(SCREENSHOTS / "dashboard-options-menu-phone.png"), full_page=True)

    # A viewer of the shared dashboard sees the panel as saved, without the menu.
    vera = visitors("vera")
    vera.log_in()
    vera.open(f"/dashboards/{board.pk}/")
    assert vera.desktop.locator(".panel-options-menu").count() == 0
    assert vera.desktop.evaluate("() => DAQPlot.instances[0].state.yaxes") == {
        "1": {"log": True, "min": 60.0, "max": 110.0, "unit": "degF"}
    }
