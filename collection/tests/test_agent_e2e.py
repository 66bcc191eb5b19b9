"""The client agent end to end: a real ``daqbroker-agent run`` process, a real gunicorn server on the test
database, real HTTP, and SIGKILLs of either. The test only writes what an instrument would write (a file,
a serial line) and watches the database.

"Exactly once" is checked on what is stored: every reading present, with its value, and no more rows
than readings (the readings tables are keyed by channel and time, so a reading stored twice would
need a second row; storage is idempotent, so delivery may repeat).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from accounts import services
from accounts.models import AgentHealth
from collection.choices import Origin
from collection.models import RejectedSample, Sample, TextSample
from conftest import REPO, database_url_for_subprocess, service_unavailable, wait_for
from daqbroker_agent.spool import Spool
from instruments.choices import ChannelKind, SourceKind
from instruments.models import DataSource
from instruments.tests.factories import make_channel, make_instrument, make_user

# Where these run (docs/testing.md, "Which tests run on which engine"): the subject of most tests here is
# the agent -- its spool, retries, parsing, sources and the HTTP exchange -- and the server side of the
# exchange (authentication, ingest, quarantine, conflicts) is tested on every engine in-process. They run
# in the first pass only. What a database keeps when the server dies mid-request is the engine's own
# business: that test runs on every engine, and so do the protocols' (Modbus, MQTT) collection through the
# agent, each protocol's end-to-end proof on every engine (issue 21).
AGENT_SIDE = pytest.mark.engine_independent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

T0 = 1_700_000_000  # s since 1970: the first line's time
AGENT_PATH = str(REPO / "client_agent")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A child in its own process group, so that SIGKILL takes it whole (gunicorn's master and workers)."""

    def __init__(self, name: str, argv: list[str], env: dict, log_dir: Path):
        self.name, self.argv, self.env = name, argv, env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> Process:
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start {self.starts}\n".encode())
            self.proc = subprocess.Popen(
                self.argv, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def stop(self) -> None:
        self.signal(signal.SIGTERM)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class WebServer(Process):
    def __init__(self, env: dict, log_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # --preload: the application is imported once, before the two workers fork (half the start-up CPU).
        argv = [sys.executable, "-m", "gunicorn", "daqbroker_site.wsgi", "--workers", "2", "--preload", "--bind",
                f"127.0.0.1:{self.port}", "--timeout", "120", "--log-level", "warning"]  # fmt: skip
        super().__init__("web", argv, env, log_dir)

    def answers(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.url}/api/v1/whoami/", timeout=2)  # noqa: S310 (our own test server)
        except urllib.error.HTTPError as exc:
            return exc.code == 401
        except OSError:
            return False
        return False

    def start(self) -> WebServer:
        super().start()
        wait_for(lambda: self.answers() or not self.running, timeout=180, message="gunicorn answering")
        assert self.running, self.log()[-3000:]
        return self


@pytest.fixture
def processes(tmp_path):
    started: list[Process] = []
    yield started
    for process in started:
        process.stop()
    for process in started:
        sys.stdout.write(f"\n--- {process.name} log (tail) ---\n{process.log()[-4000:]}\n")


@pytest.fixture
def web(processes, service_env, tmp_path) -> WebServer:
    env = {
        **service_env,
        "DATABASE_URL": database_url_for_subprocess(),
        "DAQBROKER_DEBUG": "true",
        "DAQBROKER_INGEST_THROTTLE": "none",
        # Tokens are revoked here by the test process, a process other than the server: with its token cache
        # on, the server would accept a revoked token for up to the cache's lifetime (that delay is tested in
        # accounts/tests/test_tokens.py); these tests are about what the agent does once refused.
        "DAQBROKER_TOKEN_CACHE_SECONDS": "0",
        "PYTHONPATH": AGENT_PATH,  # the parser and validation of this tree
    }
    server = WebServer(env, tmp_path)
    processes.append(server)
    return server.start()


class Station:
    """An instrument with two numeric channels, served by an agent that tails its logger's files."""

    def __init__(self, tmp_path: Path, collect: dict | None = None):
        self.owner = make_user("field-operator", password=None)
        self.instrument = make_instrument(self.owner, slug="remote-station")
        self.agent, token = services.create_agent(owner=self.owner, name="station-pc", instruments=[self.instrument])
        self.folder = tmp_path / "logger"
        self.folder.mkdir()
        self.token_file = tmp_path / "token"
        self.token_file.write_text(token)
        self.spool_dir = tmp_path / "spool"
        collect = collect or {
            "kind": "file",
            "path": str(self.folder),
            "pattern": "*.csv",
            "columns": ["time", "temp", "rh"],
            "timestamp": {"columns": ["time"], "format": "epoch"},
        }
        self.source = DataSource.objects.create(
            instrument=self.instrument,
            name="logger",
            kind=SourceKind.AGENT,
            agent=self.agent,
            interval_seconds=1,
            config={"collect": collect},
        )
        self.temp = make_channel(self.instrument, slug="temp", source=self.source, source_field="temp")
        self.rh = make_channel(self.instrument, slug="rh", source=self.source, source_field="rh")
        self.lines_written = 0
        self._spool: Spool | None = None
        # The agent's own configuration file: what this machine lets the server's sources do here.
        self.allowed_paths = [str(self.folder)]
        if "://" not in collect.get("url", "://"):
            self.allowed_paths.append(collect["url"])
        self.allow_commands = False
        self.config_file = tmp_path / "agent.toml"

    def write_agent_config(self) -> None:
        paths = ", ".join(f'"{path}"' for path in self.allowed_paths)
        self.config_file.write_text(
            f"allow_commands = {'true' if self.allow_commands else 'false'}\nallowed_paths = [{paths}]\n"
        )

    def write_lines(self, n: int, name: str = "data.csv") -> None:
        """``n`` lines, two readings each: temp = i / 10, rh = i % 100 for line i."""
        start = self.lines_written
        with (self.folder / name).open("a") as handle:
            handle.write("".join(f"{T0 + i},{i / 10},{i % 100}\n" for i in range(start, start + n)))
        self.lines_written += n

    def stored(self) -> int:
        return Sample.objects.filter(channel__in=[self.temp, self.rh]).count()

    def assert_exactly_once(self) -> None:
        n = self.lines_written
        assert self.stored() == 2 * n
        temps = dict(Sample.objects.filter(channel=self.temp).values_list("ts", "value"))
        assert len(temps) == n
        assert all(temps[(T0 + i) * 1_000_000] == i / 10 for i in range(0, n, max(1, n // 1000)))
        assert sorted(temps) == [(T0 + i) * 1_000_000 for i in range(n)]
        rh_sum = sum(Sample.objects.filter(channel=self.rh).values_list("value", flat=True))
        assert rh_sum == sum(i % 100 for i in range(n))

    def agent_process(self, server: WebServer, log_dir: Path, **settings: str) -> Process:
        self.write_agent_config()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "DJANGO", "DATABASE"))}
        env.update(
            PYTHONPATH=AGENT_PATH,
            DAQBROKER_AGENT_URL=server.url,
            DAQBROKER_AGENT_TOKEN_FILE=str(self.token_file),
            DAQBROKER_AGENT_SPOOL=str(self.spool_dir),
            DAQBROKER_AGENT_RETRY_INITIAL_SECONDS="0.1",
            DAQBROKER_AGENT_RETRY_MAX_SECONDS="1",
            DAQBROKER_AGENT_CONFIG_POLL_SECONDS="1",
            DAQBROKER_AGENT_HEARTBEAT_SECONDS="1",
            DAQBROKER_AGENT_CONFIG=str(self.config_file),
            **{f"DAQBROKER_AGENT_{k.upper()}": v for k, v in settings.items()},
        )
        return Process("agent", [sys.executable, "-m", "daqbroker_agent", "run"], env, log_dir)

    def spool(self) -> Spool:
        if self._spool is None:
            self._spool = Spool(self.spool_dir)
        return self._spool

    def agent_state(self) -> dict:
        return self.spool().get("state", {}) or {}


@pytest.fixture
def station(tmp_path) -> Station:
    return Station(tmp_path)


def start_agent(station: Station, web: WebServer, processes, tmp_path, **settings) -> Process:
    agent = station.agent_process(web, tmp_path, **settings)
    processes.insert(0, agent)  # stopped before the server
    agent.start()
    wait_for(
        lambda: AgentHealth.objects.filter(agent=station.agent).exists() and station.spool().get("central_config"),
        timeout=30,
        message="the agent's first heartbeat and configuration",
    )
    return agent


# --- the scenarios ------------------------------------------------------------------------------


@AGENT_SIDE
def test_100k_readings_made_while_the_server_is_down_all_arrive_once(station, web, processes, tmp_path):
    agent = start_agent(station, web, processes, tmp_path)
    web.stop()
    station.write_lines(50_000)  # 100,000 readings
    wait_for(lambda: station.spool().depth() == 100_000, timeout=60, message="100,000 readings spooled")
    assert station.stored() == 0
    web.start()
    wait_for(lambda: station.stored() == 100_000, timeout=120, message="100,000 readings stored")
    wait_for(lambda: station.spool().depth() == 0, timeout=30, message="the spool emptied")
    station.assert_exactly_once()
    assert station.spool().counters()["uploaded"] == 100_000
    assert agent.running


@pytest.mark.engine_dependent  # what the engine keeps of a request whose server is killed mid-transaction
def test_server_killed_mid_upload_loses_and_doubles_nothing(station, web, processes, tmp_path):
    start_agent(station, web, processes, tmp_path, batch_size="2000")
    station.write_lines(100_000)
    wait_for(lambda: station.stored() >= 20_000, timeout=60, message="uploads under way")
    web.kill()
    stored_at_kill = station.stored()
    assert stored_at_kill < 200_000, "the uploads finished before the kill: make the test bigger"
    time.sleep(0.5)  # let the agent meet the dead server (any delay works; this one makes it likely)
    web.start()
    wait_for(lambda: station.stored() == 200_000, timeout=120, message="every reading stored")
    wait_for(lambda: station.spool().depth() == 0, timeout=30, message="the spool emptied")
    station.assert_exactly_once()


@AGENT_SIDE
def test_corrected_values_read_by_the_agent_are_reported_as_conflicts(station, web, processes, tmp_path):
    """A second file repeats the first one's times with the temperature corrected: the server keeps its
    values, quarantines the corrected ones as conflicts, and the agent counts them as conflicts."""
    start_agent(station, web, processes, tmp_path)
    station.write_lines(50)
    wait_for(lambda: station.stored() == 100, timeout=60, message="the first file stored")
    with (station.folder / "corrected.csv").open("w") as handle:
        handle.write("".join(f"{T0 + i},{i / 10 + 5},{i % 100}\n" for i in range(50)))
    wait_for(lambda: station.spool().counters()["conflicts"] == 50, timeout=60, message="50 conflicts acknowledged")
    wait_for(lambda: station.spool().depth() == 0, timeout=30, message="the spool emptied")
    station.assert_exactly_once()  # the stored values are the first file's
    kept = RejectedSample.objects.filter(channel=station.temp, reason__startswith="conflict:")
    assert kept.count() == 50
    assert not RejectedSample.objects.filter(channel=station.rh).exists(), "rh was resent unchanged: duplicates"
    first = kept.order_by("raw_time").first()
    assert (float(first.raw_value), first.context["stored_value"]) == (5.0, 0.0)
    counters = station.spool().counters()
    assert (counters["uploaded"], counters["rejected"]) == (150, 0)


@AGENT_SIDE
def test_lines_the_agent_cannot_parse_reach_the_server_quarantine_once(station, web, processes, tmp_path):
    """Nothing read is lost: a malformed line lands in the server's Rejected samples with file and line,
    also when it was read while the server was down (and the agent restarted in between)."""
    agent = start_agent(station, web, processes, tmp_path)
    station.write_lines(3)
    path = station.folder / "data.csv"
    with path.open("a") as handle:
        handle.write("ERR sensor bus timeout\n")  # line 4
    station.write_lines(2)  # lines 5 and 6
    wait_for(lambda: station.stored() == 10, timeout=30, message="the good lines stored")
    wait_for(lambda: RejectedSample.objects.filter(origin=Origin.AGENT).exists(), timeout=30, message="quarantine")
    first = RejectedSample.objects.get(origin=Origin.AGENT)
    assert (first.source_id, first.raw_value) == (station.source.pk, "ERR sensor bus timeout")
    assert first.reason.startswith("line not parsed") and "ERR" in first.reason
    assert (first.context["file"], first.context["line"]) == (str(path), 4)
    assert first.context["agent_source"] == "remote-station/logger"

    web.stop()
    with path.open("a") as handle:
        handle.write("\x00\x00 line noise\n" + f"{T0 + 99},1.0\n")  # 7: noise; 8: no rh field
    wait_for(lambda: station.spool().unparsed_waiting()[0] == 2, timeout=30, message="both lines kept in the spool")
    agent.signal(signal.SIGKILL)
    agent.start()
    web.start()
    wait_for(
        lambda: RejectedSample.objects.filter(origin=Origin.AGENT).count() == 3, timeout=60, message="all reported"
    )
    wait_for(lambda: station.spool().unparsed_waiting() == (0, 0), timeout=30, message="the spool forgot them")
    rows = {r.context["line"]: r for r in RejectedSample.objects.filter(origin=Origin.AGENT)}
    assert sorted(rows) == [4, 7, 8]
    assert rows[7].raw_value == "\\x00\\x00 line noise"
    assert rows[8].reason == "field 'rh' is missing from the line"
    # Its good field travels with the readings, uploaded by another thread than the report: wait for it.
    wait_for(
        lambda: Sample.objects.filter(channel=station.temp, ts=(T0 + 99) * 1_000_000).exists(),
        timeout=30,
        message="line 8's good field stored",
    )
    # Two more heartbeats (each followed by a report of what waits): nothing is reported twice.
    beat = AgentHealth.objects.get(agent=station.agent).last_heartbeat
    for _ in range(2):
        wait_for(
            lambda b=beat: AgentHealth.objects.get(agent=station.agent).last_heartbeat > b, timeout=30, message="beat"
        )
        beat = AgentHealth.objects.get(agent=station.agent).last_heartbeat
    assert RejectedSample.objects.filter(origin=Origin.AGENT).count() == 3
    assert station.spool().counters()["unparsed_sent"] == 3


@AGENT_SIDE
def test_agent_killed_mid_batch_and_restarted_loses_and_doubles_nothing(station, web, processes, tmp_path):
    agent = start_agent(station, web, processes, tmp_path, batch_size="5000")
    station.write_lines(100_000)
    wait_for(lambda: station.stored() >= 20_000, timeout=60, message="uploads under way")
    agent.kill()
    stored_at_kill = station.stored()
    assert stored_at_kill < 200_000, "the uploads finished before the kill: make the test bigger"
    pending = station.spool().pending_batches()
    station.write_lines(1000)  # written while the agent was down
    agent.start()
    wait_for(lambda: station.stored() == 202_000, timeout=120, message="every reading stored")
    wait_for(lambda: station.spool().depth() == 0, timeout=30, message="the spool emptied")
    station.assert_exactly_once()
    if pending:  # batches claimed when it died were sent again with their ids
        assert "sending batch" in agent.log() and "again" in agent.log()


@AGENT_SIDE
def test_a_revoked_token_keeps_spooling_reports_401_and_delivers_after_a_new_token(station, web, processes, tmp_path):
    agent = start_agent(station, web, processes, tmp_path)
    station.write_lines(100)
    wait_for(lambda: station.stored() == 200, timeout=30, message="the first readings")

    services.revoke_agent(station.agent)
    station.write_lines(400)
    wait_for(lambda: station.spool().depth() == 800, timeout=30, message="readings kept in the spool")
    wait_for(
        lambda: "auth" in station.agent_state().get("problems", {}),
        timeout=30,
        message="the agent reporting the refused token",
    )
    assert "the server refuses the agent's token (401" in agent.log()
    assert "will be sent once a valid token is in place" in agent.log()
    assert station.stored() == 200

    # The owner gives the same agent a new token; the operator puts it in the token file. No restart, and
    # the agent keeps its source, instruments and health.
    token = services.replace_agent_token(station.agent, actor=station.owner)
    station.token_file.write_text(token + "\n")
    wait_for(lambda: station.stored() == 1000, timeout=60, message="the spooled readings delivered")
    station.write_lines(50)
    wait_for(lambda: station.stored() == 1100, timeout=30, message="collection going on with the new token")
    station.assert_exactly_once()
    assert "the server accepts the agent's token" in agent.log()
    recovered = AgentHealth.objects.get(agent=station.agent).last_heartbeat
    wait_for(
        lambda: AgentHealth.objects.get(agent=station.agent).last_heartbeat > recovered,
        timeout=30,
        message="heartbeats with the new token",
    )


@AGENT_SIDE
def test_a_reading_from_a_serial_instrument_reaches_the_database(tmp_path, web, processes):
    """The instrument answers "R" on the controller side of a pseudo-terminal; the agent opens the other
    side as a serial port with pyserial, configured centrally as a data source."""
    import tty

    controller, device = os.openpty()
    tty.setraw(controller)
    station = Station(
        tmp_path,
        collect={
            "kind": "serial",
            "url": os.ttyname(device),
            "baudrate": 9600,
            "request": "R\r\n",
            "line_terminator": "\r\n",
            "delimiter": " ",
            "columns": ["time", "temp", "rh"],
            "timestamp": {"columns": ["time"], "format": "epoch"},
            "timeout": 1,
        },
    )
    status = make_channel(station.instrument, slug="status", kind=ChannelKind.TEXT, source=station.source)
    status.source_field = "3"
    status.save()
    stop = threading.Event()

    def instrument() -> None:
        buffer, count = b"", 0
        while not stop.is_set():
            try:
                buffer += os.read(controller, 100)
            except OSError:
                return
            while b"R\r\n" in buffer:
                buffer = buffer.split(b"R\r\n", 1)[1]
                os.write(controller, f"{T0 + count} 21.5 {40 + count} OK\r\n".encode())
                count += 1

    threading.Thread(target=instrument, daemon=True).start()
    try:
        start_agent(station, web, processes, tmp_path)
        wait_for(lambda: TextSample.objects.filter(channel=status).exists(), timeout=30, message="a serial reading")
    finally:
        stop.set()
    first = Sample.objects.get(channel=station.temp, ts=T0 * 1_000_000)
    assert first.value == 21.5
    assert Sample.objects.get(channel=station.rh, ts=T0 * 1_000_000).value == 40
    assert TextSample.objects.get(channel=status, ts=T0 * 1_000_000).value == "OK"
    for fd in (controller, device):
        os.close(fd)


def test_readings_from_a_modbus_device_reach_the_database_and_a_refused_register_the_quarantine(
    tmp_path, web, processes, modbus_device
):
    """pymodbus's own server plays the device; the agent polls it as a centrally configured Modbus TCP source."""
    import struct

    data = struct.pack(">f", 21.5)
    device = modbus_device(holding=[int.from_bytes(data[:2], "big"), int.from_bytes(data[2:], "big"), 400])
    station = Station(
        tmp_path,
        collect={
            "kind": "modbus",
            "host": "127.0.0.1",
            "port": device.port,
            "timeout": 3,
            "registers": [
                {"field": "temp", "address": 0, "type": "float32"},
                {"field": "rh", "address": 2, "scale": 0.1},
                {"field": "pressure", "address": 100},  # the device has no register 100
            ],
        },
    )
    pressure = make_channel(station.instrument, slug="pressure", source=station.source, source_field="pressure")
    start_agent(station, web, processes, tmp_path)
    wait_for(lambda: Sample.objects.filter(channel=station.rh).exists(), timeout=30, message="a Modbus reading")
    wait_for(lambda: RejectedSample.objects.filter(origin=Origin.AGENT).exists(), timeout=30, message="quarantine")
    first = Sample.objects.filter(channel=station.temp).earliest("ts")
    assert first.value == 21.5
    assert Sample.objects.get(channel=station.rh, ts=first.ts).value == 40.0
    assert not Sample.objects.filter(channel=pressure).exists()
    refused = RejectedSample.objects.filter(origin=Origin.AGENT).first()
    assert refused.source_id == station.source.pk
    assert refused.reason.startswith("holding register 100 (uint16): the device refused the read: illegal data address")
    assert ("holding", 0, 3) in device.requests and ("holding", 100, 1) in device.requests


def test_mqtt_messages_reach_the_database_through_the_agent_also_those_sent_while_it_was_down(
    tmp_path, web, processes, mqtt_broker
):
    """An agent subscribed to an MQTT broker (the real mosquitto): JSON payloads stored at their own times, a
    malformed one quarantined with its topic, and what was published while the agent was stopped delivered
    after it starts again (its persistent session at the broker)."""
    import json
    import uuid

    from paho.mqtt import publish

    prefix = f"daqbroker-test/{uuid.uuid4().hex[:12]}"
    collect = {
        "kind": "mqtt",
        "host": mqtt_broker[0],
        "port": mqtt_broker[1],
        "client_id": f"daqbroker-test-{uuid.uuid4().hex[:12]}",
        "fields": [
            {"name": "temp", "topic": f"{prefix}/+/env", "path": "t"},
            {"name": "rh", "topic": f"{prefix}/+/env", "path": "rh"},
        ],
        "timestamp": {"path": "ts", "format": "epoch"},
    }
    station = Station(tmp_path, collect=collect)

    def send(i: int | None, payload: str = "") -> None:
        body = payload or json.dumps({"ts": T0 + i, "t": i / 10, "rh": i % 100})
        publish.single(f"{prefix}/shed/env", body, qos=1, hostname=mqtt_broker[0], port=mqtt_broker[1])

    agent = start_agent(station, web, processes, tmp_path)

    def first_stored() -> bool:
        send(0)  # again until the agent has subscribed (a duplicate afterwards)
        return station.stored() >= 2

    wait_for(first_stored, timeout=60, interval=0.5, message="the agent subscribed")
    for i in range(1, 10):
        send(i)
    send(None, "{oops")
    wait_for(lambda: station.stored() == 20, timeout=30, message="ten messages stored")
    wait_for(lambda: RejectedSample.objects.filter(origin=Origin.AGENT).exists(), timeout=30, message="quarantine")
    bad = RejectedSample.objects.get(origin=Origin.AGENT)
    assert (bad.source_id, bad.raw_value, bad.context["topic"]) == (station.source.pk, "{oops", f"{prefix}/shed/env")
    assert bad.reason.startswith("payload is not JSON")

    agent.stop()
    for i in range(10, 15):
        send(i)
    agent.start()
    wait_for(lambda: station.stored() == 30, timeout=60, message="what was published while the agent was stopped")
    temps = dict(Sample.objects.filter(channel=station.temp).values_list("ts", "value"))
    assert temps == {(T0 + i) * 1_000_000: i / 10 for i in range(15)}


def test_opc_ua_changes_reach_the_database_through_the_agent(tmp_path, web, processes, opcua_server):
    """An agent subscribed to a real OPC UA server (asyncua): values stored at their source times, a Bad
    status quarantined with the node id and the status name."""
    from datetime import UTC, datetime

    collect = {
        "kind": "opcua",
        "host": opcua_server.host,
        "port": opcua_server.port,
        "path": "/daqbroker-test/",
        "publishing_interval": 50,
        "nodes": [
            {"node": opcua_server.node("temperature"), "name": "temp"},
            {"node": opcua_server.node("state"), "name": "rh"},
        ],
    }
    station = Station(tmp_path, collect=collect)
    start_agent(station, web, processes, tmp_path)

    def at(i: int) -> datetime:
        return datetime.fromtimestamp(T0 + 100 + i, tz=UTC)

    def first_stored() -> bool:
        opcua_server.write("temperature", 1.0, source_time=at(0))  # again until subscribed
        return Sample.objects.filter(channel=station.temp, ts=(T0 + 100) * 1_000_000).exists()

    wait_for(first_stored, timeout=90, interval=0.5, message="the agent subscribed")
    opcua_server.write("state", 0.0, status=0x808C0000, source_time=at(1))  # BadSensorFailure
    opcua_server.write("temperature", 2.5, source_time=at(2))
    wait_for(
        lambda: Sample.objects.filter(channel=station.temp, ts=(T0 + 102) * 1_000_000, value=2.5).exists(),
        timeout=30,
        message="the second value",
    )
    wait_for(lambda: RejectedSample.objects.filter(origin=Origin.AGENT).exists(), timeout=30, message="quarantine")
    bad = RejectedSample.objects.get(origin=Origin.AGENT)
    assert (bad.source_id, bad.context["node"]) == (station.source.pk, "ns=2;s=state")
    from collection.services import quarantine

    assert quarantine.why_not_replayable(bad) == quarantine.NOT_REPLAYABLE_OPCUA  # nothing to parse again
    assert quarantine.parse_preview(bad) == {"error": quarantine.NOT_REPLAYABLE_OPCUA}
    assert bad.reason == "ns=2;s=state: status BadSensorFailure (bad): not stored"


@AGENT_SIDE
def test_central_configuration_changes_reach_a_running_agent(station, web, processes, tmp_path):
    agent = start_agent(station, web, processes, tmp_path)
    station.write_lines(10)
    wait_for(lambda: station.stored() == 20, timeout=30, message="the first readings")
    # In the admin: the source now reads "*.log" files, and rh is no longer collected.
    station.source.config["collect"]["pattern"] = "*.log"
    station.source.save()
    station.rh.source = None
    station.rh.save()
    wait_for(
        lambda: "stopped remote-station/logger: changed in the server's configuration" in agent.log(),
        timeout=30,
        message="the agent restarting the changed source",
    )
    (station.folder / "new.log").write_text(f"{T0 + 1000},99.5,1\n")
    wait_for(
        lambda: Sample.objects.filter(channel=station.temp, ts=(T0 + 1000) * 1_000_000).exists(),
        timeout=30,
        message="the reading of the new file",
    )
    assert not Sample.objects.filter(channel=station.rh, ts=(T0 + 1000) * 1_000_000).exists()


# --- the package on its own ----------------------------------------------------------------------------


@pytest.mark.engine_independent  # pip and a fresh venv: no database involved, whatever the module's mark says
def test_the_agent_installs_alone_and_runs_without_django(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
    install = [str(venv / "bin/python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    pip = subprocess.run(
        [*install, str(REPO / "client_agent")], capture_output=True, text=True, timeout=600, check=False
    )
    if pip.returncode != 0:
        offline = any(w in pip.stderr for w in ("No matching distribution", "Could not find a version", "connection"))
        if offline:
            service_unavailable(
                f"pip cannot reach an index or a wheel cache for the agent's dependencies: {pip.stderr[-500:]}"
            )
        pytest.fail(pip.stderr[-3000:])
    helped = subprocess.run([str(venv / "bin/daqbroker-agent"), "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0, helped.stderr
    assert "flush" in helped.stdout
    no_django = subprocess.run([str(venv / "bin/python"), "-c", "import django"], capture_output=True, timeout=60)
    assert no_django.returncode != 0, "Django must not come with the agent"
    status = subprocess.run(
        [str(venv / "bin/daqbroker-agent"), "status", "--spool", str(tmp_path / "spool")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert status.returncode == 1 and "has not run" in status.stderr
    import_all = "import daqbroker_agent.cli, daqbroker_agent.runtime, daqbroker_agent.sources, serial; print('ok')"
    imported = subprocess.run([str(venv / "bin/python"), "-c", import_all], capture_output=True, text=True, timeout=60)
    assert imported.stdout.strip() == "ok", imported.stderr
    # The read client is an extra: without pandas it says which one to install.
    reader = subprocess.run(
        [str(venv / "bin/python"), "-c", "import daqbroker_agent.reader"], capture_output=True, text=True, timeout=60
    )
    assert reader.returncode != 0 and "daqbroker-agent[pandas]" in reader.stderr, reader.stderr
    # So is Modbus: without pymodbus a Modbus source says which extra to install (and nothing else breaks).
    modbus = (
        "from daqbroker_agent.modbus import open_client\n"
        "try:\n    open_client({'transport': 'tcp'})\nexcept ConnectionError as exc:\n    print(exc)"
    )
    said = subprocess.run([str(venv / "bin/python"), "-c", modbus], capture_output=True, text=True, timeout=60)
    assert "daqbroker-agent[modbus]" in said.stdout, said.stderr
    # With the extra, pymodbus comes (at the server's pin) and a Modbus source reads: nobody listens here.
    extra = subprocess.run(
        [*install, f"{REPO / 'client_agent'}[modbus]"], capture_output=True, text=True, timeout=600, check=False
    )
    assert extra.returncode == 0, extra.stderr[-3000:]
    closed = (
        "from daqbroker_agent.config import validate_source_config\n"
        "from daqbroker_agent.modbus import ModbusReader\n"
        "config = validate_source_config('modbus', {'host': '127.0.0.1', 'port': 1, 'registers': "
        "[{'field': 'a', 'address': 0}]})\n"
        "try:\n    ModbusReader(config).poll()\nexcept ConnectionError as exc:\n    print(exc)"
    )
    said = subprocess.run([str(venv / "bin/python"), "-c", closed], capture_output=True, text=True, timeout=60)
    assert "cannot connect to Modbus TCP 127.0.0.1:1 unit 1" in said.stdout, said.stderr
    # MQTT is an extra too: the module imports without paho-mqtt, and a session says which extra it needs.
    mqtt = (
        "from daqbroker_agent.mqtt import MqttSession, MqttUnavailable\n"
        "try:\n    MqttSession({}, 'x')\nexcept MqttUnavailable as exc:\n    print(exc)"
    )
    needs = subprocess.run([str(venv / "bin/python"), "-c", mqtt], capture_output=True, text=True, timeout=60)
    assert "daqbroker-agent[mqtt]" in needs.stdout, needs.stderr
    opcua = (
        "from daqbroker_agent.opcua import OpcUaSession, OpcUaUnavailable\n"
        "try:\n    OpcUaSession({})\nexcept OpcUaUnavailable as exc:\n    print(exc)"
    )
    needs = subprocess.run([str(venv / "bin/python"), "-c", opcua], capture_output=True, text=True, timeout=60)
    assert "daqbroker-agent[opcua]" in needs.stdout, needs.stderr


# --- node health and the raw-file archive (issue 21) -----------------------------------------------------


@AGENT_SIDE
def test_an_agent_reports_its_health_as_readings_and_ships_raw_files_downloaded_byte_identical(
    tmp_path, web, processes, client
):
    from collection.models import RawFile

    station = Station(
        tmp_path,
        collect={
            "kind": "file",
            "path": str(tmp_path / "logger"),
            "pattern": "*.csv",
            "columns": ["time", "temp", "rh"],
            "timestamp": {"columns": ["time"], "format": "epoch"},
            "archive": True,
            "final_line_after": 0.5,
        },
    )
    station.write_lines(100, "day1.csv")
    # A second file with a line of bytes no text decoder likes: shipped as they are.
    (station.folder / "day2.csv").write_bytes(
        b"".join(b"%d,%d.5,1\n" % (T0 + 500 + i, i) for i in range(50)) + b"\xff\xfe,x\r\n"
    )
    start_agent(station, web, processes, tmp_path)

    # Node health: the heartbeat's figures are readings of the agent's health instrument.
    station.agent.refresh_from_db()
    wait_for(
        lambda: Sample.objects.filter(
            channel__instrument__health_of_agent=station.agent, channel__slug="spool_disk_free"
        ).exists(),
        timeout=30,
        message="a health reading",
    )
    station.agent.refresh_from_db()
    health = station.agent.health_instrument
    slugs = set(Sample.objects.filter(channel__instrument=health).values_list("channel__slug", flat=True))
    assert {"cpu_load", "memory_used", "spool_disk_free", "spool_disk_used", "spool_depth"} <= slugs

    # Raw files: both files, once each, downloaded byte-identical through the real server and the page.
    wait_for(
        lambda: RawFile.objects.filter(instrument=station.instrument).count() == 2, timeout=60, message="raw files"
    )
    _, token = services.create_personal_token(user=station.owner, name="reader")
    for raw in RawFile.objects.filter(instrument=station.instrument):
        request = urllib.request.Request(  # noqa: S310 (our own test server)
            f"{web.url}/api/v1/raw-files/{raw.pk}/", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (our own test server)
            assert answer.read() == (station.folder / raw.name).read_bytes()
    client.force_login(station.owner)
    page = client.get(f"/instruments/{station.instrument.slug}/raw-files/")
    assert page.status_code == 200 and b"day2.csv" in page.content
    # Shipped once each, and remembered in the spool so that a restart does not send them again.
    shipped = station.spool().get(f"raw_shipped:server:{station.source.pk}")
    assert sorted(Path(p).name for p in shipped) == ["day1.csv", "day2.csv"]
    log = processes[0].log()
    assert log.count("raw file day1.csv (") == 1 and log.count("raw file day2.csv (") == 1
