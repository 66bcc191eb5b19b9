"""The Python read client (``daqbroker_agent.reader``) against a real HTTP server (``live_server``) on the test
database: readings stored through the one write path, read back as DataFrames and compared with the rows."""

from __future__ import annotations

import socket
import threading
import tomllib
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from django.conf import settings
from packaging.requirements import Requirement

from accounts import services
from accounts.choices import TokenScope
from collection.models import Sample
from collection.services import SampleBatch, ingest_samples, slots
from collection.tests.test_agent_e2e import AGENT_PATH, WebServer
from conftest import REPO, database_url_for_subprocess
from daqbroker_agent import reader
from daqbroker_agent.parsing import datetime_to_us
from instruments.choices import ChannelKind
from instruments.models import Run
from instruments.tests.factories import make_channel, make_instrument, make_run_list, make_user

# The client is the subject (paging, retries, frames); the exports it reads are tested on every engine
# in-process (test_export.py, test_readings_api.py), so these run in the first pass only (docs/testing.md).
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.engine_independent]

SECOND = 1_000_000
T0 = datetime_to_us(datetime(2024, 5, 6, tzinfo=UTC))
N = 600  # readings per channel, one a second


class Lab:
    def __init__(self):
        self.owner = make_user("olga", password=None)
        self.stranger = make_user("sam", password=None)
        self.station = make_instrument(self.owner, slug="station", name="Station")
        self.hidden = make_instrument(self.stranger, slug="hidden", name="Hidden")
        self.temp = make_channel(self.station, slug="temp", units="degC", valid_min=-50, valid_max=60)
        self.pressure = make_channel(self.station, slug="pressure", units="hPa", missing_values=[-9999])
        self.secret = make_channel(self.hidden, slug="secret", units="V")
        self.note = make_channel(self.station, slug="note", kind=ChannelKind.TEXT)
        ts = T0 + np.arange(N, dtype=np.int64) * SECOND
        temp = 20 + np.sin(np.arange(N) / 30.0)
        temp[[10, 250, 599]] = 999.0  # out of range: flagged
        pressure = 1000 + np.arange(N) * 0.125
        pressure[[5, 300]] = -9999  # missing-value sentinel: flagged
        for channel, values in ((self.temp, temp), (self.pressure, pressure), (self.secret, np.ones(N))):
            ingest_samples(SampleBatch(np.full(N, channel.pk, dtype=np.int64), ts, values))
        notes = np.array(["start", "valve open", "stop"], dtype=object)
        ingest_samples(
            SampleBatch(np.full(3, self.note.pk, dtype=np.int64), T0 + np.array([0, 60, 120]) * SECOND, notes)
        )
        _, self.token = services.create_personal_token(user=self.owner, name="notebook", scope=TokenScope.READ)
        _, self.stranger_token = services.create_personal_token(user=self.stranger, name="theirs")
        _, self.agent_token = services.create_agent(owner=self.owner, name="logger", instruments=[self.station])


@pytest.fixture
def lab():
    return Lab()


@pytest.fixture
def client(live_server, lab):
    with reader.Client(live_server.url, lab.token, retries=2, backoff=0.05) as c:
        yield c


def stored(channel, *, include_flagged=False) -> pd.DataFrame:
    rows = Sample.objects.filter(channel=channel).order_by("ts")
    if not include_flagged:
        rows = rows.filter(quality=0)
    ts, value, quality = zip(*rows.values_list("ts", "value", "quality"), strict=True)
    index = pd.DatetimeIndex(pd.to_datetime(np.array(ts, np.int64), unit="us", utc=True), name="time")
    return pd.DataFrame({"value": np.array(value, float), "quality": np.array(quality, np.int64)}, index=index)


START, END = datetime(2024, 5, 6, tzinfo=UTC), datetime(2024, 5, 6, 1, tzinfo=UTC)


def test_readings_are_what_the_database_holds_without_the_flagged_ones(client, lab):
    df = client.readings(["station/temp", "station/pressure"], START, END)
    assert isinstance(df.index, pd.DatetimeIndex) and str(df.index.tz) == "UTC"
    assert df.attrs["units"] == {"station/temp": "degC", "station/pressure": "hPa"}
    assert "quality" not in df
    for label, channel in (("station/temp", lab.temp), ("station/pressure", lab.pressure)):
        got = df[df["channel"] == label]
        want = stored(channel)
        assert len(want) in (N - 3, N - 2)
        assert got.index.equals(want.index)
        np.testing.assert_array_equal(got["value"].to_numpy(), want["value"].to_numpy())
    assert 999.0 not in df["value"].to_numpy() and -9999 not in df["value"].to_numpy()


def test_flagged_readings_come_with_their_quality_on_request(client, lab):
    df = client.readings(lab.pressure.pk, START, END, include_flagged=True)
    want = stored(lab.pressure, include_flagged=True)
    assert len(df) == N and df.index.equals(want.index)
    np.testing.assert_array_equal(df["value"].to_numpy(), want["value"].to_numpy())
    np.testing.assert_array_equal(df["quality"].to_numpy(), want["quality"].to_numpy())
    assert set(df.loc[df["value"] == -9999, "quality"]) == {2}


def test_the_wide_layout_puts_channels_side_by_side_with_units(client, lab):
    df = client.readings(["station/temp", "station/pressure"], START, END, wide=True)
    assert list(df.columns) == ["station/temp", "station/pressure"]
    assert df.attrs["units"]["station/pressure"] == "hPa"
    assert len(df) == N  # at every instant one of the two is good (their flagged readings fall apart)
    assert df["station/temp"].isna().sum() == 3 and df["station/pressure"].isna().sum() == 2
    temp, pressure = stored(lab.temp), stored(lab.pressure)
    np.testing.assert_array_equal(df["station/temp"].dropna().to_numpy(), temp["value"].to_numpy())
    assert df["station/temp"].dropna().index.equals(temp.index)
    assert df["station/pressure"].dropna().index.equals(pressure.index)
    flagged = client.readings(["station/temp"], START, END, wide=True, include_flagged=True)
    assert list(flagged.columns) == ["station/temp", "station/temp quality"] and len(flagged) == N


def test_text_channels_come_as_text(client, lab):
    long = client.readings(["station/note", "station/temp"], START, END)
    notes = long[long["channel"] == "station/note"]
    assert list(notes["text"]) == ["start", "valve open", "stop"] and notes["value"].isna().all()
    assert list(long["channel"].unique()) == ["station/note", "station/temp"]
    wide = client.readings(["station/note", "station/temp"], START, END, wide=True)
    assert wide.loc[pd.Timestamp(T0 + 60 * SECOND, unit="us", tz="UTC"), "station/note"] == "valve open"
    assert wide["station/note"].notna().sum() == 3 and wide["station/temp"].notna().sum() == N - 3


def test_a_long_range_is_read_in_pieces_and_put_together_exactly(client, lab):
    pieces = list(client.iter_readings(["station/temp", "station/pressure"], START, END, piece_readings=150))
    assert len(pieces) >= 8  # 1,195 readings in pieces of at most 150 (the range is longer than the readings)
    assert all(len(p) <= 150 for p in pieces)
    whole = pd.concat(pieces)
    for label, channel in (("station/temp", lab.temp), ("station/pressure", lab.pressure)):
        got = whole[whole["channel"] == label].sort_index()
        want = stored(channel)
        assert got.index.equals(want.index)  # nothing lost, nothing twice at the seams
        np.testing.assert_array_equal(got["value"].to_numpy(), want["value"].to_numpy())
    joined = client.readings(["station/temp", "station/pressure"], START, END, piece_readings=150)
    assert len(joined) == len(whole) and joined.attrs["units"]["station/temp"] == "degC"
    # As one export: by channel in the order asked, then time.
    assert list(joined["channel"]) == ["station/temp"] * (N - 3) + ["station/pressure"] * (N - 2)
    assert joined.index[: N - 3].is_monotonic_increasing and joined.index[N - 3 :].is_monotonic_increasing


def test_a_progress_bar_counts_the_readings(client, capsys):
    df = client.readings(["station/temp", "station/pressure"], START, END, piece_readings=300, progress=True)
    assert len(df) == 1195
    assert "100%" in (err := capsys.readouterr().err) and "1.20k/1.20k" in err  # 1,195 of 1,195


def test_an_empty_range_gives_an_empty_frame_with_its_columns(client):
    df = client.readings("station/temp", datetime(2020, 1, 1), datetime(2020, 1, 2))
    assert len(df) == 0 and "value" in df and str(df.index.tz) == "UTC"


def test_a_run_is_a_range(client, lab):
    run_list = make_run_list(lab.owner, instruments=[lab.station], slug="beam")
    Run.objects.create(
        run_list=run_list, number=7, start=START + timedelta(seconds=100), end=START + timedelta(seconds=200)
    )
    runs = client.runs()
    assert list(runs["run"]) == ["beam/7"]
    assert runs["start"].iloc[0] == pd.Timestamp(START + timedelta(seconds=100))
    assert "beam" in client.run_lists().index
    df = client.readings("station/pressure", run="beam/7")
    assert df.index.min() == pd.Timestamp(START + timedelta(seconds=100))
    assert df.index.max() == pd.Timestamp(START + timedelta(seconds=199))
    assert len(df) == 100
    stats = client.statistics("station/pressure", run="beam/7")
    assert stats.loc["station/pressure", "count"] == 100
    with pytest.raises(reader.BadRequest, match="run"):
        client.readings("station/pressure", run="beam/999")


def test_the_registry_latest_and_statistics(client, lab):
    instruments = client.instruments()
    assert list(instruments.index) == ["station"]  # not the stranger's
    channels = client.channels("station")
    assert set(channels.index) == {"station/temp", "station/pressure", "station/note"}
    assert channels.loc["station/pressure", "units"] == "hPa"
    latest = client.latest("station")
    assert latest.loc["pressure", "value"] == pytest.approx(1000 + 599 * 0.125)
    assert latest.loc["pressure", "time"] == pd.Timestamp(T0 + 599 * SECOND, unit="us", tz="UTC")
    assert latest.attrs["units"]["temp"] == "degC"
    stats = client.statistics(["station/temp", lab.pressure.pk], START, END, percentiles=[50])
    temp = stored(lab.temp)["value"]
    assert stats.loc["station/temp", "count"] == len(temp)
    assert stats.loc["station/temp", "flagged"] == 3
    assert stats.loc["station/temp", "mean"] == pytest.approx(temp.mean())
    assert stats.loc[str(lab.pressure.pk), "p50"] == pytest.approx(stored(lab.pressure)["value"].median())
    assert list(stats["id"]) == [lab.temp.pk, lab.pressure.pk]


def test_lists_longer_than_a_page_are_followed_to_their_end(client, monkeypatch):
    monkeypatch.setattr(reader, "PAGE_LIMIT", 2)  # three channels: two pages
    assert sorted(client.channels("station").index) == ["station/note", "station/pressure", "station/temp"]


def test_refusals_carry_the_servers_message_and_are_not_retried(live_server, lab, client):
    waits: list[float] = []
    client.sleep = waits.append
    with pytest.raises(reader.NotFound, match="not one you may see") as hidden:
        client.readings("hidden/secret", START, END)
    assert hidden.value.status == 404
    with pytest.raises(reader.NotFound):
        client.latest("hidden")
    with pytest.raises(reader.BadRequest, match="after the start"):
        client.readings("station/temp", END, START)
    assert waits == []  # the caller's mistakes are not tried again
    with reader.Client(live_server.url, lab.stranger_token) as theirs:
        with pytest.raises(reader.NotFound):
            theirs.readings("station/temp", START, END)
        assert len(theirs.readings("hidden/secret", START, END)) == N
    with reader.Client(live_server.url, lab.agent_token) as agent, pytest.raises(reader.Forbidden) as refused:
        agent.readings("station/temp", START, END)
    assert refused.value.message
    with reader.Client(live_server.url, "dbk_not_a_token") as wrong, pytest.raises(reader.NotAuthenticated):
        wrong.instruments()


def test_a_busy_server_is_waited_for_as_it_asks(client, lab, monkeypatch):
    """Every export slot of the user is taken: the server answers 429 with Retry-After until one is free."""
    monkeypatch.setattr(slots, "RETRY_AFTER_SECONDS", 1)
    held = [slots.acquire(f"user:{lab.owner.pk}") for _ in range(settings.DAQBROKER_HEAVY_REQUESTS_PER_USER)]
    assert all(held)
    waits: list[float] = []

    def wait(seconds: float) -> None:
        waits.append(seconds)
        for slot in held:  # the other downloads end while we wait
            if slot is not None:
                slot.release()
        threading.Event().wait(seconds)

    client.sleep = wait
    df = client.readings("station/temp", START, END)
    assert len(df) == N - 3
    assert waits == [1.0]


@pytest.mark.engine_independent  # no server at all
def test_an_unreachable_server_is_tried_again_with_growing_waits_then_reported():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    client = reader.Client(f"http://127.0.0.1:{port}", "dbk_x", retries=3, backoff=1.0, max_wait=30)
    waits: list[float] = []
    client.sleep = waits.append
    with pytest.raises(reader.ServerUnreachable, match="refused"):
        client.instruments()
    assert len(waits) == 3
    assert 0.5 <= waits[0] <= 1.5 and 1.0 <= waits[1] <= 3.0 and 2.0 <= waits[2] <= 6.0


@pytest.mark.engine_independent
def test_times_are_read_as_utc():
    assert reader.to_us(datetime(2024, 5, 6)) == T0  # naive means UTC
    assert reader.to_us("2024-05-06T02:00:00+02:00") == T0
    assert reader.to_us(pd.Timestamp("2024-05-06", tz="UTC")) == T0
    assert reader.to_us(T0) == T0
    assert reader.to_us(np.datetime64("2024-05-06T00:00:00")) == T0
    with pytest.raises(TypeError):
        reader.to_us(1.5)


@pytest.mark.slow
def test_through_gunicorn_a_long_range_comes_in_bounded_pieces(service_env, tmp_path):
    """The production server (gunicorn, two workers, streamed Parquet answers) and 2 x 20,000 readings."""
    owner = make_user("gus", password=None)
    plant = make_instrument(owner, slug="plant")
    flow = make_channel(plant, slug="flow", units="l/min", valid_max=1e6)
    level = make_channel(plant, slug="level", units="m")
    n = 20_000
    ts = T0 + np.arange(n, dtype=np.int64) * SECOND // 4  # 4 Hz: 5,000 s
    values = {flow.pk: np.arange(n) * 0.5, level.pk: np.cos(np.arange(n) / 100.0)}
    values[flow.pk][7] = 2e6  # out of range
    for channel_id, v in values.items():
        ingest_samples(SampleBatch(np.full(n, channel_id, dtype=np.int64), ts, v))
    _, token = services.create_personal_token(user=owner, name="notebook")
    env = {**service_env, "DATABASE_URL": database_url_for_subprocess(), "PYTHONPATH": AGENT_PATH}
    env |= {"DAQBROKER_DEBUG": "true", "DAQBROKER_INGEST_THROTTLE": "none"}
    server = WebServer(env, tmp_path).start()
    try:
        with reader.Client(server.url, token) as db:
            start, end = pd.Timestamp(T0, unit="us", tz="UTC"), pd.Timestamp(T0 + 6000 * SECOND, unit="us", tz="UTC")
            pieces = list(db.iter_readings(["plant/flow", "plant/level"], start, end, piece_readings=4000))
            wide = db.readings(["plant/flow", "plant/level"], start, end, wide=True, piece_readings=4000)
    finally:
        server.stop()
    assert len(pieces) >= 10 and max(len(p) for p in pieces) <= 4000
    assert sum(len(p) for p in pieces) == 2 * n - 1
    assert wide.attrs["units"] == {"plant/flow": "l/min", "plant/level": "m"}
    for channel, label in ((flow, "plant/flow"), (level, "plant/level")):
        want = stored(channel)
        got = wide[label].dropna()
        assert got.index.equals(want.index)
        np.testing.assert_array_equal(got.to_numpy(), want["value"].to_numpy())


@pytest.mark.engine_independent
def test_the_extras_hold_the_servers_own_pins():
    """pip install "./client_agent[pandas,progress]" beside the server must accept the versions it runs."""
    extras = tomllib.loads((REPO / "client_agent/pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = {}
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (REPO / name).read_text().splitlines():
            if "==" in line and not line.startswith(("#", "-")):
                package, version = line.split("==")
                pins[package.strip().lower()] = version.split()[0]
    wanted = [Requirement(r) for r in extras["pandas"] + extras["progress"]]
    assert {r.name for r in wanted} == {"pandas", "pyarrow", "tqdm"}
    for requirement in wanted:
        assert requirement.specifier.contains(pins[requirement.name]), (requirement, pins[requirement.name])
