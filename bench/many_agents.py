#!/usr/bin/env python
"""Many agents: N simulated agents (asyncio coroutines in this process, one keep-alive connection each)
against gunicorn serving the app as in production, for --seconds.

Each agent has its own token (an agent of the server, with its own instrument and --channels channels) and,
from a random start within the first second, posts one reading per channel every --period s (the readings'
time is when they are taken) and a heartbeat every --heartbeat s, as ``daqbroker-agent`` does. A Celery
worker does the follow-up work (rollups, alarms) as in production. The server is configured by
``daqbroker_site/gunicorn_conf.py`` (the shipped configuration), --workers and --threads aside.

Checked inside the run, per step: every answer is 200 and every reading accepted; no growing backlog: an
agent late for its schedule sends at once, so its lateness (``lag``: send time minus planned time) stays
below one period while the server keeps up (printed: p99 lag over the whole step and over its last 10 s);
the follow-up rows left for the worker (``backlog``) drain within 60 s after the step; and every reading
sent is stored: the readings table is counted after the step and must hold exactly what was sent. A step
sustains its agents when all of that holds and at least 95% of the planned readings were sent (a late agent
stops at the deadline like the others); --agents lists the steps (e.g. ``1000,2000,3000``) to find
the largest number one machine sustains. The machine is shared: the load average is printed.

    .venv/bin/python bench/many_agents.py --agents 1000 --seconds 60
    .venv/bin/python bench/many_agents.py --agents 1000,2000,3000 --seconds 30 --engine sqlite
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import runpy
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from _common import gunicorn, recreate_database, server_env

REPO = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("BENCH_POSTGRESQL_URL", "postgres://postgres@127.0.0.1:5432/daqbroker_bench_agents")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", os.environ.get("DAQBROKER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="postgresql", choices=["postgresql", "sqlite"])
    parser.add_argument("--agents", default="1000", help="agents per step, comma-separated")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--period", type=float, default=1.0, help="seconds between an agent's readings posts")
    parser.add_argument("--heartbeat", type=float, default=10.0, help="seconds between an agent's heartbeats")
    parser.add_argument("--channels", type=int, default=3, help="readings per post (one per channel)")
    parser.add_argument("--workers", type=int, default=None, help="gunicorn workers (default: the shipped conf's)")
    parser.add_argument("--threads", type=int, default=None, help="threads per worker (default: the shipped conf's)")
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.setup:
        print(json.dumps(setup_database(int(args.setup), args.channels)))
        return
    steps = [int(n) for n in args.agents.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        run(args, steps, Path(tmp))


def setup_database(agents: int, channels: int) -> dict:
    """(In a child process with the server's environment.) Fresh schema; per agent an instrument, its
    channels and the agent with its token."""
    if os.environ.get("DATABASE_URL"):
        recreate_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command

    from accounts.services import create_agent
    from instruments.models import Channel, Instrument

    call_command("migrate", verbosity=0)
    owner = User.objects.create_user("bench-owner", password=None)
    instruments = Instrument.objects.bulk_create(
        Instrument(name=f"Station {i}", slug=f"s{i}", owner=owner) for i in range(agents)
    )
    Channel.objects.bulk_create(
        Channel(instrument=inst, name=f"c{j}", slug=f"c{j}") for inst in instruments for j in range(channels)
    )
    tokens = [
        create_agent(owner=owner, name=f"agent {i}", instruments=[inst], actor=owner)[1]
        for i, inst in enumerate(instruments)
    ]
    ids = Channel.objects.filter(instrument__in=instruments).values_list("id", flat=True)
    return {"tokens": tokens, "channels": [min(ids), max(ids)]}


@dataclass
class Step:
    readings_sent: int = 0
    requests: int = 0
    heartbeats: int = 0
    latencies: list[float] = field(default_factory=list)
    lags: list[tuple[float, float]] = field(default_factory=list)  # (when, lag)
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0


def run(args, steps: list[int], tmp: Path) -> None:
    import numpy as np

    queue = f"bench-agents-{os.getpid()}"
    env = server_env(
        tmp, PG_URL if args.engine == "postgresql" else None, REDIS_URL=REDIS_URL, DAQBROKER_CELERY_QUEUE=queue
    )
    started = time.perf_counter()
    setup = subprocess.run(
        [sys.executable, __file__, "--setup", str(max(steps)), "--channels", str(args.channels)],
        env=env, cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if setup.returncode != 0:
        sys.exit(f"setup failed:\n{setup.stderr[-3000:]}")
    made = json.loads(setup.stdout.strip().splitlines()[-1])
    tokens, channels = made["tokens"], made["channels"]
    options = ["-c", "python:daqbroker_site.gunicorn_conf", "--worker-connections", str(max(steps) + 100)]
    if args.threads:
        options += ["--threads", str(args.threads)]
    conf = runpy.run_path(str(REPO / "daqbroker_site" / "gunicorn_conf.py"))  # the shipped configuration
    workers = args.workers or conf["workers"]
    print(
        f"many agents over HTTP ({args.engine}): each posts {args.channels} readings every {args.period:g} s and a "
        f"heartbeat every {args.heartbeat:g} s, {args.seconds:g} s per step; gunicorn {workers} workers "
        f"({conf['worker_class']}, {args.threads or conf['threads']} threads), a Celery worker; setup "
        f"{time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"{'agents':>6} {'readings/s':>10} {'req/s':>6} {'p50 ms':>7} {'p99 ms':>7} {'lag p99':>8} {'last 10s':>8} "
        f"{'errors':>6} {'stored':>9} {'of sent':>9} {'drained':>7}  verdict"
    )
    worker_log = (tmp / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "daqbroker_site", "worker", "--concurrency", "1", "-Q", queue,
         "--loglevel", "WARNING"],
        env=env, cwd=REPO, stdout=worker_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        with gunicorn(env, workers=workers, timeout=120, options=options) as server, counter(args.engine, env) as count:
            warm = asyncio.run(warm_up(server.port, tokens[: max(steps)]))
            print(f"first heartbeats of {max(steps)} agents (each makes its health instrument): {warm:.1f} s")
            agents_readings = f"collection_sample WHERE channel_id BETWEEN {channels[0]} AND {channels[1]}"
            for phase, agents in enumerate(steps):
                before = count(agents_readings)
                step = asyncio.run(load(server.port, tokens[:agents], args, phase))
                drained = wait_drained(count)
                stored = count(agents_readings) - before  # the agents' own channels, not their health readings
                latency = np.array(step.latencies) * 1000
                lag = np.array([lag for _, lag in step.lags])
                end = max(t for t, _ in step.lags)
                last = np.array([lag for t, lag in step.lags if t > end - 10])
                late = max(np.percentile(lag, 99), np.percentile(last, 99))
                planned = agents * args.seconds / args.period * args.channels
                ok = (
                    not step.errors
                    and stored == step.readings_sent
                    and late < args.period
                    and drained is not None
                    and step.readings_sent >= 0.95 * planned
                )
                print(
                    f"{agents:>6} {step.readings_sent / step.elapsed:>10,.0f} {step.requests / step.elapsed:>6,.0f} "
                    f"{np.percentile(latency, 50):>7.1f} {np.percentile(latency, 99):>7.1f} "
                    f"{np.percentile(lag, 99):>7.2f}s {np.percentile(last, 99):>7.2f}s {len(step.errors):>6} "
                    f"{stored:>9,} {step.readings_sent:>9,} {'-' if drained is None else f'{drained:.0f} s':>7}  "
                    f"{'sustained' if ok else 'NOT sustained'} (sent {step.readings_sent / planned:.0%} of the plan); "
                    f"load average {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
                for error in step.errors[:3]:
                    print(f"       error: {error}")
    finally:
        worker.terminate()
        worker.wait(60)
        import redis

        redis.Redis.from_url(REDIS_URL).delete(queue)


@contextmanager
def counter(engine: str, env: dict):
    """count(rows): the rows of ``rows`` (a table, optionally with its WHERE clause), read straight from the
    database (not through the server)."""
    if engine == "postgresql":
        import psycopg

        with psycopg.connect(PG_URL.replace("postgres://", "postgresql://"), autocommit=True) as conn:
            yield lambda table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    else:
        import sqlite3

        conn = sqlite3.connect(Path(env["DAQBROKER_DATA_DIR"]) / "daqbroker.sqlite3", isolation_level=None, timeout=60)
        try:
            yield lambda table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        finally:
            conn.close()


def wait_drained(count, timeout: float = 60) -> float | None:
    """Seconds until the worker has done every follow-up and rollup row left (None: not within ``timeout``)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if count("collection_followupbacklog") == 0 and count("collection_rollupbacklog") == 0:
            return time.perf_counter() - start
        time.sleep(0.5)
    return None


async def load(port: int, tokens: list[str], args, phase: int) -> Step:
    step = Step()
    loop_start = time.perf_counter()
    deadline = loop_start + args.seconds

    async def agent(i: int, token: str) -> None:
        rng = random.Random(i)
        head = f"Host: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        await asyncio.sleep(rng.random() * args.period)
        first = time.perf_counter()
        reader = writer = None
        beat = 0
        k = 0
        while True:
            planned = first + k * args.period
            if planned >= deadline or time.perf_counter() >= deadline:
                break  # a late agent stops at the deadline too: what it did not send is its lag
            if planned > time.perf_counter():
                await asyncio.sleep(planned - time.perf_counter())
            now = time.perf_counter()
            step.lags.append((now, now - planned))
            k += 1
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                t_us = time.time_ns() // 1000 + phase  # phase keeps the steps' times apart
                rows = [{"channel": f"s{i}/c{j}", "t": t_us, "v": rng.random()} for j in range(args.channels)]
                status, answer = await post(reader, writer, "/api/v1/ingest/", head, rows, step)
                if status != 200:
                    step.errors.append(f"ingest {status} {answer[:200]!r}")
                    continue
                accepted = json.loads(answer)["accepted"]
                step.readings_sent += args.channels
                if accepted != args.channels:
                    step.errors.append(f"{accepted} of {args.channels} accepted: {answer[:200]!r}")
                if now - first >= beat * args.heartbeat:
                    beat += 1
                    body = {"version": "bench", "hostname": f"bench-{i}", "spool_depth": 0, "heartbeat_seconds": 10}
                    status, answer = await post(reader, writer, "/api/v1/agent/heartbeat/", head, body, step)
                    step.heartbeats += 1
                    if status != 200:
                        step.errors.append(f"heartbeat {status} {answer[:200]!r}")
            except (OSError, asyncio.IncompleteReadError) as exc:
                step.errors.append(f"{type(exc).__name__}: {exc}")
                if writer is not None:
                    writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(agent(i, token) for i, token in enumerate(tokens)))
    step.elapsed = time.perf_counter() - loop_start
    return step


async def warm_up(port: int, tokens: list[str], at_once: int = 50) -> float:
    """Every agent's first heartbeat, ``at_once`` agents at a time, before any step: the first heartbeat of an
    agent makes its health instrument (channels, alarm rules), a once-in-its-life cost that a step measuring
    the steady state must not include; the first requests also load the app in every gunicorn worker.
    Returns the seconds it took."""
    step = Step()
    gate = asyncio.Semaphore(at_once)
    start = time.perf_counter()

    async def one(token: str) -> None:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            head = f"Host: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            status, answer = await post(reader, writer, "/api/v1/agent/heartbeat/", head, {"version": "bench"}, step)
            writer.close()
            if status != 200:
                raise RuntimeError(f"first heartbeat: {status} {answer[:200]!r}")

    await asyncio.gather(*(one(token) for token in tokens))
    return time.perf_counter() - start


async def post(reader, writer, path: str, head: str, payload, step: Step) -> tuple[int, bytes]:
    body = json.dumps(payload).encode()
    start = time.perf_counter()
    writer.write(f"POST {path} HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    length = next((int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")), 0)
    answer = await reader.readexactly(length)
    step.latencies.append(time.perf_counter() - start)
    step.requests += 1
    return int(lines[0].split()[1]), answer


if __name__ == "__main__":
    main()
