"""The uploader against a stand-in server (``agent_fakes.FakeServer``): what each answer does to the spool."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time

import pytest
from agent_fakes import FakeServer

from daqbroker_agent.client import ApiClient, Reply, ServerUnreachable
from daqbroker_agent.spool import Spool
from daqbroker_agent.state import AgentState
from daqbroker_agent.uploader import INGEST_PATH, Backoff, Uploader, ingest_payload

T0 = 1_764_237_600_000_000


def fill(spool: Spool, n: int, channel: str = "7", start: int = 0) -> None:
    spool.add([(channel, T0 + (start + i) * 1_000_000, float(start + i)) for i in range(n)])


def make_uploader(spool, url, token_source=lambda: "dbk_good", batch_size=100, initial=0.01, maximum=0.05):
    client = ApiClient(url, token_source, timeout=5)
    state = AgentState(spool)
    return Uploader(spool, client, state, batch_size=batch_size, backoff=lambda: Backoff(initial, maximum)), state


def run_until(uploader: Uploader, condition, timeout: float = 15.0, threads: int = 1) -> None:
    stop = threading.Event()
    workers = uploader.start(stop, senders=threads, idle_wait=0.01)
    try:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.01)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=10)


def test_batches_are_sent_as_exact_columns_and_acknowledged(tmp_path):
    spool = Spool(tmp_path)
    fill(spool, 250)
    spool.add([("roof/state", T0, "OK")])
    with FakeServer() as server:
        uploader, state = make_uploader(spool, server.url)
        run_until(uploader, lambda: spool.depth() == 0, threads=2)
        bodies = [json.loads(r[3]) for r in server.requests_to(INGEST_PATH)]
    assert len(server.stored) == 251
    assert server.stored[("7", T0 + 249_000_000)] == 249.0
    assert server.stored[("roof/state", T0)] == "OK"
    assert all(b["time_unit"] == "us" and b["batch_id"].startswith("agent-") for b in bodies)
    assert len({b["batch_id"] for b in bodies}) == len(bodies) == 3
    assert state.get("last_upload") is not None
    assert spool.counters()["uploaded"] == 251


def test_ingest_payload_orders_readings_as_the_server_indexes_them(tmp_path):
    spool = Spool(tmp_path)
    spool.add([("a/x", 1, 1.0), ("b/y", 2, "t"), ("a/x", 3, 3.0)])
    body, order = ingest_payload(spool.claim(10))
    assert body["channels"] == {"a/x": {"t": [1, 3], "v": [1.0, 3.0]}, "b/y": {"t": [2], "v": ["t"]}}
    assert order == [("a/x", 1, 1.0), ("a/x", 3, 3.0), ("b/y", 2, "t")]


def test_failures_are_retried_with_the_same_batch_id(tmp_path):
    spool = Spool(tmp_path)
    fill(spool, 50)
    with FakeServer() as server:
        server.answer(INGEST_PATH, 500, {"detail": "boom"}, times=2)
        server.answer(INGEST_PATH, 502, None)
        uploader, state = make_uploader(spool, server.url)
        run_until(uploader, lambda: spool.depth() == 0)
        ids = [json.loads(r[3])["batch_id"] for r in server.requests_to(INGEST_PATH)]
    assert len(ids) == 4 and len(set(ids)) == 1
    assert len(server.stored) == 50
    assert state.current_problems() == {}


def test_a_batch_the_server_already_has_is_acknowledged(tmp_path, caplog):
    spool = Spool(tmp_path)
    fill(spool, 10)
    batch = spool.claim(100)
    with FakeServer() as server:
        server.ingest(ingest_payload(batch)[0])  # stored before; the answer was lost
        uploader, _ = make_uploader(spool, server.url)
        with caplog.at_level(logging.INFO):
            run_until(uploader, lambda: spool.depth() == 0)
    assert "the server already had batch" in caplog.text
    assert len(server.stored) == 10


def test_retry_after_is_honoured(tmp_path):
    spool = Spool(tmp_path)
    fill(spool, 5)
    with FakeServer() as server:
        server.answer(INGEST_PATH, 503, {"detail": "maintenance"}, {"Retry-After": "1"})
        uploader, _ = make_uploader(spool, server.url)
        started = time.monotonic()
        run_until(uploader, lambda: spool.depth() == 0)
    assert time.monotonic() - started >= 1.0


def test_a_refused_token_keeps_everything_until_the_token_file_changes(tmp_path, caplog):
    spool = Spool(tmp_path / "spool")
    fill(spool, 30)
    token_file = tmp_path / "token"
    token_file.write_text("dbk_revoked")
    with FakeServer(tokens={"dbk_new"}) as server:
        uploader, state = make_uploader(spool, server.url, token_source=lambda: token_file.read_text().strip())
        stop = threading.Event()
        with caplog.at_level(logging.INFO):
            workers = uploader.start(stop, senders=1, idle_wait=0.01)
            server.wait_for(lambda: len(server.requests) >= 2)
            assert spool.depth() == 30
            assert "auth" in state.current_problems()
            fill(spool, 5, start=30)  # collection goes on
            token_file.write_text("dbk_new\n")
            deadline = time.monotonic() + 20
            while spool.depth() and time.monotonic() < deadline:
                time.sleep(0.02)
            stop.set()
            for worker in workers:
                worker.join(timeout=10)
    assert spool.depth() == 0 and len(server.stored) == 35
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "the server refuses the agent's token (401: Invalid token.)" in errors[0].getMessage()
    assert "the server accepts the agent's token" in caplog.text
    assert "auth" not in state.current_problems()


def test_refused_readings_are_logged_and_not_sent_again(tmp_path, caplog):
    spool = Spool(tmp_path)
    spool.add([("7", T0, 1.0), ("7", T0 + 1, "n/a"), ("7", T0 + 2, 3.0)])
    with FakeServer() as server:
        server.reject_values = {"n/a"}
        uploader, _ = make_uploader(spool, server.url)
        with caplog.at_level(logging.WARNING):
            run_until(uploader, lambda: spool.depth() == 0)
        assert len(server.requests_to(INGEST_PATH)) == 1
    assert "the server refused a reading of channel 7 at 2025-11-27T10:00:00.000001+00:00 (value 'n/a')" in caplog.text
    assert spool.counters()["rejected"] == 1
    assert spool.counters()["uploaded"] == 2


def test_conflicts_the_server_reports_are_counted_and_logged(tmp_path, caplog):
    spool = Spool(tmp_path)
    spool.add([("7", T0, 1.0), ("7", T0 + 1, 2.0), ("7", T0 + 2, 3.0)])
    with FakeServer() as server:
        server.stored[("7", T0)] = 1.0  # the same value: a duplicate
        server.stored[("7", T0 + 1)] = 2.5  # another value: a conflict
        uploader, _ = make_uploader(spool, server.url)
        with caplog.at_level(logging.INFO):
            run_until(uploader, lambda: spool.depth() == 0)
            uploader.progress.report(spool, force=True)
        assert server.stored[("7", T0 + 1)] == 2.5
    counters = spool.counters()
    assert (counters["conflicts"], counters["rejected"], counters["uploaded"]) == (1, 0, 2)
    assert "1 readings of batch" in caplog.text and "another value than the server already stores" in caplog.text
    assert "1 in conflict with other values stored at their times" in caplog.text
    # ``daqbroker-agent status`` tells them apart from refused readings.
    status = subprocess.run(
        [sys.executable, "-m", "daqbroker_agent", "status", "--json", "--spool", str(tmp_path)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    info = json.loads(status.stdout)
    assert (info["conflicts_total"], info["refused_by_server_total"], info["uploaded_total"]) == (1, 0, 2)


def test_a_body_refused_whole_is_split_down_to_the_bad_reading(tmp_path, caplog):
    spool = Spool(tmp_path)
    fill(spool, 8)
    with FakeServer() as server:
        server.max_readings = 5  # the batch of 8 is too large (413)
        server.poison = {3.0}  # and any body holding this reading is unreadable (400)
        uploader, _ = make_uploader(spool, server.url)
        with caplog.at_level(logging.WARNING):
            run_until(uploader, lambda: spool.depth() == 0)
    assert sorted(v for (_, _), v in server.stored.items()) == [0.0, 1.0, 2.0, 4.0, 5.0, 6.0, 7.0]
    assert spool.counters()["dead"] == 1
    assert "(413: the batch holds 8 readings; the limit is 5); splitting it" in caplog.text
    assert (
        "value 3.0) whatever is done (400: the body cannot be read); it was moved to the spool's dead letters"
        in caplog.text
    )
    dead = spool.connection().execute("SELECT channel, value FROM dead_letters").fetchall()
    assert dead == [("7", 3.0)]


def test_an_unreachable_server_is_waited_for(tmp_path):
    spool = Spool(tmp_path)
    fill(spool, 20)
    server = FakeServer()
    url = server.url
    server.httpd.server_close()  # nothing listens there any more
    uploader, state = make_uploader(spool, url)
    stop = threading.Event()
    workers = uploader.start(stop, senders=1, idle_wait=0.01)
    deadline = time.monotonic() + 10
    while "upload" not in state.current_problems():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert "connection refused" in state.current_problems()["upload"]
    stop.set()
    for worker in workers:
        worker.join(timeout=10)
    assert spool.depth() == 20


def test_backoff_grows_with_jitter_up_to_the_cap():
    low = Backoff(1.0, 8.0, rng=lambda: 0.0)
    high = Backoff(1.0, 8.0, rng=lambda: 1.0)
    assert [low.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert [high.next() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert Backoff(1.0, 8.0, rng=lambda: 1.0).next(retry_after=30) == 31.0
    assert Backoff(1.0, 8.0, rng=lambda: 1.0).next(retry_after=2) == pytest.approx(2.2)
    low.reset()
    assert low.next() == 0.5


def test_retry_after_as_a_date():
    soon = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 120))
    assert 100 < Reply(503, {"retry-after": soon}, b"").retry_after <= 120
    assert Reply(503, {"retry-after": "soon"}, b"").retry_after is None
    assert Reply(429, {"retry-after": "99999"}, b"").retry_after == 3600


def test_unreachable_is_an_exception_not_an_answer():
    client = ApiClient("http://127.0.0.1:9", lambda: "dbk_x", timeout=2)
    with pytest.raises(ServerUnreachable, match="connection refused"):
        client.get_json("/api/v1/whoami/")


# --- lines that did not parse --------------------------------------------------------------------


def test_unparsed_lines_are_reported_once_and_what_each_answer_does(tmp_path):
    from daqbroker_agent.spool import Unparsed
    from daqbroker_agent.uploader import UNPARSED_PATH, report_unparsed

    spool = Spool(tmp_path)
    lines = [
        Unparsed("server:12", "roof/logger", "ERR bus", "line not parsed: no time", {"file": "/d/a.csv", "line": 4}),
        Unparsed("local:bench", "bench", "#", "line not parsed: no time", {"received": T0}),
    ]
    spool.add([], unparsed=lines)
    with FakeServer() as server:
        client = ApiClient(server.url, lambda: "dbk_good", timeout=5)
        server.answer(UNPARSED_PATH, 503, {"detail": "busy"})
        assert "503" in report_unparsed(spool, client)
        assert spool.unparsed_waiting() == (2, 0)
        assert report_unparsed(spool, client) == ""  # the same batch again, now stored
        first_id = json.loads(server.requests_to(UNPARSED_PATH)[0][3])["batch_id"]
        assert list(server.unparsed) == [first_id]
        assert server.unparsed[first_id] == [
            {"text": "ERR bus", "reason": "line not parsed: no time", "source": 12, "source_name": "roof/logger",
             "file": "/d/a.csv", "line": 4},
            {"text": "#", "reason": "line not parsed: no time", "source": None, "source_name": "bench",
             "received": "2025-11-27T10:00:00+00:00"},
        ]  # fmt: skip
        assert spool.unparsed_waiting() == (0, 0) and spool.counters()["unparsed_sent"] == 2

        spool.add([], unparsed=lines[:1])
        server.answer(UNPARSED_PATH, 400, {"lines": ["bad"]})
        assert report_unparsed(spool, client) == ""
        assert spool.unparsed_waiting() == (0, 1)  # refused: kept here, not sent again

        spool.add([], unparsed=lines[:1])
        assert "401" in report_unparsed(spool, ApiClient(server.url, lambda: "dbk_revoked", timeout=5))
        assert spool.unparsed_waiting() == (1, 1)
        url = server.url
    why = report_unparsed(spool, ApiClient(url, lambda: "dbk_good", timeout=5))  # nobody listens there now
    assert why.startswith("unparsed lines not reported:")
    assert spool.unparsed_waiting() == (1, 1)
