#!/usr/bin/env python
"""Recovery times for the server-side faults of docs/operations.md, each beside a baseline measured in the
same run. Everything runs on services this script starts and breaks itself: a throwaway PostgreSQL cluster
(needs root and the PostgreSQL server binaries) and a redis-server on free ports; the machine's shared
PostgreSQL and Redis are never touched.

  database outage: a run cut by the outage; the time from the database answering again to the run's
                   failure recorded and its lease released (before: the lease, DAQBROKER_COLLECT_LEASE_SECONDS),
                   beside a normal run's duration;
  Redis down:      uploads/s and readings/s through gunicorn (one worker) with Redis up, then with Redis
                   killed (throttle counting per process, follow-ups kept in the database);
  frozen peer:     the dispatcher's claim and another source's run while a peer is frozen before its commit,
                   beside the same calls with no peer; then the time until the frozen source is collected
                   again (idle-transaction timeout + lease, both shortened here).

    .venv/bin/python bench/faults.py [--outage 5] [--uploads 200] [--batch 1000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import gunicorn, server_env

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from collection.tests.faults import (  # noqa: E402 (the repository is put on the path just above)
    OwnPostgres,
    OwnRedis,
    driver_argv,
    own_postgres_problem,
    parse_result,
    process_state,
    run_driver,
    wait_until,
    write_readings,
)


def driver_env(url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CELERY_BROKER_URL")}
    env.update(
        DATABASE_URL=url,
        DJANGO_SETTINGS_MODULE="daqbroker_site.settings",
        DAQBROKER_DATA_DIR=str(data_dir),
        DAQBROKER_FILE_ROOTS=str(data_dir.parent),  # the benchmark's sources read files under it
        DAQBROKER_LOG_LEVEL="WARNING",
        CELERY_BROKER_URL="memory://",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def bench_database_outage(cluster: OwnPostgres, work: Path, outage: float) -> None:
    env = driver_env(cluster.create_database("bench_outage"), work / "var-outage")
    folder = work / "outage"
    setup = run_driver(env, "setup", str(folder), "--sources", "2")["sources"]
    for n in range(2):
        write_readings(folder / str(n), 0, 5000)
    baseline = run_driver(env, "collect", str(setup[1]["source"]))
    log = work / "outage.log"
    with log.open("w") as out:
        worker = subprocess.Popen(
            driver_argv("collect", str(setup[0]["source"]), "--pause-after-collect"),
            cwd=REPO,
            env={**env, "DAQBROKER_LOG_LEVEL": "INFO"},
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    wait_until(lambda: "PAUSED" in log.read_text(), 60)
    cluster.stop()
    worker.stdin.write("go\n")
    worker.stdin.flush()
    time.sleep(outage)
    cluster.start()
    back = time.perf_counter()
    worker.wait(timeout=120)
    recorded = time.perf_counter() - back
    result = parse_result(log.read_text())
    state = run_driver(env, "state", str(setup[0]["source"]))
    lease = int(os.environ.get("DAQBROKER_COLLECT_LEASE_SECONDS", "300"))
    print(f"\n## Database outage during a run ({outage:.0f} s outage, PostgreSQL {cluster.bin.parent.name})")
    print(f"baseline: a normal run of 10,000 readings takes {baseline['seconds']:.2f} s")
    print(
        f"outage:   run recorded '{result['status']}' and lease released "
        f"{'yes' if not state['lease_owner'] else 'NO'} {recorded:.2f} s after the database answered "
        f"(before this change: the source stalled for the lease, {lease} s)"
    )


def _post(conn: http.client.HTTPConnection, token: str, body: bytes) -> int:
    conn.request(
        "POST", "/api/v1/ingest/", body, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    )
    response = conn.getresponse()
    response.read()
    return response.status


def bench_redis_down(cluster: OwnPostgres, work: Path, uploads: int, batch: int) -> None:
    url = cluster.create_database("bench_redis")
    redis = OwnRedis()
    make = (
        "import django; django.setup();"
        "from accounts import services;"
        "from instruments.tests.factories import make_user, make_instrument, make_channel;"
        "u = make_user(); i = make_instrument(owner=u); c = make_channel(i, slug='v');"
        "a, t = services.create_agent(owner=u, name='bench', instruments=[i]); print(t, i.slug)"
    )
    env = server_env(work / "var-redis", url, REDIS_URL=redis.url, CELERY_BROKER_URL=redis.url)
    env["DAQBROKER_INGEST_THROTTLE"] = "100000/minute"  # counted (in Redis, then per process), never reached
    token, slug = subprocess.run(
        [sys.executable, "-c", make], cwd=REPO, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    figures = {}
    start = 1_700_000_000
    with gunicorn(env, workers=1) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        # Up, killed, up again: the baseline before and after the outage, in the same run.
        for phase in ("Redis up", "Redis killed", "Redis back"):
            if phase == "Redis killed":
                redis.kill()
            elif phase == "Redis back":
                redis.start()
            statuses = []
            began = time.perf_counter()
            for _ in range(uploads):
                rows = [{"channel": f"{slug}/v", "t": start + i, "v": float(i)} for i in range(batch)]
                start += batch
                statuses.append(_post(conn, token, json.dumps(rows).encode()))
            elapsed = time.perf_counter() - began
            figures[phase] = (uploads / elapsed, uploads * batch / elapsed, statuses.count(200))
    redis.kill()
    print(f"\n## Redis down: uploads through gunicorn (1 worker), {uploads} uploads of {batch} readings each")
    for phase, (per_s, readings_s, ok) in figures.items():
        print(f"{phase:13s} {per_s:7.1f} uploads/s  {readings_s:9,.0f} readings/s  ({ok}/{uploads} answered 200)")
    up, down = (figures["Redis up"][0] + figures["Redis back"][0]) / 2, figures["Redis killed"][0]
    print(f"ratio: {down / up:.0%} of the throughput with Redis up (mean of before and after)")
    print("before this change: every upload answered 500 while Redis was down")


def bench_frozen_peer(cluster: OwnPostgres, work: Path) -> None:
    idle, lease = 15, 20  # the frozen peer's (time enough for the measured claim and run to start)
    env = driver_env(cluster.create_database("bench_frozen"), work / "var-frozen")
    peer_env = {
        **env,
        "DAQBROKER_DB_IDLE_TRANSACTION_TIMEOUT": str(idle),
        "DAQBROKER_COLLECT_LEASE_SECONDS": str(lease),
    }
    folder = work / "frozen"
    setup = run_driver(env, "setup", str(folder), "--sources", "20")["sources"]
    for n in range(20):
        write_readings(folder / str(n), 0, 200)
    frozen, other = setup[0]["source"], setup[1]["source"]
    base_claim = run_driver(env, "claim")
    base_run = run_driver(env, "collect", str(setup[2]["source"]))
    run_driver(env, "state", str(frozen))
    # Everything due again for the measured claim (the baseline claim moved next_run_at).
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from instruments.models import DataSource as D; "
            "D.objects.update(next_run_at=None)",
        ],
        cwd=REPO,
        env=env,
        check=True,
    )
    log = work / "frozen.log"
    with log.open("w") as out:
        peer = subprocess.Popen(
            driver_argv("collect", str(frozen), "--freeze-before-commit"),
            cwd=REPO,
            env=peer_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_until(lambda: process_state(peer.pid) == "T", 60)
    frozen_at = time.perf_counter()
    claim = run_driver(env, "claim")
    run = run_driver(env, "collect", str(other))
    attempts: list[str] = []

    def collected() -> bool:
        outcome = run_driver(env, "collect", str(frozen))
        attempts.append(f"{time.perf_counter() - frozen_at:.1f} s: {outcome.get('status') or 'skipped'}")
        return outcome.get("status") == "success"

    healed = wait_until(collected, 120, interval=0.5)
    heal_time = time.perf_counter() - frozen_at
    peer.send_signal(signal.SIGKILL)
    peer.send_signal(signal.SIGCONT)
    peer.wait(timeout=10)
    print(f"\n## A peer frozen (SIGSTOP) before its commit, 20 sources (idle timeout {idle} s, lease {lease} s)")
    print(
        f"baseline: claim {base_claim['seconds'] * 1000:.0f} ms ({len(base_claim['claimed'])} sources), "
        f"another source's run {base_run['seconds'] * 1000:.0f} ms"
    )
    print(
        f"frozen:   claim {claim['seconds'] * 1000:.0f} ms ({len(claim['claimed'])} sources, the frozen one "
        f"skipped), another source's run {run['seconds'] * 1000:.0f} ms ({run['status']})"
    )
    print(
        f"frozen source collected again {heal_time:.1f} s after the freeze"
        f"{'' if healed else ' (NOT within 120 s)'}, the peer still stopped "
        f"(bound: the idle-transaction timeout, then the lease; before this change the claim waited as long "
        f"as the peer stayed frozen)"
    )
    print("attempts to collect the frozen source: " + ", ".join(attempts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outage", type=float, default=5.0, help="seconds the database stays down")
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1000, help="readings per upload")
    parser.add_argument("--only", choices=["outage", "redis", "frozen"], help="one case only")
    args = parser.parse_args()
    problem = own_postgres_problem()
    if problem:
        sys.exit(f"cannot make a throwaway PostgreSQL cluster: {problem}")
    cluster = OwnPostgres()
    try:
        with tempfile.TemporaryDirectory(prefix="daqbroker-bench-faults-") as tmp:
            work = Path(tmp)
            if args.only in (None, "outage"):
                bench_database_outage(cluster, work, args.outage)
            if args.only in (None, "redis"):
                bench_redis_down(cluster, work, args.uploads, args.batch)
            if args.only in (None, "frozen"):
                bench_frozen_peer(cluster, work)
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
