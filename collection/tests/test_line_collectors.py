"""Serial and TCP collectors against simulated instruments: pyserial's loop:// and socket:// URLs, a
pseudo-terminal pair opened like a real serial device, and plain TCP; streaming and request/response."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from collection.choices import RunStatus
from collection.models import RejectedSample, Sample
from collection.services.collect import collect_source
from daqbroker_agent.parsing import datetime_to_us
from instruments.choices import SourceKind
from instruments.tests.factories import make_channel, make_instrument, make_source

pytestmark = pytest.mark.django_db

T0 = datetime(2024, 5, 6, 7, 0, 0, tzinfo=UTC)


def stamp(i: int) -> str:
    return (T0 + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")


def make_line_source(kind: str, **config):
    instrument = make_instrument()
    source = make_source(instrument, kind=kind, config=config)
    temp = make_channel(instrument, slug="temp", source=source, source_field=config.pop("temp_field", "1"))
    return source, temp


def values(channel) -> list[tuple[int, float]]:
    return list(Sample.objects.filter(channel=channel).order_by("ts").values_list("ts", "value"))


def collect_ok(source):
    run = collect_source(source.pk)
    assert run.status == RunStatus.SUCCESS, run.error
    return run


def test_loop_url_echoes_the_request_back_as_the_answer():
    # loop:// returns what is written: the request line is read back as the instrument's reply.
    source, temp = make_line_source(SourceKind.SERIAL, url="loop://", request=f"{stamp(0)},21.5\n", timeout=0.2)
    run = collect_ok(source)
    assert run.accepted == 1
    assert values(temp) == [(datetime_to_us(T0), 21.5)]


def test_socket_url_request_and_response(tcp_instrument):
    answers = iter(range(100))

    def reply(request: bytes) -> list[str]:
        return [f"{stamp(next(answers))},{20.5 + 1}"] if request == b"READ?\r" else ["ERR unknown command"]

    instrument = tcp_instrument(reply, terminator=b"\n")
    source, temp = make_line_source(
        SourceKind.SERIAL, url=f"socket://127.0.0.1:{instrument.port}", request="READ?\r\n", timeout=2
    )
    collect_ok(source)
    collect_ok(source)
    assert instrument.requests == [b"READ?\r", b"READ?\r"]
    assert values(temp) == [(datetime_to_us(T0), 21.5), (datetime_to_us(T0 + timedelta(seconds=1)), 21.5)]


def test_pty_serial_device_with_regex_lines_and_received_time(pty_instrument):
    instrument = pty_instrument(lambda request: ["T=+21.25C RH=40%"] if request == b"MEAS" else [])
    # A serial device path, like /dev/ttyUSB0 (the pty's slave side).
    instrument_obj = make_instrument()
    source = make_source(
        instrument_obj,
        kind=SourceKind.SERIAL,
        config={
            "url": instrument.path,
            "baudrate": 19200,
            "parity": "E",
            "bytesize": 7,
            "request": "MEAS\r\n",
            "line_terminator": "\r\n",
            "format": "regex",
            "regex": r"T=(?P<t>[-+\d.]+)C RH=(?P<rh>\d+)%",
            "timestamp": {"format": "receipt"},
        },
    )
    temp = make_channel(instrument_obj, slug="t", source=source, source_field="t")
    rh = make_channel(instrument_obj, slug="rh", source=source, source_field="rh")
    before = datetime_to_us(datetime.now(UTC))
    collect_ok(source)
    after = datetime_to_us(datetime.now(UTC))
    assert instrument.requests == [b"MEAS"]
    [(ts, value)] = values(temp)
    assert value == 21.25 and before <= ts <= after
    assert values(rh) == [(ts, 40.0)]


def test_tcp_streaming_instrument_until_it_pauses(tcp_instrument):
    lines = [f"{stamp(i)},{i}.5" for i in range(5)] + ["garbled", f"{stamp(9)},hot", ""]
    instrument = tcp_instrument(lambda request: lines, stream=True)
    source, temp = make_line_source(SourceKind.TCP, host="127.0.0.1", port=instrument.port, timeout=1)
    run = collect_ok(source)
    assert values(temp) == [(datetime_to_us(T0 + timedelta(seconds=i)), i + 0.5) for i in range(5)]
    assert run.rejected == 2
    connection = f"127.0.0.1:{instrument.port}"
    garbled = RejectedSample.objects.get(source=source, raw_value="garbled")
    assert garbled.context == {"connection": connection, "line": 6}
    hot = RejectedSample.objects.get(source=source, raw_value="hot")  # refused by ingest: its line is known too
    assert (hot.reason, hot.context) == (
        "value is not a number, and the channel is numeric",
        {"connection": connection, "line": 7},
    )
    source.refresh_from_db()
    assert source.cursor["lines"] == 7


def test_tcp_request_with_several_answer_lines_and_max_lines(tcp_instrument):
    instrument = tcp_instrument(lambda request: [f"{stamp(i)},{i}" for i in range(10)])
    source, temp = make_line_source(
        SourceKind.TCP, host="127.0.0.1", port=instrument.port, request="DUMP\n", response_lines=0, max_lines=4
    )
    collect_ok(source)
    assert [v for _, v in values(temp)] == [0.0, 1.0, 2.0, 3.0]


def test_tcp_listen_seconds_reads_across_pauses(tcp_instrument):
    import time

    def slow(request):
        for i in range(3):
            yield f"{stamp(i)},{i}"
            time.sleep(0.3)

    instrument = tcp_instrument(slow, stream=True)
    source, temp = make_line_source(
        SourceKind.TCP, host="127.0.0.1", port=instrument.port, timeout=0.1, listen_seconds=2
    )
    collect_ok(source)
    assert [v for _, v in values(temp)] == [0.0, 1.0, 2.0]


def test_unreachable_tcp_instrument_fails_the_run():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    source, _ = make_line_source(SourceKind.TCP, host="127.0.0.1", port=port, timeout=1)
    run = collect_source(source.pk)
    assert run.status == RunStatus.FAILED
    assert "ConnectionRefusedError" in run.error
