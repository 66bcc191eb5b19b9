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


def test_a_redelivery_keeps_its_first_receipt_time_through_the_spool_and_a_broker_restart(private_mosquitto, tmp_path):
    """What the agent's MQTT source does: stamp, spool the readings with the receipts as the cursor, ack.
    Stopped after spooling and before acknowledging, the broker (restarted) sends the messages again with the
    DUP flag: stamped from the spooled receipts they keep their first time (an exact duplicate at the
    server), while the same payload published anew is a reading of its own."""
    from daqbroker_agent.mqtt import Receipts
    from daqbroker_agent.spool import Spool

    broker = private_mosquitto()
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    config = mqtt_config(port=broker.port, fields=[{"name": "v", "topic": f"{prefix}/#"}])
    client_id = default_client_id(f"test:{prefix}")
    spool = Spool(tmp_path / "spool")
    mapper = MessageMapper(config)

    def take(session: MqttSession, count: int) -> list[Message]:
        taken: list[Message] = []
        for _ in range(60):
            taken += session.take(0.5)
            if len(taken) >= count:
                break
        return taken

    first = MqttSession(config, client_id)
    first.start()
    try:
        assert first.subscribed.wait(20)
        publish(broker.host, broker.port, f"{prefix}/a", "1")
        publish(broker.host, broker.port, f"{prefix}/a", "2")
        receipts = Receipts(spool.get("cursor:mqtt"))
        stamped = receipts.stamp(take(first, 2))
        readings = [r for m in stamped for r in mapper.map(m)[0]]
        spool.add(readings, cursor=("cursor:mqtt", receipts.as_json()))
    finally:
        first.stop()  # spooled, not acknowledged
    broker.restart()

    second = MqttSession(config, client_id)
    second.start()
    try:
        again = take(second, 2)
        assert [(m.payload, m.dup) for m in again] == [(b"1", True), (b"2", True)]
        receipts = Receipts(spool.get("cursor:mqtt"))
        restamped = receipts.stamp(again)
        assert [r for m in restamped for r in mapper.map(m)[0]] == readings  # the same times: duplicates
        second.ack(again)
        publish(broker.host, broker.port, f"{prefix}/a", "2")  # the same payload, published anew
        (new,) = take(second, 1)
        assert not new.dup
        assert receipts.stamp([new])[0].received_us == new.received_us > readings[-1][1]  # a reading of its own
    finally:
        second.stop()
        spool.close()


def test_receipts_survive_their_json_and_forget_the_oldest():
    from daqbroker_agent.mqtt import RECEIPTS_KEPT, Receipts

    receipts = Receipts({"7": ["abc", 5], "x": ["bad"], "8": "damaged"})  # damaged entries are skipped
    assert receipts.as_json() == {"7": ["abc", 5]}
    for mid in range(1, RECEIPTS_KEPT + 10):
        receipts.stamp([Message("t", str(mid).encode(), 1000 + mid, mid=mid, qos=1)])
    kept = receipts.as_json()
    assert len(kept) == RECEIPTS_KEPT and "1" not in kept and kept[str(RECEIPTS_KEPT + 9)][1] == 1009 + RECEIPTS_KEPT
    again = Message("t", b"100", 99_999, mid=100, qos=1, dup=True)
    assert Receipts(kept).stamp([again])[0].received_us == 1100
    other = Message("t", b"something else", 99_999, mid=100, qos=1, dup=True)  # not the message remembered
    assert Receipts(kept).stamp([other])[0].received_us == 99_999
    assert Receipts(kept).stamp([Message("t", b"100", 5, mid=100, qos=0, dup=True)])[0].received_us == 5
