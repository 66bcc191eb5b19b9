"""The connections and the line splitter the agent and the server's collectors share."""

from __future__ import annotations

import socket
import threading

import pytest

from daqbroker_agent.transports import LineSplitter, SerialTransport, TcpTransport, open_transport

SERIAL = {"kind": "serial", "url": "loop://", "baudrate": 9600, "bytesize": 8, "parity": "N", "stopbits": 1}


def test_lines_are_cut_at_the_terminator_across_chunks():
    splitter = LineSplitter("\n", "utf-8")
    assert splitter.feed(b"12.5,4") == []
    assert splitter.feed(b"0\r\n\n   \n13.0,41\nhalf") == ["12.5,40", "13.0,41"]  # CRLF trimmed, blanks skipped
    assert splitter.feed(b" a line\n") == ["half a line"]
    assert LineSplitter(";", "utf-8").feed(b"a;b;") == ["a", "b"]
    assert LineSplitter("\n", "utf-8").feed(b"caf\xe9\n") == ["caf\ufffd"]  # a bad byte never stops the line


def test_a_serial_loop_echoes_what_is_written():
    port = open_transport({**SERIAL, "request": "?\r\n"})
    assert isinstance(port, SerialTransport)
    try:
        assert port.read_some(0.1) == b""
        port.write(b"21.5,OK\n")
        received = b""
        while b"\n" not in received:
            chunk = port.read_some(1.0)
            assert chunk, "nothing came back from loop://"
            received += chunk
        assert received == b"21.5,OK\n"
    finally:
        port.close()


def test_a_tcp_peer_that_hangs_up_ends_the_stream():
    server = socket.create_server(("127.0.0.1", 0))
    host, port = server.getsockname()

    def instrument():
        conn, _ = server.accept()
        with conn:
            assert conn.recv(16) == b"READ\n"
            conn.sendall(b"1,2\n3,4\n")

    thread = threading.Thread(target=instrument, daemon=True)
    thread.start()
    link = open_transport({"kind": "tcp", "host": host, "port": port, "timeout": 5})
    assert isinstance(link, TcpTransport)
    try:
        link.write(b"READ\n")
        data = b""
        while (chunk := link.read_some(5.0)) is not None:
            data += chunk
        assert data == b"1,2\n3,4\n"
    finally:
        link.close()
        server.close()
        thread.join(5)


def test_only_connection_sources_open_a_transport():
    with pytest.raises(ValueError, match="'file' sources are not read over a connection"):
        open_transport({"kind": "file"})


def test_the_serial_ports_listed_for_the_heartbeat_are_bounded_plain_dicts():
    from daqbroker_agent.transports import MAX_LISTED_PORTS, list_serial_ports

    ports = list_serial_ports()
    assert isinstance(ports, list) and len(ports) <= MAX_LISTED_PORTS
    assert all(set(port) == {"device", "description"} and isinstance(port["device"], str) for port in ports)
