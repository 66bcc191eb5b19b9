"""The stream collector (``manage.py run_stream_collectors``) end to end: a real process on the test database,
the real mosquitto broker, messages published by a real MQTT client. Engine-dependent: it writes through
``ingest_samples`` with its cursor and lease in the collection transaction."""

from __future__ import annotations

import json
import sys
import uuid

import pytest

from collection.choices import Origin
from collection.models import CollectionRun, RejectedSample, Sample
from conftest import wait_for
from instruments.choices import SourceKind
from instruments.models import DataSource
from instruments.tests.factories import make_channel, make_instrument, make_user

pytestmark = [pytest.mark.django_db(transaction=True)]

T0 = 1_700_000_000


def publish(broker: tuple[str, int], topic: str, payload: str | bytes) -> None:
    from paho.mqtt import publish as paho_publish

    paho_publish.single(topic, payload, qos=1, hostname=broker[0], port=broker[1])


def start_collector(start_process, service_env):
    argv = [sys.executable, "manage.py", "run_stream_collectors", "--reload-seconds", "1"]
    collector = start_process("streams", argv, service_env)
    # Django's start-up alone can take a minute on a loaded machine: wait for it before timing anything else.
    wait_for(
        lambda: "stream collector" in collector.log() or collector.process.poll() is not None,
        timeout=240,
        message="the stream collector started",
    )
    assert collector.process.poll() is None, collector.log()
    return collector


def reading(i: int) -> str:
    return json.dumps({"ts": T0 + i, "temperature": i / 10})


def test_the_stream_collector_stores_quarantines_and_catches_up_after_a_restart(
    mqtt_broker, service_env, start_process
):
    prefix = f"daqbroker-test/{uuid.uuid4().hex[:12]}"
    instrument = make_instrument(make_user(), slug="greenhouse")
    source = DataSource.objects.create(
        instrument=instrument,
        name="sensors",
        kind=SourceKind.MQTT,
        config={
            "host": mqtt_broker[0],
            "port": mqtt_broker[1],
            "client_id": f"daqbroker-test-{uuid.uuid4().hex[:12]}",  # never a session another test run uses
            "fields": [{"name": "t", "topic": f"{prefix}/+/env", "path": "temperature"}],
            "timestamp": {"path": "ts", "format": "epoch"},
        },
    )
    channel = make_channel(instrument, slug="t", source=source, source_field="t")
    collector = start_collector(start_process, service_env)

    def stored() -> int:
        return Sample.objects.filter(channel=channel).count()

    def first_reading_stored() -> bool:
        publish(mqtt_broker, f"{prefix}/bench/env", reading(0))  # again until subscribed (a duplicate after)
        return stored() >= 1

    wait_for(first_reading_stored, timeout=60, interval=0.5, message="the collector subscribed")
    for i in range(1, 10):
        publish(mqtt_broker, f"{prefix}/bench/env", reading(i))
    publish(mqtt_broker, f"{prefix}/bench/env", b"{not json")
    publish(mqtt_broker, f"{prefix}/door/env", json.dumps({"ts": T0 + 50, "temperature": "warm"}))
    publish(mqtt_broker, f"{prefix}/door/env", json.dumps({"ts": T0 + 51}))
    wait_for(lambda: stored() == 10 and RejectedSample.objects.filter(source=source).count() == 3, timeout=30)

    rejected = {r.context["topic"]: r for r in RejectedSample.objects.filter(source=source)}
    assert set(rejected) == {f"{prefix}/bench/env", f"{prefix}/door/env"}
    reasons = sorted(r.reason for r in RejectedSample.objects.filter(source=source))
    assert any("payload is not JSON" in r for r in reasons)
    assert any("'temperature' is missing" in r for r in reasons)
    warm = RejectedSample.objects.get(source=source, raw_value="warm")  # refused by the write path: not a number
    assert (warm.channel_id, warm.context["topic"]) == (channel.pk, f"{prefix}/door/env")
    assert set(RejectedSample.objects.filter(source=source).values_list("origin", flat=True)) == {Origin.MQTT}

    # The source disabled: its runner stops and closes its connection (the collector process runs on; a
    # process restart behaves alike: the session lives at the broker). What is published meanwhile waits there.
    DataSource.objects.filter(pk=source.pk).update(enabled=False)
    wait_for(lambda: DataSource.objects.get(pk=source.pk).lease_owner == "", timeout=30, message="the source let go")
    for i in range(10, 20):
        publish(mqtt_broker, f"{prefix}/bench/env", reading(i))
    assert stored() == 10
    DataSource.objects.filter(pk=source.pk).update(enabled=True)
    wait_for(lambda: stored() == 20, timeout=60, message="the messages published while the source was not read")
    values = dict(Sample.objects.filter(channel=channel).values_list("ts", "value"))
    assert values == {(T0 + i) * 1_000_000: i / 10 for i in range(20)}

    source.refresh_from_db()
    assert source.cursor["filters"] == [f"{prefix}/+/env"] and source.last_error == ""
    runs = CollectionRun.objects.filter(source=source)
    assert runs.count() == 2 and sum(run.accepted for run in runs) >= 20
    collector.stop()  # SIGTERM: connections closed, leases released
    assert collector.process.returncode == 0
    assert DataSource.objects.get(pk=source.pk).lease_owner == ""


def test_the_stream_collector_reconnects_after_its_broker_restarts(private_mosquitto, service_env, start_process):
    broker = private_mosquitto()  # its own broker (persistent), so that restarting it disturbs no one
    prefix = f"daqbroker-test/{uuid.uuid4().hex[:12]}"
    instrument = make_instrument(make_user(), slug="cellar")
    source = DataSource.objects.create(
        instrument=instrument,
        name="sensors",
        kind=SourceKind.MQTT,
        config={"host": broker.host, "port": broker.port, "fields": [{"name": "t", "topic": f"{prefix}/t"}]},
    )
    channel = make_channel(instrument, slug="t", source=source, source_field="t")
    start_collector(start_process, service_env)

    def stored(value: float) -> bool:
        publish((broker.host, broker.port), f"{prefix}/t", str(value))  # receipt times: one reading per message
        return Sample.objects.filter(channel=channel, value=value).exists()

    wait_for(lambda: stored(1.0), timeout=60, interval=0.5, message="the collector subscribed")
    broker.stop()
    wait_for(
        lambda: "disconnected" in DataSource.objects.get(pk=source.pk).last_error,
        timeout=30,
        message="the lost broker said on the source",
    )
    broker.start()
    wait_for(lambda: stored(2.0), timeout=60, interval=0.5, message="a reading after the broker's restart")
    wait_for(lambda: DataSource.objects.get(pk=source.pk).last_error == "", timeout=30, message="the error cleared")


def test_the_stream_collector_reads_an_opc_ua_server_with_its_statuses_and_reconnects(
    opcua_server, service_env, start_process
):
    """OPC UA (``daqbroker_agent.opcua``) through the same collector: source times kept, Uncertain stored
    flagged suspect, Bad quarantined with the node id and status name; the server restarted, it reconnects."""
    from datetime import UTC, datetime

    from collection.choices import Quality

    instrument = make_instrument(make_user(), slug="boiler")
    source = DataSource.objects.create(
        instrument=instrument,
        name="plc",
        kind=SourceKind.OPCUA,
        config={
            "host": opcua_server.host,
            "port": opcua_server.port,
            "path": "/daqbroker-test/",
            "publishing_interval": 50,
            "nodes": [
                {"node": opcua_server.node("temperature"), "name": "t"},
                {"node": opcua_server.node("pressure"), "name": "p"},
            ],
        },
    )
    temperature = make_channel(instrument, slug="t", source=source, source_field="t")
    pressure = make_channel(instrument, slug="p", source=source, source_field="p")
    start_collector(start_process, service_env)

    def at(i: int) -> datetime:
        return datetime.fromtimestamp(T0 + i, tz=UTC)

    def stored(channel, i: int):
        return Sample.objects.filter(channel=channel, ts=(T0 + i) * 1_000_000).first()

    def written(i: int, value: float, **kwargs) -> bool:
        opcua_server.write("temperature", value, source_time=at(i), **kwargs)  # again until subscribed
        return stored(temperature, i) is not None

    wait_for(lambda: written(0, 20.0), timeout=60, interval=0.5, message="the collector subscribed")
    opcua_server.write("temperature", 20.5, status=0x40900000, source_time=at(1))  # UncertainLastUsableValue
    opcua_server.write("pressure", 0.0, status=0x808C0000, source_time=at(2))  # BadSensorFailure
    opcua_server.write("pressure", 1.5, source_time=at(3))
    wait_for(lambda: stored(pressure, 3) and stored(temperature, 1), timeout=30, message="the changes stored")
    assert (stored(temperature, 0).value, stored(temperature, 0).quality) == (20.0, Quality.OK)
    assert (stored(temperature, 1).value, stored(temperature, 1).quality) == (20.5, Quality.SUSPECT)
    assert stored(pressure, 2) is None
    bad = RejectedSample.objects.get(source=source)
    assert bad.reason == "ns=2;s=pressure: status BadSensorFailure (bad): not stored"
    assert (bad.channel_id, bad.context["node"], bad.origin) == (pressure.pk, "ns=2;s=pressure", Origin.OPCUA)
    # Kept as a reading at its source time (a Bad value comes without its value: OPC UA sends none).
    assert (bad.raw_value, bad.raw_time) == ("None", at(2).isoformat())

    opcua_server.restart()
    wait_for(lambda: written(4, 21.0), timeout=90, interval=0.5, message="a reading after the server's restart")
