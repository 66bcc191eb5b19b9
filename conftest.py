"""Test-suite wiring shared by every app: which database engine runs, real services, personas.

``scripts/test`` runs the whole suite on SQLite, then the engine-dependent tests again on PostgreSQL and
MariaDB (it sets DATABASE_URL and passes ``--engine-dependent-only``). Which test is which, and the
``browser``/``server``/``worker`` markers behind ``--fast``, are decided in ONE place below
(``pytest_collection_modifyitems``); docs/testing.md explains the rules. When an engine or Redis cannot
be reached, its tests are skipped with the reason on a developer's machine, and the run FAILS when
CI=true: CI must never pass by skipping the real services.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

# The personas (owner, shared viewer, agent, ...) every permission test runs as: accounts/tests/personas.py.
pytest_plugins = ["accounts.tests.personas", "pages.tests.browser"]

REPO = Path(__file__).resolve().parent
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/15"


def service_unavailable(reason: str):
    """Skip with ``reason`` on a laptop; fail the run under CI."""
    if IN_CI:
        pytest.fail(f"CI=true and a required service is unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


def _database_problem() -> str | None:
    from django.conf import settings

    db = settings.DATABASES["default"]
    vendor = db["ENGINE"].rsplit(".", 1)[-1]
    if vendor == "sqlite3":
        return None
    host, port = db.get("HOST") or "127.0.0.1", int(db.get("PORT") or (5432 if vendor == "postgresql" else 3306))
    if vendor == "mysql":
        try:
            import MySQLdb  # noqa: F401
        except ImportError:
            return (
                "MariaDB tests need mysqlclient "
                "(apt-get install libmariadb-dev pkg-config; scripts/bootstrap requirements-mysql.txt)"
            )
    try:
        with socket.create_connection((host, port), timeout=3):
            pass
    except OSError as exc:
        return f"{vendor} at {host}:{port} is unreachable ({exc})"
    return None


_DB_PROBLEM: str | None = None


def pytest_sessionstart(session):
    global _DB_PROBLEM
    _DB_PROBLEM = _database_problem()
    if _DB_PROBLEM and IN_CI:
        pytest.exit(f"CI=true and the database is unavailable: {_DB_PROBLEM}", returncode=3)


# --- where each test runs (the one place that decides) -------------------------------------------------

# A test that requests one of these (directly or through its fixtures), or carries @pytest.mark.django_db,
# talks to the database. Without them pytest-django refuses any database access, so the rest cannot.
DATABASE_FIXTURES = frozenset(
    {"db", "transactional_db", "django_db_reset_sequences", "django_db_serialized_rollback", "live_server"}
)
# Tests whose writes are committed (child processes and live servers read them): never inside a transaction
# held open across a module's tests (accounts.tests.personas.module_world).
COMMITTING_FIXTURES = frozenset(
    {"transactional_db", "django_db_reset_sequences", "django_db_serialized_rollback", "live_server"}
    | {"service_env", "start_process"}
)


def commits(item: pytest.Item, fixtures: set[str]) -> bool:
    marker = item.get_closest_marker("django_db")
    return not COMMITTING_FIXTURES.isdisjoint(fixtures) or bool(marker and marker.kwargs.get("transaction"))


# Heavy real parts, recognised by the fixture that brings them; ``--fast`` leaves these (and ``slow``) out.
MARKERS_BY_FIXTURE = {
    "browser": "browser",  # headless Chromium driven by Playwright
    "live_server": "server",  # Django's live server thread on the test database
    "service_env": "server",  # child processes on the test database: gunicorn, Celery worker/beat, manage.py
    "start_process": "worker",  # real Celery worker (and beat) processes
}
FAST_EXCLUDES = ("slow", "browser", "server", "worker", "repeats")


def pytest_addoption(parser):
    group = parser.getgroup("daqbroker")
    group.addoption(
        "--fast",
        action="store_true",
        help="leave out the slow, browser, server and worker tests (the quick local loop)",
    )
    group.addoption(
        "--engine-dependent-only",
        action="store_true",
        help="leave out the engine_independent tests (the PostgreSQL and MariaDB passes of scripts/test)",
    )
    group.addoption(
        "--engine-independent-only",
        action="store_true",
        help="only the engine_independent tests (scripts/test runs them beside the first engine's other tests)",
    )


def uses_database(item: pytest.Item) -> bool:
    return item.get_closest_marker("django_db") is not None or not DATABASE_FIXTURES.isdisjoint(
        getattr(item, "fixturenames", ())
    )


# A test that starts child processes on the test database (Celery workers and beat, gunicorn, the stream
# collector, the agent, manage.py) through one of these: its subject is the processes, the protocol or the
# schedule, and the database is only where the readings land.
PROCESS_FIXTURES = frozenset({"start_process", "service_env"})


def is_engine_independent(item: pytest.Item) -> bool:
    """Engine-dependent by default. Runs in the SQLite pass alone: a test that cannot reach the database, a
    browser test (its subject is the page; every page's queries run on every engine through the test client),
    a test of child processes (``PROCESS_FIXTURES``; what they write is tested on every engine in-process), or
    one marked ``engine_independent`` by hand. ``engine_dependent`` by hand keeps a test of processes on every
    engine: one whose subject is the engine's locking or what it keeps of a killed transaction."""
    if item.get_closest_marker("engine_dependent"):
        return False
    if item.get_closest_marker("engine_independent") or item.get_closest_marker("browser"):
        return True
    if not PROCESS_FIXTURES.isdisjoint(getattr(item, "fixturenames", ())):
        return True
    return not uses_database(item)


def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if "module_world" in fixtures and commits(item, fixtures):
            raise pytest.UsageError(
                f"{item.nodeid}: a module sharing one world (module_world: a transaction open for the whole "
                "module) cannot hold a test that commits (a live server, child processes, transactional_db)"
            )
        for fixture, name in MARKERS_BY_FIXTURE.items():
            if fixture in fixtures and item.get_closest_marker(name) is None:
                item.add_marker(name)
        if is_engine_independent(item) and item.get_closest_marker("engine_independent") is None:
            item.add_marker("engine_independent")

    keep, drop = [], []
    for item in items:
        left_out = (
            (config.getoption("fast") and any(item.get_closest_marker(m) for m in FAST_EXCLUDES))
            or (config.getoption("engine_dependent_only") and item.get_closest_marker("engine_independent"))
            or (config.getoption("engine_independent_only") and not item.get_closest_marker("engine_independent"))
        )
        (drop if left_out else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep

    if _DB_PROBLEM:
        marker = pytest.mark.skip(reason=_DB_PROBLEM)
        for item in items:
            if uses_database(item):
                item.add_marker(marker)


def pytest_report_header(config):
    from django.conf import settings

    db = settings.DATABASES["default"]
    return f"daqbroker: database {db['ENGINE'].rsplit('.', 1)[-1]} {db.get('HOST') or db['NAME']}, CI={IN_CI}"


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """Factories give every user a password; PBKDF2 would dominate the suite's run time."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def forget_process_caches():
    """What a process remembers between requests, forgotten before each test, whose database starts afresh
    (ids reused; a module's shared world rolled back to its first state): the latest reading ingest wrote to
    each instrument's freshness, the tokens found usable (accounts.tokens) and the alarm rules loaded."""
    from accounts import tokens
    from collection.alarms.evaluate import forget_rules
    from collection.services.ingest import forget_written_freshness

    forget_written_freshness()
    tokens.forget_all()
    forget_rules()


@pytest.fixture(autouse=True)
def test_source_targets(settings, tmp_path_factory):
    """Tests point sources at their own temporary folders, instruments on loopback and pseudo-terminals:
    the target rules (``accounts.targets``) are opened to exactly those. Tests of the rules set their own."""
    settings.DAQBROKER_FILE_ROOTS = [tmp_path_factory.getbasetemp()]
    settings.DAQBROKER_NETWORK_ALLOW = TEST_NETWORK_ALLOW.split(",")
    settings.DAQBROKER_SERIAL_DEVICES = [TEST_SERIAL_DEVICES]


TEST_NETWORK_ALLOW = "127.0.0.1,::1"
TEST_SERIAL_DEVICES = "/dev/pts/*"


# --- real services ---------------------------------------------------------------------------------


def xdist_worker_index() -> int:
    """0 in a plain pytest run; N in pytest-xdist's worker ``gwN`` (``scripts/test`` spreads tests over the cores)."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0


def redis_url_for_worker(url: str, worker: int) -> str:
    """Each xdist worker gets a Redis database of its own, the base number minus its index: the worker and
    beat processes its tests start then never share a cache key (the dispatcher's lock, say) with another
    worker's. pytest-django gives each worker its own test database the same way (a ``_gwN`` suffix)."""
    base, _, number = url.rpartition("/")
    if worker == 0 or not number.isdigit():
        return url
    if int(number) < worker:
        raise pytest.UsageError(f"DAQBROKER_TEST_REDIS_URL={url}: too low a database number for {worker + 1} workers")
    return f"{base}/{int(number) - worker}"


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = redis_url_for_worker(os.environ.get("DAQBROKER_TEST_REDIS_URL", DEFAULT_TEST_REDIS_URL), xdist_worker_index())
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        service_unavailable(f"Redis at {url} is unreachable ({exc})")
    return url


DEFAULT_TEST_MQTT = "127.0.0.1:1883"


class Mosquitto:
    """A private Debian ``mosquitto`` broker on a port of its own, with persistence (sessions and queued
    messages survive ``restart``): tests that stop or restart a broker never touch the shared one."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.host = "127.0.0.1"
        self.config = directory / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {directory}/\nautosave_interval 1\n"
            # Run as root, mosquitto drops to the user "mosquitto", who could not write the persistence file here.
            f"user {getpass.getuser()}\n"
        )
        self.log_path = directory / "mosquitto.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> Mosquitto:
        binary = _mosquitto_binary()
        if binary is None:
            service_unavailable("mosquitto is not installed (apt-get install mosquitto)")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [binary, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for(self.answers, timeout=15, message=f"mosquitto listening on {self.port}")
        return self

    def answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # mosquitto saves its persistence file on SIGTERM
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def restart(self) -> None:
        self.stop()
        self.start()


def _mosquitto_binary() -> str | None:
    import shutil

    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None
    )


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory) -> tuple[str, int]:
    """(host, port) of a real MQTT broker: ``DAQBROKER_TEST_MQTT`` (default 127.0.0.1:1883). When it cannot
    be reached, a private mosquitto is started on a free port, except under CI=true, where the run fails."""
    host, _, port = os.environ.get("DAQBROKER_TEST_MQTT", DEFAULT_TEST_MQTT).rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except OSError as exc:
        if IN_CI:
            service_unavailable(f"the MQTT broker at {host}:{port} is unreachable ({exc})")
        broker = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
        yield broker.host, broker.port
        broker.stop()
        return
    yield host, int(port)


@pytest.fixture
def private_mosquitto(tmp_path):
    """Start private mosquitto brokers (``private_mosquitto()``); all are stopped at teardown."""
    started: list[Mosquitto] = []

    def start() -> Mosquitto:
        broker = Mosquitto(tmp_path / f"mosquitto-{len(started)}")
        started.append(broker)
        return broker.start()

    yield start
    for broker in started:
        broker.stop()


class OpcUaTestServer:
    """A real asyncua OPC UA server in a thread of its own, on a free port, with Double variables
    (``ns=2;s=<name>``) that the test writes (``write``), with a status code and a source time if it likes.
    ``restart`` stops it and starts it again on the same port."""

    def __init__(
        self,
        names: tuple[str, ...] = ("temperature", "pressure", "state"),
        *,
        secured: tuple[Path, Path] | None = None,
        history: bool = False,
    ):
        """``secured``: (certificate, private key) of a server that only offers Basic256Sha256 with signing
        and encryption (any client certificate is accepted: asyncua's server checks none by default).
        ``history``: the variables' changes are kept (asyncua's in-memory history) for HistoryRead."""
        self.secured, self.history = secured, history
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.host = "127.0.0.1"
        self.names = names
        self.url = f"opc.tcp://127.0.0.1:{self.port}/daqbroker-test/"
        self._loop = None
        self._thread: threading.Thread | None = None
        self._server = None
        self.variables: dict = {}

    def node(self, name: str) -> str:
        return f"ns=2;s={name}"

    def start(self) -> OpcUaTestServer:
        import asyncio

        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def build():
            from asyncua import Server, ua

            server = Server()
            await server.init()
            server.set_endpoint(self.url)
            if self.secured:
                server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
                await server.load_certificate(str(self.secured[0]))
                await server.load_private_key(str(self.secured[1]))
            else:
                server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
            index = await server.register_namespace("urn:daqbroker:test")
            assert index == 2
            folder = await server.nodes.objects.add_object(ua.NodeId("Lab", index), ua.QualifiedName("Lab", index))
            for name in self.names:
                self.variables[name] = await folder.add_variable(
                    ua.NodeId(name, index), ua.QualifiedName(name, index), ua.Variant(0.0, ua.VariantType.Double)
                )
            await server.start()
            if self.history:
                await server.historize_node_data_change(list(self.variables.values()), period=None, count=0)
            self._server = server

        def run():
            assert self._loop is not None
            self._loop.run_until_complete(build())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="opcua test server", daemon=True)
        self._thread.start()
        if not ready.wait(120):  # a deadline, not a pause: a loaded machine takes long to build its address space
            raise RuntimeError("the OPC UA test server did not start")
        return self

    def _call(self, coroutine, timeout: float = 15):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def write(self, name: str, value: float, *, status: int = 0, source_time=None) -> None:
        from asyncua import ua

        data = ua.DataValue(
            ua.Variant(value, ua.VariantType.Double),
            StatusCode=ua.StatusCode(status),
            SourceTimestamp=source_time,
            ServerTimestamp=source_time,
        )
        self._call(self.variables[name].write_value(data))

    def reset(self) -> None:
        """Every variable back to 0.0, Good, now: what one test wrote never shapes the next one's changes (a
        Bad status left by one test made the same Bad status written by the next no change at all)."""
        now = datetime.now(UTC)
        for name in self.variables:
            self.write(name, 0.0, source_time=now)

    def stop(self) -> None:
        if self._server is None or self._loop is None:
            return
        try:
            self._call(self._server.stop())
            self._call(self._cancel_the_rest())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=15)
            self._loop.close()
            self._server, self._loop, self.variables = None, None, {}

    @staticmethod
    async def _cancel_the_rest() -> None:
        import asyncio

        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def restart(self) -> None:
        """Stop the server (its clients are disconnected) and start it again, address space kept."""
        assert self._server is not None
        self._call(self._server.stop())
        self._call(self._server.start())


@pytest.fixture(scope="session")
def opcua_session_server():
    server = OpcUaTestServer().start()
    yield server
    server.stop()


@pytest.fixture
def opcua_server(opcua_session_server):
    """A real OPC UA server (asyncua) on a free port, started once for the session (its start-up takes seconds)
    and stopped at the end: see :class:`OpcUaTestServer`. Each test gets it with every variable reset; tests
    restart it (``restart``) and write its variables."""
    opcua_session_server.reset()
    return opcua_session_server


def wait_for(condition: Callable[[], object], *, timeout: float, interval: float = 0.1, message: str = "") -> object:
    """Poll ``condition`` until it returns something truthy; fail with ``message`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {message or condition}", pytrace=False)
        time.sleep(interval)


def database_url_for_subprocess() -> str:
    """A DATABASE_URL that points a child process at the test database this session created."""
    from django.db import connection

    db = connection.settings_dict
    vendor = connection.vendor
    if vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    scheme = {"postgresql": "postgres", "mysql": "mysql"}[vendor]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"{scheme}://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or ''}/{db['NAME']}"


class ManagedProcess:
    """A child process (celery worker, beat, web server) whose output is kept in a log file for failures.

    With ``group=True`` it leads its own process group (a Celery worker and its pool): ``kill`` then
    SIGKILLs the whole group, like a crash, and ``stop`` leaves no pool child behind."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, *, group: bool = False):
        self.name, self.group = name, group
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=group
        )

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.group:
                os.killpg(self.process.pid, sig)
            else:
                self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no acknowledgement, no cleanup, like a crash."""
        self._signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, sig: int | None = None) -> None:
        if self.process.poll() is None:
            self._signal(signal.SIGTERM if sig is None else sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        elif self.group:  # the leader is gone; make sure no pool child outlives it
            self._signal(signal.SIGKILL)
        self._log.close()


@pytest.fixture
def service_env(tmp_path, redis_url) -> dict[str, str]:
    """Environment for child processes: the test database, the real Redis broker, a private data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(
        DATABASE_URL=database_url_for_subprocess(),
        CELERY_BROKER_URL=redis_url,
        REDIS_URL=redis_url,
        DAQBROKER_DATA_DIR=str(tmp_path / "var"),
        DAQBROKER_FILE_ROOTS=str(tmp_path),
        DAQBROKER_NETWORK_ALLOW=TEST_NETWORK_ALLOW,
        DAQBROKER_SERIAL_DEVICES=TEST_SERIAL_DEVICES,
        DAQBROKER_DISPATCH_INTERVAL="1",
        DAQBROKER_CELERY_QUEUE=f"test-{uuid.uuid4().hex}",
        DJANGO_SETTINGS_MODULE="daqbroker_site.settings",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def start_process(tmp_path):
    """Start real child processes; all are stopped (and their logs printed on failure) at teardown."""
    started: list[ManagedProcess] = []

    def start(name: str, argv: list[str], env: dict[str, str], *, group: bool = False) -> ManagedProcess:
        proc = ManagedProcess(name, argv, env, tmp_path, group=group)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
        sys.stdout.write(f"\n--- {proc.name} log (tail) ---\n{proc.log()}\n")


def celery_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "daqbroker_site", *args]


class SmallDisk:
    """A real small file system (tmpfs) at ``path``, to fill up: ``fill`` leaves ``free`` bytes, ``release``
    deletes the ballast (space freed, as an operator would)."""

    def __init__(self, path: Path, size: int):
        self.path, self.size = path, size
        self.ballast = path / "ballast"

    def free_bytes(self) -> int:
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize

    def fill(self, leave: int) -> None:
        """Write a ballast file so that about ``leave`` bytes stay free."""
        with self.ballast.open("ab") as handle:
            handle.write(b"\0" * max(0, self.free_bytes() - leave))

    def release(self) -> None:
        self.ballast.unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path):
    """Mount tmpfs file systems of a given size (``small_disk(name, size)``); unmounted at teardown.

    Needs root (``mount``): skipped with the reason otherwise, and the run FAILS under CI=true as root
    when the mount is refused."""
    mounted: list[Path] = []

    def make(name: str, size: int) -> SmallDisk:
        path = tmp_path / name
        path.mkdir()
        if os.geteuid() != 0:
            pytest.skip("a small disk needs root (mount -t tmpfs): not root here")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
        )
        if done.returncode != 0:
            reason = f"mount -t tmpfs refused as root: {done.stderr.strip()}"
            if IN_CI:
                pytest.fail(f"CI=true: {reason}", pytrace=False)
            pytest.skip(reason)
        mounted.append(path)
        return SmallDisk(path, size)

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def modbus_device():
    """``modbus_device(holding=[...], input=[...], coils=[...], discrete=[...], framer="socket"|"rtu")``: pymodbus's
    own server on a free loopback port (``client_agent/tests/modbus_sim.py``); ``modbus_device.silent()``: a
    device that never answers. All are stopped after the test."""
    from client_agent.tests.modbus_sim import ModbusDevice, SilentDevice

    made: list = []

    def make(**kwargs):
        made.append(ModbusDevice(**kwargs))
        return made[-1]

    def silent():
        made.append(SilentDevice())
        return made[-1]

    make.silent = silent  # type: ignore[attr-defined]
    yield make
    for device in made:
        device.close()
