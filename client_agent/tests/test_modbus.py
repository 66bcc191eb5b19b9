"""The Modbus reader (daqbroker_agent.modbus) against pymodbus's own server: every data type in every word
and byte order, decoded from registers written independently with struct; contiguous registers batched
(counted on the server); the 125-register limit; refused and unanswered reads; RTU framing over socket://."""

from __future__ import annotations

import struct
import time

import pytest

from daqbroker_agent.config import ConfigError, validate_source_config
from daqbroker_agent.modbus import Entry, ModbusReader, ModbusUnavailable, plan_reads

CODES = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f", "float64": "d"}
SAMPLES = {
    "int16": -12345,
    "uint16": 54321,
    "int32": -1_234_567_890,
    "uint32": 3_456_789_012,
    "float32": -1234.5,  # exact in float32
    "float64": 299_792_458.123456789,
}


def words_as_stored(type_: str, value: float, word_order: str, byte_order: str) -> list[int]:
    """The registers a device using these orders holds for ``value``: built from struct's big-endian bytes
    by moving bytes by hand (ABCD -> CDAB, BADC, DCBA), independently of the reader's decoding."""
    data = struct.pack(">" + CODES[type_], value)
    pairs = [data[i : i + 2] for i in range(0, len(data), 2)]  # most significant first
    if word_order == "little":
        pairs.reverse()
    if byte_order == "little":
        pairs = [bytes([p[1], p[0]]) for p in pairs]
    return [int.from_bytes(p, "big") for p in pairs]


def modbus_config(port: int, registers: list[dict], **options) -> dict:
    return validate_source_config(
        "modbus", {"host": "127.0.0.1", "port": port, "timeout": 3, "retries": 0, "registers": registers, **options}
    )


def test_every_type_in_every_word_and_byte_order_decodes_to_the_value_written(modbus_device):
    holding: list[int] = []
    registers = []
    for type_, value in SAMPLES.items():
        for word_order in ("big", "little"):
            for byte_order in ("big", "little"):
                field = f"{type_}-{word_order}-{byte_order}"
                registers.append(
                    {
                        "field": field,
                        "address": len(holding),
                        "type": type_,
                        "word_order": word_order,
                        "byte_order": byte_order,
                    }
                )
                holding.extend(words_as_stored(type_, value, word_order, byte_order))
    device = modbus_device(holding=holding)
    with ModbusReader(modbus_config(device.port, registers)) as reader:
        poll = reader.poll()
    assert poll.failures == []
    for type_, value in SAMPLES.items():
        expected = struct.unpack(">" + CODES[type_], struct.pack(">" + CODES[type_], value))[0]
        for word_order in ("big", "little"):
            for byte_order in ("big", "little"):
                assert poll.values[f"{type_}-{word_order}-{byte_order}"] == expected, (type_, word_order, byte_order)
    # 96 registers, all contiguous: one request.
    assert device.requests == [("holding", 0, len(holding))]


def test_functions_scale_offset_and_contiguous_batching_counted_on_the_server(modbus_device):
    device = modbus_device(
        holding=[100, 200, 300, 0, 0, 0, 0, 0, 0, 0, 7],
        input=[*words_as_stored("float32", 2.5, "big", "big"), 65535],
        coils=[False, True, True],
        discrete=[True, False],
    )
    registers = [
        {"field": "h0", "address": 0, "scale": 0.1, "offset": -5},  # 100 * 0.1 - 5
        {"field": "h1", "address": 1},
        {"field": "h2", "address": 2, "type": "int16"},
        {"field": "h10", "address": 10},  # a gap: a request of its own
        {"field": "i0", "address": 0, "function": "input", "type": "float32"},
        {"field": "i2", "address": 2, "function": "input", "type": "int16"},
        {"field": "c1", "address": 1, "function": "coil"},
        {"field": "c2", "address": 2, "function": "coil"},
        {"field": "d0", "address": 0, "function": "discrete", "scale": 10},
    ]
    with ModbusReader(modbus_config(device.port, registers)) as reader:
        poll = reader.poll()
    assert poll.failures == []
    assert poll.values == {
        "h0": pytest.approx(5.0),
        "h1": 200.0,
        "h2": 300.0,
        "h10": 7.0,
        "i0": 2.5,
        "i2": -1.0,
        "c1": 1.0,
        "c2": 1.0,
        "d0": 10.0,
    }
    assert sorted(device.requests) == sorted(
        [("holding", 0, 3), ("holding", 10, 1), ("input", 0, 3), ("coil", 1, 2), ("discrete", 0, 1)]
    )
    assert poll.requests == 5


def test_reads_are_split_at_125_registers_and_at_max_registers(modbus_device):
    device = modbus_device(holding=list(range(300)))
    registers = [{"field": f"r{a}", "address": a} for a in range(0, 300)]
    with ModbusReader(modbus_config(device.port, registers)) as reader:
        poll = reader.poll()
    assert poll.values == {f"r{a}": float(a) for a in range(300)}
    assert device.requests == [("holding", 0, 125), ("holding", 125, 125), ("holding", 250, 50)]
    device.requests.clear()
    # A float32 never straddles two requests; a device taking fewer registers per request is obeyed.
    floats = [{"field": f"f{a}", "address": a, "type": "float32"} for a in range(0, 20, 2)]
    with ModbusReader(modbus_config(device.port, floats, max_registers=7)) as reader:
        reader.poll()
    assert device.requests == [("holding", 0, 6), ("holding", 6, 6), ("holding", 12, 6), ("holding", 18, 2)]


def test_plan_reads_merges_overlapping_entries_and_keeps_functions_apart():
    entries = [
        Entry("a", 0, "holding", "float64"),
        Entry("b", 2, "holding", "uint16"),  # inside a's four registers
        Entry("c", 4, "holding", "int32"),  # touches a: same request
        Entry("d", 4, "input", "uint16"),
    ]
    blocks = plan_reads(entries)
    assert [(b.function, b.start, b.count, [e.field for e in b.entries]) for b in blocks] == [
        ("holding", 0, 6, ["a", "b", "c"]),
        ("input", 4, 1, ["d"]),
    ]


def test_an_illegal_address_fails_only_its_request_with_the_register_and_reason(modbus_device):
    device = modbus_device(holding=[1, 2, 3, *words_as_stored("float32", float("nan"), "big", "big")])
    registers = [
        {"field": "ok", "address": 0},
        {"field": "nan", "address": 3, "type": "float32"},
        {"field": "missing", "address": 40, "type": "float32"},
    ]
    with ModbusReader(modbus_config(device.port, registers)) as reader:
        poll = reader.poll()
    assert poll.values == {"ok": 1.0}
    by_field = {f.field: f for f in poll.failures}
    assert by_field["missing"].register == "holding register 40-41 (float32)"
    assert "illegal data address (exception 2)" in by_field["missing"].reason
    assert by_field["nan"].reason == "the value is not a finite number (nan)"
    assert by_field["nan"].raw == "0x7FC0 0x0000"


def test_a_device_that_never_answers_raises_with_the_reason(modbus_device):
    silent = modbus_device.silent()
    config = modbus_config(silent.port, [{"field": "a", "address": 0}, {"field": "b", "address": 9}], timeout=0.2)
    with ModbusReader(config) as reader, pytest.raises(ModbusUnavailable) as raised:
        reader.poll()
    message = str(raised.value)
    assert f"Modbus TCP 127.0.0.1:{silent.port} unit 1 did not answer" in message
    assert "holding register 0: no answer from unit 1 within 0.2 s; holding register 9: no answer" in message
    assert silent.received > 0  # the request was sent: the device just did not answer


def test_nobody_listening_is_a_clear_error():
    from modbus_sim import free_port

    with pytest.raises(ModbusUnavailable, match=r"cannot connect to Modbus TCP 127\.0\.0\.1"):
        ModbusReader(modbus_config(free_port(), [{"field": "a", "address": 0}])).poll()


def test_a_serial_device_that_does_not_exist_is_named():
    config = validate_source_config(
        "modbus", {"transport": "rtu", "url": "/dev/ttyNOSUCH7", "registers": [{"field": "a", "address": 0}]}
    )
    with pytest.raises(ModbusUnavailable, match="cannot connect to Modbus RTU /dev/ttyNOSUCH7 unit 1: no such serial"):
        ModbusReader(config).poll()


def test_rtu_framing_over_a_socket_url(modbus_device):
    device = modbus_device(holding=words_as_stored("int32", -7, "little", "big"), framer="rtu", unit=17)
    config = validate_source_config(
        "modbus",
        {
            "transport": "rtu",
            "url": f"socket://127.0.0.1:{device.port}",
            "baudrate": 19200,
            "unit": 17,
            "timeout": 3,
            "registers": [{"field": "t", "address": 0, "type": "int32", "word_order": "little"}],
        },
    )
    with ModbusReader(config) as reader:
        assert reader.poll().values == {"t": -7.0}
        assert reader.poll().values == {"t": -7.0}  # the connection is kept between polls
    assert device.requests == [("holding", 0, 2)] * 2


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ({"host": "plc", "registers": []}, "registers: must be a list of registers"),
        ({"registers": [{"field": "a", "address": 0}]}, "host: is required for Modbus TCP"),
        ({"transport": "rtu", "registers": [{"field": "a", "address": 0}]}, "url: is required for Modbus RTU"),
        ({"host": "plc", "url": "/dev/ttyUSB0", "registers": [{"field": "a", "address": 0}]}, "url: is for Modbus RTU"),
        ({"host": "plc", "registers": [{"field": "a"}]}, "registers[0].address: is required"),
        ({"host": "plc", "registers": [{"field": "a", "address": 65535, "type": "float32"}]}, "runs past 65535"),
        ({"host": "plc", "registers": [{"field": "a", "address": 0, "type": "float16"}]}, "registers[0].type"),
        (
            {"host": "plc", "registers": [{"field": "a", "address": 0, "function": "coil", "type": "int16"}]},
            "registers[0].type: a coil is a single bit: its type is bool, not int16",
        ),
        ({"host": "plc", "registers": [{"field": "a", "address": 0, "type": "bool"}]}, "bool is for coils"),
        (
            {"host": "plc", "registers": [{"field": "a", "address": 0}, {"field": "a", "address": 1}]},
            "registers[1].field: 'a' is already the field of entry 0",
        ),
        (
            {"host": "plc", "registers": [{"field": "a", "address": 0, "word_ordre": "big"}]},
            "did you mean 'word_order'",
        ),
        ({"host": "plc", "registers": [{"field": "a", "address": 0, "scale": 0}]}, "scale: must not be 0"),
        ({"host": "plc", "max_registers": 126, "registers": [{"field": "a", "address": 0}]}, "at most 125"),
        ({"host": "plc", "unit": 0, "registers": [{"field": "a", "address": 0}]}, "unit: must be at least 1"),
    ],
)
def test_a_broken_register_map_is_refused_with_the_option_at_fault(raw, error):
    with pytest.raises(ConfigError) as raised:
        validate_source_config("modbus", raw)
    assert error in str(raised.value)


def test_defaults_fill_in_and_agents_may_collect_modbus():
    config = validate_source_config("agent", {"collect": {"kind": "modbus", "host": "plc", "registers": [
        {"field": "a", "address": 3}, {"field": "b", "address": 0, "function": "coil"}]}})["collect"]  # fmt: skip
    assert config["port"] == 502 and config["unit"] == 1 and config["max_registers"] == 125
    assert config["registers"][0] == {
        "field": "a", "address": 3, "function": "holding", "type": "uint16",
        "word_order": "big", "byte_order": "big", "scale": 1.0, "offset": 0.0,
    }  # fmt: skip
    assert config["registers"][1]["type"] == "bool"


def test_the_agent_polls_every_interval_spools_readings_and_keeps_refused_registers(tmp_path, modbus_device):
    from daqbroker_agent.sources import ChannelSpec, SourceSpec, start_source
    from daqbroker_agent.spool import Spool
    from daqbroker_agent.state import AgentState

    device = modbus_device(holding=words_as_stored("float32", 21.5, "big", "big"))
    collect = {"kind": "modbus", **modbus_config(device.port, [
        {"field": "t", "address": 0, "type": "float32"}, {"field": "p", "address": 9}])}  # fmt: skip
    spec = SourceSpec("local:plc", "plc", 0.1, collect, (ChannelSpec("11", "t"), ChannelSpec("12", "p")))
    spool = Spool(tmp_path / "spool")
    state = AgentState(spool)
    runner = start_source(spec, spool, state)
    try:
        deadline = time.monotonic() + 15
        while spool.depth() < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        runner.stop()
        runner.join(timeout=5)
    rows = spool.connection().execute("SELECT channel, value FROM readings ORDER BY id").fetchall()
    assert [tuple(row) for row in rows[:2]] == [("11", 21.5), ("11", 21.5)]  # one reading a poll, polled again
    assert spool.unparsed_waiting()[0] == 1  # the same failure every poll: kept once (again after 10 minutes)
    assert "1 register(s) not read" in state.current_problems()["source plc"]


def test_the_agent_reports_a_silent_device_and_keeps_trying(tmp_path, modbus_device):
    from daqbroker_agent.sources import ChannelSpec, SourceSpec, start_source
    from daqbroker_agent.spool import Spool
    from daqbroker_agent.state import AgentState

    silent = modbus_device.silent()
    collect = {"kind": "modbus", **modbus_config(silent.port, [{"field": "t", "address": 0}], timeout=0.1)}
    spool = Spool(tmp_path / "spool")
    state = AgentState(spool)
    runner = start_source(SourceSpec("local:plc", "plc", 0.1, collect, (ChannelSpec("11", "t"),)), spool, state)
    try:
        deadline = time.monotonic() + 15
        while "source plc" not in state.current_problems() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        runner.stop()
        runner.join(timeout=5)
    assert "ModbusUnavailable" in state.current_problems()["source plc"]
    assert "did not answer" in state.current_problems()["source plc"]
    assert runner.error == "" and spool.depth() == 0
