#!/usr/bin/env python
"""How long the agent takes to resume uploading after its spool's disk gets space back.

Each round: a real ``daqbroker-agent run`` process (default settings but the server's address) follows a
file into a spool on a small tmpfs (``mount -t tmpfs``, so run it as root), uploading to the agent tests'
stand-in server (``client_agent/tests/agent_fakes.py``: the server is not what is measured here). The disk
is filled (a ballast file) until the agent reports "spool disk full", --lines more lines are written to the
followed file, then the ballast is deleted and the clock starts:

  resume      until the first of the waiting readings reaches the server
  all         until every reading written is at the server (each checked, exactly once)
  cleared     until ``daqbroker-agent status`` no longer shows the spool problem

Printed as the median over --repeat rounds, beside the baseline the operator already knows: the agent's
heartbeat interval (``heartbeat_seconds``, 30 s by default), the longest an admin waits to hear of an agent.

    sudo .venv/bin/python bench/faults_agent.py --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
AGENT_PATH = REPO / "client_agent"
sys.path[:0] = [str(AGENT_PATH), str(AGENT_PATH / "tests")]

from agent_fakes import FakeServer  # noqa: E402 (after the path is set)

from daqbroker_agent.config import validate_source_config  # noqa: E402
from daqbroker_agent.settings import OPTIONS  # noqa: E402

T0 = 1_700_000_000
SPOOL_AREA = "spool storage"


def until(condition, timeout: float, what: str, step: float = 0.01) -> float:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)
    return time.monotonic()


def status(env: dict) -> dict:
    done = subprocess.run([sys.executable, "-m", "daqbroker_agent", "status", "--json"], env=env,
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return json.loads(done.stdout)


def one_round(lines_while_full: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="daqbroker-faults-") as tmp:
        disk, folder = Path(tmp) / "disk", Path(tmp) / "logger"
        disk.mkdir()
        folder.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], check=True)
        proc = None
        try:
            written = 0

            def write(n: int) -> None:
                nonlocal written
                with (folder / "data.csv").open("a") as handle:
                    handle.write("".join(f"{T0 + i},{i / 10}\n" for i in range(written, written + n)))
                written += n

            options = {"path": str(folder), "pattern": "*.csv", "columns": ["time", "temp"],
                       "timestamp": {"columns": ["time"], "format": "epoch"}}  # fmt: skip
            with FakeServer() as server:
                server.config["sources"] = [{
                    "id": 1, "name": "logger", "instrument": "station", "interval_seconds": 1,
                    "collect": {"kind": "file", **validate_source_config("file", options)},
                    "channels": [{"id": 7, "slug": "temp", "source_field": "temp", "kind": "numeric"}],
                }]  # fmt: skip
                env = {**os.environ, "PYTHONPATH": str(AGENT_PATH), "DAQBROKER_AGENT_URL": server.url,
                       "DAQBROKER_AGENT_TOKEN": "dbk_good", "DAQBROKER_AGENT_SPOOL": str(disk / "spool")}  # fmt: skip
                proc = subprocess.Popen([sys.executable, "-m", "daqbroker_agent", "run"], env=env,
                                        stderr=subprocess.DEVNULL)  # fmt: skip
                until(lambda: (disk / "spool" / "agent-status.json").exists(), 60, "the agent's start")
                write(100)
                until(lambda: len(server.stored) == 100, 60, "the first readings")
                ballast = disk / "ballast"
                stats = os.statvfs(disk)
                ballast.write_bytes(b"\0" * max(0, stats.f_bavail * stats.f_frsize - (256 << 10)))
                while SPOOL_AREA not in status(env)["problems"]:
                    write(5000)
                    until(lambda: status(env)["spooled_total"] == written or SPOOL_AREA in status(env)["problems"],
                          120, "lines spooled or the disk full", step=0.2)  # fmt: skip
                write(lines_while_full)
                ballast.unlink()
                started = time.monotonic()
                with server.lock:
                    before = len(server.stored)
                resume = until(lambda: len(server.stored) > before, 120, "the first upload after space came back")
                done = until(lambda: len(server.stored) == written, 300, "every reading")
                cleared = until(lambda: SPOOL_AREA not in status(env)["problems"], 120, "the problem cleared", 0.05)
                assert sorted(server.stored) == [("7", (T0 + i) * 1_000_000) for i in range(written)]
                assert sum(r["accepted"] for r in server.batches.values()) == written, "a reading stored twice"
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
            subprocess.run(["umount", "-l", str(disk)], check=False)
    return {"resume": resume - started, "all": done - started, "cleared": cleared - started, "readings": written}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--lines", type=int, default=20_000, help="lines written while the disk is full")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: the spool's small disk is a tmpfs mounted for the run")
    heartbeat = OPTIONS["heartbeat_seconds"].default
    rounds = [one_round(args.lines) for _ in range(args.repeat)]
    for name in ("resume", "all", "cleared"):
        values = [r[name] for r in rounds]
        median = statistics.median(values)
        print(f"{name:8} median {median:6.2f} s  (rounds: {', '.join(f'{v:.2f}' for v in values)})  "
              f"= {median / heartbeat:.3f} x the heartbeat interval ({heartbeat:g} s)")  # fmt: skip
    print(f"readings per round: {rounds[0]['readings']:,} (every one checked at the stand-in server, exactly once)")


if __name__ == "__main__":
    main()
