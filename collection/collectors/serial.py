"""Serial instruments, through pyserial: a device (``/dev/ttyUSB0``) or a pyserial URL (``loop://``,
``socket://host:port``, ``rfc2217://host:port``), with baud rate and framing from the source's config.
The port itself is the agent's (``daqbroker_agent.transports``), so both read serial ports alike."""

from __future__ import annotations

from collection.collectors.lines import LineCollector
from daqbroker_agent.transports import SerialTransport, Transport


class SerialCollector(LineCollector):
    def open(self, config: dict) -> Transport:
        return SerialTransport(config)

    def describe(self, config: dict) -> str:
        return config["url"]
