"""Services the fault tests (and ``bench/faults.py``) may break: a throwaway PostgreSQL cluster and a Redis
server of their own, on free ports, in temporary directories. The machine's shared PostgreSQL and Redis are
never stopped. Also the ``fault_driver`` process helpers and the readings every fault test checks."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PG_BIN_CANDIDATES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
# Recent: a file's readings lie near its modification time (else the run is a warning: a wrong year?).
T0 = (datetime.now(UTC) - timedelta(days=2)).replace(hour=3, minute=0, second=0, microsecond=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, interval: float = 0.1):
    """Poll until ``condition()`` is truthy (returned) or ``timeout`` s pass (None). For scripts; tests use
    ``conftest.wait_for``, which fails the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    return None


# --- a PostgreSQL cluster of our own ------------------------------------------------------------------


def own_postgres_problem() -> str | None:
    """Why a throwaway cluster cannot be made here, or None."""
    if not PG_BIN_CANDIDATES or not (PG_BIN_CANDIDATES[0] / "initdb").exists():
        return "PostgreSQL server binaries (initdb, pg_ctl under /usr/lib/postgresql/*/bin) are not installed"
    if os.geteuid() != 0:
        return "starting a throwaway PostgreSQL cluster needs root (to run it as the postgres OS user)"
    if shutil.which("runuser") is None:
        return "runuser is missing"
    try:
        subprocess.run(["id", "postgres"], check=True, capture_output=True)
    except subprocess.CalledProcessError:
        return "there is no postgres OS user"
    return None


class OwnPostgres:
    """A PostgreSQL cluster in a temporary directory, run as the ``postgres`` OS user on a free port, that
    a test may stop and start at will (``pg_ctl stop -m fast`` ends every session, like a crash or a
    restart of the database host)."""

    def __init__(self) -> None:
        self.bin = PG_BIN_CANDIDATES[0]
        self.dir = Path(tempfile.mkdtemp(prefix="daqbroker-faults-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.port = free_port()
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.dir}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )
        self.start()

    def _as_postgres(self, *argv: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True, cwd=self.dir)

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "start")

    def stop(self) -> None:
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def create_database(self, name: str) -> str:
        """Create ``name`` and migrate it; its URL."""
        self._as_postgres(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        env = {**os.environ, "DATABASE_URL": self.url(name), "DJANGO_SETTINGS_MODULE": "daqbroker_site.settings"}
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, env=env, check=True)
        return self.url(name)

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def fault_env(tmp_path: Path, database_url: str, **settings: str) -> dict[str, str]:
    """Environment for a child process of a fault test (the driver, a web server): ``database_url``, a
    private data dir whose files the sources may read (the one target check), and no shared broker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(
        DATABASE_URL=database_url,
        DJANGO_SETTINGS_MODULE="daqbroker_site.settings",
        DAQBROKER_DATA_DIR=str(tmp_path / "var"),
        DAQBROKER_FILE_ROOTS=str(tmp_path),
        CELERY_BROKER_URL="memory://",
        PYTHONUNBUFFERED="1",
        **settings,
    )
    env.pop("REDIS_URL", None)
    return env


# --- a Redis of our own -------------------------------------------------------------------------------


class OwnRedis:
    """``redis-server`` on a free port with no persistence; ``kill`` is a crash, ``start`` a fresh server."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        # In the foreground as our child (not --daemonize), so that we hold its pid and end only it.
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_until(self._answers, 10):
            raise RuntimeError(f"redis-server did not start on port {self.port}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)


# --- the driver process and the readings ----------------------------------------------------------------


def driver_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "collection.tests.fault_driver", *args]


def run_driver(env: dict[str, str], *args: str, timeout: float = 120) -> dict:
    """Run the driver to its end; its RESULT as a dict (its output in the error when there is none)."""
    done = subprocess.run(driver_argv(*args), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return parse_result(done.stdout, done.stderr)


def parse_result(stdout: str, stderr: str = "") -> dict:
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise AssertionError(f"the driver printed no result\n--- stdout\n{stdout[-3000:]}\n--- stderr\n{stderr[-3000:]}")


def write_readings(folder: Path, first: int, count: int, name: str = "data1.csv") -> None:
    """Lines ``time,a,b`` for readings ``first`` .. ``first+count-1`` (a = i / 4, b = -i)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / name).open("a") as handle:
        for i in range(first, first + count):
            stamp = (T0 + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
            handle.write(f"{stamp},{i / 4},{-i}\n")


def expected_readings(first: int, count: int) -> tuple[list[list], list[list]]:
    """What channels a and b must hold for readings ``first`` .. ``first+count-1``: [ts µs, value] each."""
    a, b = [], []
    for i in range(first, first + count):
        ts = int((T0 + timedelta(seconds=i)).timestamp() * 1_000_000)
        a.append([ts, i / 4])
        b.append([ts, float(-i)])
    return a, b


def process_state(pid: int) -> str:
    """The kernel's one-letter state of a process (``T`` when stopped), or "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""
