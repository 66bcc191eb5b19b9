"""What the plot page asks beyond readings: ``/api/v1/histogram/`` (histograms and time-sliced histograms
counted on the server, checked against numpy's own histogram of the readings the test wrote) and unit
conversion on display (``convert`` on ``/api/v1/samples/``). Every persona: the permission matrix."""

from __future__ import annotations

import numpy as np
import pytest

from collection.services import histogram
from collection.tests.readings import SECOND, T0, ingest, refresh_all
from instruments.tests.factories import make_channel

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("module_world")]  # one world for the module's tests

DAY = 86400 * SECOND
TEMP = "alpha-station/alpha-station-temp"


@pytest.fixture
def readings(world, django_capture_on_commit_callbacks):
    """A day of readings every 10 s (a slow wave and noise), one -9999 sentinel flagged out of range."""
    channel = world.alpha_channel
    channel.valid_min = -1000
    channel.save()
    ts = T0 + np.arange(0, 86400, 10) * SECOND
    rng = np.random.default_rng(3)
    values = 20 + 5 * np.sin(np.arange(len(ts)) / 900) + rng.normal(0, 0.3, len(ts))
    values[777] = -9999.0
    ingest(django_capture_on_commit_callbacks, channel.pk, ts, values)
    refresh_all()
    good = np.ones(len(ts), dtype=bool)
    good[777] = False
    return ts[good], values[good]


def get(persona, **query):
    return persona.client.get("/api/v1/histogram/", {"channels": TEMP, "start": T0, "end": T0 + DAY, **query})


def hist(persona, **query) -> dict:
    """The one channel's histogram of the answer."""
    response = get(persona, **query)
    assert response.status_code == 200, response.content
    (body,) = response.json()["histograms"]
    return body


def test_a_short_range_is_counted_from_every_reading_and_leaves_flagged_readings_out(owner, readings):
    _ts, values = readings
    body = hist(owner, bins=40)
    counts, edges = np.histogram(values, bins=40)
    assert body["source"] == "raw" and body["exact"] == 1.0
    assert body["counts"] == counts.tolist() and np.allclose(body["edges"], edges)
    assert body["total"] == len(values) == sum(body["counts"])
    assert body["below"] == body["above"] == 0


def test_the_tiers_give_the_exact_histogram_when_straddling_buckets_fit_the_raw_budget(owner, readings, monkeypatch):
    ts, values = readings
    monkeypatch.setattr(histogram, "RAW_WHOLE", 100)  # as if the range were long: the tier path
    body = hist(owner, bins=30, time_bins=24)
    expected, _, _ = np.histogram2d(ts, values, bins=[np.linspace(T0, T0 + DAY, 25), np.array(body["edges"])])
    assert body["source"] != "raw" and body["exact"] == 1.0
    assert body["edges"][0] == values.min() and body["edges"][-1] == values.max()
    assert np.array(body["counts"]).tolist() == expected.astype(int).tolist()
    assert len(body["time_edges"]) == 25


def test_beyond_the_raw_budget_straddling_buckets_are_spread_and_the_answer_says_how_exact(
    owner, readings, monkeypatch
):
    _ts, values = readings
    monkeypatch.setattr(histogram, "RAW_WHOLE", 100)
    monkeypatch.setattr(histogram, "RAW_BUDGET", 0)
    monkeypatch.setattr(histogram, "MAX_BUCKETS", 200)  # ten-minute buckets, most spanning several bins
    body = hist(owner, bins=20)
    truth, _ = np.histogram(values, bins=np.array(body["edges"]))
    assert body["exact"] < 1 and body["total"] == len(values)
    assert abs(sum(body["counts"]) - len(values)) <= 20  # each bin rounded
    # spread evenly within each bucket's min..max: close to the truth, not equal to it
    assert np.abs(np.array(body["counts"]) - truth).sum() < 0.1 * len(values)


def test_given_limits_count_the_readings_outside_them_below_and_above(owner, readings):
    _ts, values = readings
    body = hist(owner, bins=10, lo=18, hi=22)
    counts, _ = np.histogram(values, bins=np.linspace(18, 22, 11))
    assert body["counts"] == counts.tolist()
    assert body["below"] == int((values < 18).sum()) and body["above"] == int((values > 22).sum())


def test_one_limit_beyond_every_reading_leaves_them_all_below_or_above_an_upright_range(owner, readings):
    _ts, values = readings
    above_all = hist(owner, bins=10, lo=100)
    assert above_all["edges"] == pytest.approx(np.linspace(100, 101, 11).tolist())
    assert above_all["below"] == len(values) and sum(above_all["counts"]) == above_all["above"] == 0
    below_all = hist(owner, bins=10, hi=-100)
    assert below_all["edges"][0] == -101 and below_all["above"] == len(values)


def test_an_empty_range_answers_zero_counts(owner, readings):
    body = hist(owner, start=T0 - 2 * DAY, end=T0 - DAY)
    assert body["total"] == 0 and sum(body["counts"]) == 0


@pytest.mark.parametrize(
    "query",
    [
        {"bins": 0},
        {"bins": 100_000},
        {"time_bins": 10_000},
        {"lo": 5, "hi": 5},
        {"lo": "nan"},
        {"channels": f"{TEMP},{TEMP}x", "time_bins": 24},  # a histogram over time is of one channel
        {"channels": ",".join(f"{TEMP}{i}" for i in range(13))},  # at most 12 overlaid histograms
        {"convert": "1:furlong"},
        {"start": T0 + DAY, "end": T0},
    ],
)
def test_bad_parameters_answer_400_naming_the_problem(owner, readings, query):
    response = get(owner, **query)
    assert response.status_code == 400, response.content


def test_each_channel_asked_for_gets_its_own_histogram_in_the_order_asked(
    owner, world, readings, django_capture_on_commit_callbacks
):
    _ts, values = readings
    pressure = make_channel(world.alpha, name="Pressure", slug="alpha-station-pressure", units="hPa")
    ts = T0 + np.arange(0, 3600, 5) * SECOND
    hpa = 1013 + np.random.default_rng(5).normal(0, 2, len(ts))
    ingest(django_capture_on_commit_callbacks, pressure.pk, ts, hpa)
    response = get(owner, channels=f"{pressure.pk},{TEMP}", bins=25)
    first, second = response.json()["histograms"]
    assert (first["channel"], first["units"]) == (pressure.pk, "hPa")
    assert (second["channel"], second["units"]) == (world.alpha_channel.pk, "degC")
    for body, raw in ((first, hpa), (second, values)):  # each over its own readings' range
        counts, edges = np.histogram(raw, bins=25)
        assert body["counts"] == counts.tolist() and np.allclose(body["edges"], edges)


def test_converted_edges_and_limits_are_in_the_unit_shown_and_count_as_the_raw_readings_do(owner, world, readings):
    _ts, values = readings
    pk = world.alpha_channel.pk
    body = hist(owner, bins=16, lo=64.4, hi=71.6, convert=f"{pk}:degF")  # 18 to 22 degC
    assert body["units"] == "degF"
    assert np.allclose(body["edges"], np.linspace(64.4, 71.6, 17))
    counts, _ = np.histogram(values, bins=np.linspace(18, 22, 17))  # the readings as stored, in degC
    assert body["counts"] == counts.tolist()
    assert body["below"] == int((values < 18).sum()) and body["above"] == int((values > 22).sum())
    kelvin = hist(owner, bins=10, convert=f"{pk}:K")  # no limits: the readings' own range, converted
    counts, edges = np.histogram(values, bins=10)
    assert kelvin["counts"] == counts.tolist() and np.allclose(kelvin["edges"], edges + 273.15)


def samples(persona, **query):
    return persona.client.get("/api/v1/samples/", {"channels": TEMP, "start": T0, "end": T0 + DAY, **query})


def test_values_are_converted_to_the_unit_asked_for_raw_and_tier_answers_alike(owner, world, readings):
    world.alpha_channel.units = "degC"
    world.alpha_channel.save()
    _ts, values = readings
    pk = world.alpha_channel.pk
    raw = samples(owner, end=T0 + 100 * 10 * SECOND, convert=f"{pk}:degF").json()["series"][0]
    assert raw["source"] == "raw" and raw["units"] == "degF"
    assert raw["value"] == pytest.approx((values[:100] * 9 / 5 + 32).tolist())
    tier = samples(owner, max_points=100, convert=f"{pk}:K").json()["series"][0]
    plain = samples(owner, max_points=100).json()["series"][0]
    assert tier["source"] == "tier" and tier["units"] == "K" and "units" not in plain
    for key in ("mean", "min", "max"):
        assert tier[key] == pytest.approx([v + 273.15 for v in plain[key]])


@pytest.mark.parametrize(
    ("convert", "problem"),
    [
        ("{pk}:hPa", "measure different things"),
        ("{pk}:furlongs per bogus", "not a unit"),
        ("999999:degF", "not one of the channels"),
        ("degF", "channel id, a colon and a unit"),
    ],
)
def test_a_conversion_that_cannot_be_made_answers_400_saying_why(owner, world, readings, convert, problem):
    world.alpha_channel.units = "degC"
    world.alpha_channel.save()
    response = samples(owner, convert=convert.format(pk=world.alpha_channel.pk))
    assert response.status_code == 400 and problem in response.content.decode()


def test_annotations_are_the_views_logbook_entries_and_alarm_events_of_the_channels(owner, world):
    from datetime import timedelta

    from django.utils import timezone

    from collection.alarms.models import AlarmEvent
    from daqbroker_agent.parsing import datetime_to_us
    from instruments.models import LogbookEntry
    from instruments.tests.page_world import alpha_alarm, zulu_alarm

    now, hour = timezone.now(), timedelta(hours=1)
    LogbookEntry.objects.create(instrument=world.alpha, occurred_at=now - hour, text="valve <b>opened</b>")
    LogbookEntry.objects.create(instrument=world.alpha, occurred_at=now - timedelta(days=3), text="long ago")
    LogbookEntry.objects.create(instrument=world.zulu, occurred_at=now - timedelta(hours=1), text="zed's secret")
    event = alpha_alarm(world)
    zulu_alarm(world)
    AlarmEvent.objects.filter(pk=event.pk).update(raised_at=now - 48 * hour, cleared_at=now - 2 * hour)
    start, end = datetime_to_us(now - timedelta(hours=3)), datetime_to_us(now)
    body = owner.client.get("/api/v1/annotations/", {"channels": TEMP, "start": start, "end": end}).json()
    texts = [e["text"] for e in body["logbook"]]
    assert "valve <b>opened</b>" in texts  # escaped by the page, not here
    assert "long ago" not in texts and "zed's secret" not in texts
    assert [(a["channel"], a["message"]) for a in body["alarms"]] == [(world.alpha_channel.pk, event.message)]
    assert body["truncated"] is False
    later = owner.client.get("/api/v1/annotations/", {"channels": TEMP, "start": end - 3600 * SECOND, "end": end})
    assert later.json()["alarms"] == []  # cleared before the view begins


def test_an_expression_across_instruments_is_aligned_on_time_at_the_plots_resolution(
    owner, world, django_capture_on_commit_callbacks
):
    from instruments.tests.factories import make_channel, make_instrument

    other = make_instrument(owner=owner.user, slug="beta-lab", name="Beta lab")
    beta = make_channel(other, slug="temp", name="Temp")
    ts = T0 + np.arange(0, 3600, 10) * SECOND
    a_values = np.linspace(10, 20, len(ts))
    b_values = 5 + np.cos(np.arange(len(ts)))
    ingest(django_capture_on_commit_callbacks, world.alpha_channel.pk, ts, a_values)
    ingest(django_capture_on_commit_callbacks, beta.pk, ts[::2] + 3 * SECOND, b_values[::2])  # other times
    refresh_all()
    query = {"expression": f"{TEMP} - beta-lab/temp * 2", "start": T0, "end": T0 + 3600 * SECOND, "max_points": 60}
    body = owner.client.get("/api/v1/expression/", query).json()
    # independently: each minute's mean of each channel, then the expression
    a_minutes = a_values.reshape(60, 6).mean(axis=1)
    b_minutes = b_values[::2].reshape(60, 3).mean(axis=1)
    assert body["slice_us"] == 60 * SECOND and body["inputs"] == [TEMP, "beta-lab/temp"]
    assert body["t"] == (T0 + np.arange(60) * 60 * SECOND).tolist()
    assert body["value"] == pytest.approx((a_minutes - b_minutes * 2).tolist())


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("zulu-hidden/zulu-hidden-temp - 1", "no channel 1 of the expression (counting channels from the left)"),
        (f"{TEMP} - nowhere/nothing", "no channel 2 of the expression"),
        (f"{TEMP} + __import__('os')", "only these functions may be called"),
        (f"{TEMP} +", "not a valid expression"),
        ("temp * 2", "name at least one channel"),
        (f"{TEMP} * x", "x: not a channel"),
    ],
)
def test_a_bad_expression_answers_400_saying_why(owner, world, expression, problem):
    response = owner.client.get("/api/v1/expression/", {"expression": expression})
    assert response.status_code == 400 and problem in response.json()["expression"]
