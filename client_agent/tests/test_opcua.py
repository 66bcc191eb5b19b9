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
