"""Fault: Redis goes away under a running web server (issue 13, item 5).

A Redis of the test's own (killed with SIGKILL; the shared one is never touched), a real gunicorn serving
``POST /api/v1/ingest/``. With Redis dead, every upload is still stored (the ingest throttle counts in the
process and says so once), the follow-up work that could not be queued stays in the database, and once
Redis is back a real Celery worker does it: rollups, spike checks, derived channels and alarm rules. Every
reading is checked at the end. All engines.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

from accounts import services
from collection.alarms.models import AlarmEvent, AlarmRule
from collection.choices import RollupTier
from collection.models import FollowUpBacklog, Rollup, RollupBacklog, Sample
from collection.tests.faults import OwnRedis, free_port
from conftest import celery_argv, database_url_for_subprocess, service_unavailable, wait_for
from instruments.models import Channel
from instruments.tests.factories import make_channel, make_instrument, make_user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

RATE = 25  # uploads per minute per token: the limit the per-process counter must keep while Redis is down
PER_BATCH = 50
T0 = (int(time.time()) // 3600 - 2) * 3600  # two hours ago, on the hour (seconds)


@pytest.fixture
def own_redis():
    if shutil.which("redis-server") is None:
        service_unavailable("redis-server is not installed (apt-get install redis-server)")
    server = OwnRedis()
    yield server
    server.kill()


def post(url: str, token: str, body: list[dict]) -> tuple[int, dict, dict]:
    request = urllib.request.Request(  # noqa: S310 (our own test server)
        f"{url}/api/v1/ingest/",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 (our own test server)
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), dict(exc.headers)
    except OSError:  # not listening yet
        return 0, {}, {}


def noted() -> set[int]:
    """The channels whose follow-up work waits on their row (collection.services.pending)."""
    return set(Channel.objects.filter(pending_from__isnull=False).values_list("pk", flat=True))


def waiting_follow_ups() -> set[int]:
    """The channels with follow-up work waiting: in ``FollowUpBacklog``, or on their row."""
    kept = {int(k) for spans in FollowUpBacklog.objects.values_list("spans", flat=True) for k in spans}
    return kept | noted()


def batch(refs: list[str], n: int) -> list[dict]:
    """Batch ``n``: PER_BATCH readings per channel, one a second; value = reading index (batch 5 and later
    go above the alarm threshold)."""
    rows = []
    for ref in refs:
        for i in range(n * PER_BATCH, (n + 1) * PER_BATCH):
            rows.append({"channel": ref, "t": T0 + i, "v": float(i)})
    return rows


def test_ingest_goes_on_with_redis_dead_and_its_follow_up_work_is_done_once_redis_is_back(
    own_redis, tmp_path, start_process
):
    owner = make_user()
    instrument = make_instrument(owner=owner)
    channels = [make_channel(instrument, slug=f"ch{n}") for n in range(2)]
    refs = [f"{instrument.slug}/{c.slug}" for c in channels]
    _agent, token = services.create_agent(owner=owner, name="station", instruments=[instrument])
    threshold = 5 * PER_BATCH - 0.5  # crossed by the first reading of batch 5 (sent while Redis is dead)
    AlarmRule.objects.create(name="high", instrument=instrument, threshold=threshold)

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env |= {
        "DATABASE_URL": database_url_for_subprocess(),
        "REDIS_URL": own_redis.url,
        "CELERY_BROKER_URL": own_redis.url,
        "DAQBROKER_CELERY_QUEUE": f"faults-{uuid.uuid4().hex}",
        "DAQBROKER_DATA_DIR": str(tmp_path / "var"),
        "DAQBROKER_DEBUG": "true",
        "DAQBROKER_INGEST_THROTTLE": f"{RATE}/minute",
        "DJANGO_SETTINGS_MODULE": "daqbroker_site.settings",
        "PYTHONUNBUFFERED": "1",
    }
    # One gunicorn worker: the per-process counter is then the whole limit, and can be checked exactly.
    argv = [sys.executable, "-m", "gunicorn", "daqbroker_site.wsgi", "--workers", "1", "--timeout", "120"]
    web = start_process("web", [*argv, "--bind", f"127.0.0.1:{port}"], env)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: post(url, "dbk_x", [])[0] == 401, timeout=60, message="gunicorn answering")

    status, body, _ = post(url, token, batch(refs, 0))  # Redis up: counted there, a worker woken there
    assert status == 200 and body["accepted"] == 2 * PER_BATCH
    # The follow-up work is kept in the database by the ingest itself (no worker runs yet to do it): in a
    # backlog row (PostgreSQL), or on the channel rows until a worker takes it up (SQLite, MariaDB).
    assert waiting_follow_ups() == {c.pk for c in channels}
    assert "the task broker is unreachable" not in web.log()

    own_redis.kill()
    for n in range(1, RATE + 1):  # Redis dead: each upload is stored; the local counter allows RATE a minute
        status, body, _ = post(url, token, batch(refs, n))
        assert status == 200, (n, body, web.log())
        assert body["accepted"] == 2 * PER_BATCH
    status, body, headers = post(url, token, batch(refs, RATE + 1))
    assert status == 429 and int(headers["Retry-After"]) > 0  # still throttled, per process

    log = web.log()
    assert log.count("the shared cache is unreachable") == 1, log
    assert log.count("the task broker is unreachable") == 1, log
    assert "Internal Server Error" not in log and " 500 " not in log
    # The work that could not be queued is in the database: nothing of it lost.
    assert waiting_follow_ups() == {c.pk for c in channels}
    assert set(RollupBacklog.objects.values_list("channel_id", flat=True)) | noted() == {c.pk for c in channels}
    assert not AlarmEvent.objects.exists()

    # Redis is back (empty: it kept nothing); a worker does the periodic sweeps' work.
    own_redis.start()
    start_process("worker", celery_argv("worker", "--concurrency", "1", "--loglevel", "INFO"), env, group=True)
    for task in ("collection.alarms.tasks.replay_follow_ups_task", "collection.tasks.refresh_rollups_task"):
        start_process(f"call-{task.rsplit('.', 1)[1]}", celery_argv("call", task), env).process.wait(60)
    wait_for(lambda: not waiting_follow_ups(), timeout=60, message="the pending follow-ups done")
    wait_for(lambda: not RollupBacklog.objects.exists(), timeout=60, message="the rollup backlog done")

    readings = (RATE + 1) * PER_BATCH
    for channel in channels:
        stored = list(Sample.objects.filter(channel=channel).order_by("ts").values_list("ts", "value"))
        assert stored == [((T0 + i) * 1_000_000, float(i)) for i in range(readings)]
        per_minute = Rollup.objects.filter(channel=channel, tier=RollupTier.MIN1).values_list("count", flat=True)
        assert sum(per_minute) == readings
    raised = AlarmEvent.objects.order_by("channel_id").values_list("channel_id", "raised_value")
    assert list(raised) == [(c.pk, 5.0 * PER_BATCH) for c in channels]

    # Redis answers again: the throttle counts there again, and says so once.
    wait_for(
        lambda: post(url, token, [])[0] == 400 and "the shared cache answers again" in web.log(),
        timeout=30,
        interval=1,
        message="the throttle back on Redis",
    )
