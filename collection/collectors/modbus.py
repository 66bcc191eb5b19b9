"""Modbus devices (TCP, or RTU on a serial line): one poll of the register map per run.

The reading itself is the agent's (``daqbroker_agent.modbus``), so the agent and the server read Modbus
devices alike. Each channel takes the entry whose ``field`` is its source field. A register that could not
be read (an exception response, no answer, a value that is not a number) is quarantined with the register
and the reason, and the run is marked a warning; a device that answers nothing fails the run.
"""

from __future__ import annotations

import numpy as np

from collection.collectors.base import Collected, channel_key, is_text
from collection.services.ingest import Rejection, SampleBatch
from daqbroker_agent.modbus import ModbusReader, describe_target
from instruments.models import Channel, DataSource


class ModbusCollector:
    def collect(self, source: DataSource, config: dict, channels: list[Channel]) -> Collected:
        fields = {entry["field"] for entry in config["registers"]}
        by_field: dict[str, list[Channel]] = {}
        faults: list[str] = []
        for channel in channels:
            key = channel_key(channel)
            if key in fields:
                by_field.setdefault(key, []).append(channel)
            else:
                faults.append(f"channel {channel.slug!r} takes field {key!r}, which no entry of the register map has")
        where = describe_target(config)
        with ModbusReader(config, by_field) as reader:
            poll = reader.poll()
        ids: list[int] = []
        values: list[object] = []
        for key, value in poll.values.items():
            for channel in by_field[key]:
                ids.append(channel.id)
                values.append(repr(value) if is_text(channel) else value)
        numeric = not any(is_text(c) for group in by_field.values() for c in group)
        batch = SampleBatch(
            np.array(ids, dtype=np.int64),
            np.full(len(ids), poll.ts_us, dtype=np.int64),
            np.array(values, dtype=np.float64 if numeric else object),
        )
        rejections = [
            Rejection(
                reason=f"{failure.register}: {failure.reason}",
                channel_id=channel.id,
                channel_ref=str(channel.id),
                raw_value=failure.raw,
                context={"connection": where, "register": failure.register, "field": failure.field},
            )
            for failure in poll.failures
            for channel in by_field[failure.field]
        ]
        if poll.failures:
            failed = "; ".join(f"{f.register}: {f.reason}" for f in poll.failures[:5])
            more = f" (and {len(poll.failures) - 5} more)" if len(poll.failures) > 5 else ""
            faults.append(f"{len(poll.failures)} register(s) not read, quarantined: {failed}{more}")
        polls = int((source.cursor or {}).get("polls", 0)) + 1
        return Collected(
            batches=[batch] if len(batch) else [],
            rejections=rejections,
            cursor={"polls": polls, "last_poll_at_us": poll.ts_us, "requests": poll.requests},
            faults=faults,
        )
