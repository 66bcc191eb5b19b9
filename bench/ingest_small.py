#!/usr/bin/env python
"""Many small senders: requests/s of 1- and 10-reading bodies through the real HTTP ingest API, beside
the floor of the same stack measured in the same run.

Serves the app with gunicorn as in production (--workers, --worker-class gthread, --threads, DEBUG off,
persistent database connections, Redis as the broker and the shared cache), on a fresh bench database,
with the bench's own URL conf (``bench/bench_urls.py``), which adds ``/bench/floor/``: a trivial endpoint
behind the same token authentication, scope checks and throttle as ingest, answering ``{}``. Then
--clients concurrent keep-alive clients (asyncio coroutines in this process) post for --seconds each:
to the floor, then bodies of each of --sizes readings (JSON rows naming ``instrument/channel``, as a
shell script or a PLC gateway would; client i writes its own channels, each request's readings at the
time it is made: readings posted as they are taken; ``--backfill`` posts old times instead, as a logger
uploading what it took long ago, which takes ingest's path for readings that may lie in a compacted hour). Each
answer is checked (200, every reading accepted). Printed per engine: requests/s, readings/s, p50/p99
latency, database statements per request (counted by the bench's middleware, BEGIN/COMMIT not
included), and requests/s as a share of the floor's.

--trees serves other checkouts too, one after the other on the same engine (``label=path``): the same
bench against the code before and after a change, in one invocation. The sender is a non-administrator
owning the instrument, with a personal read-write token.

--in-process N measures without HTTP, for a figure a loaded machine moves less: in a child process per
engine and tree, N posts per case through Django's test client, one after the other in one thread (the
same settings, middleware, Redis broker and bodies), printing wall and CPU time per request (the CPU of
this process only: a database server's is not in it) and statements per request; --rounds times, the trees
alternating. Engines may include mariadb there (BENCH_MARIADB_URL). It also times an agent's later
heartbeats (``--heartbeats``, the body ``daqbroker-agent`` sends, its node-health figures included; the
first, which makes the health instrument, not timed). Times are medians of the requests.

    .venv/bin/python bench/ingest_small.py --engines postgresql,sqlite --clients 50 --seconds 15
    .venv/bin/python bench/ingest_small.py --trees before=/tmp/before,after=. --seconds 10
    .venv/bin/python bench/ingest_small.py --trees before=/tmp/before,after=. --in-process 1000 --engines sqlite,mariadb
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import gunicorn, recreate_database, server_env

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
PG_URL = os.environ.get("BENCH_POSTGRESQL_URL", "postgres://postgres@127.0.0.1:5432/daqbroker_bench_small")
MARIADB_URL = os.environ.get("BENCH_MARIADB_URL", "mysql://root@127.0.0.1:3306/daqbroker_bench_small")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", os.environ.get("DAQBROKER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
CHANNELS_PER_CLIENT = 10
T0_US = 1_600_000_000_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="postgresql,sqlite")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--sizes", default="1,10", help="readings per request, comma-separated")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-class", default="gthread")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--trees", default=f"this={REPO}", help="label=path of each source tree to serve")
    parser.add_argument("--in-process", type=int, default=0, metavar="N", help="N posts per case, no HTTP")
    parser.add_argument("--rounds", type=int, default=2, help="with --in-process: rounds over the trees")
    parser.add_argument(
        "--heartbeats", action=argparse.BooleanOptionalAction, default=True, help="with --in-process: time heartbeats"
    )
    parser.add_argument(
        "--backfill",
        action="store_true",
        help="old reading times (2020), as a logger uploading what it took long ago, instead of the time of each "
        "request (readings posted as they are taken)",
    )
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.setup:
        print(json.dumps(setup_database(int(args.setup))))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.measure:
        print(
            json.dumps(measure_in_process(int(args.measure), sizes, heartbeats=args.heartbeats, backfill=args.backfill))
        )
        return
    if max(sizes) > CHANNELS_PER_CLIENT:
        sys.exit(f"--sizes: at most {CHANNELS_PER_CLIENT} readings per request (one per channel of a client)")
    trees = [(label, Path(path).resolve()) for label, path in (t.split("=", 1) for t in args.trees.split(","))]
    if args.in_process:
        in_process(trees, sizes, args)
        return
    print(
        f"small ingest bodies over HTTP ({'old times' if args.backfill else 'readings as they are taken'}): "
        f"{args.clients} keep-alive clients, {args.seconds:g} s per case, gunicorn "
        f"{args.workers} workers ({args.worker_class}, {args.threads} threads), broker {REDIS_URL}; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the start"
    )
    print(
        f"{'engine':<11} {'tree':<8} {'body':<10} {'requests/s':>10} {'readings/s':>10} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'stmts/req':>9} {'vs floor':>8}"
    )
    for engine in args.engines.split(","):
        for label, tree in trees:
            with tempfile.TemporaryDirectory() as tmp:
                run_engine(engine, label, tree, sizes, args, Path(tmp))
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


def setup_database(clients: int) -> dict:
    """(In a child process with the engine's environment.) Fresh schema, an owner, channels and a token."""
    if os.environ.get("DATABASE_URL"):
        recreate_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command

    from accounts.choices import TokenScope
    from accounts.services import create_personal_token
    from instruments.models import Channel, Instrument

    call_command("migrate", verbosity=0)
    user = User.objects.create_user("bench-sender", password=None)
    instrument = Instrument.objects.create(name="Bench", slug="bench", owner=user)
    Channel.objects.bulk_create(
        Channel(instrument=instrument, name=f"c{i}", slug=f"c{i}") for i in range(clients * CHANNELS_PER_CLIENT)
    )
    _, token = create_personal_token(user=user, name="bench", scope=TokenScope.READ_WRITE)
    return {"token": token}


def in_process(trees: list[tuple[str, Path]], sizes: list[int], args) -> None:
    print(
        f"small ingest bodies in process ({'old times' if args.backfill else 'readings as they are taken'}): "
        f"{args.in_process} posts per case through Django's test client, one "
        f"thread, {args.rounds} round(s); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the start"
    )
    print(f"{'engine':<11} {'round':>5} {'tree':<8} {'body':<10} {'wall ms':>8} {'CPU ms':>7} {'stmts/req':>9}")
    urls = {"postgresql": PG_URL, "mariadb": MARIADB_URL, "sqlite": None}
    for engine in args.engines.split(","):
        for round_ in range(1, args.rounds + 1):
            for label, tree in trees if round_ % 2 else trees[::-1]:
                with tempfile.TemporaryDirectory() as tmp:
                    env = server_env(Path(tmp), urls[engine], REDIS_URL=REDIS_URL, DAQBROKER_CELERY_QUEUE="bench-small")
                    env["DJANGO_SETTINGS_MODULE"] = "bench_settings"
                    env["PYTHONPATH"] = os.pathsep.join([str(BENCH), str(tree / "client_agent"), str(tree)])
                    child = subprocess.run(
                        [sys.executable, __file__, "--measure", str(args.in_process), "--sizes", args.sizes,
                         "--heartbeats" if args.heartbeats else "--no-heartbeats",
                         *(["--backfill"] if args.backfill else [])],
                        env=env, cwd=tree, capture_output=True, text=True, check=False,
                    )  # fmt: skip
                if child.returncode != 0:
                    sys.exit(f"{engine} {label} failed:\n{child.stderr[-3000:]}")
                for name, wall, cpu, statements in json.loads(child.stdout.strip().splitlines()[-1]):
                    print(f"{engine:<11} {round_:>5} {label:<8} {name:<10} {wall:>8.2f} {cpu:>7.2f} {statements:>9.1f}")
    import redis

    redis.Redis.from_url(REDIS_URL).delete("bench-small")  # the tasks no worker took
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


def measure_in_process(
    n: int, sizes: list[int], *, heartbeats: bool, backfill: bool = False
) -> list[tuple[str, float, float, float]]:
    """(In a child process with the engine's environment and the tree's code.) ``n`` posts per case, timed:
    the median wall and CPU time of a request (ms) and its mean statements."""
    import statistics

    token = setup_database(1)["token"]
    from django.test import Client

    client = Client(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION=f"Bearer {token}")
    seq = 0
    stamps: dict[int, Stamps] = {}

    def ingest_body(phase: int, size: int) -> str:
        t = stamps.setdefault(phase, Stamps(phase, backfill=backfill)).next()
        return json.dumps([{"channel": f"bench/c{j}", "t": t, "v": seq % 97 + j / 10} for j in range(max(size, 1))])

    def heartbeat_body(phase: int, size: int) -> str:
        return json.dumps({**HEARTBEAT, "spool_depth": seq % 7, "agent_time": time.time()})

    cases = [("floor", 0, "/bench/floor/", ingest_body)]
    cases += [(f"{k} reading" + "s" * (k > 1), k, "/api/v1/ingest/", ingest_body) for k in sizes]
    if heartbeats:
        agent_token = setup_agent()
        cases.append(("heartbeat", 0, "/api/v1/agent/heartbeat/", heartbeat_body))
    results = []
    for phase, (name, size, path, body) in enumerate(cases):
        if name == "heartbeat":
            client = Client(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION=f"Bearer {agent_token}")
        statements = 0
        walls, cpus = [], []
        for timed in (False, True):  # a warm-up (for a heartbeat: the first makes the health instrument)
            for _ in range(n if timed else max(20, n // 10)):
                seq += 1
                data = body(phase, size)
                wall, cpu = time.perf_counter(), time.process_time()
                response = client.post(path, data, content_type="application/json")
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                if response.status_code != 200 or (size and response.json()["accepted"] != size):
                    raise SystemExit(f"{name}: {response.status_code} {response.content[:300]!r}")
                if timed:
                    walls.append(wall)
                    cpus.append(cpu)
                    statements += int(response.headers.get("x-bench-statements", "0"))
        results.append((name, statistics.median(walls) * 1000, statistics.median(cpus) * 1000, statements / n))
    return results


# What daqbroker-agent sends every heartbeat (daqbroker_agent.runtime.send_heartbeat), nothing refused.
HEARTBEAT = {
    "version": "bench",
    "hostname": "bench-agent",
    "spool_capacity": 1_000_000,
    "last_error": "",
    "last_upload": "2026-12-07T12:00:00+00:00",
    "clock_offset": 0.004,
    "heartbeat_seconds": 10,
    "refused_sources": [],
    "serial_ports": [],
    "health": {
        "cpu_load": 0.25,
        "memory_available_bytes": 4_000_000_000,
        "memory_used_percent": 61.5,
        "spool_disk_free_bytes": 10_000_000_000,
        "spool_disk_used_percent": 40.0,
        "spool_depth": 0,
        "spool_oldest_age_seconds": None,
    },
}


def setup_agent() -> str:
    """An agent of the bench's sender, allowed to push to its instrument; returns its token."""
    from django.contrib.auth.models import User

    from accounts.services import create_agent
    from instruments.models import Instrument

    owner = User.objects.get(username="bench-sender")
    _, token = create_agent(owner=owner, name="bench-agent", instruments=[Instrument.objects.get(slug="bench")])
    return token


@dataclass
class Case:
    requests: int = 0
    readings: int = 0
    latencies: list[float] = field(default_factory=list)
    statements: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0


def run_engine(engine: str, label: str, tree: Path, sizes: list[int], args, tmp: Path) -> None:
    import numpy as np

    queue = f"bench-small-{os.getpid()}"
    env = server_env(
        tmp,
        PG_URL if engine == "postgresql" else None,
        REDIS_URL=REDIS_URL,
        DAQBROKER_CELERY_QUEUE=queue,
    )
    env["DJANGO_SETTINGS_MODULE"] = "bench_settings"
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH), str(tree / "client_agent"), str(tree)])
    setup = subprocess.run(
        [sys.executable, __file__, "--setup", str(args.clients)],
        env=env, cwd=tree, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if setup.returncode != 0:
        sys.exit(f"setup failed for {engine}:\n{setup.stderr[-3000:]}")
    token = json.loads(setup.stdout.strip().splitlines()[-1])["token"]
    options = ["--worker-class", args.worker_class, "--threads", str(args.threads)]
    try:
        with gunicorn(env, workers=args.workers, timeout=120, options=options, cwd=tree) as server:
            cases = [("floor", 0), *((f"{n} reading" + ("s" if n > 1 else ""), n) for n in sizes)]
            asyncio.run(load(server.port, token, 0, 1, 2, args.clients, "warm-up"))
            floor_rate = None
            for phase, (name, size) in enumerate(cases, start=1):
                case = asyncio.run(
                    load(server.port, token, size, phase, args.seconds, args.clients, name, backfill=args.backfill)
                )
                if case.errors:
                    sys.exit(f"{engine} {label} {name}: {len(case.errors)} failed requests, first: {case.errors[0]}")
                rate = case.requests / case.elapsed
                floor_rate = floor_rate or rate
                lat = np.array(case.latencies) * 1000
                print(
                    f"{engine:<11} {label:<8} {name:<10} {rate:>10,.0f} {case.readings / case.elapsed:>10,.0f} "
                    f"{np.percentile(lat, 50):>7.1f} {np.percentile(lat, 99):>7.1f} "
                    f"{np.mean(case.statements):>9.1f} {rate / floor_rate:>8.0%}",
                    flush=True,
                )
    finally:
        import redis

        redis.Redis.from_url(REDIS_URL).delete(queue)  # the tasks no worker took


class Stamps:
    """The reading time of each request of one sender. By default the time the request is made, as a sender
    posting readings as they are taken does (strictly increasing, so each is a new reading). With
    ``backfill``, times in 2020, as a logger uploading readings taken long ago does: those take ingest's
    path for readings old enough to lie in a compacted hour (a look for blocks under the channels' block
    locks, docs/storage.md), which a live sender's never do."""

    def __init__(self, phase: int, *, backfill: bool) -> None:
        self.phase, self.backfill, self.seq, self.last = phase, backfill, 0, 0

    def next(self) -> int:
        self.seq += 1
        if self.backfill:
            self.last = T0_US + self.phase * 10**11 + self.seq * 1000
        else:
            self.last = max(time.time_ns() // 1000, self.last + 1)
        return self.last


async def load(
    port: int, token: str, size: int, phase: int, seconds: float, clients: int, name: str, *, backfill: bool = False
) -> Case:
    """``clients`` keep-alive connections posting ``size``-reading bodies (0: the floor) for ``seconds``."""
    case = Case()
    path = "/bench/floor/" if size == 0 else "/api/v1/ingest/"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
    deadline = time.perf_counter() + seconds

    async def client(i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        seq = 0
        stamps = Stamps(phase, backfill=backfill)
        try:
            while time.perf_counter() < deadline:
                t = stamps.next()
                seq += 1
                rows = [
                    {"channel": f"bench/c{i * CHANNELS_PER_CLIENT + j}", "t": t, "v": seq % 97 + j / 10}
                    for j in range(max(size, 1))
                ]
                body = json.dumps(rows).encode()
                request = head.replace("{length}", str(len(body))).encode() + body
                start = time.perf_counter()
                writer.write(request)
                status, headers, answer = await read_response(reader)
                case.latencies.append(time.perf_counter() - start)
                case.requests += 1
                case.statements.append(int(headers.get("x-bench-statements", "0")))
                if status != 200:
                    case.errors.append(f"{status} {answer[:300]!r}")
                elif size:
                    accepted = json.loads(answer)["accepted"]
                    case.readings += accepted
                    if accepted != size:
                        case.errors.append(f"{accepted} of {size} accepted: {answer[:300]!r}")
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    case.elapsed = time.perf_counter() - start
    return case


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


if __name__ == "__main__":
    main()
