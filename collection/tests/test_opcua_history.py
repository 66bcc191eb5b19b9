"""OPC UA catching up after an outage (``history`` on): what changed while no client was connected is read
back from the server's history (HistoryRead) from each node's latest time in the source's cursor, stored at
its source times; what was stored already counts as exact duplicates. A real asyncua server keeping history,
the stream collector's one store step (``collection.streams.store_messages``). Engine-dependent: the cursor
is committed with the readings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from collection.models import CollectionRun, Sample
from collection.services.collect import _new_owner, _take_lease
from collection.streams import store_messages
from conftest import OpcUaTestServer
from daqbroker_agent.opcua import ChangeMapper, OpcUaSession
from instruments.choices import SourceKind
from instruments.models import DataSource
from instruments.tests.factories import make_channel, make_instrument, make_user

pytestmark = [pytest.mark.django_db(transaction=True)]


def us(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def take_until(session: OpcUaSession, wanted: set[float], timeout: float = 60) -> list:
    """Changes until every value in ``wanted`` came (a deadline, not a pause)."""
    import time

    taken: list = []
    deadline = time.monotonic() + timeout
    while not wanted <= {c.value for c in taken}:
        assert time.monotonic() < deadline, f"only {[c.value for c in taken]} came ({session.last_error})"
        taken += session.take(0.5)
    return taken


@pytest.fixture
def history_server():
    server = OpcUaTestServer(history=True).start()
    yield server
    server.stop()


def test_changes_made_while_disconnected_are_read_back_from_the_servers_history(history_server):
    server = history_server
    t0 = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)  # after the variables' first value
    instrument = make_instrument(make_user(), slug="boiler")
    node = server.node("temperature")
    source = DataSource.objects.create(
        instrument=instrument,
        name="plc",
        kind=SourceKind.OPCUA,
        config={
            "host": server.host,
            "port": server.port,
            "path": "/daqbroker-test/",
            "publishing_interval": 50,
            "history": True,
            "nodes": [{"node": node, "name": "t"}],
        },
    )
    channel = make_channel(instrument, slug="t", source=source, source_field="t")
    config = source.validated_config()
    owner = _new_owner()
    assert _take_lease(source.pk, owner, timezone.now()).taken
    run = CollectionRun.objects.create(source=source, started_at=timezone.now(), worker="test")
    mapper, by_field = ChangeMapper(config), {"t": [channel.pk]}

    first = OpcUaSession(config, since=DataSource.objects.get(pk=source.pk).cursor.get("latest"))
    first.start()
    try:
        assert first.subscribed.wait(60), first.last_error
        server.write("temperature", 20.0, source_time=t0)
        store_messages(source.pk, owner, run.pk, mapper, by_field, take_until(first, {20.0}), {})
    finally:
        first.stop()

    # Disconnected: three changes the subscription never delivers.
    for i, value in enumerate((21.0, 22.0, 23.0), start=1):
        server.write("temperature", value, source_time=t0 + timedelta(seconds=i))

    cursor = DataSource.objects.get(pk=source.pk).cursor  # what a new runner reads: the committed cursor
    assert cursor["latest"] == {node: us(t0)}
    second = OpcUaSession(config, since=cursor["latest"])
    second.start()
    try:
        assert second.subscribed.wait(60), second.last_error
        caught_up = take_until(second, {21.0, 22.0, 23.0})
        result = store_messages(source.pk, owner, run.pk, mapper, by_field, caught_up, cursor)
    finally:
        second.stop()

    stored = dict(Sample.objects.filter(channel=channel, ts__gte=us(t0)).values_list("ts", "value"))
    assert stored == {us(t0 + timedelta(seconds=i)): 20.0 + i for i in range(4)}
    assert result.conflicts == 0 and result.duplicates >= 1  # 23.0 from the history and the subscription
    assert DataSource.objects.get(pk=source.pk).cursor["latest"] == {node: us(t0 + timedelta(seconds=3))}


def test_without_history_nothing_is_read_back(history_server):
    server = history_server
    t0 = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    node = server.node("pressure")
    from daqbroker_agent.config import validate_source_config

    config = validate_source_config(
        "opcua",
        {"host": server.host, "port": server.port, "path": "/daqbroker-test/", "nodes": [{"node": node, "name": "p"}]},
    )
    server.write("pressure", 1.0, source_time=t0)
    server.write("pressure", 2.0, source_time=t0 + timedelta(seconds=1))
    session = OpcUaSession(config, since={node: us(t0)})
    session.start()
    try:
        assert session.subscribed.wait(60), session.last_error
        (current,) = take_until(session, {2.0})  # the current value only
        assert current.ts == us(t0 + timedelta(seconds=1))
    finally:
        session.stop()
