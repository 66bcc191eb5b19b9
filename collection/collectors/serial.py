"""Serial instruments, through pyserial: a device (``/dev/ttyUSB0``) or a pyserial URL (``loop://``,
``socket://host:port``, ``rfc2217://host:port``), with baud rate and framing from the source's config."""

from __future__ import annotations

import time

import serial

from collection.collectors.lines import LineCollector, Transport

POLL_SECONDS = 0.05


class SerialTransport(Transport):
    def __init__(self, config: dict):
        self.port = serial.serial_for_url(
            config["url"],
            baudrate=config["baudrate"],
            bytesize=config["bytesize"],
            parity=config["parity"],
            stopbits=_stopbits(config["stopbits"]),
            timeout=POLL_SECONDS,  # set once: changing it reconfigures the port, which some drivers refuse
        )
        if config["request"]:
            self.port.reset_input_buffer()  # an answer must not be mistaken for what was waiting before

    def write(self, data: bytes) -> None:
        self.port.write(data)
        self.port.flush()

    def read_some(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        try:
            while True:
                data = self.port.read(max(1, self.port.in_waiting))  # waits at most POLL_SECONDS
                if data or time.monotonic() >= deadline:
                    return data
        except serial.SerialException as exc:
            if "disconnected" in str(exc) or "closed" in str(exc):
                return None  # socket:// and rfc2217:// peers that hang up, a USB adapter pulled out
            raise

    def close(self) -> None:
        self.port.close()


def _stopbits(value: float):
    return {1.0: serial.STOPBITS_ONE, 1.5: serial.STOPBITS_ONE_POINT_FIVE, 2.0: serial.STOPBITS_TWO}[float(value)]


class SerialCollector(LineCollector):
    def open(self, config: dict) -> Transport:
        return SerialTransport(config)

    def describe(self, config: dict) -> str:
        return config["url"]
