"""Issue 12, finding 2 end to end: a co-editor may not make another user's agent run a command, and an agent
refuses commands its own host has not enabled, through a real gunicorn server and a real agent process.
The server-side target checks, per persona, are in test_targets.py."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from django.test import Client
from django.urls import reverse

from accounts import services
from accounts.choices import ShareLevel, TokenScope
from accounts.models import AgentHealth
from collection.tests.test_agent_e2e import Station, processes, start_agent, web  # noqa: F401 (fixtures)
from conftest import wait_for
from instruments.tests.factories import make_user


def api(server, token: str, method: str, path: str, body: dict) -> tuple[int, str]:
    request = urllib.request.Request(  # noqa: S310 (our own test server)
        f"{server.url}{path}",
        data=json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (our own test server)
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@pytest.mark.engine_independent  # the agent's refusal; the server's target checks run on every engine in-process
def test_agent_end_to_end_co_editor_refused_and_agent_refuses_commands(tmp_path, web, processes):  # noqa: F811
    station = Station(tmp_path)
    dave = make_user("dave", password=None)
    services.share(station.instrument, dave, ShareLevel.CHANGE)
    _, dave_token = services.create_personal_token(user=dave, name="dave", scope=TokenScope.READ_WRITE)
    _, owner_token = services.create_personal_token(user=station.owner, name="own", scope=TokenScope.READ_WRITE)
    marker = tmp_path / "ran"
    command = {"collect": {"kind": "command", "command": ["sh", "-c", f"id > {marker}"], "columns": ["x"]}}
    path = f"/api/v1/sources/{station.source.pk}/"

    status, body = api(web, dave_token, "PATCH", path, {"config": command})
    assert status == 400, body
    assert "Only the owner of this source's agent" in body
    station.source.refresh_from_db()
    assert station.source.config["collect"]["kind"] == "file"

    start_agent(station, web, processes, tmp_path)  # its own file: allow_commands = false
    status, body = api(web, owner_token, "PATCH", path, {"config": command})
    assert status == 200, body
    reason = "commands are not enabled on this host"
    wait_for(
        lambda: any(
            reason in item["reason"]
            for item in AgentHealth.objects.get(agent=station.agent).refused_sources
            if item["id"] == station.source.pk
        ),
        timeout=30,
        message="the agent reporting the refused command source in its heartbeat",
    )
    station.source.refresh_from_db()
    assert station.source.last_error.startswith(f"refused by the agent: {reason}")
    assert not marker.exists()
    # The administrator sees it on the agent's page.
    admin = make_user("root-admin", is_staff=True, is_superuser=True, password=None)
    client = Client()
    client.force_login(admin)
    page = client.get(reverse("admin:accounts_agent_change", args=[station.agent.pk])).content.decode()
    assert f"refused by the agent: {reason}" in page
