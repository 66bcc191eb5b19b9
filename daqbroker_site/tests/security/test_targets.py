"""Issue 12, findings 1, 2 and 12: who may point a source (or a webhook) where, reproduced through HTTP.

The personas (``accounts.tests.personas``): olivia owns alpha-station and the agent alpha-logger (she is an
Operator); eddie holds ``change`` on alpha (the issue's "dave"); vera may view it; stan has nothing; ada is
an administrator. Every test here sets strict rules (``rules``): one file root, nothing on the network
allow-list, no serial device open to non-administrators.

Finding 2 end to end (a real gunicorn server and a real agent process) is in test_targets_agent_e2e.py.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse
from django.utils import timezone

from accounts import roles
from accounts.models import AgentHealth
from collection.alarms import notify
from collection.alarms.choices import DeliveryStatus, Medium, RuleKind, Severity, Transition
from collection.alarms.models import AlarmEvent, AlarmNotification, AlarmRule
from collection.choices import RunStatus
from collection.services.collect import collect_source
from instruments.choices import SourceKind
from instruments.models import DataSource
from instruments.tests.factories import make_channel

# One world for the module (accounts.tests.personas.module_world): its tests commit nothing.
pytestmark = pytest.mark.usefixtures("module_world")

SOURCES = "/api/v1/sources/"


@pytest.fixture
def rules(settings, tmp_path) -> Path:
    """Strict rules: one file root (returned), nothing on the network, no serial device."""
    root = tmp_path / "instrument-files"
    (root / "logger").mkdir(parents=True)
    settings.DAQBROKER_FILE_ROOTS = [root]
    settings.DAQBROKER_NETWORK_ALLOW = []
    settings.DAQBROKER_SERIAL_DEVICES = []
    return root


def new_source(kind: str, config: dict, name: str = "probe") -> dict:
    return {"instrument": "alpha-station", "name": name, "kind": kind, "config": config}


def post(persona, body: dict):
    return persona.client.post(SOURCES, body, format="json")


def refusal(response) -> str:
    return str(response.json())


# --- finding 1: the server's files ---------------------------------------------------------------------


@pytest.mark.parametrize("persona_name", ["shared_editor", "owner", "personal_write_token"])
def test_a_collaborator_cannot_read_etc_passwd(persona_name, request, rules):
    persona = request.getfixturevalue(persona_name)
    response = post(persona, new_source("file", {"path": "/etc", "pattern": "passwd"}))
    assert response.status_code == 400, response.content
    assert "DAQBROKER_FILE_ROOTS" in refusal(response)
    assert not DataSource.objects.filter(name="probe").exists()


def test_a_collaborator_may_read_under_a_file_root(shared_editor, rules):
    response = post(shared_editor, new_source("file", {"path": str(rules / "logger"), "pattern": "*.csv"}))
    assert response.status_code == 201, response.content
    source = DataSource.objects.get(name="probe")
    assert source.target_set_by == shared_editor.user


def test_viewers_strangers_agents_and_anonymous_cannot_create_sources_at_all(
    shared_viewer, stranger, agent_scoped, anonymous, rules
):
    body = new_source("file", {"path": str(rules / "logger")})
    assert post(shared_viewer, body).status_code == 400  # alpha "does not exist" for them at change level
    assert post(stranger, body).status_code == 400
    assert post(agent_scoped, body).status_code == 403
    assert post(anonymous, body).status_code == 401
    assert not DataSource.objects.filter(name="probe").exists()


def test_a_symlink_or_dotdot_out_of_a_root_is_refused(shared_editor, rules):
    (rules / "escape").symlink_to("/etc")
    for config in (
        {"path": str(rules / "escape"), "pattern": "passwd"},
        {"path": f"{rules}/../../../../etc", "pattern": "passwd"},
        {"path": str(rules / "logger"), "pattern": "../../../etc/passwd"},
    ):
        response = post(shared_editor, new_source("file", config))
        assert response.status_code == 400, (config, response.content)


@pytest.mark.parametrize("persona_name", ["shared_editor", "administrator"])
def test_the_data_dir_and_database_are_never_readable_even_under_a_root(persona_name, request, settings, rules):
    persona = request.getfixturevalue(persona_name)
    data_dir = Path(settings.DATA_DIR)
    settings.DAQBROKER_FILE_ROOTS = [rules, data_dir, data_dir.parent]
    paths = [str(data_dir), str(data_dir / "broker"), str(settings.BASE_DIR), "/proc/self"]
    if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        database = Path(settings.DATABASES["default"]["NAME"])
        settings.DAQBROKER_FILE_ROOTS = [*settings.DAQBROKER_FILE_ROOTS, database.parent.parent]
        paths.append(str(database.parent))
    for path in paths:
        response = post(persona, new_source("file", {"path": path, "pattern": "*"}))
        assert response.status_code == 400, (path, response.content)
        assert "no data source may read" in refusal(response)


def test_an_administrator_may_set_a_folder_outside_the_roots(administrator, rules):
    response = post(administrator, new_source("file", {"path": "/etc", "pattern": "hostname"}))
    assert response.status_code == 201, response.content
    assert DataSource.objects.get(name="probe").target_set_by == administrator.user


# --- finding 1: the server's network and services ------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "config"),
    [
        ("tcp", {"host": "127.0.0.1", "port": 6379, "request": "INFO server\r\n"}),
        ("tcp", {"host": "localhost", "port": 5432}),
        ("tcp", {"host": "169.254.169.254", "port": 80}),
        ("tcp", {"host": "0.0.0.0", "port": 22}),  # noqa: S104 (a target, not a binding)
        ("tcp", {"host": "192.0.2.10", "port": 502}),  # a public-looking address not on the allow-list
        ("serial", {"url": "socket://127.0.0.1:6379"}),
        ("serial", {"url": "rfc2217://localhost:6379"}),
        ("serial", {"url": "/dev/ttyS0"}),
        ("serial", {"url": "spy:///dev/ttyS0?file=/tmp/x"}),
    ],
)
def test_a_collaborator_cannot_reach_the_network_or_devices_without_the_rules(shared_editor, rules, kind, config):
    response = post(shared_editor, new_source(kind, config))
    assert response.status_code == 400, response.content
    # Outside the rules, or (on PostgreSQL, localhost:5432) this server's own database.
    assert "only an administrator" in refusal(response) or "of this server" in refusal(response)


def test_loop_serial_urls_are_harmless(shared_editor, rules):
    assert post(shared_editor, new_source("serial", {"url": "loop://"})).status_code == 201


def test_listed_serial_devices_are_open_but_not_a_dotdot_out_of_them(shared_editor, settings, rules):
    settings.DAQBROKER_SERIAL_DEVICES = ["/dev/pts/*"]
    controller, device = os.openpty()
    try:
        assert post(shared_editor, new_source("serial", {"url": os.ttyname(device)}, "pty")).status_code == 201
        escape = post(shared_editor, new_source("serial", {"url": "/dev/pts/../../etc/passwd"}))
        assert escape.status_code == 400
    finally:
        os.close(controller)
        os.close(device)


def test_the_allow_list_opens_networks_but_never_loopback_through_a_catch_all(shared_editor, settings, rules):
    settings.DAQBROKER_NETWORK_ALLOW = ["0.0.0.0/0", "192.0.2.0/24:502"]
    assert post(shared_editor, new_source("tcp", {"host": "192.0.2.10", "port": 502}, "lab-plc")).status_code == 201
    response = post(shared_editor, new_source("tcp", {"host": "127.0.0.1", "port": 9000}))
    assert response.status_code == 400
    assert "loopback" in refusal(response)


def test_the_servers_own_redis_stays_refused_unless_named_with_its_port(administrator, settings, rules):
    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    settings.DAQBROKER_NETWORK_ALLOW = ["127.0.0.1"]
    response = post(administrator, new_source("tcp", {"host": "127.0.0.1", "port": 6379}))
    assert response.status_code == 400  # even an administrator: it is this server's Redis
    assert "Redis of this server" in refusal(response)
    settings.DAQBROKER_NETWORK_ALLOW = ["127.0.0.1:6379"]
    assert post(administrator, new_source("tcp", {"host": "127.0.0.1", "port": 6379})).status_code == 201


def test_an_administrator_may_set_an_out_of_rule_address(administrator, rules):
    response = post(administrator, new_source("tcp", {"host": "127.0.0.1", "port": 9}))
    assert response.status_code == 201, response.content


def test_an_mqtt_broker_passes_the_network_rules_and_its_password_and_ca_file_are_guarded(
    shared_editor, administrator, settings, rules
):
    broker = {"host": "192.0.2.20", "port": 1883, "fields": [{"name": "t", "topic": "lab/+/t"}]}
    refused = post(shared_editor, new_source("mqtt", broker))
    assert refused.status_code == 400 and "only an administrator" in refusal(refused)
    settings.DAQBROKER_NETWORK_ALLOW = ["192.0.2.0/24:1883"]
    assert post(shared_editor, new_source("mqtt", broker, "lab-broker")).status_code == 201
    # A password comes from the collecting host's environment: only an administrator sends it to a broker.
    secret = {**broker, "username": "lab", "password_env": "MQTT_PASSWORD_LAB"}
    response = post(shared_editor, new_source("mqtt", secret, "with-password"))
    assert response.status_code == 400 and "MQTT_PASSWORD_LAB" in refusal(response)
    created = post(administrator, new_source("mqtt", secret, "with-password"))
    assert created.status_code == 201, created.content
    assert "password" not in {key for key in created.json()["config"] if key != "password_env"}
    outside = {**broker, "tls": True, "ca_file": "/etc/ssl/certs/ca-certificates.crt"}
    response = post(shared_editor, new_source("mqtt", outside, "private-ca"))
    assert response.status_code == 400 and "DAQBROKER_FILE_ROOTS" in refusal(response)
    bad = post(shared_editor, new_source("mqtt", {**broker, "password_env": "DAQBROKER_SECRET_KEY"}, "bad"))
    assert bad.status_code == 400 and "MQTT_PASSWORD_" in refusal(bad)


def test_a_ca_file_never_lets_a_broker_address_skip_the_network_rules(administrator, settings, rules):
    """A CA file outside the roots (administrators only) still has the broker's address judged: this server's
    own Redis stays refused even to an administrator, and the address checked is the one connected to."""
    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    settings.DAQBROKER_NETWORK_ALLOW = ["127.0.0.1"]
    redis = {"host": "127.0.0.1", "port": 6379, "tls": True, "ca_file": "/etc/ssl/certs/ca-certificates.crt"}
    response = post(administrator, new_source("mqtt", {**redis, "fields": [{"name": "t", "topic": "a"}]}))
    assert response.status_code == 400 and "Redis of this server" in refusal(response)
    from accounts import targets

    broker = {"host": "127.0.0.1", "port": 8883, "tls": True, "ca_file": "/etc/ssl/certs/ca-certificates.crt"}
    verdict = targets.check_mqtt(broker)
    assert verdict.field == "ca_file" and verdict.outside and [str(a) for a in verdict.addresses] == ["127.0.0.1"]


def test_an_opc_ua_server_passes_the_network_rules_and_its_password_is_guarded(
    shared_editor, administrator, settings, rules
):
    server = {"host": "192.0.2.30", "port": 4840, "nodes": [{"node": "ns=2;i=7", "name": "t"}]}
    refused = post(shared_editor, new_source("opcua", server))
    assert refused.status_code == 400 and "only an administrator" in refusal(refused)
    settings.DAQBROKER_NETWORK_ALLOW = ["192.0.2.0/24:4840"]
    assert post(shared_editor, new_source("opcua", server, "plc")).status_code == 201
    secret = {**server, "username": "operator", "password_env": "OPCUA_PASSWORD_PLANT"}
    response = post(shared_editor, new_source("opcua", secret, "with-password"))
    assert response.status_code == 400 and "OPCUA_PASSWORD_PLANT" in refusal(response)
    assert post(administrator, new_source("opcua", secret, "with-password")).status_code == 201
    bad = post(shared_editor, new_source("opcua", {**server, "nodes": [{"node": "Boiler.T", "name": "t"}]}, "bad"))
    assert bad.status_code == 400 and "ns=2;i=7" in refusal(bad)
    # A secured endpoint's client certificate and private key are files of the collecting host: administrators.
    keyed = {
        **server,
        "security_policy": "Basic256Sha256",
        "certificate": "/etc/daqbroker/opcua/client.der",
        "private_key": "/etc/daqbroker/opcua/client-key.pem",
    }
    response = post(shared_editor, new_source("opcua", keyed, "secured"))
    assert response.status_code == 400 and "client-key.pem" in refusal(response)
    assert "only an administrator" in refusal(response)
    assert post(administrator, new_source("opcua", keyed, "secured")).status_code == 201
    # Never a protected file of the server, whoever asks (its own program, here).
    stolen = {**keyed, "private_key": str(settings.BASE_DIR / "daqbroker_site" / "settings.py")}
    response = post(administrator, new_source("opcua", stolen, "stolen"))
    assert response.status_code == 400 and "program folder" in refusal(response)


# --- changing a source: PATCH -------------------------------------------------------------------------


def test_a_co_editor_may_rename_an_administrators_source_but_not_repoint_it(administrator, shared_editor, rules):
    created = post(administrator, new_source("file", {"path": "/etc", "pattern": "hostname"}))
    url = f"{SOURCES}{created.json()['id']}/"
    assert shared_editor.client.patch(url, {"name": "renamed"}, format="json").status_code == 200
    source = DataSource.objects.get(pk=created.json()["id"])
    assert source.target_set_by == administrator.user  # the target did not change
    response = shared_editor.client.patch(url, {"config": {"path": "/var/log", "pattern": "*"}}, format="json")
    assert response.status_code == 400
    source.refresh_from_db()
    assert source.config["path"] == "/etc"
    moved = {"config": {"path": str(rules / "logger"), "pattern": "*.csv"}}
    assert shared_editor.client.patch(url, moved, format="json").status_code == 200
    source.refresh_from_db()
    assert source.target_set_by == shared_editor.user  # now it has to pass the rules at every run


# --- the admin (Operators) ----------------------------------------------------------------------------


def admin_form(source: DataSource, **changes) -> dict:
    data = {
        "instrument": source.instrument_id,
        "name": source.name,
        "kind": source.kind,
        "agent": source.agent_id or "",
        "config": json.dumps(source.config),
        "interval_seconds": source.interval_seconds,
        "enabled": "on",
    }
    data.update(changes)
    return data


def make_operator(user) -> None:
    user.is_staff = True
    user.save()
    user.groups.add(Group.objects.get(name=roles.OPERATORS))


def test_an_operator_cannot_point_a_source_at_etc_in_the_admin(world, shared_editor, rules):
    make_operator(world.users["eddie"])
    source = world.alpha_source
    url = reverse("admin:instruments_datasource_change", args=[source.pk])
    response = shared_editor.client.post(url, admin_form(source, config='{"path": "/etc", "pattern": "passwd"}'))
    assert response.status_code == 200  # the form again, with the error
    assert "DAQBROKER_FILE_ROOTS" in response.content.decode()
    source.refresh_from_db()
    assert source.config["path"] != "/etc"


# --- run time: the collectors check again -------------------------------------------------------------


class LineServer:
    """A TCP instrument on loopback: each connection gets one line, then the server hangs up."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.sendall(b"2024-01-01T00:00:00Z,1.5\n")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def line_server():
    server = LineServer()
    yield server
    server.close()


def tcp_source(world, port: int, set_by) -> DataSource:
    source = DataSource.objects.create(
        instrument=world.alpha,
        name="tcp-instrument",
        kind=SourceKind.TCP,
        config={"host": "127.0.0.1", "port": port, "timeout": 1, "columns": ["time", "t"]},
        target_set_by=set_by,
    )
    make_channel(world.alpha, slug="tcp-t", source=source, source_field="t")
    return source


def test_an_administrators_out_of_rule_target_runs_only_while_they_are_one(world, rules, line_server):
    ada = world.users["ada"]
    source = tcp_source(world, line_server.port, ada)
    run = collect_source(source.pk)
    assert run.status == RunStatus.SUCCESS, run.error
    assert line_server.connections == 1
    ada.groups.clear()  # no longer an administrator
    DataSource.objects.filter(pk=source.pk).update(next_run_at=None)
    run = collect_source(source.pk)
    assert run.status == RunStatus.FAILED
    assert run.error.startswith("refused by the target rules (host): 127.0.0.1:")
    assert "not set by a current administrator" in run.error
    source.refresh_from_db()
    assert source.last_error == run.error
    assert line_server.connections == 1  # never connected


def test_a_source_that_the_rules_no_longer_allow_fails_its_run_with_the_reason(world, settings, rules, line_server):
    settings.DAQBROKER_NETWORK_ALLOW = ["127.0.0.1"]
    source = tcp_source(world, line_server.port, world.users["eddie"])
    assert collect_source(source.pk).status == RunStatus.SUCCESS
    settings.DAQBROKER_NETWORK_ALLOW = []
    run = collect_source(source.pk)
    assert run.status == RunStatus.FAILED
    assert "DAQBROKER_NETWORK_ALLOW does not name it" in run.error
    assert line_server.connections == 1


def test_a_file_source_whose_root_was_removed_fails_its_run(world, settings, rules):
    folder = rules / "logger"
    (folder / "a.csv").write_text("2024-01-01T00:00:00Z,1\n")
    written = datetime(2024, 1, 1, 0, 1, tzinfo=UTC).timestamp()  # when its logger wrote it (else: a warning)
    os.utime(folder / "a.csv", (written, written))
    source = DataSource.objects.create(
        instrument=world.alpha,
        name="files",
        kind=SourceKind.FILE,
        config={"path": str(folder), "columns": ["time", "t"]},
        target_set_by=world.users["eddie"],
    )
    make_channel(world.alpha, slug="root-t", source=source, source_field="t")  # a source without one waits
    assert collect_source(source.pk).status == RunStatus.SUCCESS
    settings.DAQBROKER_FILE_ROOTS = []
    run = collect_source(source.pk)
    assert run.status == RunStatus.FAILED
    assert "is not under the folders data sources may read" in run.error


def test_a_symlink_planted_in_a_root_is_not_followed_at_run_time(world, rules, tmp_path):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "env.csv").write_text("2024-01-01T00:00:00Z,42\n")
    folder = rules / "logger"
    source = DataSource.objects.create(
        instrument=world.alpha,
        name="files",
        kind=SourceKind.FILE,
        config={"path": str(folder), "columns": ["time", "t"]},
        target_set_by=world.users["eddie"],
    )
    make_channel(world.alpha, slug="file-t", source=source, source_field="t")
    (folder / "env.csv").symlink_to(secret / "env.csv")  # planted after the source was saved
    run = collect_source(source.pk)
    assert run.status == RunStatus.FAILED
    assert f"{secret / 'env.csv'} is not under the folders" in run.error
    assert run.accepted == 0


# --- finding 2: agents --------------------------------------------------------------------------------


COMMAND = {"collect": {"kind": "command", "command": ["sh", "-c", "id > /tmp/owned"], "columns": ["x"]}}


def agent_source(world) -> DataSource:
    folder = {"collect": {"kind": "file", "path": "/data/logger", "columns": ["time", "t"]}}
    return DataSource.objects.create(
        instrument=world.alpha, name="remote", kind=SourceKind.AGENT, agent=world.agents["alpha-logger"], config=folder
    )


def test_a_co_editor_cannot_make_the_owners_agent_run_a_command(world, shared_editor, rules):
    source = agent_source(world)
    url = f"{SOURCES}{source.pk}/"
    response = shared_editor.client.patch(url, {"config": COMMAND}, format="json")
    assert response.status_code == 400
    assert "Only the owner of this source's agent or an administrator" in refusal(response)
    source.refresh_from_db()
    assert source.config["collect"]["kind"] == "file"
    # Changing what it reads in any other way is refused too; renaming it is not.
    other = {"collect": {"kind": "file", "path": "/root", "columns": ["time", "t"]}}
    assert shared_editor.client.patch(url, {"config": other}, format="json").status_code == 400
    assert shared_editor.client.patch(url, {"name": "renamed"}, format="json").status_code == 200


def test_a_co_editor_cannot_create_a_source_on_the_owners_agent(world, shared_editor, rules):
    body = {**new_source("agent", COMMAND), "agent": world.agents["alpha-logger"].pk}
    assert post(shared_editor, body).status_code == 400
    assert not DataSource.objects.filter(name="probe").exists()


@pytest.mark.parametrize("persona_name", ["owner", "administrator", "personal_write_token"])
def test_the_agents_owner_and_administrators_may_change_what_it_collects(persona_name, request, world, rules):
    persona = request.getfixturevalue(persona_name)
    source = agent_source(world)
    response = persona.client.patch(f"{SOURCES}{source.pk}/", {"config": COMMAND}, format="json")
    assert response.status_code == 200, response.content


def test_an_operator_co_editor_cannot_give_the_owners_agent_a_command_in_the_admin(world, shared_editor, rules):
    make_operator(world.users["eddie"])
    source = agent_source(world)
    url = reverse("admin:instruments_datasource_change", args=[source.pk])
    response = shared_editor.client.post(url, admin_form(source, config=json.dumps(COMMAND)))
    assert response.status_code == 200
    assert "Only the owner of this source&#x27;s agent" in response.content.decode()
    source.refresh_from_db()
    assert source.config["collect"]["kind"] == "file"


# --- finding 12: webhooks -----------------------------------------------------------------------------


class Receiver:
    """A loopback HTTP receiver answering every POST with ``status`` (and ``location``)."""

    def __init__(self, status: int = 200, location: str = ""):
        self.hits: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.hits.append(self.path)
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers():
    made: list[Receiver] = []

    def make(*args, **kwargs) -> Receiver:
        made.append(Receiver(*args, **kwargs))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


def rule_form(world, webhook_url: str) -> dict:
    return {
        "name": "hook-rule",
        "enabled": "on",
        "kind": RuleKind.ABOVE,
        "severity": Severity.WARNING,
        "threshold": "30",
        "hysteresis": "0",
        "min_duration_seconds": "0",
        "stale_factor": "3",
        "instrument": world.alpha.pk,
        "notify_contacts": "on",
        "webhook_url": webhook_url,
    }


def test_an_operators_webhook_to_loopback_is_refused_when_saved(world, owner, rules, receivers):
    receiver = receivers()
    response = owner.client.post(reverse("admin:collection_alarmrule_add"), rule_form(world, receiver.url))
    assert response.status_code == 200
    assert "webhook refused" in response.content.decode()
    assert not AlarmRule.objects.filter(name="hook-rule").exists()


def webhook_notification(world, url: str) -> AlarmNotification:
    rule = world.alpha_rule
    AlarmRule.objects.filter(pk=rule.pk).update(webhook_url=url)  # saved while the rules allowed it
    event = AlarmEvent.objects.create(
        rule=rule,
        channel=world.alpha_channel,
        kind=RuleKind.ABOVE,
        severity=Severity.WARNING,
        message="hot",
        raised_at=timezone.now(),
    )
    return AlarmNotification.objects.create(
        event=event, transition=Transition.RAISED, medium=Medium.WEBHOOK, recipients=[url]
    )


def test_a_webhook_the_rules_no_longer_allow_is_not_sent_and_says_why(world, rules, receivers):
    receiver = receivers()
    notification = webhook_notification(world, receiver.url)
    notify.deliver(notification.pk)
    notification.refresh_from_db()
    assert notification.status == DeliveryStatus.FAILED
    assert notification.last_error.startswith("ValueError: webhook refused: 127.0.0.1:")
    assert receiver.hits == []


def test_webhooks_never_follow_redirects(world, settings, rules, receivers):
    settings.DAQBROKER_NETWORK_ALLOW = ["127.0.0.1"]
    inside = receivers()
    bouncer = receivers(status=302, location=inside.url)
    notification = webhook_notification(world, bouncer.url)
    notify.deliver(notification.pk)
    notification.refresh_from_db()
    assert notification.status == DeliveryStatus.FAILED
    assert "never follow redirects" in notification.last_error
    assert len(bouncer.hits) == 1
    assert inside.hits == []


def test_an_allowed_webhook_is_delivered(world, settings, rules, receivers):
    settings.DAQBROKER_NETWORK_ALLOW = ["127.0.0.1"]
    receiver = receivers()
    notification = webhook_notification(world, receiver.url)
    notify.deliver(notification.pk)
    notification.refresh_from_db()
    assert notification.status == DeliveryStatus.SENT, notification.last_error
    assert receiver.hits == ["/hook"]


def test_an_agent_reports_refusals_only_for_its_own_sources(world, agent_scoped, rules):
    own = agent_source(world)
    foreign = world.zulu_source
    body = {
        "refused_sources": [
            {"id": own.pk, "name": "remote", "reason": "commands are not enabled on this host"},
            {"id": foreign.pk, "name": "x", "reason": "planted"},
        ]
    }
    assert agent_scoped.client.post("/api/v1/agent/heartbeat/", body, format="json").status_code == 200
    health = AgentHealth.objects.get(agent=world.agents["alpha-logger"])
    assert [item["id"] for item in health.refused_sources] == [own.pk]
    own.refresh_from_db()
    foreign.refresh_from_db()
    assert own.last_error == "refused by the agent: commands are not enabled on this host"
    assert "planted" not in foreign.last_error
    # Once the agent no longer refuses it, the source's note goes.
    assert agent_scoped.client.post("/api/v1/agent/heartbeat/", {}, format="json").status_code == 200
    own.refresh_from_db()
    assert own.last_error == ""
