"""Fault: the server answers an upload with an error page. The agent's log says the status and one line
of reason (the JSON ``detail``, else the page's first 200 characters of text), never the whole page; and
when the server blames its database, the line says so."""

from __future__ import annotations

import logging
import threading

from agent_fakes import FakeServer

from daqbroker_agent.client import ApiClient, Reply
from daqbroker_agent.spool import Spool
from daqbroker_agent.state import AgentState
from daqbroker_agent.uploader import INGEST_PATH, Backoff, Uploader

T0 = 1_764_237_600_000_000

# Django's debug page for a database outage, shortened: a title, styles, a script and a long traceback.
DJANGO_DEBUG_PAGE = (
    b"<!DOCTYPE html>\n<html lang='en'>\n<head>\n  <meta charset='utf-8'>\n"
    b"  <title>OperationalError at /api/v1/ingest/</title>\n  <style>body { font: small sans-serif; }</style>\n"
    b"  <script>function hideAll(elems) {}</script>\n</head>\n<body>\n<div id='summary'>\n"
    b"  <h1>OperationalError at /api/v1/ingest/</h1>\n"
    b"  <pre class='exception_value'>connection to server at &quot;127.0.0.1&quot;, port 5432 failed: "
    b"Connection refused</pre>\n" + b"<tr><td>frame</td><td>" + b"x" * 40_000 + b"</td></tr>\n</div></body></html>\n"
)
NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
    b"</center>\r\n<hr><center>nginx/1.24.0</center>\r\n</body>\r\n</html>\r\n"
)


def upload_through(server: FakeServer, tmp_path, caplog, n: int = 20) -> Spool:
    spool = Spool(tmp_path)
    spool.add([("7", T0 + i * 1_000_000, float(i)) for i in range(n)])
    client = ApiClient(server.url, lambda: "dbk_good", timeout=5)
    uploader = Uploader(spool, client, AgentState(spool), batch_size=100, backoff=lambda: Backoff(0.01, 0.05))
    stop = threading.Event()
    with caplog.at_level(logging.INFO, logger="daqbroker_agent"):
        threads = uploader.start(stop, senders=1, idle_wait=0.01)
        try:
            server.wait_for(lambda: len(server.stored) == n)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=10)
    return spool


def warning_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_django_error_page_is_logged_as_one_line_that_blames_the_database(tmp_path, caplog):
    with FakeServer() as server:
        server.answer(INGEST_PATH, 500, DJANGO_DEBUG_PAGE)
        spool = upload_through(server, tmp_path, caplog)
    assert spool.depth() == 0 and len(server.stored) == 20
    [line] = [m for m in warning_lines(caplog) if "500" in m]
    assert "\n" not in line and "<" not in line and "xxxx" * 100 not in line
    assert len(line) < 600
    assert "500 (the server failed on its side): OperationalError at /api/v1/ingest/" in line
    assert "the server's database is the cause" in line


def test_a_json_detail_naming_the_database_is_quoted_and_blamed(tmp_path, caplog):
    with FakeServer() as server:
        server.answer(INGEST_PATH, 503, {"detail": "the database is unavailable; try again later"})
        upload_through(server, tmp_path, caplog)
    [line] = [m for m in [r.getMessage() for r in caplog.records] if "503" in m]
    assert "the database is unavailable; try again later" in line
    assert "the server's database is the cause" in line


def test_a_proxy_page_says_the_server_behind_it_is_down_without_blaming_the_database(tmp_path, caplog):
    with FakeServer() as server:
        server.answer(INGEST_PATH, 502, NGINX_502)
        upload_through(server, tmp_path, caplog)
    [line] = [m for m in warning_lines(caplog) if "502" in m]
    assert "is the DAQBroker server down?" in line
    assert "502 Bad Gateway 502 Bad Gateway nginx/1.24.0" in line
    assert "database" not in line and "<" not in line


def test_a_long_plain_body_is_cut_to_200_characters_with_whitespace_collapsed():
    reply = Reply(500, {}, b"Internal   error\n\n\t" + b"y" * 1000)
    assert reply.detail() == ("Internal error " + "y" * 184 + "…")
    assert len(reply.detail()) == 200
    assert not reply.blames_database()
    assert Reply(500, {}, b"").detail() == "(no explanation in the answer)"


def test_the_servers_own_production_error_page_is_one_line_without_guessing_the_cause():
    """What the server answers today on a database outage with DAQBROKER_DEBUG=false (measured against a
    gunicorn whose DATABASE_URL points nowhere): a bare page that does not name the database."""
    page = (
        b'\n<!doctype html>\n<html lang="en">\n<head>\n  <title>Server Error (500)</title>\n</head>\n<body>\n'
        b"  <h1>Server Error (500)</h1><p></p>\n</body>\n</html>\n"
    )
    reply = Reply(500, {"content-type": "text/html; charset=utf-8"}, page)
    assert reply.explain() == "500 (the server failed on its side): Server Error (500) Server Error (500)"
    assert not reply.blames_database()
