"""Reading terminated lines from an instrument connection: shared by the serial and TCP collectors.

One run opens the connection, optionally sends a request, reads lines until it has what it wants, and
closes the connection:

* with a ``request``: until ``response_lines`` lines have arrived (0: until a pause, see below);
* with ``listen_seconds``: for that long (a streaming instrument: set it near the source's interval);
* otherwise: until no line has arrived for ``timeout`` seconds;

and never more than ``max_lines`` lines, nor past the end of the stream. Each line keeps the time it was
received, for sources whose timestamp format is ``receipt``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from collection.collectors.base import Collected, RawLine, concat_batches, lines_to_readings
from daqbroker_agent.parsing import LineParser, now_us
from daqbroker_agent.transports import LineSplitter, Transport
from instruments.models import Channel, DataSource


@dataclass(frozen=True)
class ReceivedLine:
    text: str
    received_us: int


def read_lines(transport: Transport, config: dict) -> list[ReceivedLine]:
    timeout = float(config["timeout"])
    listen = float(config.get("listen_seconds") or 0)
    limit = config["max_lines"]
    if config["request"]:
        if config["response_lines"]:
            limit = min(limit, config["response_lines"])
        transport.write(config["request"].encode(config["encoding"]))
    deadline = time.monotonic() + listen if listen else None
    splitter = LineSplitter(config["line_terminator"], config["encoding"])
    lines: list[ReceivedLine] = []
    while len(lines) < limit:
        wait = timeout if deadline is None else min(timeout, deadline - time.monotonic())
        if wait <= 0:
            break
        chunk = transport.read_some(wait)
        if chunk is None:
            break  # the instrument closed the connection
        if not chunk:
            if deadline is None:
                break  # a pause: the instrument has said all it had to say
            continue
        received = now_us()
        lines.extend(ReceivedLine(text, received) for text in splitter.feed(chunk))
    return lines[:limit]


class LineCollector:
    """A collector reading lines over a :class:`Transport`; subclasses say how to open it."""

    def open(self, config: dict) -> Transport:
        raise NotImplementedError

    def describe(self, config: dict) -> str:
        raise NotImplementedError

    def collect(self, source: DataSource, config: dict, channels: list[Channel]) -> Collected:
        transport = self.open(config)
        try:
            received = read_lines(transport, config)
        finally:
            transport.close()
        where = self.describe(config)
        seen = int((source.cursor or {}).get("lines", 0))
        raw = [
            RawLine(line.text, {"connection": where, "line": seen + i + 1}, line.received_us)
            for i, line in enumerate(received)
        ]
        batch, rejections = lines_to_readings(raw, LineParser(config), channels)
        cursor: dict[str, int | None] = {"lines": seen + len(raw)}
        if len(raw):
            cursor["last_line_at_us"] = raw[-1].received_us
        return Collected(
            batches=[concat_batches([batch], numeric=False)] if len(batch) else [],
            rejections=rejections,
            cursor=cursor,
            lines_read=len(raw),
        )
