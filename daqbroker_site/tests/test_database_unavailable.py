"""A web server whose database goes away answers 503 + Retry-After (JSON ``detail`` for the API), not a bare
"Server Error (500)": an agent then logs "the database is unavailable" and retries (issue 13, item 8).

A real gunicorn on a PostgreSQL cluster of the test's own, stopped and started again (the machine's shared
PostgreSQL is never touched). The test needs no test database of the session's engine.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
import uuid

import pytest

from accounts.models import TOKEN_PREFIX
from accounts.tokens import KEY_ID_LENGTH
from collection.tests.faults import OwnPostgres, fault_env, free_port, own_postgres_problem
from conftest import service_unavailable, wait_for


@pytest.fixture
def own_postgres():
    problem = own_postgres_problem()
    if problem:
        service_unavailable(f"cannot make a throwaway PostgreSQL cluster: {problem}")
    cluster = OwnPostgres()
    yield cluster
    cluster.destroy()


def request(url: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, bytes, dict]:
    body = b"[]" if method == "POST" else None
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)  # noqa: S310 (our own server)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:  # noqa: S310 (our own test server)
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)
    except OSError:  # not listening yet
        return 0, b"", {}


UNKNOWN_TOKEN = f"{TOKEN_PREFIX}{'a' * KEY_ID_LENGTH}_{'b' * 43}"


def ingest(base: str) -> tuple[int, bytes, dict]:
    # Well formed, so that it is looked up in the database (a malformed one is refused before that).
    headers = {"Authorization": f"Bearer {UNKNOWN_TOKEN}", "Content-Type": "application/json"}
    return request(f"{base}/api/v1/ingest/", method="POST", headers=headers)


def test_the_api_and_the_pages_answer_503_while_the_database_is_down_and_recover_by_themselves(
    own_postgres, tmp_path, start_process
):
    env = fault_env(tmp_path, own_postgres.create_database(f"web_{uuid.uuid4().hex[:8]}"), DAQBROKER_DEBUG="true")
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "daqbroker_site.wsgi", "--workers", "1", "--bind", f"127.0.0.1:{port}"]
    web = start_process("web", argv, env)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: ingest(base)[0] == 401, timeout=60, message="gunicorn answering (401 for an unknown token)")

    own_postgres.stop()
    status, body, headers = ingest(base)
    assert status == 503, (status, body, web.log())
    assert "database" in json.loads(body)["detail"]
    assert int(headers["Retry-After"]) > 0
    # A page whose visitor has a session needs the database to know who it is: a plain 503 page.
    status, body, headers = request(f"{base}/", headers={"Cookie": "sessionid=abcdefghijklmnopqrstuvwxyz012345"})
    assert status == 503 and b"database cannot be reached" in body
    assert int(headers["Retry-After"]) > 0
    log = web.log()
    assert "database unavailable for POST /api/v1/ingest/" in log
    assert "Traceback" not in log

    own_postgres.start()
    wait_for(lambda: ingest(base)[0] == 401, timeout=60, message="the web server answering normally again")
