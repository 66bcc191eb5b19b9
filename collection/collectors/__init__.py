"""One collector per kind of source, behind the ``Collector`` interface of ``collectors.base``."""

from collection.collectors.base import Collected, Collector
from collection.collectors.file import FileCollector
from collection.collectors.modbus import ModbusCollector
from collection.collectors.serial import SerialCollector
from collection.collectors.tcp import TcpCollector

COLLECTORS: dict[str, Collector] = {
    "file": FileCollector(),
    "serial": SerialCollector(),
    "tcp": TcpCollector(),
    "modbus": ModbusCollector(),
}

__all__ = ["COLLECTORS", "Collected", "Collector"]
