"""The source preview service and its API (``POST /api/v1/sources/preview/``): samples from uploads,
server files, a real serial port (a pty pair) and a real TCP instrument; the one target check before
anything is opened; bounded reads; bad input answered with a message, never a 500."""

from __future__ import annotations

import os
import socket

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from instruments.tests.factories import make_instrument, make_user

pytestmark = pytest.mark.django_db

SAMPLE = (
    "time,t_air [deg C],rh (%),status\n"
    "2024-05-06T14:30:00,12.5,80.1,OK\n"
    "2024-05-06T14:31:00,-9999,80.2,OK\n"
    "2024-05-06T14:32:00,12.7,80.3,WARN\n"
    "2024-05-06T14:33:00,-9999,80.4,OK\n"
)


@pytest.fixture
def owner():
    return make_user("olga")


@pytest.fixture
def instrument(owner):
    return make_instrument(owner=owner, slug="station")


@pytest.fixture
def client(owner):
    client = APIClient()
    client.force_authenticate(owner)
    return client


def preview(client, **data):
    data.setdefault("instrument", "station")
    return client.post(reverse("api:source-preview"), data, format="json")


def upload(client, content: bytes, **data):
    from django.core.files.uploadedfile import SimpleUploadedFile

    data.setdefault("instrument", "station")
    data["sample"] = SimpleUploadedFile("sample.csv", content)
    return client.post(reverse("api:source-preview"), data, format="multipart")


def test_an_uploaded_sample_gives_proposals_and_the_parsed_rows(client, instrument):
    response = upload(client, SAMPLE.encode(), kind="file")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["config"]["header_lines"] == 1
    assert body["config"]["columns"] == ["time", "t_air", "rh", "status"]
    channels = {c["slug"]: c for c in body["proposal"]["channels"]}
    assert channels["t-air"]["units"] == "degC" and channels["t-air"]["missing_values"] == [-9999.0]
    assert channels["rh"]["units"] == "%"
    assert channels["status"]["kind"] == "text"
    assert body["errors"] == {"path": "is required"}  # a file source still needs its folder
    first = body["rows"][0]
    assert first["line"] == 2 and first["time_utc"] == "2024-05-06T14:30:00+00:00"
    assert [v["value"] for v in first["values"]] == [12.5, 80.1, "OK"]
    second = {v["slug"]: v for v in body["rows"][1]["values"]}
    assert second["t-air"]["stored"] and second["t-air"]["quality"] == 2  # a sentinel: stored as missing
    assert "timestamp.timezone" in body["proposal"]["questions"]


def test_the_options_given_win_and_times_show_in_the_sources_zone(client, instrument):
    config = {"timestamp": {"timezone": "Europe/Lisbon"}}
    body = preview(client, kind="file", config=config, sample_text=SAMPLE).json()
    assert body["config"]["timestamp"] == {"format": "iso", "columns": ["time"], "timezone": "Europe/Lisbon"}
    assert body["rows"][0]["time_utc"] == "2024-05-06T13:30:00+00:00"  # Lisbon is UTC+1 in May
    assert body["rows"][0]["time_local"] == "2024-05-06T14:30:00+01:00"
    assert "timestamp.timezone" not in body["proposal"]["questions"]


def test_each_value_says_what_its_channel_would_store_or_reject(client, instrument):
    channels = [
        {"slug": "t", "source_field": "t_air", "kind": "numeric", "valid_min": 0, "valid_max": 12.6},
        {"slug": "s", "source_field": "status", "kind": "numeric"},
        {"slug": "gone", "source_field": "nowhere", "kind": "numeric"},
    ]
    body = preview(client, kind="file", sample_text=SAMPLE, channels=channels).json()
    row1 = {v["slug"]: v for v in body["rows"][0]["values"]}
    assert row1["t"]["stored"] and row1["t"]["quality"] == 0
    assert not row1["s"]["stored"] and row1["s"]["reason"] == "value is not a number, and the channel is numeric"
    assert not row1["gone"]["stored"] and "missing" in row1["gone"]["reason"]
    row3 = {v["slug"]: v for v in body["rows"][2]["values"]}
    assert row3["t"]["quality"] == 1 and "valid range" in row3["t"]["reason"]


def test_a_line_the_configuration_cannot_parse_says_why(client, instrument):
    body = preview(client, kind="file", sample_text=SAMPLE, config={"timestamp": {"format": "epoch"}}).json()
    assert body["rows"][0]["error"].startswith("line not parsed: timestamp '2024-05-06T14:30:00' is not a number")


def test_an_unknown_option_is_named_with_a_did_you_mean(client, instrument):
    body = preview(client, kind="file", sample_text=SAMPLE, config={"delimeter": ";"}).json()
    assert body["errors"] == {"delimeter": "unknown option (did you mean 'delimiter'?)"}


def test_the_first_lines_of_a_file_in_the_source_folder(client, instrument, tmp_path):
    (tmp_path / "old.csv").write_text("nothing,here\n")
    newest = tmp_path / "today.csv"
    newest.write_text(SAMPLE)
    os.utime(tmp_path / "old.csv", (1, 1))
    body = preview(client, kind="file", config={"path": str(tmp_path), "pattern": "*.csv"}).json()
    assert body["sample"]["origin"] == "file today.csv"
    assert body["errors"] == {} and len(body["rows"]) == 4


@pytest.mark.parametrize("folder", ["/etc", "outside"])
def test_a_folder_outside_the_roots_is_refused_before_anything_is_read(client, instrument, tmp_path, settings, folder):
    settings.DAQBROKER_FILE_ROOTS = [str(tmp_path / "roots")]
    if folder == "outside":
        (tmp_path / "outside").mkdir()
        (tmp_path / "outside" / "secret.csv").write_text("SECRET-LINE,1\n")
        folder = str(tmp_path / "outside")
    response = preview(client, kind="file", config={"path": folder, "pattern": "*"})
    assert response.status_code == 400
    assert "DAQBROKER_FILE_ROOTS" in response.json()["detail"]
    assert response.json()["field"] == "config.path"
    assert b"SECRET-LINE" not in response.content and b"root:" not in response.content


def test_a_symlink_in_the_folder_leading_outside_the_roots_is_refused(client, instrument, tmp_path, settings):
    (tmp_path / "roots").mkdir()
    (tmp_path / "outside.csv").write_text("SECRET-LINE,1\n")
    (tmp_path / "roots" / "link.csv").symlink_to(tmp_path / "outside.csv")
    settings.DAQBROKER_FILE_ROOTS = [str(tmp_path / "roots")]
    response = preview(client, kind="file", config={"path": str(tmp_path / "roots")})
    assert response.status_code == 400 and b"SECRET-LINE" not in response.content


def test_the_servers_own_files_are_refused_even_to_an_administrator(instrument, settings):
    admin = make_user("root-person", is_superuser=True, is_staff=True)
    client = APIClient()
    client.force_authenticate(admin)
    response = preview(client, kind="file", config={"path": str(settings.BASE_DIR), "pattern": "manage.py"})
    assert response.status_code == 400 and "program folder" in response.json()["detail"]


def test_someone_who_may_not_change_the_instrument_gets_no_preview(instrument):
    viewer = make_user("vic")
    client = APIClient()
    client.force_authenticate(viewer)
    response = preview(client, kind="file", sample_text=SAMPLE)
    assert response.status_code == 400 and "instrument" in response.json()


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty"), (b"\x00\x01\x02PK\x03\x04" * 100, "binary"), (b"\n\n  \n", "empty")],
)
def test_a_sample_that_is_no_text_is_refused_with_a_message(client, instrument, content, message):
    response = upload(client, content, kind="file")
    assert response.status_code == 400 and message in response.json()["detail"], response.content


def test_a_too_large_upload_is_refused_by_its_size_before_it_is_read(client, instrument):
    response = upload(client, b"2024-05-06T14:30:00,1\n" * (5 * 1024 * 1024 // 22), kind="file")
    assert response.status_code == 413
    assert "may be at most 2 MB" in response.json()["detail"]


def test_a_large_sample_is_read_up_to_its_bound(client, instrument):
    lines = [f"2024-05-06T14:30:00,{i}" for i in range(70_000)]
    body = upload(client, "\n".join(lines).encode(), kind="file").json()
    assert body["sample"]["truncated"] and body["sample"]["lines"] == 5000
    assert len(body["rows"]) == 20


# --- serial and TCP: "Test connection" ----------------------------------------------------------------


def test_test_connection_reads_a_real_serial_port(client, instrument, pty_instrument):
    device = pty_instrument(lambda request: ["2024-05-06T14:30:00,12.5", "2024-05-06T14:31:00,12.6"])
    config = {"url": device.path, "request": "R\n", "response_lines": 2, "timeout": 2}
    body = preview(client, kind="serial", config=config, connect=True).json()
    assert body["sample"]["origin"] == f"connection {device.path}"
    assert [row["values"][0]["value"] for row in body["rows"]] == [12.5, 12.6]
    assert device.requests == [b"R"]


def test_test_connection_on_pyserials_loop(client, instrument):
    config = {"url": "loop://", "request": "2024-05-06T14:30:00,7.5\n", "timeout": 0.5}
    body = preview(client, kind="serial", config=config, connect=True).json()
    assert body["raw"] == ["2024-05-06T14:30:00,7.5"]
    assert body["rows"][0]["values"][0]["value"] == 7.5


def test_test_connection_reads_a_real_tcp_instrument(client, instrument, tcp_instrument):
    server = tcp_instrument(lambda _: [f"2024-05-06T14:3{i}:00,{i}.5" for i in range(5)], stream=True)
    body = preview(client, kind="tcp", config={"host": "127.0.0.1", "port": server.port}, connect=True).json()
    assert [row["values"][0]["value"] for row in body["rows"]] == [0.5, 1.5, 2.5, 3.5, 4.5]


def test_a_connection_reads_a_bounded_number_of_lines(client, instrument, tcp_instrument):
    server = tcp_instrument(lambda _: [f"2024-05-06T14:30:00,{i}" for i in range(500)], stream=True)
    body = preview(client, kind="tcp", config={"host": "127.0.0.1", "port": server.port}, connect=True).json()
    assert body["sample"]["lines"] == 50


def test_an_unreachable_port_is_a_message(client, instrument):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: nothing answers
        response = preview(client, kind="tcp", config={"host": "127.0.0.1", "port": port}, connect=True)
    assert response.status_code == 400
    assert response.json()["detail"].startswith(f"Cannot connect to 127.0.0.1:{port}")


def test_an_address_off_the_allow_list_is_never_connected_to(client, instrument, tcp_instrument, settings):
    settings.DAQBROKER_NETWORK_ALLOW = []
    server = tcp_instrument(lambda _: ["SECRET,1"], stream=True)
    response = preview(client, kind="tcp", config={"host": "127.0.0.1", "port": server.port}, connect=True)
    assert response.status_code == 400 and "DAQBROKER_NETWORK_ALLOW" in response.json()["detail"]
    assert server.connections == 0


def test_a_serial_device_off_the_list_is_refused_to_a_non_administrator(client, instrument, settings):
    settings.DAQBROKER_SERIAL_DEVICES = []
    response = preview(client, kind="serial", config={"url": "/dev/ttyS0"}, connect=True)
    assert response.status_code == 400 and "DAQBROKER_SERIAL_DEVICES" in response.json()["detail"]


def test_the_serial_ports_listed_are_those_the_person_may_use(client, settings):
    settings.DAQBROKER_SERIAL_DEVICES = []
    ports = client.get(reverse("api:serial-ports")).json()["ports"]
    assert ports == []  # none listed in DAQBROKER_SERIAL_DEVICES, and olga is no administrator


def test_an_agents_reported_serial_ports_are_listed_for_its_owner_only(owner):
    from accounts.services import create_agent

    agent, token = create_agent(owner=owner, name="field-pc", actor=owner)
    ports = [{"device": "/dev/ttyUSB0", "description": "FT232R USB UART"}]
    beat = APIClient()
    beat.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert beat.post(reverse("api:agent-heartbeat"), {"serial_ports": ports}, format="json").status_code == 200
    mine = APIClient()
    mine.force_authenticate(owner)
    url = reverse("api:serial-ports")
    body = mine.get(url, {"agent": agent.pk}).json()
    assert body["agent"] == "field-pc" and body["ports"] == ports
    other = APIClient()
    other.force_authenticate(make_user("eddie"))
    assert other.get(url, {"agent": agent.pk}).status_code == 404
    assert mine.get(url, {"agent": "x"}).status_code == 404
    assert beat.get(url).status_code == 403  # an agent token lists nothing
