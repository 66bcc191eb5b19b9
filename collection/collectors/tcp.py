"""TCP instruments: a connection to ``host:port`` that streams lines, or answers a request with them.
The connection itself is the agent's (``daqbroker_agent.transports``), so both read TCP instruments alike."""

from __future__ import annotations

from collection.collectors.lines import LineCollector
from daqbroker_agent.transports import TcpTransport, Transport


class TcpCollector(LineCollector):
    def open(self, config: dict) -> Transport:
        return TcpTransport(config)

    def describe(self, config: dict) -> str:
        return f"{config['host']}:{config['port']}"
