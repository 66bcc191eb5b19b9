"""The spool: durable, bounded, and crash-safe (real SIGKILLs of a child process writing to it)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from daqbroker_agent.spool import Spool, SpoolFull, storable


def readings(n: int, start: int = 0, channel: str = "7"):
    return [(channel, 1_700_000_000_000_000 + (start + i) * 1000, float(start + i)) for i in range(n)]


def test_readings_wait_until_acknowledged(tmp_path):
    spool = Spool(tmp_path)
    spool.add(readings(10))
    assert spool.depth() == 10
    batch = spool.claim(4)
    assert [r[3] for r in batch.readings] == [0.0, 1.0, 2.0, 3.0]
    assert batch.id.startswith("agent-")
    assert spool.depth() == 10  # claimed is not delivered
    assert spool.ack(batch) == 4
    assert spool.depth() == 6
    rest = spool.claim(100)
    assert [r[3] for r in rest.readings] == [4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    spool.ack(rest)
    assert spool.claim(100) is None
    counters = spool.counters()
    assert (counters["depth"], counters["spooled"], counters["uploaded"]) == (0, 10, 10)


def test_an_unacknowledged_batch_comes_back_unchanged_after_a_restart(tmp_path):
    spool = Spool(tmp_path)
    spool.add(readings(10))
    first = spool.claim(6)
    spool.close()
    again = Spool(tmp_path)  # the agent restarted without an answer for `first`
    retried = again.claim(6)
    assert (retried.id, retried.readings) == (first.id, first.readings)
    assert retried.resent and not first.resent
    rest = again.claim(6, exclude=[retried.id])
    assert [r[3] for r in rest.readings] == [6.0, 7.0, 8.0, 9.0]
    assert rest.id != retried.id
    assert again.claim(6, exclude=[retried.id]).id == rest.id  # it too is handed back unchanged until acknowledged


def test_threads_sending_at_once_get_different_batches(tmp_path):
    spool = Spool(tmp_path)
    spool.add(readings(9))
    a = spool.claim(3)
    b = spool.claim(3, exclude=[a.id])
    c = spool.claim(3, exclude=[a.id, b.id])
    assert spool.claim(3, exclude=[a.id, b.id, c.id]) is None
    ids = [r[0] for batch in (a, b, c) for r in batch.readings]
    assert len(ids) == len(set(ids)) == 9
    spool.ack(b)  # out of order
    spool.ack(a)
    spool.ack(c)
    assert spool.depth() == 0
    spool.add(readings(2, start=100))
    assert [r[3] for r in spool.claim(10).readings] == [100.0, 101.0]


def test_the_spool_is_bounded(tmp_path):
    spool = Spool(tmp_path, max_readings=1000)
    spool.add(readings(990))
    assert spool.room() == 10
    with pytest.raises(SpoolFull) as excinfo:
        spool.add(readings(11, start=990), cursor=("cursor:x", {"offset": 5}))
    assert (excinfo.value.room, excinfo.value.capacity) == (10, 1000)
    assert spool.get("cursor:x") is None  # nothing of the refused transaction was kept
    assert spool.depth() == 990
    spool.add(readings(10, start=990))
    assert spool.room() == 0


def test_values_keep_their_type_and_non_finite_numbers_become_text(tmp_path):
    spool = Spool(tmp_path)
    spool.add([("1", 1, 1.5), ("1", 2, float("nan")), ("2", 3, "OK"), ("1", 4, float("-inf")), ("1", 5, 3)])
    assert [r[3] for r in spool.claim(10).readings] == [1.5, "nan", "OK", "-inf", 3.0]
    assert storable(2**60) == str(2**60)


def test_split_and_bury(tmp_path):
    spool = Spool(tmp_path)
    spool.add(readings(5))
    batch = spool.claim(5)
    spool.split(batch)
    left = spool.claim(5)
    right = spool.claim(5, exclude=[left.id])
    assert [r[3] for r in left.readings] == [0.0, 1.0]
    assert [r[3] for r in right.readings] == [2.0, 3.0, 4.0]
    assert batch.id not in (left.id, right.id)
    spool.ack(right)
    spool.split(left)
    single = spool.claim(5)
    spool.bury(single, "400: unreadable")
    assert spool.counters()["dead"] == 1
    assert spool.depth() == 1
    dead = sqlite3.connect(spool.path).execute("SELECT channel, value, reason FROM dead_letters").fetchall()
    assert dead == [("7", 0.0, "400: unreadable")]


def test_metadata_round_trips(tmp_path):
    spool = Spool(tmp_path)
    spool.put("cursor:a", {"files": {"x.csv": {"offset": 12}}})
    assert Spool(tmp_path).get("cursor:a") == {"files": {"x.csv": {"offset": 12}}}
    assert spool.get("missing", "default") == "default"


# --- crashes -----------------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from daqbroker_agent.spool import Spool
    spool = Spool(sys.argv[1])
    i = 0
    while True:
        rows = [("5", i * 1000 + j, float(j)) for j in range(100)]
        spool.add(rows, cursor=("cursor:w", {"batches": i + 1}))
        i += 1
    """
)

SENDER = textwrap.dedent(
    """
    import sys
    from daqbroker_agent.spool import Spool
    spool = Spool(sys.argv[1])
    while True:
        batch = spool.claim(37)
        if batch is None:
            break
        with open(sys.argv[2], "a") as log:  # "the server stored it" (before the ack, as over HTTP)
            log.write(batch.id + " " + " ".join(str(r[0]) for r in batch.readings) + "\\n")
        spool.ack(batch)
    """
)


def _child(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env)


def _kill_when(proc: subprocess.Popen, condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, "the child ended early"
        assert time.monotonic() < deadline, "the child made no progress"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def test_a_killed_writer_leaves_readings_and_cursor_in_step(tmp_path):
    Spool(tmp_path).close()
    proc = _child(WRITER, str(tmp_path))
    probe = Spool(tmp_path)
    _kill_when(proc, lambda: probe.depth() > 20_000)
    spool = Spool(tmp_path)
    stored = spool.connection().execute("SELECT count(*) FROM readings").fetchone()[0]
    assert stored == spool.depth() == spool.get("cursor:w")["batches"] * 100
    assert stored > 20_000


def test_a_killed_sender_loses_nothing_and_resends_the_same_batch(tmp_path):
    spool = Spool(tmp_path)
    for start in range(0, 30_000, 1000):
        spool.add(readings(1000, start=start))
    sent_log = tmp_path / "sent.log"
    sent_log.touch()
    proc = _child(SENDER, str(tmp_path), str(sent_log))
    _kill_when(proc, lambda: sent_log.stat().st_size > 100_000)

    # Restarted: every reading either reached "the server" or is still in the spool; a batch sent but not
    # acknowledged comes back with the same id, which the server recognises.
    finisher = _child(SENDER, str(tmp_path), str(sent_log))
    assert finisher.wait(timeout=60) == 0
    delivered: dict[str, list[str]] = {}
    for line in sent_log.read_text().splitlines():
        batch_id, *ids = line.split()
        assert delivered.setdefault(batch_id, ids) == ids, "a batch id was re-used for other readings"
    ids = [int(i) for batch in delivered.values() for i in batch]
    assert sorted(ids) == list(range(1, 30_001))  # every reading exactly once, counting by batch id
    assert Spool(tmp_path).depth() == 0


def unparsed(n: int, start: int = 0):
    from daqbroker_agent.spool import Unparsed

    return [
        Unparsed(
            "server:12", "roof/logger", f"garbage {start + i}", "line not parsed: no time", {"line": start + i + 1}
        )
        for i in range(n)
    ]


def test_unparsed_lines_are_kept_with_their_readings_or_not_at_all(tmp_path):
    spool = Spool(tmp_path, max_readings=10)
    spool.add(readings(5), cursor=("cursor:x", 1), unparsed=unparsed(2))
    assert spool.unparsed_waiting() == (2, 0)
    with pytest.raises(SpoolFull):
        spool.add(readings(6, start=5), cursor=("cursor:x", 2), unparsed=unparsed(3, start=2))
    assert spool.unparsed_waiting() == (2, 0)  # the refused transaction kept none of its lines
    assert spool.get("cursor:x") == 1


def test_unparsed_lines_are_reported_in_batches_that_come_back_unchanged_until_acknowledged(tmp_path):
    spool = Spool(tmp_path)
    spool.add([], unparsed=unparsed(5))
    first = spool.claim_unparsed(3)
    assert [u.text for u in first.lines] == ["garbage 0", "garbage 1", "garbage 2"]
    assert first.lines[0].context == {"line": 1} and first.lines[0].source_key == "server:12"
    spool.add([], unparsed=unparsed(1, start=5))  # arrives while the batch is in flight
    again = Spool(tmp_path).claim_unparsed(3)  # another process (a restart) gets the same batch
    assert (again.id, [u.text for u in again.lines]) == (first.id, [u.text for u in first.lines])
    spool.ack_unparsed(first)
    rest = spool.claim_unparsed(100)
    assert rest.id != first.id and [u.text for u in rest.lines] == ["garbage 3", "garbage 4", "garbage 5"]
    spool.refuse_unparsed(rest, "400: the server refuses them")
    assert spool.claim_unparsed(100) is None
    assert spool.unparsed_waiting() == (0, 3)  # refused lines stay here, never sent again
    counters = spool.counters()
    assert (counters["unparsed"], counters["unparsed_sent"], counters["unparsed_dropped"]) == (6, 3, 0)


def test_unparsed_lines_are_bounded_and_long_ones_cut(tmp_path, monkeypatch):
    from daqbroker_agent import spool as spool_module
    from daqbroker_agent.spool import Unparsed

    monkeypatch.setattr(spool_module, "MAX_UNPARSED_LINES", 4)
    spool = Spool(tmp_path)
    spool.add([], unparsed=unparsed(3))
    spool.add([], unparsed=[*unparsed(2, start=3), Unparsed("local:x", "x", "y" * 5000, "r", {})])
    assert spool.unparsed_waiting() == (4, 0)
    assert spool.counters()["unparsed_dropped"] == 2
    spool.add([], unparsed=[])
    long = Spool(tmp_path / "other")
    long.add([], unparsed=[Unparsed("local:x", "x", "y" * 5000, "r", {})])
    assert len(long.claim_unparsed().lines[0].text) == 2000
