"""The read-back endpoints over HTTP: what they answer, and to whom (every persona is also in the
permission matrix, accounts/tests/test_permission_matrix.py)."""

from __future__ import annotations

import csv
import io
from datetime import datetime

import numpy as np
import pyarrow.parquet as pq
import pytest
import xarray as xr
from django.db import connection
from django.test.utils import CaptureQueriesContext

from collection.models import Sample
from collection.services import SampleBatch, ingest_samples
from collection.services.query import latest_values
from collection.tests.readings import SECOND, T0, refresh_all
from daqbroker_agent.parsing import datetime_to_us
from instruments.choices import ChannelKind
from instruments.tests.factories import make_channel

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("module_world")]  # one world for the module's tests

DAY = 86400 * SECOND
ALPHA_TEMP = "alpha-station/alpha-station-temp"
ZULU_TEMP = "zulu-hidden/zulu-hidden-temp"


@pytest.fixture
def readings(world, django_capture_on_commit_callbacks):
    """A day of readings every 10 s on alpha's and zulu's temperature channels, one spike on alpha."""
    ts = T0 + np.arange(0, 86400, 10) * SECOND
    values = np.cos(np.arange(len(ts)) / 100)
    values[4321] = 55.5
    with django_capture_on_commit_callbacks(execute=True):
        for channel in (world.alpha_channel, world.zulu_channel):
            ingest_samples(SampleBatch(np.full(len(ts), channel.pk), ts, values))
    refresh_all()
    return ts, values


def test_a_short_range_answers_raw_readings(owner, readings):
    ts, values = readings
    response = owner.client.get(
        "/api/v1/samples/", {"channels": ALPHA_TEMP, "start": "2024-05-06T00:00:00Z", "end": str(T0 + 100 * SECOND)}
    )
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    (series,) = response.json()["series"]
    assert series == {
        "channel": owner.user.owned_instruments.get().channels.get().pk,
        "source": "raw",
        "t": ts[:10].tolist(),
        "value": values[:10].tolist(),
    }


def test_a_long_range_answers_tier_buckets_with_the_spike(owner, readings):
    response = owner.client.get(
        "/api/v1/samples/", {"channels": ALPHA_TEMP, "start": T0, "end": T0 + DAY, "max_points": 300}
    )
    (series,) = response.json()["series"]
    assert series["source"] == "tier" and series["tier"] == "1min"
    assert len(series["t"]) <= 300 and max(series["max"]) == 55.5
    assert sum(series["count"]) == 8640
    assert set(series) == {"channel", "source", "tier", "bucket_us", "t", "mean", "min", "max", "count"}


def test_channels_can_be_named_by_id_and_default_to_the_last_day(owner, world, readings):
    response = owner.client.get("/api/v1/samples/", {"channels": str(world.alpha_channel.pk)})
    assert response.status_code == 200
    body = response.json()
    assert body["end"] - body["start"] == DAY and body["max_points"] == 1000


@pytest.mark.parametrize(
    "query",
    [
        {"channels": ALPHA_TEMP, "start": T0 + DAY, "end": T0},
        {"channels": ALPHA_TEMP, "start": "yesterday"},
        {"channels": ALPHA_TEMP, "max_points": 1},
        {"channels": "not a reference"},
        {"channels": "nul\x00/in-a-slug"},
        {"channels": "99999999999999999999999"},
        {"channels": ","},
        {},
    ],
)
def test_bad_parameters_answer_400(owner, query):
    assert owner.client.get("/api/v1/samples/", query).status_code == 400


def test_a_channel_you_may_not_see_is_not_found_even_beside_visible_ones(shared_viewer, world, readings):
    for channels in (ZULU_TEMP, f"{ALPHA_TEMP},{ZULU_TEMP}", str(world.zulu_channel.pk), "nowhere/nothing"):
        for path in ("/api/v1/samples/", "/api/v1/statistics/", "/api/v1/export/"):
            response = shared_viewer.client.get(path, {"channels": channels})
            assert response.status_code == 404, (path, channels)
            assert "zulu" not in response.content.decode()
    assert shared_viewer.client.get("/api/v1/samples/", {"channels": ALPHA_TEMP}).status_code == 200


def test_agents_get_nothing(agent_scoped, readings):
    for path, query in (
        ("/api/v1/samples/", {"channels": ALPHA_TEMP}),
        ("/api/v1/statistics/", {"channels": ALPHA_TEMP}),
        ("/api/v1/export/", {"channels": ALPHA_TEMP}),
        ("/api/v1/instruments/alpha-station/latest/", {}),
    ):
        assert agent_scoped.client.get(path, query).status_code == 403


def test_statistics_over_http(personal_read_token, readings):
    _, values = readings
    response = personal_read_token.client.get(
        "/api/v1/statistics/", {"channels": ALPHA_TEMP, "start": T0, "end": T0 + DAY, "percentiles": "50,99"}
    )
    assert response.status_code == 200
    (stats,) = response.json()["statistics"]
    assert stats["count"] == len(values) and stats["max"] == 55.5
    assert stats["mean"] == pytest.approx(values.mean()) and stats["std"] == pytest.approx(values.std(ddof=1))
    assert stats["percentiles"] == {
        "p50": pytest.approx(np.percentile(values, 50)),
        "p99": pytest.approx(np.percentile(values, 99)),
    }
    assert stats["buckets_read"] > 0


def streamed(response) -> bytes:
    assert response.streaming
    return b"".join(response.streaming_content)


def test_csv_export_over_http_equals_the_stored_rows(owner, world, readings):
    response = owner.client.get(
        "/api/v1/export/", {"channels": ALPHA_TEMP, "time_format": "iso", "tz": "Europe/Zurich"}
    )
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="alpha-station-long.csv"'
    rows = list(csv.reader(io.StringIO(streamed(response).decode(), newline="")))
    assert rows[0] == ["time", "channel", "value"]
    stored = list(Sample.objects.filter(channel=world.alpha_channel).order_by("ts").values_list("ts", "value"))
    assert [(datetime_to_us(datetime.fromisoformat(t)), float(v)) for t, _, v in rows[1:]] == stored
    assert all(t.endswith("+02") for t, _, _ in rows[1:])


def test_parquet_wide_export_of_an_instrument(owner, world, readings):
    make_channel(world.alpha, slug="alpha-status", name="alpha status", kind=ChannelKind.TEXT)
    response = owner.client.get(
        "/api/v1/export/", {"instrument": "alpha-station", "layout": "wide", "format": "parquet"}
    )
    assert response.status_code == 200 and response["Content-Type"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(streamed(response)))
    assert table.column_names == ["time", "alpha-station-temp", "alpha-status"]
    assert table.schema.field("alpha-station-temp").metadata[b"units"] == b"degC"
    assert table.column("alpha-station-temp").to_pylist() == readings[1].tolist()


def test_export_over_http_leaves_sentinels_out_as_the_plot_does_unless_include_flagged(
    owner, world, django_capture_on_commit_callbacks
):
    """A logger's -7999 sentinels are flagged MISSING: the plot leaves them out, and so does the export of the
    same view; include_flagged brings them back, and quality says which they are."""
    world.alpha_channel.missing_values = [-7999]
    world.alpha_channel.save()
    ts = T0 + np.arange(120) * 60 * SECOND
    values = np.where(np.arange(120) % 4 == 0, 20.0, -7999.0)  # 30 readings, 90 sentinels
    with django_capture_on_commit_callbacks(execute=True):
        ingest_samples(SampleBatch(np.full(len(ts), world.alpha_channel.pk), ts, values))
    view = {"channels": ALPHA_TEMP, "start": str(T0), "end": str(T0 + 120 * 60 * SECOND), "time_format": "epoch_us"}
    plot = owner.client.get("/api/v1/samples/", {**view, "max_points": 1000}).json()
    plotted = plot["series"][0]["t"]

    def export(**extra) -> list[list[str]]:
        response = owner.client.get("/api/v1/export/", {**view, **extra})
        assert response.status_code == 200
        return list(csv.reader(io.StringIO(streamed(response).decode(), newline="")))

    rows = export()
    assert rows[0] == ["time", "channel", "value"]
    assert [int(r[0]) for r in rows[1:]] == plotted and len(plotted) == 30
    assert {float(r[2]) for r in rows[1:]} == {20.0}
    rows = export(include_flagged="true", quality="true")
    assert rows[0] == ["time", "channel", "value", "quality"]
    assert len(rows) - 1 == 120
    assert sorted({(float(r[2]), int(r[3])) for r in rows[1:]}) == [(-7999.0, 2), (20.0, 0)]
    response = owner.client.get("/api/v1/export/", {**view, "include_flagged": "perhaps"}, HTTP_ACCEPT="text/csv")
    assert response.status_code == 400 and "include_flagged" in response.json()


def test_netcdf_export_over_http_reads_back_with_xarray(owner, world, readings):
    response = owner.client.get("/api/v1/export/", {"instrument": "alpha-station", "format": "netcdf"})
    assert response.status_code == 200 and response["Content-Type"] == "application/x-netcdf"
    assert response["Content-Disposition"] == 'attachment; filename="alpha-station-long.nc"'
    ds = xr.open_dataset(io.BytesIO(streamed(response)), engine="h5netcdf").load()
    variable = ds["alpha-station-temp"]
    assert variable.values.tolist() == readings[1].tolist() and variable.attrs["units"] == "degC"
    times = ds["alpha-station-temp_time"].values.astype("datetime64[us]").astype(np.int64)
    assert times.tolist() == readings[0].tolist()


def test_csv_times_for_matlab_and_igor_over_http(owner, readings):
    for time_format, first in (("matlab", "739378.00000000000"), ("igor", "3797798400.000000")):
        response = owner.client.get("/api/v1/export/", {"channels": ALPHA_TEMP, "time_format": time_format})
        assert response.status_code == 200
        assert streamed(response).decode().splitlines()[1].split(",")[0] == first, time_format


def test_export_parameters_are_checked(owner, readings):
    for query in (
        {"channels": ALPHA_TEMP, "tz": "Nowhere/Land"},
        {"channels": ALPHA_TEMP, "format": "xlsx"},
        {"channels": ALPHA_TEMP, "time_format": "excel"},
        {"channels": ALPHA_TEMP, "format": "netcdf", "time_format": "matlab"},
        {"channels": ALPHA_TEMP, "instrument": "alpha-station"},
        {"channels": f"{ALPHA_TEMP},{ALPHA_TEMP}", "layout": "wide", "start": "2030-01-01", "end": "2029-01-01"},
    ):
        response = owner.client.get("/api/v1/export/", query, HTTP_ACCEPT="text/csv")
        assert response.status_code == 400, query
        assert response["Content-Type"] == "application/json"
    response = owner.client.get("/api/v1/export/", {"channels": ALPHA_TEMP, "time_format": "excel"})
    assert "matlab" in str(response.json()["time_format"])  # the message lists the choices
    response = owner.client.get("/api/v1/export/", {"channels": ALPHA_TEMP, "format": "hdf5", "time_format": "igor"})
    assert "time_format applies to CSV" in response.json()["detail"]


def test_a_netcdf_export_over_the_size_limit_answers_400_and_frees_the_slot(owner, readings, settings):
    settings.DAQBROKER_EXPORT_FILE_MAX_MB = 0.05  # the day's 8,640 readings are ~140 kB
    for _ in range(settings.DAQBROKER_HEAVY_REQUESTS_PER_USER + 1):  # a slot kept would answer 429
        response = owner.client.get("/api/v1/export/", {"channels": ALPHA_TEMP, "format": "netcdf"})
        assert response.status_code == 400 and "DAQBROKER_EXPORT_FILE_MAX_MB" in response.json()["detail"]


def test_latest_values_are_one_query_however_many_channels(world, owner, django_capture_on_commit_callbacks):
    status = make_channel(world.alpha, slug="alpha-status", name="alpha status", kind=ChannelKind.TEXT)
    with django_capture_on_commit_callbacks(execute=True):
        ingest_samples(SampleBatch.from_rows([(world.alpha_channel.pk, T0, 21.5), (status.pk, T0 + 1, "open")]))
    with CaptureQueriesContext(connection) as few:
        assert owner.client.get("/api/v1/instruments/alpha-station/latest/").status_code == 200
    for i in range(10):
        make_channel(world.alpha, slug=f"extra-{i}", name=f"extra {i}")
    with CaptureQueriesContext(connection) as many:
        response = owner.client.get("/api/v1/instruments/alpha-station/latest/")
    assert len(many.captured_queries) == len(few.captured_queries)
    body = response.json()
    assert body["instrument"] == "alpha-station" and len(body["channels"]) == 12
    by_slug = {c["slug"]: c for c in body["channels"]}
    assert by_slug["alpha-station-temp"] | {"id": None} == {
        "id": None,
        "slug": "alpha-station-temp",
        "name": "alpha-station-temp",
        "kind": "numeric",
        "units": "degC",
        "ts": T0,
        "time": "2024-05-06T00:00:00+00:00",
        "value": 21.5,
        "quality": 0,
    }
    assert (by_slug["alpha-status"]["value"], by_slug["extra-3"]["value"]) == ("open", None)


def test_the_latest_values_service_is_one_query(world, django_assert_num_queries):
    with django_assert_num_queries(1):
        assert len(latest_values(world.alpha.pk)) == 1


def test_latest_of_a_hidden_instrument_is_not_found(stranger, world):
    assert stranger.client.get("/api/v1/instruments/alpha-station/latest/").status_code == 404
