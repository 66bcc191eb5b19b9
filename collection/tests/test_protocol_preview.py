"""The guided setup's preview of Modbus, MQTT and OPC UA sources (``POST /api/v1/sources/preview/`` with
their kinds): one channel proposed per entry, configuration errors keyed by the option at fault, and "Test
connection" reading a few live values from the real counterparts (pymodbus's server, a private mosquitto,
an asyncua server) through the one target check, which decides before anything is opened."""

from __future__ import annotations

import json
import struct
import uuid

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from instruments.tests.factories import make_instrument, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner():
    return make_user("olga")


@pytest.fixture
def instrument(owner):
    return make_instrument(owner=owner, slug="plant")


@pytest.fixture
def client(owner):
    client = APIClient()
    client.force_authenticate(owner)
    return client


def preview(client, **data):
    data.setdefault("instrument", "plant")
    return client.post(reverse("api:source-preview"), data, format="json")


def float32_words(value: float) -> list[int]:
    data = struct.pack(">f", value)
    return [int.from_bytes(data[0:2], "big"), int.from_bytes(data[2:4], "big")]


REGISTERS = [
    {"field": "temperature", "address": 0, "type": "float32"},
    {"field": "flow", "address": 2, "type": "int16", "scale": 0.5},
    {"field": "absent", "address": 50, "function": "input"},
]


def values(row: dict) -> dict:
    return {v["slug"]: v.get("value") for v in row["values"] if v["stored"]}


def test_a_modbus_test_connection_reads_the_register_map_once(client, instrument, modbus_device):
    device = modbus_device(holding=[*float32_words(21.5), 40], input=[1])
    config = {"host": "127.0.0.1", "port": device.port, "registers": REGISTERS}
    proposed = preview(client, kind="modbus", config=config).json()
    assert [c["slug"] for c in proposed["proposal"]["channels"]] == ["temperature", "flow", "absent"]
    assert proposed["rows"] == [] and proposed["errors"] == {} and not device.requests  # nothing read yet

    body = preview(client, kind="modbus", config=config, connect=True).json()
    (row,) = body["rows"]
    assert values(row) == {"temperature": 21.5, "flow": 20.0}
    assert "absent (input register 50 (uint16))" in row["error"] and "illegal" in row["error"].lower()
    assert body["sample"]["origin"].startswith("connection ") and "connect_address" not in body["config"]


def test_a_modbus_device_that_never_answers_is_a_message(client, instrument, modbus_device):
    device = modbus_device.silent()
    config = {"host": "127.0.0.1", "port": device.port, "timeout": 0.3, "registers": REGISTERS[:1]}
    response = preview(client, kind="modbus", config=config, connect=True)
    assert response.status_code == 400 and response.json()["field"] == "connection"
    assert "did not answer" in response.json()["detail"]


def test_configuration_errors_are_keyed_by_the_option_at_fault(client, instrument):
    bad = {"host": "127.0.0.1", "registers": [{"field": "t", "address": 0, "type": "float33"}]}
    body = preview(client, kind="modbus", config=bad).json()
    assert list(body["errors"]) == ["registers[0].type"]
    refused = preview(client, kind="modbus", config=bad, connect=True)
    assert refused.status_code == 400 and refused.json()["field"] == "config.registers[0].type"
    topic = preview(client, kind="mqtt", config={"host": "127.0.0.1", "fields": [{"name": "t", "topic": "a/#/b"}]})
    assert list(topic.json()["errors"]) == ["fields[0].topic"]
    node = preview(client, kind="opcua", config={"host": "127.0.0.1", "nodes": [{"node": "nope", "name": "t"}]})
    assert list(node.json()["errors"]) == ["nodes[0].node"]
    sample = client.post(
        reverse("api:source-preview"),
        {"instrument": "plant", "kind": "mqtt", "sample_text": "1,2\n", "config": "{}"},
        format="multipart",
    )
    assert sample.status_code == 400 and "Test connection" in sample.json()["detail"]


def test_an_mqtt_test_connection_shows_messages_on_a_session_of_its_own(client, instrument, private_mosquitto):
    from paho.mqtt import publish

    broker = private_mosquitto()
    prefix = f"plant-{uuid.uuid4().hex[:8]}"
    # Retained: the broker hands them to a new subscriber at once (a sensor that publishes rarely).
    publish.single(f"{prefix}/tank/level", json.dumps({"level": 3.25}), qos=1, retain=True,
                   hostname=broker.host, port=broker.port)  # fmt: skip
    publish.single(f"{prefix}/pump/level", b"{oops", qos=1, retain=True, hostname=broker.host, port=broker.port)
    config = {
        "host": broker.host,
        "port": broker.port,
        "fields": [{"name": "level", "topic": f"{prefix}/+/level", "path": "level"}],
    }
    body = preview(client, kind="mqtt", config=config, connect=True).json()
    rows = {row["text"].split(":")[0]: row for row in body["rows"]}
    assert values(rows[f"{prefix}/tank/level"]) == {"level": 3.25}
    assert "payload is not JSON" in rows[f"{prefix}/pump/level"]["error"]
    # A clean session of its own (never the source's persistent one): a second look sees the same messages.
    again = preview(client, kind="mqtt", config=config, connect=True).json()
    assert sorted(row["text"] for row in again["rows"]) == sorted(row["text"] for row in body["rows"])


def test_an_opc_ua_test_connection_shows_each_nodes_current_value(client, instrument, opcua_server):
    opcua_server.write("temperature", 21.25)
    opcua_server.write("pressure", 1.5, status=0x40000000)  # Uncertain
    config = {
        "host": opcua_server.host,
        "port": opcua_server.port,
        "path": "/daqbroker-test/",
        "nodes": [
            {"node": opcua_server.node("temperature"), "name": "temperature"},
            {"node": opcua_server.node("pressure"), "name": "pressure"},
        ],
    }
    body = preview(client, kind="opcua", config=config, connect=True).json()
    assert body.get("detail") is None, body
    by_node = {row["text"].split(": ")[0]: row for row in body["rows"]}
    temperature = by_node[opcua_server.node("temperature")]
    assert values(temperature) == {"temperature": 21.25}
    assert "uncertain" in by_node[opcua_server.node("pressure")]["error"].lower()


@pytest.mark.parametrize("kind", ["modbus", "mqtt", "opcua"])
def test_an_address_off_the_allow_list_is_never_connected_to(client, instrument, settings, kind, modbus_device):
    settings.DAQBROKER_NETWORK_ALLOW = []
    device = modbus_device(holding=[1])
    entries = {
        "modbus": {"registers": [{"field": "t", "address": 0}]},
        "mqtt": {"fields": [{"name": "t", "topic": "a/b"}]},
        "opcua": {"nodes": [{"node": "ns=2;s=t", "name": "t"}]},
    }[kind]
    response = preview(client, kind=kind, config={"host": "127.0.0.1", "port": device.port, **entries}, connect=True)
    assert response.status_code == 400 and "DAQBROKER_NETWORK_ALLOW" in response.json()["detail"]
    assert response.json()["field"] == "config.host" and device.requests == []


def test_a_password_from_the_servers_environment_is_for_administrators_only(client, instrument, private_mosquitto):
    broker = private_mosquitto()
    config = {
        "host": broker.host,
        "port": broker.port,
        "username": "lab",
        "password_env": "MQTT_PASSWORD_LAB",
        "fields": [{"name": "t", "topic": "a/b"}],
    }
    response = preview(client, kind="mqtt", config=config, connect=True)
    assert response.status_code == 400 and response.json()["field"] == "config.password_env"
    assert "administrator" in response.json()["detail"]


def test_a_secured_opc_ua_endpoint_is_tested_by_an_administrator_with_the_client_certificate(
    client, instrument, tmp_path
):
    """The key files are the collecting host's: a co-owner is refused before anything is opened; an
    administrator's Test connection signs and encrypts (Basic256Sha256) and shows the value."""
    from client_agent.tests.test_opcua import make_certificate
    from conftest import OpcUaTestServer

    server = OpcUaTestServer(secured=make_certificate(tmp_path, "server", "urn:daqbroker:test")).start()
    certificate, key = make_certificate(tmp_path, "client", "urn:daqbroker:client")
    try:
        server.write("temperature", 24.5)
        config = {
            "host": server.host,
            "port": server.port,
            "path": "/daqbroker-test/",
            "security_policy": "Basic256Sha256",
            "certificate": str(certificate),
            "private_key": str(key),
            "nodes": [{"node": server.node("temperature"), "name": "t"}],
        }
        refused = preview(client, kind="opcua", config=config, connect=True)
        assert refused.status_code == 400 and refused.json()["field"] == "config.certificate"
        assert "only an administrator" in refused.json()["detail"]
        admin = APIClient()
        admin.force_authenticate(make_user("ada", is_superuser=True))
        body = preview(admin, kind="opcua", config=config, connect=True).json()
        assert [values(row) for row in body["rows"]] == [{"t": 24.5}], body
    finally:
        server.stop()
