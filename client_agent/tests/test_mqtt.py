"""MQTT sources (``daqbroker_agent.mqtt``): configuration, topic and payload mapping, and the session against a
real mosquitto broker (a private one, so that it can be restarted)."""

from __future__ import annotations

import uuid

import pytest

from daqbroker_agent.config import ConfigError, validate_source_config
from daqbroker_agent.mqtt import Message, MessageMapper, MqttSession, default_client_id, topic_matches

pytestmark = pytest.mark.engine_independent


def mqtt_config(**overrides) -> dict:
    raw = {"host": "127.0.0.1", "fields": [{"name": "t", "topic": "lab/+/temperature"}], **overrides}
    return validate_source_config("mqtt", raw)


def publish(host: str, port: int, topic: str, payload: str | bytes) -> None:
    from paho.mqtt import publish as paho_publish

    paho_publish.single(topic, payload, qos=1, hostname=host, port=port)


def test_topic_filters_match_as_mqtt_says():
    assert topic_matches("lab/+/temperature", "lab/room1/temperature")
    assert not topic_matches("lab/+/temperature", "lab/room1/b/temperature")
    assert topic_matches("lab/#", "lab") and topic_matches("lab/#", "lab/a/b")
    assert topic_matches("#", "anything/at/all") and not topic_matches("#", "$SYS/broker/uptime")
    assert not topic_matches("lab/room1", "lab/room1/x")


def test_the_configuration_is_checked_and_completed_when_saved():
    config = mqtt_config()
    assert config["port"] == 1883 and config["qos"] == 1 and config["fields"][0]["path"] == ""
    assert config["timestamp"] == {"path": "", "format": "iso", "timezone": "UTC"}
    refusals = {
        "fields[0].topic": {"fields": [{"name": "t", "topic": "lab/#/x"}]},
        "fields[1].name": {"fields": [{"name": "t", "topic": "a"}, {"name": "t", "topic": "b"}]},
        "fields[0].path": {"fields": [{"name": "t", "topic": "a", "path": "data..t"}]},
        "password_env": {"username": "u", "password_env": "DAQBROKER_SECRET_KEY"},
        "qos": {"qos": 3},
        "timestamp.format": {"timestamp": {"path": "ts", "format": "%d/%m %H:%M"}},
        "fields[0].topix": {"fields": [{"name": "t", "topix": "a"}]},
    }
    for field, overrides in refusals.items():
        with pytest.raises(ConfigError) as refused:
            mqtt_config(**overrides)
        assert refused.value.field == field, refused.value
    with pytest.raises(ConfigError, match="needs a username"):
        mqtt_config(password_env="MQTT_PASSWORD_LAB")
    assert mqtt_config(username="u", password_env="MQTT_PASSWORD_LAB")["password_env"] == "MQTT_PASSWORD_LAB"


def test_topics_and_payload_paths_become_readings_and_bad_payloads_problems():
    config = mqtt_config(
        fields=[
            {"name": "t", "topic": "lab/+/env", "path": "data.temperature"},
            {"name": "rh", "topic": "lab/+/env", "path": "data.rh"},
            {"name": "first", "topic": "lab/+/env", "path": "values.0"},
            {"name": "plain", "topic": "lab/plain"},
        ],
        timestamp={"path": "ts", "format": "epoch"},
    )
    mapper = MessageMapper(config)
    assert mapper.topic_filters == ["lab/+/env", "lab/plain"]
    env = b'{"ts": 1700000000.5, "data": {"temperature": 21.5, "rh": "dry"}, "values": [7, 8]}'
    readings, problems = mapper.map(Message("lab/room1/env", env, received_us=1))
    assert readings == [("t", 1_700_000_000_500_000, 21.5), ("rh", 1_700_000_000_500_000, "dry"),
                        ("first", 1_700_000_000_500_000, 7.0)]  # fmt: skip
    assert problems == []
    assert mapper.map(Message("lab/other", b"1", 1)) == ([], [])  # a topic no field takes

    def reasons(payload: bytes, topic: str = "lab/room1/env") -> list[str]:
        return [p.reason for p in mapper.map(Message(topic, payload, 5))[1]]

    assert reasons(b"{not json") == [reasons(b"{not json")[0]] and "not JSON" in reasons(b"{not json")[0]
    assert "timestamp.path 'ts' is missing" in reasons(b'{"data": {}}')[0]
    assert "is not a number" in reasons(b'{"ts": "soon"}')[0]
    missing = mapper.map(Message("lab/room1/env", b'{"ts": 1, "data": {"temperature": {"x": 1}}, "values": []}', 5))
    assert [r[0] for r in missing[0]] == []
    assert [(p.field, p.topic) for p in missing[1]] == [("t", "lab/room1/env"), ("rh", "lab/room1/env"),
                                                         ("first", "lab/room1/env")]  # fmt: skip
    assert "holds an object" in missing[1][0].reason and "is missing" in missing[1][1].reason
    assert missing[1][0].context == {"topic": "lab/room1/env", "received": 5, "field": "t"}
    assert "not utf-8" in reasons(b"\xff\xfe", "lab/plain")[0]

    plain = MessageMapper(mqtt_config(fields=[{"name": "p", "topic": "x"}]))
    assert plain.map(Message("x", b" 12.25\n", 9))[0] == [("p", 9, 12.25)]
    assert plain.map(Message("x", b"OPEN", 9))[0] == [("p", 9, "OPEN")]  # text channels take it; numeric refuse
    assert plain.map(Message("x", b"", 9))[1][0].reason == "payload is empty"


def test_the_session_keeps_what_was_not_acknowledged_and_survives_a_broker_restart(private_mosquitto):
    broker = private_mosquitto()
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    config = mqtt_config(port=broker.port, fields=[{"name": "v", "topic": f"{prefix}/#"}])
    client_id = default_client_id(f"test:{prefix}")

    first = MqttSession(config, client_id)
    first.start()
    assert first.subscribed.wait(10)
    publish(broker.host, broker.port, f"{prefix}/a", "1")
    taken = first.take(10)
    assert [m.payload for m in taken] == [b"1"]
    first.stop()  # stopped before acknowledging: the broker keeps message 1 for the session

    publish(broker.host, broker.port, f"{prefix}/a", "2")  # published while no collector listens
    broker.restart()  # the session and its queued messages outlive the broker's restart (persistence)

    second = MqttSession(config, client_id)
    second.start()
    try:
        got: list[bytes] = []
        for _ in range(50):
            messages = second.take(0.5)
            second.ack(messages)
            got += [m.payload for m in messages]
            if len(got) >= 2:
                break
        assert sorted(got) == [b"1", b"2"]

        broker.restart()  # while connected: paho reconnects by itself (1 s, doubling)
        assert second.subscribed.wait(20)
        publish(broker.host, broker.port, f"{prefix}/b", "3")
        after: list[bytes] = []
        for _ in range(30):  # an acknowledgement the broker had not handled before it stopped: sent again
            messages = second.take(0.5)
            second.ack(messages)
            after += [m.payload for m in messages]
            if b"3" in after:
                break
        assert b"3" in after and set(after) <= {b"1", b"2", b"3"}
        assert second.connections == 2
    finally:
        second.stop()
