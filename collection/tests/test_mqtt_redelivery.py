"""A QoS 1 message the broker sends again after a reconnection (here: its own restart) is an exact duplicate,
never a second reading nor a conflict: the stream collector's one store step (``collection.streams.
store_messages``) with a real private mosquitto, its redelivery's DUP flag and packet id. Engine-dependent:
the receipts are kept in the source's cursor, in the same transaction as the readings."""

from __future__ import annotations

import uuid

import pytest
from django.utils import timezone

from collection.models import CollectionRun, RejectedSample, Sample
from collection.services.collect import _new_owner, _take_lease
from collection.streams import store_messages
from daqbroker_agent.mqtt import MessageMapper, MqttSession
from instruments.choices import SourceKind
from instruments.models import DataSource
from instruments.tests.factories import make_channel, make_instrument, make_user

pytestmark = [pytest.mark.django_db(transaction=True)]


def take(session: MqttSession, count: int) -> list:
    taken: list = []
    for _ in range(60):  # up to 30 s: each take waits at most 0.5 s for a message
        taken += session.take(0.5)
        if len(taken) >= count:
            break
    return taken


def test_a_message_sent_again_after_the_broker_restarts_is_an_exact_duplicate(private_mosquitto):
    from paho.mqtt import publish as paho_publish

    broker = private_mosquitto()
    topic = f"daqbroker-test/{uuid.uuid4().hex[:12]}/flow"
    instrument = make_instrument(make_user(), slug="pump")
    source = DataSource.objects.create(
        instrument=instrument,
        name="flow meter",
        kind=SourceKind.MQTT,
        # Plain-number payloads, timed by their receipt: only the remembered receipt keeps a redelivery's time.
        config={"host": broker.host, "port": broker.port, "fields": [{"name": "flow", "topic": topic}]},
    )
    channel = make_channel(instrument, slug="flow", source=source, source_field="flow")
    config = source.validated_config()
    owner = _new_owner()
    assert _take_lease(source.pk, owner, timezone.now()).taken
    run = CollectionRun.objects.create(source=source, started_at=timezone.now(), worker="test")
    mapper = MessageMapper(config)
    by_field = {"flow": [channel.pk]}
    client_id = f"daqbroker-test-{uuid.uuid4().hex[:12]}"

    first = MqttSession(config, client_id)
    first.start()
    try:
        assert first.subscribed.wait(20)
        for value in ("1.5", "2.5"):
            paho_publish.single(topic, value, qos=1, hostname=broker.host, port=broker.port)
        received = take(first, 2)
        assert [m.dup for m in received] == [False, False]
        cursor: dict = {}
        stored = store_messages(source.pk, owner, run.pk, mapper, by_field, received, cursor)
        assert (stored.accepted, stored.duplicates) == (2, 0)
    finally:
        first.stop()  # stored, never acknowledged: as if the collector died between its commit and the ack

    broker.restart()
    cursor = DataSource.objects.get(pk=source.pk).cursor  # what a new runner reads: the committed cursor
    second = MqttSession(config, client_id)
    second.start()
    try:
        again = take(second, 2)
        assert [(m.payload, m.dup) for m in again] == [(b"1.5", True), (b"2.5", True)]
        assert [m.received_us for m in again] != [m.received_us for m in received]  # received anew...
        result = store_messages(source.pk, owner, run.pk, mapper, by_field, again, cursor)
        second.ack(again)
    finally:
        second.stop()

    assert (result.accepted, result.duplicates, result.conflicts, result.rejected_count) == (0, 2, 0, 0)
    rows = list(Sample.objects.filter(channel=channel).order_by("ts").values_list("ts", "value"))
    assert rows == [(received[0].received_us, 1.5), (received[1].received_us, 2.5)]  # ...at their first time
    assert not RejectedSample.objects.filter(source=source).exists()
    run.refresh_from_db()
    assert (run.accepted, run.duplicates, run.conflicts) == (2, 2, 0)
