"""Lines an agent reports from a file on its machine, as a preview sample (issue 16; docs/source-setup.md).

End to end: a real ``daqbroker-agent run`` process and a real gunicorn server on the test database (as in
``test_agent_e2e``); the person asks through the preview API and polls until the agent's lines arrive.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import services
from accounts.choices import AuditAction, SampleRequestStatus
from accounts.models import AgentSampleRequest, AuditEvent
from collection.tests.test_agent_e2e import Station, processes, start_agent, web  # noqa: F401 (fixtures)
from conftest import wait_for
from instruments.tests.factories import make_instrument, make_user

HEADER_CSV = (
    "Time,Air Temperature [deg C],Rel Humidity (%)\n"
    "2026-01-01T00:00:00,12.5,80.1\n"
    "2026-01-01T00:01:00,-9999,80.2\n"
    "2026-01-01T00:02:00,12.7,80.3\n"
    "2026-01-01T00:03:00,-9999,80.4\n"
)


def ask(client, instrument: str, **data):
    return client.post(reverse("api:source-preview"), {"instrument": instrument, "kind": "file", **data}, format="json")


def poll(client, instrument: str, request_id: int, config: dict, timeout: float = 60):
    """Ask again, as the page does, until the answer is no longer 202 (waiting)."""
    answers = []

    def answered():
        answers.append(ask(client, instrument, config=config, agent_sample=request_id))
        return answers[-1].status_code != 202

    wait_for(answered, timeout=timeout, interval=0.3, message="the agent's sample")
    return answers[-1]


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@pytest.mark.engine_independent  # the agent's side of the exchange; the server's runs on every engine below
def test_an_agent_sends_the_first_lines_of_its_file_and_the_preview_parses_them(tmp_path, web, processes):  # noqa: F811
    station = Station(tmp_path)
    (station.folder / "day.dat").write_text(HEADER_CSV)
    start_agent(station, web, processes, tmp_path)
    client = APIClient()
    client.force_authenticate(station.owner)
    config = {"path": str(station.folder), "pattern": "*.dat"}  # not the source's own *.csv
    first = ask(client, "remote-station", config=config, agent=station.agent.pk)
    assert first.status_code == 202, first.content
    assert first.json()["waiting"] is True
    assert "Waiting for the agent station-pc" in first.json()["detail"]
    answer = poll(client, "remote-station", first.json()["agent_sample"], config)
    assert answer.status_code == 200, answer.content
    result = answer.json()
    assert result["sample"]["origin"] == "agent station-pc: file day.dat"
    assert result["config"]["header_lines"] == 1
    channels = result["proposal"]["channels"]
    assert [(c["units"], c["missing_values"]) for c in channels] == [("degC", [-9999.0]), ("%", [])]
    assert len(result["rows"]) == 4
    assert result["rows"][0]["time_utc"].startswith("2026-01-01T00:00:00")
    sentinel = result["rows"][1]["values"][0]
    assert sentinel["raw"] == "-9999" and sentinel["quality"] == 2  # the proposed sentinel: stored as missing
    assert result["rows"][2]["values"][0]["value"] == 12.7
    event = AuditEvent.objects.get(action=AuditAction.AGENT_SAMPLE_REQUESTED)
    assert event.changes["folder"] == str(station.folder)


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@pytest.mark.engine_independent  # the agent's side of the exchange; the server's runs on every engine below
def test_an_agent_refuses_a_folder_outside_its_allowed_paths_and_the_page_says_why(tmp_path, web, processes):  # noqa: F811
    station = Station(tmp_path)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "keys.csv").write_text("SECRET-LINE\n")
    start_agent(station, web, processes, tmp_path)
    client = APIClient()
    client.force_authenticate(station.owner)
    config = {"path": str(secret)}
    first = ask(client, "remote-station", config=config, agent=station.agent.pk)
    assert first.status_code == 202, first.content
    answer = poll(client, "remote-station", first.json()["agent_sample"], config)
    assert answer.status_code == 400
    assert "is not under this agent's allowed_paths" in answer.json()["detail"]
    request = AgentSampleRequest.objects.get()
    assert request.status == SampleRequestStatus.REFUSED
    assert request.lines == []
    assert "SECRET-LINE" not in answer.content.decode()


# --- the server's side alone --------------------------------------------------------------------------


@pytest.fixture
def owned(db):
    owner = make_user("olga")
    instrument = make_instrument(owner=owner, slug="station")
    agent, token = services.create_agent(owner=owner, name="olga-pc", instruments=[instrument])
    client = APIClient()
    client.force_authenticate(owner)
    agent_client = APIClient()
    agent_client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return owner, agent, client, agent_client


def test_a_request_is_listed_in_the_agents_configuration_until_answered(owned):
    _owner, agent, client, agent_client = owned
    asked = ask(client, "station", config={"path": "/data/logger", "pattern": "*.dat"}, agent=agent.pk)
    request_id = asked.json()["agent_sample"]
    listed = agent_client.get(reverse("api:agent-config")).json()["sample_requests"]
    assert [(r["id"], r["path"], r["pattern"]) for r in listed] == [(request_id, "/data/logger", "*.dat")]
    delivered = agent_client.post(
        reverse("api:agent-sample", args=[request_id]), {"lines": ["a,b", "1,2"], "file": "x.dat"}, format="json"
    )
    assert delivered.status_code == 204
    assert agent_client.get(reverse("api:agent-config")).json()["sample_requests"] == []
    again = agent_client.post(reverse("api:agent-sample", args=[request_id]), {"lines": ["3,4"]}, format="json")
    assert again.status_code == 404  # answered once; a second delivery changes nothing
    assert AgentSampleRequest.objects.get().lines == ["a,b", "1,2"]


def test_a_delivery_beyond_the_bounds_is_refused_with_a_message(owned):
    _owner, agent, client, agent_client = owned
    request_id = ask(client, "station", config={"path": "/data"}, agent=agent.pk).json()["agent_sample"]
    url = reverse("api:agent-sample", args=[request_id])
    too_many = agent_client.post(url, {"lines": ["1"] * (AgentSampleRequest.MAX_LINES + 1)}, format="json")
    assert too_many.status_code == 400 and "lines" in too_many.json()
    too_big = agent_client.post(url, {"lines": ["x" * 40_000, "y" * 40_000]}, format="json")
    assert too_big.status_code == 400 and "bytes" in str(too_big.json())
    assert AgentSampleRequest.objects.get().status == SampleRequestStatus.WAITING


def test_an_unanswered_request_times_out_with_a_clear_message(owned):
    _owner, agent, client, agent_client = owned
    request_id = ask(client, "station", config={"path": "/data"}, agent=agent.pk).json()["agent_sample"]
    waiting = ask(client, "station", config={"path": "/data"}, agent_sample=request_id)
    assert waiting.status_code == 202 and "has never sent a heartbeat" in waiting.json()["detail"]
    AgentSampleRequest.objects.filter(pk=request_id).update(
        created=timezone.now() - timedelta(seconds=AgentSampleRequest.WAIT_SECONDS + 1)
    )
    late = ask(client, "station", config={"path": "/data"}, agent_sample=request_id)
    assert late.status_code == 400
    assert "did not answer within 120 s" in late.json()["detail"]
    assert agent_client.get(reverse("api:agent-config")).json()["sample_requests"] == []
    delivered = agent_client.post(reverse("api:agent-sample", args=[request_id]), {"lines": ["1"]}, format="json")
    assert delivered.status_code == 404


def test_waiting_requests_per_agent_are_bounded(owned):
    _owner, agent, client, _agent_client = owned
    for _ in range(AgentSampleRequest.MAX_WAITING_PER_AGENT):
        assert ask(client, "station", config={"path": "/data"}, agent=agent.pk).status_code == 202
    refused = ask(client, "station", config={"path": "/data"}, agent=agent.pk)
    assert refused.status_code == 400
    assert "already waiting" in refused.json()["detail"]


def test_someone_elses_request_reads_as_unknown(owned):
    owner, agent, client, agent_client = owned
    request_id = ask(client, "station", config={"path": "/data"}, agent=agent.pk).json()["agent_sample"]
    agent_client.post(reverse("api:agent-sample", args=[request_id]), {"lines": ["a,b"]}, format="json")
    other = make_user("oscar")
    services.share(agent.instruments.get(), other, "change", actor=owner)  # a co-editor, not the agent's owner
    stranger = APIClient()
    stranger.force_authenticate(other)
    answer = ask(stranger, "station", config={"path": "/data"}, agent_sample=request_id)
    assert answer.status_code == 400
    assert answer.json()["detail"] == "No such sample request among yours."


def test_an_agent_sends_samples_of_file_sources_only(owned):
    _owner, agent, client, _agent_client = owned
    answer = client.post(
        reverse("api:source-preview"),
        {"instrument": "station", "kind": "tcp", "config": {"host": "x", "port": 1}, "agent": agent.pk},
        format="json",
    )
    assert answer.status_code == 400 and answer.json()["field"] == "agent"
