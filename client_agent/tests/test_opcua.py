"""OPC UA sources (``daqbroker_agent.opcua``): configuration, status mapping, and the subscription against a
real asyncua server started by the test (``opcua_server``), restarted to see the client reconnect."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from daqbroker_agent.config import ConfigError, validate_source_config
from daqbroker_agent.opcua import Change, ChangeMapper, OpcUaSession, severity, status_name

pytestmark = pytest.mark.engine_independent

BAD_SENSOR = 0x808C0000  # BadSensorFailure
UNCERTAIN_LAST = 0x40900000  # UncertainLastUsableValue


def opcua_config(**overrides) -> dict:
    raw = {"host": "127.0.0.1", "nodes": [{"node": "ns=2;s=temperature", "name": "t"}], **overrides}
    return validate_source_config("opcua", raw)


def test_the_configuration_is_checked_and_completed_when_saved():
    config = opcua_config()
    assert config["port"] == 4840 and config["publishing_interval"] == 1000 and config["path"] == ""
    refusals = {
        "nodes[0].node": {"nodes": [{"node": "temperature", "name": "t"}]},
        "nodes[1].name": {"nodes": [{"node": "ns=2;i=1", "name": "t"}, {"node": "ns=2;i=2", "name": "t"}]},
        "nodes": {"nodes": []},
        "password_env": {"username": "op", "password_env": "HOME"},
        "username": {"username": "op"},
        "path": {"path": "no-slash"},
        "publishing_interval": {"publishing_interval": 1},
        "port": {"port": 0},
    }
    for field, overrides in refusals.items():
        with pytest.raises(ConfigError) as caught:
            opcua_config(**overrides)
        assert caught.value.field == field, (field, str(caught.value))
    with pytest.raises(ConfigError, match="ns=2;i=7"):
        opcua_config(nodes=[{"node": "x", "name": "t"}])
    for node in (
        "ns=2;i=7",
        "i=2258",
        "ns=3;s=Boiler.Temperature",
        "nsu=urn:x;s=a",
        "g=" + "0" * 8 + "-0000-0000-0000-" + "0" * 12,
    ):
        assert opcua_config(nodes=[{"node": node, "name": "t"}])["nodes"][0]["node"] == node


def test_status_codes_map_to_stored_flagged_or_quarantined():
    mapper = ChangeMapper(opcua_config())
    assert (severity(0), severity(UNCERTAIN_LAST), severity(BAD_SENSOR)) == ("good", "uncertain", "bad")
    assert status_name(BAD_SENSOR) == "BadSensorFailure"
    assert status_name(0x80FF1234).startswith("0x")  # a code asyncua does not know
    source, server = 1_700_000_000_000_000, 1_700_000_001_000_000

    def change(value, status=0, source_us=source):
        return Change("ns=2;s=temperature", value, status, source_us, server, 1_700_000_002_000_000)

    assert mapper.map(change(21.5)) == ([("t", source, 21.5, False)], [])
    assert mapper.map(change(True, source_us=None)) == ([("t", server, 1.0, False)], [])
    assert mapper.map(change(3, UNCERTAIN_LAST)) == ([("t", source, 3.0, True)], [])
    assert mapper.map(change("open")) == ([("t", source, "open", False)], [])
    readings, problems = mapper.map(change(None, BAD_SENSOR))
    assert readings == [] and problems[0].reason == "ns=2;s=temperature: status BadSensorFailure (bad): not stored"
    assert problems[0].context["node"] == "ns=2;s=temperature"
    for odd in ([1.0, 2.0], float("nan"), b"\x00"):
        readings, problems = mapper.map(change(odd))
        assert readings == [] and problems[0].reason.startswith("ns=2;s=temperature: ")
    assert mapper.map(Change("ns=2;s=other", 1.0, 0, None, None, 1)) == ([], [])


def wait_changes(session: OpcUaSession, count: int, timeout: float = 30) -> list[Change]:
    import time

    got: list[Change] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got.extend(session.take(0.5))
    return got


def test_a_subscription_delivers_source_times_and_statuses_and_survives_a_server_restart(opcua_server):
    from conftest import wait_for

    config = opcua_config(
        port=opcua_server.port,
        path="/daqbroker-test/",
        publishing_interval=50,
        nodes=[
            {"node": opcua_server.node("temperature"), "name": "t"},
            {"node": opcua_server.node("pressure"), "name": "p"},
            {"node": "ns=2;s=no-such-node", "name": "x"},
        ],
    )
    session = OpcUaSession(config)
    session.start()
    try:
        wait_for(session.subscribed.is_set, timeout=30, message="subscribed")
        assert "nodes refused: ns=2;s=no-such-node: BadNodeIdUnknown" in session.last_error  # the others are read
        initial = wait_changes(session, 2)  # the values at subscription time
        assert {c.node for c in initial} == {"ns=2;s=temperature", "ns=2;s=pressure"}
        at = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
        opcua_server.write("temperature", 21.5, source_time=at)
        opcua_server.write("pressure", 0.0, status=BAD_SENSOR, source_time=at)
        changes = wait_changes(session, 2)
        by_node = {c.node: c for c in changes}
        assert by_node["ns=2;s=temperature"].value == 21.5
        assert by_node["ns=2;s=temperature"].ts == int(at.timestamp() * 1_000_000)
        assert severity(by_node["ns=2;s=pressure"].status) == "bad"

        opcua_server.restart()
        wait_for(lambda: session.connections >= 2 and session.subscribed.is_set(), timeout=60, message="reconnected")
        session.take(0.5)
        opcua_server.write("temperature", 22.5)
        after = wait_changes(session, 1)
        assert any(c.value == 22.5 for c in after), after
    finally:
        session.stop()


def make_certificate(directory, name: str, uri: str):
    """A self-signed application certificate (DER) and its key (PEM), as an administrator would make them.

    asyncua's generator is a coroutine: it runs on a thread of its own, since the test's thread may already
    run an event loop (a browser test's Playwright, still open in the same test worker)."""
    import asyncio
    import concurrent.futures

    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    certificate, key = directory / f"{name}.der", directory / f"{name}-key.pem"
    use = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    made = setup_self_signed_certificate(key, certificate, uri, "localhost", use, {"commonName": name})
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as thread:
        thread.submit(asyncio.run, made).result(timeout=120)
    return certificate, key


def test_a_secured_endpoint_is_read_with_a_client_certificate_and_refuses_one_without(tmp_path):
    """Basic256Sha256, signed and encrypted, against an asyncua server that offers nothing else: with the
    client's certificate and key the values arrive; with no security the connection fails, and says why."""
    from conftest import OpcUaTestServer, wait_for

    server = OpcUaTestServer(secured=make_certificate(tmp_path, "server", "urn:daqbroker:test")).start()
    certificate, key = make_certificate(tmp_path, "client", "urn:daqbroker:client")
    try:
        server.write("temperature", 23.5)
        nodes = [{"node": server.node("temperature"), "name": "t"}]
        common = {"port": server.port, "path": "/daqbroker-test/", "publishing_interval": 50, "timeout": 5}
        plain = OpcUaSession(opcua_config(**common, nodes=nodes))
        plain.start()
        try:
            wait_for(lambda: plain.last_error, timeout=60, message="the unsecured connection refused")
            assert not plain.subscribed.is_set()
        finally:
            plain.stop()

        secured = OpcUaSession(
            opcua_config(
                **common,
                nodes=nodes,
                security_policy="Basic256Sha256",
                security_mode="SignAndEncrypt",
                certificate=str(certificate),
                private_key=str(key),
            )
        )
        secured.start()
        try:
            wait_for(secured.subscribed.is_set, timeout=60, message=f"subscribed securely: {secured.last_error}")
            (change,) = wait_changes(secured, 1)
            assert (change.node, change.value) == (server.node("temperature"), 23.5)
        finally:
            secured.stop()
    finally:
        server.stop()


def test_security_options_are_checked_together():
    with pytest.raises(ConfigError) as refused:
        opcua_config(security_policy="Basic256Sha256")
    assert refused.value.field == "certificate"
    with pytest.raises(ConfigError) as refused:
        opcua_config(certificate="/etc/opcua/client.der")
    assert refused.value.field == "certificate" and "only applies" in refused.value.message
    with pytest.raises(ConfigError) as refused:
        opcua_config(security_policy="Basic256Sha256", certificate="client.der", private_key="/k.pem")
    assert refused.value.field == "certificate" and "absolute" in refused.value.message
    with pytest.raises(ConfigError) as refused:
        opcua_config(security_policy="Basic128Rsa15")  # deprecated and broken: not offered
    assert refused.value.field == "security_policy"
    config = opcua_config(security_policy="Aes256_Sha256_RsaPss", certificate="/c.der", private_key="/k.pem")
    assert config["security_mode"] == "SignAndEncrypt" and config["server_certificate"] == ""
