"""The server's Modbus collector (collection.collectors.modbus) through collect_source, against pymodbus's
own server: readings stored per channel, a refused register quarantined with its register and reason (the
run a warning), a device that never answers a failed run with the reason; the configuration checked at save
time through the API with the option at fault, and the target rules applied to Modbus hosts and devices."""

from __future__ import annotations

import struct

import pytest
from rest_framework.test import APIClient

from collection.choices import RunStatus
from collection.models import RejectedSample, Sample
from collection.services.collect import collect_source
from instruments.choices import SourceKind
from instruments.models import DataSource
from instruments.tests.factories import make_channel, make_instrument, make_user

pytestmark = pytest.mark.django_db


def float32_words(value: float) -> list[int]:
    data = struct.pack(">f", value)
    return [int.from_bytes(data[0:2], "big"), int.from_bytes(data[2:4], "big")]


def modbus_source(**config):
    instrument = make_instrument()
    source = DataSource.objects.create(
        instrument=instrument, name="plc", kind=SourceKind.MODBUS, interval_seconds=5, config=config
    )
    return instrument, source


REGISTERS = [
    {"field": "temperature", "address": 0, "type": "float32"},
    {"field": "flow", "address": 2, "type": "int16", "scale": 0.5, "offset": 1},
    {"field": "pump", "address": 0, "function": "coil"},
    {"field": "absent", "address": 50, "function": "input"},
]


def test_a_poll_stores_each_channels_value_and_quarantines_a_refused_register(modbus_device):
    device = modbus_device(holding=[*float32_words(21.5), (-8) & 0xFFFF], coils=[True], input=[1, 2])
    instrument, source = modbus_source(host="127.0.0.1", port=device.port, timeout=3, registers=REGISTERS)
    temperature = make_channel(instrument, slug="temperature", source=source, source_field="temperature")
    flow = make_channel(instrument, slug="flow", source=source, source_field="flow")
    pump = make_channel(instrument, slug="pump", source=source, source_field="pump")
    absent = make_channel(instrument, slug="absent", source=source, source_field="absent")

    run = collect_source(source.pk)

    assert run.status == RunStatus.WARNING, run.error
    assert (run.accepted, run.rejected) == (3, 1)
    stored = {s.channel_id: s.value for s in Sample.objects.filter(channel__instrument=instrument)}
    assert stored == {temperature.id: 21.5, flow.id: -3.0, pump.id: 1.0}
    assert len({s.ts for s in Sample.objects.filter(channel__instrument=instrument)}) == 1  # one poll, one time
    rejected = RejectedSample.objects.get(source=source)
    assert rejected.channel_id == absent.id
    assert rejected.reason.startswith("input register 50 (uint16): the device refused the read: illegal data address")
    assert rejected.context["register"] == "input register 50 (uint16)"
    assert rejected.context["connection"] == f"Modbus TCP 127.0.0.1:{device.port} unit 1"
    assert "1 register(s) not read, quarantined: input register 50 (uint16)" in run.error
    # The float and the int16 are contiguous: one request for both; a register nobody takes is not read.
    assert sorted(device.requests) == [("coil", 0, 1), ("holding", 0, 3), ("input", 50, 1)]
    source.refresh_from_db()
    assert source.cursor["polls"] == 1 and source.consecutive_failures == 0


def test_modbus_rtu_over_a_socket_url(modbus_device):
    device = modbus_device(holding=[1234], framer="rtu", unit=3)
    instrument, source = modbus_source(
        transport="rtu",
        url=f"socket://127.0.0.1:{device.port}",
        unit=3,
        timeout=3,
        registers=[{"field": "level", "address": 0, "scale": 0.01}],
    )
    level = make_channel(instrument, slug="level", source=source, source_field="level")
    run = collect_source(source.pk)
    assert run.status == RunStatus.SUCCESS, run.error
    assert Sample.objects.get(channel=level).value == pytest.approx(12.34)


def test_a_device_that_never_answers_fails_the_run_with_the_reason(modbus_device):
    silent = modbus_device.silent()
    instrument, source = modbus_source(
        host="127.0.0.1", port=silent.port, timeout=0.2, retries=0, registers=REGISTERS[:2]
    )
    make_channel(instrument, slug="temperature", source=source, source_field="temperature")
    run = collect_source(source.pk)
    assert run.status == RunStatus.FAILED
    assert f"Modbus TCP 127.0.0.1:{silent.port} unit 1 did not answer" in run.error
    assert "holding registers 0-1: no answer from unit 1 within 0.2 s" in run.error
    source.refresh_from_db()
    assert source.consecutive_failures == 1 and "did not answer" in source.last_error
    assert not Sample.objects.filter(channel__instrument=instrument).exists()


@pytest.fixture
def api():
    owner = make_user("olga")
    make_instrument(owner=owner, slug="station")
    client = APIClient()
    client.force_authenticate(owner)
    return client


def test_the_api_refuses_a_broken_register_map_with_the_option_at_fault(api):
    body = {
        "instrument": "station",
        "name": "plc",
        "kind": "modbus",
        "config": {"host": "127.0.0.1", "registers": [{"field": "a", "address": 0, "type": "float"}]},
    }
    response = api.post("/api/v1/sources/", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["config"] == [
        "registers[0].type: 'float' is not one of int16, uint16, int32, uint32, float32, float64, bool"
    ]
    body["config"]["registers"][0]["type"] = "float32"
    response = api.post("/api/v1/sources/", body, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["config"]["registers"][0]["word_order"] == "big"


def test_modbus_hosts_and_serial_devices_go_through_the_target_rules(api, settings):
    settings.DAQBROKER_NETWORK_ALLOW = []
    settings.DAQBROKER_SERIAL_DEVICES = []
    registers = [{"field": "a", "address": 0}]
    for name, config, refusal in [
        ("tcp", {"host": "127.0.0.1", "port": 5020, "registers": registers}, "DAQBROKER_NETWORK_ALLOW"),
        ("rtu", {"transport": "rtu", "url": "/dev/ttyS0", "registers": registers}, "DAQBROKER_SERIAL_DEVICES"),
        (
            "rtu-socket",
            {"transport": "rtu", "url": "socket://127.0.0.1:5020", "registers": registers},
            "DAQBROKER_NETWORK_ALLOW",
        ),
    ]:
        body = {"instrument": "station", "name": name, "kind": "modbus", "config": config}
        response = api.post("/api/v1/sources/", body, format="json")
        assert response.status_code == 400, (name, response.content)
        assert refusal in str(response.json()["config"]), (name, response.json())
