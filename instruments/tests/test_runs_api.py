"""Run lists through the API, the pages, the plot's "go to run" and the agent's command line."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pyarrow.parquet as pq
import pytest
from django.urls import reverse
from django.utils import timezone

from accounts import permissions, services
from accounts.models import AuditEvent
from accounts.tests.personas import build_world
from collection.tests.readings import ingest
from conftest import REPO
from daqbroker_agent.parsing import datetime_to_us
from instruments import runs
from instruments.models import Run, RunColumn
from instruments.tests.page_world import alpha_dashboard

ALPHA_RUNS = "alpha-station-runs"


def start_url(slug=ALPHA_RUNS):
    return reverse("api:runlist-start", kwargs={"slug": slug})


def test_the_api_starts_a_run_with_typed_parameters_and_ends_the_active_one(owner, world):
    first = owner.client.post(start_url(), {"parameters": {"energy": "3.5"}}, format="json")
    assert first.status_code == 201, first.content
    assert first.json()["run"]["label"] == "2" and first.json()["run"]["parameters"] == {"energy": 3.5}
    second = owner.client.post(start_url(), {"number": 10, "parameters": {"energy": 4}}, format="json")
    assert second.status_code == 201
    assert second.json()["ended"]["label"] == "2"
    assert second.json()["ended"]["end"] == second.json()["run"]["start"]
    assert list(
        Run.objects.filter(run_list=world.alpha_runlist, end__isnull=True).values_list("number", flat=True)
    ) == [10]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"parameters": {"energy": "warm"}}, "not a number"),
        ({"parameters": {}}, "required"),
        ({"parameters": {"energy": 1, "enrgy": 2}}, "Unknown parameter"),
        ({"parameters": {"energy": 1}, "number": 0}, "greater than or equal to 1"),
        ({"parameters": {"energy": 1}, "number": 1}, "already exists"),
        ({"parameters": "energy=1"}, "dictionary"),
    ],
)
def test_the_api_refuses_bad_starts_with_a_message(owner, world, body, words):
    response = owner.client.post(start_url(), body, format="json")
    assert response.status_code == 400
    assert words in response.content.decode()
    assert not Run.objects.filter(run_list=world.alpha_runlist, end__isnull=True).exists()


def test_stop_ends_the_active_run_and_answers_409_when_none_is(shared_editor, world):
    shared_editor.client.post(start_url(), {"parameters": {"energy": 1}}, format="json")
    stop = reverse("api:runlist-stop", kwargs={"slug": ALPHA_RUNS})
    stopped = shared_editor.client.post(stop)
    assert stopped.status_code == 200 and stopped.json()["end"] is not None
    again = shared_editor.client.post(stop)
    assert again.status_code == 409 and "No run" in again.json()["detail"]


def test_an_agent_starts_runs_only_of_lists_concerning_its_instruments(agent_scoped, agent_unscoped, world):
    started = agent_scoped.client.post(start_url(), {"parameters": {"energy": 2}}, format="json")
    assert started.status_code == 201
    assert started.json()["run"]["started_by"] == "agent:alpha-logger"
    assert agent_unscoped.client.post(start_url(), {"parameters": {"energy": 2}}, format="json").status_code == 404
    # Starting is all an agent may do with run lists.
    assert agent_scoped.client.get(reverse("api:runlist-list")).status_code == 403
    detail = reverse("api:runlist-detail", kwargs={"slug": ALPHA_RUNS})
    assert agent_scoped.client.get(detail).status_code == 403


def test_creating_a_run_list_with_columns_through_the_api(shared_viewer, world):
    body = {
        "name": "Beam test",
        "slug": "beam-test",
        "instruments": ["alpha-station"],
        "columns": [
            {"name": "energy", "kind": "number", "units": "deg C", "required": True},
            {"name": "target", "kind": "choice", "choices": ["gold", "lead"]},
        ],
    }
    response = shared_viewer.client.post(reverse("api:runlist-list"), body, format="json")
    assert response.status_code == 201, response.content
    columns = list(RunColumn.objects.filter(run_list__slug="beam-test").values_list("name", "units"))
    assert columns == [("energy", "degC"), ("target", "")]
    assert AuditEvent.objects.filter(action="config.created", object_type="instruments.runlist").exists()
    bad = {**body, "slug": "beam-2", "columns": [{"name": "target", "kind": "choice", "choices": []}]}
    refused = shared_viewer.client.post(reverse("api:runlist-list"), bad, format="json")
    assert refused.status_code == 400 and "choice column needs" in refused.content.decode()


def test_a_stranger_cannot_attach_a_hidden_instrument(stranger, world):
    body = {"name": "Spy", "slug": "spy", "instruments": ["zulu-hidden"]}
    response = stranger.client.post(reverse("api:runlist-list"), body, format="json")
    assert response.status_code == 400 and "zulu" not in response.content.decode()


def test_editing_a_past_run_through_the_api_is_audited(shared_editor, shared_viewer, world):
    url = reverse("api:runlist-run", kwargs={"slug": ALPHA_RUNS, "label": "1"})
    response = shared_editor.client.patch(url, {"parameters": {"energy": 9}, "summary": "recalibrated"}, format="json")
    assert response.status_code == 200, response.content
    event = AuditEvent.objects.get(action="run.changed")
    assert event.changes["parameters"] == [{"energy": 1.5}, {"energy": 9.0}]
    assert shared_viewer.client.patch(url, {"summary": "no"}, format="json").status_code == 403
    bad = shared_editor.client.patch(url, {"end": "2000-01-01T00:00:00Z"}, format="json")
    assert bad.status_code == 400 and "before the start" in bad.content.decode()


def test_the_run_list_downloads_as_csv(shared_viewer, world):
    response = shared_viewer.client.get(reverse("api:runlist-download", kwargs={"slug": ALPHA_RUNS}))
    assert response.status_code == 200 and response["Content-Type"] == "text/csv"
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [(r["run"], r["energy [GeV]"], r["summary"]) for r in rows] == [("1", "1.5", "alpha-station-run-summary")]


def test_runs_overlapping_a_range_for_the_plot_bands(shared_viewer, world):
    url = reverse("api:run-list")
    now = timezone.now()
    inside = {"instrument": "alpha-station", "start": (now - timedelta(hours=3)).isoformat(), "end": now.isoformat()}
    assert [r["label"] for r in shared_viewer.client.get(url, inside).json()["results"]] == ["1"]
    before = {**inside, "end": (now - timedelta(hours=2, minutes=30)).isoformat()}
    assert shared_viewer.client.get(url, before).json()["results"] == []
    hidden = shared_viewer.client.get(url, {"instrument": "zulu-hidden"}).json()["results"]
    assert hidden == []


def test_the_plot_goes_to_the_time_of_a_run(shared_viewer, world):
    run = world.alpha_experiment_run
    response = shared_viewer.client.get(reverse("collection:plot"), {"c": "5", "run": f"{ALPHA_RUNS}/1"})
    assert response.status_code == 302
    query = parse_qs(urlsplit(response["Location"]).query)
    assert query["range"] == ["custom"] and query["c"] == ["5"]
    assert query["start"] == [run.start.isoformat().replace("+00:00", "Z")]
    assert query["end"] == [run.end.isoformat().replace("+00:00", "Z")]


def test_the_plot_says_so_for_a_hidden_or_missing_run(stranger, shared_viewer, world):
    for who, ref in ((stranger, f"{ALPHA_RUNS}/1"), (shared_viewer, f"{ALPHA_RUNS}/99"), (shared_viewer, "x/y")):
        response = who.client.get(reverse("collection:plot"), {"run": ref}, follow=True)
        assert response.status_code == 200
        text = response.content.decode()
        assert "no run list" in text.lower() or "has no run" in text or "not a run number" in text


def test_a_range_of_runs_spans_from_the_first_start_to_the_last_end(world):
    first, _ = runs.start_run(world.alpha_runlist, number=5, parameters={"energy": 1})
    runs.start_run(world.alpha_runlist, number=6, parameters={"energy": 1})
    last = runs.stop_run(world.alpha_runlist)
    start, end, found = runs.run_range(world.users["vera"], f"{ALPHA_RUNS}/5-6")
    assert (start, end, len(found)) == (first.start, last.end, 2)


# --- pages ------------------------------------------------------------------------------------------


def test_the_run_list_page_starts_and_stops_runs(shared_editor, world):
    page = reverse("instruments:runlist", kwargs={"slug": ALPHA_RUNS})
    response = shared_editor.client.post(
        reverse("instruments:runlist-start", kwargs={"slug": ALPHA_RUNS}), {"param.energy": "7.25", "summary": "hot"}
    )
    assert response.status_code == 302 and response["Location"] == page
    run = Run.objects.get(run_list=world.alpha_runlist, end__isnull=True)
    assert (run.label, run.parameters, run.summary, run.started_by) == ("2", {"energy": 7.25}, "hot", "eddie")
    text = shared_editor.client.get(page).content.decode()
    assert 'data-active-run="2"' in text and "Stop run 2" in text
    shared_editor.client.post(reverse("instruments:runlist-stop", kwargs={"slug": ALPHA_RUNS}))
    run.refresh_from_db()
    assert run.end is not None


def test_a_bad_value_from_the_page_is_a_message_not_a_run(shared_editor, world):
    response = shared_editor.client.post(
        reverse("instruments:runlist-start", kwargs={"slug": ALPHA_RUNS}), {"param.energy": "lots"}, follow=True
    )
    assert "not a number" in response.content.decode()
    assert not Run.objects.filter(run_list=world.alpha_runlist, end__isnull=True).exists()


def test_a_viewer_sees_the_runs_but_no_controls(shared_viewer, world):
    text = shared_viewer.client.get(reverse("instruments:runlist", kwargs={"slug": ALPHA_RUNS})).content.decode()
    assert "alpha-station-run-summary" in text
    assert 'id="start-form"' not in text and "Comment on run" not in text and "Sharing" not in text


def test_the_page_filters_runs_by_parameter_and_sorts(owner, world):
    runs.start_run(world.alpha_runlist, number=2, parameters={"energy": 3.5})
    runs.start_run(world.alpha_runlist, number=3, parameters={"energy": 4})
    page = reverse("instruments:runlist", kwargs={"slug": ALPHA_RUNS})
    text = owner.client.get(page, {"p.energy": "3.5"}).content.decode()
    assert 'data-run="2"' in text and 'data-run="3"' not in text and 'data-run="1"' not in text
    ordered = owner.client.get(page, {"sort": "number"}).content.decode()
    assert ordered.index('data-run="1"') < ordered.index('data-run="3"')
    bad = owner.client.get(page, {"p.energy": "warm"})
    assert bad.status_code == 200 and "not a number" in bad.content.decode()


def test_comments_from_the_page_are_signed(shared_editor, world):
    url = reverse("instruments:runlist-comment", kwargs={"slug": ALPHA_RUNS, "label": "1"})
    shared_editor.client.post(url, {"text": "detector noisy"})
    comment = world.alpha_experiment_run.comments.get()
    assert (comment.text, comment.author_name) == ("detector noisy", "eddie")
    assert AuditEvent.objects.filter(action="run.commented").exists()


def test_run_lists_are_shared_from_their_page(owner, world):
    url = reverse("instruments:runlist-sharing", kwargs={"slug": ALPHA_RUNS})
    owner.client.post(url, {"kind": "user", "name": "stan", "level": "collect"})
    assert permissions.level_on(world.users["stan"], world.alpha_runlist) == "collect"
    assert permissions.level_on(world.users["stan"], world.alpha) is None  # the instrument is not shared


# --- the agent's command line -----------------------------------------------------------------------


def _agent(live_server, token, tmp_path, *argv):
    token_file = tmp_path / "token"
    token_file.write_text(token)
    command = [sys.executable, "-m", "daqbroker_agent", "run", *argv]
    command += ["--url", live_server.url, "--token-file", str(token_file), "--spool", str(tmp_path / "spool")]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.django_db(transaction=True)
def test_the_agent_command_line_starts_and_stops_runs(live_server, tmp_path):
    world = build_world()
    token = world.tokens["agent_scoped"]
    started = _agent(live_server, token, tmp_path, "start", "--list", ALPHA_RUNS, "--param", "energy=3.5")
    assert started.returncode == 0, started.stderr
    assert "run 2 of alpha-station-runs started" in started.stdout
    run = Run.objects.get(run_list__slug=ALPHA_RUNS, number=2)
    assert run.parameters == {"energy": 3.5} and run.started_by == "agent:alpha-logger"
    refused = _agent(live_server, token, tmp_path, "start", "--list", ALPHA_RUNS, "--param", "energy=hot")
    assert refused.returncode == 1 and "not a number" in refused.stderr
    hidden = _agent(live_server, token, tmp_path, "start", "--list", "zulu-hidden-runs", "--param", "energy=1")
    assert hidden.returncode == 1 and "404" in hidden.stderr
    stopped = _agent(live_server, token, tmp_path, "stop", "--list", ALPHA_RUNS)
    assert stopped.returncode == 0 and "run 2 of alpha-station-runs stopped" in stopped.stdout
    assert Run.objects.get(pk=run.pk).end is not None
    unscoped = _agent(live_server, world.tokens["agent_unscoped"], tmp_path, "stop", "--list", ALPHA_RUNS)
    assert unscoped.returncode == 1 and "404" in unscoped.stderr
    no_list = _agent(live_server, token, tmp_path, "start", "--param", "energy=1")
    assert no_list.returncode == 2 and "--list" in no_list.stderr


# --- a run as the range of the readings API ----------------------------------------------------------


def test_samples_statistics_and_export_take_a_run_as_the_range(
    shared_viewer, world, django_capture_on_commit_callbacks
):
    run = world.alpha_experiment_run
    channel = world.alpha_channel
    start_us = datetime_to_us(run.start)
    end_us = datetime_to_us(run.end)
    # one reading before, two inside, one exactly at the end (the next run's), one after
    times = [start_us - 1_000_000, start_us, start_us + 60_000_000, end_us, end_us + 1_000_000]
    ingest(django_capture_on_commit_callbacks, channel.pk, times, np.arange(len(times), dtype=float))
    ref = f"{ALPHA_RUNS}/1"
    samples = shared_viewer.client.get(reverse("api:samples"), {"channels": channel.pk, "run": ref}).json()
    assert samples["series"][0]["t"] == times[1:3]
    stats = shared_viewer.client.get(reverse("api:statistics"), {"channels": channel.pk, "run": ref}).json()
    assert stats["statistics"][0]["count"] == 2, stats
    export = shared_viewer.client.get(reverse("api:export"), {"channels": channel.pk, "run": ref})
    lines = b"".join(export.streaming_content).decode().strip().splitlines()
    assert len(lines) == 3  # the header and the run's two readings
    both = shared_viewer.client.get(reverse("api:samples"), {"channels": channel.pk, "run": ref, "start": start_us})
    assert both.status_code == 400 and "either run or start" in both.content.decode()


def test_a_hidden_run_list_is_no_range(stranger, world):
    channel_ref = "zulu-hidden/zulu-hidden-temp"
    response = stranger.client.get(reverse("api:samples"), {"channels": channel_ref, "run": "alpha-station-runs/1"})
    assert response.status_code == 400 and "no run list" in response.content.decode()
    assert "alpha-station-run-summary" not in response.content.decode()


# --- the per-run statistics table --------------------------------------------------------------------


def test_per_run_statistics_from_the_api_and_the_page(shared_viewer, world, django_capture_on_commit_callbacks):
    channel = world.alpha_channel
    run1 = world.alpha_experiment_run
    second, _ = runs.start_run(
        world.alpha_runlist, number=2, at=run1.end + timedelta(minutes=10), parameters={"energy": 2}
    )
    runs.stop_run(world.alpha_runlist, at=second.start + timedelta(minutes=10))
    s1, s2 = datetime_to_us(run1.start), datetime_to_us(second.start)
    minute = 60_000_000
    ingest(
        django_capture_on_commit_callbacks,
        channel.pk,
        [s1, s1 + minute, s1 + 2 * minute, s2, s2 + minute],
        [1.0, 2.0, 6.0, 10.0, 20.0],
    )
    url = reverse("api:runlist-statistics", kwargs={"slug": ALPHA_RUNS})
    body = shared_viewer.client.get(url, {"channels": channel.pk}).json()
    table = {row["run"]: row["statistics"][0] for row in body["runs"]}
    assert (table["1"]["count"], table["1"]["min"], table["1"]["max"], table["1"]["mean"]) == (3, 1.0, 6.0, 3.0)
    assert (table["2"]["count"], table["2"]["mean"]) == (2, 15.0)
    only_two = shared_viewer.client.get(url, {"channels": channel.pk, "runs": "2-2", "format": "csv"})
    lines = only_two.content.decode().splitlines()
    ref = "alpha-station/alpha-station-temp"
    assert lines[0] == f"run,start_us,end_us,{ref}:count,{ref}:min,{ref}:max,{ref}:mean"
    assert lines[1].startswith("2,") and lines[1].endswith(",2,10.0,20.0,15.0") and len(lines) == 2
    parquet = shared_viewer.client.get(url, {"channels": channel.pk, "format": "parquet"})
    table = pq.read_table(io.BytesIO(parquet.content)).to_pydict()
    assert table["run"] == ["2", "1"] and table[f"{ref}:mean"] == [15.0, 3.0] and table[f"{ref}:count"] == [2, 3]
    page = shared_viewer.client.get(reverse("instruments:runlist", kwargs={"slug": ALPHA_RUNS}), {"stats": channel.pk})
    text = page.content.decode()
    assert 'id="run-statistics-table"' in text and "15.000" in text and "3.000" in text
    assert shared_viewer.client.get(url, {"channels": channel.pk, "runs": "x"}).status_code == 400


def test_per_run_statistics_hide_what_is_hidden(stranger, shared_viewer, world):
    url = reverse("api:runlist-statistics", kwargs={"slug": ALPHA_RUNS})
    assert stranger.client.get(url, {"channels": "alpha-station/alpha-station-temp"}).status_code == 404
    zulu = shared_viewer.client.get(url, {"channels": "zulu-hidden/zulu-hidden-temp"})
    assert zulu.status_code == 404


def test_the_run_list_downloads_as_parquet_with_typed_columns(shared_viewer, world):
    runs.start_run(world.alpha_runlist, number=2, parameters={"energy": 2.25})
    for url in (
        reverse("api:runlist-download", kwargs={"slug": ALPHA_RUNS}),
        reverse("instruments:runlist-download", kwargs={"slug": ALPHA_RUNS}),
    ):
        response = shared_viewer.client.get(url, {"as": "parquet"})
        assert response.status_code == 200 and response["Content-Type"] == "application/vnd.apache.parquet"
        table = pq.read_table(io.BytesIO(response.content))
        assert str(table.schema.field("energy").type) == "double"
        assert table.schema.field("energy").metadata == {b"units": b"GeV"}
        assert table.column("energy").to_pylist() == [1.5, 2.25]
        assert table.column("end").to_pylist()[1] is None
    bad = shared_viewer.client.get(reverse("api:runlist-download", kwargs={"slug": ALPHA_RUNS}), {"as": "xls"})
    assert bad.status_code == 400


# --- the admin -------------------------------------------------------------------------------------------


def test_the_admin_actions_start_and_stop_runs(owner, world):
    changelist = reverse("admin:instruments_runlist_changelist")
    chosen = {"_selected_action": [world.alpha_runlist.pk]}
    response = owner.client.post(changelist, {"action": "start_next_run", **chosen}, follow=True)
    assert "run 2 started" in response.content.decode()
    run = Run.objects.get(run_list=world.alpha_runlist, end__isnull=True)
    assert run.parameters == {"energy": 1.5}  # the last run's
    response = owner.client.post(changelist, {"action": "stop_active_run", **chosen}, follow=True)
    assert "run 2 stopped" in response.content.decode()
    assert AuditEvent.objects.filter(action__in=["run.started", "run.stopped"], object_id=str(run.pk)).count() == 2


def test_editing_a_run_in_the_admin_is_audited_and_checked(owner, world):
    run = world.alpha_experiment_run
    url = reverse("admin:instruments_run_change", args=[run.pk])
    form = {
        "start_0": run.start.strftime("%Y-%m-%d"),
        "start_1": run.start.strftime("%H:%M:%S"),
        "end_0": run.end.strftime("%Y-%m-%d"),
        "end_1": run.end.strftime("%H:%M:%S"),
        "summary": "edited in the admin",
    }
    refused = owner.client.post(url, {**form, "parameters": '{"energy": "hot"}'})
    assert refused.status_code == 200 and "not a number" in refused.content.decode()
    saved = owner.client.post(url, {**form, "parameters": '{"energy": 2}'})
    assert saved.status_code == 302
    event = AuditEvent.objects.get(action="run.changed")
    assert event.changes["summary"] == ["alpha-station-run-summary", "edited in the admin"]
    assert event.changes["parameters"] == [{"energy": 1.5}, {"energy": 2.0}]


# --- dashboards following the active run ---------------------------------------------------------------


def test_a_dashboard_follows_the_active_run_of_a_run_list(owner, stranger, world):
    dashboard = alpha_dashboard(world)
    url = reverse("instruments:dashboard", kwargs={"pk": dashboard.pk})
    idle = owner.client.get(url, {"run": ALPHA_RUNS}, follow=True).content.decode()
    assert "no run is active" in idle and '"range": "since"' not in idle
    run, _ = runs.start_run(world.alpha_runlist, parameters={"energy": 1})
    text = owner.client.get(url, {"run": ALPHA_RUNS}).content.decode()
    assert f"Following the active run {run.label}" in text
    assert '"range": "since"' in text and f'"start": "{run.start.isoformat()}"' in text
    past = owner.client.get(url, {"run": f"{ALPHA_RUNS}/1"}).content.decode()
    assert '"range": "custom"' in past and world.alpha_experiment_run.start.isoformat() in past


def test_a_run_list_never_names_an_instrument_its_reader_may_not_see(shared_viewer, stranger, world):
    run_list = world.alpha_runlist
    run_list.instruments.add(world.zulu)
    services.share(run_list, world.users["stan"], "view")
    detail = stranger.client.get(reverse("api:runlist-detail", kwargs={"slug": ALPHA_RUNS})).json()
    assert detail["instruments"] == []
    for url in (reverse("instruments:runlists"), reverse("instruments:runlist", kwargs={"slug": ALPHA_RUNS})):
        text = stranger.client.get(url).content.decode()
        assert "Alpha-Station instrument" not in text and "Zulu-Hidden instrument" not in text
    assert shared_viewer.client.get(reverse("api:runlist-detail", kwargs={"slug": ALPHA_RUNS})).json()[
        "instruments"
    ] == ["alpha-station"]
