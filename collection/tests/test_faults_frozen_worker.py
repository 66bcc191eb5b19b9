"""Fault: a worker frozen (SIGSTOP) between taking its lease and committing its run (issue 13, item 6).

The frozen process is real: a separate process making the collection service calls, stopped by SIGSTOP
with its run's readings and cursor written but not committed (its row locks held). The dispatcher's
claims and another worker's runs of other sources go on without waiting on it; its own source is collected
again once the database ended the idle transaction and the lease ran out (or at once when the peer is
provably gone), and every reading is stored exactly once.

PostgreSQL and MariaDB (row locks, SKIP LOCKED, idle-transaction timeouts). SQLite has one writer and no
row locks: a frozen writer holds the whole database's write lock, so other writers wait for the busy
timeout and fail; only the "peer killed" case is meaningful there, and it runs on every engine.
"""

from __future__ import annotations

import signal
import subprocess

import pytest
from django.db import connection
from django.utils import timezone

from collection.tests.faults import (
    REPO,
    driver_argv,
    expected_readings,
    fault_env,
    parse_result,
    process_state,
    run_driver,
    write_readings,
)
from conftest import database_url_for_subprocess, wait_for
from instruments.models import DataSource
from instruments.tests.factories import make_channel, make_instrument, make_source

# On every engine: the subject is the engine's row locks and SKIP LOCKED between peers (docs/testing.md).
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.engine_dependent]


@pytest.fixture
def sources(tmp_path) -> list[tuple[DataSource, list]]:
    instrument = make_instrument()
    made = []
    for n in range(3):
        folder = tmp_path / f"logger{n}"
        write_readings(folder, 0, 300 + n)
        source = make_source(
            instrument,
            config={
                "path": str(folder),
                "pattern": "data*.csv",
                "columns": ["time", "a", "b"],
                "timestamp": {"columns": ["time"]},
            },
        )
        channels = [make_channel(instrument, slug=f"{f}{n}", source=source, source_field=f) for f in ("a", "b")]
        made.append((source, channels))
    return made


def driver_env(tmp_path, **settings: str) -> dict[str, str]:
    return fault_env(tmp_path, database_url_for_subprocess(), **settings)


class FrozenPeer:
    """A driver process running one source's collection, stopped by itself just before its commit."""

    def __init__(self, env: dict[str, str], source_id: int, log_path):
        self.log_path = log_path
        with log_path.open("w") as log:
            self.process = subprocess.Popen(
                driver_argv("collect", str(source_id), "--freeze-before-commit"),
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(
            lambda: process_state(self.process.pid) == "T" or self.process.poll() is not None,
            timeout=60,
            message="the peer stopping itself before its commit",
        )
        assert "FREEZING" in self.log(), self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.send_signal(signal.SIGCONT)
            self.process.wait(timeout=10)


def stored_once(channels, count: int) -> None:
    from collection.models import Sample

    expected_a, expected_b = expected_readings(0, count)
    for channel, expected in zip(channels, (expected_a, expected_b), strict=True):
        rows = [[ts, v] for ts, v in Sample.objects.filter(channel=channel).order_by("ts").values_list("ts", "value")]
        assert rows == expected


def test_a_frozen_peer_stops_neither_the_dispatcher_nor_other_sources_and_its_source_heals(sources, tmp_path):
    if connection.vendor == "sqlite":
        pytest.skip(
            "SQLite has one writer and no row locks: a frozen writer holds the database's write lock and other "
            "writers fail after the busy timeout (30 s) until it is gone (see docs/operations.md)"
        )
    (frozen, frozen_channels), (other, other_channels), (third, _) = sources
    env = driver_env(tmp_path, DAQBROKER_LOG_LEVEL="DEBUG")  # "not collected now: …" is logged at DEBUG
    # The peer's own settings: the database ends its transaction after 60 s idle (time enough for the checks
    # below on a loaded machine: 25 s was not, with the engine passes side by side); its lease lasts 65 s.
    peer_env = {**env, "DAQBROKER_DB_IDLE_TRANSACTION_TIMEOUT": "60", "DAQBROKER_COLLECT_LEASE_SECONDS": "65"}
    peer = FrozenPeer(peer_env, frozen.pk, tmp_path / "peer.log")
    try:
        # The dispatcher claims every due source but the frozen one's, without waiting on its locks.
        claimed = run_driver(env, "claim", timeout=60)["claimed"]
        assert sorted(claimed) == sorted([other.pk, third.pk])
        # Another worker collects another source while the peer stays frozen.
        result = run_driver(env, "collect", str(other.pk), timeout=60)
        assert result["status"] == "success" and result["accepted"] == 2 * 301
        stored_once(other_channels, 301)
        # The frozen source itself is skipped at once, and the log says why.
        skipped = subprocess.run(
            driver_argv("collect", str(frozen.pk)), cwd=REPO, env=env, capture_output=True, text=True, timeout=60
        )
        assert parse_result(skipped.stdout, skipped.stderr)["run"] is None
        assert "locked by another worker's unfinished transaction" in skipped.stderr
        assert process_state(peer.process.pid) == "T"

        # Healing with the peer still frozen: the database ends its idle transaction, the lease runs out,
        # and a later run collects the source. Until the lease (committed apart from the run) has run out a
        # run is refused whatever else holds: that is read here, not by starting a process a second.
        def collected() -> dict | None:
            frozen.refresh_from_db(fields=["lease_expires"])
            if frozen.lease_expires is not None and frozen.lease_expires > timezone.now():
                return None
            outcome = run_driver(env, "collect", str(frozen.pk), timeout=60)
            return outcome if outcome.get("status") == "success" else None

        healed = wait_for(collected, timeout=180, interval=1, message="the frozen peer's source collected again")
        assert healed["accepted"] == 2 * 300
        assert process_state(peer.process.pid) == "T"
        # The peer wakes up: its commit fails (its transaction was ended), and it leaves the source alone.
        peer.process.send_signal(signal.SIGCONT)
        peer.process.wait(timeout=60)
        assert parse_result(peer.log())["status"] == "failed"
    finally:
        peer.close()
    frozen.refresh_from_db()
    assert frozen.consecutive_failures == 0 and frozen.last_error == "" and frozen.lease_owner == ""
    stored_once(frozen_channels, 300)
    stored_once(other_channels, 301)


def test_a_peer_killed_before_its_commit_has_its_lease_taken_over_at_once(sources, tmp_path):
    (source, channels), _, _ = sources
    env = driver_env(tmp_path)  # the default lease (300 s): taken over because the holder is gone, not expired
    peer = FrozenPeer(env, source.pk, tmp_path / "peer.log")
    peer.process.send_signal(signal.SIGKILL)
    peer.process.wait(timeout=10)
    after = subprocess.run(
        driver_argv("collect", str(source.pk)), cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    result = parse_result(after.stdout, after.stderr)
    assert result["status"] == "success" and result["accepted"] == 2 * 300, after.stderr
    assert "is gone (its process no longer exists); lease taken over" in after.stderr
    runs = list(source.runs.order_by("id").values_list("status", "error"))
    assert runs[0][0] == "failed" and runs[0][1].startswith("the worker stopped during this run")
    assert runs[1] == ("success", "")
    stored_once(channels, 300)
