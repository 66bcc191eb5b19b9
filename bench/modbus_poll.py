"""How long a Modbus poll takes, batched (contiguous registers read together, up to 125 a request) and
one register a request (``max_registers=1``, as a device refusing multi-register reads would need), against
pymodbus's own server on loopback in this process. Run: ``.venv/bin/python bench/modbus_poll.py [entries]``.

Figures depend on the machine and its load; the ratio, measured in the same run, is what to compare."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from client_agent.tests.modbus_sim import ModbusDevice  # noqa: E402 (after the path is set)
from daqbroker_agent.config import validate_source_config  # noqa: E402
from daqbroker_agent.modbus import ModbusReader  # noqa: E402


def timed_polls(port: int, entries: int, max_registers: int, polls: int = 5) -> tuple[float, int]:
    config = validate_source_config(
        "modbus",
        {
            "host": "127.0.0.1",
            "port": port,
            "timeout": 5,
            "max_registers": max_registers,
            "registers": [{"field": f"r{a}", "address": a} for a in range(entries)],
        },
    )
    times = []
    with ModbusReader(config) as reader:
        reader.poll()  # connect
        for _ in range(polls):
            started = time.perf_counter()
            poll = reader.poll()
            times.append(time.perf_counter() - started)
            assert len(poll.values) == entries and not poll.failures
    return statistics.median(times), poll.requests


def main() -> None:
    entries = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    device = ModbusDevice(holding=list(range(entries)))
    try:
        batched, batched_requests = timed_polls(device.port, entries, 125)
        single, single_requests = timed_polls(device.port, entries, 1)
    finally:
        device.close()
    print(f"{entries} uint16 registers, median of 5 polls (pymodbus server in this process, loopback)")
    print(f"  batched (125 a request): {batched * 1000:8.1f} ms, {batched_requests} requests")
    print(f"  one register a request:  {single * 1000:8.1f} ms, {single_requests} requests")
    print(f"  ratio one-a-request / batched: {single / batched:.1f}x")


if __name__ == "__main__":
    main()
