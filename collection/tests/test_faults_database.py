"""Fault: the database goes away in the middle of a collection run (issue 13, item 3).

A real outage of a PostgreSQL cluster of the test's own (``pg_ctl stop -m fast`` ends every session; the
machine's shared PostgreSQL is never touched), during a real run made by a separate process: the run
records its failure and releases its lease as soon as the database answers again, instead of leaving the
source stalled for the whole lease, and the next run stores every reading exactly once.

Runs whatever engine the session uses (the outage needs its own cluster). Skipped, with the reason, when a
cluster cannot be made here (no server binaries, not root); under CI=true it must run.
"""

from __future__ import annotations

import subprocess
import uuid

import pytest

from collection.tests.faults import (
    REPO,
    OwnPostgres,
    driver_argv,
    expected_readings,
    fault_env,
    own_postgres_problem,
    parse_result,
    run_driver,
    write_readings,
)
from conftest import service_unavailable, wait_for

pytestmark = pytest.mark.slow  # a PostgreSQL cluster of its own, made and stopped: minutes on a busy machine


@pytest.fixture(scope="module")
def own_postgres():
    problem = own_postgres_problem()
    if problem:
        service_unavailable(f"cannot make a throwaway PostgreSQL cluster: {problem}")
    cluster = OwnPostgres()
    yield cluster
    cluster.destroy()


@pytest.fixture
def outage_env(own_postgres, tmp_path) -> dict[str, str]:
    return fault_env(tmp_path, own_postgres.create_database(f"faults_{uuid.uuid4().hex[:8]}"))


def test_a_run_cut_by_a_database_outage_records_its_failure_and_frees_its_source_once_the_database_is_back(
    own_postgres, outage_env, tmp_path
):
    folder = tmp_path / "logger"
    write_readings(folder / "0", 0, 500)
    (setup,) = run_driver(outage_env, "setup", str(folder))["sources"]
    source = str(setup["source"])

    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log:
        worker = subprocess.Popen(
            driver_argv("collect", source, "--pause-after-collect"),
            cwd=REPO,
            env=outage_env,
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        wait_for(lambda: "PAUSED" in log_path.read_text(), timeout=60, message="the run holding its lease")
        own_postgres.stop()  # the outage: every session ends, nothing answers
        worker.stdin.write("go\n")
        worker.stdin.flush()
        wait_for(
            lambda: "the database is unreachable" in log_path.read_text(),
            timeout=30,
            message="the run finding the database gone",
        )
        assert worker.poll() is None, "the run gave up while the database was down:\n" + log_path.read_text()
        own_postgres.start()  # the database is back
        worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    output = log_path.read_text()
    result = parse_result(output)
    assert result["status"] == "failed", output
    assert "OperationalError" in result["error"]
    assert "the database answers again" in output
    assert "being collected by" not in output

    state = run_driver(outage_env, "state", source)
    assert state["lease_owner"] == "" and state["lease_expires"] is None  # freed now, not in 300 s
    assert state["consecutive_failures"] == 1 and "OperationalError" in state["last_error"]
    assert [run["status"] for run in state["runs"]] == ["failed"]
    assert all(samples == [] for samples in state["samples"].values())  # nothing half-committed

    # The next run (the source is free) reads everything again from the old cursor: each reading once.
    write_readings(folder / "0", 500, 100)
    again = run_driver(outage_env, "collect", source)
    assert again["status"] == "success", again
    assert again["accepted"] == 2 * 600
    state = run_driver(outage_env, "state", source)
    expected_a, expected_b = expected_readings(0, 600)
    channels = setup["channels"]
    assert sorted(state["samples"][str(channels["a"])]) == expected_a
    assert sorted(state["samples"][str(channels["b"])]) == expected_b
    assert state["consecutive_failures"] == 0 and state["last_error"] == ""
