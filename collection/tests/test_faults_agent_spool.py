"""Fault: the agent's spool disk fills while the server is down (a real tmpfs, a real gunicorn, a real
``daqbroker-agent run``). The agent keeps running and says why (``status``, heartbeat in the admin); when
the server is back and space is freed, every reading arrives exactly once, without a restart.

Needs root for the small disk (``mount -t tmpfs``): skipped with the reason otherwise, run under CI=true.
"""

# ruff: noqa: F811 (the fixtures of test_agent_e2e, imported by name, are parameters here)
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from accounts.models import AgentHealth
from collection.tests.test_agent_e2e import processes, start_agent, station, web  # noqa: F401 (fixtures)
from conftest import wait_for
from daqbroker_agent.uploader import SPOOL_AREA

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def agent_status(agent) -> dict:
    done = subprocess.run([sys.executable, "-m", "daqbroker_agent", "status", "--json"], env=agent.env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.engine_independent  # the agent's spool is the subject; ingest runs on every engine elsewhere
def test_a_spool_disk_that_fills_while_the_server_is_down_heals_without_losing_a_reading(
    station,
    web,
    processes,
    tmp_path,
    small_disk,
):
    disk = small_disk("spooldisk", 6 << 20)
    station.spool_dir = disk.path / "spool"
    agent = start_agent(station, web, processes, tmp_path)
    station.write_lines(100)
    wait_for(lambda: station.stored() == 200, timeout=30, message="the first readings")

    web.stop()
    disk.fill(leave=512 << 10)
    while SPOOL_AREA not in agent_status(agent)["problems"]:
        station.write_lines(5000)
        wait_for(
            lambda: (
                agent_status(agent)["spooled_total"] == 2 * station.lines_written
                or SPOOL_AREA in agent_status(agent)["problems"]
            ),
            timeout=60,
            message="lines spooled, or the disk full",
        )
    info = agent_status(agent)
    assert info["running"] and info["problems"][SPOOL_AREA].startswith("spool disk full: ")
    station.write_lines(2000)  # written while the disk is full: they wait in the logger's file

    web.start()  # the server is back first: the heartbeat tells the admin why nothing arrives
    wait_for(
        lambda: "spool disk full" in AgentHealth.objects.get(agent=station.agent).last_error,
        timeout=60,
        message="the heartbeat naming the full disk",
    )
    disk.release()
    wait_for(lambda: station.stored() == 2 * station.lines_written, timeout=180, message="every reading stored")
    wait_for(lambda: SPOOL_AREA not in agent_status(agent)["problems"], timeout=30, message="the problem cleared")
    station.assert_exactly_once()
    assert agent.running and agent.starts == 1  # healed by itself, never restarted
    assert "cannot rollback" not in agent.log() and "Traceback" not in agent.log()
