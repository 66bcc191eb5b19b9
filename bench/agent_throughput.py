#!/usr/bin/env python
"""Readings/s from the client agent's spool into the server's database, beside the direct API ingest rate
measured in the same run, against the same server.

For each engine: a fresh bench database, gunicorn (--workers), an agent with a token. Then, --repeat
times, alternating:

  direct API  --uploaders concurrent keep-alive clients POST pre-encoded JSON-columns bodies of --batch
              readings (exactly the agent's body shape) with the agent's token, until --readings are stored;
  agent       a running ``daqbroker-agent run`` process (--uploaders upload threads, --batch readings per
              batch) is handed --readings readings in its spool (one transaction, as a source would), and
              the clock runs from that commit until the spool is empty: every batch acknowledged by the
              server, so stored in its database.

Both print the median readings/s; the ratio is agent / direct (the issue's goal: at least 70%). The
spool's own write rate is printed too. Every reading is checked in the database at the end.

    .venv/bin/python bench/agent_throughput.py --engines sqlite,postgresql --readings 500000
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import gunicorn, recreate_database, server_env

REPO = Path(__file__).resolve().parent.parent
AGENT_PATH = REPO / "client_agent"
sys.path[:0] = [str(REPO), str(AGENT_PATH)]
DEFAULT_URLS = {
    "sqlite": None,
    "postgresql": os.environ.get("BENCH_POSTGRESQL_URL", "postgres://postgres@127.0.0.1:5432/daqbroker_bench_agent"),
    "mariadb": os.environ.get("BENCH_MARIADB_URL", "mysql://root@127.0.0.1:3306/daqbroker_bench_agent"),
}
T0 = 1_600_000_000_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="sqlite,postgresql", help="comma list of sqlite, postgresql, mariadb")
    parser.add_argument("--readings", type=int, default=500_000, help="per measurement")
    parser.add_argument("--batch", type=int, default=5000, help="readings per request (agent batch_size)")
    parser.add_argument("--uploaders", type=int, default=2, help="agent upload threads = direct API clients")
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.setup:
        print(json.dumps(setup_database(args.channels)))
        return
    print(
        f"agent spool -> server database vs direct API ingest: {args.readings:,} readings per run, batches of "
        f"{args.batch:,}, {args.channels} channels, {args.uploaders} uploaders/clients, gunicorn {args.workers} "
        f"workers, median of {args.repeat}"
    )
    print(f"{'engine':<11} {'direct API/s':>13} {'agent/s':>10} {'ratio':>6} {'spool writes/s':>15}")
    for engine in args.engines.split(","):
        with tempfile.TemporaryDirectory(prefix="agent-bench-") as tmp:
            direct, agent, spool_rate = run_engine(engine, args, Path(tmp))
        print(f"{engine:<11} {direct:>13,.0f} {agent:>10,.0f} {agent / direct:>6.0%} {spool_rate:>15,.0f}")


# --- the server ----------------------------------------------------------------------------------------


def setup_database(channels: int) -> dict:
    """(In a child process with the engine's environment.) Fresh schema, an owner, channels, an agent."""
    if os.environ.get("DATABASE_URL"):
        recreate_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command

    from accounts.services import create_agent
    from instruments.models import Channel, Instrument

    call_command("migrate", verbosity=0)
    user = User.objects.create_superuser("bench", password=None)
    instrument = Instrument.objects.create(name="Bench", slug="bench", owner=user)
    ids = [Channel.objects.create(instrument=instrument, name=f"c{i}", slug=f"c{i}").id for i in range(channels)]
    _, token = create_agent(owner=user, name="bench-agent", instruments=[instrument])
    return {"token": token, "channel_ids": ids}


def stored_count(env: dict[str, str]) -> int:
    code = "import django; django.setup(); from collection.models import Sample; print(Sample.objects.count())"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


# --- the two measurements -------------------------------------------------------------------------------


def readings_for(run: int, n: int, channel_ids: list[int]) -> list[tuple[str, int, float]]:
    """``n`` readings new to the database: run ``run`` gets its own hour-sized slice of time per channel."""
    per_channel = n // len(channel_ids)
    base = T0 + run * 10**12  # 11.6 days of 1 s steps per run
    return [
        (str(channel), base + i * 1_000_000, float(i % 1000) / 10)
        for i in range(per_channel)
        for channel in channel_ids
    ]


def direct_api(port: int, token: str, readings: list, batch: int, clients: int) -> float:
    from daqbroker_agent.spool import Batch
    from daqbroker_agent.uploader import ingest_payload

    bodies = []
    for b, start in enumerate(range(0, len(readings), batch)):
        chunk = [(i, *reading) for i, reading in enumerate(readings[start : start + batch])]
        payload, _ = ingest_payload(Batch(f"direct-{readings[0][1]}-{b}", 0, 0, 0, chunk))
        bodies.append(json.dumps(payload, separators=(",", ":")).encode())
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    queue = list(range(len(bodies)))
    lock = threading.Lock()
    errors: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        while True:
            with lock:
                if not queue:
                    break
                index = queue.pop(0)
            conn.request("POST", "/api/v1/ingest/", body=bodies[index], headers=headers)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200 or json.loads(body)["accepted"] != min(batch, len(readings) - index * batch):
                errors.append(f"{response.status} {body[:300]!r}")
        conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        sys.exit(f"{len(errors)} direct uploads failed, first: {errors[0]}")
    return len(readings) / elapsed


def agent_run(spool_dir: Path, readings: list) -> tuple[float, float]:
    """(readings/s from spool commit to empty spool, spool writes/s) with the agent already running."""
    from daqbroker_agent.spool import Spool

    spool = Spool(spool_dir)
    start = time.perf_counter()
    spool.add(readings)
    spooled = time.perf_counter()
    while spool.depth():
        time.sleep(0.005)
    done = time.perf_counter()
    spool.close()
    return len(readings) / (done - spooled), len(readings) / (spooled - start)


def run_engine(engine: str, args, tmp: Path) -> tuple[float, float, float]:
    env = server_env(tmp, DEFAULT_URLS[engine])
    setup = subprocess.run(
        [sys.executable, __file__, "--setup", "1", "--channels", str(args.channels)],
        env=env, cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if setup.returncode != 0:
        sys.exit(f"setup failed for {engine}:\n{setup.stderr[-3000:]}")
    info = json.loads(setup.stdout.strip().splitlines()[-1])
    token_file = tmp / "token"
    token_file.write_text(info["token"])
    spool_dir = tmp / "spool"
    agent_env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "DATABASE", "DAQBROKER_"))}
    agent_env.update(
        PYTHONPATH=str(AGENT_PATH),
        DAQBROKER_AGENT_TOKEN_FILE=str(token_file),
        DAQBROKER_AGENT_SPOOL=str(spool_dir),
        DAQBROKER_AGENT_BATCH_SIZE=str(args.batch),
        DAQBROKER_AGENT_UPLOADERS=str(args.uploaders),
        DAQBROKER_AGENT_MAX_SPOOL_READINGS=str(max(5_000_000, args.readings * 2)),
        DAQBROKER_AGENT_LOG_LEVEL="WARNING",
    )
    with gunicorn(env, workers=args.workers) as server:
        port = server.port
        agent_env["DAQBROKER_AGENT_URL"] = server.url
        warm = readings_for(0, args.channels * 100, info["channel_ids"])
        direct_api(port, info["token"], warm, args.batch, args.uploaders)  # imports, connections
        agent = subprocess.Popen([sys.executable, "-m", "daqbroker_agent", "run"], env=agent_env, cwd=tmp)
        try:
            agent_run(spool_dir, readings_for(1, args.channels * 100, info["channel_ids"]))  # the agent is up
            direct_rates, agent_rates, spool_rates = [], [], []
            for run in range(args.repeat):
                direct_rates.append(
                    direct_api(port, info["token"], readings_for(2 * run + 2, args.readings, info["channel_ids"]),
                               args.batch, args.uploaders)
                )  # fmt: skip
                agent_rate, spool_rate = agent_run(
                    spool_dir, readings_for(2 * run + 3, args.readings, info["channel_ids"])
                )
                agent_rates.append(agent_rate)
                spool_rates.append(spool_rate)
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=60)
        expected = 2 * args.repeat * (args.readings // args.channels * args.channels) + 2 * args.channels * 100
        found = stored_count(env)
        if found != expected:
            sys.exit(f"{engine}: {found:,} readings stored, expected {expected:,}")
    return statistics.median(direct_rates), statistics.median(agent_rates), statistics.median(spool_rates)


if __name__ == "__main__":
    main()
