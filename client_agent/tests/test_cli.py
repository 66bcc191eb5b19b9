"""``daqbroker-agent`` as an operator runs it: a real process against the stand-in server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from agent_fakes import FakeServer

from daqbroker_agent.config import validate_source_config
from daqbroker_agent.runs import BadParameter, parse_params
from daqbroker_agent.spool import Spool

T = "2026-11-27T10:00:00Z"


def agent(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "daqbroker_agent", *args],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def agent_env(server: FakeServer, spool, token: str = "dbk_good") -> dict:  # noqa: S107
    return {
        "DAQBROKER_AGENT_URL": server.url,
        "DAQBROKER_AGENT_TOKEN": token,
        "DAQBROKER_AGENT_SPOOL": str(spool),
        "DAQBROKER_AGENT_RETRY_INITIAL_SECONDS": "0.05",
        "DAQBROKER_AGENT_RETRY_MAX_SECONDS": "0.5",
        "DAQBROKER_AGENT_HEARTBEAT_SECONDS": "1",
        "DAQBROKER_AGENT_CONFIG_POLL_SECONDS": "1",
    }


def wait_until(condition, timeout: float = 20.0, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the agent exited with {proc.returncode}: {proc.stderr.read()}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def channel(channel_id: int) -> dict:
    return {"id": channel_id, "slug": f"c{channel_id}", "source_field": "temp", "kind": "numeric"}


def command_source(source_id: int, code: str, channels: list[dict]) -> dict:
    collect = {"kind": "command", **validate_source_config("command", {"command": [sys.executable, "-c", code],
                                                                       "columns": ["time", "temp"]})}  # fmt: skip
    return {"id": source_id, "name": f"cmd{source_id}", "instrument": "station", "interval_seconds": 1,
            "collect": collect, "channels": channels}  # fmt: skip


def test_help_and_version():
    result = agent("--help")
    assert result.returncode == 0
    for command in ("run", "status", "check", "flush"):
        assert command in result.stdout
    assert agent("--version").stdout.startswith("daqbroker-agent ")


def test_bad_settings_exit_with_their_reason(tmp_path):
    result = agent("status", env={"DAQBROKER_AGENT_SPOOL": str(tmp_path), "DAQBROKER_AGENT_BATCH_SIZE": "-1"})
    assert result.returncode == 2
    assert "DAQBROKER_AGENT_BATCH_SIZE: must be at least 1" in result.stderr


def test_status_before_the_first_run(tmp_path):
    result = agent("status", "--spool", str(tmp_path / "none"))
    assert result.returncode == 1
    assert "has not run with this spool folder yet" in result.stderr


def test_check_tells_what_will_be_collected(tmp_path):
    with FakeServer() as server:
        server.config["sources"] = [command_source(3, "print(1)", [channel(9)])]
        result = agent("check", env=agent_env(server, tmp_path))
        refused = agent("check", env=agent_env(server, tmp_path, token="dbk_revoked"))
    assert result.returncode == 0, result.stderr
    assert "agent:   test-agent" in result.stdout
    assert "station/cmd3 (command" in result.stdout and "temp->9" in result.stdout
    assert refused.returncode == 3
    assert "the server refuses the token (401: Invalid token.)" in refused.stderr


def test_flush_empties_the_spool(tmp_path):
    spool = Spool(tmp_path)
    spool.add([("5", 1_000_000 + i, float(i)) for i in range(12_345)])
    spool.close()
    with FakeServer() as server:
        result = agent("flush", env={**agent_env(server, tmp_path), "DAQBROKER_AGENT_BATCH_SIZE": "1000"})
        assert len(server.stored) == 12_345
    assert result.returncode == 0, result.stderr
    assert "flushed: 12,345 readings uploaded" in result.stdout


def test_flush_says_why_it_could_not(tmp_path):
    spool = Spool(tmp_path)
    spool.add([("5", 1, 1.0)])
    spool.close()
    with FakeServer() as server:
        result = agent("flush", "--timeout", "1", env=agent_env(server, tmp_path, token="dbk_revoked"))
    assert result.returncode == 3
    assert "1 readings still wait in the spool: the server refuses the agent's token" in result.stderr


def test_run_collects_uploads_beats_follows_the_server_and_stops_cleanly(tmp_path):
    folder = tmp_path / "logger"
    folder.mkdir()
    (folder / "a.csv").write_text(f"{T},1.5\n")
    local = tmp_path / "agent.toml"
    local.write_text(
        # The server's configuration assigns a command source: this machine's file lets it run.
        f'spool = "{tmp_path / "spool"}"\nallow_commands = true\n'
        '[[sources]]\nname = "local-file"\ninterval_seconds = 0.2\n'
        f'collect = {{ kind = "file", path = "{folder}", columns = ["time", "temp"] }}\n'
        'channels = [{ channel = "station/file-temp", field = "temp" }]\n'
    )
    with FakeServer() as server:
        server.config["sources"] = [command_source(1, f"print('{T},20.5')", [channel(41)])]  # fmt: skip
        env = agent_env(server, tmp_path / "spool")
        del env["DAQBROKER_AGENT_SPOOL"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "daqbroker_agent", "run", "--config", str(local)],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env},
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until(lambda: ("41", 1_795_773_600_000_000) in server.stored, proc=proc)
            wait_until(lambda: ("station/file-temp", 1_795_773_600_000_000) in server.stored, proc=proc)
            beat = wait_until(lambda: server.heartbeats and server.heartbeats[-1], proc=proc)
            assert beat["version"] and beat["hostname"] and beat["spool_capacity"] == 5_000_000
            health = beat["health"]  # node health (daqbroker_agent.health): this machine's real figures
            assert health["spool_disk_free_bytes"] > 0 and 0 <= health["spool_disk_used_percent"] <= 100
            assert health["cpu_load"] >= 0 and 0 < health["memory_used_percent"] < 100
            assert health["spool_depth"] == beat["spool_depth"] >= 0

            # Changed in the admin: a second source; the agent follows without a restart.
            server.config = {**server.config, "version": "v2", "sources": [
                *server.config["sources"],
                command_source(2, "print('2026-11-27T11:00:00Z,7')", [channel(42)]),
            ]}  # fmt: skip
            wait_until(lambda: ("42", 1_795_777_200_000_000) in server.stored, proc=proc)
            conditional = [r for r in server.requests_to("/api/v1/agent/config/") if r[2].get("if-none-match")]
            assert conditional, "the agent polls with If-None-Match"

            second = agent("run", "--config", str(local), env=env, timeout=30)
            assert second.returncode == 1
            assert "another daqbroker-agent (pid" in second.stderr

            status = agent("status", "--json", "--config", str(local), env=env)
            info = json.loads(status.stdout)
            assert info["running"] and info["server_config_version"] == "v2"
            assert info["uploaded_total"] >= 3
        finally:
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "collecting station/cmd2" in stderr
    assert "stopped; " in stderr
    after = json.loads(agent("status", "--json", "--config", str(local), env=env).stdout)
    assert not after["running"]


@pytest.mark.parametrize("command", ["run", "check", "flush"])
def test_commands_that_talk_to_the_server_need_one(tmp_path, command):
    result = agent(command, "--spool", str(tmp_path), env={"DAQBROKER_AGENT_URL": "", "DAQBROKER_AGENT_TOKEN": ""})
    assert result.returncode == 2
    assert "no server" in result.stderr


# --- run start|stop (marking experiment runs; the server side is tested in instruments/tests) --------


def test_run_params_are_name_value_pairs():
    assert parse_params(["energy=3.5", "target = gold", "note="]) == {"energy": "3.5", "target": "gold", "note": ""}
    for bad in (["energy"], ["=3"], ["a=1", "a=2"]):
        with pytest.raises(BadParameter):
            parse_params(bad)


def test_run_start_sends_the_parameters_and_reports_the_new_run(tmp_path):
    path = "/api/v1/runlists/beam/start/"
    with FakeServer() as server:
        server.answer(path, 201, {"run": {"label": "12", "start": T}, "ended": {"label": "11"}})
        result = agent("run", "start", "--list", "beam", "--param", "energy=3.5", env=agent_env(server, tmp_path))
        assert result.returncode == 0, result.stderr
        assert "run 12 of beam started" in result.stdout and "run 11 ended" in result.stdout
        method, _, headers, body = server.requests_to(path)[-1]
        assert method == "POST" and headers["authorization"] == "Bearer dbk_good"
        assert json.loads(body)["parameters"] == {"energy": "3.5"}


def test_run_start_refused_by_the_server_says_why_and_fails(tmp_path):
    path = "/api/v1/runlists/beam/start/"
    with FakeServer() as server:
        server.answer(path, 400, {"energy": ["'hot' is not a number"]})
        result = agent("run", "start", "--list", "beam", "--param", "energy=hot", env=agent_env(server, tmp_path))
        assert result.returncode == 1 and "'hot' is not a number" in result.stderr


def test_run_stop_with_nothing_active_is_not_a_failure(tmp_path):
    with FakeServer() as server:
        server.answer("/api/v1/runlists/beam/stop/", 409, {"detail": "No run of beam is active."})
        result = agent("run", "stop", "--list", "beam", env=agent_env(server, tmp_path))
        assert result.returncode == 0 and "no run of beam was active" in result.stdout


def test_a_refused_token_is_exit_code_3(tmp_path):
    with FakeServer() as server:
        result = agent("run", "stop", "--list", "beam", env=agent_env(server, tmp_path, token="dbk_bad"))
        assert result.returncode == 3 and "401" in result.stderr
